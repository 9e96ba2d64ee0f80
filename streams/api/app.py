"""``App``: an app's topics, tables and pipelines, declared in a few lines of Python."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from streams.api.stream import Chains, Head, Stream, caller, fail
from streams.api.topics import Table, Topic
from streams.topology import nodes

TOPIC_FORMATS = ("json", "avro", "json-schema")


class App:
    """A stream-processing app: its id is the consumer group (``STREAMS_APP_ID`` overrides).

    Declare topics with :meth:`topic`, tables with :meth:`table`, and pipelines with
    :meth:`stream` ... ``.to(...)``; run it with ``streams worker module:app``.
    """

    def __init__(self, name: str) -> None:
        where = caller()
        if not isinstance(name, str) or not name:
            fail(where, f"App(name) needs a non-empty name, got {name!r}")
        self.name = name
        self.where = where
        self.topics: dict[str, Topic] = {}
        self.tables: dict[str, Table] = {}
        self._chains = Chains()

    def __repr__(self) -> str:
        return f"App({self.name!r}, pipelines={[p.name for p in self.pipelines]})"

    @property
    def pipelines(self) -> list[nodes.PipelineDecl]:
        """The pipelines declared so far (each ``app.stream(...)...to(...)``), in order."""
        return self._chains.pipelines

    @property
    def decl(self) -> nodes.AppDecl:
        """The app's declaration as data: what :func:`streams.topology.plan.plan` reads."""
        return nodes.AppDecl(
            name=self.name,
            pipelines=tuple(self._chains.pipelines),
            tables=tuple(self.tables),
            dangling=tuple(self._chains.dangling()),
            topics=tuple(topic.decl for topic in self.topics.values()),
            where=self.where,
        )

    def app_id(self, env: Any = None) -> str:
        """The consumer group id: ``STREAMS_APP_ID`` if set, else the app's name."""
        env = os.environ if env is None else env
        return str(env.get("STREAMS_APP_ID") or self.name)

    def topic(
        self,
        name: str,
        schema: str | os.PathLike[str] | None = None,
        *,
        dlq: str | None = None,
        format: str = "json",
    ) -> Topic:
        """A topic of JSON objects. With ``schema`` (a JSON Schema file), values that do not
        validate are dead letters (``<name>.dlq``, or ``dlq``); without one, anything that is
        not a UTF-8 JSON object is.

        ``format="avro"`` or ``"json-schema"``: values in the schema registry's wire format,
        decoded with the writer's schema (fetched by id); ``schema`` is then an ``.avsc`` or
        JSON Schema file: an output's, registered under ``<name>-value``, or an Avro input's
        reader schema."""
        where = caller()
        if not isinstance(name, str) or not name:
            fail(where, f"app.topic(name) needs a topic name, got {name!r}")
        if schema in TOPIC_FORMATS and format == "json" and not Path(str(schema)).exists():
            # app.topic(name, "avro"): the contract's order (name, format, schema) by position.
            format, schema = str(schema), None
        if format not in TOPIC_FORMATS:
            fail(
                where,
                f"app.topic({name!r}, format={format!r}): format must be one of "
                f"{', '.join(TOPIC_FORMATS)}",
            )
        path = None if schema is None else _schema_path(where, schema)
        if path is not None and format == "avro":
            _check_avro(where, path)
        decl = nodes.TopicDecl(name=name, schema=path, dlq=dlq, format=format)
        known = self.topics.get(name)
        if known is not None:
            if known.decl != decl:
                fail(
                    where, f"topic {name!r} is declared twice, with different schema, dlq or format"
                )
            return known
        self.topics[name] = topic = Topic(decl)
        return topic

    def table(self, name: str) -> Table:
        """A compacted topic held whole by every worker (Kafka Streams' GlobalKTable): loaded
        before the first event and followed while running; a tombstone deletes the key."""
        where = caller()
        if not isinstance(name, str) or not name:
            fail(where, f"app.table(name) needs a topic name, got {name!r}")
        table = self.tables.get(name)
        if table is None:
            self.tables[name] = table = Table(nodes.TableDecl(name))
        return table

    def stream(
        self,
        topic: Topic | str,
        key: str | None = None,
        timestamp: str | None = None,
        *,
        name: str | None = None,
        changelog: str | None = None,
    ) -> Stream:
        """A pipeline's source. ``key``: the value field the topic is partitioned by (the
        aggregation and output key); ``timestamp``: the event-time field (epoch ms), else the
        record's Kafka timestamp. ``name`` names the pipeline (default: its output topic);
        ``changelog`` names its state topic (default ``{app_id}-<pipeline>-changelog``)."""
        where = caller()
        if isinstance(topic, str):
            topic = self.topics.get(topic) or self.topic(topic)
        if not isinstance(topic, Topic):
            fail(where, f"app.stream(topic) needs app.topic(...) or a name, got {topic!r}")
        for what, value in (("key", key), ("timestamp", timestamp), ("name", name)):
            if value is not None and (not isinstance(value, str) or not value):
                fail(where, f"app.stream({what}=...) must be a non-empty string, got {value!r}")
        head = Head(self._chains, topic.decl, key, timestamp, name, changelog, where)
        return Stream(head, (), where)


def _schema_path(where: str, schema: str | os.PathLike[str]) -> Path:
    """The schema file: as given (relative to the working directory), else relative to the
    declaring file's directory or one of its parents (an app in ``examples/orders/`` finds
    the project's ``schemas/``)."""
    path = Path(schema)
    candidates = [path]
    if not path.is_absolute():
        frame_file = _declaring_file()
        if frame_file is not None:
            candidates.extend(parent / path for parent in frame_file.resolve().parents[:4])
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    fail(
        where,
        f"schema file {str(schema)!r} does not exist (looked in "
        f"{', '.join(str(c.parent.resolve()) for c in candidates)}); fix the path",
    )


def _check_avro(where: str, path: Path) -> None:
    """Fail at the declaring line unless ``path`` holds an Avro schema fastavro accepts."""
    import fastavro
    import orjson

    try:
        fastavro.parse_schema(orjson.loads(path.read_bytes()))
    except orjson.JSONDecodeError as exc:
        fail(where, f"schema file {path} is not valid JSON: {exc}; fix the file")
    except Exception as exc:
        fail(where, f"schema file {path} is not a valid Avro schema ({exc}); fix the file")


def _declaring_file() -> Path | None:
    api_dir = str(Path(__file__).parent)
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(api_dir):
        frame = frame.f_back  # type: ignore[assignment]
    return None if frame is None else Path(frame.f_code.co_filename)
