"""``source.kind: takeout``: a Google Photos Takeout export, read in place.

    source:
      kind: takeout
      path: /data/takeout        # a folder holding takeout-*.zip parts (any number), or an extracted Takeout/ tree
      videos: deliver            # deliver (as files) | skip (recorded as skipped, reason `video`)

The zip parts are never extracted: listing reads their directories (and the small
sidecar JSON files), fetching streams one member at a time into the work folder,
hashing it as it goes, so a 200 GB export goes through a disk with a few GB free (the
work folder holds only the batches in flight). How sidecars are found, how album
copies are recognised and what is never listed: :mod:`tasks.takeout`.

Each photo is listed once, ``takeout:<path in the export>`` of its copy outside any
album; ``meta`` carries the sidecar's UTC capture time (``time_provenance``
``sidecar:utc``), place, title, description, favourite flag, album titles, and which
naming rule found the sidecar (``sidecar_rule``). The ledger records album memberships
in its ``albums`` table. A photo with no sidecar is delivered all the same (its own
EXIF decides its time); its ``fetch`` outcome says ``no_sidecar``, which the report's
reasons table lists. Videos (and the video half of motion photos) carry
``media: "video"``: the hash stage lets them through undecoded, so they are delivered
as files with the time their sidecar gives; with ``videos: skip`` they end ``skipped``
with reason ``video``.

A part that cannot be read as a zip stops the listing (before anything is fetched)
with an error naming it; what earlier runs delivered stays delivered and recorded.
"""

from __future__ import annotations

import hashlib
import os
import uuid
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import Field, field_validator

from photo_escape.outcomes import PermanentError, Stopwatch, outcome
from photo_escape.plugins import existing_path, KindConfig, Source
from tasks import takeout
from tasks.files import CHUNK, sha256_file, sha256_stream


class TakeoutSourceConfig(KindConfig):
    kind: Literal["takeout"]
    path: Path = Field(description="a folder of takeout-*.zip parts (or one part), or an extracted Takeout/ tree")
    videos: Literal["deliver", "skip"] = Field(
        "deliver", description="deliver videos and motion-photo videos as files, or record them skipped (reason video)")

    _exists = field_validator("path")(existing_path)


class TakeoutSource(Source):
    kind = "takeout"
    Config = TakeoutSourceConfig

    def __init__(self, config: TakeoutSourceConfig, **kw: Any) -> None:
        super().__init__(config, **kw)
        self.listing = takeout.Listing()

    def list_pages(self, page_size: int = 500) -> Iterator[list[dict]]:
        """Pages of items; every part's directory is read first (a sidecar may be in any part)."""
        index = takeout.scan(self.config.path)
        yield from takeout.items(index, videos=self.config.videos, page_size=page_size, listing=self.listing)

    def fetch(self, items: list[dict]) -> list[dict]:
        """Stream each item's member into the work folder, hashing it on the way (an
        extracted tree's files are hashed where they are)."""
        return [self._fetch_one(item) for item in items]

    def _fetch_one(self, item: dict) -> dict:
        sw = Stopwatch()
        meta = item.get("meta") or {}
        detail = {k: meta[k] for k in ("sidecar", "sidecar_rule") if meta.get(k)}
        if item.get("copies"):
            detail["copies"] = len(item["copies"])
        if item.get("media") == "video" and self.config.videos == "skip":
            return outcome(item["item_id"], "fetch", "skipped", "video", detail=detail,
                           duration_ms=sw.ms) | {"item": item}
        max_bytes = getattr(self.options, "max_bytes", None)
        if max_bytes and item.get("size", 0) > max_bytes:
            return outcome(item["item_id"], "fetch", "failed", "too_large", bytes=item.get("size"),
                           detail={"max_bytes": max_bytes}, duration_ms=sw.ms) | {"item": item}
        try:
            sha, n, path = self._stage(item)
        except FileNotFoundError as exc:
            return self._failed(item, "missing", f"{os.path.basename(exc.filename or '') or 'the part'} is gone", sw)
        except PermanentError as exc:
            return self._failed(item, exc.reason, str(exc), sw)
        except EOFError as exc:
            return self._failed(item, "truncated", str(exc) or "the part ends inside this member", sw)
        except (zipfile.BadZipFile, zlib.error, NotImplementedError) as exc:
            return self._failed(item, "corrupt", str(exc), sw)
        except OSError as exc:
            return self._failed(item, "unreadable", exc.strerror or str(exc), sw)
        # a photo Google kept no sidecar for is delivered all the same; the report lists the reason
        reason = None if meta.get("sidecar") else "no_sidecar"
        if meta.get("sidecar_unreadable"):
            reason = "sidecar_unreadable"
        new = dict(item, local_path=str(path), sha256=sha, bytes=n)
        return outcome(item["item_id"], "fetch", "ok", reason, bytes=n, sha256=sha, detail=detail,
                       duration_ms=sw.ms) | {"item": new}

    def _failed(self, item: dict, reason: str, message: str, sw: Stopwatch) -> dict:
        return outcome(item["item_id"], "fetch", "failed", reason, detail={"message": message[:300]},
                       duration_ms=sw.ms) | {"item": item}

    def _stage(self, item: dict) -> tuple[str, int, Path]:
        """Copy one member to the work folder under a temporary name, hashing it as it
        streams (1 MiB at a time), check its length, rename it into place. A file of an
        extracted tree is only hashed, where it is."""
        if not item.get("part"):
            base = self.config.path.parent if self.config.path.name == "Takeout" else self.config.path
            path = base / item["member"]
            sha, n = sha256_file(path)
            if n != item.get("size"):
                raise PermanentError("changed", f"{n} bytes, {item.get('size')} when listed")
            return sha, n, path
        slot = hashlib.sha256(item["item_id"].encode()).hexdigest()[:16]
        target = self.workdir / "takeout" / slot / takeout.staged_name(item)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{uuid.uuid4().hex}.part")
        try:
            with takeout.open_item(self.config.path, item) as src, open(tmp, "wb") as sink:
                sha, n = sha256_stream(iter(lambda: src.read(CHUNK), b""), sink)
            if n != item.get("size"):
                raise EOFError(f"got {n} of {item.get('size')} bytes")
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()
        return sha, n, target

    def report_facts(self) -> dict[str, Any]:
        return self.listing.facts() if self.listing.parts or self.listing.photos or self.listing.videos else {}
