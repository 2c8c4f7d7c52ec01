"""The schema contract: current schemas against released ones, and the gate's teeth.

The first test is the CI gate: it fails when a schema in ``schemas/`` cannot
read its released versions' data, or they cannot read its data. The others
prove that the gate rejects each kind of breaking change, built in memory
from the real ConversationEvent schema, and that the codec reads values
written with a released version.
"""

from __future__ import annotations

import copy
import io
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import fastavro
import pytest

from messagehub import codec, events, schema_compat, topics
from messagehub.schema_compat import ReleasedSchema

SCHEMAS_DIR = codec.SCHEMAS_DIR
ENVELOPE = ("event_id", "type", "occurred_at", "inbox_id", "conversation_id", "schema_version")


def _current(name: str = "ConversationEvent") -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS_DIR / f"{name}.avsc").read_text(encoding="utf-8"))
    return schema


def _released(name: str = "ConversationEvent") -> list[ReleasedSchema]:
    released, problems = schema_compat.load_released()
    assert problems == []
    return released[name]


def _field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    fields: list[dict[str, Any]] = schema["fields"]
    [field] = [f for f in fields if f["name"] == name]
    return field


def _event_type_enum(schema: dict[str, Any]) -> dict[str, Any]:
    enum: dict[str, Any] = _field(schema, "type")["type"]
    return enum


def _with_next_version(schema: dict[str, Any]) -> dict[str, Any]:
    variant = copy.deepcopy(schema)
    _field(variant, "schema_version")["default"] += 1
    return variant


# --- the gate ---------------------------------------------------------------


def test_schemas__compatible_with_every_released_version() -> None:
    assert schema_compat.check() == []


def test_schemas__every_record_has_released_version() -> None:
    released, _ = schema_compat.load_released()

    assert set(schema_compat.load_current()) == set(released)


def test_conversation_event__envelope_fields_come_first() -> None:
    names = [field["name"] for field in _current()["fields"]]

    assert tuple(names[:len(ENVELOPE)]) == ENVELOPE


def test_conversation_event__events_module_knows_every_field() -> None:
    names = [field["name"] for field in _current()["fields"]]

    assert list(events.CONVERSATION_EVENT_FIELDS) == names[len(ENVELOPE):]


def test_conversation_event__builder_writes_schema_version() -> None:
    record = events.conversation_event("QUEUED", fact="f", inbox_id="i", conversation_id="c")

    assert record["schema_version"] == schema_compat.schema_version_default(_current())


def test_topics__every_record_has_schema_file() -> None:
    for record_name in topics.RECORD_OF_TOPIC.values():
        assert (SCHEMAS_DIR / f"{record_name}.avsc").is_file(), record_name


# --- breaking changes the gate must reject -----------------------------------


def _required_field_added(schema: dict[str, Any]) -> None:
    schema["fields"].append({"name": "priority", "type": "string", "doc": "Priority."})


def _symbol_and_default_removed(schema: dict[str, Any]) -> None:
    enum = _event_type_enum(schema)
    enum["symbols"].remove("QUEUED")
    del enum["default"]


def _symbol_removed(schema: dict[str, Any]) -> None:
    _event_type_enum(schema)["symbols"].remove("QUEUED")


def _enum_default_removed(schema: dict[str, Any]) -> None:
    del _event_type_enum(schema)["default"]


def _required_field_removed(schema: dict[str, Any]) -> None:
    schema["fields"].remove(_field(schema, "conversation_id"))


def _optional_field_removed(schema: dict[str, Any]) -> None:
    schema["fields"].remove(_field(schema, "subject"))


def _type_changed(schema: dict[str, Any]) -> None:
    _field(schema, "inbox_id")["type"] = "long"


def _union_narrowed(schema: dict[str, Any]) -> None:
    _field(schema, "subject")["type"] = "string"
    del _field(schema, "subject")["default"]


def _record_renamed(schema: dict[str, Any]) -> None:
    schema["name"] = "ConversationFact"


BREAKING_CHANGES = [
    (_required_field_added, "cannot read v1 data: priority"),
    (_symbol_and_default_removed, "cannot read v1 data: {'QUEUED'}"),
    (_symbol_removed, "removed since v1: symbol messagehub.events.ConversationEventType.QUEUED"),
    (_enum_default_removed, "removed since v1: default of enum "
                            "messagehub.events.ConversationEventType"),
    (_required_field_removed, "a reader on v1 cannot read current data: conversation_id"),
    (_optional_field_removed, "removed since v1: field messagehub.events.ConversationEvent.subject"),
    (_type_changed, "reader type: long not compatible with writer type: string"),
    (_union_narrowed, "reader type: string not compatible with writer type: null"),
    (_record_renamed, "record name messagehub.events.ConversationFact differs"),
]


@pytest.mark.parametrize(("change", "expected"), BREAKING_CHANGES,
                         ids=[change.__name__.strip("_") for change, _ in BREAKING_CHANGES])
def test_check__rejects_breaking_change(change: Any, expected: str) -> None:
    variant = _with_next_version(_current())
    change(variant)

    problems = schema_compat.check_schema(variant, _released())

    assert any(expected in problem for problem in problems), problems


