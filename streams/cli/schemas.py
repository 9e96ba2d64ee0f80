"""``streams schemas``: work with the versioned message schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import orjson

from streams.core.avro_compat import reader_problems
from streams.core.formats import check_schema, load_schema_data
from streams.errors import DeclarationError, StreamsError
from streams.schemas import check_backward_compatible, compile_schema


@click.group(name="schemas")
def command() -> None:
    """Event schemas: compatibility checks."""


@command.command(name="check")
@click.argument("old", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("new", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as a JSON object.")
def check(old: Path, new: Path, as_json: bool) -> None:
    """Check that consumers using schema NEW can read everything written under schema OLD.

    JSON Schemas, or Avro schemas (``.avsc`` files: Avro's schema resolution rules). Prints
    "compatible" and exits 0, or prints each reason it is not and exits 1.
    """
    if old.suffix == ".avsc" or new.suffix == ".avsc":
        reasons = reader_problems(_read_avro(old), _read_avro(new))
    else:
        reasons = check_backward_compatible(_read_schema(old), _read_schema(new))
    if as_json:
        click.echo(orjson.dumps({"compatible": not reasons, "reasons": reasons}).decode())
    elif reasons:
        for reason in reasons:
            click.echo(reason)
    else:
        click.echo("compatible")
    if reasons:
        raise SystemExit(1)


def _read_avro(path: Path) -> Any:
    try:
        data = load_schema_data(path)
        check_schema("avro", data, str(path))
    except DeclarationError as exc:
        raise StreamsError(str(exc)) from None
    return data


def _read_schema(path: Path) -> dict[str, Any]:
    try:
        schema = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise StreamsError(f"cannot read {path}: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise StreamsError(f"{path} is not valid JSON: {exc}; fix the file") from None
    if not isinstance(schema, dict):
        raise StreamsError(f"{path} holds no JSON object, so it is not a JSON Schema; fix the file")
    compile_schema(schema, source=str(path))
    return schema
