"""Flickr client helpers for the hi-res replacement: ``flickrapi`` unmodified, made patient.

* :func:`make_api` builds a ``flickrapi.FlickrAPI`` (``format='parsed-json'``) with an
  OAuth 1.0a access token; its ``REST_URL`` / ``REPLACE_URL`` (class attributes in
  ``flickrapi.core.FlickrAPI``) are overridden on the instance when the job points at
  another host (the sandbox stand-in).
* :class:`CallBudget` keeps Flickr's limit of 3,600 calls per hour per API key
  *across batches and runs*: a token bucket whose state lives in a small JSON file
  locked with ``fcntl`` (threads, batches and processes on one machine share it).
* :class:`FlickrClient` spends one token per HTTP call and retries only what Flickr
  says is transient: error 105 (service unavailable), 106 (write failed), HTTP 5xx,
  connection resets and timeouts. Everything else (photo not found, bad
  signature, invalid date...) is raised at once as a :class:`FlickrProblem`.
* :func:`catalogue_link` and :func:`digital_id` pull the catalogue URL out of a
  description and the Digital ID out of a URL or page, with configurable regexes.

Plain code, no Prefect. Secrets are passed in as values (resolved by the caller with
:func:`photo_escape.secrets.resolve`) and never logged.
"""

from __future__ import annotations

import fcntl
import html
import json
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import requests
from pydantic import BaseModel, ConfigDict, Field

from photo_escape.secrets import SecretRef

#: Flickr's documented transient errors (worth a retry); every other code is final.
TRANSIENT_CODES = {105, 106}
REST_URL = "https://api.flickr.com/services/rest/"
REPLACE_URL = "https://up.flickr.com/services/replace/"

#: A catalogue link in a Flickr description: the first http(s) URL on the catalogue's
#: item or album pages (override per job).
DEFAULT_LINK_REGEX = r"""https?://[^\s"'<>]+/(?:item|album)[^\s"'<>]*"""
#: A Digital ID in an image URL or a page: letters, optional '_', 5-8 digits.
DEFAULT_DIGITAL_ID_REGEX = r"(?i)(?<![a-z0-9])([a-z]{1,4}_?\d{5,8})(?=[a-z]?(?:\.(?:jpe?g|png|gif|tiff?)\b|\b))"


#: Flickr's errors that concern the whole account or key, not one photo: a run meeting
#: one stops with one line (96/97 signature, 98 token, 99 permission, 100 API key).
ACCOUNT_CODES = {96: "invalid signature", 97: "missing signature", 98: "invalid auth token",
                 99: "insufficient permissions", 100: "invalid API key"}


class FlickrConnection(BaseModel):
    """Where a Flickr account is, whose photos, and how hard a job may press it: the part of
    a job's Flickr settings every story shares (``source.kind: flickr``, the hi-res story).

    Credentials are references (``{env: VAR}`` / ``{block: NAME}``), resolved where they
    are used. The call budget is a file (``budget_file``) or a Prefect concurrency limit
    (``prefect_rate_limit``): jobs naming the same one share Flickr's hourly allowance."""

    model_config = ConfigDict(extra="forbid")
    api_key: SecretRef = Field(default_factory=lambda: SecretRef(env="FLICKR_API_KEY"))
    api_secret: SecretRef = Field(default_factory=lambda: SecretRef(env="FLICKR_API_SECRET"))
    oauth_token: SecretRef = Field(default_factory=lambda: SecretRef(env="FLICKR_OAUTH_TOKEN"))
    oauth_token_secret: SecretRef = Field(default_factory=lambda: SecretRef(env="FLICKR_OAUTH_TOKEN_SECRET"))
    rest_url: str = Field(REST_URL, description="Flickr's REST endpoint (the sandbox's in the demo)")
    user_id: str = Field("me", description="whose photos: 'me' is the token's account")
    photoset_id: str | None = Field(None, description="only this album's photos (photosets.getPhotos)")
    per_page: int = Field(500, ge=1, le=500, description="photos per listing page")
    calls_per_hour: float = Field(3600, gt=0, description="Flickr's limit per API key, kept across batches and runs")
    burst: int = Field(60, ge=1, description="calls that may go at once after a quiet spell")
    budget_file: Path | None = Field(None, description="where the call budget lives; default <work_dir>/flickr-calls.json")
    prefect_rate_limit: str | None = Field(
        None, description="instead of the file: a Prefect global concurrency limit with slot decay, shared by "
                          "workers on every machine (e.g. `prefect gcl create flickr-api --limit 60 "
                          "--slot-decay-per-second 1`)")
    timeout: float = Field(60.0, gt=0, description="seconds for one REST call")

    def connect(self, budget_path: Path, options: Any = None, *, replace_url: str | None = None,
                budget: Any = None, sleep: Callable[[float], None] | None = None) -> "FlickrClient":
        """A :class:`FlickrClient` for this account (secrets resolved now), pacing its calls by
        ``budget``, else the Prefect limit named, else the file bucket at ``budget_file`` or
        ``budget_path``; retries as the job's ``options`` say."""
        from photo_escape.secrets import resolve

        api = make_api(resolve(self.api_key), resolve(self.api_secret), resolve(self.oauth_token),
                       resolve(self.oauth_token_secret), rest_url=self.rest_url, replace_url=replace_url,
                       timeout=self.timeout)
        if budget is None:
            budget = (PrefectRateLimit(self.prefect_rate_limit) if self.prefect_rate_limit
                      else CallBudget(self.calls_per_hour, burst=self.burst,
                                      state=Path(self.budget_file).expanduser() if self.budget_file else budget_path))
        return FlickrClient(api, budget, retries=int(getattr(options, "retries", 3)),
                            backoff_seconds=float(getattr(options, "backoff_seconds", 0.5)),
                            sleep=sleep or time.sleep)


