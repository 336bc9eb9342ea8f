"""The hi-res replacement, one photo at a time (story 5), as plain code.

For each Flickr photo of a library's Commons account:

1. **match**: download Flickr's original; follow the catalogue link in its
   description; an *item page* (one image) or an *album page* (many) gives the
   candidates; :func:`tasks.resolve.resolve` compares them with the Flickr image
   (perceptual hashes, reranked by aligned correlation when the hashes hesitate)
   and says ``match``, ``ambiguous`` or ``not_in_album``;
2. **master**: the matched image's Digital ID finds the master files through the
   master index; the master must be larger than Flickr's original in both
   dimensions (``no_larger_version``) and within the account's upload limit
   (``too_large_for_flickr``); Flickr's "date taken" and its granularity are read
   now, *before* anything is replaced, and go into the ledger;
3. **replace**: the master replaces the photo through Flickr's replace endpoint,
   with a timeout that grows with the file's size; unless Flickr's original already
   has the master's dimensions (a crash after an earlier upload): a photo is never
   replaced twice;
4. **restore_date**: Flickr reset "date taken" from the master's EXIF (the date it
   was digitised); the date read in step 2 is put back with photos.setDates;
5. **verify**: the date, its granularity and the new original's dimensions are
   read back and compared.

:class:`HiresJob` is the job spec; :class:`HiresWorker` does the steps for a batch
with a bounded thread pool and returns compact outcome records
(:func:`photo_escape.outcomes.outcome`), match rows and hash records; the flow
writes them to the ledger. Plain code, no Prefect.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urljoin

from pydantic import BaseModel, ConfigDict, Field, field_validator

from photo_escape.jobspec import JobBase
from photo_escape.outcomes import PermanentError, Stopwatch, TransientError, outcome
from photo_escape.secrets import redact
from tasks import flickr as fl
from tasks.master_index import DEFAULT_ID_REGEX, check_regex

STAGES = ("match", "master", "replace", "restore_date", "verify")
FLICKR_PHOTO_PAGE = "https://www.flickr.com/photos/{owner}/{id}/"


# -- the job spec ----------------------------------------------------------------------------------
class FlickrSettings(fl.FlickrConnection):
    """Where the account is and how hard the flow may press it (see
    :class:`tasks.flickr.FlickrConnection`), and what the replace endpoint accepts."""

    replace_url: str = Field(fl.REPLACE_URL, description="Flickr's replace endpoint")
    max_upload_bytes: int = Field(200 * 1024 * 1024, ge=1,
                                  description="larger masters are skipped (the account's people.getLimits may lower it)")
    upload_base_seconds: float = Field(60.0, gt=0, description="upload timeout = this + size / the rate below")
    upload_min_bytes_per_second: float = Field(250_000, gt=0, description="slowest upload rate accepted")


class CatalogueSettings(BaseModel):
    """How to read the library catalogue."""

    model_config = ConfigDict(extra="forbid")
    link_regex: str = Field(fl.DEFAULT_LINK_REGEX, description="the catalogue URL in a Flickr description")
    digital_id_regex: str = Field(fl.DEFAULT_DIGITAL_ID_REGEX,
                                  description="the Digital ID in an image URL (group 1)")
    image_xpath: str = Field("//img/@src", description="where a page's images are")
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    per_host: int = Field(4, ge=1, description="requests in flight at once to the catalogue")

    @field_validator("link_regex", "digital_id_regex")
    @classmethod
    def _regex(cls, v: str) -> str:
        import re

        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a valid regex: {exc}") from None
        return v


class MasterSettings(BaseModel):
    """The master store's index (built from ``listing`` or by walking ``store`` when missing)."""

    model_config = ConfigDict(extra="forbid")
    index: Path | None = Field(None, description="the DuckDB master index; default <work_dir>/masters.duckdb")
    listing: Path | None = Field(None, description="the store's listing (output of `find STORE`)")
    store: Path | None = Field(None, description="walk this folder when there is no listing")
    id_regex: str = Field(DEFAULT_ID_REGEX, description="RE2 regex over a path; group 1 is the Digital ID")

    @field_validator("id_regex")
    @classmethod
    def _regex(cls, v: str) -> str:
        return check_regex(v)


