"""The API against the running stack: tokens and scopes, every resource, bad input.

Each test makes its own inboxes and agents with unique names, so the
tests share the session's stack with the other suites. Every call goes
through :class:`tests.api.helpers.Api`, which fails on any 500.
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from messagehub import codec, topics
from services.api.routes import ROUTES
from tests.api.helpers import (
    Api,
    create_agent,
    create_inbox,
    field_errors,
    forward_mail,
    sink_texts_with,
    unique,
    wait_for,
    wait_for_conversation,
)

pytestmark = pytest.mark.stack

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_PATH_VALUES = {"inbox": "no-such-inbox", "agent": "nobody@example.com",
                      "conversation": "00000000-0000-0000-0000-000000000000",
                      "token_id": "00000000-0000-0000-0000-000000000000",
                      "dead_letter_id": "none",
                      "message": "00000000-0000-0000-0000-000000000000", "sha256": "0" * 64}


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: SAMPLE_PATH_VALUES[m.group(1)], path)


def new_token(api: Api, scope: str, agent: str | None = None) -> str:
    body = {"name": unique(f"{scope}-token"), "scope": scope}
    if agent:
        body["agent"] = agent
    answer = api.ok("POST", "/v1/tokens", body, expected=201)
    assert answer["token"].startswith("mh_")
    return str(answer["token"])


# --- tokens and scopes --------------------------------------------------------------


def test_every_route_needs_a_token(api: Api) -> None:
    assert api.anonymous("GET", "/healthz") == (200, {"status": "ok"})
    for route in ROUTES:
        status, answer = api.anonymous(route.method, concrete(route.path), {})
        assert status == 401, f"{route.method} {route.path} without a token: {status}"
        assert answer["error"]["code"] == "unauthenticated"

        status, _ = api.call(route.method, concrete(route.path), {}, token="mh_wrong")
        assert status == 401, f"{route.method} {route.path} with a wrong token: {status}"
    assert api.anonymous("GET", "/v1/openapi.json")[0] == 401
    assert api.anonymous("GET", "/v1/no-such-route")[0] == 401


def test_scopes_limit_tokens(api: Api) -> None:
    inbox = create_inbox(api)
    agent = create_agent(api, inbox)
    agent_token = new_token(api, "agent", agent["email"])
    service_token = new_token(api, "service")

    admin_only = [route for route in ROUTES if route.scopes == ("admin",)]
    assert len(admin_only) > 10
    for route in admin_only:
        for token in (agent_token, service_token):
            status, answer = api.call(route.method, concrete(route.path), {}, token=token)
            assert status == 403, f"{route.method} {route.path}: {status} {answer}"

    status, answer = api.call("GET", "/v1/inboxes", token=agent_token)
    assert status == 200
    assert [item["name"] for item in answer["inboxes"]] == [inbox["name"]]
    assert api.call("GET", "/v1/conversations", token=service_token)[0] == 200
    assert api.call("GET", f"/v1/inboxes/{inbox['id']}/health", token=service_token)[0] == 200


def test_token_create_list_revoke(api: Api) -> None:
    created = api.ok("POST", "/v1/tokens", {"name": "ci", "scope": "service"}, expected=201)
    assert api.call("GET", "/v1/inboxes", token=created["token"])[0] == 200

    listed = api.ok("GET", "/v1/tokens")["tokens"]
    mine = next(item for item in listed if item["id"] == created["id"])
    assert "token" not in mine
    assert mine["last_used_at"] is not None
    assert created["token"] not in str(listed)

    api.ok("DELETE", f"/v1/tokens/{created['id']}", expected=204)
    assert api.call("GET", "/v1/inboxes", token=created["token"])[0] == 401


def test_token_bad_input(api: Api) -> None:
    status, answer = api.call("POST", "/v1/tokens", {"name": "", "scope": "root"})
    assert status == 422
    assert set(field_errors(answer)) == {"name", "scope"}

    status, answer = api.call("POST", "/v1/tokens", {"name": "x", "scope": "agent"})
    assert status == 422
    assert "agent" in field_errors(answer)

    status, answer = api.call("POST", "/v1/tokens", {"name": "x", "scope": "admin",
                                                    "agent": "someone@example.com"})
    assert status == 422
    assert "agent" in field_errors(answer)
    assert api.call("DELETE", "/v1/tokens/not-a-token")[0] == 404


def test_agent_token_reaches_only_its_inboxes(stack: dict[str, Any], api: Api) -> None:
    own, other = create_inbox(api), create_inbox(api)
    agent = create_agent(api, own)
    token = new_token(api, "agent", agent["email"])
    subject = unique("reach")
    forward_mail(stack, other, sender="reach@customer.example", subject=subject)
    conversation = wait_for_conversation(api, other, subject)

    assert api.call("GET", f"/v1/inboxes/{other['id']}", token=token)[0] == 404
    assert api.call("GET", f"/v1/conversations/{conversation['id']}", token=token)[0] == 404
    status, answer = api.call("GET", "/v1/conversations", token=token)
    assert status == 200
    assert conversation["id"] not in {c["id"] for c in answer["conversations"]}
    other_agent = create_agent(api)
    status, _ = api.call("PUT", f"/v1/agents/{other_agent['id']}/availability",
                         {"availability": "busy"}, token=token)
    assert status == 403
    status, answer = api.call("PUT", f"/v1/agents/{agent['id']}/availability",
                              {"availability": "busy"}, token=token)
    assert (status, answer["availability"]) == (200, "busy")


# --- inboxes and their tabs -------------------------------------------------------


def test_inbox_create_gives_unguessable_addresses(api: Api) -> None:
    first, second = create_inbox(api), create_inbox(api)
    assert first["forwarding_address"] != second["forwarding_address"]
    for inbox in (first, second):
        assert re.fullmatch(r"api-inbox-[0-9a-f]{8}-[0-9a-f]{16}@inbound\.messagehub\.localhost",
                            inbox["forwarding_address"])
        assert inbox["configuration"]["forwarding_address"] == inbox["forwarding_address"]
    listed = {item["name"] for item in api.ok("GET", "/v1/inboxes")["inboxes"]}
    assert {first["name"], second["name"]} <= listed


def test_inbox_create_bad_input(api: Api) -> None:
    status, answer = api.call("POST", "/v1/inboxes", {"name": "", "email": "nope",
                                                      "locale": "fr", "color": "red"})
    assert status == 422
    assert set(field_errors(answer)) == {"name", "email", "locale", "color"}

    status, answer = api.call("POST", "/v1/inboxes", {"email": "a@b.example"})
    assert (status, field_errors(answer)) == (422, {"name": "is required"})

    taken = create_inbox(api)
    status, answer = api.call("POST", "/v1/inboxes", {"name": taken["name"],
                                                      "email": "a@b.example"})
    assert status == 409
    assert "name" in field_errors(answer)

    assert api.call("POST", "/v1/inboxes", raw=b"{not json")[0] == 400
    assert api.call("POST", "/v1/inboxes", raw=b"[1, 2]")[0] == 400
    assert api.call("POST", "/v1/inboxes", raw=b"")[0] == 400
    assert api.call("POST", "/v1/inboxes", raw=b"x" * (2 * 1024 * 1024))[0] == 413
    assert api.call("GET", "/v1/inboxes/no-such-inbox")[0] == 404


def test_settings_tab(api: Api) -> None:
    inbox = create_inbox(api)
    path = f"/v1/inboxes/{inbox['id']}/settings"
    changes = {"greeting_enabled": True, "greeting_text": "Hello {customer_name}!",
               "csat_enabled": True, "csat_text": "Rate us: {survey_url}",
               "help_center_url": "https://help.acme.example", "avatar_url":
               "https://acme.example/logo.png", "sender_name_style": "professional",
               "business_name": "Acme Inc.", "locale": "ja"}
    answer = api.ok("PATCH", path, changes)
    assert {key: answer[key] for key in changes} == changes
    assert api.ok("GET", path) == answer
    assert api.ok("PATCH", path, {"greeting_text": None})["greeting_text"] is None

    status, answer = api.call("PATCH", path, {"greeting_text": "Hi {agent}", "csat_text": "x",
                                              "sender_name_style": "casual",
                                              "help_center_url": "javascript:alert(1)",
                                              "csat_enabled": "yes"})
    assert status == 422
    errors = field_errors(answer)
    assert set(errors) == {"sender_name_style", "help_center_url", "csat_enabled"}
    status, answer = api.call("PATCH", path, {"greeting_text": "Hi {agent}", "csat_text": "x"})
    assert status == 422
    assert "{agent}" in field_errors(answer)["greeting_text"]
    assert "{survey_url}" in field_errors(answer)["csat_text"]


def test_collaborators_tab(api: Api) -> None:
    inbox = create_inbox(api)
    first, second = create_agent(api), create_agent(api)
    path = f"/v1/inboxes/{inbox['id']}/collaborators"
    answer = api.ok("PATCH", path, {"agents": [first["email"], second["id"]],
                                    "auto_assign_enabled": False, "auto_assign_limit": 2,
                                    "assign_chooser": "balanced"})
    assert {agent["email"] for agent in answer["agents"]} == {first["email"], second["email"]}
    assert (answer["auto_assign_enabled"], answer["auto_assign_limit"],
            answer["assign_chooser"]) == (False, 2, "balanced")

    answer = api.ok("PATCH", path, {"agents": [second["email"]], "auto_assign_limit": None})
    assert [agent["email"] for agent in answer["agents"]] == [second["email"]]
    assert answer["auto_assign_limit"] is None

    status, answer = api.call("PATCH", path, {"agents": ["ghost@example.com"],
                                              "auto_assign_limit": 0})
    assert status == 422
    assert set(field_errors(answer)) == {"auto_assign_limit"}
    status, answer = api.call("PATCH", path, {"agents": [second["email"], "ghost@example.com"]})
    assert (status, list(field_errors(answer))) == (422, ["agents.1"])


def test_business_hours_tab(api: Api) -> None:
    inbox = create_inbox(api)
    path = f"/v1/inboxes/{inbox['id']}/business-hours"
    answer = api.ok("PATCH", path, {
        "enabled": True, "time_zone": "Asia/Tokyo",
        "hours": {"mon": [["09:00", "12:00"], ["13:00", "18:00"]], "sat": [["00:00", "24:00"]],
                  "fri": [["22:00", "06:00"]], "sun": []},
        "holidays": ["2027-01-01", "2026-12-31"], "out_of_hours_text": "Back at {next_opening}"})
    assert answer["enabled"] is True
    assert answer["hours"]["mon"] == [["09:00", "12:00"], ["13:00", "18:00"]]
    assert answer["hours"]["sat"] == [["00:00", "24:00"]]
    assert answer["hours"]["sun"] == []
    assert answer["hours"]["tue"] == [["09:00", "17:00"]]
    assert answer["holidays"] == ["2026-12-31", "2027-01-01"]
    assert answer["out_of_hours_text"] == "Back at {next_opening}"

    status, answer = api.call("PATCH", path, {"time_zone": "Mars/Olympus",
                                              "hours": {"mon": [["25:00", "26:00"]],
                                                        "tue": [["10:00", "10:00"]]}})
    assert status == 422
    assert set(field_errors(answer)) == {"time_zone", "hours.mon", "hours.tue"}
    status, answer = api.call("PATCH", path, {"hours": {"funday": []}, "holidays": ["12/31"]})
    assert status == 422
    assert set(field_errors(answer)) == {"hours.funday", "holidays.0"}
    assert api.ok("GET", path)["time_zone"] == "Asia/Tokyo"


def test_smtp_refused_until_imap_is_set_up(api: Api) -> None:
    inbox = create_inbox(api)
    base = f"/v1/inboxes/{inbox['id']}"
    smtp = {"host": "127.0.0.1", "port": 2587, "username": "agent@acme.example",
            "password": "smtp-secret-value"}
    status, answer = api.call("PATCH", f"{base}/smtp", smtp)
    assert status == 409
    assert "IMAP" in answer["error"]["message"]

    status, answer = api.call("PATCH", f"{base}/imap", {"host": "127.0.0.1", "port": 2993})
    assert status == 422
    assert set(field_errors(answer)) == {"username", "password"}
    imap = api.ok("PATCH", f"{base}/imap", {"host": "127.0.0.1", "port": 2993,
                                            "username": "agent@acme.example",
                                            "password": "imap-secret-value"})
    assert imap["password_set"] is True
    assert "password" not in imap

    saved = api.ok("PATCH", f"{base}/smtp", smtp)
    assert saved["enabled"] is True
    assert saved["password_set"] is True
    assert "smtp-secret-value" not in str(api.ok("GET", base))

    status, _ = api.call("PATCH", f"{base}/imap", {"enabled": False})
    assert status == 409
    assert api.call("DELETE", f"{base}/imap")[0] == 409
    api.ok("PATCH", f"{base}/smtp", {"enabled": False})
    assert api.ok("PATCH", f"{base}/imap", {"enabled": False})["enabled"] is False
    api.ok("DELETE", f"{base}/smtp", expected=204)
    assert api.ok("GET", f"{base}/smtp")["configured"] is False


def test_imap_and_smtp_bad_input(api: Api) -> None:
    inbox = create_inbox(api)
    base = f"/v1/inboxes/{inbox['id']}"
    status, answer = api.call("PATCH", f"{base}/imap", {
        "host": "imap .example.com", "port": 70000, "security": "ssl",
        "after_import": "delete", "folders": []})
    assert status == 422
    assert set(field_errors(answer)) == {"host", "port", "security", "after_import", "folders"}
    status, answer = api.call("PATCH", f"{base}/imap", {
        "host": "imap.example.com", "username": "u", "password": "p", "security": "none",
        "after_import": "move"})
    assert status == 422
    assert set(field_errors(answer)) == {"security", "move_to"}

    api.ok("PATCH", f"{base}/imap", {"host": "127.0.0.1", "username": "u", "password": "p"})
    status, answer = api.call("PATCH", f"{base}/smtp", {"host": "smtp.example.com",
                                                        "port": 587, "encryption": "tls"})
    assert status == 422
    assert "587 expects STARTTLS" in field_errors(answer)["encryption"]
    status, answer = api.call("PATCH", f"{base}/smtp", {"host": "smtp.example.com",
                                                        "port": 587, "username": "u"})
    assert (status, list(field_errors(answer))) == (422, ["password"])
    status, answer = api.call("PATCH", f"{base}/smtp", {"auth_method": "ntlm", "port": "587"})
    assert status == 422
    assert set(field_errors(answer)) == {"auth_method", "port"}


# --- agents ------------------------------------------------------------------------


def test_agents(api: Api) -> None:
    inbox = create_inbox(api)
    agent = create_agent(api, inbox)
    assert agent["inboxes"] == [inbox["name"]]
    assert api.ok("GET", f"/v1/agents/{agent['email']}")["id"] == agent["id"]
    assert agent["id"] in {item["id"] for item in api.ok("GET", "/v1/agents")["agents"]}

    answer = api.ok("PUT", f"/v1/agents/{agent['id']}/availability", {"availability": "offline"})
    assert answer["availability"] == "offline"

    status, answer = api.call("POST", "/v1/agents", {"name": "Dup", "email": agent["email"]})
    assert (status, list(field_errors(answer))) == (409, ["email"])
    status, answer = api.call("POST", "/v1/agents", {"name": "X", "email": "x@y.example",
                                                     "inboxes": ["no-such-inbox"]})
    assert (status, list(field_errors(answer))) == (422, ["inboxes.0"])
    status, answer = api.call("PUT", f"/v1/agents/{agent['id']}/availability",
                              {"availability": "away"})
    assert (status, list(field_errors(answer))) == (422, ["availability"])
    assert api.call("GET", "/v1/agents/nobody@example.com")[0] == 404


# --- conversations ---------------------------------------------------------------------


def test_conversation_actions_and_reply(stack: dict[str, Any], api: Api) -> None:
    inbox = create_inbox(api)
    first, second = create_agent(api, inbox), create_agent(api, inbox)
    subject = unique("help")
    forward_mail(stack, inbox, sender="alice@customer.example", subject=subject)
    conversation = wait_for_conversation(api, inbox, subject)
    path = f"/v1/conversations/{conversation['id']}"

    detail = api.ok("GET", path)
    assert detail["messages"][0]["from"]["email"] == "alice@customer.example"
    assert "I need help" in detail["messages"][0]["text"]

    assert api.ok("POST", f"{path}/assign", {"agent": second["email"]})["assignee"] == \
        second["email"]
    assert api.ok("POST", f"{path}/unassign", {})["assignee"] is None
    assert api.ok("POST", f"{path}/assign", {"agent": first["id"]})["assignee"] == first["email"]

    listed = api.ok("GET", f"/v1/conversations?inbox={inbox['name']}&assignee={first['email']}"
                    "&status=open")["conversations"]
    assert [item["id"] for item in listed] == [conversation["id"]]
    assert api.ok("GET", f"/v1/conversations?inbox={inbox['id']}&status=resolved"
                  )["conversations"] == []

    text = f"Thanks, Alice, fixed. {unique('reply')}"
    answer = api.ok("POST", f"{path}/reply", {"text": text, "agent": first["email"]},
                    expected=202, headers={"Idempotency-Key": "reply-1"})
    again = api.ok("POST", f"{path}/reply", {"text": text, "agent": first["email"]},
                   expected=202, headers={"Idempotency-Key": "reply-1"})
    assert again["request_id"] == answer["request_id"]
    wait_for(lambda: sink_texts_with(stack, text), what="the agent reply in the SMTP sink")
    time.sleep(3)
    assert len(sink_texts_with(stack, text)) == 1

    assert api.ok("POST", f"{path}/resolve")["status"] == "resolved"
    assert api.ok("POST", f"{path}/reopen", {})["status"] == "open"


def test_conversation_bad_input(stack: dict[str, Any], api: Api) -> None:
    inbox = create_inbox(api)
    outsider = create_agent(api)
    subject = unique("bad")
    forward_mail(stack, inbox, sender="bob@customer.example", subject=subject)
    path = f"/v1/conversations/{wait_for_conversation(api, inbox, subject)['id']}"

    status, answer = api.call("POST", f"{path}/assign", {"agent": outsider["email"]})
    assert (status, list(field_errors(answer))) == (422, ["agent"])
    status, answer = api.call("POST", f"{path}/assign", {"agent": "ghost@example.com",
                                                         "exceed_limit": "yes"})
    assert status == 422
    status, answer = api.call("POST", f"{path}/reply", {"text": ""})
    assert (status, list(field_errors(answer))) == (422, ["text"])
    status, answer = api.call("POST", f"{path}/reply", {"text": "x", "agent": outsider["email"]})
    assert (status, list(field_errors(answer))) == (422, ["agent"])
    status, answer = api.call("GET", "/v1/conversations?status=closed&limit=0&sort=x")
    assert (status, set(field_errors(answer))) == (422, {"status", "limit", "sort"})
    assert api.call("POST", "/v1/conversations/not-an-id/resolve")[0] == 404


def test_assign_over_limit_needs_exceed_limit(stack: dict[str, Any], api: Api) -> None:
    inbox = create_inbox(api)
    agent = create_agent(api, inbox)
    api.ok("PATCH", f"/v1/inboxes/{inbox['id']}/collaborators",
           {"auto_assign_enabled": False, "auto_assign_limit": 1})
    subjects = [unique("limit"), unique("limit")]
    for subject in subjects:
        forward_mail(stack, inbox, sender=f"{subject}@customer.example", subject=subject)
    first, second = (wait_for_conversation(api, inbox, s) for s in subjects)

    api.ok("POST", f"/v1/conversations/{first['id']}/assign", {"agent": agent["email"]})
    status, answer = api.call("POST", f"/v1/conversations/{second['id']}/assign",
                              {"agent": agent["email"]})
    assert (status, answer["error"]["code"]) == (409, "agent_at_limit")
    answer = api.ok("POST", f"/v1/conversations/{second['id']}/assign",
                    {"agent": agent["email"], "exceed_limit": True})
    assert answer["assignee"] == agent["email"]


def test_settings_apply_without_restart(stack: dict[str, Any], api: Api) -> None:
    inbox = create_inbox(api)
    create_agent(api, inbox)
    greeting = f"Welcome, {{customer_name}}! {unique('greeting')}"
    api.ok("PATCH", f"/v1/inboxes/{inbox['id']}/settings",
           {"greeting_enabled": True, "greeting_text": greeting})
    forward_mail(stack, inbox, sender="carol@customer.example", subject=unique("hello"))
    marker = greeting.split("! ")[1]
    texts = wait_for(lambda: sink_texts_with(stack, marker), what="the new greeting")
    assert "Welcome, Customer!" in texts[0]


# --- forwarding verification, health, dead letters, document -------------------------------


def test_forwarding_confirmations_listed(stack: dict[str, Any], api: Api) -> None:
    inbox = create_inbox(api)
    code = "582017346"
    link = "https://mail-settings.google.com/mail/vf-abc123"
    forward_mail(stack, inbox, sender="forwarding-noreply@google.com",
                 subject=f"(#{code}) Gmail Forwarding Confirmation - Receive Mail from "
                         "support@acme.example",
                 body=f"To allow forwarding, click the link below:\r\n\r\n{link}\r\n")
    path = f"/v1/inboxes/{inbox['id']}/forwarding-confirmations"
    found: list[dict[str, Any]] = wait_for(lambda: api.ok("GET", path)["confirmations"],
                     what="the forwarding confirmation")
    assert (found[0]["provider"], found[0]["code"], found[0]["link"]) == ("gmail", code, link)
    assert api.ok("GET", f"/v1/inboxes/{inbox['id']}/conversations")["conversations"] == []


def test_health_of_forwarding_inbox(api: Api) -> None:
    inbox = create_inbox(api)
    health = api.ok("GET", f"/v1/inboxes/{inbox['id']}/health")
    assert health["status"] == "forwarding_only"
    assert (health["last_sync_at"], health["last_error"], health["error_since"]) == \
        (None, None, None)


def test_dead_letter_list_and_retry(stack: dict[str, Any], api: Api) -> None:
    from kafka import KafkaProducer

    inbox = create_inbox(api)
    missing_conversation = str(uuid.uuid4())
    request_id = str(uuid.uuid4())
    producer = KafkaProducer(bootstrap_servers=stack["kafka_bootstrap"], acks="all")
    # A request for a conversation that does not exist: outbound gives up on it.
    producer.send(topics.OUTBOUND_REQUESTS, key=inbox["id"].encode(), value=codec.encode(
        "OutboundRequest", {"event_id": request_id, "occurred_at": datetime.now(timezone.utc),
                            "inbox_id": inbox["id"], "conversation_id": missing_conversation,
                            "schema_version": 1, "request_id": request_id, "kind": "agent",
                            "agent_id": None, "text": "hello", "html": None})).get(timeout=30)
    producer.close()

    def letters() -> list[dict[str, Any]]:
        items = api.ok("GET", "/v1/dead-letters?stage=outbound")["dead_letters"]
        return [item for item in items if item["inbox_id"] == inbox["id"]]
    found: dict[str, Any] = wait_for(letters, what="the dead letter")[0]
    assert (found["stage"], found["source_topic"], found["retried_at"]) == \
        ("outbound", topics.OUTBOUND_REQUESTS, None)
    assert found["error_class"] == "ConversationMissing"
    assert found["original_record"] == "OutboundRequest"

    api.ok("POST", f"/v1/dead-letters/{found['id']}/retry", expected=202)
    assert api.call("POST", f"/v1/dead-letters/{found['id']}/retry")[0] == 409
    # The stage applies the record again and, as the conversation is still
    # missing, gives up on it again under a new id.
    def both() -> list[dict[str, Any]] | None:
        found_now = letters()
        return found_now if len(found_now) == 2 else None
    again = wait_for(both, what="the second dead letter")
    retried = {item["id"]: item["retried_at"] for item in again}
    assert retried[found["id"]] is not None
    assert [at for letter_id, at in retried.items() if letter_id != found["id"]] == [None]
    status, answer = api.call("GET", "/v1/dead-letters?stage=ingest&limit=0")
    assert (status, set(field_errors(answer))) == (422, {"stage", "limit"})
    assert api.call("POST", "/v1/dead-letters/no-such-letter/retry")[0] == 404


def test_openapi_served_equals_checked_in(api: Api) -> None:
    served = api.ok("GET", "/v1/openapi.json")
    checked_in = yaml.safe_load((REPO_ROOT / "docs" / "openapi.yaml").read_text("utf-8"))
    assert served == checked_in
    documented = {(method.upper(), path) for path, operations in served["paths"].items()
                  for method in operations}
    assert {(route.method, route.path) for route in ROUTES} <= documented
