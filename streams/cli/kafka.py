"""``streams kafka start|stop|status|fetch``: the local Apache Kafka broker, or a local cluster."""

from __future__ import annotations

import click
import orjson

from streams.broker.local import (
    KAFKA_VERSION,
    ClusterStatus,
    LocalCluster,
    LocalKafka,
    cluster_home,
    cluster_ports,
    fetch_jars,
)

MAX_BROKERS = 9


def _local(brokers: int | None, port: int, controller_port: int) -> LocalKafka | LocalCluster:
    """The broker or cluster meant: ``--brokers N``, or without it the cluster a
    ``start --brokers N`` left running, else the single broker."""
    if brokers is None:
        for n in range(2, MAX_BROKERS + 1):
            cluster = LocalCluster.load(cluster_home(n))
            if cluster is not None and any(node.pid() for node in cluster.nodes):
                return cluster
        brokers = 1
    if brokers == 1:
        return LocalKafka(port=port, controller_port=controller_port)
    return LocalCluster(cluster_home(brokers), cluster_ports(brokers, port, controller_port))


_port = click.option(
    "--port", default=9092, show_default=True, help="Client (PLAINTEXT) port (of the first node)."
)
_cport = click.option(
    "--controller-port",
    default=9093,
    show_default=True,
    help="KRaft controller port (of the first node; node i uses these ports + 2i).",
)


@click.group(name="kafka")
def command() -> None:
    """Run a local Apache Kafka broker (KRaft), or a cluster of several, for development and
    tests."""


@command.command()
def fetch() -> None:
    """Download the broker jars from Maven Central (once; later runs reuse the cache)."""
    click.echo(f"Kafka {KAFKA_VERSION} jars in {fetch_jars()}")


@command.command()
@_port
@_cport
@click.option(
    "--brokers",
    type=click.IntRange(1, MAX_BROKERS),
    default=1,
    show_default=True,
    help="Nodes (each a broker and a controller) in one cluster on this machine.",
)
@click.option("--timeout", default=180.0, show_default=True, help="Seconds to wait for ready.")
def start(port: int, controller_port: int, brokers: int, timeout: float) -> None:
    """Start the broker (or every node) and wait until it answers a metadata request."""
    local = _local(brokers, port, controller_port)
    if local.start(timeout_s=timeout):
        click.echo(f"Kafka {local.version} started at {local.bootstrap} ({_pids(local)})")
    else:
        click.echo(f"Kafka already running at {local.bootstrap} ({_pids(local)})")


_which = click.option(
    "--brokers",
    type=click.IntRange(1, MAX_BROKERS),
    default=None,
    help="Which: the single broker (1) or a cluster of N. Default: the cluster "
    "`start --brokers N` left running, else the single broker.",
)


@command.command()
@_port
@_cport
@_which
def stop(port: int, controller_port: int, brokers: int | None) -> None:
    """Stop the broker (or every node) cleanly: SIGTERM, then SIGKILL after 30 s."""
    click.echo(
        "Kafka stopped"
        if _local(brokers, port, controller_port).stop()
        else "Kafka was not running"
    )


@command.command()
@_port
@_cport
@_which
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(port: int, controller_port: int, brokers: int | None, as_json: bool) -> None:
    """Print whether the broker (or each node) runs, where, its pid and version; exit 1 unless
    all of it runs."""
    local = _local(brokers, port, controller_port)
    state = local.status()
    if as_json:
        click.echo(orjson.dumps(state.as_dict()).decode())
    elif isinstance(state, ClusterStatus):
        up = sum(node.running for node in state.nodes)
        click.echo(
            f"{'running' if state.running else 'degraded' if up else 'stopped'}  "
            f"bootstrap={state.bootstrap}  nodes={up}/{len(state.nodes)} running  "
            f"version={local.version}"
        )
        for node_id, node in enumerate(state.nodes, start=1):
            where = f"pid={node.pid}" if node.running else "stopped"
            click.echo(f"  node {node_id}  {node.bootstrap}  {where}")
    elif state.running:
        click.echo(
            f"running  bootstrap={state.bootstrap}  pid={state.pid}  version={state.version}"
        )
    else:
        click.echo(f"stopped  bootstrap={state.bootstrap}  version={state.version}")
    raise SystemExit(0 if state.running else 1)


def _pids(local: LocalKafka | LocalCluster) -> str:
    nodes = local.nodes if isinstance(local, LocalCluster) else [local]
    pids = ", ".join(str(node.pid()) for node in nodes)
    return f"pid {pids}" if len(nodes) == 1 else f"{len(nodes)} nodes, pids {pids}"
