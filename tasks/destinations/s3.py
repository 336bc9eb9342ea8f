"""``destination.kind: s3``: the personal archive layout in a bucket.

    destination:
      kind: s3
      bucket: my-photo-archive
      region: eu-west-1
      storage_class: STANDARD_IA          # originals; thumbnails stay STANDARD
      # originals:  "originals/{taken:%Y/%m/%d}/{name}"          (the defaults)
      # thumbnails: "thumbnails/{taken:%Y/%m/%d}/{name}.jpg"

An original lands as ``originals/2006/10/04/IMG_00001.NEF`` (``taken`` is the photo's
local wall-clock capture time; photos with none go under ``undated`` in its place),
its JPEG thumbnail (a RAW's embedded preview) as
``thumbnails/2006/10/04/IMG_00001.NEF.jpg``, and with ``sidecars: [xmp, json]`` an XMP
sidecar ``originals/2006/10/04/IMG_00001.NEF.xmp`` (:mod:`tasks.xmp`: the restored
capture time with its offset, place, title, description, albums, the provenance) and
the recorded metadata as ``originals/2006/10/04/IMG_00001.NEF.json`` (``sidecar: true``,
the older spelling of ``sidecars: [json]``, still works). Each is stored only when
missing or changed.

Integrity: every original carries its sha256 in its object metadata
(``x-amz-meta-sha256``) and goes up with ``Content-MD5`` and ``x-amz-checksum-sha256``
(S3 refuses bytes that do not match them); files above ``multipart_threshold_mb`` go
up in parts (boto3's TransferConfig), and a failed multipart upload is aborted, so no
partial object is ever visible. Each upload is verified and the result recorded as a
``fixity`` event: ``verify: head`` takes the PUT's own answer when it proves the bytes
(the ETag of a single-part object is the MD5 the store computed of what it kept:
``put_md5``; or S3's verified sha256 checksum: ``put_sha256``) and a HEAD (size and
sha256 metadata) otherwise; ``full`` also downloads the object again and hashes it;
``sample`` is full for a ``verify_sample`` share chosen by content hash. An object
already there with the same sha256 is ``already_present``; different content under the
same key is never overwritten (``key_conflict``, or with ``on_conflict: suffix`` a
``~sha8`` suffixed key): each PUT of a new key is conditional (``If-None-Match: *``).

Requests per new photo: a HEAD to look, a PUT for the original and one for its
thumbnail (whose key is taken to be free too); with a listing of the bucket taken once
(:meth:`S3Destination.take_listing`, or :meth:`S3Destination.use_listing`) no HEAD.
A store that refuses the conditional or checksum header gets requests without it (a
HEAD before every write, as without a listing). moto's server (the sandbox) honours
``If-None-Match: *`` but checks neither Content-MD5 nor checksums: there the ETag
comparison is what catches bytes damaged on the way.

Fixity (:mod:`tasks.fixity`): ``inventory`` is a paginated listing of the delivered
keys' common prefix, ``read_back`` a streamed download hashed as it comes (with the
sha256 kept in the metadata), and ``set_aside`` copies a changed object to
``NAME~changed-YYYYMMDD.EXT`` before its key is freed for the original.

Credentials: the standard AWS chain or ``credentials: {env|block: ...}`` naming a
secret with JSON keys (see :mod:`tasks.s3util`); never in the job file.
"""

from __future__ import annotations

import json
import mimetypes
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

from pydantic import Field, field_validator, model_validator

from photo_escape.layout import check_template, render, with_suffix
from photo_escape.outcomes import PermanentError, Stopwatch, TransientError, outcome
from photo_escape.plugins import Destination, DestinationUnreadable, KindConfig, settings_key
from photo_escape.secrets import redact
from tasks.files import sha256_stream
from tasks.s3util import S3Connection, classify, error_code, make_client, s3_uri, split_uri

MiB = 1 << 20
STORAGE_CLASSES = (
    "STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR", "GLACIER",
    "DEEP_ARCHIVE", "REDUCED_REDUNDANCY", "EXPRESS_ONEZONE",
)
#: classes whose objects cannot be read back without a restore: HEAD-only fixity
ARCHIVED = {"GLACIER", "DEEP_ARCHIVE"}
RAW_TYPES = {".nef": "image/x-nikon-nef", ".cr2": "image/x-canon-cr2", ".arw": "image/x-sony-arw",
             ".dng": "image/x-adobe-dng", ".heic": "image/heic", ".heif": "image/heif"}


class S3DestinationConfig(S3Connection, KindConfig):
    kind: Literal["s3"]
    originals: str = Field("originals/{taken:%Y/%m/%d}/{name}", description="key template for originals")
    thumbnails: str | None = Field("thumbnails/{taken:%Y/%m/%d}/{name}.jpg",
                                   description="key template for thumbnail JPEGs; empty: no thumbnails")
    thumbnail_size: int = Field(512, ge=16, le=4096, description="longest side of a thumbnail, pixels")
    undated: str = Field("undated", description="replaces {taken:...} for photos with no capture time")
    storage_class: str = Field("STANDARD_IA", description="storage class of originals (thumbnails: STANDARD)")
    sidecars: list[Literal["xmp", "json"]] = Field(
        default_factory=list, description="stored beside each original: xmp (<key>.xmp: capture time with offset, "
                                          "place, title, description, albums, provenance), json (<key>.json: the "
                                          "recorded metadata)")
    sidecar: bool = Field(False, description="deprecated: the same as sidecars: [json]")
    on_conflict: Literal["fail", "suffix"] = Field(
        "fail", description="different content under an existing key: fail (key_conflict) or add ~sha8"
    )
    verify: Literal["head", "full", "sample"] = Field(
        "head", description="after upload: HEAD (size + sha256 metadata), full re-download and hash, or a sample"
    )
    verify_sample: float = Field(0.1, ge=0, le=1, description="share of objects fully verified with verify: sample")
    multipart_threshold_mb: float = Field(64, ge=5, description="files larger than this go up in parts")
    multipart_chunk_mb: float = Field(16, ge=5, description="part size for multipart uploads")
    transfer_concurrency: int = Field(4, ge=1, le=32, description="parallel parts per multipart upload")
    fixity_events: bool = Field(True, description="record a separate 'fixity' event per verified object")
    create_bucket: bool = Field(False, description="create the bucket if it does not exist")

    @field_validator("originals", "thumbnails")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        return check_template(v) if v else None

    @field_validator("sidecars", mode="before")
    @classmethod
    def _sidecars(cls, v: object) -> list[str]:
        from tasks.xmp import sidecar_kinds

        return sidecar_kinds(v)

    @model_validator(mode="after")
    def _sidecar_alias(self) -> "S3DestinationConfig":
        """``sidecar: true`` (older job files) is ``sidecars: [json]``; both spellings give one config."""
        if self.sidecar and "json" not in self.sidecars:
            self.sidecars = [*self.sidecars, "json"]
        self.sidecar = "json" in self.sidecars
        return self

    @field_validator("storage_class")
    @classmethod
    def _storage_class(cls, v: str) -> str:
        v = v.upper()
        if v not in STORAGE_CLASSES:
            raise ValueError(f"{v!r} is not an S3 storage class; expected one of: {', '.join(STORAGE_CLASSES)}")
        return v


