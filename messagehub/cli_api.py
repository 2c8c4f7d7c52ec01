"""The ``messagehub`` commands that work through the HTTP API, as an operator's client.

:func:`add_commands` adds them to the parser of :mod:`messagehub.cli`. Each
command is one or two API calls, so the CLI checks and refuses exactly what
the API does (the same field errors, SMTP only after IMAP, the token's
scope):

- ``inbox list|show|settings|collaborators|smtp|health|forwarding-confirmations``;
- ``test-imap`` and ``test-smtp``: the connection tests, with their hint;
- ``agent list|create``; ``conversation list|reply``;
- ``dead-letters list|retry``; ``token create|list|revoke``; ``secrets rotate``.

The API is found through ``MESSAGEHUB_API_URL`` and ``MESSAGEHUB_API_TOKEN``
or, without them, through the local stack that ``messagehub up`` started.
Passwords are read from standard input or a prompt, never from the command
line, where other users could see them.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from messagehub import stackctl

SubParsers = Any  # argparse's _SubParsersAction, which typeshed keeps private
TIMEOUT_SECONDS = 60.0
PASSWORD_ENV = {"imap": "MESSAGEHUB_IMAP_PASSWORD", "smtp": "MESSAGEHUB_SMTP_PASSWORD"}


class ApiClientError(Exception):
    """The API refused a request or could not be reached; the message is for the operator."""

    def __init__(self, message: str, *, status: int | None = None,
                 fields: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.fields = fields or []


class ApiClient:
    """Calls the messagehub API with one bearer token."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token

    @classmethod
    def from_environment(cls) -> ApiClient:
        """Return a client for MESSAGEHUB_API_URL/TOKEN, or for the local stack."""
        url, token = os.environ.get("MESSAGEHUB_API_URL"), os.environ.get("MESSAGEHUB_API_TOKEN")
        if not url or not token:
            info = stackctl.stack_info()
            url, token = url or info["api"], token or info["api_token"]
        return cls(str(url), str(token))

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             query: dict[str, Any] | None = None) -> Any:
        """Send one request; return the decoded JSON response (None for 204)."""
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Bearer {self._token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
                text = response.read().decode("utf-8")
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiClientError(f"cannot reach the API at {self.base_url}: {reason}: is "
                                 "messagehub running (`messagehub status`)?") from None
        return json.loads(text) if text else None


def _api_error(exc: urllib.error.HTTPError) -> ApiClientError:
    try:
        error = json.loads(exc.read().decode("utf-8"))["error"]
    except (ValueError, KeyError, TypeError):
        return ApiClientError(f"the API responded {exc.code} {exc.reason}", status=exc.code)
    return ApiClientError(error.get("message", str(exc.code)), status=exc.code,
                          fields=error.get("fields"))


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _print(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False, indent=2) + "\n")


def _read_password(args: argparse.Namespace, service: str) -> str | None:
    """Return a new password from standard input, the environment or a prompt; None to keep it."""
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif os.environ.get(PASSWORD_ENV[service]):
        password = os.environ[PASSWORD_ENV[service]]
    elif args.ask_password:
        password = getpass.getpass(f"{service.upper()} password: ")
    else:
        return None
    if not password:
        raise ApiClientError(f"the {service.upper()} password is empty")
    return password


def _given(args: argparse.Namespace, names: dict[str, str]) -> dict[str, Any]:
    """Return the API fields of the options that were given, by option name to field name."""
    return {field: getattr(args, option) for option, field in names.items()
            if getattr(args, option) is not None}


# --- inboxes ---------------------------------------------------------------------------


def cmd_inbox_list(args: argparse.Namespace) -> int:
    _print(ApiClient.from_environment().call("GET", "/v1/inboxes"))
    return 0


def cmd_inbox_show(args: argparse.Namespace) -> int:
    _print(ApiClient.from_environment().call("GET", f"/v1/inboxes/{_quote(args.inbox)}"))
    return 0


_SETTINGS_OPTIONS = {"name": "name", "email": "email", "avatar_url": "avatar_url",
                     "greeting": "greeting_enabled", "greeting_text": "greeting_text",
                     "csat": "csat_enabled", "csat_text": "csat_text",
                     "help_center_url": "help_center_url", "sender_name_style":
                     "sender_name_style", "business_name": "business_name", "locale": "locale"}