class HiresJob(JobBase):
    """The hi-res replacement job (``flow: replace_hires`` in a job file)."""

    flow: Literal["replace_hires"] = "replace_hires"
    flickr: FlickrSettings = Field(default_factory=FlickrSettings)
    catalogue: CatalogueSettings = Field(default_factory=CatalogueSettings)
    masters: MasterSettings
    matching: dict[str, float] = Field(default_factory=dict,
                                       description="resolver thresholds (tasks.resolve.DEFAULTS names)")
    @property
    def index_path(self) -> Path:
        return self.masters.index or self.work_path / "masters.duckdb"

    @property
    def budget_path(self) -> Path:
        return self.flickr.budget_file or self.work_path / "flickr-calls.json"

    def settings_key(self) -> str:
        """What decides an item's result: a rerun redoes items recorded under other settings."""
        blob = self.model_dump_json(include={"catalogue", "matching"}) + self.masters.id_regex + \
            str(self.flickr.max_upload_bytes)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_hires_job(job: HiresJob | dict | str | Path) -> HiresJob:
    """A validated job from a model, plain data, or a YAML file's path."""
    if isinstance(job, HiresJob):
        return job
    if isinstance(job, (str, Path)):
        import yaml

        job = yaml.safe_load(Path(job).read_text(encoding="utf-8"))
    return HiresJob.model_validate(job)


# -- what a listing page becomes ---------------------------------------------------------------------
def photo_item(photo: dict) -> dict:
    """A listed Flickr photo as a ledger item (Flickr's mixed str/int made plain)."""
    pid = str(photo["id"])
    return {
        "item_id": f"flickr:{pid}",
        "source_ref": FLICKR_PHOTO_PAGE.format(owner=photo.get("owner", "me"), id=pid),
        "name": photo.get("title") or pid,
        "photo_id": pid,
        "description": (photo.get("description") or {}).get("_content", ""),
        "url_o": photo.get("url_o"),
        "width": fl.as_int(photo.get("o_width")) or fl.as_int(photo.get("width_o")),
        "height": fl.as_int(photo.get("o_height")) or fl.as_int(photo.get("height_o")),
        "originalformat": photo.get("originalformat"),
        "datetaken": photo.get("datetaken"),
        "granularity": fl.as_int(photo.get("datetakengranularity")),
        "fingerprint": f"{photo.get('originalsecret')}:{photo.get('o_width')}x{photo.get('o_height')}",
    }


def remembered_dates(ledger: Any, job: str, item_ids: list[str]) -> dict[str, dict]:
    """The date taken each photo had *before* any replace, as its first ``master`` stage
    read it into the ledger (:meth:`tasks.ledger.Ledger.first_ok_details`).

    After a replace Flickr shows the master's EXIF date; if a run stopped between the
    replace and the restore, the next run must restore the date read before, never
    the one Flickr shows now."""
    out = {}
    for item_id, d in ledger.first_ok_details(job, "master", item_ids).items():
        if d.get("date_taken"):
            out[item_id] = {"date_taken": d["date_taken"], "granularity": int(d.get("granularity") or 0),
                            "master_width": d.get("master_width"), "master_height": d.get("master_height")}
    return out


def run_counts(ledger: Any, run_id: str) -> dict[str, int]:
    """The story's own numbers for one run: matched, replaced, dates verified...
    (named from :meth:`tasks.ledger.Ledger.run_stage_counts`)."""
    counts = ledger.run_stage_counts(run_id, ("match", "master", "replace", "restore_date", "verify"))

    def n(stage: str, outcome_: str | None = None, reason: str | None = None) -> int:
        return sum(k for (s, o, r), k in counts.items() if s == stage and (outcome_ is None or o == outcome_)
                   and (reason is None or r == reason))

    return {
        "matched": n("match", "ok"),
        "matched_direct": n("match", "ok", "matched_direct"),
        "matched_album": n("match", "ok", "matched_album"),
        "not_matched": n("match", "needs_review"),
        "no_master": n("master", "skipped", "no_master"),
        "no_larger_version": n("master", "skipped", "no_larger_version"),
        "too_large_for_flickr": n("master", "skipped", "too_large_for_flickr"),
        "replaced": n("replace", "ok", "replaced"),
        "already_replaced": n("replace", "ok", "already_replaced"),
        "dates_restored": n("restore_date", "ok"),
        "dates_verified": n("verify", "ok"),
    }