class PrefectRateLimit:
    """A call budget kept by the Prefect server: a global concurrency limit with slot
    decay, so batches on different machines (Dask workers) share Flickr's 3,600 calls
    an hour. Same ``take()`` as :class:`CallBudget`. (Prefect is imported when used.)"""

    def __init__(self, name: str) -> None:
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        try:
            with get_client(sync_client=True) as client:
                limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            raise ValueError(
                f"there is no Prefect concurrency limit named {name!r}; create it with "
                f"`prefect gcl create {name} --limit 60 --slot-decay-per-second 1` (3,600 calls an hour)") from None
        if not limit.slot_decay_per_second:
            raise ValueError(f"the Prefect concurrency limit {name!r} has no slot decay: it cannot pace calls")
        self.name = name
        self.waited = 0.0

    def take(self) -> float:
        from prefect.concurrency.sync import rate_limit

        start = time.monotonic()
        rate_limit(self.name, occupy=1, strict=True)
        waited = time.monotonic() - start
        self.waited += waited
        return waited


class FlickrProblem(Exception):
    """A Flickr call that did not work: ``reason`` is the ledger's code, ``code`` Flickr's."""

    def __init__(self, reason: str, message: str = "", *, code: int | None = None, status: int | None = None,
                 transient: bool = False, attempts: int = 1) -> None:
        super().__init__(message or reason)
        self.reason = reason
        self.code = code
        self.status = status
        self.transient = transient
        self.attempts = attempts


def make_api(api_key: str, api_secret: str, token: str, token_secret: str, *, rest_url: str | None = None,
             replace_url: str | None = None, timeout: float = 60.0) -> Any:
    """A ``flickrapi.FlickrAPI`` answering parsed JSON, authorised with an OAuth access token
    (write permission, needed by setDates and replace), pointed at ``rest_url``/``replace_url``."""
    import flickrapi

    access = flickrapi.auth.FlickrAccessToken(str(token), str(token_secret), "write")
    api = flickrapi.FlickrAPI(str(api_key), str(api_secret), token=access, format="parsed-json",
                              store_token=False, timeout=timeout)
    if rest_url:
        api.REST_URL = rest_url
    if replace_url:
        api.REPLACE_URL = replace_url
    return api


