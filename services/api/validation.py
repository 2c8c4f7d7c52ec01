"""Checking request bodies against the JSON Schemas of the OpenAPI document.

Handlers call :func:`validate` with the name of a schema in
:mod:`services.api.schemas`, so the published document and the checks are
the same text. jsonschema finds every violation; this module turns each
into a :class:`FieldError` with the dotted path of the field and a message
of our own, which never repeats the value sent (a password must not come
back in an error). Checks that a schema cannot express (time zones, host
names, the SMTP-needs-IMAP rule) are in the handlers.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from services.api import schemas
from services.api.errors import ApiError, FieldError, invalid

_TYPE_NAMES = {"integer": "a whole number", "number": "a number", "boolean": "true or false",
               "string": "a string", "object": "an object", "array": "a list", "null": "null"}


@cache
def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator({**schemas.COMPONENTS[name], "$defs": {}},
                                format_checker=Draft202012Validator.FORMAT_CHECKER)


def validate(name: str, body: Any) -> dict[str, Any]:
    """Return ``body`` when it matches schema ``name``; raise a 422 ApiError listing every field."""
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    errors = sorted(_validator(name).iter_errors(body), key=lambda e: list(e.absolute_path))
    fields = list(_field_errors(errors))
    if fields:
        raise invalid(fields)
    return body


def _field_errors(errors: Iterable[ValidationError]) -> Iterable[FieldError]:
    seen: set[tuple[str, str]] = set()
    for error in errors:
        for field_error in _translate(error):
            key = (field_error.field, field_error.message)
            if key not in seen:
                seen.add(key)
                yield field_error


def _translate(error: ValidationError) -> list[FieldError]:
    path = ".".join(str(part) for part in error.absolute_path)
    keyword, value, schema = error.validator, error.validator_value, error.schema

    if keyword == "required":
        present = error.instance if isinstance(error.instance, dict) else {}
        return [FieldError(_join(path, name), "is required")
                for name in value if name not in present]
    if keyword == "additionalProperties":
        allowed = set(schema.get("properties", {}))
        extra = [name for name in error.instance if name not in allowed]
        return [FieldError(_join(path, name), "is not a field of this request") for name in extra]
    return [FieldError(path or "body", _message(keyword, value, schema))]


def _message(keyword: str, value: Any, schema: dict[str, Any]) -> str:
    custom = schema.get("x-error")
    if custom:
        return str(custom)
    if keyword == "type":
        names = [value] if isinstance(value, str) else list(value)
        return "must be " + " or ".join(_TYPE_NAMES.get(name, name) for name in names)
    if keyword == "enum":
        return "must be one of: " + ", ".join("null" if v is None else str(v) for v in value)
    if keyword == "minimum":
        return f"must be at least {value}"
    if keyword == "maximum":
        return f"must be at most {value}"
    if keyword == "minLength":
        return "must not be empty" if value == 1 else f"must be at least {value} characters"
    if keyword == "maxLength":
        return f"must be at most {value} characters"
    if keyword == "maxItems":
        return f"must have at most {value} items"
    if keyword == "minItems":
        return f"must have at least {value} items"
    if keyword == "uniqueItems":
        return "must not repeat an item"
    if keyword == "format":
        return f"must be a valid {value}"
    if keyword == "pattern":
        return "has an invalid format"
    return f"is invalid ({keyword})"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
