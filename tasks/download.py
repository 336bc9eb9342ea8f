"""Polite, fault-tolerant HTTP downloading of photos, for every web source.

Plain code (requests + tenacity, no Prefect). A :class:`Downloader` holds one
``requests`` session with a connection pool and works through a batch of items with
a bounded thread pool:

* **polite**: at most ``per_host`` requests in flight per host (a semaphore per host,
  shared by every downloader of the process with the same limits, so batches fetched at
  the same time keep to them together; by default ``options.concurrency``), and
  optionally at most ``rate_per_host`` requests per second per host;
* **patient**: connect and read timeouts; retries with exponential backoff and jitter
  for 5xx answers, connection resets, timeouts and truncated bodies; a 429 waits for
  its ``Retry-After`` (capped by ``retry_after_max``); other 4xx are not retried;
* **careful**: each body is streamed to a temporary file beside its destination
  (never held whole in memory), its sha256 computed on the way, its length checked
  against Content-Length, its first bytes checked for an image signature (an HTML
  error page served with status 200 fails as ``not_an_image``), and only then
  renamed into place, atomically;
* **accountable**: one outcome per item (stage ``fetch``) with a precise reason code
  (:data:`REASONS`), the bytes, the number of attempts and the reasons of the
  attempts that were retried.
"""

from __future__ import annotations

import email.utils
import hashlib
import heapq
import itertools
import os
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timezone
from http.cookiejar import CookiePolicy
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import unquote, urlsplit

import requests
from pydantic import BaseModel, ConfigDict, Field
from requests.adapters import HTTPAdapter
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from photo_escape import __version__
from photo_escape.outcomes import PermanentError, Stopwatch, TransientError, outcome
from photo_escape.secrets import redact
from tasks.files import sniff_image

#: the reason codes a fetch can end with (``http_<status>`` for other statuses)
REASONS = {
    "not_found": "404 or 410: the server has no such file",
    "http_403": "the server refuses (forbidden); not retried",
    "http_429": "rate limited, still after the retries (Retry-After honoured)",
    "http_500": "server error (any 5xx is http_<status>), still after the retries",
    "connection_reset": "the connection was reset or dropped, still after the retries",
    "connection_refused": "nothing listens there, still after the retries",
    "connection_error": "another network error (DNS, unreachable), still after the retries",
    "timeout": "no answer within the connect/read timeout, still after the retries",
    "truncated": "fewer bytes arrived than Content-Length promised, still after the retries",
    "not_an_image": "the body is not an image (e.g. an HTML page with status 200)",
    "too_large": "larger than the job's max_bytes",
    "too_many_redirects": "a redirect loop",
    "bad_url": "the URL cannot be fetched (scheme, syntax)",
    "write_error": "the local file could not be written",
}

CHUNK = 256 * 1024


class HttpSettings(BaseModel):
    """How politely and patiently a web source downloads (``source.http`` in a job)."""

    model_config = ConfigDict(extra="forbid")
    per_host: int | None = Field(None, ge=1, le=256, description="requests in flight at once per host, all the "
                                 "batches of a process together; default: options.concurrency")
    rate_per_host: float | None = Field(None, gt=0, description="at most this many requests per second per host")
    connect_timeout: float = Field(10.0, gt=0, description="seconds to wait for a connection")
    read_timeout: float = Field(60.0, gt=0, description="seconds to wait for the next bytes of an answer")
    retry_after_max: float = Field(120.0, ge=0, description="longest Retry-After wait honoured (seconds)")
    file_timeout: float = Field(900.0, gt=0, description="longest time one file may take to arrive (seconds): "
                                                         "a server trickling bytes is a timeout too")
    backoff_max: float = Field(60.0, ge=0, description="longest wait between two retries (seconds)")
    user_agent: str = Field(f"photo-escape/{__version__}",
                            description="User-Agent header")
    headers: dict[str, str] = Field(default_factory=dict, description="extra request headers")


# -- file names -------------------------------------------------------------------------
_UNSAFE = re.compile(r"[^A-Za-z0-9._~+-]+")
MAX_NAME = 120


def url_key(url: str, n: int = 10) -> str:
    """A short stable hash of a URL (tells apart files whose names would collide)."""
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()[:n]


