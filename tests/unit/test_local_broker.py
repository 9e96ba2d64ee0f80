"""Pure parts of the local broker manager."""

from __future__ import annotations

import base64

from streams.broker.local import cluster_ports, free_ports, new_cluster_id


def test_cluster_ids_never_look_like_options() -> None:
    # Roughly one random id in 64 would start with "-" without the guard.
    ids = [new_cluster_id() for _ in range(5_000)]
    assert not any(i.startswith("-") for i in ids)
    assert all(len(i) == 22 for i in ids)
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)
    assert len(set(ids)) == len(ids)


def test_the_command_lines_cluster_layout_keeps_the_single_brokers_ports_for_node_1() -> None:
    assert cluster_ports(1) == [(9092, 9093)]
    assert cluster_ports(3) == [(9092, 9093), (9094, 9095), (9096, 9097)]
    assert cluster_ports(2, port=29092, controller_port=39093) == [(29092, 39093), (29094, 39095)]


def test_free_ports_are_distinct() -> None:
    ports = free_ports(12)
    assert len(set(ports)) == 12
