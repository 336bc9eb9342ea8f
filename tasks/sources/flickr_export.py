"""``source.kind: flickr_export``: the archives of Flickr's "request my data", read in place.

    source:
      kind: flickr_export
      path: ~/Downloads/flickr-export     # the folder holding the zips (searched below too)

Flickr's export comes as zip archives in no particular order (the layout the projects
that import these exports describe):

* ``data-download-1.zip``, ``data-download-2.zip``...: the originals, named
  ``<title>_<photo id>_o.jpg`` (an untitled photo ``<photo id>_<secret>_o.jpg``; videos
  are seen with and without the ``_o``);
* ``<digits>_<hex>_part1.zip``, ``_part2.zip``...: the account's data: a
  ``photo_<photo id>.json`` per photo (title as ``name``, ``description``,
  ``date_taken``, ``tags``, ``geo`` in micro-degrees, ``privacy``...) spread over the
  parts, and ``albums.json`` (sometimes ``albums_part<n>.json``) listing each album's
  photo ids (the photos' own ``albums`` field is empty in real exports).

The listing reads only the archives' directories and the small JSON files: no archive
is extracted. Every original is matched to its JSON by photo id (of the numbers in a
file name, the one that has a JSON; else the last). Nothing is lost on the way:

* an original with no JSON is listed and delivered, its fetch reason ``no_metadata``;
* a JSON with no original is listed too, and its fetch fails ``original_not_in_export``
  (the JSON's ``original`` URL is in the detail): the report lists it, and a rerun after
  the missing archive is added fetches it.

Fetching streams each original out of its archive into the work folder (hashing it on
the way; the zip's CRC is checked). Metadata goes as ``item["meta"]`` like the
``flickr`` source's, with one difference: the export does not say a date's granularity,
so a date of ``YYYY-01-01 00:00:00`` is taken for the year, ``YYYY-MM-01 00:00:00`` for
the month (``time_granularity_from: inferred``), which is how Flickr stores those; a
"circa" date reads as its year. (A JSON that does carry a granularity field is believed.)
An item's fingerprint is its original's and its JSON's CRC-32 and size: a rerun over a
newer export redoes only what changed.
"""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
import zipfile
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import Field, field_validator

from photo_escape.outcomes import Stopwatch, outcome
from photo_escape.plugins import existing_path, KindConfig, Source
from tasks import flickr as fl
from tasks.files import sha256_stream
from tasks.sources.flickr import FLICKR_PAGE, GRANULARITY, date_meta, file_stem

PHOTO_EXTS = {"jpg", "jpeg", "png", "gif", "tif", "tiff", "heic", "heif", "webp", "bmp", "dng", "nef", "cr2",
              "arw", "orf", "rw2", "raf"}
VIDEO_EXTS = {"mp4", "mov", "m4v", "avi", "mpg", "mpeg", "3gp", "wmv", "mkv", "webm", "mts", "m2ts", "flv"}
_JSON = re.compile(r"photo_(\d+)\.json")
_ALBUMS = re.compile(r"albums(?:_part\d+)?\.json")
CHUNK = 1 << 20
PRIVACY = {"public": "public", "private": "private", "friends": "friends", "friend": "friends",
           "family": "family", "friend & family": "friends & family", "friends & family": "friends & family",
           "friends and family": "friends & family"}


class FlickrExportConfig(KindConfig):
    kind: Literal["flickr_export"]
    path: Path = Field(description="the folder holding the export's zip archives (or one zip)")
    pattern: str = Field("*.zip", description="which files in the folder (and below) are the archives")

    _exists = field_validator("path")(existing_path)


def ids_in_name(name: str) -> list[str]:
    """The candidate photo ids in an export's file name, most likely first: the numbers
    (5 digits or more) between underscores, the last one first (``<title>_<id>_o.jpg``),
    then the others (``<id>_<secret>_o.jpg``)."""
    stem = os.path.splitext(os.path.basename(name))[0]
    if stem.endswith("_o"):
        stem = stem[:-2]
    numbers = [t for t in stem.split("_") if t.isdigit() and len(t) >= 5]
    return list(reversed(numbers))


def export_stem(name: str) -> str:
    """An original's name without its extension and Flickr's ``_o`` mark."""
    stem = os.path.splitext(os.path.basename(name))[0]
    return stem[:-2] if stem.endswith("_o") else stem


def degrees(value: Any) -> float | None:
    """A coordinate from an export: micro-degrees as an integer (``"49696401"``), or degrees
    with a decimal point (``"49.696401"``, ``49.6964``)."""
    if value in (None, "", 0, "0"):
        return None
    text = str(value).strip()
    try:
        return float(text) if ("." in text or "e" in text.lower()) else int(text) / 1_000_000
    except ValueError:
        return None