_CLEARABLE = {"greeting_text", "csat_text", "avatar_url", "help_center_url", "business_name"}


def cmd_inbox_settings(args: argparse.Namespace) -> int:
    client = ApiClient.from_environment()
    path = f"/v1/inboxes/{_quote(args.inbox)}/settings"
    changes = _given(args, _SETTINGS_OPTIONS)
    # An empty value clears the setting: a text goes back to the default text.
    changes = {field: None if value == "" and field in _CLEARABLE else value
               for field, value in changes.items()}
    _print(client.call("PATCH", path, changes) if changes else client.call("GET", path))
    return 0


def cmd_inbox_collaborators(args: argparse.Namespace) -> int:
    client = ApiClient.from_environment()
    path = f"/v1/inboxes/{_quote(args.inbox)}/collaborators"
    current = client.call("GET", path)
    agents = [agent["email"] for agent in current["agents"]]
    agents += [email.lower() for email in args.add or () if email.lower() not in agents]
    agents = [email for email in agents if email not in {e.lower() for e in args.remove or ()}]
    changes: dict[str, Any] = _given(args, {"auto_assign": "auto_assign_enabled",
                                            "limit": "auto_assign_limit",
                                            "chooser": "assign_chooser"})
    if args.no_limit:
        changes["auto_assign_limit"] = None
    if args.add or args.remove:
        changes["agents"] = agents
    _print(client.call("PATCH", path, changes) if changes else current)
    return 0


_SMTP_OPTIONS = {"host": "host", "port": "port", "login": "username", "helo": "helo_domain",
                 "encryption": "encryption", "auth": "auth_method",
                 "max_per_minute": "max_sends_per_minute", "save_to_sent": "save_to_sent"}


def cmd_inbox_smtp(args: argparse.Namespace) -> int:
    client = ApiClient.from_environment()
    path = f"/v1/inboxes/{_quote(args.inbox)}/smtp"
    if args.remove:
        client.call("DELETE", path)
        sys.stdout.write(f"SMTP settings of {args.inbox} removed; mail goes through the "
                         "relay\n")
        return 0
    changes = _given(args, _SMTP_OPTIONS)
    if args.enabled is not None:
        changes["enabled"] = args.enabled
    password = _read_password(args, "smtp")
    if password is not None:
        changes["password"] = password
    _print(client.call("PATCH", path, changes) if changes else client.call("GET", path))
    return 0


def cmd_inbox_health(args: argparse.Namespace) -> int:
    _print(ApiClient.from_environment().call("GET", f"/v1/inboxes/{_quote(args.inbox)}/health"))
    return 0


def cmd_forwarding_confirmations(args: argparse.Namespace) -> int:
    result = ApiClient.from_environment().call(
        "GET", f"/v1/inboxes/{_quote(args.inbox)}/forwarding-confirmations")
    if args.json:
        _print(result)
        return 0
    if not result["confirmations"]:
        sys.stdout.write(f"no confirmation mail yet for {result['forwarding_address']}\n")
    for item in result["confirmations"]:
        sys.stdout.write(f"{item['received_at']}  {item['provider'] or '?'}  code "
                         f"{item['code'] or '-'}  {item['link'] or ''}\n")
    return 0


# --- connection tests -----------------------------------------------------------------


_IMAP_TEST_OPTIONS = {"host": "host", "port": "port", "login": "username",
                      "security": "security"}


def cmd_test_imap(args: argparse.Namespace) -> int:
    overrides = _given(args, _IMAP_TEST_OPTIONS)
    password = _read_password(args, "imap")
    if password is not None:
        overrides["password"] = password
    result = ApiClient.from_environment().call(
        "POST", f"/v1/inboxes/{_quote(args.inbox)}/imap/test", overrides)
    return _print_test(result, args)


def cmd_test_smtp(args: argparse.Namespace) -> int:
    overrides = _given(args, {key: value for key, value in _SMTP_OPTIONS.items()
                              if key in ("host", "port", "login", "helo", "encryption",
                                         "auth")})
    password = _read_password(args, "smtp")
    if password is not None:
        overrides["password"] = password
    result = ApiClient.from_environment().call(
        "POST", f"/v1/inboxes/{_quote(args.inbox)}/smtp/test", overrides)
    return _print_test(result, args)