def _literal_prefix(template: str) -> str:
    """The fixed start of a key template (what every key it makes begins with)."""
    return template.split("{", 1)[0]


def sampled(sha256: str, share: float) -> bool:
    """Whether content ``sha256`` is in the fully verified sample (stable across reruns)."""
    return share > 0 and int(sha256[:8], 16) / 0xFFFFFFFF < share


class S3Destination(Destination):
    kind = "s3"
    Config = S3DestinationConfig

    def __init__(self, config: S3DestinationConfig, **kw: Any) -> None:
        super().__init__(config, **kw)
        self._client = None
        self._lock = threading.RLock()
        self._requests: dict[str, int] = {}
        self._storage_class: str | None = None  # set when the store refused the default class
        self._paths: dict[str, Any] = {}  # sha256 -> local file, for comparing with foreign objects
        self._md5s: dict[str, str] = {}  # sha256 -> the local file's MD5 (hex)
        self._listing: dict[str, dict] | None = None  # key -> size, etag, storage_class (see use_listing)
        self._looked_for_listing = False

    # -- plumbing ----------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The boto3 client, made on first use (inside the task, on the worker)."""
        if self._client is None:
            with self._lock:  # one client for all the batch's threads
                if self._client is None:
                    conc = getattr(self.options, "concurrency", 8)
                    client = make_client(self.config, pool=conc * self.config.transfer_concurrency + 4)
                    for op in ("PutObject", "UploadPart"):
                        client.meta.events.register(f"before-send.s3.{op}", self._count_request)
                    self._client = client
        return self._client

    def _count_request(self, request: Any = None, **_: Any) -> None:
        """Count upload requests per object path (a retried request counts twice)."""
        path = unquote(urlsplit(request.url).path)
        with self._lock:
            self._requests[path] = self._requests.get(path, 0) + 1

    def upload_requests(self, key: str) -> int:
        with self._lock:
            return sum(n for p, n in self._requests.items() if p.endswith("/" + key))

    def _transfer(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        c = self.config
        return TransferConfig(multipart_threshold=int(c.multipart_threshold_mb * MiB),
                              multipart_chunksize=int(c.multipart_chunk_mb * MiB),
                              max_concurrency=c.transfer_concurrency, use_threads=True)

    def protected_prefixes(self) -> list[str]:
        """Our own output (``s3://bucket/originals/``...): an s3 source never lists it."""
        c = self.config
        out = [s3_uri(c.bucket, _literal_prefix(c.originals))]
        if c.thumbnails:
            out.append(s3_uri(c.bucket, _literal_prefix(c.thumbnails)))
        return out

    def settings_key(self) -> str:
        c = self.config
        return settings_key(c.model_copy(update={"verify": "head", "verify_sample": 0.0, "max_attempts": 1,
                                                 "timeout_seconds": 1, "transfer_concurrency": 1}),
                            exclude=None if "xmp" in c.sidecars else {"sidecars"})  # JSON alone: `sidecar` says it

    def close(self) -> None:
        self._client = None

    def _retries(self) -> tuple[int, float]:
        return int(getattr(self.options, "retries", 3)), float(getattr(self.options, "backoff_seconds", 0.5))

    # -- what the bucket holds -------------------------------------------------------------
    def listing(self) -> dict[str, dict]:
        """Every object under the layout's fixed prefixes (originals, with their sidecars,
        and thumbnails), from ListObjectsV2 pages of 1,000 keys: key -> ``size``, ``etag``,
        ``storage_class``. One request per 1,000 objects, against one per photo for HEADs."""
        c = self.config
        prefixes = sorted({_literal_prefix(t) for t in (c.originals, c.thumbnails) if t})
        prefixes = [p for p in prefixes if not any(p != q and p.startswith(q) for q in prefixes)]
        out: dict[str, dict] = {}
        pages = self.client.get_paginator("list_objects_v2")
        for prefix in prefixes:
            for page in pages.paginate(Bucket=c.bucket, Prefix=prefix):
                for o in page.get("Contents", []):
                    out[o["Key"]] = {"size": o["Size"], "etag": (o.get("ETag") or "").strip('"'),
                                     "storage_class": o.get("StorageClass") or "STANDARD"}
        return out

    def use_listing(self, listing: dict[str, dict] | None) -> None:
        """Deliver by what one listing of the bucket (:meth:`listing`, taken by the caller,
        e.g. at the start of a run) shows, instead of a HEAD per photo: a key it lacks goes
        up at once (the conditional PUT still refuses to overwrite whatever came since); a
        key it shows with our bytes (size and MD5 ETag) is ``already_present``."""
        self._listing = listing

    surveys = True

    def survey(self) -> None:
        """The run's one listing of the bucket (:meth:`take_listing`), used from now on by
        this destination and by every one made with the same work folder. It only spares
        requests: a bucket that cannot be listed now (not created yet, access denied) leaves
        no listing, and deliveries and :meth:`inventory` ask the bucket themselves."""
        try:
            self.take_listing()
        except Exception:  # noqa: BLE001 - see above; inventory says why, where it matters
            return
        self._listing, self._looked_for_listing = None, False

    def take_listing(self) -> Path:
        """List the bucket once into the work folder (:data:`LISTING_FILE`), where every
        destination made with the same work folder (one per batch, in any process of the
        run) finds it (the listing :meth:`survey_early` took for this run, if it did).
        Returns the file's path."""
        objects = self._early_listing()
        if objects is None:
            objects = self.listing()
        path = self.workdir / LISTING_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"bucket": self.config.bucket, "objects": objects}))
        os.replace(tmp, path)
        return path

    def _listing_identity(self) -> tuple:
        c = self.config
        return (c.endpoint_url, c.bucket, c.originals, c.thumbnails)

    def survey_early(self) -> None:
        """List the bucket now for the run about to start in this process (see
        :meth:`Destination.survey_early`); its survey takes this listing instead of
        listing again. Not when the credentials are in a Prefect Secret block (reading it
        needs the API the caller is waiting for). A listing that fails is left for the
        survey to take (and to say why)."""
        c = self.config
        if c.credentials is not None and c.credentials.block:
            return
        early = _EarlyListing()
        with _EARLY_LOCK:
            if self._listing_identity() in _EARLY:
                return
            _EARLY[self._listing_identity()] = early
        try:
            early.objects = self.listing()
            early.taken = time.monotonic()
        except Exception:  # noqa: BLE001 - the survey lists again and says why
            pass
        finally:
            early.done.set()
            self.close()

    def _early_listing(self) -> dict[str, dict] | None:
        """The listing :meth:`survey_early` took in this process for this bucket, once (then
        forgotten), if it succeeded in the last :data:`EARLY_LISTING_MAX_AGE` seconds."""
        with _EARLY_LOCK:
            early = _EARLY.pop(self._listing_identity(), None)
        if early is None:
            return None
        early.done.wait(self.config.timeout_seconds * 4 + 60)  # the same listing: better than taking it twice
        if early.objects is None or early.taken is None or time.monotonic() - early.taken > EARLY_LISTING_MAX_AGE:
            return None
        return early.objects

    def _listed(self, key: str) -> dict | bool | None:
        """What the listing says of ``key``: its entry, False (not there), None (no listing)."""
        if not self._looked_for_listing:
            with self._lock:  # the batch's threads all wait for the one reading it
                if self._listing is None and not self._looked_for_listing:
                    self._listing = _saved_listing(self.workdir / LISTING_FILE, self.config.bucket)
                self._looked_for_listing = True
        if self._listing is None:
            return None
        return self._listing.get(key, False)

    # -- keys ---------------------------------------------------------------------------
    def keys_for(self, item: dict, name: str | None = None) -> dict[str, str | None]:
        """The original's, thumbnail's and sidecar's keys for ``item`` (``name`` overrides its name)."""
        it = dict(item, name=name) if name else item
        c = self.config
        original = render(c.originals, it, undated=c.undated)
        if item.get("redeliver_to"):  # a recorded key: exactly there (its thumbnail and sidecar by the templates)
            original = split_uri(item["redeliver_to"], c.bucket) or ""
            if not original:
                raise PermanentError("other_bucket", "redeliver_to names another bucket than the destination's")
        return {
            "original": original,
            "thumbnail": render(c.thumbnails, it, undated=c.undated) if c.thumbnails else None,
            "sidecar": original + ".json" if "json" in c.sidecars else None,
            "xmp": original + ".xmp" if "xmp" in c.sidecars else None,
        }

    # -- deliver --------------------------------------------------------------------------
    def deliver(self, items: list[dict], dry_run: bool = False) -> list[dict]:
        """Upload a batch with a bounded thread pool; outcomes keep the items' order."""
        if self.config.create_bucket and not dry_run and items:
            self._ensure_bucket()
        workers = max(1, min(int(getattr(self.options, "concurrency", 8)), len(items) or 1))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="s3-deliver") as pool:
            per_item = list(pool.map(lambda it: self._deliver_safely(it, dry_run), items))
        return [o for group in per_item for o in group]

    def _deliver_safely(self, item: dict, dry_run: bool) -> list[dict]:
        sw = Stopwatch()
        try:
            return self._deliver_one(item, dry_run, sw)
        except Exception as exc:  # noqa: BLE001 - one photo's problem is its outcome, not the batch's
            err = classify(exc)
            return [outcome(item["item_id"], "deliver", "failed", getattr(err, "reason", "upload_failed"),
                            detail={"message": redact(str(err))[:300]}, duration_ms=sw.ms,
                            attempt=int(getattr(exc, "attempts", 1)),
                            sha256=item.get("sha256")) | {"item": item}]

    def _deliver_one(self, item: dict, dry_run: bool, sw: Stopwatch, look: bool = False) -> list[dict]:
        """One photo: decide (listing or HEAD), upload, verify, derivatives. ``look``: decide
        by HEAD whatever the listing says (a conditional PUT found the key taken)."""
        sha = item["sha256"]
        path: Any = bytes.fromhex(item["local_path_hex"]) if item.get("local_path_hex") else item["local_path"]
        try:
            size = os.stat(path).st_size
        except OSError as exc:
            raise PermanentError("missing", f"the fetched file is gone: {exc.strerror}") from None
        self._paths[sha] = path
        keys = self.keys_for(item)
        state, head = self._existing(keys["original"], sha, size, look)
        if state == "different" and self.config.on_conflict == "suffix" and not item.get("redeliver_to"):
            name = with_suffix(keys["original"].rsplit("/", 1)[-1], f"~{sha[:8]}")
            keys = self.keys_for(item, name=name)
            state, head = self._existing(keys["original"], sha, size, look)
        base = {"bucket": self.config.bucket, "key": keys["original"]}
        if state == "different":
            return [outcome(item["item_id"], "deliver", "failed", "key_conflict", sha256=sha, duration_ms=sw.ms,
                            detail=dict(base, existing_sha256=head.get("Metadata", {}).get("sha256"),
                                        existing_size=head.get("ContentLength"))) | {"item": item}]
        if dry_run:
            return [outcome(item["item_id"], "deliver", "skipped", "dry_run", sha256=sha, duration_ms=sw.ms,
                            detail=dict(base, planned=keys, would="keep" if state == "same" else "upload"))
                    | {"item": item}]
        attempt = 1
        if state == "same":
            fixity = self._verify(keys["original"], sha, size, self._full(sha), head=head)
            reason = "already_present"
            if not fixity["ok"]:
                return self._fixity_failed(item, keys, fixity, sw)
        else:
            try:
                fixity, attempt = self._upload_original(path, keys["original"], item, size)
            except _LookAgain:  # stored by someone else since we looked, or the store takes no condition
                if look:
                    raise TransientError("changed", "the key changed while the photo was being stored") from None
                return self._deliver_one(item, dry_run, sw, look=True)
            reason = "uploaded"
            if not fixity["ok"]:
                return self._fixity_failed(item, keys, fixity, sw)
        extras = self._derivatives(path, item, keys, fresh=state == "absent")
        out = []
        if self.config.fixity_events:
            out.append(outcome(item["item_id"], "fixity", "ok", fixity["method"], detail=fixity, sha256=sha,
                               bytes=size) | {"item": item})
        detail = dict(base, storage_class=fixity.get("storage_class"), fixity=fixity, thumbnail=extras["thumbnail"],
                      sidecar=extras["sidecar"], upload_requests=self.upload_requests(keys["original"]))
        if extras.get("xmp"):
            detail["xmp"] = extras["xmp"]
        if extras.get("error"):
            out.append(outcome(item["item_id"], "deliver", "failed", extras["error"], detail=detail, sha256=sha,
                               bytes=size, attempt=attempt, duration_ms=sw.ms) | {"item": item})
            return out
        out.append(outcome(item["item_id"], "deliver", "ok", reason, detail=detail, sha256=sha, bytes=size,
                           attempt=attempt, final=True, duration_ms=sw.ms)
                   | {"item": dict(item, target=s3_uri(self.config.bucket, keys["original"]))})
        return out

    # -- fixity: the bucket as it is ----------------------------------------------------
    def inventory(self, targets: list[str]) -> dict[str, tuple[int, str]]:
        """Size and version (the ETag, which a new upload changes) of the ``targets``
        (``s3://bucket/key`` or bare keys) that are in the
        bucket: a paginated listing of the targets' common prefix (split by its next
        folder level and listed in parallel when there are a few hundred such folders
        or fewer), never a request per photo. Raises :class:`DestinationUnreadable`
        when it cannot be listed (access denied, no such bucket, unreachable)."""
        keys: dict[str, list[str]] = {}
        for target in targets:
            key = split_uri(target, self.config.bucket)
            if key:
                keys.setdefault(key, []).append(target)
        if not keys:
            return {}
        if self._listed(next(iter(keys))) is not None:  # the run's survey covers every original's key
            return {t: (e["size"], e["etag"]) for key, ts in keys.items() if (e := self._listing.get(key))
                    for t in ts}
        common = os.path.commonprefix(list(keys))
        common = common[: common.rfind("/") + 1]
        folders = {common + k[len(common):].split("/", 1)[0] + "/" for k in keys}
        if any("/" not in k[len(common):] for k in keys) or len(folders) > 256:
            folders = {common}
        found: dict[str, tuple[int, str]] = {}

        def listing(prefix: str) -> list[tuple[str, tuple[int, str]]]:
            try:
                return [(o["Key"], (o["Size"], (o.get("ETag") or "").strip('"')))
                        for page in self.client.get_paginator("list_objects_v2").paginate(
                            Bucket=self.config.bucket, Prefix=prefix)
                        for o in page.get("Contents", [])]
            except Exception as exc:  # noqa: BLE001 - any failure to list is not "nothing there"
                err = classify(exc)
                raise DestinationUnreadable(redact(f"cannot list {s3_uri(self.config.bucket, prefix)}: {err} "
                                                   f"({getattr(err, 'reason', 'error')})")) from None

        with ThreadPoolExecutor(max_workers=min(8, len(folders)), thread_name_prefix="s3-inventory") as pool:
            for listed in pool.map(listing, sorted(folders)):
                for key, entry in listed:
                    for target in keys.get(key, ()):
                        found[target] = entry
        return found

    def read_back(self, target: str) -> dict | None:
        """The object at ``target`` downloaded and hashed as it streams, with the sha256
        kept in its metadata (None if there is no such object). An archived object
        (GLACIER, DEEP_ARCHIVE) cannot be read without a restore: its size and stored
        sha256 only, said in ``note``."""
        key = split_uri(target, self.config.bucket)
        if not key:
            return None
        try:
            resp = self.client.get_object(Bucket=self.config.bucket, Key=key)
            got, size = sha256_stream(resp["Body"].iter_chunks(MiB))
            return {"size": size, "sha256": got, "stored_sha256": (resp.get("Metadata") or {}).get("sha256"),
                    "storage_class": resp.get("StorageClass") or "STANDARD"}
        except Exception as exc:  # noqa: BLE001
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            if error_code(exc) == "InvalidObjectState":
                head = self._head(key) or {}
                return {"size": head.get("ContentLength"), "sha256": None,
                        "stored_sha256": (head.get("Metadata") or {}).get("sha256"),
                        "storage_class": head.get("StorageClass"),
                        "note": "archived class: not readable without a restore"}
            err = classify(exc)
            raise DestinationUnreadable(redact(f"cannot read {target}: {err}")) from None

    def set_aside(self, target: str, suffix: str) -> str:
        """Copy the object at ``target`` to the same key with ``suffix`` (``-2``... when
        that key is taken) in the same storage class, its ``sha256`` metadata kept as
        ``recorded-sha256`` (the copy does not hold those bytes), then delete the
        original so a new delivery can take its key. Returns the copy's ``s3://`` URI."""
        key = split_uri(target, self.config.bucket) or ""
        head = self._head(key)
        if head is None:
            raise FileNotFoundError(f"nothing at {target} to set aside")
        meta = dict(head.get("Metadata") or {})
        if "sha256" in meta:
            meta["recorded-sha256"] = meta.pop("sha256")
        meta["set-aside-from"] = quote(key, safe="/")[:512]
        for n in range(1, 1000):
            new_key = with_suffix(key, suffix if n == 1 else f"{suffix}-{n}")
            if self._head(new_key) is None:
                break
        else:
            raise FileExistsError(f"no free key to set {target} aside")
        self.client.copy({"Bucket": self.config.bucket, "Key": key}, self.config.bucket, new_key,
                         ExtraArgs={"MetadataDirective": "REPLACE", "Metadata": meta,
                                    "StorageClass": head.get("StorageClass") or "STANDARD",
                                    "ContentType": head.get("ContentType") or self._content_type(key)},
                         Config=self._transfer())
        self.client.delete_object(Bucket=self.config.bucket, Key=key)
        return s3_uri(self.config.bucket, new_key)

    def _ensure_bucket(self) -> None:
        """Create the bucket when it is missing (``create_bucket: true``); errors surface per item."""
        try:
            self.client.head_bucket(Bucket=self.config.bucket)
            return
        except Exception as exc:  # noqa: BLE001
            if error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                return
        region = self.client.meta.region_name
        kw = {} if region in (None, "us-east-1") else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        try:
            self.client.create_bucket(Bucket=self.config.bucket, **kw)
        except Exception:  # noqa: BLE001 - created meanwhile, or not allowed: the uploads will say
            pass

    def _fixity_failed(self, item: dict, keys: dict, fixity: dict, sw: Stopwatch) -> list[dict]:
        out = []
        if self.config.fixity_events:
            out.append(outcome(item["item_id"], "fixity", "failed", fixity["reason"], detail=fixity,
                               sha256=item["sha256"]) | {"item": item})
        out.append(outcome(item["item_id"], "deliver", "failed", fixity["reason"], sha256=item["sha256"],
                           detail={"bucket": self.config.bucket, "key": keys["original"], "fixity": fixity},
                           duration_ms=sw.ms) | {"item": item})
        return out

    def _full(self, sha: str) -> bool:
        v = self.config.verify
        return v == "full" or (v == "sample" and sampled(sha, self.config.verify_sample))

    # -- the S3 conversation ---------------------------------------------------------------
    def _head(self, key: str) -> dict | None:
        """The object's HEAD response, or None when there is no such object."""
        try:
            return self.client.head_object(Bucket=self.config.bucket, Key=key)
        except Exception as exc:  # noqa: BLE001
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise classify(exc) from None

    def _existing(self, key: str, sha: str, size: int, look: bool = False) -> tuple[str, dict]:
        """'absent', 'same' (our content: sha256 metadata and size agree) or 'different'.
        With a listing of the bucket (:meth:`use_listing`) no request is made for a key it
        lacks (if the store takes conditional writes: the PUT then refuses to overwrite what
        came since), nor for one it shows holding our bytes (size and MD5 ETag); ``look``:
        HEAD anyway."""
        listed = None if look else self._listed(key)
        if listed is False and self.may_write_conditionally():
            return "absent", {}
        if listed and listed["size"] == size and listed["etag"] == self._md5(sha):
            return "same", {"ContentLength": size, "ETag": listed["etag"], "StorageClass": listed["storage_class"],
                            "Metadata": {}, "matched_by": "etag_md5"}
        head = self._head(key)
        if head is None:
            return "absent", {}
        meta = head.get("Metadata") or {}
        if head.get("ContentLength") != size:
            return "different", head
        if meta.get("sha256") == sha:
            return "same", head
        if "sha256" not in meta:  # put there by another tool (an earlier s3cmd sync): compare the bytes
            matched = self._same_bytes(key, head, sha)
            if matched:
                return "same", dict(head, matched_by=matched)
        return "different", head

    def _same_bytes(self, key: str, head: dict, sha: str) -> str | None:
        """How an object without our sha256 metadata was found to hold our content:
        ``etag_md5`` (a single-part ETag equal to the file's MD5) or ``download`` (read
        back and hashed, when the ETag cannot tell); None if it holds something else."""
        etag = (head.get("ETag") or "").strip('"')
        if sha in self._paths and "-" not in etag and len(etag) == 32 and etag == self._md5(sha):
            return "etag_md5"
        if (head.get("StorageClass") or "STANDARD") in ARCHIVED:
            return None
        got, _ = sha256_stream(self.client.get_object(Bucket=self.config.bucket, Key=key)["Body"].iter_chunks(MiB))
        return "download" if got == sha else None

    def _md5(self, sha: str) -> str:
        """The MD5 (hex) of the local file holding content ``sha`` (read once, then remembered):
        what a single-part object's ETag is when the store holds exactly these bytes."""
        with self._lock:
            known = self._md5s.get(sha)
        if known is None:
            import hashlib

            h = hashlib.md5()
            with open(self._paths[sha], "rb") as fh:
                while block := fh.read(MiB):
                    h.update(block)
            known = h.hexdigest()
            with self._lock:
                self._md5s[sha] = known
        return known

    def _upload_original(self, path: Any, key: str, item: dict, size: int) -> tuple[dict, int]:
        """Upload, verify, and on a failed transfer or verification try again; returns
        (fixity record, attempts). A failed multipart upload is aborted by s3transfer
        (and any stale one for this key is aborted first), so nothing partial shows.
        Raises :class:`_LookAgain` when the conditional PUT finds the key taken."""
        retries, backoff = self._retries()
        sha = item["sha256"]
        extra = {
            "Metadata": self._metadata(item),
            "StorageClass": self._storage_class or self.config.storage_class,
            "ContentType": self._content_type(item.get("name") or key),
        }
        last: Exception | None = None
        fixity: dict = {}
        for attempt in range(1, retries + 2):
            try:
                if size >= self.config.multipart_threshold_mb * MiB:
                    self._abort_stale_uploads(key)
                put = self._put_file(path, key, extra, sha, size)
                fixity = self._verify(key, sha, size, self._full(sha), put=put)
                if fixity["ok"]:
                    return fixity, attempt
                self._delete_quietly(key)  # our own bad copy: never leave it looking verified
                last = TransientError(fixity["reason"])
            except _LookAgain:
                raise
            except Exception as exc:  # noqa: BLE001
                last = classify(exc)
                if getattr(last, "reason", "") == "invalid_storage_class" and self._may_fall_back(extra):
                    continue
                if isinstance(last, PermanentError):
                    raise last from None
            if attempt <= retries:
                time.sleep(backoff * (2 ** (attempt - 1)) * random.uniform(0.5, 1.5))
        if fixity and not fixity["ok"]:
            return fixity, retries + 1
        err = last if last else TransientError("upload_failed")
        err.attempts = retries + 1  # type: ignore[attr-defined]
        raise err

    def _may_fall_back(self, extra: dict) -> bool:
        """A store that rejects the *default* class (MinIO knows only STANDARD) gets
        STANDARD instead; a class the job chose is never changed silently."""
        if "storage_class" in self.config.model_fields_set or extra["StorageClass"] == "STANDARD":
            return False
        self._storage_class = extra["StorageClass"] = "STANDARD"
        return True

    def _put_file(self, path: Any, key: str, extra: dict, sha: str, size: int) -> dict | None:
        """One conditional PUT below the multipart threshold, returning the fixity its answer
        proves (None when it proves nothing); boto3's managed transfer in parts above it (None)."""
        if size < self.config.multipart_threshold_mb * MiB:
            md5 = self._md5(sha)
            resp = self._put(dict(Bucket=self.config.bucket, Key=key, **extra), path, sha, md5, conditional=True)
            return self._put_fixity(resp, key, sha, size, md5, extra["StorageClass"])
        if isinstance(path, bytes):  # a non-UTF-8 local name: hand boto3 an open file
            with open(path, "rb") as fh:
                self.client.upload_fileobj(fh, self.config.bucket, key, ExtraArgs=extra, Config=self._transfer())
        else:
            self.client.upload_file(path, self.config.bucket, key, ExtraArgs=extra, Config=self._transfer())
        return None

    def _put(self, kw: dict, body: Any, sha: str, md5: str, conditional: bool) -> dict:
        """``put_object`` with the integrity headers (Content-MD5, and the sha256 as
        ``x-amz-checksum-sha256``, both checked by S3 itself) and, if ``conditional``,
        ``If-None-Match: *`` (S3 refuses to overwrite). ``body``: bytes, or a local path
        (opened again for each try). A header the store refuses is dropped for the rest of
        the process; raises :class:`_LookAgain` when the key is taken or the store takes no
        condition (then the caller looks before writing)."""
        refused = _REFUSED.setdefault(self._endpoint, set())
        while True:
            headers: dict[str, str] = {"ContentMD5": _b64(md5)}
            if conditional and "IfNoneMatch" not in refused:
                headers["IfNoneMatch"] = "*"
            if "ChecksumSHA256" not in refused:
                headers.update(ChecksumAlgorithm="SHA256", ChecksumSHA256=_b64(sha))
            try:
                if isinstance(body, (bytes, bytearray)):
                    return self.client.put_object(Body=body, **kw, **headers)
                with open(body, "rb") as fh:
                    return self.client.put_object(Body=fh, **kw, **headers)
            except Exception as exc:  # noqa: BLE001
                if error_code(exc) in ("PreconditionFailed", "412") and "IfNoneMatch" in headers:
                    raise _LookAgain(kw["Key"]) from None
                header = _refused_header(exc, headers)
                if header is None:
                    raise
                with self._lock:
                    refused.add(header)
                if header == "IfNoneMatch":
                    raise _LookAgain(kw["Key"]) from None

    def may_write_conditionally(self) -> bool:
        """Whether this store has not refused ``If-None-Match: *`` (so far, in this process)."""
        return "IfNoneMatch" not in _REFUSED.get(self._endpoint, ())

    @property
    def _endpoint(self) -> str:
        return self.config.endpoint_url or "aws"

    @staticmethod
    def _put_fixity(resp: dict, key: str, sha: str, size: int, md5: str, storage_class: str) -> dict | None:
        """What a PUT's answer proves. A single-part object's ETag is the MD5 the store
        computed of the bytes it kept (unless it is encrypted with KMS or a customer key):
        equal to the local file's, the store holds our bytes (``put_md5``); different, they
        were damaged on the way (``content_mismatch``). Else a sha256 checksum S3 itself
        verified and echoed (``put_sha256``). None: the answer proves nothing (HEAD instead)."""
        etag = (resp.get("ETag") or "").strip('"')
        rec: dict[str, Any] = {"key": key, "method": "put_md5", "ok": True, "reason": None, "size": size,
                               "sha256": sha, "etag": etag, "storage_class": storage_class}
        encrypted = resp.get("SSECustomerAlgorithm") or resp.get("ServerSideEncryption") in ("aws:kms", "aws:kms:dsse")
        if not encrypted and len(etag) == 32 and all(c in "0123456789abcdef" for c in etag):
            return rec if etag == md5 else dict(rec, ok=False, reason="content_mismatch")
        if resp.get("ChecksumSHA256") == _b64(sha):
            return dict(rec, method="put_sha256")
        return None

    def _abort_stale_uploads(self, key: str) -> None:
        """Abort multipart uploads for ``key`` that a killed run left open (invisible, but billed)."""
        try:
            resp = self.client.list_multipart_uploads(Bucket=self.config.bucket, Prefix=key)
            for up in resp.get("Uploads", []):
                if up.get("Key") == key:
                    self.client.abort_multipart_upload(Bucket=self.config.bucket, Key=key, UploadId=up["UploadId"])
        except Exception:  # noqa: BLE001 - some S3-compatible stores cannot list uploads
            pass

    def _delete_quietly(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.config.bucket, Key=key)
        except Exception:  # noqa: BLE001
            pass

    def _verify(self, key: str, sha: str, size: int, full: bool, head: dict | None = None,
                put: dict | None = None) -> dict:
        """Fixity of one stored object: what the PUT's answer proved (``put``), else HEAD
        (size and sha256 metadata); with ``full`` also a re-download hashed as it streams.
        Archived classes (GLACIER, DEEP_ARCHIVE) cannot be read back without a restore:
        HEAD only, said so in the record."""
        if put is not None and not (full and put["storage_class"] in ARCHIVED):
            rec = put
            if not rec["ok"] or not full:
                return rec
        else:
            head = head or self._head(key) or {}
            storage_class = head.get("StorageClass") or "STANDARD"
            rec = {"key": key, "method": "head", "ok": True, "reason": None, "size": head.get("ContentLength"),
                   "sha256": (head.get("Metadata") or {}).get("sha256"), "etag": (head.get("ETag") or "").strip('"'),
                   "storage_class": storage_class}
            if not head:
                return dict(rec, ok=False, reason="missing_after_upload")
            if rec["size"] != size:
                return dict(rec, ok=False, reason="size_mismatch")
            if head.get("matched_by"):  # another tool's object holding our bytes (no sha256 metadata)
                rec.update(method=head["matched_by"], sha256=sha)
                if head["matched_by"] == "download":
                    return rec
            elif rec["sha256"] != sha:
                return dict(rec, ok=False, reason="sha256_mismatch")
        if full:
            if rec["storage_class"] in ARCHIVED:
                return dict(rec, note="archived class: not readable without a restore")
            resp = self.client.get_object(Bucket=self.config.bucket, Key=key)
            got, n = sha256_stream(resp["Body"].iter_chunks(MiB))
            rec = dict(rec, method="full", downloaded_sha256=got, downloaded_bytes=n)
            if n != size or got != sha:
                return dict(rec, ok=False, reason="content_mismatch")
        return rec

    def _metadata(self, item: dict) -> dict[str, str]:
        """Object metadata: the sha256 and the capture time (ASCII only, as S3 requires)."""
        capture = item.get("capture") or {}
        meta = {"sha256": item["sha256"]}
        if capture.get("local"):
            meta["taken"] = str(capture["local"])
        if capture.get("utc"):
            meta["taken-utc"] = str(capture["utc"])
        if capture.get("provenance"):
            meta["taken-provenance"] = str(capture["provenance"])[:64]
        meta["source"] = quote(redact(str(item.get("source_ref") or item["item_id"])), safe="/:@")[:512]
        return {k: v.encode("ascii", "replace").decode() for k, v in meta.items()}

    @staticmethod
    def _content_type(name: str) -> str:
        ext = os.path.splitext(name)[1].lower()
        return RAW_TYPES.get(ext) or mimetypes.guess_type(name)[0] or "application/octet-stream"

    # -- thumbnail and sidecar ---------------------------------------------------------------
    def _derivatives(self, path: Any, item: dict, keys: dict, fresh: bool = False) -> dict[str, Any]:
        """Store the thumbnail and sidecar if missing (a rerun fills in what a crash left out).
        ``fresh``: the original was not there before (its derivatives are taken to be missing
        too, and go up with a conditional PUT without looking first)."""
        out: dict[str, Any] = {"thumbnail": None, "sidecar": None}
        try:
            if keys["thumbnail"]:
                out["thumbnail"] = self._thumbnail(path, item, keys["thumbnail"], fresh)
            if keys["sidecar"]:
                out["sidecar"] = self._sidecar(item, keys, fresh)
            if keys.get("xmp"):
                out["xmp"] = self._xmp_sidecar(item, keys["xmp"], fresh)
        except Exception as exc:  # noqa: BLE001
            err = classify(exc)
            out["error"] = f"derivative_{getattr(err, 'reason', 'failed')}"
        return out

    def _thumbnail(self, path: Any, item: dict, key: str, fresh: bool = False) -> dict[str, Any]:
        from hashlib import sha256

        from tasks.thumbnails import ThumbnailError, make_thumbnail

        def current(head: dict) -> bool:
            meta = head.get("Metadata") or {}
            return meta.get("original-sha256") == item["sha256"] and meta.get("size") == str(self.config.thumbnail_size)

        direct = self._known_absent(key, fresh)
        if not direct:
            head = self._head(key)
            if head and current(head):
                return {"key": key, "result": "already_present", "bytes": head.get("ContentLength")}
        try:
            thumb = make_thumbnail(os.fsdecode(path), self.config.thumbnail_size)
        except ThumbnailError as exc:
            return {"key": None, "result": "none", "reason": exc.reason}
        stored = self._put_unless_current(key, direct, current, thumb.data, "image/jpeg", {
            "original-sha256": item["sha256"], "sha256": sha256(thumb.data).hexdigest(),
            "size": str(self.config.thumbnail_size), "method": thumb.method})
        if stored is not None:
            return {"key": key, "result": "already_present", "bytes": stored.get("ContentLength")}
        return {"key": key, "result": "uploaded", "bytes": len(thumb.data), "width": thumb.width,
                "height": thumb.height, "method": thumb.method}

    def sidecar_document(self, item: dict, keys: dict) -> dict[str, Any]:
        """The metadata recorded for a photo, as stored beside its original (no timestamps,
        so a rerun produces the same bytes and stores nothing new)."""
        keep = {k: v for k, v in item.items()
                if k not in ("local_path", "local_path_hex", "path", "path_hex", "capture", "asset", "item")
                and isinstance(v, (str, int, float, bool, type(None)))}
        return {
            "original": {"bucket": self.config.bucket, "key": keys["original"]},
            "thumbnail": keys["thumbnail"],
            "sha256": item["sha256"],
            "capture_time": item.get("capture"),
            "asset": item.get("asset"),
            "source": {k: redact(v) for k, v in keep.items()},
        }

    def _sidecar(self, item: dict, keys: dict, fresh: bool = False) -> dict[str, Any]:
        from hashlib import sha256

        body = json.dumps(self.sidecar_document(item, keys), sort_keys=True, indent=1, default=str).encode()
        digest = sha256(body).hexdigest()
        key = keys["sidecar"]

        def current(head: dict) -> bool:
            return (head.get("Metadata") or {}).get("sha256") == digest

        direct = self._known_absent(key, fresh)
        head = None if direct else self._head(key)
        if head and current(head):
            return {"key": key, "result": "already_present"}
        stored = self._put_unless_current(key, direct, current, body, "application/json",
                                          {"sha256": digest, "original-sha256": item["sha256"]})
        if stored is not None:
            return {"key": key, "result": "already_present"}
        return {"key": key, "result": "uploaded" if head is None else "updated"}

    def _xmp_sidecar(self, item: dict, key: str, fresh: bool) -> dict[str, Any]:
        """Store the photo's XMP sidecar (:mod:`tasks.xmp`) at ``key`` unless the same is
        there (its sha256 in the object's metadata); an object another tool put there
        (no photo-escape metadata) is left alone."""
        from tasks.xmp import digest, xmp_sidecar

        body = xmp_sidecar(item.get("capture"), item.get("meta"), sha256=item["sha256"])
        sha = digest(body)

        def current(head: dict) -> bool:
            return (head.get("Metadata") or {}).get("sha256") == sha

        direct = self._known_absent(key, fresh)
        head = None if direct else self._head(key)
        if head and current(head):
            return {"key": key, "result": "already_present", "sha256": sha}
        if head and "original-sha256" not in (head.get("Metadata") or {}):
            return {"key": key, "result": "foreign_kept", "sha256": sha}
        if self._put_unless_current(key, direct, current, body, "application/rdf+xml",
                                    {"sha256": sha, "original-sha256": item["sha256"]}) is not None:
            return {"key": key, "result": "already_present", "sha256": sha}
        return {"key": key, "result": "uploaded" if head is None else "updated", "sha256": sha}

    def _known_absent(self, key: str, fresh: bool) -> bool:
        """Whether ``key`` may go up with a conditional PUT without a look first: the listing
        lacks it, or (with no listing) the original it belongs with was not there either."""
        listed = self._listed(key)
        return self.may_write_conditionally() and (listed is False or (listed is None and fresh))

    def _put_unless_current(self, key: str, direct: bool, current: Any, data: bytes, content_type: str,
                            meta: dict[str, str]) -> dict | None:
        """Store a thumbnail or sidecar: with ``direct`` by a conditional PUT, and should the
        key be taken, keep what is there if ``current(head)`` says it is up to date (returns
        that HEAD); otherwise (or without ``direct``) by a plain PUT, replacing a stale one."""
        if direct:
            try:
                self._put_bytes(key, data, content_type, meta, conditional=True)
                return None
            except _LookAgain:
                head = self._head(key)
                if head and current(head):
                    return head
        self._put_bytes(key, data, content_type, meta)
        return None

    def _put_bytes(self, key: str, data: bytes, content_type: str, meta: dict[str, str],
                   conditional: bool = False) -> None:
        """A small object in STANDARD, with botocore's retries (a PUT is atomic)."""
        import hashlib

        self._put(dict(Bucket=self.config.bucket, Key=key, ContentType=content_type, Metadata=meta,
                       StorageClass="STANDARD"), data, hashlib.sha256(data).hexdigest(),
                  hashlib.md5(data).hexdigest(), conditional=conditional)


