"""Headless Chromium driven over the DevTools protocol (CDP), offline.

Debian's ``chromium`` (``make system-packages``) is started with ``--headless=new`` and
``--remote-debugging-port=0``; the port it picked is read from ``DevToolsActivePort`` in its own
temporary ``--user-data-dir``, and one page target is driven through a websocket
(``websocket-client``, pinned in the ``dev`` extra). Nothing is downloaded: no browser, no driver.

HTTP basic auth is answered the way a person at the login prompt would: ``Fetch.enable`` with
``handleAuthRequests`` makes the browser pause on each server challenge (``Fetch.authRequired``),
and the page is told to cancel it (no credentials) or to provide the user name and password. Every
challenge is recorded in ``Browser.challenges``, every document response in ``Browser.documents``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websocket

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


class BrowserError(Exception):
    """Chromium did not start, a CDP command failed or a page did not do what was waited for."""


def chromium_binary() -> str | None:
    """``$CHROMIUM`` or the first Chromium on PATH (Debian's package installs ``/usr/bin/chromium``)."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


@dataclass
class Challenge:
    """One ``Fetch.authRequired``: the server asked for credentials."""

    url: str
    scheme: str
    realm: str
    source: str
    answer: str  # "CancelAuth" or "ProvideCredentials"


@dataclass
class Document:
    """The response to one top-level navigation (``Network.responseReceived`` of type Document)."""

    url: str
    status: int
    headers: dict[str, str]


@dataclass
class Browser:
    """One headless Chromium with one page; ``close()`` kills it and removes its profile."""

    width: int = 1280
    height: int = 900
    timeout: float = 30.0
    challenges: list[Challenge] = field(default_factory=list)
    documents: list[Document] = field(default_factory=list)
    console: list[str] = field(default_factory=list)  # console errors and uncaught exceptions
    credentials: tuple[str, str] | None = None  # what to answer a basic-auth challenge with
    _proc: subprocess.Popen[bytes] | None = None
    _profile: Path | None = None
    _ws: websocket.WebSocket | None = None
    _next_id: int = 0
    _replies: dict[int, dict[str, Any]] = field(default_factory=dict)
    _handlers: dict[str, Callable[[dict[str, Any]], None]] = field(default_factory=dict)
    _answered: set[str] = field(default_factory=set)  # URLs given the credentials, awaiting a response

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> Browser:
        binary = chromium_binary()
        if binary is None:
            raise BrowserError("no chromium on PATH: `make system-packages` installs Debian's chromium")
        self._profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
        args = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--user-data-dir={self._profile}", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
                "--disable-background-networking", "--disable-component-update", "--metrics-recording-only",
                "--hide-scrollbars", "--mute-audio", "--password-store=basic",
                f"--window-size={self.width},{self.height}", "about:blank"]
        log = (self._profile / "chromium.log").open("wb")
        # A session of its own: close() kills the whole process group (renderers, GPU, zygote).
        self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        port_file = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise BrowserError(f"chromium did not open its DevTools port:\n{self.log_tail()}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            pages = [t for t in json.load(resp) if t.get("type") == "page"]
        if not pages:
            raise BrowserError(f"chromium has no page target:\n{self.log_tail()}")
        # No Origin header: Chromium refuses websocket origins it was not told to allow.
        self._ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=self.timeout,
                                               suppress_origin=True)
        self._handlers = {"Fetch.requestPaused": self._on_request_paused,
                          "Fetch.authRequired": self._on_auth_required,
                          "Network.responseReceived": self._on_response,
                          "Runtime.exceptionThrown": self._on_exception,
                          "Runtime.consoleAPICalled": self._on_console}
        for domain in ("Page", "Network", "Runtime"):
            self.call(f"{domain}.enable")
        self.call("Fetch.enable", patterns=[{"urlPattern": "*", "requestStage": "Request"}], handleAuthRequests=True)
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                  deviceScaleFactor=1, mobile=False)
        return self

    def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(OSError, websocket.WebSocketException):
                self._ws.close()
            self._ws = None
        if self._proc is not None:
            if self._proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=30)
            self._proc = None
        if self._profile is not None:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None

    def __enter__(self) -> Browser:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_tail(self, lines: int = 30) -> str:
        log = self._profile / "chromium.log" if self._profile else None
        if log is None or not log.is_file():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    # --- the protocol -------------------------------------------------------------------------

    def _post(self, method: str, **params: Any) -> int:
        if self._ws is None:
            raise BrowserError("the browser is not started")
        self._next_id += 1
        self._ws.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        return self._next_id

    def _pump(self, timeout: float) -> None:
        """Read one message: a reply is stored, an event goes to its handler (which only posts)."""
        assert self._ws is not None
        self._ws.settimeout(max(timeout, 0.01))
        try:
            message = json.loads(self._ws.recv())
        except websocket.WebSocketTimeoutException:
            return
        if "id" in message:
            self._replies[message["id"]] = message
        elif (handler := self._handlers.get(message.get("method", ""))) is not None:
            handler(message.get("params") or {})

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send a command and wait for its result, handling the events that arrive meanwhile."""
        sent = self._post(method, **params)
        deadline = time.monotonic() + self.timeout
        while sent not in self._replies:
            if time.monotonic() > deadline:
                raise BrowserError(f"{method}: no reply after {self.timeout:.0f}s")
            self._pump(deadline - time.monotonic())
        reply = self._replies.pop(sent)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return dict(reply.get("result") or {})

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """Keep the event loop running until ``predicate()`` is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout:.0f}s waiting for {what}")
            self._pump(0.2)

    # --- event handlers: answer paused requests and auth challenges at once ----------------------

    def _on_request_paused(self, params: dict[str, Any]) -> None:
        self._post("Fetch.continueRequest", requestId=params["requestId"])

    def _on_auth_required(self, params: dict[str, Any]) -> None:
        challenge, url = params.get("authChallenge") or {}, params["request"]["url"]
        if self.credentials is None or url in self._answered:
            # No credentials, or these were just refused: cancel, as a person would after one
            # wrong try (Chromium would otherwise retry until ERR_TOO_MANY_RETRIES).
            answer: dict[str, Any] = {"response": "CancelAuth"}
        else:
            user, password = self.credentials
            answer = {"response": "ProvideCredentials", "username": user, "password": password}
            self._answered.add(url)
        self.challenges.append(Challenge(url=url, scheme=challenge.get("scheme", ""),
                                         realm=challenge.get("realm", ""), source=challenge.get("source", ""),
                                         answer=answer["response"]))
        self._post("Fetch.continueWithAuth", requestId=params["requestId"], authChallengeResponse=answer)

    def _on_response(self, params: dict[str, Any]) -> None:
        response = params["response"]
        self._answered.discard(response["url"])
        if params.get("type") == "Document":
            self.documents.append(Document(url=response["url"], status=int(response["status"]),
                                           headers={k.lower(): v for k, v in response.get("headers", {}).items()}))

    def _on_exception(self, params: dict[str, Any]) -> None:
        details = params.get("exceptionDetails") or {}
        self.console.append(f"exception: {(details.get('exception') or {}).get('description') or details.get('text')}")

    def _on_console(self, params: dict[str, Any]) -> None:
        if params.get("type") in ("error", "assert"):
            texts = [str(arg.get("value", arg.get("description", ""))) for arg in params.get("args") or []]
            self.console.append("console.error: " + " ".join(texts))

    # --- what a test does ---------------------------------------------------------------------

    def navigate(self, url: str, timeout: float | None = None) -> Document:
        """Open ``url`` and wait for its load event; return the document's response."""
        seen = len(self.documents)
        loaded: list[bool] = []
        self._handlers["Page.loadEventFired"] = lambda _params: loaded.append(True)
        try:
            result = self.call("Page.navigate", url=url)
            if result.get("errorText"):
                raise BrowserError(f"navigate {url}: {result['errorText']}")
            self.wait_for(lambda: loaded and len(self.documents) > seen, timeout or self.timeout, f"{url} to load")
        finally:
            self._handlers.pop("Page.loadEventFired", None)
        return self.documents[-1]

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable; promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}…: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        """A PNG of the viewport, written to ``path``."""
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
