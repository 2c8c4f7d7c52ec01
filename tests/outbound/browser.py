"""A headless Chromium driven over the DevTools protocol, for tests of pages people use.

Debian's ``chromium-headless-shell`` (or ``chromium``) runs with a private
profile and a DevTools port on 127.0.0.1; :class:`Browser` opens one page,
navigates, runs JavaScript in it and waits for loads, using aiohttp's
WebSocket client, so no browser driver package is needed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

BINARIES = ("chromium-headless-shell", "chromium")
START_TIMEOUT_SECONDS = 30.0
COMMAND_TIMEOUT_SECONDS = 30.0


def find_chromium() -> str | None:
    """Return the path of a Chromium binary, or None when none is installed."""
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium process with one page; use ``async with``."""

    def __init__(self, binary: str) -> None:
        self._binary = binary
        self._profile = tempfile.TemporaryDirectory(prefix="messagehub-chromium-")
        self._process: subprocess.Popen[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._socket: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._events: list[dict[str, Any]] = []

    async def __aenter__(self) -> Browser:
        # --no-sandbox: Chromium's sandbox cannot start as root, which the
        # local stack requires anyway.
        self._process = subprocess.Popen(
            [self._binary, "--headless", "--no-sandbox", "--disable-gpu",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--user-data-dir={self._profile.name}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        port = await asyncio.wait_for(asyncio.to_thread(self._devtools_port),
                                      START_TIMEOUT_SECONDS)
        self._session = aiohttp.ClientSession()
        async with self._session.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json(content_type=None)
        page = next(target for target in targets if target["type"] == "page")
        self._socket = await self._session.ws_connect(page["webSocketDebuggerUrl"],
                                                      max_msg_size=0)
        await self.command("Page.enable")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._socket is not None:
            await self._socket.close()
        if self._session is not None:
            await self._session.close()
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._profile.cleanup()

    def _devtools_port(self) -> int:
        assert self._process is not None and self._process.stderr is not None
        for line in self._process.stderr:
            found = re.search(rb"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            if found:
                return int(found.group(1))
        raise RuntimeError(f"{self._binary} exited before opening its DevTools port")

    async def command(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result."""
        assert self._socket is not None
        command_id = next(self._ids)
        await self._socket.send_str(json.dumps({"id": command_id, "method": method,
                                                "params": params}))
        async with asyncio.timeout(COMMAND_TIMEOUT_SECONDS):
            while True:
                message = json.loads((await self._socket.receive()).data)
                if message.get("id") == command_id:
                    if "error" in message:
                        raise RuntimeError(f"{method} failed: {message['error']}")
                    return dict(message.get("result", {}))
                self._events.append(message)

    async def wait_for_load(self) -> None:
        """Wait for the next Page.loadEventFired, including one already received."""
        assert self._socket is not None
        async with asyncio.timeout(COMMAND_TIMEOUT_SECONDS):
            while True:
                if any(event.get("method") == "Page.loadEventFired" for event in self._events):
                    self._events.clear()
                    return
                self._events.append(json.loads((await self._socket.receive()).data))

    async def open(self, url: str) -> None:
        self._events.clear()
        await self.command("Page.navigate", url=url)
        await self.wait_for_load()

    async def evaluate(self, expression: str) -> Any:
        """Run JavaScript in the page and return its value."""
        result = await self.command("Runtime.evaluate", expression=expression,
                                    returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    async def screenshot(self, path: Path) -> None:
        import base64

        result = await self.command("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(result["data"]))