def safe_name(url: str, default_ext: str = ".jpg") -> str:
    """A file name for a remote URL that can never leave its folder or hide.

    The URL's last path segment, percent-decoded, with anything but letters, digits
    and ``. _ ~ + -`` turned into ``_`` and no leading dots or dashes (so no ``..``,
    no ``/``, no absolute path, no hidden file). When that changed the name, or the
    URL has a query (``?id=7`` pages all end in the same segment), or there is no
    name at all, a short hash of the whole URL is appended so two different URLs
    can never end up with the same name.
    """
    parts = urlsplit(url)
    raw = unquote(parts.path.rsplit("/", 1)[-1])
    clean = _UNSAFE.sub("_", raw).lstrip(".-~_")
    stem, ext = os.path.splitext(clean)
    if not re.fullmatch(r"\.[A-Za-z0-9]{1,5}", ext or ""):
        stem, ext = clean.replace(".", "_"), default_ext
    stem = stem.rstrip(".") or "image"
    name = f"{stem}{ext}"
    if name != raw or parts.query or len(name) > MAX_NAME:
        name = f"{stem[:MAX_NAME - 20]}-{url_key(url)}{ext}"
    return name


class NameBook:
    """Names handed out in one listing: a second URL that would reuse a name
    (case-insensitively, for case-blind file systems) gets its hash appended."""

    def __init__(self) -> None:
        self._owner: dict[str, str] = {}

    def name_for(self, url: str, default_ext: str = ".jpg") -> str:
        name = safe_name(url, default_ext)
        owner = self._owner.setdefault(name.lower(), url)
        if owner != url:
            stem, ext = os.path.splitext(name)
            name = f"{stem[:MAX_NAME - 20]}-{url_key(url)}{ext}"
            self._owner.setdefault(name.lower(), url)
        return name


# -- what an HTTP answer means ----------------------------------------------------------
def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), never
    negative; None when there is none or it cannot be read. The one reading of the
    header for every HTTP client here (downloads and uploads)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" marks a date in UTC with no zone of its own
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def status_error(resp: requests.Response) -> Exception | None:
    """The error an HTTP status means for a download (None when it is a success)."""
    code = resp.status_code
    if 200 <= code < 300:
        return None
    if code in (404, 410):
        return PermanentError("not_found", f"HTTP {code}")
    if code == 429:
        return TransientError("http_429", "HTTP 429", retry_after=parse_retry_after(resp.headers.get("Retry-After")))
    if code >= 500 or code == 408:
        return TransientError(f"http_{code}", f"HTTP {code}")
    return PermanentError(f"http_{code}", f"HTTP {code}")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))
        for nxt in (e.__cause__, e.__context__, getattr(e, "reason", None)):
            if isinstance(nxt, BaseException):
                todo.append(nxt)


def network_reason(exc: BaseException) -> str:
    """A short reason code for a requests/urllib3 network exception."""
    import http.client

    import urllib3.exceptions as u3

    if isinstance(exc, requests.exceptions.TooManyRedirects):
        return "too_many_redirects"
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                        requests.exceptions.InvalidSchema)):
        return "bad_url"
    chain = list(_chain(exc))
    if any(isinstance(e, (u3.IncompleteRead, http.client.IncompleteRead)) for e in chain):
        return "truncated"
    if any(isinstance(e, ConnectionRefusedError) for e in chain):  # before timeouts: urllib3's
        return "connection_refused"  # NewConnectionError is a ConnectTimeoutError subclass
    if any(isinstance(e, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError,
                          http.client.RemoteDisconnected)) for e in chain):
        return "connection_reset"
    if any(isinstance(e, (requests.exceptions.Timeout, u3.TimeoutError, TimeoutError)) for e in chain):
        return "timeout"
    text = " ".join(str(e) for e in chain).lower()
    if "timed out" in text:
        return "timeout"
    if "reset" in text or "aborted" in text or "broken" in text:
        return "connection_reset"
    return "connection_error"


