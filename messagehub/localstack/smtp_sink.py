"""SMTP sink of the local stack: accepts every message and stores it in a directory.

The outbound service delivers to this server in local runs and tests, and
tests read what arrived with ``read_sink``. ``LocalStack`` starts it as
``python -m messagehub.localstack.smtp_sink --host 127.0.0.1 --port N --dir DIR``.

Each message is stored as ``DIR/<seq>.eml`` with the DATA bytes exactly as
received (after SMTP dot-unstuffing), and a ``DIR/<seq>.json`` sidecar with
the envelope. The sidecar is renamed into place last, so a message whose
sidecar exists is complete. The server replies 250 only after both files
exist, and 451 (try again later) when they cannot be written.
"""

from __future__ import annotations

import argparse
import asyncio
import email.policy
import ipaddress
import json
import logging
import signal
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import EmailMessage
from email.parser import BytesParser
from functools import cached_property
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

from messagehub.localstack._files import write_atomically

logger = logging.getLogger(__name__)

SERVER_HOSTNAME = "localhost"


@dataclass(frozen=True)
class SinkMail:
    """One message the sink received, with its SMTP envelope."""

    # The reverse-path as aiosmtpd reports it: "<>" for the null sender.
    mail_from: str
    rcpt_tos: list[str]
    received_at: datetime
    raw: bytes = field(repr=False)

    @cached_property
    def message(self) -> EmailMessage:
        """The raw bytes parsed with ``email.policy.default``."""
        return BytesParser(EmailMessage, policy=email.policy.default).parsebytes(self.raw)


def read_sink(mail_dir: Path) -> list[SinkMail]:
    """Return every complete message in ``mail_dir``, in order of arrival."""
    if not mail_dir.is_dir():
        return []

    sequence_numbers = sorted(int(path.stem) for path in mail_dir.glob("*.json") if path.stem.isdigit())
    mails = []
    for seq in sequence_numbers:
        envelope = json.loads((mail_dir / f"{seq}.json").read_text())
        mails.append(
            SinkMail(
                mail_from=envelope["mail_from"],
                rcpt_tos=list(envelope["rcpt_tos"]),
                received_at=datetime.fromisoformat(envelope["received_at"]),
                raw=(mail_dir / f"{seq}.eml").read_bytes(),
            )
        )
    return mails


class SinkHandler:
    """aiosmtpd handler that stores each message under the next sequence number."""

    def __init__(self, mail_dir: Path) -> None:
        self.mail_dir = mail_dir
        existing = [int(path.stem) for path in mail_dir.glob("*.eml") if path.stem.isdigit()]
        self._last_seq = max(existing, default=0)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Store the message and return the SMTP reply."""
        # This method never awaits, so concurrent sessions on this event
        # loop cannot get the same number.
        self._last_seq += 1
        seq = self._last_seq
        raw = envelope.original_content or b""
        sidecar = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "received_at": datetime.now(timezone.utc).isoformat(),
        }

        # Small local files: writing them on the event loop is fast enough
        # for a test sink, and keeps the 250 strictly after the write.
        try:
            write_atomically(self.mail_dir / f"{seq}.eml", raw)
            write_atomically(self.mail_dir / f"{seq}.json", json.dumps(sidecar).encode())
        except OSError as error:
            logger.error("smtp-sink: storing message %d from %s failed: %s", seq, session.peer, error)
            return "451 4.3.0 Could not store the message, try again later"

        logger.info("smtp-sink: stored message %d (%d bytes) for %d recipients", seq, len(raw), len(envelope.rcpt_tos))
        return f"250 2.0.0 Stored as {seq}"


async def serve(host: str, port: int, mail_dir: Path) -> None:
    """Accept SMTP connections on ``host:port`` until SIGTERM or SIGINT."""
    _check_loopback(host)
    mail_dir.mkdir(parents=True, exist_ok=True)
    handler = SinkHandler(mail_dir)
    loop = asyncio.get_running_loop()

    # An explicit hostname avoids socket.getfqdn(), which can wait for DNS.
    server = await loop.create_server(
        lambda: SMTP(handler, hostname=SERVER_HOSTNAME, enable_SMTPUTF8=True, loop=loop),
        host=host,
        port=port,
    )
    logger.info("smtp-sink: listening on %s:%d, storing mail in %s", host, port, mail_dir)

    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()

    server.close()
    await server.wait_closed()
    logger.info("smtp-sink: stopped")


def _check_loopback(host: str) -> None:
    # The sink accepts mail from anyone without authentication.
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"invalid --host {host!r}: give a loopback IP address such as 127.0.0.1") from None
    if not address.is_loopback:
        raise ValueError(f"invalid --host {host!r}: the sink listens on loopback addresses only")


def main(argv: list[str] | None = None) -> int:
    """Run the sink from the command line."""
    parser = argparse.ArgumentParser(description="SMTP server that stores every message it receives in a directory.")
    parser.add_argument("--host", default="127.0.0.1", help="loopback IP address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    parser.add_argument("--dir", type=Path, required=True, help="directory for <seq>.eml and <seq>.json files")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        asyncio.run(serve(args.host, args.port, args.dir))
    except ValueError as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