# -- the worker ----------------------------------------------------------------------------------
class HiresWorker:
    """One batch's tools: the Flickr client, the catalogue downloader, the master index.

    Built inside a task from the job (secrets resolved there, at the moment of use).
    """

    def __init__(self, job: HiresJob, *, client: fl.FlickrClient | None = None, budget: Any = None,
                 sleep: Any = None) -> None:
        import time

        from tasks.download import Downloader, HttpSettings

        self.job = job
        self.work = job.work_path
        (self.work / "flickr").mkdir(parents=True, exist_ok=True)
        (self.work / "catalogue").mkdir(parents=True, exist_ok=True)
        opts = job.options
        self.sleep = sleep or time.sleep
        if client is None:
            client = job.flickr.connect(job.budget_path, opts, replace_url=job.flickr.replace_url, budget=budget,
                                        sleep=self.sleep)
        self.flickr = client
        c = job.catalogue
        self.downloader = Downloader(
            HttpSettings(per_host=c.per_host, connect_timeout=c.connect_timeout, read_timeout=c.read_timeout,
                         backoff_max=10.0),
            concurrency=opts.concurrency, retries=opts.retries, backoff_seconds=opts.backoff_seconds,
            max_bytes=opts.max_bytes, sleep=self.sleep)
        self._index = None
        self._hashes: dict[str, dict] = {}
        self._url_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._limit: int | None = None

    def close(self) -> None:
        self.downloader.close()
        if self._index is not None:
            self._index.close()

    @property
    def index(self):
        from tasks.master_index import MasterIndex

        with self._lock:
            if self._index is None:
                self._index = MasterIndex(self.job.index_path)
            return self._index

    def _map(self, fn, items: list[dict]) -> list:
        workers = max(1, min(self.job.options.concurrency, len(items)))
        if workers == 1:
            return [fn(i) for i in items]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hires") as pool:
            return list(pool.map(fn, items))

    # -- listing --------------------------------------------------------------------------------
    def list_page(self, page: int) -> dict:
        """One page of the account as ledger items: ``{page, pages, total, items}``."""
        f = self.job.flickr
        got = self.flickr.photos_page(page, per_page=f.per_page, user_id=f.user_id, photoset_id=f.photoset_id)
        return {"page": got["page"], "pages": got["pages"], "total": got["total"],
                "items": [photo_item(p) for p in got["photos"]]}

    def upload_limit(self) -> int:
        """The smaller of the configured limit and the account's (people.getLimits), asked once."""
        if self._limit is None:
            limit = self.job.flickr.max_upload_bytes
            try:
                account = self.flickr.upload_limit()
            except fl.FlickrProblem:
                account = None  # the configured limit still holds
            self._limit = min(limit, account) if account else limit
        return self._limit

    # -- step 1: match -------------------------------------------------------------------------
    def _hash_url(self, url: str, dest_dir: Path, *, keep: bool = True) -> dict:
        """Download an image once per batch and hash it; catalogue images stay cached on disk
        by URL (albums are shared by many photos), Flickr originals (``keep=False``,
        possibly large) are deleted once hashed."""
        from tasks.hashing import hash_file

        with self._lock:
            lock = self._url_locks.setdefault(url, threading.Lock())
        with lock:
            if url in self._hashes:
                return self._hashes[url]
            name = hashlib.sha1(url.encode()).hexdigest()[:20]
            dest = dest_dir / name
            if not dest.exists():
                self.downloader.download(url, dest)
            rec = hash_file(dest)
            rec["url"] = url
            if not keep:
                dest.unlink(missing_ok=True)
            self._hashes[url] = rec
            return rec

    def _catalogue_images(self, page_url: str) -> list[tuple[str, str]]:
        """The (Digital ID, image URL) pairs a catalogue page shows, in page order."""
        from parsel import Selector

        resp = self.downloader.get_page(page_url)
        sel = Selector(text=resp.text)
        seen: dict[str, str] = {}
        for src in sel.xpath(self.job.catalogue.image_xpath).getall():
            url = urljoin(resp.url or page_url, src.strip())
            did = fl.digital_id(url, self.job.catalogue.digital_id_regex)
            if did and did not in seen:
                seen[did] = url
        return list(seen.items())

    def match(self, item: dict) -> dict:
        """Step 1 for one photo: ``{outcome, matches, assets, digital_id}``."""
        sw = Stopwatch()
        iid = item["item_id"]
        detail: dict[str, Any] = {"flickr_url": item.get("source_ref"), "flickr_image": item.get("url_o")}
        res: dict[str, Any] = {"matches": [], "assets": [], "digital_id": None}

        def done(result: str, reason: str, **more: Any) -> dict:
            res["outcome"] = outcome(iid, "match", result, reason, detail=detail | more, duration_ms=sw.ms,
                                     sha256=detail.get("flickr_sha256"))
            return res

        # the Flickr image
        try:
            query = self._hash_url(item["url_o"], self.work / "flickr", keep=False)
        except (PermanentError, TransientError) as exc:
            return done("failed", f"flickr_image_{exc.reason}", error=redact(str(exc))[:300])
        if query.get("status") != "ok":
            return done("failed", f"flickr_image_{query.get('error')}", error=query.get("message"))
        res["assets"].append(query)
        detail["flickr_sha256"] = query["sha256"]
        # the catalogue page
        link = fl.catalogue_link(item.get("description"), self.job.catalogue.link_regex)
        if not link:
            return done("needs_review", "no_catalogue_link")
        detail["catalogue_url"] = link
        try:
            images = self._catalogue_images(link)
        except PermanentError as exc:
            reason = "catalogue_not_found" if exc.reason == "not_found" else f"catalogue_{exc.reason}"
            return done("needs_review", reason, error=redact(str(exc))[:300])
        except TransientError as exc:
            return done("failed", "catalogue_unavailable", error=redact(str(exc))[:300])
        if not images:
            return done("needs_review", "no_catalogue_image")
        kind = "item" if len(images) == 1 else "album"
        detail["page_kind"] = kind
        candidates, missing = [], []
        for did, url in images:
            try:
                rec = self._hash_url(url, self.work / "catalogue")
            except (PermanentError, TransientError) as exc:
                missing.append({"digital_id": did, "url": url, "reason": exc.reason})
                continue
            if rec.get("status") != "ok":
                missing.append({"digital_id": did, "url": url, "reason": rec.get("error")})
                continue
            candidates.append(dict(rec, id=did))
            res["assets"].append(rec)
        if missing:
            detail["missing_images"] = missing[:20]
        if not candidates:
            return done("needs_review", "catalogue_image_missing")
        from tasks.resolve import resolve

        verdict = resolve(query, candidates, **self.job.matching)
        by_id = {c["id"]: c for c in candidates}
        method = "direct" if kind == "item" else "album"
        for c in verdict["candidates"]:
            cand = by_id.get(c["id"], {})
            res["matches"].append({
                "query": iid, "candidate": c["id"], "distance": c["distance"], "rank": c["rank"],
                "chosen": verdict["verdict"] == "match" and c["id"] == verdict["best"], "method": method,
                "detail": {"candidate_url": cand.get("url"), "candidate_sha256": cand.get("sha256"),
                           "query_sha256": query["sha256"], "catalogue_url": link, "verdict": verdict["verdict"],
                           "flickr_url": item.get("source_ref")}})
        detail.update(verdict=verdict["verdict"], best=verdict["best"], distance=verdict["distance"],
                      runner_up_distance=verdict["runner_up_distance"], candidates=len(candidates),
                      top=verdict["candidates"][:5],
                      rerank=(verdict.get("rerank") or {}).get("scores"))
        if verdict["verdict"] == "match":
            res["digital_id"] = verdict["best"]
            detail["digital_id"] = verdict["best"]
            detail["catalogue_image"] = by_id[verdict["best"]].get("url")
            return done("ok", "matched_direct" if kind == "item" else "matched_album")
        return done("needs_review", verdict["verdict"])

    # -- step 2: master -------------------------------------------------------------------------
    def master(self, item: dict, did: str, remembered: dict | None) -> dict:
        """Step 2 for one matched photo: ``{outcome, ready}`` (``ready``: the item for step 3)."""
        from PIL import Image

        sw = Stopwatch()
        iid = item["item_id"]
        paths = self.index.lookup_one(did)
        detail: dict[str, Any] = {"digital_id": did, "flickr_url": item.get("source_ref"),
                                  "flickr_width": item.get("width"), "flickr_height": item.get("height")}

        def done(result: str, reason: str, ready: dict | None = None, **more: Any) -> dict:
            return {"outcome": outcome(iid, "master", result, reason, detail=detail | more, duration_ms=sw.ms,
                                       bytes=more.get("bytes")), "ready": ready}

        if not paths:
            return done("skipped", "no_master")
        found = []
        for p in paths:
            try:
                with Image.open(p) as im:
                    found.append((im.width * im.height, im.width, im.height, Path(p).stat().st_size, p))
            except Exception:  # noqa: BLE001 - an unreadable master is just not a candidate
                continue
        detail["master_paths"] = paths[:10]
        if not found:
            return done("failed", "master_unreadable")
        _, mw, mh, size, path = max(found)
        detail.update(master_path=path, master_width=mw, master_height=mh, bytes=size)
        fw, fh = item.get("width") or 0, item.get("height") or 0
        already = remembered is not None and (fw, fh) == (mw, mh)
        if not already and not (mw > fw and mh > fh):
            return done("skipped", "no_larger_version")
        limit = self.upload_limit()
        if size > limit:
            return done("skipped", "too_large_for_flickr", limit_bytes=limit)
        if remembered:
            date = {"taken": remembered["date_taken"], "granularity": remembered["granularity"], "from": "ledger"}
        else:
            try:
                date = self.flickr.date_taken(item["photo_id"]) | {"from": "flickr"}
            except fl.FlickrProblem as exc:
                return done("failed", exc.reason, error=redact(str(exc))[:300], attempts=exc.attempts)
        detail.update(date_taken=date["taken"], granularity=date["granularity"], date_from=date["from"])
        ready = dict(item, digital_id=did, master_path=path, master_width=mw, master_height=mh, master_bytes=size,
                     date_taken=date["taken"], date_granularity=date["granularity"])
        return done("ok", "already_replaced" if already else "master_found", ready=ready)

    def prepare(self, items: list[dict], remembered: dict[str, dict] | None = None) -> dict:
        """Steps 1-2 for a batch: ``{outcomes, matches, assets, ready}``."""
        remembered = remembered or {}

        def one(item: dict) -> dict:
            try:
                m = self.match(item)
                outs = [m["outcome"]]
                ready = None
                if m["digital_id"]:
                    got = self.master(item, m["digital_id"], remembered.get(item["item_id"]))
                    outs.append(got["outcome"])
                    ready = got["ready"]
                return {"outcomes": outs, "matches": m["matches"], "assets": m["assets"], "ready": ready}
            except Exception as exc:  # noqa: BLE001 - a bug must not lose the batch
                return {"outcomes": [outcome(item["item_id"], "match", "failed", "error",
                                             detail={"error": redact(f"{type(exc).__name__}: {exc}")[:300]})],
                        "matches": [], "assets": [], "ready": None}

        results = self._map(one, items)
        return _merge(results)

    # -- steps 3-5: replace, restore the date, verify ------------------------------------------------
    def replace_one(self, item: dict, *, dry_run: bool = False) -> list[dict]:
        """Steps 3-5 for one photo: its ``replace``, ``restore_date`` and ``verify`` outcomes."""
        iid, pid = item["item_id"], item["photo_id"]
        master = (item["master_width"], item["master_height"])
        base = {"flickr_url": item.get("source_ref"), "master_path": item["master_path"],
                "digital_id": item.get("digital_id"), "master_width": master[0], "master_height": master[1]}
        outs: list[dict] = []
        f = self.job.flickr
        timeout = fl.upload_timeout(item["master_bytes"], base_seconds=f.upload_base_seconds,
                                    min_bytes_per_second=f.upload_min_bytes_per_second)
        if dry_run:
            return [outcome(iid, "replace", "skipped", "dry_run", detail=base | {"timeout_s": timeout})]
        # 3. replace, unless Flickr already holds the master
        sw = Stopwatch()
        try:
            before = self.flickr.original_size(pid)
            if before == master:
                outs.append(outcome(iid, "replace", "ok", "already_replaced", duration_ms=sw.ms,
                                    detail=base | {"flickr_dims_before": before}))
            else:
                got = self.flickr.replace(pid, item["master_path"], timeout=timeout,
                                          landed=lambda: self.flickr.original_size(pid) == master)
                outs.append(outcome(iid, "replace", "ok", "replaced", bytes=item["master_bytes"],
                                    duration_ms=sw.ms,
                                    detail=base | {"flickr_dims_before": before, "timeout_s": timeout,
                                                   "landed_earlier": got.get("landed_earlier", False)}))
        except fl.FlickrProblem as exc:
            outs.append(outcome(iid, "replace", "failed", exc.reason, duration_ms=sw.ms, attempt=exc.attempts,
                                detail=base | {"error": redact(str(exc))[:300], "timeout_s": timeout}))
            return outs
        # 4. restore the date the replace wiped out
        sw = Stopwatch()
        wanted = {"taken": item["date_taken"], "granularity": int(item["date_granularity"])}
        try:
            self.flickr.set_date_taken(pid, wanted["taken"], wanted["granularity"])
            outs.append(outcome(iid, "restore_date", "ok", "date_restored", duration_ms=sw.ms,
                                detail=base | {"date_taken": wanted["taken"], "granularity": wanted["granularity"]}))
        except fl.FlickrProblem as exc:
            outs.append(outcome(iid, "restore_date", "failed", exc.reason, duration_ms=sw.ms, attempt=exc.attempts,
                                detail=base | {"error": redact(str(exc))[:300], "date_taken": wanted["taken"]}))
            return outs
        # 5. verify: the date and the new original's size, read back
        sw = Stopwatch()
        try:
            now = self.flickr.date_taken(pid)
            dims = self.flickr.original_size(pid)
        except fl.FlickrProblem as exc:
            outs.append(outcome(iid, "verify", "failed", exc.reason, duration_ms=sw.ms, attempt=exc.attempts,
                                detail=base | {"error": redact(str(exc))[:300]}))
            return outs
        seen = {"date_taken_now": now["taken"], "granularity_now": now["granularity"], "flickr_dims_now": dims,
                "date_taken": wanted["taken"], "granularity": wanted["granularity"]}
        if now["taken"] == wanted["taken"] and now["granularity"] == wanted["granularity"] and dims == master:
            outs.append(outcome(iid, "verify", "ok", "date_verified", final=True, duration_ms=sw.ms,
                                detail=base | seen))
        else:
            reason = "date_mismatch" if dims == master else "size_mismatch"
            outs.append(outcome(iid, "verify", "failed", reason, duration_ms=sw.ms, detail=base | seen))
        return outs

    def replace_batch(self, items: list[dict], *, dry_run: bool = False) -> dict:
        """Steps 3-5 for a batch: ``{outcomes, calls, retries}``."""

        def one(item: dict) -> list[dict]:
            try:
                return self.replace_one(item, dry_run=dry_run)
            except Exception as exc:  # noqa: BLE001
                return [outcome(item["item_id"], "replace", "failed", "error",
                                detail={"error": redact(f"{type(exc).__name__}: {exc}")[:300]})]

        outs = [o for group in self._map(one, items) for o in group]
        return {"outcomes": outs, "calls": self.flickr.stats.calls, "retries": self.flickr.stats.retries}


