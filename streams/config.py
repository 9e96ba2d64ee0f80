"""Settings from the environment (12-factor). Names and defaults are a contract: see README."""

from __future__ import annotations

import importlib.util
import os
import re
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streams.cpus import available_cpus
from streams.errors import ConfigError
from streams.state import ROCKSDB_MISSING

if TYPE_CHECKING:
    from streams.state.rocks import RocksStore

GUARANTEES = ("at_least_once", "exactly_once")
EMIT_MODES = ("final", "updates")
STORES = ("memory", "rocksdb")
ON_STATE_CHANGE = ("stop", "fresh")
DEFAULT_STATE_DIR = os.path.join(tempfile.gettempdir(), "streams-state")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# Kafka's rule for group.instance.id (249 characters), less room for the "-<slot>" that
# `--processes N` appends.
_INSTANCE_ID = re.compile(r"[A-Za-z0-9._-]{1,240}")
# A StatefulSet pod's name: its set's name, a dash, its ordinal. A pod of a Deployment (or any
# ReplicaSet, Job, DaemonSet) ends in five random characters instead, never in 1 to 4 digits.
_STATEFULSET_POD = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?-(0|[1-9][0-9]{0,3})")


def _int(
    env: Mapping[str, str], name: str, default: int, minimum: int = 0, maximum: int | None = None
) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not an integer; set it to a whole number (e.g. {default})"
        ) from None
    if value < minimum:
        raise ConfigError(f"{name}={value} is below the minimum {minimum}; raise it")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name}={value} is above the maximum {maximum}; lower it")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name) or default
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}; pick one of them")
    return value


def parse_processes(raw: str, name: str = "STREAMS_PROCESSES") -> int:
    """A worker process count: a whole number from 1, or ``auto`` (the CPUs the container may
    use, :func:`streams.cpus.available_cpus`). ``name`` is what a bad value is called."""
    if raw.strip().lower() == "auto":
        return available_cpus()
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is neither a whole number nor auto; set the number of worker "
            "processes (e.g. 2), or auto for one per CPU the container may use"
        ) from None
    if value < 1:
        raise ConfigError(f"{name}={value} is below the minimum 1; raise it")
    return value


def resolve_group_instance_id(env: Mapping[str, str]) -> str | None:
    """The consumer's ``group.instance.id`` (static membership, KIP-345):
    ``STREAMS_GROUP_INSTANCE_ID``; else, in a Kubernetes pod whose name is a StatefulSet's
    (``<set>-<ordinal>``, stable across restarts), the pod name; else None (dynamic
    membership). A Deployment's pod names are new at every restart: as ids they would only
    leave members behind that the group waits for."""
    raw = env.get("STREAMS_GROUP_INSTANCE_ID")
    if raw:
        if not _INSTANCE_ID.fullmatch(raw):
            raise ConfigError(
                f"STREAMS_GROUP_INSTANCE_ID={raw!r} is not a valid group instance id; use up to "
                "240 letters, digits, '.', '_' and '-'"
            )
        return raw
    pod = env.get("HOSTNAME", "")
    if env.get("KUBERNETES_SERVICE_HOST") and _STATEFULSET_POD.fullmatch(pod):
        return pod
    return None


