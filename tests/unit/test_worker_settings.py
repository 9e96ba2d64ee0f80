"""The settings of ``--processes`` and static membership: ``STREAMS_PROCESSES`` and the
group instance id (``STREAMS_GROUP_INSTANCE_ID``, else a StatefulSet pod's name)."""

from __future__ import annotations

import pytest

from streams import config
from streams.config import Settings
from streams.errors import ConfigError

IN_KUBERNETES = {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}


def test_one_process_unless_asked() -> None:
    assert Settings.from_env({}).processes == 1
    assert Settings.from_env({"STREAMS_PROCESSES": "3"}).processes == 3


def test_auto_is_the_cpus_the_container_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "available_cpus", lambda: 5)
    assert Settings.from_env({"STREAMS_PROCESSES": "auto"}).processes == 5
    assert config.parse_processes("AUTO", "--processes") == 5


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("0", "STREAMS_PROCESSES=0 is below the minimum 1"),
        ("-2", "STREAMS_PROCESSES=-2 is below the minimum 1"),
        ("many", "STREAMS_PROCESSES='many' is neither a whole number nor auto"),
        ("2.5", "STREAMS_PROCESSES='2.5' is neither a whole number nor auto"),
    ],
)
def test_a_bad_process_count_says_what_is_wrong(raw: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        Settings.from_env({"STREAMS_PROCESSES": raw})


@pytest.mark.parametrize(
    ("env", "instance"),
    [
        ({}, None),
        ({"STREAMS_GROUP_INSTANCE_ID": "orders-worker-a"}, "orders-worker-a"),
        # A StatefulSet's pods: <set>-<ordinal>, stable across restarts.
        ({**IN_KUBERNETES, "HOSTNAME": "streams-worker-0"}, "streams-worker-0"),
        ({**IN_KUBERNETES, "HOSTNAME": "streams-worker-12"}, "streams-worker-12"),
        # A Deployment's pods: <deployment>-<replicaset hash>-<5 random characters>, new at
        # every restart, even when the random part is all digits.
        ({**IN_KUBERNETES, "HOSTNAME": "streams-worker-7d9f8b6c4-x2kq9"}, None),
        ({**IN_KUBERNETES, "HOSTNAME": "streams-worker-7d9f8b6c4-24567"}, None),
        # Outside Kubernetes a host name says nothing about restarts.
        ({"HOSTNAME": "streams-worker-0"}, None),
        # The setting wins.
        (
            {**IN_KUBERNETES, "HOSTNAME": "streams-worker-0", "STREAMS_GROUP_INSTANCE_ID": "x"},
            "x",
        ),
    ],
)
def test_group_instance_id(env: dict[str, str], instance: str | None) -> None:
    assert Settings.from_env(env).group_instance_id == instance


@pytest.mark.parametrize("raw", ["with space", "slash/y", "é", "x" * 241])
def test_a_bad_group_instance_id_says_what_is_wrong(raw: str) -> None:
    with pytest.raises(ConfigError, match="is not a valid group instance id"):
        Settings.from_env({"STREAMS_GROUP_INSTANCE_ID": raw})