def _merge(results: list[dict]) -> dict:
    out: dict[str, list] = {"outcomes": [], "matches": [], "assets": [], "ready": []}
    seen_assets: set[str] = set()
    for r in results:
        out["outcomes"].extend(r["outcomes"])
        out["matches"].extend(r["matches"])
        for a in r["assets"]:
            if a.get("sha256") and a["sha256"] not in seen_assets:
                seen_assets.add(a["sha256"])
                out["assets"].append(a)
        if r["ready"]:
            out["ready"].append(r["ready"])
    return out


def ensure_master_index(job: HiresJob) -> dict:
    """Build the master index if it is missing or older than the listing; returns its stats."""
    from tasks import master_index as mi

    path = job.index_path
    m = job.masters
    stale = not path.exists() or (m.listing is not None and m.listing.exists()
                                  and m.listing.stat().st_mtime > path.stat().st_mtime)
    if stale:
        if m.listing is not None:
            return {"built": True, **mi.build_from_listing(m.listing, path, id_regex=m.id_regex)}
        if m.store is not None:
            return {"built": True, **mi.build_from_folder(m.store, path, id_regex=m.id_regex)}
        raise mi.MasterIndexError(f"no master index at {path} and no listing or store to build it from")
    with mi.MasterIndex(path) as index:
        return {"built": False, **index.stats()}
