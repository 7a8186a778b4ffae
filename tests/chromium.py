"""A page as headless Chromium lays it out: open a URL, wait until a script's answer is ready, return it (DevTools protocol).

Tests use it where only a real browser can tell: whether the Prefect UI renders an artifact's markdown, its
image included, and whether its tables fit the page. Those tests are marked ``browser`` and run by ``make ui-check``,
not by ``make test``: CI machines have no Chromium (Debian: ``chromium``).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from docs.screenshots import FLAGS, chromium


def evaluate(url: str, expression: str, width: int = 1400, height: int = 1000, timeout: float = 90.0) -> Any:
    """Load ``url`` in a ``width`` x ``height`` window and evaluate ``expression`` (JavaScript) until it returns other
    than ``null`` (a single-page app renders after load); its JSON value. Fails after ``timeout`` seconds."""
    browser = chromium()
    if browser is None:
        pytest.fail("chromium is not installed: `apt-get install chromium` (Debian), then `make ui-check`")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        process = subprocess.Popen(
            [browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            return asyncio.run(_evaluate(Path(profile) / "DevToolsActivePort", url, expression, time.monotonic() + timeout))
        finally:
            process.terminate()
            process.wait(timeout=30)


async def _evaluate(port_file: Path, url: str, expression: str, deadline: float) -> Any:
    import urllib.request

    import websockets

    while not port_file.is_file() or not port_file.read_text().strip():
        assert time.monotonic() < deadline, "chromium did not open its DevTools port"
        await asyncio.sleep(0.2)
    port = port_file.read_text().split()[0]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
        (page,) = [target for target in json.load(answer) if target["type"] == "page"]
    async with websockets.connect(page["webSocketDebuggerUrl"], max_size=None) as socket:
        ids = iter(range(1, 1_000_000))

        async def call(method: str, **params: Any) -> dict[str, Any]:
            sent = next(ids)
            await socket.send(json.dumps({"id": sent, "method": method, "params": params}))
            while True:
                message = json.loads(await socket.recv())
                if message.get("id") == sent:
                    assert "error" not in message, message
                    return message["result"]

        await call("Page.navigate", url=url)
        while True:
            result = (await call("Runtime.evaluate", expression=expression, returnByValue=True))["result"]
            if result.get("value") is not None:
                return result["value"]
            assert time.monotonic() < deadline, f"{url}: not ready: {expression}"
            await asyncio.sleep(0.5)