def _print_test(result: dict[str, Any], args: argparse.Namespace) -> int:
    if args.json:
        _print(result)
    elif result["ok"]:
        sys.stdout.write(f"ok: {result['message']} ({result['seconds']:.1f}s)\n")
    else:
        sys.stdout.write(f"failed: {result['reason']}: {result['message']}\n"
                         f"what to do: {result['hint']}\n")
    return 0 if result["ok"] else 1


# --- agents, conversations -------------------------------------------------------------


def cmd_agent_list(args: argparse.Namespace) -> int:
    _print(ApiClient.from_environment().call("GET", "/v1/agents"))
    return 0


def cmd_agent_create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name, "email": args.email,
                            "availability": args.availability}
    if args.inbox:
        body["inboxes"] = args.inbox
    _print(ApiClient.from_environment().call("POST", "/v1/agents", body))
    return 0


def cmd_conversation_list(args: argparse.Namespace) -> int:
    result = ApiClient.from_environment().call("GET", "/v1/conversations", query={
        "inbox": args.inbox, "status": args.status, "assignee": args.assignee,
        "limit": args.limit})
    if args.json:
        _print(result)
        return 0
    for item in result["conversations"]:
        sys.stdout.write(f"{item['id']}  {item['status']:<8} {item['assignee'] or '-':<28} "
                         f"{item['inbox']}: {item['subject'] or '(no subject)'}\n")
    return 0


def cmd_conversation_reply(args: argparse.Namespace) -> int:
    text = args.text if args.text is not None else sys.stdin.read()
    body: dict[str, Any] = {"text": text}
    if args.agent:
        body["agent"] = args.agent
    _print(ApiClient.from_environment().call(
        "POST", f"/v1/conversations/{_quote(args.id)}/reply", body))
    return 0


# --- dead letters, tokens, keys ---------------------------------------------------------


def cmd_dead_letters_list(args: argparse.Namespace) -> int:
    result = ApiClient.from_environment().call("GET", "/v1/dead-letters", query={
        "stage": args.stage, "limit": args.limit})
    if args.json:
        _print(result)
        return 0
    for item in result["dead_letters"]:
        retried = f"  retried {item['retried_at']}" if item["retried_at"] else ""
        sys.stdout.write(f"{item['id']}  {item['occurred_at']}  {item['stage']}  "
                         f"{item['source_topic']}[{item['source_partition']}]@"
                         f"{item['source_offset']}  {item['error_class']}: "
                         f"{item['reason'][:120]}{retried}\n")
    return 0


def cmd_dead_letters_retry(args: argparse.Namespace) -> int:
    _print(ApiClient.from_environment().call(
        "POST", f"/v1/dead-letters/{_quote(args.id)}/retry"))
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    body = {"name": args.name, "scope": args.scope}
    if args.agent:
        body["agent"] = args.agent
    result = ApiClient.from_environment().call("POST", "/v1/tokens", body)
    if args.json:
        _print(result)
    else:
        sys.stdout.write(result["token"] + "\n")
        sys.stderr.write(f"token {result['id']} ({result['scope']}): shown only now; "
                         "keep it in a secret store\n")
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    _print(ApiClient.from_environment().call("GET", "/v1/tokens"))
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    ApiClient.from_environment().call("DELETE", f"/v1/tokens/{_quote(args.id)}")
    sys.stdout.write(f"token {args.id} revoked\n")
    return 0


def cmd_secrets_rotate(args: argparse.Namespace) -> int:
    result = ApiClient.from_environment().call("POST", "/v1/encryption/rotate")
    _print(result)
    return 0 if not result["failed"] else 1


# --- the parser ----------------------------------------------------------------------------


def on_off(value: str) -> bool:
    """Parse on/off for argparse."""
    if value not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"invalid value {value!r}: expected on or off")
    return value == "on"


def _password_options(parser: argparse.ArgumentParser, service: str) -> None:
    parser.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of standard input")
    parser.add_argument("--ask-password", action="store_true",
                        help=f"prompt for the password (or set {PASSWORD_ENV[service]})")


