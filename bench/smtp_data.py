"""Receiver DATA benchmark: aiosmtpd's line-by-line DATA against ForwardingSMTP's blocks.

Runs both servers in this process on loopback with a handler that only
counts, and sends the benchmark's generated mail mix to each from a client
thread over one connection. Prints, per server, the mails per second and
the server's CPU milliseconds per mail (the event loop's thread only), the
median of ``--rounds`` rounds, and checks that both servers received the
same bytes::

    .venv/bin/python -m bench.smtp_data [--mails 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import smtplib
import statistics
import threading
import time
from collections.abc import Callable

from aiosmtpd.smtp import SMTP, Envelope, Session

from bench.mailgen import MailGenerator
from services.ingest.smtp_data import ForwardingSMTP


class CountingHandler:
    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.mails = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.digest.update(envelope.original_content or b"")
        self.mails += 1
        return "250 OK"


def measure(server_class: Callable[..., SMTP], mails: list[bytes]) -> tuple[float, float, str]:
    """Send ``mails`` to a fresh server; return mails/s, server CPU ms per mail and a digest."""
    handler = CountingHandler()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    cpu: dict[str, float] = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(loop.create_server(
            lambda: server_class(handler, data_size_limit=64 * 1024 * 1024), "127.0.0.1", 0))
        cpu["port"] = server.sockets[0].getsockname()[1]
        started.set()
        cpu["start"] = time.thread_time()
        loop.run_forever()
        cpu["end"] = time.thread_time()
        server.close()
        loop.run_until_complete(server.wait_closed())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    started.wait()
    begun = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", int(cpu["port"]), timeout=60) as client:
        for raw in mails:
            client.sendmail("bench@example.org", ["support@example.com"], raw)
    elapsed = time.perf_counter() - begun
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    assert handler.mails == len(mails)
    return len(mails) / elapsed, (cpu["end"] - cpu["start"]) * 1000 / len(mails), \
        handler.digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mails", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    mails = [mail.raw for mail in MailGenerator(run_tag="smtpdata").take(args.mails)]
    print(f"{len(mails)} mails, {sum(map(len, mails)) / len(mails) / 1024:.0f} KB mean")
    results: dict[str, list[tuple[float, float, str]]] = {"aiosmtpd": [], "blocks": []}
    for _ in range(args.rounds):
        results["aiosmtpd"].append(measure(SMTP, mails))
        results["blocks"].append(measure(ForwardingSMTP, mails))

    digests = {name: {digest for _rate, _cpu, digest in rounds}
               for name, rounds in results.items()}
    print(f"same bytes received: {digests['aiosmtpd'] == digests['blocks']}")
    medians = {}
    for name, rounds in results.items():
        rate = statistics.median(rate for rate, _cpu, _digest in rounds)
        cpu_ms = statistics.median(cpu_ms for _rate, cpu_ms, _digest in rounds)
        medians[name] = cpu_ms
        print(f"{name:9} {rate:8.1f} mails/s  {cpu_ms:6.2f} ms server CPU per mail")
    print(f"CPU per mail, aiosmtpd / blocks: {medians['aiosmtpd'] / medians['blocks']:.1f}x")


if __name__ == "__main__":
    main()
