"""The subscriber docs agree with the schemas: AsyncAPI, fields, fingerprints, bytes.

``docs/events.md`` and ``docs/asyncapi.yaml`` are read by teams that never
see our code, so every fact in them that the schemas determine is checked
here against the schemas and the codec.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

import yaml  # type: ignore[import-untyped]

from messagehub import asyncapi, codec, schema_compat, topics

DOCS_DIR = codec.SCHEMAS_DIR.parent / "docs"
EVENTS_PAGE = DOCS_DIR / "events.md"


def _page() -> str:
    return EVENTS_PAGE.read_text(encoding="utf-8")


def _section(heading: str) -> str:
    page = _page()
    start = page.index(f"\n{heading}\n")
    following = re.search(r"\n#{1,3} ", page[start + len(heading) + 2:])
    end = start + len(heading) + 2 + following.start() if following else len(page)
    return page[start:end]


def _conversation_event() -> dict[str, Any]:
    return schema_compat.load_current()["ConversationEvent"]


# --- AsyncAPI ------------------------------------------------------------------


def test_asyncapi__file_equals_generated_document() -> None:
    committed = (DOCS_DIR / "asyncapi.yaml").read_text(encoding="utf-8")

    assert committed == asyncapi.render(), "run: python -m messagehub.asyncapi --write"


def test_asyncapi__channel_per_topic_with_its_schema() -> None:
    document = yaml.safe_load((DOCS_DIR / "asyncapi.yaml").read_text(encoding="utf-8"))
    current = schema_compat.load_current()

    channels = {channel["address"]: channel for channel in document["channels"].values()}
    assert set(channels) == set(topics.RECORD_OF_TOPIC)
    for topic, record_name in topics.RECORD_OF_TOPIC.items():
        assert list(channels[topic]["messages"]) == [record_name]
        payload = document["components"]["messages"][record_name]["payload"]
        assert payload["schema"] == current[record_name], record_name


# --- events.md -------------------------------------------------------------------


def test_events_page__names_every_topic() -> None:
    page = _page()

    for topic in topics.RECORD_OF_TOPIC:
        assert f"`{topic}`" in page, topic


def test_events_page__describes_every_event_type() -> None:
    table = _section("## Conversation events")
    [type_field] = [f for f in _conversation_event()["fields"] if f["name"] == "type"]

    for symbol in type_field["type"]["symbols"]:
        assert f"| `{symbol}` |" in table, symbol


def test_events_page__names_every_field() -> None:
    section = _section("## Conversation events")

    for field in _conversation_event()["fields"]:
        assert f"`{field['name']}`" in section, field["name"]


def test_events_page__fingerprint_table_matches_schemas() -> None:
    rows = re.findall(r"^\| `(\w+)` \| (\d+) \| `([0-9a-f ]+)` \|$", _section("### Fingerprints"),
                      re.MULTILINE)
    documented = {(name, int(version)): bytes.fromhex(hex_bytes) for name, version, hex_bytes in rows}

    released, _ = schema_compat.load_released()
    expected = {(version.name, version.version): _fingerprint(version.schema)
                for versions in released.values() for version in versions}
    assert documented == expected


def test_events_page__byte_example_equals_codec_output() -> None:
    example = re.search(r"```text\n(.*?)```", _section("### A value, byte by byte"), re.DOTALL)
    assert example is not None

    documented = b"".join(_bytes_of_line(line) for line in example[1].splitlines())

    record = {
        "event_id": "e2c34a11-fc9e-5c30-86a2-b84b67f1ff27", "type": "QUEUED",
        "occurred_at": datetime(2026, 3, 5, 8, 12, tzinfo=timezone.utc),
        "inbox_id": "5b0e3f4c-8a1d-4e27-9c55-2f6d1a7b3e90",
        "conversation_id": "a3c1d2e4-5f60-5718-8a9b-0c1d2e3f4a5b",
        "reason": "all_agents_at_limit",
    }
    assert documented == codec.encode("ConversationEvent", record)
    assert f"A `QUEUED` event, {len(documented)} bytes." in _page()


EXAMPLE_TOKEN = re.compile(r'(?:([0-9a-f]{2})|"([^"]*)")(?: |$)')


def _bytes_of_line(line: str) -> bytes:
    """Return the bytes of an example line: hex pairs and quoted text, up to the comment."""
    data, position = b"", 0
    while (token := EXAMPLE_TOKEN.match(line, position)) is not None:
        data += bytes.fromhex(token[1]) if token[1] else token[2].encode()
        position = token.end()
    return data


def _fingerprint(schema: dict[str, Any]) -> bytes:
    from fastavro.schema import fingerprint

    return bytes.fromhex(fingerprint(schema_compat.canonical_form(schema), "CRC-64-AVRO"))


def test_events_page__links_resolve() -> None:
    for target in re.findall(r"\]\((?!https?:|#)([^)]+)\)", _page()):
        assert (EVENTS_PAGE.parent / target).resolve().exists(), target
