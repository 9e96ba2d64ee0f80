"""The local Schema Registry (streams.broker.registry) speaks Confluent's API, over plain HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest

# The first use on a machine builds the server with Maven inside the fixture's set-up.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


def _call(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": CONTENT_TYPE}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def _avro(*fields: dict[str, Any]) -> dict[str, str]:
    record = {"type": "record", "name": "Event", "namespace": "dev.streams", "fields": fields}
    return {"schema": json.dumps(record)}


def test_register_fetch_and_backward_compatibility(schema_registry: str) -> None:
    subject = f"events-{uuid.uuid4().hex[:8]}-value"
    versions = f"{schema_registry}/subjects/{subject}/versions"
    v1 = _avro({"name": "id", "type": "string"})

    assert _call("PUT", f"{schema_registry}/config/{subject}", {"compatibility": "BACKWARD"}) == (
        200,
        {"compatibility": "BACKWARD"},
    )
    status, registered = _call("POST", versions, v1)
    assert status == 200, registered
    status, fetched = _call("GET", f"{schema_registry}/schemas/ids/{registered['id']}")
    assert status == 200
    assert json.loads(fetched["schema"]) == json.loads(v1["schema"])

    # A field's type changed: readers of the new schema cannot read the old records.
    status, refused = _call("POST", versions, _avro({"name": "id", "type": "int"}))
    assert status == 409, refused
    # A field added with a default: they can.
    added = _avro({"name": "id", "type": "string"}, {"name": "n", "type": "int", "default": 0})
    status, accepted = _call("POST", versions, added)
    assert status == 200, accepted
    assert accepted["id"] != registered["id"]
    assert _call("GET", versions) == (200, [1, 2])
