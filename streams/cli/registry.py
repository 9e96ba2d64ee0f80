"""``streams registry start|stop|status``: a local Schema Registry (Apicurio, in memory)."""

from __future__ import annotations

import click
import orjson

from streams.broker.registry import DEFAULT_PORT, LocalRegistry

URL_VARIABLE = "STREAMS_SCHEMA_REGISTRY_URL"


@click.group(name="registry")
def command() -> None:
    """Run a local Schema Registry (Confluent's API, served by Apicurio Registry in memory) for
    development and tests. The first start builds it with Maven (about a minute)."""


@command.command()
@click.option("--port", default=DEFAULT_PORT, show_default=True, help="HTTP port (127.0.0.1).")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait for ready.")
def start(port: int, timeout: float) -> None:
    """Start the registry and wait until its API answers; prints the URL clients take. When
    it already runs, says where (on the port it was started on)."""
    registry = LocalRegistry()
    if registry.start(port, timeout_s=timeout):
        click.echo(f"Schema Registry started at {registry.url} (pid {registry.pid()})")
    else:
        click.echo(f"Schema Registry already running at {registry.url} (pid {registry.pid()})")
    click.echo(f"export {URL_VARIABLE}={registry.url}")


@command.command()
def stop() -> None:
    """Stop the registry: SIGTERM, then SIGKILL after 30 s. Every schema is forgotten."""
    click.echo(
        "Schema Registry stopped" if LocalRegistry().stop() else "Schema Registry was not running"
    )


@command.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(as_json: bool) -> None:
    """Print whether the registry runs, its URL, pid and version; exit 1 unless it runs."""
    state = LocalRegistry().status()
    if as_json:
        click.echo(orjson.dumps(state.as_dict()).decode())
    elif state.running:
        click.echo(f"running  url={state.url}  pid={state.pid}  version={state.version}")
    else:
        click.echo(f"stopped  url={state.url}  version={state.version}")
    raise SystemExit(0 if state.running else 1)
