"""``streams schemas``: placeholder group, filled in by the schemas work."""

import click


@click.group(name="schemas")
def command() -> None:
    """Event schemas: compatibility checks."""
