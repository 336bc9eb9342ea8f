"""``destination.kind: http_upload``: a multipart photo upload API (Fluxtream's ``photoUpload`` style).

    destination:
      kind: http_upload
      url: https://fluxtream.org/api/bodytrack/photoUpload?connector_name=fluxtream_capture
      username: anne
      secret_fields: {password: {env: UPLOAD_PASSWORD}}
      file_field: photo
      metadata_field: metadata

Each photo is POSTed with basic auth (``username`` + the ``password`` secret), the file
under ``file_field`` and a JSON form field ``metadata_field`` holding
``{"capture_time_secs_utc": <seconds since 1970, UTC>}``; the answer is JSON with
``result: OK`` or an error. Other ``secret_fields`` are sent as form fields (an API key).

The remote cannot delete, and it stores the same picture twice when it gets two
different times for it, so:

* a photo with no UTC capture time is ``skipped`` with reason ``no_capture_time``;
* ``dry_run`` uploads nothing and returns the plan (UTC time, provenance, conflicts)
  for a person to review: every outcome is ``skipped``/``dry_run`` with ``detail.plan``
  one of ``upload``, ``already_uploaded``, ``refuse_time_changed``, ``hold_for_review``,
  ``no_capture_time``;
* an fsync'ed journal beside the job's work folder records every upload *before* it
  is sent (the time it will carry) and after the remote accepted it. It is checked
  before each upload: a picture (by sha256) already accepted with the same time is
  ``already_uploaded`` and not sent again; one sent with a *different* time is never
  sent again but held for review (``needs_review``, ``time_changed_since_upload``). A
  crash between the remote's answer and the ledger write is therefore harmless: the
  rerun either finds the acceptance or resends with the identical time, which the
  remote ignores;
* 5xx, resets and timeouts are retried with exponential backoff and jitter (tenacity),
  429 after its Retry-After; 401/403 is ``auth_failed`` at once (and the rest of the
  batch is not tried, to spare the account a lockout), other 4xx fail with their reason.

The password never appears in outcomes, logs or exceptions.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import mimetypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from photo_escape.outcomes import PermanentError, Stopwatch, TransientError, outcome
from photo_escape.plugins import Destination, KindConfig
from photo_escape.secrets import SecretMissing, SecretRef, redact, resolve
from tasks.retrying import check_http_url, raise_for_busy_or_broken, with_retries

USER_AGENT = "photo-escape/http_upload"


class HttpUploadConfig(KindConfig):
    kind: Literal["http_upload"]
    url: str = Field(description="the upload endpoint (http or https), query string included")
    username: str | None = Field(None, description="basic-auth user name (the password is a secret field)")
    secret_fields: dict[str, SecretRef] = Field(
        default_factory=dict,
        description="where secrets live: {password: {env: UPLOAD_PASSWORD}}; other names are sent as form fields",
    )
    file_field: str = Field("photo", description="multipart field holding the file")
    metadata_field: str = Field("metadata", description="form field holding the JSON with capture_time_secs_utc")
    timeout_seconds: float = Field(120.0, gt=0, le=3600, description="per-request connect/read time limit")
    max_retry_after: float = Field(120.0, ge=0, le=3600,
                                   description="longest Retry-After honoured; a longer one fails as rate_limited")
    journal: Path | None = Field(None, description="upload journal file; default beside the job's work folder")
    hold_conflicts: bool = Field(False, description="hold photos whose capture-time sources disagree for review")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return check_http_url(v, "use username and secret_fields.password")


# ----------------------------------------------------------------------------------------
# the journal of uploads
# ----------------------------------------------------------------------------------------

class UploadJournal:
    """Append-only JSON lines, fsync'ed: ``sending`` before each upload, ``accepted`` after.

    One object per file per process (threads share it); a file lock guards the
    check-then-write so processes (Dask workers) sharing a journal agree too.
    """

    _open: dict[str, "UploadJournal"] = {}
    _open_lock = threading.Lock()

    @classmethod
    def at(cls, path: str | Path) -> "UploadJournal":
        key = str(Path(path).resolve())
        with cls._open_lock:
            if key not in cls._open:
                cls._open[key] = cls(Path(key))
            return cls._open[key]

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.offset = 0
        self.sent: dict[str, set[int]] = {}
        self.accepted: dict[str, dict[int, Any]] = {}
        self._busy: dict[str, threading.Lock] = {}

    def _refresh(self) -> None:
        """Read lines appended since the last look (by us or another process)."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1  # a torn last line (a crash mid-write) waits, then is skipped
        for line in data[:end].splitlines():
            try:
                rec = json.loads(line)
                sha, ms = rec["sha256"], int(rec["ms"])
            except (ValueError, KeyError, TypeError):
                continue
            self.sent.setdefault(sha, set()).add(ms)
            if rec.get("event") == "accepted":
                self.accepted.setdefault(sha, {})[ms] = rec.get("remote_id")
        self.offset += end

    def _append(self, fh: Any, rec: dict[str, Any]) -> None:
        fh.write((json.dumps(rec, sort_keys=True) + "\n").encode())
        fh.flush()
        os.fsync(fh.fileno())

    @contextlib.contextmanager
    def picture(self, sha256: str) -> Iterator["_Claim"]:
        """Hold one picture while deciding and uploading it (other threads wait)."""
        with self.lock:
            busy = self._busy.setdefault(sha256, threading.Lock())
        with busy:
            yield _Claim(self, sha256)

    def state(self, sha256: str) -> tuple[set[int], dict[int, Any]]:
        with self.lock:
            self._refresh()
            return set(self.sent.get(sha256, ())), dict(self.accepted.get(sha256, {}))

    def write(self, event: str, sha256: str, ms: int, *, check: bool = False, **extra: Any) -> bool:
        """Append an event; with ``check``, only if no other time was sent for this picture
        meanwhile (returns False then). The file is locked for the check and the write."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock, open(self.path, "ab") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                self._refresh()
                if check and (self.sent.get(sha256, set()) - {ms}):
                    return False
                rec = {"event": event, "sha256": sha256, "ms": ms, "at": datetime.now(timezone.utc).isoformat()}
                rec.update({k: v for k, v in extra.items() if v is not None})
                self._append(fh, rec)
                self._refresh()
                return True
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class _Claim:
    def __init__(self, journal: UploadJournal, sha256: str) -> None:
        self.journal, self.sha256 = journal, sha256

    def state(self) -> tuple[set[int], dict[int, Any]]:
        return self.journal.state(self.sha256)


# ----------------------------------------------------------------------------------------
# capture time -> the number the API wants
# ----------------------------------------------------------------------------------------

def capture_secs(item: dict[str, Any]) -> float | None:
    """Seconds since 1970 UTC (millisecond precision) from the item's capture record."""
    utc = (item.get("capture") or {}).get("utc")
    if not utc:
        return None
    try:
        when = utc if isinstance(utc, datetime) else datetime.fromisoformat(str(utc))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return round(when.timestamp(), 3)


