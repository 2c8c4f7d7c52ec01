"""The Avro single-object codec: header layout, round trips, bad input."""

from __future__ import annotations

import struct
from datetime import datetime, timezone

import pytest

from messagehub import codec


def _mail_received() -> dict[str, object]:
    return {
        "event_id": "e1", "occurred_at": datetime(2026, 3, 5, 9, 12, tzinfo=timezone.utc),
        "inbox_id": "i1", "raw_sha256": "ab" * 32, "raw_size": 1234, "source": "smtp",
        "envelope_recipients": ["support-fwd@inbound.example.com"],
        "subject": "見積書の数量変更について",
    }


def test_encode__starts_with_marker_and_fingerprint() -> None:
    value = codec.encode("MailReceived", _mail_received())

    assert value[:2] == b"\xc3\x01"
    assert len(value) > codec.HEADER_SIZE


def test_fingerprint__is_crc64_avro_of_canonical_form() -> None:
    # CRC-64-AVRO as the Avro specification defines it, computed here
    # independently of fastavro.
    empty = 0xC15D213AA4D7A795
    table = []
    for byte in range(256):
        fingerprint = byte
        for _ in range(8):
            fingerprint = (fingerprint >> 1) ^ (empty & -(fingerprint & 1))
        table.append(fingerprint)

    canonical = ('{"name":"messagehub.events.X","type":"record",'
                 '"fields":[{"name":"f","type":"string"}]}').encode()
    fingerprint = empty
    for byte in canonical:
        fingerprint = (fingerprint >> 8) ^ table[(fingerprint ^ byte) & 0xFF]

    from fastavro.schema import fingerprint as fastavro_fingerprint
    assert bytes.fromhex(fastavro_fingerprint(canonical.decode(), "CRC-64-AVRO")) == \
        struct.pack("<Q", fingerprint)


def test_round_trip__every_field_survives() -> None:
    record = _mail_received()

    name, decoded = codec.decode(codec.encode("MailReceived", record))

    assert name == "MailReceived"
    for key, value in record.items():
        assert decoded[key] == value
    assert decoded["message_id"] is None
    assert decoded["schema_version"] == 1


def test_decode__rejects_value_without_marker() -> None:
    with pytest.raises(codec.CodecError, match="C3 01"):
        codec.decode(b"{\"json\": true}")


def test_decode__rejects_unknown_fingerprint() -> None:
    with pytest.raises(codec.CodecError, match="unknown schema fingerprint"):
        codec.decode(b"\xc3\x01" + b"\x00" * 8 + b"\x02")


def test_decode__rejects_truncated_body() -> None:
    value = codec.encode("MailReceived", _mail_received())

    with pytest.raises(codec.CodecError, match="cannot be read"):
        codec.decode(value[:15])


def test_encode__rejects_missing_required_field() -> None:
    record = _mail_received()
    del record["inbox_id"]

    with pytest.raises(codec.CodecError, match="inbox_id"):
        codec.encode("MailReceived", record)


def test_schemas__one_record_per_topic_is_loaded() -> None:
    assert codec.schema_names() == ["ConversationEvent", "DeadLetter", "MailFailed",
                                    "MailReceived", "MailSent", "OutboundRequest"]
