"""``source.kind: flickr``: a Flickr account (or one of its albums), through Flickr's API.

    source:
      kind: flickr
      api_key: {env: FLICKR_API_KEY}
      api_secret: {env: FLICKR_API_SECRET}
      oauth_token: {env: FLICKR_OAUTH_TOKEN}          # read permission is enough
      oauth_token_secret: {env: FLICKR_OAUTH_TOKEN_SECRET}
      user_id: me                  # or photoset_id: "7215..." for one album
      size: original               # original | largest
      calls_per_hour: 3600         # budget_file / prefect_rate_limit: share it with other jobs

**Listing** takes pages of 500 (``people.getPhotos``, or ``photosets.getPhotos`` for one
album) with ``extras`` that say everything a photo needs (dates and their granularity,
geo, tags, description, visibility, media, last update, the URL of the original and of
every smaller size offered), so there is no call per photo; private photos come too, the
token being the owner's. Albums are read once before: ``photosets.getList`` and each
album's ``photosets.getPhotos`` (ids only), so a photo knows *every* album it is in. The
listing's calls are a handful per thousand photos.

**Fetching** downloads the chosen file from Flickr's static host (no API call):

* ``size: original``: the original where the account offers it; otherwise the largest
  copy offered, with the reason ``size_limited`` and the size obtained in the outcome;
* ``size: largest``: the largest copy Flickr renders (JPEG, turned as Flickr shows it)
  even where the original is offered (reason ``largest_copy``);
* a video's file is not in the listing: one ``photos.getSizes`` call finds its
  ``Video Original`` stream (else the largest stream offered: ``size_limited``).

**Metadata** travels with each item as ``item["meta"]`` (:class:`photo_escape.outcomes.ItemMeta`):
Flickr's date taken as ``time_local`` (a wall clock with no zone) with its granularity
(``exact``, ``month``, ``year``, ``circa``: a year-only date is kept as the year, never
taken for 1 January at midnight), provenance ``source:flickr``, title, description, tags,
place and its accuracy, album titles, visibility. A date Flickr marks unknown (it then
shows the upload date) is not handed over.

**Reruns**: an item's fingerprint is Flickr's ``lastupdate`` and the size offered, so a
rerun fetches again only photos changed on Flickr (or whose original became available).
A photo deleted on Flickr since an earlier run is not listed any more: the run's report
names it (it compares the run's listing with the earlier ones: ``listing_complete`` in
the facts says the listing went to its end), and nothing is ever deleted at the
destination.

**Errors**: 105/106, HTTP 5xx and network errors are retried with backoff, each attempt
spending the call budget; errors about one photo (1 not found, 2 permission) are that
photo's reason; errors about the account (96-100: signature, token, permission, key)
stop the run with one line saying what to check.
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Literal

import requests
from pydantic import Field

from photo_escape.outcomes import PermanentError, Stopwatch, TransientError, outcome
from photo_escape.plugins import KindConfig, Source, SourceUnreadable
from photo_escape.secrets import redact
from tasks import flickr as fl
from tasks.download import Downloader, HttpSettings
from tasks.files import is_iso_media, sniff_image

#: Flickr's date-taken granularity codes
GRANULARITY = {0: "exact", 4: "month", 6: "year", 8: "circa"}
#: the copies Flickr renders, largest first (extras key, Flickr's label)
COPIES = (("6k", "X-Large 6K"), ("5k", "X-Large 5K"), ("4k", "X-Large 4K"), ("3k", "X-Large 3K"),
          ("k", "Large 2048"), ("h", "Large 1600"), ("l", "Large"), ("c", "Medium 800"), ("z", "Medium 640"),
          ("m", "Medium"), ("n", "Small 320"), ("s", "Small"))
EXTRAS = ",".join(["description", "date_taken", "date_upload", "last_update", "geo", "tags", "media",
                   "original_format", "o_dims", "url_o"] + [f"url_{k}" for k, _ in COPIES])
#: the label of a video's own file in photos.getSizes (its other streams are Flickr's encodings)
VIDEO_ORIGINAL = "Video Original"
FLICKR_PAGE = "https://www.flickr.com/photos/{owner}/{id}/"


class FlickrSourceConfig(fl.FlickrConnection, KindConfig):
    kind: Literal["flickr"]
    size: Literal["original", "largest"] = Field(
        "original", description="original: the original where offered, else the largest copy (size_limited); "
                                "largest: the largest copy Flickr renders")
    albums: bool = Field(True, description="read the account's albums once, so each photo knows every album it is in")
    http: HttpSettings = Field(default_factory=HttpSettings, description="downloads from Flickr's static host")


class FlickrUnavailable(PermanentError, SourceUnreadable):
    """The account could not be read (listed, its albums, a photo's files): the run stops
    with this one line, recorded as crashed with what it did."""


class FlickrAccessRefused(FlickrUnavailable):
    """Flickr refused the account or key: the run cannot go on (one line says what to check)."""


def account_problem(exc: fl.FlickrProblem, what: str, hint: str | None = None) -> FlickrUnavailable:
    """The one-line error a run stops with when ``what`` (a listing, the albums) failed;
    ``hint`` says how to go on anyway when the account itself is not the trouble."""
    code = exc.code
    if code in fl.ACCOUNT_CODES:
        check = {98: "source.oauth_token and source.oauth_token_secret (authorise the app again)",
                 99: "that the token has read permission on this account's photos",
                 100: "source.api_key and source.api_secret"}.get(code, "source.api_secret (the request's signature)")
        return FlickrAccessRefused(f"flickr_{code}", f"Flickr refused access while {what} "
                                                     f"(error {code}: {fl.ACCOUNT_CODES[code]}): check {check}")
    if code in (1, 2):
        return FlickrUnavailable(f"flickr_{code}", f"Flickr has no such account or album while {what} "
                                                f"(error {code}): check source.user_id / source.photoset_id")
    tries = f"{exc.attempts} attempt" + ("s" if exc.attempts != 1 else "")
    return FlickrUnavailable(exc.reason, f"Flickr failed while {what} ({exc.reason}, after {tries}): "
                                      f"{' '.join(redact(str(exc)).split())[:200]}" + (f" ({hint})" if hint else ""))


# -- what a listed photo becomes ------------------------------------------------------------------
def visibility(photo: dict) -> str:
    """Who may see a photo, from its ``ispublic`` / ``isfriend`` / ``isfamily`` flags."""
    flag = {k: fl.as_int(photo.get(k)) == 1 for k in ("ispublic", "isfriend", "isfamily")}
    if flag["ispublic"]:
        return "public"
    if flag["isfriend"] and flag["isfamily"]:
        return "friends & family"
    return "friends" if flag["isfriend"] else "family" if flag["isfamily"] else "private"


def place(photo: dict) -> dict[str, Any]:
    """``latitude``, ``longitude``, ``location_accuracy`` of a listed photo ({} when it has
    none: Flickr answers zeros)."""
    try:
        lat, lon = float(photo.get("latitude") or 0), float(photo.get("longitude") or 0)
    except (TypeError, ValueError):
        return {}
    if lat == 0 and lon == 0:
        return {}
    out: dict[str, Any] = {"latitude": lat, "longitude": lon}
    acc = fl.as_int(photo.get("accuracy"))
    if acc:
        out["location_accuracy"] = acc
    return out


def date_meta(taken: str | None, granularity: int | str | None, *, unknown: bool = False,
              inferred: bool = False) -> dict[str, Any]:
    """Flickr's date taken as ItemMeta: ``time_local`` (ISO, no zone) and its granularity.
    Nothing when Flickr does not know the date (it shows the upload date instead)."""
    if not taken or unknown:
        return {}
    m = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})(?:[ T](\d{2}):(\d{2}):(\d{2}))?", taken.strip())
    if not m or m.group(1) == "0000":
        return {}
    y, mo, d, hh, mm, ss = (g or "00" for g in m.groups())
    name = granularity if granularity in GRANULARITY.values() else \
        GRANULARITY.get(fl.as_int(granularity) or 0, "exact")
    return {"time_local": f"{y}-{mo}-{d}T{hh}:{mm}:{ss}", "time_granularity": name,
            "time_granularity_from": "inferred" if inferred else "source", "time_provenance": "source:flickr"}


def file_stem(title: str, photo_id: str) -> str:
    """A file name stem for a photo: its title made safe, and its id (titles repeat)."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", title or "").strip(".-_")[:60]
    return f"{clean}_{photo_id}" if clean else photo_id


