"""``source.kind: s3``: objects in a bucket (under a prefix), for S3-to-S3 and
S3-to-folder migrations.

    source:
      kind: s3
      bucket: old-photo-bucket
      prefix: "Camera Uploads/"
      pattern: "*.jpg"            # optional glob (on the basename; on the whole key if it has a '/')
      exclude: ["Camera Uploads/tmp/"]

Listing is paginated (``list_objects_v2``), a page of items per page of keys, so a
bucket of millions streams into the ledger. Folder markers (keys ending in ``/``) are
left out, and so are the ``exclude`` prefixes and the destination's own output
(:meth:`Source.protect` receives ``s3://bucket/prefix`` places from the flow: when the
source and destination share a bucket, ``originals/`` and ``thumbnails/`` are never
listed, which is the recursion the old Lambda design had to avoid with two prefixes).

An item is ``s3://bucket/key``; its fingerprint is ETag and size, so a rerun skips
objects that did not change. Fetch downloads to the work folder under a temporary
name, hashing as it streams, checks the length, and renames into place.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import Field

from photo_escape.outcomes import PermanentError, Stopwatch, TransientError, outcome
from photo_escape.plugins import KindConfig, Source
from photo_escape.secrets import redact
from tasks.files import sha256_stream
from tasks.s3util import S3Connection, classify, make_client, s3_uri, safe_name, split_uri

MiB = 1 << 20


class S3SourceConfig(S3Connection, KindConfig):
    kind: Literal["s3"]
    prefix: str = Field("", description="list only keys under this prefix")
    pattern: str | list[str] | None = Field(
        None, description="glob(s), case-insensitive: on the basename, or on the whole key if it contains '/'"
    )
    exclude: list[str] = Field(default_factory=list, description="key prefixes (or s3://bucket/prefix) never listed")
    page_size: int = Field(1000, ge=1, le=1000, description="keys per listing request")


class S3Source(Source):
    kind = "s3"
    Config = S3SourceConfig

    def __init__(self, config: S3SourceConfig, **kw: Any) -> None:
        super().__init__(config, **kw)
        self._client = None
        self._lock = threading.Lock()
        pats = config.pattern if isinstance(config.pattern, list) else ([config.pattern] if config.pattern else [])
        self.patterns = [p.lower() for p in pats]

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._lock:  # one client for all the batch's threads
                if self._client is None:
                    self._client = make_client(self.config, pool=int(getattr(self.options, "concurrency", 8)) + 2)
        return self._client

    def close(self) -> None:
        self._client = None

    # -- listing ------------------------------------------------------------------------
    def excluded_prefixes(self) -> list[str]:
        """Key prefixes never listed: ``exclude`` plus the destination's own output in this bucket."""
        out = []
        for p in list(self.config.exclude) + list(self.protected_prefixes):
            key_prefix = split_uri(p, self.config.bucket)
            if key_prefix is not None and "://" not in key_prefix and not os.path.isabs(p):
                out.append(key_prefix)
        return out

    def wanted(self, key: str, excluded: list[str]) -> bool:
        """Whether a listed key is a photo to take (not a folder, not excluded, matching the pattern)."""
        if key.endswith("/") or any(key.startswith(x) for x in excluded):
            return False
        if not self.patterns:
            return True
        low = key.lower()
        base = low.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatchcase(low if "/" in p else base, p) for p in self.patterns)

    def list_pages(self) -> Iterator[list[dict]]:
        """Pages of items, one per ``list_objects_v2`` page (paginated by boto3)."""
        c = self.config
        excluded = self.excluded_prefixes()
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=c.bucket, Prefix=c.prefix, PaginationConfig={"PageSize": c.page_size}):
                items = [self.item(obj) for obj in page.get("Contents", []) if self.wanted(obj["Key"], excluded)]
                if items:
                    yield items
        except Exception as exc:  # noqa: BLE001 - say what went wrong, without credentials
            err = classify(exc)
            raise PermanentError(getattr(err, "reason", "list_failed"),
                                 f"cannot list s3://{c.bucket}/{c.prefix}: {redact(str(err))}") from None

    def item(self, obj: dict) -> dict:
        """An item for one listed object."""
        key = obj["Key"]
        etag = str(obj.get("ETag", "")).strip('"')
        rel = key[len(self.config.prefix):] if key.startswith(self.config.prefix) else key
        return {
            "item_id": s3_uri(self.config.bucket, key),
            "source_ref": s3_uri(self.config.bucket, key),
            "name": safe_name(key),
            "relpath": rel.lstrip("/") or safe_name(key),
            "key": key,
            "size": int(obj.get("Size", 0)),
            "etag": etag,
            "last_modified": obj["LastModified"].isoformat() if obj.get("LastModified") else None,
            "storage_class": obj.get("StorageClass") or "STANDARD",
            "fingerprint": f"{etag}:{obj.get('Size', 0)}",
        }

    # -- fetching -------------------------------------------------------------------------
    def fetch(self, items: list[dict]) -> list[dict]:
        """Download a batch with a bounded thread pool; one outcome per item, in order."""
        workers = max(1, min(int(getattr(self.options, "concurrency", 8)), len(items) or 1))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="s3-fetch") as pool:
            return list(pool.map(self._fetch_one, items))

    def _target(self, item: dict) -> Path:
        """Where an object is staged: its own folder in the work dir (names may repeat across prefixes)."""
        slot = hashlib.sha256(item["item_id"].encode()).hexdigest()[:16]
        return self.workdir / "s3" / slot / item["name"]

    def _fetch_one(self, item: dict) -> dict:
        sw = Stopwatch()
        max_bytes = getattr(self.options, "max_bytes", None)
        if max_bytes and item.get("size", 0) > max_bytes:
            return outcome(item["item_id"], "fetch", "failed", "too_large", bytes=item.get("size"),
                           detail={"max_bytes": max_bytes}, duration_ms=sw.ms) | {"item": item}
        retries = int(getattr(self.options, "retries", 3))
        backoff = float(getattr(self.options, "backoff_seconds", 0.5))
        err: Exception | None = None
        for attempt in range(1, retries + 2):
            try:
                sha, n, etag, target = self.download(item)
                new = dict(item, local_path=str(target), sha256=sha, bytes=n, etag=etag or item.get("etag"))
                return outcome(item["item_id"], "fetch", "ok", None, bytes=n, sha256=sha, attempt=attempt,
                               detail={"etag": new["etag"]}, duration_ms=sw.ms) | {"item": new}
            except Exception as exc:  # noqa: BLE001
                err = classify(exc)
                if isinstance(err, PermanentError):
                    break
                if attempt <= retries:
                    time.sleep(backoff * (2 ** (attempt - 1)) * random.uniform(0.5, 1.5))
        reason = getattr(err, "reason", "download_failed")
        return outcome(item["item_id"], "fetch", "failed", reason, attempt=attempt, duration_ms=sw.ms,
                       detail={"message": redact(str(err))[:300]}) | {"item": item}

    def download(self, item: dict) -> tuple[str, int, str, Path]:
        """Stream one object to a temporary name, hashing as it goes; check its length;
        rename it into place. Returns (sha256, bytes, etag, path)."""
        target = self._target(item)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{uuid.uuid4().hex}.part")
        try:
            resp = self.client.get_object(Bucket=self.config.bucket, Key=item["key"])
            expected = int(resp.get("ContentLength", -1))
            with open(tmp, "wb") as fh:
                sha256, n = sha256_stream(resp["Body"].iter_chunks(MiB), fh)
            if expected >= 0 and n != expected:
                raise TransientError("truncated", f"got {n} of {expected} bytes")
            os.replace(tmp, target)
            return sha256, n, str(resp.get("ETag", "")).strip('"'), target
        finally:
            if tmp.exists():
                tmp.unlink()

    def report_facts(self) -> dict[str, Any]:
        return {"source_bucket": self.config.bucket, "source_prefix": self.config.prefix,
                "excluded_prefixes": self.excluded_prefixes()}
