"""The AsyncAPI 3.1 document of messagehub's topics, generated from ``schemas/``.

``docs/asyncapi.yaml`` is the output of :func:`render`: one channel per
topic of :mod:`messagehub.topics`, one message per record schema with the
``.avsc`` file inlined as its Avro payload, and the inbox id as the Kafka
key. The contract tests fail when the file differs from what :func:`render`
returns, so after a schema change run::

    python -m messagehub.asyncapi --write

PyYAML is a test dependency, so only developers and CI import this module.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from messagehub import topics
from messagehub.codec import SCHEMAS_DIR
from messagehub.schema_compat import schema_version_default

DOCUMENT_PATH = SCHEMAS_DIR.parent / "docs" / "asyncapi.yaml"
AVRO_SCHEMA_FORMAT = "application/vnd.apache.avro+json;version=1.9.0"
KAFKA_BINDING_VERSION = "0.5.0"

# Purpose and writer of each topic; the record docs describe the values.
TOPIC_DESCRIPTIONS = {
    topics.MAIL_RECEIVED: "Every mail ingest stored and accepted for an inbox. Written by ingest.",
    topics.CONVERSATION_EVENTS: (
        "Everything that happens to a conversation: created, message added, assigned, "
        "unassigned, queued, status changed, CSAT requested and answered, delivery failed. "
        "Written by router, assign, outbound and api. The topic to mirror conversations from."),
    topics.OUTBOUND_REQUESTS: "Requests to send one mail in a conversation. Written by assign, "
                              "read by outbound.",
    topics.MAIL_SENT: "Mails the SMTP server accepted. Written by outbound, read by router.",
    topics.MAIL_FAILED: "Outbound requests that could not be delivered for good. Written by "
                        "outbound.",
    topics.ROUTER_DEAD_LETTER: "Records the router could not process, with the reason.",
    topics.ASSIGN_DEAD_LETTER: "Records the assign stage could not process, with the reason.",
    topics.OUTBOUND_DEAD_LETTER: "Records the outbound stage could not process, with the reason.",
}

# A dead letter's key is copied from the record that failed, which may lack one.
KEY_DESCRIPTIONS = {
    "DeadLetter": "UUID of the inbox as UTF-8 text when the failed record named one, else no key.",
}

DESCRIPTION = """\
The Kafka topics of messagehub, its public event API. Every value is an Avro
record whose schema is inlined below and kept in schemas/ of the repository.

Wire format of a value (Avro single-object encoding): the two bytes C3 01,
then the 8-byte CRC-64-AVRO fingerprint of the schema's Parsing Canonical
Form in little-endian order, then the Avro binary encoding of the record.
Every key is the inbox UUID as UTF-8 text, so one inbox's records stay in
order on one partition. Delivery is at least once: deduplicate on event_id.

info.version is the highest schema_version of the records; each record
carries its own schema_version. See docs/events.md for ordering, retention,
replay and the compatibility promise.
"""


def build() -> dict[str, Any]:
    """Return the AsyncAPI document as plain data."""
    schemas = _record_schemas()
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for topic, record_name in topics.RECORD_OF_TOPIC.items():
        channel_id = _channel_id(topic)
        channels[channel_id] = {
            "address": topic,
            "description": TOPIC_DESCRIPTIONS[topic],
            "messages": {record_name: {"$ref": f"#/components/messages/{record_name}"}},
            "bindings": {"kafka": {"topic": topic, "bindingVersion": KAFKA_BINDING_VERSION}},
        }
        operations[f"send{channel_id[0].upper()}{channel_id[1:]}"] = {
            "action": "send",
            "summary": f"messagehub writes {record_name} records to {topic}.",
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "messages": [{"$ref": f"#/channels/{channel_id}/messages/{record_name}"}],
        }

    return {
        "asyncapi": "3.1.0",
        "info": {
            "title": "messagehub topics",
            "version": str(max(schema_version_default(s) or 1 for s in schemas.values())),
            "description": DESCRIPTION,
        },
        "servers": {"local": {
            "host": "127.0.0.1:17092",
            "protocol": "kafka",
            "description": "The broker of the local stack that `messagehub up` starts "
                           "(port base 17000).",
        }},
        "channels": channels,
        "operations": operations,
        "components": {"messages": {name: _message(name, schema)
                                    for name, schema in schemas.items()}},
    }


class _Dumper(yaml.SafeDumper):  # type: ignore[misc]
    """Writes multi-line text as literal blocks, so the description stays readable."""


def _represent_text(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _represent_text)


def render() -> str:
    """Return the document as the YAML text kept in ``docs/asyncapi.yaml``."""
    header = ("# Generated by `python -m messagehub.asyncapi --write` from schemas/ and\n"
              "# messagehub/topics.py; edit those, not this file.\n")
    body: str = yaml.dump(build(), Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                          width=100)
    return header + body


def main(argv: list[str] | None = None) -> int:
    """Print the document, or write it to ``docs/asyncapi.yaml`` with --write."""
    parser = argparse.ArgumentParser(prog="python -m messagehub.asyncapi",
                                     description="Generate docs/asyncapi.yaml from schemas/.")
    parser.add_argument("--write", action="store_true",
                        help="write docs/asyncapi.yaml instead of printing the document")
    args = parser.parse_args(argv)

    text = render()
    if args.write:
        DOCUMENT_PATH.write_text(text, encoding="utf-8")
        print(f"wrote {DOCUMENT_PATH.name}")
    else:
        sys.stdout.write(text)
    return 0


def _record_schemas() -> dict[str, dict[str, Any]]:
    schemas = {}
    for record_name in dict.fromkeys(topics.RECORD_OF_TOPIC.values()):
        path = SCHEMAS_DIR / f"{record_name}.avsc"
        schemas[record_name] = json.loads(path.read_text(encoding="utf-8"))
    return schemas


def _message(record_name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": record_name,
        "title": f"{record_name} v{schema_version_default(schema) or 1}",
        "summary": schema["doc"].split(". ")[0].rstrip(".") + ".",
        "description": schema["doc"],
        "contentType": "application/octet-stream",
        "payload": {"schemaFormat": AVRO_SCHEMA_FORMAT, "schema": schema},
        "bindings": {"kafka": {
            "key": {"type": "string", "format": "uuid", "description": KEY_DESCRIPTIONS.get(
                record_name, "UUID of the inbox, as UTF-8 text.")},
            "bindingVersion": KAFKA_BINDING_VERSION,
        }},
    }


def _channel_id(topic: str) -> str:
    words = topic.replace("-", ".").split(".")
    return words[0] + "".join(word.capitalize() for word in words[1:])


if __name__ == "__main__":
    sys.exit(main())