def choose_size(photo: dict, size: str) -> tuple[str | None, str | None, str | None, int | None, int | None]:
    """Which file to take of a listed photo: (extras key, label, URL, width, height);
    keys None when the listing offers nothing."""
    candidates = ([("o", "Original")] if size == "original" else []) + list(COPIES)
    if size == "largest" and not any(photo.get(f"url_{k}") for k, _ in COPIES):
        candidates.append(("o", "Original"))  # nothing smaller offered: the original is the largest
    for key, label in candidates:
        url = photo.get(f"url_{key}")
        if url:
            return key, label, url, fl.as_int(photo.get(f"width_{key}")), fl.as_int(photo.get(f"height_{key}"))
    return None, None, None, None, None


def photo_item(photo: dict, albums: dict[str, list[str]], size: str) -> dict:
    """A listed Flickr photo (an ``extras``-rich page entry) as an item with its ItemMeta."""
    pid = str(photo["id"])
    media = photo.get("media") or "photo"
    title = photo.get("title") or ""
    description = (photo.get("description") or {}).get("_content", "") if isinstance(
        photo.get("description"), dict) else str(photo.get("description") or "")
    meta: dict[str, Any] = date_meta(photo.get("datetaken"), photo.get("datetakengranularity"),
                                     unknown=fl.as_int(photo.get("datetakenunknown")) == 1)
    if title:
        meta["title"] = title
    if description:
        meta["description"] = description
    tags = [t for t in str(photo.get("tags") or "").split() if t]
    if tags:
        meta["tags"] = tags
    meta["albums"] = list(albums.get(pid, []))
    meta["visibility"] = visibility(photo)
    meta.update(place(photo))
    lastupdate = fl.as_int(photo.get("lastupdate")) or 0
    if media == "video":
        key, label, url, w, h = None, None, None, None, None
        ext = (photo.get("originalformat") or "mp4").lower()
    else:
        key, label, url, w, h = choose_size(photo, size)
        ext = (photo.get("originalformat") or "jpg").lower() if key == "o" else "jpg"
    return {
        "item_id": f"flickr:{pid}",
        "source_ref": FLICKR_PAGE.format(owner=photo.get("owner") or "me", id=pid),
        "name": f"{file_stem(title, pid)}.{ext}",
        "photo_id": pid,
        "media": media,
        "url": url,
        "size": key,
        "size_label": label,
        "width": w,
        "height": h,
        "original_offered": bool(photo.get("url_o")) if media == "photo" else None,
        "original_width": fl.as_int(photo.get("o_width")),
        "original_height": fl.as_int(photo.get("o_height")),
        "date_taken": photo.get("datetaken"),
        "date_taken_granularity": meta.get("time_granularity"),
        "lastupdate": lastupdate,
        # a change on Flickr (lastupdate) or another size offered (an account gone Pro) means: fetch again
        "fingerprint": f"{lastupdate}:{key or media}",
        "meta": meta,
    }


