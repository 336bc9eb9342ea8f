"""Items and outcomes: the two plain records that travel between the flow and its tasks.

An *item* (:class:`Item`) is one photo as a source knows it, a plain dict that
stages add fields to as it moves on (``local_path`` and ``sha256`` after fetch,
``capture`` after the capture_time stage, ``target`` after delivery).

An *outcome* (:class:`Outcome`) is what one stage did to one item; the flow appends
outcomes to the ledger's ``events`` table in bulk.
"""

from __future__ import annotations

import time
from typing import Any, Literal, NotRequired, TypedDict


OUTCOMES = ("ok", "skipped", "failed", "needs_review")


class ItemMeta(TypedDict, total=False):
    """What a source knows about a photo beyond its bytes (a Takeout sidecar, Flickr's API):
    handed to the capture-time decision, which weighs it against the file's own tags and
    records where what it chose came from, and to the XMP sidecar written beside the photo."""

    time_utc: str  # an instant, ISO 8601 with offset (a Takeout sidecar's photoTakenTime)
    time_local: str  # a wall-clock time with no zone, ISO 8601 (Flickr's date taken)
    time_granularity: str  # exact | month | year | circa (Flickr's granularity): time_local is exact only to it
    time_granularity_from: str  # "source" (the source said it) or "inferred" (from the date's shape: 01-01 00:00:00)
    time_provenance: str  # how the capture-time decision names this level: "sidecar:utc", "source:flickr"
    latitude: float
    longitude: float
    location_accuracy: int  # how precise the place is, Flickr's scale: 1 (world) .. 16 (street)
    title: str
    description: str
    albums: list[str]  # album titles, as the source names them (not sanitised folder names)
    favourite: bool
    tags: list[str]
    visibility: str  # who could see it where it was: public | friends | family | friends & family | private
    sidecar: str  # where the metadata came from (a sidecar's name in the export), for the report
    sidecar_rule: str  # which naming rule matched it (takeout: "exact", "supplemental", "clipped"...)


class Item(TypedDict, total=False):
    """One photo on its way, as a plain dict (it pickles to a Dask worker and is JSON in the ledger).

    A source sets the first three (and any fields of its own, e.g. ``path``, ``url``,
    ``size``, ``mtime``, ``etag``, ``relpath``); later stages add theirs.
    """

    item_id: str  # stable id within the job, e.g. "local:2006/10/04/IMG_1.JPG" or a URL
    source_ref: str  # where it came from (path, URL, s3://bucket/key), shown in reports
    name: str  # a safe file name for it
    fingerprint: str | None  # what the source says about its content (mtime+size, etag): a change means redo
    meta: ItemMeta  # what the source knows beyond the bytes (optional)
    media: str  # "video": delivered as a file, never decoded as a picture (hashing lets it through)
    # after fetch
    local_path: str  # the file to read (a download in the work folder, or the source file itself)
    local_path_hex: str  # the same path's bytes in hex, when it is not valid UTF-8
    sha256: str
    bytes: int
    # after hashing and capture time
    asset: dict[str, Any]  # width, height, format, phash, dhash
    capture: dict[str, Any]  # the capture-time record (local, utc, offset, tz, provenance, conflicts)
    # after delivery
    target: str  # where it went (a path below the destination folder, or s3://bucket/key)


class Outcome(TypedDict):
    """What one stage did to one item, as the ledger's ``events`` table stores it."""

    item_id: str
    stage: str
    outcome: Literal["ok", "skipped", "failed", "needs_review"]
    reason: str | None
    detail: dict[str, Any]
    bytes: int | None
    duration_ms: float | None
    attempt: int
    final: bool  # this event completes the item (the last stage's ok)
    sha256: str | None
    item: NotRequired[Item]  # the item as the stage left it, for the next stage (not stored)


def outcome(
    item_id: str,
    stage: str,
    result: str,
    reason: str | None = None,
    *,
    detail: dict[str, Any] | None = None,
    bytes: int | None = None,  # noqa: A002 - the ledger's column name
    duration_ms: float | None = None,
    attempt: int = 1,
    final: bool = False,
    sha256: str | None = None,
) -> Outcome:
    """One stage's result for one item, as the ledger stores it.

    ``final`` marks the event that completes the item (the last stage's ``ok``);
    ``skipped`` and ``failed`` always end the item's journey for this run.
    """
    if result not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}, not {result!r}")
    return {
        "item_id": item_id,
        "stage": stage,
        "outcome": result,
        "reason": reason,
        "detail": detail or {},
        "bytes": bytes,
        "duration_ms": duration_ms,
        "attempt": attempt,
        "final": bool(final),
        "sha256": sha256,
    }


class Stopwatch:
    """Milliseconds since construction: ``sw = Stopwatch(); ...; sw.ms``."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def ms(self) -> float:
        return round((time.perf_counter() - self.start) * 1000.0, 3)


class PermanentError(Exception):
    """An error that a retry cannot fix (corrupt file, 404, bad credentials).

    ``reason`` is the short code the ledger records (``not_found``, ``corrupt``...).
    """

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


class TransientError(Exception):
    """An error worth retrying (5xx, reset, timeout, truncated body)."""

    def __init__(self, reason: str, message: str = "", retry_after: float | None = None) -> None:
        super().__init__(message or reason)
        self.reason = reason
        self.retry_after = retry_after