def add_commands(*, commands: SubParsers, inbox: SubParsers, agent: SubParsers,
                 conversation: SubParsers) -> None:
    """Add the API commands to the top level and to the inbox, agent and conversation groups."""
    _add_inbox_commands(inbox)
    _add_test_commands(commands)

    agent.add_parser("list", help="list agents").set_defaults(func=cmd_agent_list)
    create = agent.add_parser("create", help="create an agent, optionally in inboxes")
    create.add_argument("--name", required=True, help="the agent's name as customers see it")
    create.add_argument("--email", required=True, help="the agent's email address")
    create.add_argument("--availability", default="online", choices=("online", "busy",
                                                                     "offline"))
    create.add_argument("--inbox", action="append", help="inbox to work in; repeat for more")
    create.set_defaults(func=cmd_agent_create)

    listing = conversation.add_parser("list", help="list and filter conversations")
    listing.add_argument("--inbox", help="inbox name or id")
    listing.add_argument("--status", choices=("open", "resolved"))
    listing.add_argument("--assignee", help="agent email or id, or none for unassigned")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (1-500)")
    listing.add_argument("--json", action="store_true", help="print the API's JSON response")
    listing.set_defaults(func=cmd_conversation_list)
    reply = conversation.add_parser("reply", help="reply to the customer as an agent")
    reply.add_argument("id", help="conversation id")
    reply.add_argument("--text", help="the reply's text; read from standard input if left out")
    reply.add_argument("--agent", help="the agent's email (the reply is signed with their name)")
    reply.set_defaults(func=cmd_conversation_reply)

    _add_admin_commands(commands)


def _add_inbox_commands(inbox: SubParsers) -> None:
    inbox.add_parser("list", help="list inboxes").set_defaults(func=cmd_inbox_list)
    show = inbox.add_parser("show", help="show an inbox with all its settings tabs")
    show.add_argument("inbox", help="inbox name or id")
    show.set_defaults(func=cmd_inbox_show)

    settings = inbox.add_parser("settings", help="show or change the Settings tab")
    settings.add_argument("inbox", help="inbox name or id")
    settings.add_argument("--name", help="new inbox name")
    settings.add_argument("--email", help="the business address")
    settings.add_argument("--avatar-url", help="https URL of the avatar image ('' to clear)")
    settings.add_argument("--greeting", type=on_off, metavar="on|off")
    settings.add_argument("--greeting-text", help="custom greeting ('' for the default)")
    settings.add_argument("--csat", type=on_off, metavar="on|off",
                          help="send a satisfaction survey on resolution")
    settings.add_argument("--csat-text", help="custom survey text with {survey_url}")
    settings.add_argument("--help-center-url", help="https URL of the help center")
    settings.add_argument("--sender-name-style", choices=("friendly", "professional"))
    settings.add_argument("--business-name", help="the name in professional sender names")
    settings.add_argument("--locale", choices=("en", "ja"))
    settings.set_defaults(func=cmd_inbox_settings)

    collaborators = inbox.add_parser("collaborators",
                                     help="show or change the Collaborators tab")
    collaborators.add_argument("inbox", help="inbox name or id")
    collaborators.add_argument("--add", action="append", metavar="EMAIL",
                               help="add an agent; repeat for more")
    collaborators.add_argument("--remove", action="append", metavar="EMAIL",
                               help="remove an agent; repeat for more")
    collaborators.add_argument("--auto-assign", type=on_off, metavar="on|off")
    limits = collaborators.add_mutually_exclusive_group()
    limits.add_argument("--limit", type=int, help="open conversations per agent")
    limits.add_argument("--no-limit", action="store_true", help="remove the limit")
    collaborators.add_argument("--chooser", choices=("round_robin", "balanced"))
    collaborators.set_defaults(func=cmd_inbox_collaborators)

    smtp = inbox.add_parser("smtp", help="show or change the inbox's own SMTP server; "
                                         "needs IMAP set up first")
    smtp.add_argument("inbox", help="inbox name or id")
    _smtp_options(smtp)
    smtp.add_argument("--enabled", type=on_off, metavar="on|off",
                      help="send through this server (on) or the relay (off)")
    smtp.add_argument("--max-per-minute", type=int, help="sends per minute at most")
    smtp.add_argument("--save-to-sent", type=on_off, metavar="on|off",
                      help="put a copy in the IMAP Sent folder")
    smtp.add_argument("--remove", action="store_true", help="remove the SMTP settings")
    smtp.set_defaults(func=cmd_inbox_smtp)

    for name, function, help_text in (
            ("health", cmd_inbox_health, "the inbox's health: last sync, last error, since when"),
            ("forwarding-confirmations", cmd_forwarding_confirmations,
             "provider confirmation mails for the forwarding address, with codes and links")):
        command = inbox.add_parser(name, help=help_text)
        command.add_argument("inbox", help="inbox name or id")
        command.add_argument("--json", action="store_true", help="print the API's JSON response")
        command.set_defaults(func=function)


