"""History import: existing mail goes in through the forwarding receiver.

``messagehub import`` and the demo call :func:`import_paths`. Each message of
a Maildir, an mbox file or a folder of ``.eml`` files is sent over SMTP to
the inbox's forwarding address, exactly as a provider would forward it, so
an import gets the same guarantees as live mail: stored before the 250,
deduplicated by the router, threaded in any arrival order.
"""

from __future__ import annotations

import email.policy
import hashlib
import logging
import mailbox
import re
import smtplib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.utils import parseaddr
from pathlib import Path

log = logging.getLogger(__name__)

_MESSAGE_ID = re.compile(rb"^message-id:\s*<([^<>\s]+)>", re.IGNORECASE | re.MULTILINE)


class MailSourceError(RuntimeError):
    """A path cannot be imported: it is neither a Maildir, an mbox file nor a folder of .eml."""


@dataclass
class ImportResult:
    accepted: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)
    # Message-ID where present, else the raw digest: what the router deduplicates on.
    distinct_keys: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class SourceMail:
    origin: str
    raw: bytes


def iter_mails(path: Path) -> Iterator[SourceMail]:
    """Yield every message under ``path`` in a stable order."""
    if path.is_dir() and all((path / sub).is_dir() for sub in ("cur", "new")):
        box = mailbox.Maildir(path, factory=None, create=False)
        for key in sorted(box.keys()):
            yield SourceMail(f"{path}:{key}", box.get_bytes(key))
    elif path.is_dir():
        for eml in sorted(p for p in path.rglob("*.eml") if p.is_file()):
            yield SourceMail(str(eml), eml.read_bytes())
    elif path.is_file() and path.suffix.lower() == ".eml":
        yield SourceMail(str(path), path.read_bytes())
    elif path.is_file():
        box = mailbox.mbox(path, factory=None, create=False)
        for key in box.keys():
            yield SourceMail(f"{path}:{key}", box.get_bytes(key))
    else:
        raise MailSourceError(f"not found or not a mail source: {path}")


def dedup_key(raw: bytes) -> str:
    """Return the Message-ID of ``raw``, or its digest when it has none."""
    match = _MESSAGE_ID.search(raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0])
    if match:
        return match.group(1).decode("ascii", "replace")
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def envelope_sender(raw: bytes) -> str:
    """Return the envelope sender a forwarding provider would use for ``raw``."""
    headers = BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    for name in ("Return-Path", "Sender", "From"):
        value = headers.get(name)
        if value is not None:
            address = parseaddr(str(value))[1]
            if address or name == "Return-Path":
                return address
    return ""


def _to_crlf(raw: bytes) -> bytes:
    # Files on disk often have LF line ends; SMTP carries CRLF.
    return re.sub(rb"\r?\n", b"\r\n", raw)


class ForwardingClient:
    """Sends mails to one forwarding address over SMTP, one connection per thread."""

    def __init__(self, host: str, port: int, forwarding_address: str,
                 timeout_seconds: float = 60.0) -> None:
        self._host = host
        self._port = port
        self._forwarding_address = forwarding_address
        self._timeout = timeout_seconds

    def send(self, mail: SourceMail) -> None:
        raw = _to_crlf(mail.raw)
        sender = envelope_sender(raw)
        options: list[str] = []
        if not sender.isascii():
            # An internationalised address needs SMTPUTF8, which ingest offers.
            options.append("SMTPUTF8")
        if any(char.isspace() or char in "<>" for char in sender):
            # A From header too broken to be an envelope address: send as <>.
            sender = ""
        with smtplib.SMTP(self._host, self._port, timeout=self._timeout) as smtp:
            smtp.sendmail(sender, [self._forwarding_address], raw, mail_options=options)


def import_paths(paths: list[Path], client: ForwardingClient, *,
                 concurrency: int = 4) -> ImportResult:
    """Send every mail under ``paths``; return what was accepted and rejected."""
    mails = [mail for path in paths for mail in iter_mails(path)]
    result = ImportResult()

    def send(mail: SourceMail) -> tuple[SourceMail, str | None]:
        try:
            client.send(mail)
        except (smtplib.SMTPException, OSError, UnicodeError) as exc:
            return mail, f"{type(exc).__name__}: {exc}"
        return mail, None

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for mail, error in pool.map(send, mails):
            if error is None:
                result.accepted += 1
                result.distinct_keys.add(dedup_key(_to_crlf(mail.raw)))
            else:
                log.warning("import: %s: rejected: %s", mail.origin, error)
                result.rejected.append((mail.origin, error))
    return result