def test_check__rejects_wire_change_without_version_bump() -> None:
    variant = copy.deepcopy(_current())
    variant["fields"].append({"name": "priority", "type": ["null", "string"], "default": None,
                              "doc": "Priority."})

    problems = schema_compat.check_schema(variant, _released())

    assert problems == ["the wire form changed since released v2: raise the schema_version "
                        "default to 3"]


def test_check__rejects_field_without_doc() -> None:
    variant = copy.deepcopy(_current())
    del _field(variant, "status")["doc"]

    assert schema_compat.check_schema(variant, _released()) == ["ConversationEvent.status has no doc"]


def test_check__rejects_removed_schema_file(tmp_path: Path) -> None:
    schemas, released = tmp_path / "schemas", tmp_path / "schemas" / "released"
    shutil.copytree(SCHEMAS_DIR, schemas)
    (schemas / "MailFailed.avsc").unlink()

    problems = schema_compat.check(schemas, released)

    assert problems == ["MailFailed: released but removed from schemas/; subscribers still read "
                        "it, so keep the file"]


def test_check__rejects_misnamed_released_file(tmp_path: Path) -> None:
    schemas, released = tmp_path / "schemas", tmp_path / "schemas" / "released"
    shutil.copytree(SCHEMAS_DIR, schemas)
    (released / "MailSent.v1.avsc").rename(released / "MailSent.avsc")

    problems = schema_compat.check(schemas, released)

    assert problems == ["MailSent.avsc: expected the name <Record>.v<N>.avsc of the record "
                        "'MailSent' it contains"]


# --- compatible changes the gate must accept ----------------------------------


def test_check__accepts_optional_field_and_new_event_type() -> None:
    variant = _with_next_version(_current())
    variant["fields"].append({"name": "priority", "type": ["null", "string"], "default": None,
                              "doc": "Priority."})
    _event_type_enum(variant)["symbols"].append("SNOOZED")

    assert schema_compat.check_schema(variant, _released()) == []


def test_check__accepts_doc_change_without_version_bump() -> None:
    variant = copy.deepcopy(_current())
    _field(variant, "status")["doc"] = "Status after the event."

    assert schema_compat.check_schema(variant, _released()) == []


def test_release__copies_only_changed_schema(tmp_path: Path) -> None:
    schemas, released = tmp_path / "schemas", tmp_path / "schemas" / "released"
    shutil.copytree(SCHEMAS_DIR, schemas)
    variant = _with_next_version(_current("MailFailed"))
    variant["fields"].append({"name": "attempts", "type": "int", "default": 1, "doc": "Tries."})
    (schemas / "MailFailed.avsc").write_text(json.dumps(variant), encoding="utf-8")

    written = schema_compat.release(schemas, released)

    assert written == [released / "MailFailed.v2.avsc"]
    assert schema_compat.check(schemas, released) == []


# --- reading data of every released version ------------------------------------


def _v1_conversation_event() -> dict[str, Any]:
    return {
        "event_id": "e1", "type": "STATUS_CHANGED",
        "occurred_at": datetime(2026, 3, 5, 9, 12, tzinfo=timezone.utc),
        "inbox_id": "i1", "conversation_id": "c1", "schema_version": 1,
        "status": "open", "previous_status": "resolved", "reason": "customer_reply",
    }


def _single_object(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    parsed = fastavro.parse_schema(schema)
    canonical = fastavro.schema.to_parsing_canonical_form(parsed)
    body = io.BytesIO()
    fastavro.schemaless_writer(body, parsed, record, strict_allow_default=True)
    return (b"\xc3\x01" + bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))
            + body.getvalue())


def test_codec__decodes_value_written_with_v1() -> None:
    [v1] = [r for r in _released() if r.version == 1]

    name, record = codec.decode(_single_object(v1.schema, _v1_conversation_event()))

    assert name == "ConversationEvent"
    assert record["type"] == "STATUS_CHANGED"
    assert record["previous_status"] == "resolved"
    assert record["schema_version"] == 1
    assert record["agent_id"] is None
    assert record["csat_rating"] is None


def test_codec__knows_every_released_fingerprint() -> None:
    for versions in schema_compat.load_released()[0].values():
        for version in versions:
            canonical = schema_compat.canonical_form(version.schema)
            header = b"\xc3\x01" + bytes.fromhex(fastavro.schema.fingerprint(canonical,
                                                                            "CRC-64-AVRO"))

            # Known fingerprint, so decoding fails on the missing body only.
            with pytest.raises(codec.CodecError, match="cannot be read"):
                codec.decode(header)


def test_v1_reader__reads_new_event_type_as_unknown() -> None:
    [v1] = [r for r in _released() if r.version == 1]
    record = events.conversation_event("CSAT_ANSWERED", fact="csat", inbox_id="i1",
                                       conversation_id="c1", csat_rating=5)
    value = codec.encode("ConversationEvent", record)

    old = fastavro.schemaless_reader(io.BytesIO(value[codec.HEADER_SIZE:]),
                                     fastavro.parse_schema(_current()),
                                     fastavro.parse_schema(v1.schema))
    assert isinstance(old, dict)

    assert old["type"] == "UNKNOWN"
    assert old["conversation_id"] == "c1"
    assert "csat_rating" not in old
