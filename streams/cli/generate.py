"""``streams generate``: placeholder, filled in by the generator work."""

import click


@click.command(name="generate")
def command() -> None:
    """Generate realistic events."""
