"""A client of Confluent's Schema Registry REST API (which Apicurio serves under
``/apis/ccompat/v7``): schemas by id, registration under a subject, compatibility levels.

Three calls are all a worker needs, so this is the standard library's ``urllib`` rather
than a client library (docs/decisions/0021-schema-registry.md weighs them): basic auth, a CA
file for TLS, retries with backoff on 5xx answers and connection errors, and errors that say
in one line what to do. The password never appears in a message or a log line.
"""

from __future__ import annotations

import base64
import logging
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import orjson

from streams.config import RegistrySettings
from streams.errors import ConfigError, SchemaRegistryError, UnknownSchemaError

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
# Where Apicurio Registry serves Confluent's API.
APICURIO_CCOMPAT = "/apis/ccompat/v7"
# Backoff between attempts at a request the registry failed with a 5xx or a dropped connection.
BACKOFF_S = (0.2, 0.5, 1.0, 2.0)


class RegistryClient:
    """Talks to the registry at ``url``; thread-safe (the worker calls it from threads)."""

    def __init__(
        self,
        url: str,
        *,
        user: str | None = None,
        password: str | None = None,
        cafile: str | None = None,
        timeout_s: float = 10.0,
        backoff_s: tuple[float, ...] = BACKOFF_S,
    ) -> None:
        shown = redact(url)
        try:
            parsed = urllib.parse.urlsplit(url)
            port = parsed.port
        except ValueError as exc:  # a port that is not a number or out of range
            reason = "its port is not a number" if "cast" in str(exc) else str(exc)
            raise SchemaRegistryError(
                f"STREAMS_SCHEMA_REGISTRY_URL {shown!r} cannot be used ({reason}; a password "
                "with '/', '?', '#' or '@' must be percent-encoded); fix it"
            ) from None
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise SchemaRegistryError(
                f"STREAMS_SCHEMA_REGISTRY_URL {shown!r} is not an http(s) URL; set it to the "
                "registry's base URL, e.g. http://127.0.0.1:8081"
            )
        if parsed.username and user is None:
            user = urllib.parse.unquote(parsed.username)
            password = urllib.parse.unquote(parsed.password or "")
        host = parsed.hostname + (f":{port}" if port else "")
        # The URL as shown in messages: no credentials.
        self.url = urllib.parse.urlunsplit((parsed.scheme, host, parsed.path.rstrip("/"), "", ""))
        self._auth = (
            None
            if user is None
            else "Basic " + base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        )
        self._context: ssl.SSLContext | None = None
        if parsed.scheme == "https" or cafile:
            try:
                self._context = ssl.create_default_context(cafile=cafile)
            except (OSError, ssl.SSLError) as exc:
                raise SchemaRegistryError(
                    f"STREAMS_SCHEMA_REGISTRY_CAFILE {cafile!r} cannot be used ({exc}); "
                    "point it at a PEM file of CA certificates"
                ) from None
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self._lock = threading.Lock()
        self._by_id: dict[int, tuple[str, str]] = {}
        self.requests = 0

    @classmethod
    def from_settings(cls, settings: RegistrySettings, *, what: str) -> RegistryClient:
        """The client of ``STREAMS_SCHEMA_REGISTRY_*``; ``what`` (which needs it) is named in
        the error when no URL is set."""
        if not settings.url:
            raise ConfigError(
                f"{what} needs a schema registry: set STREAMS_SCHEMA_REGISTRY_URL to its URL "
                "(e.g. http://127.0.0.1:8081)"
            )
        return cls(
            settings.url, user=settings.user, password=settings.password, cafile=settings.cafile
        )

    # -- the API -------------------------------------------------------------------------

    def check(self) -> None:
        """Raise :class:`SchemaRegistryError` unless the registry answers. An Apicurio
        server's root URL (its Confluent API lives under ``/apis/ccompat/v7``) is taken for
        that API, with a log line saying so."""
        status, _ = self._request("GET", "/subjects", missing_ok=True)
        if status != 404:
            return
        if not self.url.endswith(APICURIO_CCOMPAT):
            root = self.url
            self.url = root + APICURIO_CCOMPAT
            status, _ = self._request("GET", "/subjects", missing_ok=True)
            if status != 404:
                log.info("schema registry: using %s (Apicurio's Confluent API)", self.url)
                return
            self.url = root
        raise SchemaRegistryError(
            f"the schema registry at {self.url} answered GET /subjects with HTTP 404; is "
            "STREAMS_SCHEMA_REGISTRY_URL the registry's API base URL (Apicurio's: "
            f"http://host:port{APICURIO_CCOMPAT})?"
        )

    def schema(self, schema_id: int) -> tuple[str, str]:
        """``(schema_type, text)`` of ``schema_id``, fetched once and cached."""
        cached = self._by_id.get(schema_id)
        if cached is not None:
            return cached
        status, body = self._request("GET", f"/schemas/ids/{schema_id}", missing_ok=True)
        if status == 404:
            raise UnknownSchemaError(f"schema id {schema_id} is not in the registry at {self.url}")
        if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
            raise SchemaRegistryError(
                f"the schema registry at {self.url} answered schema id {schema_id} without a "
                "schema; is STREAMS_SCHEMA_REGISTRY_URL the registry's API base URL?"
            )
        found = (str(body.get("schemaType") or "AVRO"), body["schema"])
        with self._lock:
            self._by_id[schema_id] = found
        return found

    def register(self, subject: str, schema_type: str, text: str) -> int:
        """The id of ``text`` under ``subject``, registered now unless it already is. A
        schema the subject's compatibility rule refuses raises with the subject and rule."""
        body: dict[str, Any] = {"schema": text}
        if schema_type != "AVRO":
            body["schemaType"] = schema_type
        quoted = urllib.parse.quote(subject, safe="")
        status, answer = self._request(
            "POST", f"/subjects/{quoted}/versions", body, refused_ok=True
        )
        if status == 409:
            rule = self.compatibility(subject)
            raise SchemaRegistryError(
                f"the schema registry refuses the schema for subject {subject!r}: it is not "
                f"{rule}-compatible with the versions registered; make the change compatible "
                "(e.g. give new fields defaults) or register it under a new subject"
            )
        if status >= 400:
            raise SchemaRegistryError(
                f"the schema registry refuses the schema for subject {subject!r} "
                f"(HTTP {status}: {_message(answer)}); fix the schema file"
            )
        if not isinstance(answer, dict) or not isinstance(answer.get("id"), int):
            raise SchemaRegistryError(
                f"the schema registry at {self.url} registered {subject!r} without an id"
            )
        schema_id = int(answer["id"])
        with self._lock:
            self._by_id.setdefault(schema_id, (schema_type, text))
        return schema_id

    def compatibility(self, subject: str) -> str:
        """The subject's compatibility level (its own, else the registry's default)."""
        quoted = urllib.parse.quote(subject, safe="")
        for path in (f"/config/{quoted}?defaultToGlobal=true", "/config"):
            try:
                status, body = self._request("GET", path, missing_ok=True)
            except SchemaRegistryError:
                break
            if status == 200 and isinstance(body, dict):
                level = body.get("compatibilityLevel") or body.get("compatibility")
                if isinstance(level, str):
                    return level
        return "the subject's compatibility rule"

    # -- HTTP ----------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        missing_ok: bool = False,
        refused_ok: bool = False,
    ) -> tuple[int, Any]:
        data = None if body is None else orjson.dumps(body)
        headers = {"Accept": CONTENT_TYPE + ", application/json"}
        if data is not None:
            headers["Content-Type"] = CONTENT_TYPE
        if self._auth is not None:
            headers["Authorization"] = self._auth
        last = ""
        for attempt in range(len(self.backoff_s) + 1):
            if attempt:
                time.sleep(self.backoff_s[attempt - 1])
            request = urllib.request.Request(
                self.url + path, data=data, headers=headers, method=method
            )
            self.requests += 1
            try:
                with urllib.request.urlopen(
                    request, timeout=self.timeout_s, context=self._context
                ) as response:
                    return response.status, _json(response.read())
            except urllib.error.HTTPError as exc:
                status = exc.code
                answer = _json(exc.read())
                if status >= 500:
                    last = f"HTTP {status}: {_message(answer)}"
                    continue
                if status in (401, 403):
                    raise SchemaRegistryError(
                        f"the schema registry at {self.url} refuses the credentials (HTTP "
                        f"{status}); set STREAMS_SCHEMA_REGISTRY_USER and "
                        "STREAMS_SCHEMA_REGISTRY_PASSWORD"
                    ) from None
                if status == 404 and missing_ok:
                    return status, answer
                if refused_ok:
                    return status, answer
                raise SchemaRegistryError(
                    f"the schema registry at {self.url} answered {method} {path.split('?')[0]} "
                    f"with HTTP {status} ({_message(answer)}); is STREAMS_SCHEMA_REGISTRY_URL "
                    "the registry's API base URL?"
                ) from None
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                if isinstance(reason, ssl.SSLError):
                    raise SchemaRegistryError(
                        f"TLS to the schema registry at {self.url} fails ({reason}); set "
                        "STREAMS_SCHEMA_REGISTRY_CAFILE to the CA that signed its certificate"
                    ) from None
                last = str(reason)
                continue
        raise SchemaRegistryError(
            f"the schema registry at {self.url} does not answer ({last}); start it or fix "
            "STREAMS_SCHEMA_REGISTRY_URL"
        )


def redact(url: str) -> str:
    """``url`` with whatever precedes the last ``@`` of its authority replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    authority_end = len(rest)
    at = rest.rfind("@", 0, authority_end)
    if at < 0:
        return url
    return f"{scheme}{sep}***@{rest[at + 1 :]}"


def _json(data: bytes) -> Any:
    try:
        return orjson.loads(data) if data else None
    except orjson.JSONDecodeError:
        return data[:200].decode("utf-8", "replace")


def _message(answer: Any) -> str:
    if isinstance(answer, dict) and answer.get("message"):
        return str(answer["message"])[:300]
    return str(answer)[:300]