# -- politeness -------------------------------------------------------------------------
class _Slots:
    """A host's request slots, handed out lowest ``priority`` first (then first come): the
    batch a flow started first keeps every slot it can use, and a later batch takes
    only what the first leaves idle. So batches finish their downloads one after another
    (the first is examined while the next downloads) instead of all together."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()
        self._waiting: list[tuple[float, int, Any]] = []
        self._seq = itertools.count()

    def acquire(self, priority: float) -> None:
        with self._lock:
            if self.used < self.limit and not self._waiting:
                self.used += 1
                return
            baton = threading.Lock()
            baton.acquire()
            heapq.heappush(self._waiting, (priority, next(self._seq), baton))
        baton.acquire()  # released by release(): the slot passes straight to us

    def release(self) -> None:
        with self._lock:
            if self._waiting:
                heapq.heappop(self._waiting)[2].release()
            else:
                self.used -= 1


class HostGate:
    """Per-host limits: slots for requests in flight and a minimum spacing in time."""

    def __init__(self, per_host: int, rate_per_host: float | None) -> None:
        self.per_host = per_host
        self.interval = 1.0 / rate_per_host if rate_per_host else 0.0
        self._lock = threading.Lock()
        self._slots: dict[str, _Slots] = {}
        self._next: dict[str, float] = {}

    @contextmanager
    def slot(self, url: str, priority: float = 0) -> Iterator[None]:
        """Hold one of the host's request slots, after waiting for its rate allowance.
        Lower ``priority`` goes first: pages (0, the default) before any batch's files."""
        host = urlsplit(url).netloc.lower()
        with self._lock:
            slots = self._slots.get(host)
            if slots is None:
                slots = self._slots[host] = _Slots(self.per_host)
        slots.acquire(priority)
        try:
            if self.interval:
                with self._lock:
                    now = time.monotonic()
                    at = max(now, self._next.get(host, now))
                    self._next[host] = at + self.interval
                if at > now:
                    time.sleep(at - now)
            yield
        finally:
            slots.release()


_GATES: dict[tuple[int, float | None], HostGate] = {}
_MADE = itertools.count(1)  # downloaders in the order they were made (their gate priority)
_GATES_LOCK = threading.Lock()


def shared_gate(per_host: int, rate_per_host: float | None) -> HostGate:
    """The process's gate for these limits. A flow fetches several batches at once, each
    with its own downloader: sharing the gate keeps the host at ``per_host`` requests in
    flight in all (not ``per_host`` per batch), and lets one batch use every slot alone."""
    with _GATES_LOCK:
        return _GATES.setdefault((per_host, rate_per_host), HostGate(per_host, rate_per_host))


class _NoCookies(CookiePolicy):
    """A cookie policy that neither stores nor sends cookies (for CDNs)."""

    netscape = True
    rfc2965 = hide_cookie2 = False

    def set_ok(self, cookie: Any, request: Any) -> bool:
        return False

    def return_ok(self, cookie: Any, request: Any) -> bool:
        return False

    def domain_return_ok(self, domain: str, request: Any) -> bool:
        return False

    def path_return_ok(self, path: str, request: Any) -> bool:
        return False


def make_session(settings: HttpSettings, *, pool: int = 16, cookies: bool = True) -> requests.Session:
    """A requests session with a connection pool sized for ``pool`` threads."""
    s = requests.Session()
    adapter = HTTPAdapter(pool_connections=max(4, pool), pool_maxsize=max(4, pool), max_retries=0)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    s.headers["User-Agent"] = settings.user_agent
    s.headers.update(settings.headers)
    if not cookies:
        s.cookies.set_policy(_NoCookies())
    return s


@dataclass
class Fetched:
    """What one successful download produced."""

    path: Path
    sha256: str
    bytes: int
    format: str
    content_type: str | None
    status: int
    attempts: int = 1
    retried: list[str] = field(default_factory=list)


