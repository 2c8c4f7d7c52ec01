"""The API's OpenAPI 3.1 document, built from the route table and the request schemas.

The API serves it at ``/v1/openapi.json`` (any valid token). The checked-in
copy ``docs/openapi.yaml`` is written with ``python -m services.api.openapi
> docs/openapi.yaml`` (PyYAML, a test dependency), and a test keeps the two
equal.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from services.api import attachment_routes, routes, schemas

VERSION = "1.0.0"
_ERRORS = {"400": "The body is not JSON, or not a JSON object.",
           "401": "Missing, unknown or revoked token.",
           "403": "The token's scope does not admit this operation.",
           "404": "The inbox, agent, conversation or token does not exist (or is out of the "
                  "token's reach).",
           "409": "The current state does not allow the change (SMTP before IMAP, a name "
                  "taken, an agent at the limit).",
           "422": "Invalid fields; each is listed with its message.",
           "503": "PostgreSQL or Kafka is not available; try again."}


def document() -> dict[str, Any]:
    """Return the OpenAPI document as a JSON-ready dict."""
    paths: dict[str, Any] = {}
    for route in routes.ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    paths.update(_unlisted_paths())
    return {
        "openapi": "3.1.0",
        "info": {"title": "messagehub API", "version": VERSION, "description": (
            "The control plane of messagehub: inboxes and their settings tabs, agents, "
            "conversation actions, connection tests, tokens and dead letters. Every "
            "operation needs `Authorization: Bearer <token>`; `x-scopes` lists the token "
            "scopes it admits. Errors have the body of the Error schema.")},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "tags": [{"name": name} for name in ("inboxes", "agents", "conversations", "admin",
                                            "public")],
        "paths": paths,
        "components": {
            "schemas": schemas.COMPONENTS,
            "responses": {f"Error{status}": {
                "description": description,
                "content": {"application/json": {"schema": _ref("Error")}}}
                for status, description in _ERRORS.items()},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "An API token (mh_…) or the "
                                                          "bootstrap MESSAGEHUB_API_TOKEN."}},
        },
    }


def _operation(route: routes.Route) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": _operation_id(route),
        "summary": route.summary,
        "tags": [route.tag],
        "x-scopes": list(route.scopes),
        "parameters": _parameters(route),
        "responses": _responses(route),
    }
    if route.request is not None:
        optional = route.request in ("Empty", "Unassign") or route.path.endswith("/test")
        operation["requestBody"] = {
            "required": not optional,
            "content": {"application/json": {"schema": _ref(route.request)}}}
    return operation


def _operation_id(route: routes.Route) -> str:
    words = [part for part in re.split(r"[/{}-]+", route.path) if part and part != "v1"]
    return "_".join([route.method.lower(), *words])


def _parameters(route: routes.Route) -> list[dict[str, Any]]:
    parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"},
                   "description": _PATH_PARAMETERS.get(name, name)}
                  for name in re.findall(r"\{(\w+)\}", route.path)]
    parameters += [{"name": name, "in": "query", "required": False,
                    "schema": {"type": "string"}, "description": description}
                   for name, description in route.query]
    if route.path.endswith("/reply"):
        parameters.append({"name": "Idempotency-Key", "in": "header", "required": False,
                           "schema": {"type": "string", "maxLength": 200},
                           "description": "The same key gives the same request id, so a "
                                          "repeated request sends one mail."})
    return parameters


_PATH_PARAMETERS = {"inbox": "Inbox name or id.", "agent": "Agent id or email.",
                    "conversation": "Conversation id.", "token_id": "Token id.",
                    "dead_letter_id": "Dead letter id (its event_id).",
                    "message": "Message id.",
                    "sha256": "The attachment's SHA-256, as in the message's attachments."}


def _responses(route: routes.Route) -> dict[str, Any]:
    success: dict[str, Any] = {"description": "Success."}
    if route.handler is attachment_routes.get_attachment:
        success["content"] = {"application/octet-stream": {
            "schema": {"type": "string", "format": "binary"}}}
    elif route.status != 204:
        schema = "ConnectionTestResult" if route.path.endswith("/test") else "Object"
        success["content"] = {"application/json": {"schema": _ref(schema)}}
    responses = {str(route.status): success}
    for status in _ERRORS:
        responses[status] = {"$ref": f"#/components/responses/Error{status}"}
    return responses


def _unlisted_paths() -> dict[str, Any]:
    html = {"text/html": {"schema": {"type": "string"}}}
    token = [{"name": "token", "in": "path", "required": True, "schema": {"type": "string"},
              "description": "The survey token from the CSAT mail's link."}]
    return {
        "/healthz": {"get": {"operationId": "healthz", "summary": "Liveness; shows nothing",
                             "tags": ["public"], "security": [],
                             "responses": {"200": {"description": "The API runs."}}}},
        "/v1/openapi.json": {"get": {"operationId": "openapi", "summary": "This document",
                                     "tags": ["public"], "x-scopes": list(routes.ALL),
                                     "responses": {"200": {"description": "The document."}}}},
        "/csat/{token}": {
            "get": {"operationId": "show_survey", "tags": ["public"], "security": [],
                    "summary": "The satisfaction survey page; its link's token is the "
                               "credential", "parameters": token,
                    "responses": {"200": {"description": "The form.", "content": html},
                                  "404": {"description": "Unknown token."},
                                  "410": {"description": "Expired."}}},
            "post": {"operationId": "answer_survey", "tags": ["public"], "security": [],
                     "summary": "Store the customer's rating once", "parameters": token,
                     "requestBody": {"content": {"application/x-www-form-urlencoded": {
                         "schema": {"type": "object", "properties": {
                             "rating": {"type": "string", "enum": ["1", "2", "3", "4", "5"]},
                             "comment": {"type": "string", "maxLength": 2000}}}}}},
                     "responses": {"303": {"description": "Stored; see the thanks page."},
                                   "400": {"description": "Missing rating or comment too "
                                                          "long.", "content": html}}}},
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def main() -> None:
    """Write the document as YAML to standard output."""
    import yaml  # type: ignore[import-untyped]

    sys.stdout.write(yaml.safe_dump(document(), sort_keys=False, allow_unicode=True,
                                    width=100))


if __name__ == "__main__":
    main()
