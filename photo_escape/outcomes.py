"""Items and outcomes: the two plain records that travel between the flow and its tasks.

An *item* is one photo as a source knows it, a plain dict (so it pickles to a Dask
worker and serialises to JSON):

    item_id     stable id within the job, e.g. "local:2006/10/04/IMG_1.JPG" or a URL
    source_ref  where it came from (path, URL, s3://bucket/key), shown in reports
    name        a safe file name for it
    ...         source-specific fields (path, url, size, mtime, etag, ...)

Stages add fields as the item moves on: ``local_path`` and ``sha256`` after fetch,
``capture`` (a capture-time record) after the capture_time stage.

An *outcome* is what one stage did to one item; the flow appends outcomes to the
ledger's ``events`` table in bulk.
"""

from __future__ import annotations

import time
from typing import Any

OUTCOMES = ("ok", "skipped", "failed", "needs_review")


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
) -> dict[str, Any]:
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
