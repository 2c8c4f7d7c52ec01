"""The ``messagehub`` command: the operator's interface to a running messagehub.

``up``/``down``/``status`` start, stop and show the local stack and the
services; ``inbox``, ``agent``, ``import`` and ``conversations`` act on the
stack that ``up`` started, found through its state dir without flags (the
commands of :mod:`messagehub.cli_api` go through its HTTP API instead);
``demo`` runs the whole product on sample mail; and ``bench`` runs the
end-to-end benchmark in ``bench/`` on a stack of its own.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from messagehub import cli_api, cli_assign, db, inboxes, logs, secrets, stackctl
from messagehub.chaos import command as chaos_command
from messagehub.importer import ForwardingClient, MailSourceError, import_paths

log = logging.getLogger("messagehub.cli")


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False, indent=2, default=str) + "\n")


def _connect() -> Any:
    return db.connect(stackctl.stack_info()["database_url"])


def cmd_up(args: argparse.Namespace) -> int:
    components = stackctl.up(partitions=args.partitions)
    if args.json:
        _print_json(components)
    else:
        _print_components(components)
    return 0


def cmd_down(_args: argparse.Namespace) -> int:
    stackctl.down()
    sys.stdout.write("messagehub stopped; data kept in %s\n" % stackctl.state_dir_from_env())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    components = stackctl.status()
    if args.json:
        _print_json(components)
    else:
        _print_components(components)
    return 0 if all(c["running"] for c in components.values()) else 3


def _print_components(components: dict[str, Any]) -> None:
    for name, component in components.items():
        state = "running" if component["running"] else "stopped"
        extra = f"  metrics {component['metrics']}" if component.get("metrics") else ""
        sys.stdout.write(f"{name:<12} {state:<8} {component['address']}{extra}\n")


def cmd_inbox_create(args: argparse.Namespace) -> int:
    info = stackctl.stack_info()
    with _connect() as conn:
        inbox = inboxes.create_inbox(
            conn, name=args.name, email=args.email, inbound_domain=info["inbound_domain"],
            greeting_text=args.greeting, greeting_enabled=args.greeting is not None,
            auto_assign_limit=args.auto_assign_limit, locale=args.locale)
    if args.json:
        _print_json(inbox)
    else:
        sys.stdout.write(inbox["forwarding_address"] + "\n")
    return 0


def cmd_agent_add(args: argparse.Namespace) -> int:
    with _connect() as conn:
        agent = inboxes.add_agent(conn, inbox=args.inbox, name=args.name, email=args.email)
    _print_json(agent) if args.json else sys.stdout.write(agent["id"] + "\n")
    return 0


IMAP_PASSWORD_ENV = "MESSAGEHUB_IMAP_PASSWORD"


class ImapSettingsError(ValueError):
    """The IMAP settings given on the command line cannot be saved."""


def _configure_secrets(info: dict[str, Any]) -> None:
    keys = os.environ.get("MESSAGEHUB_ENCRYPTION_KEYS") or info.get("encryption_keys", "")
    secrets.configure(keys)


def _read_imap_password(args: argparse.Namespace) -> str:
    """Return the password from standard input or the environment, never from argv."""
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif os.environ.get(IMAP_PASSWORD_ENV):
        password = os.environ[IMAP_PASSWORD_ENV]
    elif sys.stdin.isatty():
        password = getpass.getpass(f"IMAP password for {args.login}: ")
    else:
        raise ImapSettingsError(f"no IMAP password: pass --password-stdin and write it to "
                                f"standard input, or set {IMAP_PASSWORD_ENV}")
    if not password:
        raise ImapSettingsError("the IMAP password is empty")
    return password


def cmd_inbox_imap(args: argparse.Namespace) -> int:
    info = stackctl.stack_info()
    _configure_secrets(info)
    with _connect() as conn:
        inbox = inboxes.find_inbox(conn, args.inbox)
        if args.disable:
            smtp = conn.execute("SELECT 1 FROM inbox_smtp WHERE inbox_id = %s AND enabled",
                                (inbox["id"],)).fetchone()
            if smtp is not None:
                raise ImapSettingsError(
                    f"IMAP sync of {inbox['name']} cannot be turned off while the inbox sends "
                    "through its own SMTP server, because replies arrive only through IMAP: "
                    f"run `messagehub inbox smtp {inbox['name']} --enabled off` first")
            conn.execute("UPDATE inbox_imap SET sync_enabled = false WHERE inbox_id = %s",
                         (inbox["id"],))
            sys.stdout.write(f"IMAP sync of {inbox['name']} turned off\n")
            return 0
        if not args.host or not args.login:
            raise ImapSettingsError("--host and --login are required to turn IMAP sync on")
        if args.after_import == "move" and not args.move_to:
            raise ImapSettingsError("--after-import move needs --move-to FOLDER")
        token = secrets.encrypt(_read_imap_password(args))
        start_at = None if args.backfill else (
            datetime.now(timezone.utc) - timedelta(days=args.since_days))
        conn.execute(
            "INSERT INTO inbox_imap (inbox_id, host, port, username, password_encrypted, "
            "security, sync_enabled, sync_folders, sync_start_at, sync_after_import, "
            "sync_move_to) VALUES (%s, %s, %s, %s, %s, %s, true, %s, %s, %s, %s) "
            "ON CONFLICT (inbox_id) DO UPDATE SET host = EXCLUDED.host, port = EXCLUDED.port, "
            "username = EXCLUDED.username, password_encrypted = EXCLUDED.password_encrypted, "
            "security = EXCLUDED.security, sync_enabled = true, "
            "sync_folders = EXCLUDED.sync_folders, sync_start_at = EXCLUDED.sync_start_at, "
            "sync_after_import = EXCLUDED.sync_after_import, sync_move_to = EXCLUDED.sync_move_to",
            (inbox["id"], args.host, args.port, args.login, token,
             "tls" if args.security == "ssl" else args.security, args.folder or ["INBOX"],
             start_at, args.after_import, args.move_to))
    sys.stdout.write(f"IMAP sync of {inbox['name']} on: {args.login} at {args.host}:{args.port} "
                     f"({args.security}), folders {', '.join(args.folder or ['INBOX'])}\n")
    return 0


def cmd_import_imap(args: argparse.Namespace, info: dict[str, Any]) -> int:
    # The history import is ingest's catch-up run once, so the command borrows it.
    from services.ingest.imap.connection import ImapSyncError
    from services.ingest.imap.history import HistoryImportError, import_history

    _configure_secrets(info)
    with _connect() as conn:
        inbox = inboxes.find_inbox(conn, args.inbox)
    try:
        results = import_history(
            database_url=info["database_url"], kafka_bootstrap=info["kafka_bootstrap"],
            inbox_id=inbox["id"], folders=args.folder or None,
            ca_file=os.environ.get("MESSAGEHUB_TLS_CA_FILE") or info.get("tls_ca_file", ""))
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted: run the same command again to resume\n")
        return 130
    except (HistoryImportError, ImapSyncError) as exc:
        sys.stderr.write(f"messagehub: {exc}\n")
        return 2
    summary = {"inbox": inbox["name"],
               "folders": [{"folder": r.folder, "imported": r.imported, "last_uid": r.last_uid}
                           for r in results]}
    if args.json:
        _print_json(summary)
    else:
        for result in results:
            sys.stdout.write(f"{result.folder}: {result.imported} mails handed to the pipeline "
                             f"(up to UID {result.last_uid})\n")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    info = stackctl.stack_info()
    if args.imap:
        return cmd_import_imap(args, info)
    if not args.paths:
        raise MailSourceError("nothing to import: give a Maildir, mbox or .eml path, or --imap")
    with _connect() as conn:
        inbox = inboxes.find_inbox(conn, args.inbox)
    host, port = info["ingest_smtp"].rsplit(":", 1)
    client = ForwardingClient(host, int(port), inbox["forwarding_address"])
    result = import_paths([Path(p) for p in args.paths], client, concurrency=args.concurrency)

    summary = {"inbox": inbox["name"], "accepted": result.accepted,
               "rejected": len(result.rejected), "distinct": len(result.distinct_keys)}
    if args.json:
        _print_json(summary)
    else:
        sys.stdout.write(f"imported {result.accepted} mails into {inbox['name']} "
                         f"({len(result.rejected)} rejected)\n")
    return 0 if not result.rejected else 1


def cmd_conversations(args: argparse.Namespace) -> int:
    with _connect() as conn:
        conversations = inboxes.list_conversations(conn, args.inbox)
    if args.json:
        for conversation in conversations:
            sys.stdout.write(json.dumps(conversation, ensure_ascii=False, default=str) + "\n")
    else:
        _print_conversation_table(conversations)
    return 0


def _print_conversation_table(conversations: list[dict[str, Any]]) -> None:
    sys.stdout.write(f"{'subject':<48} {'msgs':>4}  {'assignee':<14} {'greeting':<8} status\n")
    for conversation in conversations:
        subject = conversation["subject"] or "(no subject)"
        subject = subject if len(subject) <= 46 else subject[:45] + "…"
        greeting = "sent" if conversation["greetings_sent"] else "-"
        sys.stdout.write(f"{subject:<48} {conversation['messages']:>4}  "
                         f"{inboxes.assignee_label(conversation):<14} {greeting:<8} "
                         f"{conversation['status']}\n")


def cmd_conversation_show(args: argparse.Namespace) -> int:
    with _connect() as conn:
        conversation = inboxes.show_conversation(conn, args.id)
    if args.json:
        _print_json(conversation)
        return 0
    sys.stdout.write(f"{conversation['subject']}  [{conversation['status']}, "
                     f"{conversation['assignee'] or 'unassigned'}]\n")
    for message in conversation["messages"]:
        sys.stdout.write(f"\n--- {message['direction']} {message['kind']} from {message['from']}"
                         f" <{message['message_id']}>\n{message['text'].strip()}\n")
    return 0


def cmd_thread_eval(args: argparse.Namespace) -> int:
    from services.router import thread_eval

    try:
        report = thread_eval.run(Path(args.dir), stackctl.stack_info())
    except (thread_eval.ThreadEvalError, TimeoutError) as exc:
        sys.stderr.write(f"messagehub: thread-eval: {exc}\n")
        return 2
    if args.json:
        _print_json(report.as_json())
    else:
        sys.stdout.write(thread_eval.format_report(report))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from messagehub import settings as settings_module
    from services.router import replay
    from services.router.stage import RouterStage

    info = stackctl.stack_info()
    settings = settings_module.load()
    secret_key = settings.secret_key or (Path(info["state_dir"]) / "secret_key").read_text().strip()
    stage = RouterStage(secret_key=secret_key, inbound_domain=info["inbound_domain"],
                        message_id_domain=settings.message_id_domain)
    try:
        target_url = (args.into if "://" in args.into
                      else replay.create_local_database(info, args.into))
        result = replay.replay(source_url=info["database_url"], target_url=target_url,
                               bootstrap=info["kafka_bootstrap"], stage=stage)
    except replay.ReplayError as exc:
        sys.stderr.write(f"messagehub: replay: {exc}\n")
        return 2

    summary: dict[str, Any] = {"records": result.records, "applied": result.applied,
                               "dead_letters": result.dead_letters}
    if args.verify:
        summary["differences"] = replay.differences(replay.snapshot(info["database_url"]),
                                                    replay.snapshot(target_url))
    _print_json(summary)
    return 1 if summary.get("differences") else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from messagehub import demo

    return demo.run(mail_path=Path(args.mail) if args.mail else None)


def _bench_command() -> Any:
    """Return the benchmark's command module, or None when ``bench/`` is not beside the package.

    The benchmark lives in the repository, not in the installed package.
    """
    if str(stackctl.REPO_ROOT) not in sys.path:
        sys.path.append(str(stackctl.REPO_ROOT))
    try:
        from bench import command
    except ImportError:
        return None
    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="messagehub", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start the local stack and the services")
    up.add_argument("--json", action="store_true", help="print the components as JSON")
    up.add_argument("--partitions", type=int, default=4,
                    help="partitions of each topic created (default 4)")
    up.set_defaults(func=cmd_up)

    commands.add_parser("down", help="stop the services and the local stack").set_defaults(
        func=cmd_down)

    status = commands.add_parser("status", help="show each component: running or not, address")
    status.add_argument("--json", action="store_true", help="print the components as JSON")
    status.set_defaults(func=cmd_status)

    inbox = commands.add_parser("inbox", help="manage inboxes").add_subparsers(
        dest="inbox_command", required=True)
    create = inbox.add_parser("create", help="create an inbox; prints its forwarding address")
    create.add_argument("--name", required=True, help="inbox name, unique")
    create.add_argument("--email", required=True, help="the business address, e.g. support@…")
    create.add_argument("--greeting", help="turn greetings on, with this text ({customer_name} "
                                           "and {inbox_name} are filled in); '' for the default")
    create.add_argument("--auto-assign-limit", type=int,
                        help="most open conversations per agent (default: no limit)")
    create.add_argument("--locale", default="en", choices=("en", "ja"),
                        help="language of the default automatic texts")
    create.add_argument("--json", action="store_true", help="print the inbox as JSON")
    create.set_defaults(func=cmd_inbox_create)

    imap = inbox.add_parser(
        "imap", help="sync an inbox from its IMAP account; the password is read from standard "
                     f"input (--password-stdin), from {IMAP_PASSWORD_ENV} or from a prompt")
    imap.add_argument("--inbox", required=True, help="inbox name")
    imap.add_argument("--host", help="IMAP server host name")
    imap.add_argument("--port", type=int, default=993, help="IMAP port (default 993)")
    imap.add_argument("--login", help="IMAP login, often the full address")
    imap.add_argument("--security", default="ssl", choices=("ssl", "tls", "starttls", "none"),
                      help="ssl (or tls): implicit TLS, usually port 993; starttls: usually 143; "
                           "none: plaintext, for a server on loopback only (default ssl)")
    imap.add_argument("--folder", action="append",
                      help="folder to sync, as shown in mail clients; repeat for more "
                           "(default INBOX)")
    start = imap.add_mutually_exclusive_group()
    start.add_argument("--since-days", type=float, default=0.0,
                       help="the first sync imports mail that arrived in the last N days "
                            "(default 0: only mail from now on)")
    start.add_argument("--backfill", action="store_true",
                       help="the first sync imports every mail of the folders")
    imap.add_argument("--after-import", default="leave", choices=("leave", "mark_read", "move"),
                      help="what to do with a mail on the server once imported (default leave)")
    imap.add_argument("--move-to", help="folder for --after-import move")
    imap.add_argument("--password-stdin", action="store_true",
                      help="read the password from the first line of standard input")
    imap.add_argument("--disable", action="store_true", help="turn the inbox's IMAP sync off")
    imap.set_defaults(func=cmd_inbox_imap)

    agent = commands.add_parser("agent", help="manage agents").add_subparsers(
        dest="agent_command", required=True)
    add = agent.add_parser("add", help="add an agent to an inbox")
    add.add_argument("--inbox", required=True, help="inbox name")
    add.add_argument("--name", required=True, help="agent's name as customers see it")
    add.add_argument("--email", required=True, help="agent's email address")
    add.add_argument("--json", action="store_true", help="print the agent as JSON")
    add.set_defaults(func=cmd_agent_add)

    imp = commands.add_parser("import", help="import a Maildir, an mbox file or .eml files, "
                                             "or with --imap every mail of the inbox's IMAP "
                                             "folders; safe to interrupt and run again")
    imp.add_argument("--inbox", required=True, help="inbox name")
    imp.add_argument("--concurrency", type=int, default=4, help="parallel SMTP connections")
    imp.add_argument("--json", action="store_true", help="print the counts as JSON")
    imp.add_argument("--imap", action="store_true",
                     help="import the inbox's own IMAP folders, all of their mail")
    imp.add_argument("--folder", action="append",
                     help="with --imap: only this folder; repeat for more")
    imp.add_argument("paths", nargs="*", help="Maildir, mbox file, .eml file or folder of .eml")
    imp.set_defaults(func=cmd_import)

    conversations = commands.add_parser("conversations", help="list an inbox's conversations")
    conversations.add_argument("--inbox", required=True, help="inbox name")
    conversations.add_argument("--json", action="store_true",
                               help="print one JSON object per conversation")
    conversations.set_defaults(func=cmd_conversations)

    conversation = commands.add_parser("conversation", help="act on one conversation")
    conversation_commands = conversation.add_subparsers(dest="conversation_command",
                                                        required=True)
    show = conversation_commands.add_parser("show", help="show a conversation and its messages")
    show.add_argument("id", help="conversation id")
    show.add_argument("--json", action="store_true", help="print as JSON")
    show.set_defaults(func=cmd_conversation_show)

    thread_eval = commands.add_parser(
        "thread-eval", help="import a corpus into a scratch inbox and score the threading")
    thread_eval.add_argument("dir", help="folder of .eml files with a threads.json "
                                         "(file name to thread label)")
    thread_eval.add_argument("--json", action="store_true", help="print the scores as JSON")
    thread_eval.set_defaults(func=cmd_thread_eval)

    replay = commands.add_parser(
        "replay", help="rebuild the conversation tables from the topics into an empty database")
    replay.add_argument("--into", required=True,
                        help="name of a new database on the stack's PostgreSQL, or the URL of "
                             "an existing empty one")
    replay.add_argument("--verify", action="store_true",
                        help="compare the rebuilt tables with the running stack's; exit 1 if "
                             "they differ")
    replay.set_defaults(func=cmd_replay)

    demo = commands.add_parser("demo", help="run messagehub end to end on sample mail")
    demo.add_argument("--mail", help="your own Maildir, mbox file or folder of .eml instead")
    demo.set_defaults(func=cmd_demo)

    bench_command = _bench_command()
    if bench_command is not None:
        bench = commands.add_parser(
            "bench", help="benchmark throughput, latency and memory on a fresh stack of its own")
        bench_command.add_arguments(bench)
        bench.set_defaults(func=bench_command.run)

    chaos_command.add_command(commands)
    cli_assign.add_commands(inbox=inbox, agent=agent, conversation=conversation_commands)
    cli_api.add_commands(commands=commands, inbox=inbox, agent=agent,
                         conversation=conversation_commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logs.setup("WARNING")
    try:
        code = args.func(args)
    except (inboxes.InboxError, stackctl.StackNotRunning, MailSourceError, ImapSettingsError,
            secrets.SecretsError) as exc:
        sys.stderr.write(f"messagehub: {exc}\n")
        code = 2
    except cli_api.ApiClientError as exc:
        sys.stderr.write(f"messagehub: {exc}\n")
        for field in exc.fields:
            sys.stderr.write(f"  {field['field']}: {field['message']}\n")
        code = 2
    raise SystemExit(code)
