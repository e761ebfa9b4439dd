"""Headless Chromium (Debian's ``chromium``) driven over the DevTools protocol, for tests that look at a page
as a person would: read its DOM, take a screenshot. Offline: it is started with every background
connection off, on an empty profile of its own, and stopped (with its children) at the end."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from couponrush.dev.broker import free_port
from couponrush_bench.polling import eventually

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--hide-scrollbars",
    "--window-size=1280,860",
)


def chromium_or_skip() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium); the live view needs it")
    return found


class Page:
    def __init__(self, socket: Any) -> None:
        self._socket = socket
        self._ids = itertools.count(1)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        await self._socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:  # events interleave with answers: skip them
            message = json.loads(await asyncio.wait_for(self._socket.recv(), 30))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        answer = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in answer:
            raise RuntimeError(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    async def goto(self, url: str) -> None:
        await self.send("Page.enable")
        await self.send("Page.navigate", url=url)
        await eventually(lambda: self.evaluate("document.readyState"), lambda s: s == "complete", timeout=15)

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        _write(path, base64.b64decode(shot["data"]))


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _launch(binary: str, port: int, profile: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--remote-debugging-port={port}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: stopped with every child it started
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


@contextlib.asynccontextmanager
async def chromium_page() -> AsyncIterator[Page]:
    binary = chromium_or_skip()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="couponrush-chromium-") as profile:
        process = _launch(binary, port, profile)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as devtools:

                async def pages() -> list[dict[str, Any]]:
                    try:
                        listed: list[dict[str, Any]] = (await devtools.get("/json/list")).json()
                    except httpx.HTTPError:
                        return []
                    return [t for t in listed if t.get("type") == "page"]

                [target, *_] = await eventually(pages, bool, timeout=30, what="Chromium's DevTools endpoint")
            async with websockets.connect(target["webSocketDebuggerUrl"], max_size=64 * 2**20) as socket:
                yield Page(socket)
        finally:
            await asyncio.to_thread(_stop, process)