# -- downloads ----------------------------------------------------------------------------------
class MediaDownloader(Downloader):
    """A :class:`Downloader` that also takes videos (an ISO media, AVI or Matroska body)."""

    @staticmethod
    def _check_head(head: bytes, resp: requests.Response) -> str:
        fmt = sniff_image(head)
        if fmt is not None:
            return fmt
        if is_iso_media(head) or (head[:4] == b"RIFF" and head[8:12] == b"AVI ") or head[:4] == b"\x1aE\xdf\xa3":
            return "video"
        raise PermanentError("not_a_photo_or_video",
                             f"{resp.headers.get('Content-Type', '?')}, starts with {head[:16]!r}")


class FlickrSource(Source):
    kind = "flickr"
    Config = FlickrSourceConfig

    def __init__(self, config: FlickrSourceConfig, **kw: Any) -> None:
        super().__init__(config, **kw)
        self.config: FlickrSourceConfig = config
        self._client: fl.FlickrClient | None = None
        self._downloader: MediaDownloader | None = None
        self._lock = threading.Lock()
        self.facts: dict[str, Any] = {}
        self.listing_complete = False

    @property
    def budget_path(self) -> Path:
        """The call budget's file: the job's (shared by its batches and runs) unless named."""
        return self.workdir.parent / "flickr-calls.json"

    @property
    def client(self) -> fl.FlickrClient:
        with self._lock:
            if self._client is None:
                self._client = self.config.connect(self.budget_path, self.options)
            return self._client

    @property
    def downloader(self) -> MediaDownloader:
        with self._lock:
            if self._downloader is None:
                self._downloader = MediaDownloader.from_options(self.config.http, self.options)
            return self._downloader

    def close(self) -> None:
        if self._downloader is not None:
            self._downloader.close()

    # -- listing ----------------------------------------------------------------------------
    def album_index(self) -> tuple[dict[str, list[str]], int]:
        """``{photo_id: [album titles]}`` for every album of the account, and how many albums:
        the album list once, then each album's photo ids (500 a call)."""
        c = self.config
        who = {} if c.user_id == "me" else {"user_id": c.user_id}
        sets: list[dict] = []
        page = 1
        try:
            while True:
                body = self.client.call("photosets.getList", page=page, per_page=500, **who)["photosets"]
                sets.extend(body.get("photoset") or [])
                if page >= int(body.get("pages") or 1):
                    break
                page += 1
            index: dict[str, list[str]] = defaultdict(list)
            for s in sets:
                title = (s.get("title") or {}).get("_content") or str(s["id"])
                page = 1
                while True:
                    got = self.client.photos_page(page, per_page=500, user_id=c.user_id, photoset_id=str(s["id"]),
                                                  extras="")
                    for p in got["photos"]:
                        index[str(p["id"])].append(title)
                    if page >= got["pages"] or not got["photos"]:
                        break
                    page += 1
        except fl.FlickrProblem as exc:
            raise account_problem(exc, "reading the account's albums",
                                  hint="source.albums: false goes on without them") from None
        return index, len(sets)

    def list_pages(self) -> Iterator[list[dict]]:
        """The account's (or album's) photos, a page of items per page of Flickr's listing."""
        c = self.config
        albums, n_albums = self.album_index() if c.albums else ({}, 0)
        counts: Counter = Counter()
        granularity: Counter = Counter()
        seen: set[str] = set()
        page, pages = 1, 1
        while page <= pages:
            try:
                got = self.client.photos_page(page, per_page=c.per_page, user_id=c.user_id,
                                              photoset_id=c.photoset_id, extras=EXTRAS)
            except fl.FlickrProblem as exc:
                raise account_problem(exc, f"listing page {page} of the photos") from None
            pages = got["pages"]
            items = []
            for photo in got["photos"]:
                if str(photo["id"]) in seen:  # a photo added meanwhile shifts the pages
                    continue
                seen.add(str(photo["id"]))
                item = photo_item(photo, albums, c.size)
                items.append(item)
                counts[item["media"]] += 1
                counts["private"] += item["meta"]["visibility"] != "public"
                counts["in_albums"] += bool(item["meta"]["albums"])
                if item["media"] == "photo":
                    counts["originals_offered"] += bool(item["original_offered"])
                granularity[item["meta"].get("time_granularity", "unknown")] += 1
            if items:
                yield items
            if not got["photos"]:
                break
            page += 1
        self.listing_complete = True
        self.facts = {"listed": len(seen), "photos": counts["photo"], "videos": counts["video"],
                      "private": counts["private"], "originals_offered": counts["originals_offered"],
                      "in_albums": counts["in_albums"], "albums": n_albums, "size": c.size,
                      "dates_by_granularity": dict(sorted(granularity.items())),
                      "listing_api_calls": self.client.stats.calls}

    def report_facts(self) -> dict[str, Any]:
        """What the listing found (``flickr``), and whether it went to its end: only then can
        the report say which photos earlier runs listed are gone from Flickr."""
        return {"flickr": dict(self.facts, user_id=self.config.user_id, photoset_id=self.config.photoset_id),
                "listing_complete": self.listing_complete}

    # -- fetching ----------------------------------------------------------------------------
    def fetch(self, items: list[dict]) -> list[dict]:
        """Download a batch, ``options.concurrency`` at a time; one outcome per item, in order."""
        folder = self.workdir / "flickr"
        folder.mkdir(parents=True, exist_ok=True)
        workers = max(1, min(int(getattr(self.options, "concurrency", 8)), len(items) or 1))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flickr-fetch") as pool:
            return list(pool.map(lambda i: self._fetch_one(i, folder), items))

    def video_stream(self, item: dict) -> tuple[str, str, str, int | None, int | None]:
        """A video's file: (key, label, URL, width, height) from photos.getSizes: its
        ``Video Original`` where offered, else the largest stream offered."""
        sizes = self.client.call("photos.getSizes", photo_id=item["photo_id"])["sizes"]["size"]
        streams = [s for s in sizes if s.get("media") == "video" and s.get("source")
                   and "player" not in str(s.get("label", "")).lower()]
        if not streams:
            raise PermanentError("no_video_stream", "Flickr lists no video file for it")
        best = next((s for s in streams if s.get("label") == VIDEO_ORIGINAL), None)
        if best is None:
            best = max(streams, key=lambda s: (fl.as_int(s.get("width")) or 0) * (fl.as_int(s.get("height")) or 0))
        key = "o" if best.get("label") == VIDEO_ORIGINAL else "stream"
        return key, best["label"], best["source"], fl.as_int(best.get("width")), fl.as_int(best.get("height"))

    def _fetch_one(self, item: dict, folder: Path) -> dict:
        sw = Stopwatch()
        key, label, url, w, h = item.get("size"), item.get("size_label"), item.get("url"), item.get("width"), \
            item.get("height")
        try:
            if item.get("media") == "video":
                key, label, url, w, h = self.video_stream(item)
            if not url:
                raise PermanentError("no_size_offered", "Flickr offers no file of this photo to download")
            name = str(item.get("name") or "")
            if not name or name != os.path.basename(name) or name.startswith("."):
                name = f"{item['photo_id']}.jpg"
            got = self.downloader.download(url, folder / name)
        except fl.FlickrProblem as exc:
            if exc.code in fl.ACCOUNT_CODES:
                raise account_problem(exc, f"asking for photo {item.get('photo_id')}'s files") from None
            reason = {1: "flickr_photo_not_found", 2: "flickr_permission_denied"}.get(exc.code, exc.reason)
            return outcome(item["item_id"], "fetch", "failed", reason, attempt=exc.attempts, duration_ms=sw.ms,
                           detail={"message": redact(str(exc))[:300], "flickr_code": exc.code}) | {"item": item}
        except (PermanentError, TransientError) as exc:
            return outcome(item["item_id"], "fetch", "failed", exc.reason, duration_ms=sw.ms,
                           attempt=getattr(exc, "attempts", 1),
                           detail={"url": redact(url) if url else None, "message": redact(str(exc))[:300],
                                   "retried": getattr(exc, "retried", [])}) | {"item": item}
        if key == "o":
            reason = "original"
        else:
            reason = "largest_copy" if self.config.size == "largest" and item.get("media") == "photo" \
                else "size_limited"
        calls = 1 if item.get("media") == "video" else 0  # a photo's file comes with no API call
        detail = {"size": key, "size_label": label, "width": w, "height": h, "url": redact(url),
                  "original_width": item.get("original_width"), "original_height": item.get("original_height"),
                  "attempts": got.attempts, "retried": got.retried, "format": got.format, "api_calls": calls}
        new = dict(item, local_path=str(got.path), sha256=got.sha256, bytes=got.bytes, size=key, size_label=label,
                   width=w, height=h, url=url)
        return outcome(item["item_id"], "fetch", "ok", reason, detail=detail, bytes=got.bytes, sha256=got.sha256,
                       duration_ms=sw.ms, attempt=got.attempts) | {"item": new}
