"""``streams kafka start|stop|status|fetch``: the local Apache Kafka broker."""

from __future__ import annotations

import click
import orjson

from streams.broker.local import KAFKA_VERSION, LocalKafka, fetch_jars


def _broker(port: int, controller_port: int) -> LocalKafka:
    return LocalKafka(port=port, controller_port=controller_port)


_port = click.option("--port", default=9092, show_default=True, help="Client (PLAINTEXT) port.")
_cport = click.option(
    "--controller-port", default=9093, show_default=True, help="KRaft controller port."
)


@click.group(name="kafka")
def command() -> None:
    """Run a local single-node Apache Kafka broker (KRaft) for development and tests."""


@command.command()
def fetch() -> None:
    """Download the broker jars from Maven Central (once; later runs reuse the cache)."""
    click.echo(f"Kafka {KAFKA_VERSION} jars in {fetch_jars()}")


@command.command()
@_port
@_cport
@click.option("--timeout", default=90.0, show_default=True, help="Seconds to wait for ready.")
def start(port: int, controller_port: int, timeout: float) -> None:
    """Start the broker and wait until it answers a metadata request."""
    broker = _broker(port, controller_port)
    if broker.start(timeout_s=timeout):
        click.echo(f"Kafka {broker.version} started at {broker.bootstrap} (pid {broker.pid()})")
    else:
        click.echo(f"Kafka already running at {broker.bootstrap} (pid {broker.pid()})")


@command.command()
@_port
@_cport
def stop(port: int, controller_port: int) -> None:
    """Stop the broker cleanly (SIGTERM, then SIGKILL after 30 s)."""
    broker = _broker(port, controller_port)
    click.echo("Kafka stopped" if broker.stop() else "Kafka was not running")


@command.command()
@_port
@_cport
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(port: int, controller_port: int, as_json: bool) -> None:
    """Print whether the broker runs, its bootstrap address, pid and version (exit 1 if not)."""
    state = _broker(port, controller_port).status()
    if as_json:
        click.echo(orjson.dumps(state.as_dict()).decode())
    elif state.running:
        click.echo(
            f"running  bootstrap={state.bootstrap}  pid={state.pid}  version={state.version}"
        )
    else:
        click.echo(f"stopped  bootstrap={state.bootstrap}  version={state.version}")
    raise SystemExit(0 if state.running else 1)