@dataclass(frozen=True)
class KafkaSettings:
    """How to reach and authenticate to the brokers, and how to replicate the topics the
    project creates there. Secrets never appear in ``repr``.

    ``replication_factor`` (``STREAMS_REPLICATION_FACTOR``) is None for the default, min(3,
    brokers in the cluster), decided when a topic is created
    (:func:`streams.broker.admin.ensure_topics`).
    """

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    replication_factor: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaSettings:
        """Read ``KAFKA_*`` variables and ``STREAMS_REPLICATION_FACTOR``."""
        env = os.environ if env is None else env
        protocol = _choice(env, "KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", SECURITY_PROTOCOLS)
        mechanism = env.get("KAFKA_SASL_MECHANISM") or None
        if protocol.startswith("SASL"):
            mechanism = _choice(env, "KAFKA_SASL_MECHANISM", "PLAIN", SASL_MECHANISMS)
            if not env.get("KAFKA_SASL_USERNAME") or not env.get("KAFKA_SASL_PASSWORD"):
                raise ConfigError(
                    f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and "
                    "KAFKA_SASL_PASSWORD; set both"
                )
        return cls(
            bootstrap_servers=env.get("KAFKA_BOOTSTRAP_SERVERS") or "127.0.0.1:9092",
            security_protocol=protocol,
            sasl_mechanism=mechanism,
            sasl_username=env.get("KAFKA_SASL_USERNAME") or None,
            sasl_password=env.get("KAFKA_SASL_PASSWORD") or None,
            ssl_cafile=env.get("KAFKA_SSL_CAFILE") or None,
            ssl_certfile=env.get("KAFKA_SSL_CERTFILE") or None,
            ssl_keyfile=env.get("KAFKA_SSL_KEYFILE") or None,
            replication_factor=_int(env, "STREAMS_REPLICATION_FACTOR", 3, minimum=1)
            if env.get("STREAMS_REPLICATION_FACTOR")
            else None,
        )

    @property
    def uses_tls(self) -> bool:
        """True for SSL and SASL_SSL."""
        return self.security_protocol in ("SSL", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext:
        """The client TLS context: verifies brokers against ``KAFKA_SSL_CAFILE`` (else the
        system's CAs) and their host names; presents a client certificate when one is set.

        A file that cannot be read or parsed raises a :class:`ConfigError` naming its variable.
        """
        from aiokafka.helpers import create_ssl_context

        try:
            context = create_ssl_context(cafile=self.ssl_cafile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"KAFKA_SSL_CAFILE={self.ssl_cafile} cannot be loaded ({_reason(exc)}); "
                "point it to a PEM file of the CA that signed the brokers' certificates"
            ) from None
        if self.ssl_certfile or self.ssl_keyfile:
            if not self.ssl_certfile:
                raise ConfigError("KAFKA_SSL_KEYFILE is set without KAFKA_SSL_CERTFILE; set both")
            try:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
            except (OSError, ssl.SSLError) as exc:
                files = f"KAFKA_SSL_CERTFILE={self.ssl_certfile}"
                if self.ssl_keyfile:
                    files += f" and KAFKA_SSL_KEYFILE={self.ssl_keyfile}"
                raise ConfigError(
                    f"{files} cannot be loaded ({_reason(exc)}); they must hold the client "
                    "certificate and its unencrypted private key, in PEM"
                ) from None
        return context

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments shared by every aiokafka client (producer, consumer, admin)."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.uses_tls:
            kwargs["ssl_context"] = self.ssl_context()
        if self.security_protocol.startswith("SASL"):
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password
        return kwargs

    def faust_credentials(self) -> Any:
        """``broker_credentials`` for a ``faust.App`` (None for PLAINTEXT): the same
        protocol, SASL user and TLS context as :meth:`client_kwargs`."""
        import faust

        context = self.ssl_context() if self.uses_tls else None
        if self.security_protocol.startswith("SASL"):
            return faust.SASLCredentials(
                username=self.sasl_username,
                password=self.sasl_password,
                ssl_context=context,
                mechanism=self.sasl_mechanism,
            )
        if context is not None:
            return faust.SSLCredentials(context)
        return None


def _reason(exc: BaseException) -> str:
    """An OS or TLS error without its errno prefix, e.g. ``No such file or directory``."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


@dataclass(frozen=True)
class RegistrySettings:
    """The schema registry of ``format="avro"``/``"json-schema"`` topics (no default URL:
    required as soon as an app declares such a topic)."""

    url: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    cafile: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RegistrySettings:
        """``STREAMS_SCHEMA_REGISTRY_URL``, ``_USER``, ``_PASSWORD`` and ``_CAFILE``."""
        env = os.environ if env is None else env
        cafile = env.get("STREAMS_SCHEMA_REGISTRY_CAFILE") or None
        if cafile is not None and not os.path.isfile(cafile):
            raise ConfigError(
                f"STREAMS_SCHEMA_REGISTRY_CAFILE={cafile} is not a file; point it at the PEM "
                "file of the CA that signed the registry's certificate"
            )
        return cls(
            url=env.get("STREAMS_SCHEMA_REGISTRY_URL") or None,
            user=env.get("STREAMS_SCHEMA_REGISTRY_USER") or None,
            password=env.get("STREAMS_SCHEMA_REGISTRY_PASSWORD") or None,
            cafile=cafile,
        )


@dataclass(frozen=True)
class Settings:
    """Everything the pipeline reads from the environment."""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    app_id: str = "streams-pipeline"
    input_topic: str = "events"
    output_topic: str = "aggregates"
    dlq_topic: str = "events.dlq"
    late_topic: str = "events.late"
    partitions: int = 6
    window_size_ms: int = 60_000
    window_step_ms: int = 60_000
    grace_ms: int = 10_000
    idle_timeout_ms: int = 30_000
    dedupe_horizon_ms: int = 3_600_000
    guarantee: str = "at_least_once"
    emit: str = "final"
    metrics_port: int = 9108
    max_message_bytes: int = 1_048_576
    session_timeout_ms: int = 10_000
    metadata_refresh_ms: int = 30_000
    commit_interval_ms: int = 1_000
    join_wait_ms: int = 1_000
    # How often repartition records below the committed offsets are deleted; -1: never.
    repartition_purge_interval_ms: int = 30_000
    store: str = "memory"
    state_dir: str = DEFAULT_STATE_DIR
    on_state_change: str = "stop"
    app: str | None = None
    # Worker processes of `streams worker` (1: no supervisor, the worker is the process).
    processes: int = 1
    # The consumer's group.instance.id; None: dynamic membership.
    group_instance_id: str | None = None
    schema_registry: RegistrySettings = field(default_factory=lambda: RegistrySettings())

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and check every ``STREAMS_*`` and ``KAFKA_*`` variable."""
        env = os.environ if env is None else env
        size = _int(env, "STREAMS_WINDOW_SIZE_MS", 60_000, minimum=1)
        step = _int(env, "STREAMS_WINDOW_STEP_MS", size, minimum=1)
        if step > size:
            raise ConfigError(
                f"STREAMS_WINDOW_STEP_MS={step} is larger than STREAMS_WINDOW_SIZE_MS={size}; "
                "a hop must not exceed the window size"
            )
        store = _choice(env, "STREAMS_STORE", "memory", STORES)
        if store == "rocksdb" and importlib.util.find_spec("rocksdict") is None:
            raise ConfigError(ROCKSDB_MISSING)
        return cls(
            kafka=KafkaSettings.from_env(env),
            app_id=env.get("STREAMS_APP_ID") or "streams-pipeline",
            input_topic=env.get("STREAMS_INPUT_TOPIC") or "events",
            output_topic=env.get("STREAMS_OUTPUT_TOPIC") or "aggregates",
            dlq_topic=env.get("STREAMS_DLQ_TOPIC") or "events.dlq",
            late_topic=env.get("STREAMS_LATE_TOPIC") or "events.late",
            partitions=_int(env, "STREAMS_PARTITIONS", 6, minimum=1),
            window_size_ms=size,
            window_step_ms=step,
            grace_ms=_int(env, "STREAMS_GRACE_MS", 10_000),
            idle_timeout_ms=_int(env, "STREAMS_IDLE_TIMEOUT_MS", 30_000, minimum=1),
            dedupe_horizon_ms=_int(env, "STREAMS_DEDUPE_HORIZON_MS", 3_600_000),
            guarantee=_choice(env, "STREAMS_GUARANTEE", "at_least_once", GUARANTEES),
            emit=_choice(env, "STREAMS_EMIT", "final", EMIT_MODES),
            metrics_port=_int(env, "STREAMS_METRICS_PORT", 9108, minimum=1, maximum=65535),
            max_message_bytes=_int(env, "STREAMS_MAX_MESSAGE_BYTES", 1_048_576, minimum=1),
            session_timeout_ms=_int(env, "STREAMS_SESSION_TIMEOUT_MS", 10_000, minimum=6_000),
            metadata_refresh_ms=_int(env, "STREAMS_METADATA_REFRESH_MS", 30_000, minimum=1_000),
            commit_interval_ms=_int(env, "STREAMS_COMMIT_INTERVAL_MS", 1_000),
            join_wait_ms=_int(env, "STREAMS_JOIN_WAIT_MS", 1_000),
            repartition_purge_interval_ms=_int(
                env, "STREAMS_REPARTITION_PURGE_INTERVAL_MS", 30_000, minimum=-1
            ),
            store=store,
            state_dir=env.get("STREAMS_STATE_DIR") or DEFAULT_STATE_DIR,
            on_state_change=_choice(env, "STREAMS_ON_STATE_CHANGE", "stop", ON_STATE_CHANGE),
            app=env.get("STREAMS_APP") or None,
            processes=parse_processes(env.get("STREAMS_PROCESSES") or "1"),
            group_instance_id=resolve_group_instance_id(env),
            schema_registry=RegistrySettings.from_env(env),
        )

    def open_store(self, name: str) -> RocksStore | None:
        """The state store of a task being adopted (``name``: its segment and input
        partition): None keeps state in memory.

        With ``rocksdb``, the task's RocksDB store under ``state_dir`` as its last owner left
        it (a new, empty one the first time): the runtime reuses it from its checkpoint or
        wipes it (:mod:`streams.state.rocks`, decision 0017).
        """
        if self.store == "memory":
            return None
        from streams.state.rocks import open_store

        return open_store(self.state_dir, self.app_id, name)

    def faust_data_dir(self, app_id: str) -> str:
        """Faust's data directory for ``app_id``, created, under ``state_dir``: Faust keeps
        nothing there for us, and its default (``<app id>-data`` in the working directory)
        would litter wherever a worker, demo or test runs."""
        path = os.path.join(self.state_dir, "faust", app_id)
        os.makedirs(path, exist_ok=True)
        return path
