"""``destination.kind: immich``: photos into a self-hosted Immich server, through its API.

    destination:
      kind: immich
      url: http://immich.local:2283       # the server; /api is added
      api_key: {env: IMMICH_API_KEY}      # a secret reference, never the key itself
      albums: from_source                 # from_source | none | a fixed album name
      sidecars: xmp                       # send the XMP sidecar with each photo (or none)

A batch goes in three steps, each one request for the whole batch where Immich allows it:

1. **No duplicates, decided before any upload.** The photos' SHA-1 checksums go to
   ``POST /api/assets/bulk-upload-check`` (Immich identifies an asset by its owner and
   the SHA-1 of its bytes). What the server has is recorded ``ok``/``already_present``
   with its asset id and not sent; a rerun therefore uploads nothing, and so does the
   rerun after a run killed between Immich's acceptance and the ledger's record.
2. **Upload** what the server lacks, ``POST /api/assets`` (multipart ``assetData``,
   ``deviceAssetId`` stable across runs, ``deviceId: photo-escape``, ``fileCreatedAt`` and
   ``fileModifiedAt`` the restored capture time **with its offset**, ``isFavorite`` from
   the source, ``sidecarData`` the XMP sidecar, header ``x-api-key``). A ``duplicate``
   answer is ``already_present`` too. 429 and 5xx, resets and timeouts are retried
   (``options.retries``, ``options.backoff_seconds``; 429 after its Retry-After): a
   retried upload cannot make a second copy, Immich answers ``duplicate``. A photo
   Immich refuses (an unsupported file type, too large) fails with Immich's own message.
3. **Albums** (``from_source``: the titles the source gave, ``item["meta"]["albums"]``; a
   fixed name; or ``none``): the missing ones are created (``POST /api/albums``), then each
   album gets the batch's photos in ONE ``PUT /api/albums/{id}/assets``. Memberships are
   recorded in the outcome's ``detail.albums``. A photo whose album could not be updated
   fails ``album_not_updated`` (it is in Immich; the rerun finds it and adds it).

A refused API key (401/403) stops the run: :class:`ImmichKeyRefused` (a
:class:`~photo_escape.plugins.DestinationUnreadable`) is raised with one line for the
user, before anything is uploaded. A dry run sends only the read-only checks (the bulk
check, the album list) and records the plan: ``detail.plan`` is ``upload``,
``already_present`` or ``refused``, with ``detail.albums_to_create``.

The target recorded for a photo is ``immich://HOST/assets/ID?sha1=HEX&size=N``: the
asset, and the content by which Immich knows it, so that a rerun's listing (Immich's
bulk check, see :meth:`ImmichDestination.inventory`) can tell which delivered photos are
still there. The API key never appears in outcomes, logs or exceptions.
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
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, field_validator

from photo_escape.outcomes import PermanentError, Stopwatch, TransientError, outcome
from photo_escape.plugins import Destination, DestinationUnreadable, KindConfig
from photo_escape.secrets import SecretMissing, SecretRef, redact, resolve
from tasks.retrying import check_http_url, raise_for_busy_or_broken, with_retries

USER_AGENT = "photo-escape/immich"
DEVICE_ID = "photo-escape"
CHECK_CHUNK = 1000  # checksums per bulk-upload-check request
ALBUM_CHUNK = 1000  # asset ids per PUT /albums/{id}/assets


class ImmichConfig(KindConfig):
    kind: Literal["immich"]
    url: str = Field(description="the Immich server (http or https); /api is added unless the URL ends with it")
    api_key: SecretRef = Field(description="where the API key lives: {env: IMMICH_API_KEY} or {block: NAME}")
    albums: str = Field("from_source", min_length=1,
                        description="from_source (the source's album titles), none, or one fixed album name")
    sidecars: Literal["xmp", "none"] = Field("xmp", description="send the photo's XMP sidecar with it")
    timeout_seconds: float = Field(120.0, gt=0, le=3600, description="per-request connect/read time limit")
    max_retry_after: float = Field(120.0, ge=0, le=3600,
                                   description="longest Retry-After honoured; a longer one fails as rate_limited")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return check_http_url(v, "the API key is given as api_key: {env: ...}")

    @property
    def api_url(self) -> str:
        base = self.url.rstrip("/")
        return base if base.endswith("/api") else base + "/api"


class ImmichKeyRefused(DestinationUnreadable):
    """Immich answered 401/403: the API key is wrong, revoked or lacks a permission.
    Nothing more can be done this run; ``str()`` is one line for the user."""


# ----------------------------------------------------------------------------------------
# plain helpers: checksums, times, targets, sidecars
# ----------------------------------------------------------------------------------------

def file_sha1(path: str | bytes) -> str:
    """The SHA-1 of a file's bytes as 40 hex digits (Immich's identity of an asset's content)."""
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_created_at(item: dict[str, Any], path: str | bytes | None = None) -> tuple[str, str]:
    """(``fileCreatedAt`` as Immich takes it, where it came from).

    The restored capture instant written in its own offset (``2019-03-10T10:00:00+05:45``)
    when the capture-time stage found both; the instant in UTC when the offset is
    unknown; the wall clock alone when no zone could be found (Immich reads the file's own
    date too); the file's modification time when nothing is known."""
    cap = item.get("capture") or {}
    utc, offset = cap.get("utc"), cap.get("offset_minutes")
    if utc:
        when = utc if isinstance(utc, datetime) else datetime.fromisoformat(str(utc))
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        if offset is not None:
            return when.astimezone(timezone(timedelta(minutes=int(offset)))).isoformat(), "capture_time"
        return when.astimezone(timezone.utc).isoformat(), "capture_time_utc"
    if cap.get("local"):
        return str(cap["local"]), "local_time_no_zone"
    mtime = os.stat(path).st_mtime if path is not None else 0.0
    return datetime.fromtimestamp(mtime, timezone.utc).isoformat(), "file_mtime"


