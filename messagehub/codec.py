"""Avro codec of every messagehub topic, in Avro's single-object encoding.

Producers call :func:`encode` with a record name and a dict; consumers call
:func:`decode` and get the record name back with the dict. The schemas are
the ``.avsc`` files in ``schemas/``; a value on the wire is

    0xC3 0x01 | 8-byte CRC-64-AVRO fingerprint, little-endian | Avro binary body

so a subscriber in any language can decode it with those files alone and no
schema registry. fastavro does the encoding: it is several times faster than
the ``avro`` package, which the schema compatibility checks still use.

Values written with an earlier released version of a schema (kept in
``schemas/released/``) still decode: the body is read with that version as
the writer's schema and resolved to the current one, so fields added since
then take their defaults.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.read import SchemaResolutionError
from fastavro.schema import fingerprint, to_parsing_canonical_form

SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"
RELEASED_DIR = SCHEMAS_DIR / "released"
NAMESPACE = "messagehub.events"
MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8


class CodecError(ValueError):
    """A value is not a messagehub record this codec can read or write.

    Never retriable: the same bytes fail the same way, so consumers send
    them to their dead-letter topic.
    """

    retriable = False


@dataclass(frozen=True)
class RecordSchema:
    name: str
    parsed: Any
    fingerprint: bytes


def _load(path: Path) -> RecordSchema:
    parsed = fastavro.parse_schema(json.loads(path.read_text(encoding="utf-8")))
    canonical = to_parsing_canonical_form(parsed)
    record_fingerprint = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
    short_name = parsed["name"].rsplit(".", 1)[-1]
    return RecordSchema(short_name, parsed, record_fingerprint)


@cache
def _schemas() -> dict[str, RecordSchema]:
    by_name: dict[str, RecordSchema] = {}
    for path in sorted(SCHEMAS_DIR.glob("*.avsc")):
        schema = _load(path)
        by_name[schema.name] = schema
    return by_name


@cache
def _schemas_by_fingerprint() -> dict[bytes, RecordSchema]:
    """Return every schema a value may have been written with: released and current."""
    by_fingerprint = {schema.fingerprint: schema
                      for schema in map(_load, sorted(RELEASED_DIR.glob("*.avsc")))}
    by_fingerprint.update((schema.fingerprint, schema) for schema in _schemas().values())
    return by_fingerprint


def schema_names() -> list[str]:
    """Return the names of all record schemas, e.g. ``MailReceived``."""
    return sorted(_schemas())


def encode(record_name: str, record: dict[str, Any]) -> bytes:
    """Encode ``record`` as a single-object ``record_name`` value."""
    schema = _schemas().get(record_name)
    if schema is None:
        raise CodecError(f"unknown record schema: {record_name!r}")

    body = io.BytesIO()
    try:
        fastavro.schemaless_writer(body, schema.parsed, record, strict_allow_default=True)
    except (ValueError, TypeError, KeyError) as exc:
        raise CodecError(f"invalid {record_name} record: {exc}") from None
    return MAGIC + schema.fingerprint + body.getvalue()


def decode(value: bytes) -> tuple[str, dict[str, Any]]:
    """Decode a single-object value; return its record name and fields."""
    if len(value) < HEADER_SIZE or value[:2] != MAGIC:
        raise CodecError("not an Avro single-object value: missing the C3 01 marker")

    schema = _schemas_by_fingerprint().get(value[2:HEADER_SIZE])
    if schema is None:
        raise CodecError(f"unknown schema fingerprint: {value[2:HEADER_SIZE].hex()}")

    # An older writer's schema is resolved to the current reader's schema.
    current = _schemas().get(schema.name, schema)
    reader = None if current.fingerprint == schema.fingerprint else current.parsed
    try:
        record = fastavro.schemaless_reader(io.BytesIO(value[HEADER_SIZE:]), schema.parsed,
                                            reader)
    except (EOFError, ValueError, TypeError, IndexError, UnicodeDecodeError,
            SchemaResolutionError) as exc:
        raise CodecError(f"{schema.name} body cannot be read: {exc!r}") from None
    return schema.name, record
