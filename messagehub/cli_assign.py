"""The assignment and business-hours commands of ``messagehub``.

:func:`add_commands` adds them to the parser that ``messagehub.cli`` builds:

- ``conversation resolve|reopen|assign|unassign``: a person's actions,
  carried out by :mod:`messagehub.actions` under the assign service's rules;
- ``agent availability``: online, busy or offline;
- ``inbox assignment``: auto-assignment on or off, the limit, the chooser;
- ``inbox hours``: business hours, holidays and the out-of-hours note.

Each command acts on the stack that ``messagehub up`` started and prints
the result, as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from messagehub import actions, db, inboxes, stackctl
from messagehub.assignment import AVAILABILITIES, CHOOSERS
from messagehub.business_hours import WEEKDAYS

SubParsers = Any  # argparse's _SubParsersAction, which typeshed keeps private


def _database_url() -> str:
    return str(stackctl.stack_info()["database_url"])


def _print(result: dict[str, Any], args: argparse.Namespace, summary: str) -> None:
    if args.json:
        sys.stdout.write(json.dumps(result, ensure_ascii=False, indent=2, default=str) + "\n")
    else:
        sys.stdout.write(summary + "\n")


def _conversation_summary(result: dict[str, Any]) -> str:
    holder = result["assignee"] or ("queued" if result["queued"] else "unassigned")
    return f"{result['id']}  {result['status']}  {holder}"


def cmd_resolve(args: argparse.Namespace) -> int:
    result = asyncio.run(actions.run(_database_url(), actions.resolve, args.id))
    _print(result, args, _conversation_summary(result))
    return 0


def cmd_reopen(args: argparse.Namespace) -> int:
    result = asyncio.run(actions.run(_database_url(), actions.reopen, args.id))
    _print(result, args, _conversation_summary(result))
    return 0


def cmd_assign(args: argparse.Namespace) -> int:
    result = asyncio.run(actions.run(_database_url(), actions.assign, args.id, args.agent,
                                     exceed_limit=args.exceed_limit))
    _print(result, args, _conversation_summary(result))
    return 0


def cmd_unassign(args: argparse.Namespace) -> int:
    result = asyncio.run(actions.run(_database_url(), actions.unassign, args.id,
                                     requeue=args.requeue))
    _print(result, args, _conversation_summary(result))
    return 0


def cmd_availability(args: argparse.Namespace) -> int:
    result = asyncio.run(actions.run(_database_url(), actions.set_availability, args.email,
                                     args.availability))
    _print(result, args, f"{result['email']} is {result['availability']}; "
                         f"{result['assigned_from_queue']} queued conversations assigned")
    return 0


def cmd_assignment(args: argparse.Namespace) -> int:
    limit: Any = actions.KEEP
    if args.no_limit:
        limit = None
    elif args.limit is not None:
        limit = args.limit
    result = asyncio.run(actions.run(
        _database_url(), actions.set_assignment, args.inbox,
        enabled=actions.KEEP if args.enabled is None else args.enabled, limit=limit,
        chooser=args.chooser or actions.KEEP))
    state = "on" if result["auto_assign_enabled"] else "off"
    _print(result, args, f"{result['inbox']}: auto-assignment {state}, limit "
                         f"{result['auto_assign_limit'] or 'none'}, {result['assign_chooser']}; "
                         f"{result['assigned_from_queue']} queued conversations assigned")
    return 0


def cmd_hours(args: argparse.Namespace) -> int:
    days = {}
    for item in args.day or ():
        weekday, separator, spec = item.partition("=")
        if not separator:
            raise inboxes.InboxError(f"invalid --day {item!r}: expected DAY=HOURS, "
                                     "e.g. mon=09:00-12:00,13:00-17:00 or sat=closed")
        days[weekday.strip().lower()] = spec
    holidays = None
    if args.holidays is not None:
        holidays = [day.strip() for day in args.holidays.split(",") if day.strip()]

    with db.connect(_database_url()) as conn:
        result = inboxes.set_business_hours(
            conn, args.inbox, enabled=args.enabled, time_zone=args.zone, days=days,
            holidays=holidays, out_of_hours_enabled=args.out_of_hours,
            out_of_hours_text=args.out_of_hours_text)
    hours = ", ".join(f"{day} " + (",".join(f"{o}-{c}" for o, c in result["hours"].get(day, []))
                                   or "closed") for day in WEEKDAYS)
    _print(result, args, f"{result['inbox']}: business hours "
                         f"{'on' if result['enabled'] else 'off'}, {result['time_zone']}: {hours}")
    return 0


def _on_off(value: str) -> bool:
    if value not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"invalid value {value!r}: expected on or off")
    return value == "on"


def add_commands(*, inbox: SubParsers, agent: SubParsers, conversation: SubParsers) -> None:
    """Add the commands to the ``inbox``, ``agent`` and ``conversation`` sub-command groups."""
    for name, function, help_text in (
            ("resolve", cmd_resolve, "resolve a conversation; its agent's capacity is freed"),
            ("reopen", cmd_reopen, "reopen a conversation; it keeps its agent if eligible")):
        command = conversation.add_parser(name, help=help_text)
        command.add_argument("id", help="conversation id")
        command.add_argument("--json", action="store_true", help="print the result as JSON")
        command.set_defaults(func=function)

    assign = conversation.add_parser("assign", help="assign a conversation to an agent")
    assign.add_argument("id", help="conversation id")
    assign.add_argument("--agent", required=True, help="the agent's email address")
    assign.add_argument("--exceed-limit", action="store_true",
                        help="assign even when the agent is at the inbox's limit")
    assign.add_argument("--json", action="store_true", help="print the result as JSON")
    assign.set_defaults(func=cmd_assign)

    unassign = conversation.add_parser("unassign", help="take a conversation from its agent")
    unassign.add_argument("id", help="conversation id")
    unassign.add_argument("--requeue", action="store_true",
                          help="put it at the back of the queue for auto-assignment")
    unassign.add_argument("--json", action="store_true", help="print the result as JSON")
    unassign.set_defaults(func=cmd_unassign)

    availability = agent.add_parser("availability", help="set an agent online, busy or offline")
    availability.add_argument("--email", required=True, help="the agent's email address")
    availability.add_argument("availability", choices=AVAILABILITIES,
                              help="online agents get conversations; busy and offline keep theirs")
    availability.add_argument("--json", action="store_true", help="print the result as JSON")
    availability.set_defaults(func=cmd_availability)

    settings = inbox.add_parser("assignment", help="set an inbox's auto-assignment")
    settings.add_argument("--inbox", required=True, help="inbox name")
    settings.add_argument("--auto-assign", dest="enabled", type=_on_off, metavar="on|off",
                          help="turn auto-assignment on or off")
    limits = settings.add_mutually_exclusive_group()
    limits.add_argument("--limit", type=int, help="most open conversations per agent")
    limits.add_argument("--no-limit", action="store_true", help="remove the limit")
    settings.add_argument("--chooser", choices=CHOOSERS,
                          help="round_robin: least recently assigned first; "
                               "balanced: fewest open conversations first")
    settings.add_argument("--json", action="store_true", help="print the settings as JSON")
    settings.set_defaults(func=cmd_assignment)

    hours = inbox.add_parser("hours", help="set an inbox's business hours and out-of-hours note")
    hours.add_argument("--inbox", required=True, help="inbox name")
    hours.add_argument("--business-hours", dest="enabled", type=_on_off, metavar="on|off",
                       help="turn business hours on or off")
    hours.add_argument("--zone", help="IANA time zone, e.g. America/New_York")
    hours.add_argument("--day", action="append", metavar="DAY=HOURS",
                       help="a weekday's hours, repeatable: mon=09:00-12:00,13:00-17:00, "
                            "fri=22:00-06:00 (into the next day), sat=all-day, sun=closed")
    hours.add_argument("--holidays", metavar="DATES",
                       help="closed dates, comma separated YYYY-MM-DD; replaces the list "
                            "('' for none)")
    hours.add_argument("--out-of-hours", type=_on_off, metavar="on|off",
                       help="send the out-of-hours note to mail that arrives while closed")
    hours.add_argument("--out-of-hours-text",
                       help="the note's text ({customer_name}, {inbox_name} and "
                            "{next_opening} are filled in); '' for the default")
    hours.add_argument("--json", action="store_true", help="print the settings as JSON")
    hours.set_defaults(func=cmd_hours)