def make_target(host: str, asset_id: str, sha1: str, size: int | None) -> str:
    """Where a photo went: ``immich://HOST/assets/ID?sha1=HEX&size=N``."""
    return f"immich://{host}/assets/{asset_id}?sha1={sha1}&size={size if size is not None else ''}"


def parse_target(target: str) -> tuple[str, str, int | None] | None:
    """(asset id, sha1, size) of a target :func:`make_target` wrote, or None."""
    parts = urlsplit(target)
    if parts.scheme != "immich" or not parts.path.startswith("/assets/"):
        return None
    q = parse_qs(parts.query)
    sha1 = (q.get("sha1") or [""])[0]
    size = (q.get("size") or [""])[0]
    if len(sha1) != 40:
        return None
    return parts.path[len("/assets/"):], sha1, int(size) if size.isdigit() else None


def _xmp_renderer() -> Callable[[dict[str, Any]], bytes | None]:
    """One item's XMP sidecar (``NAME.EXT.xmp``'s content), as :mod:`tasks.xmp` writes it
    for the folder and S3 destinations: the restored time with its offset, place, title,
    description, albums and provenance."""
    from tasks.xmp import xmp_sidecar

    return lambda item: xmp_sidecar(item.get("capture"), item.get("meta"), sha256=item.get("sha256"))


def sidecar_for(item: dict[str, Any], renderer: Callable[[dict], bytes | None] | None) -> bytes | None:
    """The XMP sidecar to send with a photo: the item's ``xmp_sidecar`` (a file path or the
    XMP text itself), else what ``renderer`` makes of the item, else None."""
    given = item.get("xmp_sidecar")
    if isinstance(given, (bytes, bytearray)):
        return bytes(given)
    if isinstance(given, str) and given:
        if given.lstrip().startswith("<"):
            return given.encode()
        with contextlib.suppress(OSError):
            return Path(given).read_bytes()
    if renderer is not None:
        made = renderer(item)
        return made.encode() if isinstance(made, str) else made
    return None