def inferred_granularity(taken: str) -> str:
    """What a date taken with no granularity beside it can only have meant: Flickr stores a
    year-only date as ``YYYY-01-01 00:00:00`` and a month as ``YYYY-MM-01 00:00:00``."""
    if re.fullmatch(r"\d{4}-01-01(?: 00:00:00)?", taken.strip()):
        return "year"
    if re.fullmatch(r"\d{4}-\d{2}-01(?: 00:00:00)?", taken.strip()):
        return "month"
    return "exact"


def export_meta(doc: dict, albums: list[str], sidecar: str, titles: dict[str, str] | None = None) -> dict[str, Any]:
    """A photo's JSON from the export as ItemMeta; ``albums`` are the titles ``albums.json``
    gives it, ``titles`` album ids to titles (for a JSON naming its albums by id)."""
    taken = str(doc.get("date_taken") or "")
    given = next((v for k, v in doc.items() if "granularity" in k.lower() and v not in (None, "")), None)
    if given is not None:
        meta = date_meta(taken, given if str(given) in GRANULARITY.values() else fl.as_int(given))
    else:
        meta = date_meta(taken, inferred_granularity(taken), inferred=True) if taken else {}
    if doc.get("name"):
        meta["title"] = str(doc["name"])
    if doc.get("description"):
        meta["description"] = str(doc["description"])
    tags = [str(t.get("tag") or t.get("raw") or "") if isinstance(t, dict) else str(t) for t in doc.get("tags") or []]
    if any(tags):
        meta["tags"] = [t for t in tags if t]
    geo = doc.get("geo")
    if isinstance(geo, list):
        geo = geo[0] if geo and isinstance(geo[0], dict) else None
    if isinstance(geo, dict):
        lat, lon = degrees(geo.get("latitude")), degrees(geo.get("longitude"))
        if lat is not None and lon is not None:
            meta.update(latitude=lat, longitude=lon)
            if fl.as_int(geo.get("accuracy")):
                meta["location_accuracy"] = fl.as_int(geo.get("accuracy"))
    titles = titles or {}
    own = [(a.get("title") or titles.get(str(a.get("id")))) if isinstance(a, dict) else titles.get(str(a))
           for a in doc.get("albums") or []]
    meta["albums"] = list(dict.fromkeys(albums + [t for t in own if t]))
    privacy = str(doc.get("privacy") or "").strip().lower()
    if privacy:
        meta["visibility"] = PRIVACY.get(privacy, privacy)
    meta["sidecar"] = sidecar
    return meta


class _Index:
    """Where everything is in the archives: ``json[id]`` and ``media[id]`` as
    (archive number, member name, size, CRC-32), the album titles of each photo, and
    originals whose name holds no id."""

    def __init__(self) -> None:
        self.archives: list[Path] = []
        self.json: dict[str, tuple[int, str, int, int]] = {}
        self.media: dict[str, tuple[int, str, int, int]] = {}
        self.unnamed: list[tuple[int, str, int, int]] = []
        self.albums: dict[str, list[str]] = defaultdict(list)
        self.album_titles: dict[str, str] = {}
        self.album_count = 0
        self.duplicates = 0
        self.unreadable: list[str] = []