class Downloader:
    """Downloads files politely and patiently; see the module docstring.

    ``retries`` and ``backoff_seconds`` come from the job's options (tiny in tests);
    ``sleep`` is the function used to wait between attempts.
    """

    def __init__(
        self,
        settings: HttpSettings | None = None,
        *,
        concurrency: int = 8,
        retries: int = 3,
        backoff_seconds: float = 0.5,
        max_bytes: int = 2_000_000_000,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings or HttpSettings()
        self.concurrency = concurrency
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.max_bytes = max_bytes
        self.session = session or make_session(self.settings, pool=concurrency, cookies=False)
        self.gate = shared_gate(self.settings.per_host or concurrency, self.settings.rate_per_host)
        #: this downloader's files wait behind those of downloaders made before it (a flow
        #: makes one per batch, so the earlier batch downloads first; see _Slots)
        self.priority = next(_MADE)
        self.sleep = sleep
        self._expo = wait_exponential_jitter(multiplier=backoff_seconds, max=self.settings.backoff_max,
                                             jitter=backoff_seconds)

    @classmethod
    def from_options(cls, settings: HttpSettings | None, options: Any, **kw: Any) -> "Downloader":
        """A downloader configured from a job's ``options`` (or defaults when None)."""
        if options is not None:
            for name in ("concurrency", "retries", "backoff_seconds", "max_bytes"):
                if hasattr(options, name):
                    kw.setdefault(name, getattr(options, name))
        return cls(settings, **kw)

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.settings.connect_timeout, self.settings.read_timeout)

    # -- retrying -----------------------------------------------------------------------
    def _wait(self, state: RetryCallState) -> float:
        """Retry-After when the server said so (capped), else exponential backoff with jitter."""
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return min(retry_after, self.settings.retry_after_max)
        return self._expo(state)

    def retrying(self, call: Callable[[], Any], retried: list[str]) -> Any:
        """Run ``call`` until it succeeds, raises a permanent error, or the retries run out;
        the reason of each failed attempt that was retried is appended to ``retried``."""

        def note(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            retried.append(getattr(exc, "reason", type(exc).__name__))

        for attempt in Retrying(stop=stop_after_attempt(self.retries + 1), wait=self._wait,
                                retry=retry_if_exception_type(TransientError), reraise=True,
                                sleep=self.sleep, before_sleep=note):
            with attempt:
                return call()

    # -- one request --------------------------------------------------------------------
    def get(self, url: str, *, session: requests.Session | None = None, stream: bool = False,
            gated: bool = True, **kw: Any) -> requests.Response:
        """One GET through the host gate (unless the caller holds a slot already);
        network errors become Transient/PermanentError."""
        s = session or self.session
        try:
            if gated:
                with self.gate.slot(url):
                    resp = s.get(url, timeout=self.timeout, stream=stream, **kw)
            else:
                resp = s.get(url, timeout=self.timeout, stream=stream, **kw)
        except requests.exceptions.RequestException as exc:
            reason = network_reason(exc)
            if reason in ("bad_url", "too_many_redirects"):
                raise PermanentError(reason, str(exc)) from None
            raise TransientError(reason, str(exc)) from None
        return resp

    def get_page(self, url: str, *, session: requests.Session | None = None,
                 retried: list[str] | None = None) -> requests.Response:
        """A whole (small) page, retried like a download; raises on a non-2xx status."""

        def once() -> requests.Response:
            resp = self.get(url, session=session)
            err = status_error(resp)
            if err is not None:
                raise err
            return resp

        return self.retrying(once, [] if retried is None else retried)

    def _stream_to(self, resp: requests.Response, dest: Path) -> Fetched:
        """Stream an answer's body to ``dest`` via a temporary file; validate; rename."""
        expected = resp.headers.get("Content-Length")
        expected_n = int(expected) if expected and expected.isdigit() else None
        if resp.headers.get("Content-Encoding", "identity").lower() not in ("", "identity"):
            expected_n = None  # the length is the compressed one; urllib3 checks that one itself
        elif expected_n is not None and expected_n > self.max_bytes:
            raise PermanentError("too_large", f"{expected_n} bytes announced")
        deadline = time.monotonic() + self.settings.file_timeout
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
        digest = hashlib.sha256()
        size = 0
        head = b""
        fmt: str | None = None
        try:
            try:
                fh = open(tmp, "wb")
            except OSError as exc:
                raise PermanentError("write_error", exc.strerror or str(exc)) from None
            with fh:
                try:
                    for chunk in resp.iter_content(CHUNK):
                        if fmt is None:
                            head += chunk
                            if len(head) >= 16:
                                fmt = self._check_head(head, resp)
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise PermanentError("too_large", f"over {self.max_bytes} bytes")
                        if time.monotonic() > deadline:
                            raise TransientError("timeout", f"still arriving after {self.settings.file_timeout} s")
                        digest.update(chunk)
                        fh.write(chunk)
                except requests.exceptions.RequestException as exc:
                    raise TransientError(network_reason(exc), str(exc)) from None
            if expected_n is not None and size != expected_n:
                raise TransientError("truncated", f"{size} of {expected_n} bytes")
            if fmt is None:
                fmt = self._check_head(head, resp)
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                tmp.unlink(missing_ok=True)
        return Fetched(dest, digest.hexdigest(), size, fmt, resp.headers.get("Content-Type"), resp.status_code)

    @staticmethod
    def _check_head(head: bytes, resp: requests.Response) -> str:
        fmt = sniff_image(head)
        if fmt is None:
            ctype = resp.headers.get("Content-Type", "?")
            raise PermanentError("not_an_image", f"{ctype}, starts with {head[:16]!r}")
        return fmt

    def download(self, url: str, dest: Path, *, session: requests.Session | None = None) -> Fetched:
        """Download ``url`` to ``dest`` with retries; raises Permanent/TransientError at the end."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        retried: list[str] = []

        def once() -> Fetched:
            with self.gate.slot(url, self.priority):  # held while the body streams, not just for the headers
                resp = self.get(url, session=session, stream=True, gated=False)
                with resp:
                    err = status_error(resp)
                    if err is not None:
                        raise err
                    return self._stream_to(resp, dest)

        try:
            got = self.retrying(once, retried)
        except (PermanentError, TransientError) as exc:
            exc.attempts = len(retried) + 1  # type: ignore[attr-defined]
            exc.retried = retried  # type: ignore[attr-defined]
            raise
        got.attempts = len(retried) + 1
        got.retried = retried
        return got

    # -- a batch ------------------------------------------------------------------------
    def fetch_item(self, item: dict, dest_dir: Path, *, url: str | None = None,
                   session: requests.Session | None = None, missing: str = "failed") -> dict:
        """Download one item to ``dest_dir/<item name>``; its ``fetch`` outcome.

        ``missing`` is the outcome of a 404 (``failed`` for a listed gallery image,
        ``skipped`` for a numbered URL that was never there).
        """
        sw = Stopwatch()
        url = url or item.get("url") or item["source_ref"]
        name = str(item.get("name") or "")
        if not name or name != os.path.basename(name) or name.startswith(".") or "\\" in name:
            name = safe_name(url)  # never trust a name to stay inside dest_dir
        dest = Path(dest_dir) / name
        try:
            got = self.download(url, dest, session=session)
        except (PermanentError, TransientError) as exc:
            reason = exc.reason
            result = missing if reason == "not_found" else "failed"
            attempts = getattr(exc, "attempts", 1)
            detail = {"url": redact(url), "error": redact(str(exc))[:300], "attempts": attempts,
                      "retried": getattr(exc, "retried", [])}
            return outcome(item["item_id"], "fetch", result, reason, detail=detail,
                           duration_ms=sw.ms, attempt=attempts)
        new = dict(item, local_path=str(got.path), sha256=got.sha256, bytes=got.bytes, format=got.format)
        detail = {"url": redact(url), "attempts": got.attempts, "retried": got.retried,
                  "content_type": got.content_type, "format": got.format}
        out = outcome(item["item_id"], "fetch", "ok", "recovered" if got.retried else None, detail=detail,
                      bytes=got.bytes, duration_ms=sw.ms, attempt=got.attempts, sha256=got.sha256)
        out["item"] = new
        return out

    def fetch_items(self, items: list[dict], dest_dir: Path, *,
                    session_for: Callable[[str], requests.Session] | None = None,
                    url_of: Callable[[dict], str] | None = None, missing: str = "failed") -> list[dict]:
        """Fetch a batch with a bounded thread pool; outcomes in the items' order."""
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)

        def one(item: dict) -> dict:
            url = url_of(item) if url_of else (item.get("url") or item["source_ref"])
            session = session_for(url) if session_for else None
            try:
                return self.fetch_item(item, dest_dir, url=url, session=session, missing=missing)
            except Exception as exc:  # a bug must not lose the batch: record it
                return outcome(item["item_id"], "fetch", "failed", "error",
                               detail={"url": redact(url), "error": redact(f"{type(exc).__name__}: {exc}")[:300]})

        if len(items) <= 1 or self.concurrency <= 1:
            return [one(it) for it in items]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items)),
                                thread_name_prefix="fetch") as pool:
            return list(pool.map(one, items))

    def close(self) -> None:
        self.session.close()

