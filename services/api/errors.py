"""The API's error type and the JSON body every error response has.

Handlers raise :class:`ApiError` (or one of its helpers); the error
middleware in :mod:`services.api.app` turns it into a response of this
shape, so that a client can show each message beside its field::

    {"error": {"code": "invalid_request", "message": "...",
               "fields": [{"field": "smtp.port", "message": "must be at most 65535"}]}}

Messages never quote a password, and field messages never quote the value
that was sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class FieldError:
    """One invalid field: its dotted path in the request body and what is wrong."""

    field: str
    message: str


class ApiError(Exception):
    """A request that cannot be carried out; ``status`` is the HTTP status of the response."""

    def __init__(self, status: int, code: str, message: str,
                 fields: list[FieldError] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or []

    def body(self) -> dict[str, Any]:
        """Return the JSON body of the error response."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.fields:
            error["fields"] = [{"field": f.field, "message": f.message} for f in self.fields]
        return {"error": error}

    def response(self) -> web.Response:
        """Return the error as a JSON response."""
        headers = {"WWW-Authenticate": 'Bearer realm="messagehub"'} if self.status == 401 else None
        return web.json_response(self.body(), status=self.status, headers=headers)


def invalid(fields: list[FieldError], message: str = "the request has invalid fields") -> ApiError:
    """Return the 422 error for invalid fields."""
    return ApiError(422, "invalid_request", message, fields)


def invalid_field(field: str, message: str) -> ApiError:
    """Return the 422 error for one invalid field."""
    return invalid([FieldError(field, message)], f"{field}: {message}")


def not_found(what: str, value: str) -> ApiError:
    """Return the 404 error for a missing inbox, agent, conversation or token."""
    return ApiError(404, "not_found", f"{what} not found: {value!r}")


def conflict(message: str, field: str | None = None) -> ApiError:
    """Return the 409 error for a change that the current state does not allow."""
    return ApiError(409, "conflict", message, [FieldError(field, message)] if field else None)