def album_names(item: dict[str, Any], setting: str) -> list[str]:
    """The albums a photo goes into: the source's titles (``from_source``), none, or the fixed one."""
    if setting == "none":
        return []
    if setting != "from_source":
        return [setting]
    names = ((item.get("meta") or {}).get("albums")) or []
    return list(dict.fromkeys(str(n).strip() for n in names if str(n).strip()))


def _local_path(item: dict[str, Any]) -> str | bytes:
    return bytes.fromhex(item["local_path_hex"]) if item.get("local_path_hex") else item["local_path"]


# ----------------------------------------------------------------------------------------
# the API client: one request, with retries
# ----------------------------------------------------------------------------------------

class ImmichClient:
    """Immich's API with one key: ``call`` sends a request, retrying what a retry can fix,
    and turns an answer into JSON or the error it means. Thread-safe (a session per thread)."""

    def __init__(self, config: ImmichConfig, key: str, *, retries: int, backoff: float) -> None:
        self.config = config
        self.api = config.api_url
        self.key = key
        self.retries = retries
        self.backoff = backoff
        self.local = threading.local()
        self.sessions: list[Any] = []
        self.lock = threading.Lock()

    def session(self):
        import requests

        s = getattr(self.local, "session", None)
        if s is None:
            s = requests.Session()
            s.headers.update({"User-Agent": USER_AGENT, "x-api-key": self.key, "Accept": "application/json"})
            self.local.session = s
            with self.lock:
                self.sessions.append(s)
        return s

    def close(self) -> None:
        with self.lock:
            for s in self.sessions:
                s.close()
            self.sessions.clear()

    def call(self, method: str, path: str, **kw: Any) -> tuple[Any, int]:
        """(the answer's JSON, attempts). Raises :class:`ImmichKeyRefused`,
        :class:`PermanentError` (Immich's message) or, retries spent, :class:`TransientError`."""
        return with_retries(lambda: self._once(method, path, **kw), retries=self.retries, backoff=self.backoff)

    def _once(self, method: str, path: str, *, files: Callable[[], Any] | None = None, **kw: Any) -> Any:
        import requests

        timeout = (min(30.0, self.config.timeout_seconds), self.config.timeout_seconds)
        try:
            with contextlib.ExitStack() as stack:
                if files is not None:  # opened anew for each attempt
                    kw["files"] = files(stack)
                resp = self.session().request(method, self.api + path, timeout=timeout, **kw)
        except requests.Timeout:
            raise TransientError("timeout", "Immich did not answer in time") from None
        except requests.ConnectionError as exc:
            text = str(exc).lower()
            raise TransientError("connection_reset" if "reset" in text or "aborted" in text
                                 else "connection_failed", type(exc).__name__) from None
        except requests.RequestException as exc:
            raise TransientError("request_failed", type(exc).__name__) from None
        return self._answer(resp)

    def _answer(self, resp: Any) -> Any:
        code = resp.status_code
        message = immich_message(resp)
        if code in (401, 403):
            raise ImmichKeyRefused(f"Immich at {self.api} refused the API key (HTTP {code}: {message}); "
                                   f"check the key in {self.config.api_key.describe()} and its permissions")
        raise_for_busy_or_broken(resp, message, self.config.max_retry_after)
        if code >= 400:
            reason = "unsupported_type" if "unsupported file type" in message.lower() else "refused"
            raise PermanentError(reason, f"HTTP {code}: {message}")
        if code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise TransientError("bad_response", f"HTTP {code} without JSON (is {self.api} Immich's API?)") from None

    # -- the calls photo-escape makes --------------------------------------------------------------
    def bulk_check(self, checksums: dict[str, str]) -> dict[str, dict]:
        """``{id: result}`` for ``{id: sha1 hex}``: Immich's ``accept`` or ``reject`` (``reason``
        ``duplicate`` with the ``assetId`` it has), CHECK_CHUNK checksums a request."""
        out: dict[str, dict] = {}
        pairs = list(checksums.items())
        for k in range(0, len(pairs), CHECK_CHUNK):
            body = {"assets": [{"id": i, "checksum": c} for i, c in pairs[k:k + CHECK_CHUNK]]}
            answer, _ = self.call("POST", "/assets/bulk-upload-check", json=body)
            for r in (answer or {}).get("results") or []:
                out[str(r.get("id"))] = r
        return out

    def albums(self) -> dict[str, str]:
        """Album name -> id of the user's albums (the oldest of namesakes)."""
        answer, _ = self.call("GET", "/albums")
        found: dict[str, str] = {}
        for al in sorted(answer or [], key=lambda a: a.get("createdAt") or ""):
            found.setdefault(al["albumName"], al["id"])
        return found


