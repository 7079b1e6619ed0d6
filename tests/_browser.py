"""A tiny headless-Chromium driver for the report tests: opens a page over the DevTools protocol, collects
console errors and uncaught exceptions, evaluates JavaScript and takes a full-page screenshot."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
         "--hide-scrollbars", "--remote-debugging-port=0"]


def chromium_binary() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser")) if p), None)


class Browser:
    """``with Browser(tmp) as b: b.open(path)``; ``b.errors`` lists console errors and exceptions."""

    def __init__(self, profile_dir: Path, width: int = 1280, height: int = 900):
        self.profile_dir = Path(profile_dir)
        self.width, self.height = width, height
        self.errors: list[str] = []
        self._ids = itertools.count(1)

    def __enter__(self) -> Browser:
        import websocket

        binary = chromium_binary()
        if binary is None:
            raise RuntimeError("chromium is not installed")
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        port_file = self.profile_dir / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)  # a reused profile keeps the last browser's port
        self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={self.profile_dir}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.time() + 30
            while not (port_file.exists() and port_file.read_text().strip()):
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("chromium did not open its DevTools port")
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:  # noqa: S310 - loopback
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
            for method in ("Runtime.enable", "Log.enable", "Page.enable"):
                self.send(method)
            self.send("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                      deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.close()  # never leave a browser behind
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()
        if getattr(self, "proc", None) is not None and self.proc.poll() is None:
            # chromium runs in its own session: end the whole group (renderer, GPU and utility processes)
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)

    # ------------------------------------------------------------------ protocol
    def _event(self, msg: dict) -> None:
        m, p = msg.get("method"), msg.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.errors.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.errors.append("exception: " + str(d.get("exception", {}).get("description") or d.get("text")))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            self.errors.append(f"log ({e.get('source')}): {e.get('text')} {e.get('url', '')}")

    def send(self, method: str, wait_event: str | None = None, **params: Any) -> dict:
        """Send a command; return its result (or, with ``wait_event``, the params of that event)."""
        i = next(self._ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        result = None
        while True:
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self._event(msg)
                if wait_event and msg["method"] == wait_event and result is not None:
                    return msg.get("params", {})
            elif msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                result = msg.get("result", {})
                if not wait_event:
                    return result

    def eval(self, expression: str) -> Any:
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def open(self, path: Path, ready: str = "document.readyState === 'complete'", timeout: float = 60) -> None:
        self.send("Page.navigate", wait_event="Page.loadEventFired", url=Path(path).resolve().as_uri())
        deadline = time.time() + timeout
        while not self.eval(f"Boolean({ready})"):
            if time.time() > deadline:
                raise TimeoutError(f"page not ready after {timeout} s: {ready}")
            time.sleep(0.2)

    def screenshot(self, out: Path) -> Path:
        """Full-page PNG."""
        h = int(self.eval("Math.ceil(document.documentElement.scrollHeight)"))
        r = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                      clip={"x": 0, "y": 0, "width": self.width, "height": h, "scale": 1})
        Path(out).write_bytes(base64.b64decode(r["data"]))
        return Path(out)
