"""RegistryClient (streams.registry.client) against a scripted fake registry on loopback, and
MemoryRegistry (streams.registry.memory)."""

from __future__ import annotations

import base64
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from streams.errors import SchemaRegistryError, UnknownSchemaError
from streams.registry import MemoryRegistry, RegistryClient

PASSWORD = "pa55-w0rd-never-shown"
USER_SCHEMA = '{"type":"record","name":"User","fields":[{"name":"id","type":"long"}]}'
JSON_SCHEMA = '{"type":"object","properties":{"id":{"type":"integer"}}}'
# Waits between attempts: tiny, so retries cost nothing.
FAST = (0.001, 0.001, 0.001)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeRegistry:
    """Answers ``(method, path)`` from a script: a list of ``(status, body)`` consumed in
    order, the last one repeated. Unscripted requests get a 404."""

    url: str = ""
    script: dict[tuple[str, str], list[tuple[int, Any]]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def on(self, method: str, path: str, *answers: tuple[int, Any]) -> None:
        self.script[(method, path)] = list(answers)

    def answer(self, method: str, path: str) -> tuple[int, Any]:
        answers = self.script.get((method, path))
        if not answers:
            return 404, {"error_code": 40401, "message": f"{path} not found"}
        return answers.pop(0) if len(answers) > 1 else answers[0]


def _handler(fake: FakeRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            fake.seen.append(
                Seen(
                    self.command,
                    self.path,
                    dict(self.headers.items()),
                    orjson.loads(raw) if raw else None,
                )
            )
            status, body = fake.answer(self.command, self.path)
            data = orjson.dumps(body)
            self.send_response(status)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = _serve
        do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture(scope="module")
def server() -> Iterator[FakeRegistry]:
    """One loopback server for the module; ``fake`` gives each test a fresh script."""
    registry = FakeRegistry()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(registry))
    registry.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield registry
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def fake(server: FakeRegistry) -> FakeRegistry:
    server.script.clear()
    server.seen.clear()
    return server


def client(fake: FakeRegistry, **kwargs: Any) -> RegistryClient:
    kwargs.setdefault("backoff_s", FAST)
    return RegistryClient(fake.url, **kwargs)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- schemas by id -------------------------------------------------------------------------


def test_a_schema_without_a_type_is_avro(fake: FakeRegistry) -> None:
    fake.on("GET", "/schemas/ids/1", (200, {"schema": USER_SCHEMA}))
    assert client(fake).schema(1) == ("AVRO", USER_SCHEMA)


def test_a_json_schema_keeps_its_type(fake: FakeRegistry) -> None:
    fake.on("GET", "/schemas/ids/2", (200, {"schema": JSON_SCHEMA, "schemaType": "JSON"}))
    assert client(fake).schema(2) == ("JSON", JSON_SCHEMA)


def test_a_schema_is_fetched_once(fake: FakeRegistry) -> None:
    fake.on("GET", "/schemas/ids/1", (200, {"schema": USER_SCHEMA}))
    c = client(fake)
    assert c.schema(1) == c.schema(1) == ("AVRO", USER_SCHEMA)
    assert c.requests == 1
    assert [s.path for s in fake.seen] == ["/schemas/ids/1"]


def test_an_id_the_registry_lacks_is_unknown(fake: FakeRegistry) -> None:
    fake.on("GET", "/schemas/ids/9", (404, {"error_code": 40403, "message": "Schema not found"}))
    c = client(fake)
    with pytest.raises(UnknownSchemaError, match="schema id 9 is not in the registry"):
        c.schema(9)
    assert c.requests == 1  # a 404 is an answer: no retry


def test_an_answer_without_a_schema_is_an_error(fake: FakeRegistry) -> None:
    fake.on("GET", "/schemas/ids/1", (200, {"nothing": "here"}))
    with pytest.raises(SchemaRegistryError, match="without a schema"):
        client(fake).schema(1)


def test_two_503s_then_an_answer(fake: FakeRegistry) -> None:
    fake.on(
        "GET",
        "/schemas/ids/1",
        (503, {"message": "busy"}),
        (503, {"message": "busy"}),
        (200, {"schema": USER_SCHEMA}),
    )
    c = client(fake)
    assert c.schema(1) == ("AVRO", USER_SCHEMA)
    assert c.requests == 3


def test_a_registry_that_always_fails_does_not_answer(fake: FakeRegistry) -> None:
    fake.on("GET", "/schemas/ids/1", (503, {"message": "still starting"}))
    c = client(fake)
    with pytest.raises(SchemaRegistryError, match="does not answer") as caught:
        c.schema(1)
    assert "HTTP 503: still starting" in str(caught.value)
    assert c.requests == len(FAST) + 1


def test_a_closed_port_does_not_answer() -> None:
    c = RegistryClient(f"http://127.0.0.1:{closed_port()}", backoff_s=FAST)
    with pytest.raises(SchemaRegistryError, match="does not answer"):
        c.schema(1)
    with pytest.raises(SchemaRegistryError, match="does not answer"):
        c.check()
    assert c.requests == 2 * (len(FAST) + 1)


def test_a_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(SchemaRegistryError, match="is not an http"):
        RegistryClient("localhost:8081")


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_name_the_settings(fake: FakeRegistry, status: int) -> None:
    fake.on("GET", "/schemas/ids/1", (status, {"message": "Unauthorized"}))
    c = client(fake, user="app", password=PASSWORD)
    with pytest.raises(SchemaRegistryError) as caught:
        c.schema(1)
    message = str(caught.value)
    assert "STREAMS_SCHEMA_REGISTRY_USER" in message
    assert f"HTTP {status}" in message
    assert "\n" not in message
    assert c.requests == 1


# -- basic auth, and the password kept out of sight -----------------------------------------


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_auth_from_the_arguments(fake: FakeRegistry) -> None:
    fake.on("GET", "/schemas/ids/1", (200, {"schema": USER_SCHEMA}))
    client(fake, user="app", password=PASSWORD).schema(1)
    assert fake.seen[0].headers["Authorization"] == _basic("app", PASSWORD)


def test_basic_auth_from_the_url(fake: FakeRegistry) -> None:
    fake.on("GET", "/schemas/ids/1", (200, {"schema": USER_SCHEMA}))
    host = fake.url.removeprefix("http://")
    c = RegistryClient(f"http://app%40corp:p%3Ass@{host}", backoff_s=FAST)
    c.schema(1)
    assert fake.seen[0].headers["Authorization"] == _basic("app@corp", "p:ss")
    assert c.url == fake.url  # no credentials in the URL shown


def test_no_auth_header_without_a_user(fake: FakeRegistry) -> None:
    fake.on("GET", "/schemas/ids/1", (200, {"schema": USER_SCHEMA}))
    client(fake).schema(1)
    assert "Authorization" not in fake.seen[0].headers


def test_the_password_is_in_no_message(fake: FakeRegistry) -> None:
    host = fake.url.removeprefix("http://")
    secrets = (PASSWORD, base64.b64encode(f"app:{PASSWORD}".encode()).decode())
    fake.on("GET", "/schemas/ids/1", (401, {"message": "no"}))
    fake.on("GET", "/schemas/ids/2", (503, {"message": "down"}))
    fake.on("GET", "/schemas/ids/3", (200, {"odd": True}))
    fake.on("GET", "/subjects", (400, {"message": "bad"}))
    fake.on("POST", "/subjects/s-value/versions", (409, {"message": "incompatible"}))
    fake.on("POST", "/subjects/t-value/versions", (422, {"message": "invalid schema"}))
    closed = f"127.0.0.1:{closed_port()}"
    clients = [
        RegistryClient(fake.url, user="app", password=PASSWORD, backoff_s=FAST),
        RegistryClient(f"http://app:{PASSWORD}@{host}", backoff_s=FAST),
        RegistryClient(f"http://app:{PASSWORD}@{closed}", backoff_s=FAST),
        RegistryClient(f"http://{closed}", user="app", password=PASSWORD, backoff_s=FAST),
    ]
    messages: list[str] = []
    for c in clients:
        for call in (
            partial(c.schema, 1),
            partial(c.schema, 2),
            partial(c.schema, 3),
            partial(c.schema, 4),
            c.check,
            partial(c.register, "s-value", "AVRO", USER_SCHEMA),
            partial(c.register, "t-value", "AVRO", USER_SCHEMA),
        ):
            with pytest.raises((SchemaRegistryError, UnknownSchemaError)) as caught:
                call()
            messages.append(str(caught.value))
            messages.append(repr(caught.value))
        messages += [repr(c), str(c), c.url]
    with pytest.raises(SchemaRegistryError) as bad_ca:
        RegistryClient(fake.url, password=PASSWORD, cafile="/nonexistent/ca.pem")
    messages.append(str(bad_ca.value))
    assert len(messages) > 50
    for message in messages:
        for secret in secrets:
            assert secret not in message, message


@pytest.mark.parametrize(
    "url",
    [
        "ftp://app:{pw}@127.0.0.1:8081",  # not http(s)
        "http://app:{pw}@",  # no host
        "http://app:{pw}/x@127.0.0.1:8081",  # a "/" not escaped: urlsplit sees "{pw}" as a port
    ],
)
def test_a_url_that_cannot_be_used_keeps_its_password_out_of_the_error(url: str) -> None:
    # RegistryClient.__init__ puts the URL as given (userinfo and all) into the message of
    # "STREAMS_SCHEMA_REGISTRY_URL ... is not an http(s) URL", and lets urlsplit's
    # "Port could not be cast to integer value as '<password>'" ValueError escape as is.
    try:
        RegistryClient(url.format(pw=PASSWORD))
    except Exception as exc:
        error: Exception = exc
    else:
        pytest.fail("the URL was accepted")
    assert PASSWORD not in str(error), f"the password is printed: {error}"
    assert isinstance(error, SchemaRegistryError), repr(error)


def test_a_port_out_of_range_is_a_schema_registry_error() -> None:
    # parsed.port raises ValueError("Port out of range 0-65535"): not the one-line
    # SchemaRegistryError the other URL mistakes give.
    with pytest.raises(SchemaRegistryError, match="STREAMS_SCHEMA_REGISTRY_URL"):
        RegistryClient("http://127.0.0.1:99999")


# -- registering ---------------------------------------------------------------------------


def test_register_returns_the_id_and_sends_no_type_for_avro(fake: FakeRegistry) -> None:
    fake.on("POST", "/subjects/orders-value/versions", (200, {"id": 12}))
    c = client(fake)
    assert c.register("orders-value", "AVRO", USER_SCHEMA) == 12
    [post] = fake.seen
    assert post.body == {"schema": USER_SCHEMA}
    assert post.headers["Content-Type"] == "application/vnd.schemaregistry.v1+json"
    # The schema registered is known by its id without asking.
    assert c.schema(12) == ("AVRO", USER_SCHEMA)
    assert c.requests == 1


def test_register_sends_the_type_of_a_json_schema(fake: FakeRegistry) -> None:
    fake.on("POST", "/subjects/orders-value/versions", (200, {"id": 13}))
    assert client(fake).register("orders-value", "JSON", JSON_SCHEMA) == 13
    assert fake.seen[0].body == {"schema": JSON_SCHEMA, "schemaType": "JSON"}


def test_register_quotes_the_subject(fake: FakeRegistry) -> None:
    fake.on("POST", "/subjects/a%2Fb%20c/versions", (200, {"id": 1}))
    assert client(fake).register("a/b c", "AVRO", USER_SCHEMA) == 1


def test_a_refused_schema_names_the_subject_and_the_level(fake: FakeRegistry) -> None:
    fake.on("POST", "/subjects/orders-value/versions", (409, {"message": "incompatible"}))
    fake.on(
        "GET",
        "/config/orders-value?defaultToGlobal=true",
        (200, {"compatibilityLevel": "BACKWARD"}),
    )
    with pytest.raises(SchemaRegistryError) as caught:
        client(fake).register("orders-value", "AVRO", USER_SCHEMA)
    message = str(caught.value)
    assert "'orders-value'" in message
    assert "BACKWARD" in message
    assert "\n" not in message


def test_a_refused_schema_falls_back_to_the_global_level(fake: FakeRegistry) -> None:
    fake.on("POST", "/subjects/orders-value/versions", (409, {"message": "incompatible"}))
    fake.on("GET", "/config", (200, {"compatibilityLevel": "FULL_TRANSITIVE"}))
    with pytest.raises(SchemaRegistryError, match="FULL_TRANSITIVE"):
        client(fake).register("orders-value", "AVRO", USER_SCHEMA)


def test_an_invalid_schema_is_refused_with_the_registry_message(fake: FakeRegistry) -> None:
    fake.on("POST", "/subjects/orders-value/versions", (422, {"message": "Invalid schema"}))
    with pytest.raises(SchemaRegistryError, match=r"'orders-value' \(HTTP 422: Invalid schema\)"):
        client(fake).register("orders-value", "AVRO", "{")


def test_check_asks_for_the_subjects(fake: FakeRegistry) -> None:
    fake.on("GET", "/subjects", (200, []))
    client(fake).check()
    assert [s.path for s in fake.seen] == ["/subjects"]


# -- MemoryRegistry ------------------------------------------------------------------------


def test_memory_registry_ids() -> None:
    registry = MemoryRegistry()
    first = registry.register("a-value", "AVRO", USER_SCHEMA)
    assert first == 1
    assert registry.register("a-value", "AVRO", USER_SCHEMA) == first
    assert registry.register("b-value", "AVRO", USER_SCHEMA) == first  # same text, same id
    second = registry.register("a-value", "JSON", JSON_SCHEMA)
    assert second == 2
    assert registry.register("a-value", "AVRO", USER_SCHEMA + " ") == 3  # new text, new id
    assert registry.schema(first) == ("AVRO", USER_SCHEMA)
    assert registry.schema(second) == ("JSON", JSON_SCHEMA)
    assert registry.subjects == {"a-value": [1, 2, 3], "b-value": [1]}
    registry.check()


def test_memory_registry_unknown_id() -> None:
    with pytest.raises(UnknownSchemaError, match="schema id 5 is not in the registry"):
        MemoryRegistry().schema(5)


def test_an_apicurio_root_url_is_taken_for_its_confluent_api(fake: FakeRegistry) -> None:
    fake.on("GET", "/apis/ccompat/v7/subjects", (200, []))
    registry = client(fake)
    registry.check()
    assert registry.url == fake.url + "/apis/ccompat/v7"
    fake.on("GET", "/apis/ccompat/v7/schemas/ids/7", (200, {"schema": USER_SCHEMA}))
    assert registry.schema(7) == ("AVRO", USER_SCHEMA)


def test_a_url_that_serves_no_registry_is_one_line_naming_the_api_path(
    fake: FakeRegistry,
) -> None:
    with pytest.raises(SchemaRegistryError, match=r"HTTP 404.*/apis/ccompat/v7"):
        client(fake).check()