def _plan(item: dict[str, Any], secs: float | None) -> dict[str, Any]:
    cap = item.get("capture") or {}
    return {
        "name": item.get("name"),
        "capture_time_secs_utc": secs,
        "utc": cap.get("utc"),
        "local": cap.get("local"),
        "tz": cap.get("tz"),
        "offset_minutes": cap.get("offset_minutes"),
        "provenance": cap.get("provenance"),
        "conflicts": cap.get("conflicts") or [],
    }


# ----------------------------------------------------------------------------------------
# the destination
# ----------------------------------------------------------------------------------------

class HttpUploadDestination(Destination):
    kind = "http_upload"
    Config = HttpUploadConfig

    def __init__(self, config: HttpUploadConfig, **kw: Any) -> None:
        super().__init__(config, **kw)
        self.local = threading.local()
        self.auth_failed = threading.Event()
        self.answered = threading.Event()  # the remote has answered an upload at least once
        self.journal_path = config.journal or self.workdir.parent / "upload-journal" / f"{self.remote_id()}.jsonl"
        self.journal = UploadJournal.at(self.journal_path)
        opts = self.options
        self.retries = getattr(opts, "retries", 3)
        self.backoff = getattr(opts, "backoff_seconds", 0.5)
        self.concurrency = max(1, min(getattr(opts, "concurrency", 4), 16))
        self.secrets: dict[str, str] | None = None

    def settings_key(self) -> str:
        """Where the photos go and how they are described: the endpoint, the account and the
        form fields. Time limits, retry settings and review holds are not part of it, so
        changing them does not make the ledger forget what is done."""
        c = self.config
        blob = json.dumps([c.kind, c.url, c.username, c.file_field, c.metadata_field,
                           sorted(c.secret_fields)], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def remote_id(self) -> str:
        """Which remote account this is (endpoint host and path, user): the journal's name."""
        parts = urlsplit(self.config.url)
        blob = f"{parts.scheme}://{parts.netloc}{parts.path}|{self.config.username or ''}"
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def inventory(self, targets: list[str]) -> None:
        """None, plainly: an upload API cannot be listed or read back, so nothing can
        check what the remote holds; callers trust the ledger and the upload journal."""
        return None

    # -- delivering a batch -------------------------------------------------------------
    def deliver(self, items: list[dict], dry_run: bool = False) -> list[dict]:
        if not dry_run and any(capture_secs(i) is not None for i in items):
            try:
                self.secrets = {name: resolve(ref) for name, ref in self.config.secret_fields.items()}
            except SecretMissing as exc:
                return [outcome(i["item_id"], "deliver", "failed", "secret_missing",
                                detail={"message": redact(str(exc))}) | {"item": i} for i in items]
        if dry_run or self.concurrency == 1:
            return [self._one(i, dry_run) for i in items]
        # one at a time until the remote has answered once (bad credentials then cost one
        # request, not a burst that could lock the account), then in parallel
        results: list[dict] = []
        k = 0
        while k < len(items) and not self.answered.is_set():
            results.append(self._one(items[k], dry_run))
            k += 1
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="http-upload") as pool:
            results.extend(pool.map(lambda i: self._one(i, dry_run), items[k:]))
        return results

    def _one(self, item: dict, dry_run: bool) -> dict:
        """Upload one photo (or say what would happen); never raises."""
        sw = Stopwatch()
        try:
            result, reason, detail, attempt = self._decide_and_send(item, dry_run)
        except Exception as exc:  # noqa: BLE001 - one photo's surprise must not lose the batch
            result, reason, attempt = "failed", "unexpected_error", 1
            detail = {"message": redact(f"{type(exc).__name__}: {exc}")[:300]}
        final = result == "ok"
        return outcome(item["item_id"], "deliver", result, reason, detail=detail, final=final,
                       bytes=item.get("bytes") if reason == "uploaded" else None, duration_ms=sw.ms,
                       attempt=attempt, sha256=item.get("sha256")) | {"item": item}

    def _decide_and_send(self, item: dict, dry_run: bool) -> tuple[str, str, dict, int]:
        """(outcome, reason, detail, attempts) for one photo: the checks that keep the remote
        free of duplicates, then the upload itself with the journal written around it."""
        secs = capture_secs(item)
        plan = _plan(item, secs)
        if secs is None:  # a dry run commits to nothing: the real run decides again
            return ("skipped", "dry_run", dict(plan, plan="no_capture_time"), 1) if dry_run \
                else ("skipped", "no_capture_time", plan, 1)
        sha = item.get("sha256")
        if not sha:
            return "failed", "no_content_hash", plan, 1
        ms = int(round(secs * 1000))
        if self.config.hold_conflicts and plan["conflicts"]:
            return ("skipped", "dry_run", dict(plan, plan="hold_for_review"), 1) if dry_run \
                else ("needs_review", "capture_time_conflict", plan, 1)
        with self.journal.picture(sha) as claim:
            sent, accepted = claim.state()
            if ms in accepted:
                plan["remote_id"] = accepted[ms]
                return ("skipped", "dry_run", dict(plan, plan="already_uploaded"), 1) if dry_run \
                    else ("ok", "already_uploaded", plan, 1)
            others = sorted(sent - {ms})
            if others:
                plan["sent_before_secs_utc"] = [m / 1000 for m in others]
                return ("skipped", "dry_run", dict(plan, plan="refuse_time_changed"), 1) if dry_run \
                    else ("needs_review", "time_changed_since_upload", plan, 1)
            if dry_run:
                return "skipped", "dry_run", dict(plan, plan="upload"), 1
            if self.auth_failed.is_set():
                return "failed", "auth_failed", dict(plan, message="credentials were refused earlier in this batch"), 1
            if not self.journal.write("sending", sha, ms, item_id=item.get("item_id"), name=item.get("name")):
                return "needs_review", "time_changed_since_upload", plan, 1
            try:
                remote_id, attempts = self._send_with_retries(item, secs)
            except PermanentError as exc:
                if exc.reason == "auth_failed":
                    self.auth_failed.set()
                return "failed", exc.reason, dict(plan, message=redact(str(exc))[:300]), getattr(exc, "attempts", 1)
            except TransientError as exc:
                return "failed", exc.reason, dict(plan, message=redact(str(exc))[:300]), getattr(exc, "attempts", 1)
            self.journal.write("accepted", sha, ms, item_id=item.get("item_id"), remote_id=remote_id)
            return "ok", "uploaded", dict(plan, remote_id=remote_id, attempts=attempts), attempts

    # -- HTTP ---------------------------------------------------------------------------
    def _session(self):
        import requests

        s = getattr(self.local, "session", None)
        if s is None:
            s = requests.Session()
            s.headers["User-Agent"] = USER_AGENT
            password = (self.secrets or {}).get("password")
            if self.config.username is not None:
                s.auth = (self.config.username, password or "")
            self.local.session = s
        return s

    def _send_with_retries(self, item: dict, secs: float) -> tuple[Any, int]:
        """POST the photo; retry what a retry can fix. Returns (remote id, attempts)."""
        return with_retries(lambda: self._send(item, secs), retries=self.retries, backoff=self.backoff)

    def _send(self, item: dict, secs: float) -> Any:
        """One POST; raises PermanentError / TransientError with a short reason."""
        import requests

        path = bytes.fromhex(item["local_path_hex"]) if item.get("local_path_hex") else item["local_path"]
        name = item.get("name") or os.path.basename(os.fsdecode(path))
        mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
        data = {self.config.metadata_field: json.dumps({"capture_time_secs_utc": secs})}
        for field, value in (self.secrets or {}).items():
            if field != "password":
                data[field] = value
        try:
            with open(path, "rb") as fh:
                resp = self._session().post(self.config.url, data=data,
                                            files={self.config.file_field: (name, fh, mime)},
                                            timeout=(min(30.0, self.config.timeout_seconds), self.config.timeout_seconds))
        except FileNotFoundError:
            raise PermanentError("local_file_missing", "the fetched file is gone") from None
        except requests.Timeout:
            raise TransientError("timeout", "the upload API did not answer in time") from None
        except requests.ConnectionError as exc:
            reason = "connection_reset" if "reset" in str(exc).lower() or "aborted" in str(exc).lower() \
                else "connection_failed"
            raise TransientError(reason, redact(f"{type(exc).__name__}")) from None
        except requests.RequestException as exc:
            raise TransientError("request_failed", type(exc).__name__) from None
        return self._answer(resp)

    def _answer(self, resp: Any) -> Any:
        """The remote id from an answer, or the error it means."""
        code = resp.status_code
        if code < 500 and code != 429:
            self.answered.set()
        message = _message(resp)
        if code in (401, 403):
            raise PermanentError("auth_failed", f"HTTP {code}: the upload API refused the credentials")
        raise_for_busy_or_broken(resp, message, self.config.max_retry_after)
        if code >= 400:
            raise PermanentError("rejected", f"HTTP {code}: {message}")
        try:
            body = resp.json()
        except ValueError:
            raise TransientError("bad_response", f"HTTP {code} without JSON") from None
        if not isinstance(body, dict):
            raise TransientError("bad_response", "an answer that is not a JSON object")
        if str(body.get("result", "")).upper() != "OK":
            raise PermanentError("rejected", f"result {body.get('result')!r}: {message}")
        return body.get("id")


def _message(resp: Any) -> str:
    """A short, redacted message from an answer's body."""
    try:
        body = resp.json()
        text = body.get("message") or body.get("error") or json.dumps(body) if isinstance(body, dict) else str(body)
    except ValueError:
        text = resp.text or ""
    return redact(" ".join(str(text).split()))[:200]
