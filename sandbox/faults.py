"""Fault injection for the sandbox web services: the bad days of a real server, on request.

Every sandbox web app (gallery site, its CDN, the numbered host) is wrapped in a
:class:`FaultInjector` holding a :class:`FaultPlan`. A plan is a list of rules, each
"the first N requests whose path matches X get fault F", so a test says exactly
which request fails and how, and the outcome is deterministic even with many
threads downloading at once (``per_path=True`` counts each path on its own).

Faults (``kind``):

``error``           an HTTP error status (``status``, default 500) with a short text body
``rate_limit``      429 Too Many Requests with ``Retry-After: retry_after`` seconds
``reset``           the TCP connection is reset (RST) before any byte of the answer, or
                    after the headers and ``after_bytes`` bytes of the body
``truncate``        the real answer, but only ``keep`` of its body while Content-Length
                    promises all of it; then the connection closes
``html``            status 200 with an HTML error page instead of the image
``slow``            the real answer, after ``delay`` seconds of silence
``trickle``         the real answer, ``chunk`` bytes at a time with ``delay`` seconds between
``expire_session``  the app sees ``environ["sandbox.expire_session"]`` and drops the
                    visitor's session (the gallery then redirects to its login page)

Control it from the test's own process (``server.faults.add(...)``) or over HTTP:
``POST /_admin/faults`` with a JSON rule, ``DELETE /_admin/faults`` to clear,
``GET /_admin/faults`` (rules with their hit counts, the most requests answered at once,
and ``busy_seconds``: requests in flight integrated over time), ``GET /_admin/requests``
(what was asked for, with the fault served and whether cookies came along).
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

KINDS = ("error", "rate_limit", "reset", "truncate", "html", "slow", "trickle", "expire_session")

HTML_ERROR_PAGE = (
    b"<!DOCTYPE html><html><head><title>Service Unavailable</title></head>"
    b"<body><h1>We'll be right back</h1><p>Our servers are busy. Please try again later.</p></body></html>\n"
)


@dataclass
class Fault:
    """One rule: which requests (``match``, ``skip``, ``times``, ``per_path``) get which fault."""

    kind: str
    match: str = ".*"  # regular expression searched in "path?query"
    times: int | None = 1  # how many matching requests get the fault; None: all of them
    skip: int = 0  # let this many matching requests through first
    per_path: bool = False  # count skip/times for each distinct path separately
    status: int = 500  # for "error"
    retry_after: float = 1.0  # for "rate_limit" (seconds)
    delay: float = 2.0  # for "slow" (seconds)
    keep: float = 0.5  # for "truncate": fraction of the body actually sent
    chunk: int = 1024  # for "trickle": bytes per piece
    after_bytes: int = 0  # for "reset": reset mid-body, after this many bytes (0: before answering)
    hits: int = 0
    _seen: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"fault kind must be one of {KINDS}, not {self.kind!r}")
        self._re = re.compile(self.match)

    def claims(self, target: str, path: str) -> bool:
        """Whether this request gets the fault (counts it; call under the plan's lock)."""
        if not self._re.search(target):
            return False
        key = path if self.per_path else ""
        n = self._seen.get(key, 0)
        self._seen[key] = n + 1
        if n < self.skip:
            return False
        if self.times is not None and n >= self.skip + self.times:
            return False
        self.hits += 1
        return True

    def public(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


class FaultPlan:
    """The rules for one server, thread-safe, plus a log of the requests it saw."""

    def __init__(self, rules: Iterable[dict[str, Any]] = ()) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when the last request in flight ends
        self.rules: list[Fault] = []
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.peak_in_flight = 0  # most requests being answered at once (politeness checks)
        self.busy_seconds = 0.0  # requests in flight, integrated over time (/ wall time = mean in flight)
        self._changed = time.monotonic()
        for r in rules:
            self.add(**r)

    def add(self, kind: str, **kw: Any) -> Fault:
        """Add a rule (see :class:`Fault`); rules are tried in the order they were added."""
        fault = Fault(kind=kind, **kw)
        with self._lock:
            self.rules.append(fault)
        return fault

    def clear(self) -> None:
        """Drop every rule and forget the request log."""
        with self._lock:
            self.rules.clear()
            self.requests.clear()
            self.peak_in_flight = self.in_flight
            self._tick()
            self.busy_seconds = 0.0

    def pick(self, target: str, path: str) -> Fault | None:
        """The fault this request gets, if any (the first rule that claims it)."""
        with self._lock:
            for rule in self.rules:
                if rule.claims(target, path):
                    return rule
        return None

    def record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(entry)

    def enter(self) -> None:
        with self._lock:
            self._tick()
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def leave(self) -> None:
        with self._lock:
            self._tick()
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.notify_all()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no request is being answered (a slow answer a client gave up on may
        still be sleeping here); False if one still is after ``timeout`` seconds."""
        with self._lock:
            return self._idle.wait_for(lambda: not self.in_flight, timeout)

    def _tick(self) -> None:
        now = time.monotonic()
        self.busy_seconds += self.in_flight * (now - self._changed)
        self._changed = now

    def count(self, pattern: str = ".*", fault: str | None = None) -> int:
        """How many logged requests matched ``pattern`` (and got ``fault``, if given)."""
        rx = re.compile(pattern)
        with self._lock:
            return sum(1 for r in self.requests if rx.search(r["target"]) and (fault is None or r["fault"] == fault))

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            self._tick()
            return {"rules": [r.public() for r in self.rules], "requests": len(self.requests),
                    "peak_in_flight": self.peak_in_flight, "busy_seconds": round(self.busy_seconds, 6)}


def _reset_connection(environ: dict[str, Any]) -> None:
    """Abort the client's TCP connection with a RST.

    The handler's socket has file objects attached, so ``close()`` would not really
    close it. Instead the connection's descriptor is atomically replaced by an
    socket whose peer is gone (``dup2``): the real connection is closed at once
    with SO_LINGER 0, i.e. reset, and the server then reads end-of-file and stops.
    """
    sock: socket.socket = environ["werkzeug.socket"]
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    placeholder, peer = socket.socketpair()
    peer.close()
    try:
        os.dup2(placeholder.fileno(), sock.fileno())
    finally:
        placeholder.close()


def _whole_body(chunks: Iterable[bytes]) -> bytes:
    """A WSGI app's whole answer body, closing its iterable as WSGI requires."""
    try:
        return b"".join(chunks)
    finally:
        if hasattr(chunks, "close"):
            chunks.close()


class FaultInjector:
    """WSGI middleware: serves the admin endpoints and applies the plan's faults."""

    def __init__(self, app: Callable, plan: FaultPlan | None = None) -> None:
        self.app = app
        self.plan = plan or FaultPlan()

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_admin/"):
            return self._admin(environ, start_response, path)
        query = environ.get("QUERY_STRING", "")
        target = f"{path}?{query}" if query else path
        fault = self.plan.pick(target, path)
        kind = fault.kind if fault else None
        self.plan.record({"target": target, "fault": kind, "cookies": bool(environ.get("HTTP_COOKIE")),
                          "at": time.monotonic()})
        self.plan.enter()
        try:
            if fault is None:
                return self.app(environ, start_response)
            return getattr(self, f"_{kind}")(fault, environ, start_response)
        finally:
            self.plan.leave()

    # -- the faults ---------------------------------------------------------------------
    def _error(self, fault: Fault, environ: dict, start_response: Callable) -> Iterable[bytes]:
        body = f"sandbox fault: HTTP {fault.status}\n".encode()
        start_response(f"{fault.status} Fault", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    def _rate_limit(self, fault: Fault, environ: dict, start_response: Callable) -> Iterable[bytes]:
        body = b"slow down\n"
        ra = fault.retry_after
        value = str(int(ra)) if float(ra).is_integer() else str(ra)
        start_response("429 Too Many Requests", [("Content-Type", "text/plain"), ("Retry-After", value),
                                                 ("Content-Length", str(len(body)))])
        return [body]

    def _reset(self, fault: Fault, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if fault.after_bytes <= 0:
            _reset_connection(environ)
            raise ConnectionResetError("sandbox fault: connection reset")  # werkzeug drops it quietly
        body = _whole_body(self.app(environ, start_response))

        def partial_then_reset() -> Iterable[bytes]:
            yield body[: fault.after_bytes]
            _reset_connection(environ)
            raise ConnectionResetError("sandbox fault: connection reset mid-body")

        return partial_then_reset()

    def _truncate(self, fault: Fault, environ: dict, start_response: Callable) -> Iterable[bytes]:
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list, exc_info: Any = None) -> Callable:
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        body = _whole_body(self.app(environ, capture))
        headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(body))))
        start_response(captured["status"], headers)
        # the server closes every connection after the answer: the client sees fewer bytes
        return [body[: int(len(body) * fault.keep)]]

    def _html(self, fault: Fault, environ: dict, start_response: Callable) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                  ("Content-Length", str(len(HTML_ERROR_PAGE)))])
        return [HTML_ERROR_PAGE]

    def _slow(self, fault: Fault, environ: dict, start_response: Callable) -> Iterable[bytes]:
        time.sleep(fault.delay)
        return self.app(environ, start_response)

    def _trickle(self, fault: Fault, environ: dict, start_response: Callable) -> Iterable[bytes]:
        body = _whole_body(self.app(environ, start_response))

        def pieces() -> Iterable[bytes]:
            for i in range(0, len(body), fault.chunk):
                if i:
                    time.sleep(fault.delay)
                yield body[i:i + fault.chunk]

        return pieces()

    def _expire_session(self, fault: Fault, environ: dict, start_response: Callable) -> Iterable[bytes]:
        environ["sandbox.expire_session"] = True
        return self.app(environ, start_response)

    # -- the admin endpoints ------------------------------------------------------------
    def _admin(self, environ: dict, start_response: Callable, path: str) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        status, payload = "200 OK", None
        if path == "/_admin/faults" and method == "GET":
            payload = self.plan.snapshot()
        elif path == "/_admin/faults" and method == "POST":
            try:
                size = int(environ.get("CONTENT_LENGTH") or 0)
                rule = json.loads(environ["wsgi.input"].read(size) or b"{}")
                payload = self.plan.add(**rule).public()
            except (ValueError, TypeError) as exc:
                status, payload = "400 Bad Request", {"error": str(exc)}
        elif path == "/_admin/faults" and method == "DELETE":
            self.plan.clear()
            payload = {"cleared": True}
        elif path == "/_admin/requests":
            with self.plan._lock:
                payload = {"requests": list(self.plan.requests)}
        else:
            status, payload = "404 Not Found", {"error": "unknown admin endpoint"}
        body = json.dumps(payload).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


class AcceptThenFail:
    """A server that commits and then crashes: the next ``times`` requests it arms for are
    served (the upload is stored), then answered with an error (``mode: error``: the app
    answers its 500) or with the connection reset (``mode: reset``). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.times = 0
        self.mode = "error"

    def arm(self, times: int = 1, mode: str = "error") -> dict[str, Any]:
        with self._lock:
            self.times, self.mode = int(times), mode
            return {"times": self.times, "mode": self.mode}

    def arm_from(self, body: dict[str, Any] | None) -> dict[str, Any]:
        """Arm from an admin request's JSON ``{"times": n, "mode": "error"|"reset"}``."""
        body = body or {}
        return self.arm(int(body.get("times", 1)), body.get("mode", "error"))

    def strike(self, environ: dict[str, Any]) -> bool:
        """Call after committing: True when this answer must be an error; resets the
        connection (and raises) in ``reset`` mode; False when the request was not armed for."""
        with self._lock:
            if self.times <= 0:
                return False
            self.times -= 1
            mode = self.mode
        if mode == "reset":
            _reset_connection(environ)
            raise ConnectionResetError("sandbox: accepted, then the connection was reset")
        return True