def _smtp_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="SMTP server host name")
    parser.add_argument("--port", type=int, help="usually 587 (STARTTLS) or 465 (SSL/TLS)")
    parser.add_argument("--login", help="SMTP login ('' for a server without AUTH)")
    parser.add_argument("--helo", help="domain for EHLO")
    parser.add_argument("--encryption", choices=("auto", "tls", "starttls", "none"))
    parser.add_argument("--auth", choices=("auto", "login", "plain", "cram-md5"))
    _password_options(parser, "smtp")


def _add_test_commands(commands: SubParsers) -> None:
    imap = commands.add_parser("test-imap", help="test an inbox's IMAP settings, stored or "
                                                 "changed by the options; exit 1 on failure")
    imap.add_argument("inbox", help="inbox name or id")
    imap.add_argument("--host", help="IMAP server host name")
    imap.add_argument("--port", type=int, help="usually 993 (tls) or 143 (starttls)")
    imap.add_argument("--login", help="IMAP login, often the full address")
    imap.add_argument("--security", choices=("tls", "starttls", "none"))
    _password_options(imap, "imap")
    imap.add_argument("--json", action="store_true", help="print the API's JSON response")
    imap.set_defaults(func=cmd_test_imap)

    smtp = commands.add_parser("test-smtp", help="test an inbox's SMTP settings, stored or "
                                                 "changed by the options; exit 1 on failure")
    smtp.add_argument("inbox", help="inbox name or id")
    _smtp_options(smtp)
    smtp.add_argument("--json", action="store_true", help="print the API's JSON response")
    smtp.set_defaults(func=cmd_test_smtp)


def _add_admin_commands(commands: SubParsers) -> None:
    letters = commands.add_parser("dead-letters", help="records the stages gave up on").\
        add_subparsers(dest="dead_letters_command", required=True)
    listing = letters.add_parser("list", help="list dead letters, newest first")
    listing.add_argument("--stage", choices=("router", "assign", "outbound"))
    listing.add_argument("--limit", type=int, default=100, help="at most this many (1-1000)")
    listing.add_argument("--json", action="store_true", help="print the API's JSON response")
    listing.set_defaults(func=cmd_dead_letters_list)
    retry = letters.add_parser("retry", help="send a dead letter's record back to its topic")
    retry.add_argument("id", help="the dead letter's id, from the list")
    retry.set_defaults(func=cmd_dead_letters_retry)

    tokens = commands.add_parser("token", help="API tokens").add_subparsers(
        dest="token_command", required=True)
    create = tokens.add_parser("create", help="create a token; it is printed only once")
    create.add_argument("--name", required=True, help="what the token is for")
    create.add_argument("--scope", required=True, choices=("admin", "agent", "service"))
    create.add_argument("--agent", help="for scope agent: the agent's email")
    create.add_argument("--json", action="store_true", help="print the API's JSON response")
    create.set_defaults(func=cmd_token_create)
    tokens.add_parser("list", help="list tokens, never their values").set_defaults(
        func=cmd_token_list)
    revoke = tokens.add_parser("revoke", help="revoke a token at once")
    revoke.add_argument("id", help="the token's id")
    revoke.set_defaults(func=cmd_token_revoke)

    keys = commands.add_parser("secrets", help="the encryption of stored passwords").\
        add_subparsers(dest="secrets_command", required=True)
    keys.add_parser("rotate", help="encrypt every stored password again with the newest key "
                                   "of MESSAGEHUB_ENCRYPTION_KEYS").set_defaults(
        func=cmd_secrets_rotate)
