"""Compatibility of the schemas in ``schemas/`` with their released versions.

The topics are a public contract, so each record schema may only change in
ways that every released version can live with. :func:`check` compares each
current schema with every released version kept in ``schemas/released/``
(``<Record>.v<N>.avsc``) in both directions:

- backward: a reader on the current schema reads data written with a
  released version (new fields need defaults, no symbol may be dropped
  unless the enum has a default);
- forward: a reader on a released version reads data written with the
  current schema (new enum symbols need the enum's default).

Beyond Avro's rules, no field, enum symbol or enum default of a released
version may be removed. Avro lets a field with a default go, but
subscribers would silently lose a fact they rely on. An enum without its
default could never gain a symbol again.

It also requires a doc on every record, enum and field, and a
``schema_version`` default that is raised exactly when the wire form (the
Parsing Canonical Form) changes. The contract tests in ``tests/contract``
run the check in CI. Developers run it as::

    python -m messagehub.schema_compat            # check, exit status 1 on problems
    python -m messagehub.schema_compat --release  # check, then copy changed schemas

Pair compatibility is decided by the ``avro`` package's
``ReaderWriterCompatibilityChecker``, which follows the schema resolution
rules of the Avro specification.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from fastavro import parse_schema
from fastavro.schema import to_parsing_canonical_form

from messagehub.codec import RELEASED_DIR, SCHEMAS_DIR

log = logging.getLogger(__name__)

RELEASED_NAME = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9_]*)\.v(?P<version>[1-9][0-9]*)\.avsc$")


@dataclass(frozen=True)
class ReleasedSchema:
    """One released version of a record schema."""

    name: str
    version: int
    schema: dict[str, Any]


def canonical_form(schema: dict[str, Any]) -> str:
    """Return the Parsing Canonical Form, which decides the wire fingerprint."""
    return str(to_parsing_canonical_form(parse_schema(schema)))


def schema_version_default(schema: dict[str, Any]) -> int | None:
    """Return the default of the record's ``schema_version`` field, if it has one."""
    for field in schema.get("fields", []):
        if field["name"] == "schema_version":
            default = field.get("default")
            return default if isinstance(default, int) else None
    return None


def read_problems(reader: dict[str, Any], writer: dict[str, Any]) -> list[str]:
    """Return why a reader on ``reader`` cannot read data written with ``writer``."""
    if _full_name(reader) != _full_name(writer):
        return [f"record name {_full_name(reader)} differs from {_full_name(writer)}"]

    checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
    result = checker.get_compatibility(
        avro.schema.parse(json.dumps(reader)), avro.schema.parse(json.dumps(writer)))
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    # The checker merges what it found into sets, so messages and locations
    # are reported side by side, not as pairs.
    locations = ", ".join(sorted(location or "/" for location in result.locations))
    return [f"{message} (at {locations})" for message in sorted(result.messages)]


def removal_problems(current: dict[str, Any], released: dict[str, Any]) -> list[str]:
    """Return the fields, enum symbols and enum defaults of ``released`` that ``current`` dropped."""
    now = _named_types(current, None)
    problems = []
    for name, before in _named_types(released, None).items():
        after = now.get(name)
        if after is None:
            problems.append(f"type {name}")
            continue
        kept = {field["name"] for field in after.get("fields", [])}
        kept |= {alias for field in after.get("fields", []) for alias in field.get("aliases", [])}
        problems += [f"field {name}.{field['name']}"
                     for field in before.get("fields", []) if field["name"] not in kept]
        problems += [f"symbol {name}.{symbol}"
                     for symbol in before.get("symbols", []) if symbol not in after.get("symbols", [])]
        if "default" in before and "default" not in after:
            problems.append(f"default of enum {name}, which lets readers of this version read "
                            "symbols added later")
    return problems


def doc_problems(schema: dict[str, Any]) -> list[str]:
    """Return the records, enums and fields of ``schema`` that lack a doc."""
    return [f"{path} has no doc" for path in _undocumented(schema, schema.get("name", "?"))]


def check_schema(current: dict[str, Any], released: list[ReleasedSchema]) -> list[str]:
    """Return every problem of ``current`` against its released versions."""
    problems = doc_problems(current)

    for version in released:
        problems += [f"removed since v{version.version}: {p}"
                     for p in removal_problems(current, version.schema)]
        problems += [f"a reader on the current schema cannot read v{version.version} data: {p}"
                     for p in read_problems(current, version.schema)]
        problems += [f"a reader on v{version.version} cannot read current data: {p}"
                     for p in read_problems(version.schema, current)]

    if released:
        problems += _version_problems(current, max(released, key=lambda r: r.version))
    return problems


