"""``messagehub chaos``: the full chaos run on demand, on a fresh stack of its own.

:func:`add_command` registers the subcommand on the parser of
:mod:`messagehub.cli`. The run wipes and starts the stack in ``--state-dir``
(by default ``/var/tmp/messagehub/chaos``, ports from 31000), so it never
touches the demo stack, and stops it at the end unless ``--keep-stack``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from messagehub.chaos import faults, harness


def add_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``chaos`` to the subcommands of ``messagehub``."""
    chaos = commands.add_parser(
        "chaos", help="import mail while killing services, Kafka, PostgreSQL and the SMTP "
                      "server, then check that nothing was lost or doubled")
    chaos.add_argument("--mails", type=int, default=harness.ChaosOptions.mails,
                       help="mails to import, replies included (default 10000)")
    chaos.add_argument("--inboxes", type=int, default=harness.ChaosOptions.inboxes,
                       help="inboxes the mail is spread over (default 10)")
    chaos.add_argument("--rate", type=float, default=harness.ChaosOptions.rate_per_second,
                       help="mails sent to the forwarding receiver per second (default 25)")
    chaos.add_argument("--seed", type=int, default=harness.ChaosOptions.seed,
                       help="seed of the mail and of the fault times (default 1)")
    chaos.add_argument("--fault", action="append", choices=faults.FAULT_KINDS,
                       help="inject this fault, in the given order; repeat for more "
                            "(default: every kind, shuffled, for as long as the import lasts)")
    chaos.add_argument("--state-dir", type=Path, default=harness.DEFAULT_STATE_DIR,
                       help="state dir of the stack the run starts and wipes "
                            f"(default {harness.DEFAULT_STATE_DIR})")
    chaos.add_argument("--port-base", type=int, default=harness.DEFAULT_PORT_BASE,
                       help=f"port base of that stack (default {harness.DEFAULT_PORT_BASE})")
    chaos.add_argument("--keep-stack", action="store_true",
                       help="leave the stack running at the end, to look at it")
    chaos.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    chaos.set_defaults(func=cmd_chaos)


def cmd_chaos(args: argparse.Namespace) -> int:
    """Run the chaos test; exit 0 when every guarantee held, 1 otherwise."""
    # Progress goes to standard error; the broker clients' connection errors
    # during a Kafka restart are expected and would drown it.
    logging.getLogger("messagehub.chaos").setLevel(logging.INFO)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)

    options = harness.ChaosOptions(mails=args.mails, inboxes=args.inboxes, seed=args.seed,
                               rate_per_second=args.rate, plan=args.fault)
    report = harness.run(options, args.state_dir, args.port_base, manage_stack=True,
                     keep_stack=args.keep_stack)
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
    else:
        sys.stdout.write(summary(report))
    return 0 if report["ok"] else 1


def summary(report: dict[str, object]) -> str:
    """Return the figures of a run as a few lines for a terminal."""
    lines = [
        f"mails {report['mails']} ({report['mail_deliveries']} deliveries), "
        f"faults injected {report['injected']}",
        f"lost {report['lost']}, doubled messages {report['doubled_messages']}, "
        f"doubled conversations {report['doubled_conversations']}, "
        f"doubled sends {report['doubled_sends']}, missing sends {report['missing_sends']}",
        f"slowest recovery {report['recovery_s_max']} s, "
        f"unplanned restarts {len(report['unplanned_restarts'])}",  # type: ignore[arg-type]
        "every guarantee held" if report["ok"] else "a guarantee failed: run with --json",
    ]
    return "\n".join(lines) + "\n"