def immich_message(resp: Any) -> str:
    """Immich's error message from an answer (``{"message": ..., "error": ...}``), short and redacted."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        msg = body.get("message") or body.get("error") or json.dumps(body)
        text = "; ".join(map(str, msg)) if isinstance(msg, list) else str(msg)
    else:
        text = resp.text or resp.reason or ""
    return redact(" ".join(text.split()))[:300]


# ----------------------------------------------------------------------------------------
# the destination
# ----------------------------------------------------------------------------------------

class ImmichDestination(Destination):
    kind = "immich"
    Config = ImmichConfig

    _album_lock = threading.Lock()  # album creation: one batch at a time in this process

    def __init__(self, config: ImmichConfig, **kw: Any) -> None:
        super().__init__(config, **kw)
        opts = self.options
        self.retries = getattr(opts, "retries", 3)
        self.backoff = getattr(opts, "backoff_seconds", 0.5)
        self.concurrency = max(1, min(getattr(opts, "concurrency", 4), 16))
        self.host = urlsplit(config.api_url).netloc
        self.client: ImmichClient | None = None

    def settings_key(self) -> str:
        """Where the photos go and how: the server's API, the album rule and the sidecars.
        Time limits and the key's whereabouts are not part of it."""
        c = self.config
        blob = json.dumps([c.kind, c.api_url, c.albums, c.sidecars], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _connect(self) -> ImmichClient:
        if self.client is None:
            self.client = ImmichClient(self.config, resolve(self.config.api_key),
                                       retries=self.retries, backoff=self.backoff)
        return self.client

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    # -- delivering a batch -----------------------------------------------------------------------
    def deliver(self, items: list[dict], dry_run: bool = False) -> list[dict]:
        sw = Stopwatch()
        try:
            client = self._connect()
        except SecretMissing as exc:
            return [self._outcome(i, "failed", "secret_missing", {"message": redact(str(exc))}, sw)
                    for i in items]
        done: dict[str, dict] = {}  # item_id -> outcome
        sha1s: dict[str, str] = {}
        for item in items:
            try:
                sha1s[item["item_id"]] = item.get("sha1") or file_sha1(_local_path(item))
            except OSError as exc:
                done[item["item_id"]] = self._outcome(item, "failed", "local_file_missing",
                                                      {"message": redact(str(exc))[:300]}, sw)
        by_sha1: dict[str, list[dict]] = {}
        for item in items:
            if item["item_id"] in sha1s:
                by_sha1.setdefault(sha1s[item["item_id"]], []).append(item)
        try:
            checked = client.bulk_check({sha: sha for sha in by_sha1})  # raises ImmichKeyRefused: the run stops
        except (PermanentError, TransientError) as exc:
            for group in by_sha1.values():
                for item in group:
                    done[item["item_id"]] = self._outcome(item, "failed", exc.reason,
                                                          {"message": redact(str(exc))[:300], "step": "bulk_check"}, sw)
            return [done[i["item_id"]] for i in items]

        if dry_run:
            return self._plan(items, by_sha1, checked, done, sw)

        # upload what Immich lacks (one upload per content), the others are already there
        present: dict[str, tuple[str, str, dict]] = {}  # sha1 -> (asset id, reason, extra detail)
        refused: dict[str, tuple[str, str, int]] = {}  # sha1 -> (reason, message, attempts)
        to_upload = []
        for sha, group in by_sha1.items():
            r = checked.get(sha) or {}
            if r.get("action") == "reject" and r.get("assetId"):
                present[sha] = (r["assetId"], "already_present", {"trashed": bool(r.get("isTrashed"))})
            elif r.get("action") == "reject":
                refused[sha] = ("unsupported_type" if r.get("reason") == "unsupported-format" else "refused",
                                f"bulk check: {r.get('reason') or 'rejected'}", 1)
            else:
                to_upload.append((sha, group[0]))
        renderer = _xmp_renderer() if self.config.sidecars == "xmp" else None
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="immich") as pool:
            for sha, result in zip([s for s, _ in to_upload],
                                   pool.map(lambda pair: self._upload(client, pair[1], pair[0], renderer), to_upload)):
                if result[0] == "ok":
                    present[sha] = result[1:]
                else:
                    refused[sha] = result[1:]

        memberships = self._add_to_albums(client, by_sha1, present)
        for sha, group in by_sha1.items():
            for k, item in enumerate(group):
                if sha in refused:
                    reason, message, attempts = refused[sha]
                    done[item["item_id"]] = self._outcome(item, "failed", reason,
                                                          {"immich": message, "sha1": sha}, sw, attempt=attempts)
                    continue
                asset_id, reason, extra = present[sha]
                if k > 0 and reason == "uploaded":  # the same picture twice in the batch: sent once
                    reason, extra = "already_present", {"same_content_as": group[0]["item_id"]}
                albums = memberships.get(item["item_id"], [])
                detail = {"target": make_target(self.host, asset_id, sha, item.get("bytes")), "asset_id": asset_id,
                          "version": asset_id, "sha1": sha, "albums": albums, **extra}
                if any(a.get("error") for a in albums):
                    done[item["item_id"]] = self._outcome(item, "failed", "album_not_updated", detail, sw)
                else:
                    done[item["item_id"]] = self._outcome(item, "ok", reason, detail, sw, final=True,
                                                          attempt=extra.get("attempts", 1))
        return [done[i["item_id"]] for i in items]

    def _outcome(self, item: dict, result: str, reason: str, detail: dict, sw: Stopwatch, *,
                 final: bool = False, attempt: int = 1) -> dict:
        return outcome(item["item_id"], "deliver", result, reason, detail=detail, final=final,
                       bytes=item.get("bytes") if reason == "uploaded" else None, duration_ms=sw.ms,
                       attempt=attempt, sha256=item.get("sha256")) | {"item": item}

    def _plan(self, items: list[dict], by_sha1: dict[str, list[dict]], checked: dict[str, dict],
              done: dict[str, dict], sw: Stopwatch) -> list[dict]:
        """The dry run's outcomes: what would be uploaded, what is there, which albums would be made."""
        wanted = {name for group in by_sha1.values() for i in group for name in album_names(i, self.config.albums)}
        try:
            existing = self._connect().albums() if wanted else {}
        except (PermanentError, TransientError) as exc:
            existing = {}
            wanted_note = f"the album list could not be read: {exc}"
        else:
            wanted_note = None
        for sha, group in by_sha1.items():
            r = checked.get(sha) or {}
            for k, item in enumerate(group):
                if r.get("action") == "reject" and r.get("assetId"):
                    plan = "already_present"
                elif r.get("action") == "reject":
                    plan = "refused"
                else:
                    plan = "upload" if k == 0 else "already_present"
                names = album_names(item, self.config.albums)
                when, source = file_created_at(item, _local_path(item))
                detail = {"plan": plan, "sha1": sha, "asset_id": r.get("assetId"), "file_created_at": when,
                          "time_source": source, "albums": [{"name": n, "id": existing.get(n)} for n in names],
                          "albums_to_create": [n for n in names if n not in existing]}
                if wanted_note:
                    detail["note"] = wanted_note
                done[item["item_id"]] = self._outcome(item, "skipped", "dry_run", detail, sw)
        return [done[i["item_id"]] for i in items]

    def _upload(self, client: ImmichClient, item: dict, sha1: str,
                renderer: Callable[[dict], bytes | None] | None) -> tuple:
        """Send one photo: ``("ok", asset id, "uploaded" | "already_present", detail)`` or
        ``("failed", reason, Immich's message, attempts)``. Raises ImmichKeyRefused."""
        path = _local_path(item)
        name = item.get("name") or os.path.basename(os.fsdecode(path))
        when, source = file_created_at(item, path)
        meta = item.get("meta") or {}
        try:
            sidecar = sidecar_for(item, renderer) if self.config.sidecars == "xmp" else None
        except Exception as exc:  # noqa: BLE001 - a sidecar problem must not cost the photo
            sidecar, sidecar_error = None, redact(f"{type(exc).__name__}: {exc}")[:200]
        else:
            sidecar_error = None
        form = {"deviceAssetId": f"{name}-{(item.get('sha256') or sha1)[:16]}", "deviceId": DEVICE_ID,
                "fileCreatedAt": when, "fileModifiedAt": when, "filename": name,
                "isFavorite": "true" if meta.get("favourite") else "false"}
        mime = mimetypes.guess_type(name)[0] or "application/octet-stream"

        def files(stack: contextlib.ExitStack) -> dict:
            parts = {"assetData": (name, stack.enter_context(open(path, "rb")), mime)}
            if sidecar is not None:
                parts["sidecarData"] = (f"{name}.xmp", sidecar, "application/rdf+xml")
            return parts

        try:
            answer, attempts = client.call("POST", "/assets", data=form, files=files,
                                           headers={"x-immich-checksum": sha1})
        except FileNotFoundError:
            return "failed", "local_file_missing", "the fetched file is gone", 1
        except (PermanentError, TransientError) as exc:
            return "failed", exc.reason, redact(str(exc))[:300], getattr(exc, "attempts", 1)
        if not isinstance(answer, dict) or not answer.get("id"):
            return "failed", "bad_response", "Immich's answer has no asset id", attempts
        reason = "already_present" if answer.get("status") == "duplicate" else "uploaded"
        detail = {"file_created_at": when, "time_source": source, "device_asset_id": form["deviceAssetId"],
                  "sidecar": sidecar is not None, "attempts": attempts}
        if sidecar_error:
            detail["sidecar_error"] = sidecar_error
        return "ok", answer["id"], reason, detail

    # -- albums -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _albums_held(self) -> Iterator[None]:
        """Held while albums are listed and created, so two batches of a run (threads here, or
        worker processes sharing the run's work folder) never create the same album twice."""
        lock_path = self.workdir / ".immich-albums.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with self._album_lock, open(lock_path, "a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _add_to_albums(self, client: ImmichClient, by_sha1: dict[str, list[dict]],
                       present: dict[str, tuple]) -> dict[str, list[dict]]:
        """Create the missing albums and add the batch's photos, one PUT per album; returns
        each item's memberships ``[{"name", "id", "added": "added"|"already", "created"?}]``
        (``"error"`` where it failed)."""
        members: dict[str, list[tuple[dict, str]]] = {}  # album name -> [(item, asset id)]
        for sha, group in by_sha1.items():
            if sha not in present:
                continue
            for item in group:
                for name in album_names(item, self.config.albums):
                    members.setdefault(name, []).append((item, present[sha][0]))
        out: dict[str, list[dict]] = {}
        if not members:
            return out
        created: set[str] = set()
        ids: dict[str, str] = {}
        try:
            with self._albums_held():
                ids.update(client.albums())
                for name in members:
                    if name not in ids:
                        answer, _ = client.call("POST", "/albums", json={"albumName": name})
                        ids[name] = answer["id"]
                        created.add(name)
        except (PermanentError, TransientError) as exc:
            for name, pairs in members.items():
                for item, _ in pairs:
                    out.setdefault(item["item_id"], []).append(
                        {"name": name, "id": ids.get(name), "error": redact(str(exc))[:200]})
            return out
        for name, pairs in members.items():
            asset_ids = list(dict.fromkeys(a for _, a in pairs))
            results: dict[str, dict] = {}
            error = None
            try:
                for k in range(0, len(asset_ids), ALBUM_CHUNK):
                    answer, _ = client.call("PUT", f"/albums/{ids[name]}/assets",
                                            json={"ids": asset_ids[k:k + ALBUM_CHUNK]})
                    results.update({r["id"]: r for r in answer or []})
            except (PermanentError, TransientError) as exc:
                error = redact(str(exc))[:200]
            for item, asset_id in pairs:
                entry = {"name": name, "id": ids[name]}
                if name in created:
                    entry["created"] = True
                r = results.get(asset_id) or {}
                if error:
                    entry["error"] = error
                elif r.get("success"):
                    entry["added"] = "added"
                elif r.get("error") == "duplicate":
                    entry["added"] = "already"
                else:
                    entry["error"] = f"Immich did not add it: {r.get('error') or 'no answer'}"
                out.setdefault(item["item_id"], []).append(entry)
        return out

    # -- fixity -------------------------------------------------------------------------------------
    def inventory(self, targets: list[str]) -> dict[str, tuple[int, str | None]]:
        """What of ``targets`` Immich holds now, from Immich's bulk check (one request per
        CHECK_CHUNK photos, never one per photo): a target's content (its SHA-1) that the
        server still has is there, at the size delivered, its version being the asset id
        that holds it now (a photo deleted and uploaded again by someone else has another id,
        so the caller reads it back). A photo in Immich's trash is still there (uploading it
        again would only be answered ``duplicate``). Raises DestinationUnreadable when the
        check cannot be made."""
        parsed = {t: parse_target(t) for t in targets}
        wanted = {t: p[1] for t, p in parsed.items() if p}
        if not wanted:
            return {}
        try:
            checked = self._connect().bulk_check(dict(wanted))
        except (PermanentError, TransientError, SecretMissing) as exc:
            raise DestinationUnreadable(f"Immich at {self.config.api_url} could not be checked: "
                                        f"{redact(str(exc))[:200]}") from None
        found = {}
        for target, sha in wanted.items():
            r = checked.get(target) or {}
            if r.get("action") == "reject" and r.get("assetId"):
                found[target] = (parsed[target][2] or 0, r["assetId"])
        return found

    def read_back(self, target: str) -> dict[str, Any] | None:
        """Download the asset that holds the target's content now and hash it as it streams."""
        parsed = parse_target(target)
        if parsed is None:
            return None
        here = self.inventory([target])
        if target not in here:
            return None
        asset_id = here[target][1]
        client = self._connect()
        try:
            resp = client.session().get(f"{client.api}/assets/{asset_id}/original", stream=True,
                                        timeout=(30.0, self.config.timeout_seconds))
        except Exception as exc:  # noqa: BLE001 - any network failure is "cannot be read now"
            raise DestinationUnreadable(f"Immich asset {asset_id} could not be read: {type(exc).__name__}") from None
        with resp:
            if resp.status_code == 404 or (resp.status_code == 400 and "not found" in immich_message(resp).lower()):
                return None
            if resp.status_code != 200:
                raise DestinationUnreadable(f"Immich asset {asset_id} could not be read: HTTP {resp.status_code}")
            h, size = hashlib.sha256(), 0
            for block in resp.iter_content(1 << 20):
                h.update(block)
                size += len(block)
        return {"size": size, "sha256": h.hexdigest(), "stored_sha256": None}