def load_released(released_dir: Path = RELEASED_DIR) -> tuple[dict[str, list[ReleasedSchema]],
                                                              list[str]]:
    """Return the released versions by record name, oldest first, and misnamed files."""
    by_name: dict[str, list[ReleasedSchema]] = {}
    problems = []
    for path in sorted(released_dir.glob("*.avsc")):
        match = RELEASED_NAME.match(path.name)
        schema = json.loads(path.read_text(encoding="utf-8"))
        if match is None or match["name"] != schema.get("name"):
            problems.append(f"{path.name}: expected the name <Record>.v<N>.avsc of the record "
                            f"{schema.get('name')!r} it contains")
            continue
        version = int(match["version"])
        if schema_version_default(schema) != version:
            problems.append(f"{path.name}: schema_version default is "
                            f"{schema_version_default(schema)}, expected {version}")
        by_name.setdefault(match["name"], []).append(
            ReleasedSchema(match["name"], version, schema))

    for versions in by_name.values():
        versions.sort(key=lambda r: r.version)
    return by_name, problems


def load_current(schemas_dir: Path = SCHEMAS_DIR) -> dict[str, dict[str, Any]]:
    """Return the current record schemas by name."""
    current = {}
    for path in sorted(schemas_dir.glob("*.avsc")):
        schema = json.loads(path.read_text(encoding="utf-8"))
        current[schema["name"]] = schema
    return current


def check(schemas_dir: Path = SCHEMAS_DIR, released_dir: Path = RELEASED_DIR) -> list[str]:
    """Return every problem of the current schemas against the released ones."""
    current = load_current(schemas_dir)
    released, problems = load_released(released_dir)

    for name in sorted(set(released) - set(current)):
        problems.append(f"{name}: released but removed from {schemas_dir.name}/; subscribers "
                        "still read it, so keep the file")
    for name, schema in current.items():
        problems += [f"{name}: {p}" for p in check_schema(schema, released.get(name, []))]
    return problems


def release(schemas_dir: Path = SCHEMAS_DIR, released_dir: Path = RELEASED_DIR) -> list[Path]:
    """Copy each schema whose wire form changed since its last release; return the new files."""
    current = load_current(schemas_dir)
    released, _ = load_released(released_dir)
    written = []
    for name, schema in current.items():
        versions = released.get(name, [])
        if versions and canonical_form(versions[-1].schema) == canonical_form(schema):
            continue

        version = schema_version_default(schema) or 1
        path = released_dir / f"{name}.v{version}.avsc"
        path.write_text((schemas_dir / f"{name}.avsc").read_text(encoding="utf-8"),
                        encoding="utf-8")
        log.info("schema %s: released as version %d in %s", name, version, path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """Check the schemas and print the problems; with --release, record new versions."""
    parser = argparse.ArgumentParser(prog="python -m messagehub.schema_compat",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--release", action="store_true",
                        help="after a clean check, copy each schema whose wire form changed "
                             "into schemas/released/ as its new version")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    problems = check()
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} schema problem(s): fix the schema, or add a field with a "
              "default instead of changing one", file=sys.stderr)
        return 1

    if args.release:
        for path in release():
            print(f"released {path.name}")
    return 0


def _full_name(schema: dict[str, Any]) -> str:
    name = str(schema.get("name", ""))
    namespace = schema.get("namespace")
    return f"{namespace}.{name}" if namespace and "." not in name else name


def _named_types(schema: Any, namespace: str | None) -> dict[str, dict[str, Any]]:
    """Return the records and enums defined in ``schema`` by full name."""
    if isinstance(schema, list):
        found: dict[str, dict[str, Any]] = {}
        for branch in schema:
            found.update(_named_types(branch, namespace))
        return found
    if not isinstance(schema, dict) or schema.get("type") not in ("record", "enum"):
        if isinstance(schema, dict):
            return _named_types(schema.get("items", schema.get("values")), namespace)
        return {}

    namespace = schema.get("namespace", namespace)
    full_name = _full_name({"name": schema["name"], "namespace": namespace})
    found = {full_name: schema}
    for field in schema.get("fields", []):
        found.update(_named_types(field["type"], namespace))
    return found


def _undocumented(schema: Any, path: str) -> Iterator[str]:
    if isinstance(schema, list):
        for branch in schema:
            yield from _undocumented(branch, path)
        return
    if not isinstance(schema, dict):
        return

    if schema.get("type") in ("record", "enum") and not schema.get("doc"):
        yield path
    for field in schema.get("fields", []):
        field_path = f"{path}.{field['name']}"
        if not field.get("doc"):
            yield field_path
        yield from _undocumented(field["type"], field_path)
    for key in ("items", "values"):
        if key in schema:
            yield from _undocumented(schema[key], path)


def _version_problems(current: dict[str, Any], latest: ReleasedSchema) -> list[str]:
    version = schema_version_default(current)
    if canonical_form(current) == canonical_form(latest.schema):
        if version != latest.version:
            return [f"schema_version default is {version} but the wire form equals released "
                    f"v{latest.version}: set it back to {latest.version}"]
        return []
    if version is None or version <= latest.version:
        return [f"the wire form changed since released v{latest.version}: raise the "
                f"schema_version default to {latest.version + 1}"]
    return []


if __name__ == "__main__":
    sys.exit(main())