#: where :meth:`S3Destination.take_listing` leaves a run's listing, in its work folder
LISTING_FILE = "s3-destination-listing.json"
EARLY_LISTING_MAX_AGE = 120.0  # seconds: a listing taken before the run's flow started, used by its survey


class _EarlyListing:
    """A bucket listing :meth:`S3Destination.survey_early` is taking or took."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.objects: dict[str, dict] | None = None
        self.taken: float | None = None


_EARLY: dict[tuple, _EarlyListing] = {}
_EARLY_LOCK = threading.Lock()
_SAVED: dict[str, tuple[float, dict | None]] = {}


def _saved_listing(path: Path, bucket: str) -> dict[str, dict] | None:
    """The listing :meth:`S3Destination.take_listing` saved at ``path`` for ``bucket``
    (read once per process and file version), or None."""
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return None
    key = str(path)
    cached = _SAVED.get(key)
    if cached is None or cached[0] != mtime:
        data = json.loads(path.read_text())
        cached = (mtime, data)
        _SAVED[key] = cached
    data = cached[1]
    return data["objects"] if data and data.get("bucket") == bucket else None


class _LookAgain(Exception):
    """A conditional PUT found its key taken (412), or the store takes no condition: the
    caller decides again by looking (HEAD) before writing."""


#: headers each endpoint refused in this process ("IfNoneMatch", "ChecksumSHA256"): sent no more
_REFUSED: dict[str, set[str]] = {}


def _b64(hex_digest: str) -> str:
    """A hex digest as the base64 S3's Content-MD5 and x-amz-checksum-* headers carry."""
    import base64

    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def _refused_header(exc: BaseException, sent: dict) -> str | None:
    """Which of the optional headers ``sent`` the store's error refuses (None: another error).
    Stores that predate them answer 501 NotImplemented (S3 names the header in the error)
    or 400 InvalidArgument/InvalidRequest; a NotImplemented naming none is taken to be
    about the checksum first."""
    code = error_code(exc)
    if code not in ("NotImplemented", "501", "InvalidArgument", "InvalidRequest", "400", "BadRequest"):
        return None
    error = (getattr(exc, "response", None) or {}).get("Error") or {}
    text = " ".join(str(error.get(k) or "") for k in ("Header", "ArgumentName", "Message")).lower()
    if "ChecksumSHA256" in sent and "checksum" in text:
        return "ChecksumSHA256"
    if "IfNoneMatch" in sent and ("if-none-match" in text or "condition" in text):
        return "IfNoneMatch"
    if code in ("NotImplemented", "501"):
        return next((h for h in ("ChecksumSHA256", "IfNoneMatch") if h in sent), None)
    return None