# -- the call budget ----------------------------------------------------------------------------
class CallBudget:
    """A token bucket of ``per_hour`` calls (at most ``burst`` at once), persisted in ``state``.

    No hour ever sees more than ``per_hour`` calls: the bucket refills at
    ``per_hour - burst`` an hour, so a full burst plus an hour's refill is exactly the
    allowance (``burst`` is at most half of it). ``take()`` blocks until a call may be made. The bucket's level and time are kept
    in a JSON file under an exclusive ``fcntl`` lock, so every batch (and every later
    run) of a deployment draws from the same hour's allowance; without a file the
    bucket lives in memory. ``clock``/``sleep`` are injectable for tests.
    """

    def __init__(self, per_hour: float = 3600, *, burst: int = 60, state: str | Path | None = None,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> None:
        if per_hour <= 0:
            raise ValueError("per_hour must be positive")
        self.per_hour = per_hour
        self.burst = max(1, min(int(burst), int(per_hour // 2)))
        self.rate = max(per_hour - self.burst, per_hour / 2) / 3600.0  # tokens per second
        self.state = Path(state) if state else None
        self.clock = clock
        self.sleep = sleep
        self._lock = threading.Lock()
        self._memory = {"tokens": float(self.burst), "at": clock()}
        self.waited = 0.0  # seconds spent waiting, for the ledger
        if self.state:
            self.state.parent.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _locked(self) -> Iterator[dict]:
        with self._lock:
            if self.state is None:
                yield self._memory
                return
            with open(self.state, "a+") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    fh.seek(0)
                    text = fh.read()
                    try:
                        data = json.loads(text) if text.strip() else {}
                    except ValueError:
                        data = {}
                    data.setdefault("tokens", float(self.burst))
                    data.setdefault("at", self.clock())
                    yield data
                    fh.seek(0)
                    fh.truncate()
                    fh.write(json.dumps({"tokens": data["tokens"], "at": data["at"],
                                         "per_hour": self.per_hour, "burst": self.burst}))
                    fh.flush()
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)

    def take(self) -> float:
        """Spend one call; returns how long it waited for it."""
        waited = 0.0
        while True:
            with self._locked() as b:
                now = self.clock()
                b["tokens"] = min(float(self.burst), b["tokens"] + max(0.0, now - b["at"]) * self.rate)
                b["at"] = now
                if b["tokens"] >= 1.0 - 1e-9:  # a hair under 1 by rounding is a whole token
                    b["tokens"] -= 1.0
                    self.waited += waited
                    return waited
                pause = (1.0 - b["tokens"]) / self.rate
            pause = min(pause, 60.0)
            self.sleep(pause)
            waited += pause


# -- classifying failures -------------------------------------------------------------------------
_STATUS = re.compile(r"Status code (\d{3}) received")


def classify(exc: BaseException) -> FlickrProblem:
    """The :class:`FlickrProblem` for an exception raised by flickrapi or requests."""
    import flickrapi

    if isinstance(exc, FlickrProblem):
        return exc
    if isinstance(exc, flickrapi.exceptions.FlickrError):
        code = getattr(exc, "code", None)
        m = _STATUS.search(str(exc))
        if m:
            status = int(m.group(1))
            return FlickrProblem(f"http_{status}", str(exc), status=status, transient=status >= 500 or status == 429)
        if code in TRANSIENT_CODES:
            return FlickrProblem(f"flickr_{code}", str(exc), code=code, transient=True)
        return FlickrProblem(f"flickr_{code}" if code is not None else "flickr_error", str(exc), code=code)
    if isinstance(exc, requests.exceptions.Timeout):
        return FlickrProblem("timeout", str(exc), transient=True)
    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        return FlickrProblem("connection_error", str(exc), transient=True)
    if isinstance(exc, (ValueError, KeyError)):  # an answer that is not Flickr's JSON/XML
        return FlickrProblem("bad_answer", f"{type(exc).__name__}: {exc}", transient=True)
    return FlickrProblem("flickr_error", f"{type(exc).__name__}: {exc}")


@dataclass
class CallStats:
    """What a client did: calls made, retries and their reasons, seconds waited."""

    calls: int = 0
    retries: int = 0
    retried: list[str] = field(default_factory=list)


class FlickrClient:
    """The Flickr methods the hi-res flow needs, each retried on transient errors only."""

    def __init__(self, api: Any, budget: CallBudget | None = None, *, retries: int = 3,
                 backoff_seconds: float = 0.5, backoff_max: float = 60.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.api = api
        self.budget = budget or CallBudget()
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.backoff_max = backoff_max
        self.sleep = sleep
        self.stats = CallStats()
        self._lock = threading.Lock()

    # -- the retry loop ---------------------------------------------------------------------
    def _retrying(self, call: Callable[[], Any], before_retry: Callable[[], Any] | None = None) -> Any:
        """Run ``call`` (one budgeted HTTP call) until it works or fails for good.

        ``before_retry`` runs before each retry; if it returns something other than
        None, that is the result (used by replace: "did the timed-out upload land?").
        """
        from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

        attempts = 0
        retrying = Retrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_exponential_jitter(multiplier=self.backoff_seconds, max=self.backoff_max,
                                         jitter=self.backoff_seconds),
            retry=retry_if_exception(lambda e: isinstance(e, FlickrProblem) and e.transient),
            reraise=True, sleep=self.sleep)
        try:
            for attempt in retrying:
                with attempt:
                    attempts += 1
                    if attempts > 1:
                        with self._lock:
                            self.stats.retries += 1
                        if before_retry is not None:
                            done = before_retry()
                            if done is not None:
                                return done
                    self.budget.take()
                    with self._lock:
                        self.stats.calls += 1
                    try:
                        return call()
                    except Exception as exc:  # noqa: BLE001 - classified, then raised or retried
                        problem = classify(exc)
                        problem.attempts = attempts
                        if problem.transient:
                            with self._lock:
                                self.stats.retried.append(problem.reason)
                        raise problem from None
        except FlickrProblem as exc:
            exc.attempts = attempts
            raise

    def call(self, method: str, **params: Any) -> dict:
        """One REST method (``"photos.getInfo"``), parsed JSON, retried when transient."""
        fn = self.api
        for part in method.split("."):
            fn = getattr(fn, part)
        return self._retrying(lambda: fn(**params))

    # -- the methods ------------------------------------------------------------------------
    def photos_page(self, page: int, *, per_page: int = 500, user_id: str = "me",
                    photoset_id: str | None = None,
                    extras: str = "description,date_taken,o_dims,url_o,original_format") -> dict:
        """One page of the account's photos (or a photoset's): ``{page, pages, total, photos}``."""
        if photoset_id:  # user_id only names the album's owner: "me" is no NSID, so it is left out
            owner = {} if user_id == "me" else {"user_id": user_id}
            rsp = self.call("photosets.getPhotos", photoset_id=photoset_id, extras=extras, page=page,
                            per_page=per_page, **owner)
            body = rsp["photoset"]
        else:
            rsp = self.call("people.getPhotos", user_id=user_id, extras=extras, page=page, per_page=per_page)
            body = rsp["photos"]
        return {"page": int(body["page"]), "pages": int(body["pages"]), "total": int(body["total"]),
                "photos": list(body.get("photo") or [])}

    def date_taken(self, photo_id: str) -> dict:
        """``{taken, granularity, unknown}`` from photos.getInfo (Flickr mixes str and int here)."""
        dates = self.call("photos.getInfo", photo_id=photo_id)["photo"]["dates"]
        return {"taken": dates["taken"], "granularity": int(dates.get("takengranularity") or 0),
                "unknown": int(dates.get("takenunknown") or 0)}

    def set_date_taken(self, photo_id: str, taken: str, granularity: int) -> None:
        self.call("photos.setDates", photo_id=photo_id, date_taken=taken, date_taken_granularity=str(granularity))

    def original_size(self, photo_id: str) -> tuple[int, int] | None:
        """(width, height) of the photo's current original, from photos.getSizes."""
        sizes = self.call("photos.getSizes", photo_id=photo_id)["sizes"]["size"]
        for s in sizes:
            if s.get("label") == "Original":
                return int(s["width"]), int(s["height"])
        return None

    def upload_limit(self) -> int | None:
        """The account's largest photo upload in bytes (people.getLimits), if it says."""
        person = self.call("people.getLimits")["person"]
        value = (person.get("photos") or {}).get("maxupload")
        return int(value) if value not in (None, "", "0", 0) else None

    def replace(self, photo_id: str, path: str | Path, *, timeout: float,
                landed: Callable[[], bool] | None = None) -> dict:
        """Replace a photo's file through the replace endpoint (answers XML: ``format='etree'``).

        Before a retry, ``landed()`` is asked whether the previous attempt reached
        Flickr after all (a timeout does not mean it did not): if so the upload is
        not sent again. Returns ``{photo_id, secret, originalsecret, resent}``.
        """
        path = Path(path)
        resent = {"landed": False}

        def check() -> dict | None:
            if landed is not None and landed():
                resent["landed"] = True
                return {"photo_id": str(photo_id), "secret": None, "originalsecret": None, "landed_earlier": True}
            return None

        def once() -> dict:
            with open(path, "rb") as fh:
                rsp = self.api.replace(str(path), photo_id=str(photo_id), fileobj=fh, format="etree",
                                       timeout=timeout)
            el = rsp.find("photoid")
            return {"photo_id": el.text if el is not None else str(photo_id),
                    "secret": el.get("secret") if el is not None else None,
                    "originalsecret": el.get("originalsecret") if el is not None else None,
                    "landed_earlier": False}

        return self._retrying(once, before_retry=check)


# -- text helpers -------------------------------------------------------------------------------
def catalogue_link(description: str | None, regex: str = DEFAULT_LINK_REGEX) -> str | None:
    """The catalogue URL in a Flickr description (HTML entities undone), or None."""
    if not description:
        return None
    text = html.unescape(description)
    m = re.search(regex, text)
    if not m:
        return None
    return (m.group(1) if m.groups() else m.group(0)).rstrip(".,;)")


def digital_id(text: str | None, regex: str = DEFAULT_DIGITAL_ID_REGEX) -> str | None:
    """The Digital ID in a URL or page text (lower case), or None."""
    if not text:
        return None
    m = re.search(regex, text)
    return (m.group(1) if m.groups() else m.group(0)).lower() if m else None


def upload_timeout(size_bytes: int, *, base_seconds: float = 60.0, min_bytes_per_second: float = 250_000) -> float:
    """Seconds to allow an upload: a base plus the time the file takes at the slowest
    acceptable rate (a 100 MB TIFF at 250 kB/s: 60 + 400 s), so a big file is not cut
    off and a stalled one does not hang for ever."""
    return round(base_seconds + size_bytes / max(min_bytes_per_second, 1.0), 1)


def as_int(value: Any) -> int | None:
    """Flickr's numbers come as int or str ("1024"); None when absent."""
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