class FlickrExportSource(Source):
    kind = "flickr_export"
    Config = FlickrExportConfig

    def __init__(self, config: FlickrExportConfig, **kw: Any) -> None:
        super().__init__(config, **kw)
        self.config: FlickrExportConfig = config
        self.facts: dict[str, Any] = {}
        self.listing_complete = False
        self._lock = threading.Lock()
        self._zips: dict[tuple[int, Path], zipfile.ZipFile] = {}

    # -- reading the archives' directories ------------------------------------------------
    def archives(self) -> list[Path]:
        p = self.config.path
        if p.is_file():
            return [p]
        return sorted(x for x in p.rglob(self.config.pattern) if x.is_file())

    def index(self) -> _Index:
        """One pass over every archive's directory (and the albums' JSON)."""
        idx = _Index()
        pending: list[tuple[list[str], tuple[int, str, int, int]]] = []
        album_docs: list[dict] = []
        for n, path in enumerate(self.archives()):
            idx.archives.append(path)
            try:
                with zipfile.ZipFile(path) as z:
                    for info in z.infolist():
                        if info.is_dir():
                            continue
                        base = os.path.basename(info.filename)
                        where = (n, info.filename, info.file_size, info.CRC)
                        ext = base.rsplit(".", 1)[-1].lower() if "." in base else ""
                        if m := _JSON.fullmatch(base):
                            idx.json.setdefault(m.group(1), where)
                        elif _ALBUMS.fullmatch(base):
                            album_docs.append(json.loads(z.read(info)))
                        elif ext in PHOTO_EXTS or ext in VIDEO_EXTS:
                            pending.append((ids_in_name(base), where))
            except (zipfile.BadZipFile, OSError, ValueError) as exc:
                idx.unreadable.append(f"{path.name}: {type(exc).__name__}: {exc}"[:200])
        for candidates, where in pending:  # ids resolved once every JSON is known
            pid = next((c for c in candidates if c in idx.json), candidates[0] if candidates else None)
            if pid is None:
                idx.unnamed.append(where)
            elif pid in idx.media:
                idx.duplicates += 1
            else:
                idx.media[pid] = where
        for doc in album_docs:
            for album in (doc.get("albums") if isinstance(doc, dict) else doc) or []:
                idx.album_count += 1
                title = str(album.get("title") or album.get("id"))
                idx.album_titles[str(album.get("id"))] = title
                for pid in album.get("photos") or []:
                    idx.albums[str(pid)].append(title)
        return idx

    def _zip(self, path: Path) -> zipfile.ZipFile:
        """This thread's open handle on an archive (a zip reader is not shared across threads)."""
        key = (threading.get_ident(), path)
        with self._lock:
            z = self._zips.get(key)
        if z is None:
            z = zipfile.ZipFile(path)
            with self._lock:
                self._zips[key] = z
        return z

    def _close_zips(self) -> None:
        with self._lock:
            zips, self._zips = list(self._zips.values()), {}
        for z in zips:
            z.close()

    # -- listing ------------------------------------------------------------------------
    def list_pages(self, page_size: int = 500) -> Iterator[list[dict]]:
        """Every photo id found (an original, a JSON or both), in id order, then the
        originals whose name holds no id; a page of items at a time."""
        idx = self.index()
        counts: Counter = Counter()
        granularity: Counter = Counter()
        ids = sorted(set(idx.json) | set(idx.media), key=lambda i: (len(i), i))
        try:
            for start in range(0, len(ids), page_size):
                page = [self.item(idx, pid) for pid in ids[start:start + page_size]]
                for item in page:
                    counts[item["media"]] += 1
                    counts[item.get("missing") or "matched"] += 1
                    granularity[item["meta"].get("time_granularity", "unknown")] += 1
                yield page
            unnamed = [self.unnamed_item(idx, where) for where in idx.unnamed]
            for start in range(0, len(unnamed), page_size):
                yield unnamed[start:start + page_size]
        finally:
            self._close_zips()
        self.listing_complete = not idx.unreadable
        self.facts = {"archives": len(idx.archives), "unreadable_archives": idx.unreadable,
                      "listed": len(ids) + len(idx.unnamed), "photos": counts["photo"], "videos": counts["video"],
                      "matched": counts["matched"], "originals_without_json": counts["metadata"] + len(idx.unnamed),
                      "json_without_original": counts["original"], "duplicate_originals": idx.duplicates,
                      "albums": idx.album_count, "dates_by_granularity": dict(sorted(granularity.items()))}

    def _read_json(self, idx: _Index, pid: str) -> dict:
        n, member, _, _ = idx.json[pid]
        try:
            doc = json.loads(self._zip(idx.archives[n]).read(member))
            return doc if isinstance(doc, dict) else {}
        except (zipfile.BadZipFile, OSError, ValueError, KeyError):
            return {"_unreadable": True}

    def item(self, idx: _Index, pid: str) -> dict:
        """The item for one photo id: its original and/or its JSON."""
        media, js = idx.media.get(pid), idx.json.get(pid)
        doc = self._read_json(idx, pid) if js else {}
        meta = export_meta(doc, list(idx.albums.get(pid, [])), f"photo_{pid}.json", idx.album_titles) if js else \
            {"albums": list(idx.albums.get(pid, []))}
        if media:
            n, member, size, crc = media
            ext = member.rsplit(".", 1)[-1].lower()
            name = f"{export_stem(member)}.{ext}"
            ref = f"{idx.archives[n]}!{member}"
        else:
            original = str(doc.get("original") or "")
            ext = original.rsplit(".", 1)[-1].lower() if "." in original.rsplit("/", 1)[-1] else "jpg"
            name, ref = f"{file_stem(str(doc.get('name') or ''), pid)}.{ext}", f"{idx.archives[js[0]]}!{js[1]}"
        item: dict[str, Any] = {
            "item_id": f"flickr:{pid}",
            "source_ref": ref,
            "name": name,
            "photo_id": pid,
            "media": "video" if ext in VIDEO_EXTS else "photo",
            "photopage": doc.get("photopage") or FLICKR_PAGE.format(owner="me", id=pid),
            "date_taken": doc.get("date_taken"),
            "date_taken_granularity": meta.get("time_granularity"),
            "fingerprint": ":".join(f"{w[3]:08x}-{w[2]}" if w else "-" for w in (media, js)),
            "meta": meta,
        }
        if media:
            item.update(archive=str(idx.archives[media[0]]), member=media[1], size=media[2])
        if js:
            item["json"] = f"{idx.archives[js[0]].name}!{js[1]}"
        if not js:
            item["missing"] = "metadata"
        elif not media:
            item.update(missing="original", original_url=doc.get("original"))
        if doc.get("_unreadable"):
            item["json_unreadable"] = True
        return item

    def unnamed_item(self, idx: _Index, where: tuple[int, str, int, int]) -> dict:
        """An original whose file name holds no photo id: delivered as it is, with no metadata."""
        n, member, size, crc = where
        ref = f"{idx.archives[n].name}!{member}"
        ext = member.rsplit(".", 1)[-1].lower()
        return {"item_id": f"flickr-export:{ref}", "source_ref": f"{idx.archives[n]}!{member}",
                "name": os.path.basename(member), "media": "video" if ext in VIDEO_EXTS else "photo",
                "archive": str(idx.archives[n]), "member": member, "size": size,
                "fingerprint": f"{crc:08x}-{size}:-", "missing": "metadata", "meta": {}}

    def report_facts(self) -> dict[str, Any]:
        return {"flickr_export": dict(self.facts, path=str(self.config.path)),
                "listing_complete": self.listing_complete}

    # -- fetching -----------------------------------------------------------------------
    def fetch(self, items: list[dict]) -> list[dict]:
        """Stream each original out of its archive into the work folder; one outcome per item."""
        folder = self.workdir / "flickr-export"
        folder.mkdir(parents=True, exist_ok=True)
        workers = max(1, min(int(getattr(self.options, "concurrency", 4)), len(items) or 1))
        try:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flickr-export") as pool:
                return list(pool.map(lambda item: self._fetch_one(item, folder), items))
        finally:
            self._close_zips()

    def close(self) -> None:
        self._close_zips()

    def _fetch_one(self, item: dict, folder: Path) -> dict:
        sw = Stopwatch()
        iid = item["item_id"]
        if item.get("missing") == "original":
            return outcome(iid, "fetch", "failed", "original_not_in_export", duration_ms=sw.ms, detail={
                "json": item.get("json"), "original_url": item.get("original_url"),
                "message": "the export has this photo's JSON but no original in any of its archives"}) | {"item": item}
        max_bytes = getattr(self.options, "max_bytes", None)
        if max_bytes and int(item.get("size") or 0) > max_bytes:
            return outcome(iid, "fetch", "failed", "too_large", bytes=item.get("size"), duration_ms=sw.ms,
                           detail={"max_bytes": max_bytes}) | {"item": item}
        name = os.path.basename(str(item.get("name") or "")) or f"{uuid.uuid4().hex}.bin"
        target = folder / f"{item.get('photo_id') or uuid.uuid4().hex[:12]}" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{uuid.uuid4().hex}.part")
        try:
            z = self._zip(Path(item["archive"]))
            with z.open(item["member"]) as src, open(tmp, "wb") as dst:  # zipfile checks the CRC at the end
                sha, n = sha256_stream(iter(lambda: src.read(CHUNK), b""), dst)
            os.replace(tmp, target)
        except FileNotFoundError as exc:
            return outcome(iid, "fetch", "failed", "archive_missing", duration_ms=sw.ms,
                           detail={"message": f"{exc.filename or item.get('archive')}: no such file"}) | {"item": item}
        except (zipfile.BadZipFile, KeyError, OSError, EOFError) as exc:
            return outcome(iid, "fetch", "failed", "corrupt_in_archive", duration_ms=sw.ms,
                           detail={"message": f"{type(exc).__name__}: {exc}"[:300]}) | {"item": item}
        finally:
            if tmp.exists():
                tmp.unlink()
        reason = "no_metadata" if item.get("missing") == "metadata" else None
        new = dict(item, local_path=str(target), sha256=sha, bytes=n)
        return outcome(iid, "fetch", "ok", reason, bytes=n, sha256=sha, duration_ms=sw.ms,
                       detail={"archive": Path(item["archive"]).name, "member": item["member"]}) | {"item": new}
