"""The escape pipeline's Prefect tasks: each takes a BATCH of items and calls plain code.

A task never writes the ledger: it returns compact per-item outcome records and the
flow appends them. Item-level problems (a corrupt file, a 404) are outcomes, not
exceptions; a task raises only when the whole batch could not be worked (a bug, a
lost worker), and then Prefect retries the batch with backoff and jitter. Every
stage is idempotent per item, so a retried batch does no harm.

Arguments are plain data (configs, item dicts) so a batch can run on a Dask worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from photo_escape.outcomes import Stopwatch, outcome
from photo_escape.plugins import KindConfig, make_destination, make_source
from photo_escape.secrets import scrubbed_exceptions

BATCH_RETRIES = 2


def _retry_delays(retries: int) -> list[float]:
    return [2.0 * (2**i) for i in range(retries)]


def _name(prefix: str):
    def name() -> str:
        from prefect.runtime import task_run

        from prefect.utilities.annotations import BaseAnnotation

        params = task_run.parameters or {}
        batch = params.get("items") or params.get("entries") or []
        if isinstance(batch, BaseAnnotation):  # the flow passes batches in quote(): Prefect need not walk them
            batch = batch.unwrap()
        return f"{prefix}-{len(batch)}-items"

    return name


@task(retries=BATCH_RETRIES, retry_delay_seconds=_retry_delays(BATCH_RETRIES), retry_jitter_factor=0.5,
      task_run_name=_name("fetch"), cache_policy=None, persist_result=False)
def fetch_batch(source_config: KindConfig, items: list[dict], workdir: str, options: Any) -> list[dict]:
    """Download (or, for a local folder, check and hash) a batch of listed items."""
    source = make_source(source_config, workdir=Path(workdir), options=options)
    try:
        with scrubbed_exceptions():  # a failed task's message goes to the Prefect API
            return source.fetch(items)
    finally:
        source.close()


@task(retries=BATCH_RETRIES, retry_delay_seconds=_retry_delays(BATCH_RETRIES), retry_jitter_factor=0.5,
      task_run_name=_name("hash"), cache_policy=None, persist_result=False)
def hash_batch(entries: list[dict], processes: int, max_pixels: int, max_bytes: int) -> list[dict]:
    """Hash a batch of files (``entries``: dicts with ``path``), CPU work on a process pool.

    Returns one hash record per entry, in order (see :func:`tasks.hashing.hash_file`).
    """
    from tasks.hashing import hash_files

    return hash_files([e["path"] for e in entries], processes=processes,
                      max_pixels=max_pixels, max_bytes=max_bytes)


@task(retries=BATCH_RETRIES, retry_delay_seconds=_retry_delays(BATCH_RETRIES), retry_jitter_factor=0.5,
      task_run_name=_name("capture-time"), cache_policy=None, persist_result=False)
def capture_time_batch(entries: list[dict], rules: list[Any], default_tz: str | None) -> list[dict]:
    """The true capture time of each photo in a batch, with its provenance."""
    from tasks.capture_time import capture_times

    return capture_times(entries, rules=rules, default_tz=default_tz)


@task(retries=BATCH_RETRIES, retry_delay_seconds=_retry_delays(BATCH_RETRIES), retry_jitter_factor=0.5,
      task_run_name=_name("deliver"), cache_policy=None, persist_result=False)
def deliver_batch(destination_config: KindConfig, items: list[dict], workdir: str, options: Any,
                  dry_run: bool) -> list[dict]:
    """Deliver a batch of fetched, hashed and dated photos to the destination."""
    dest = make_destination(destination_config, workdir=Path(workdir), options=options)
    try:
        with scrubbed_exceptions():  # a failed task's message goes to the Prefect API
            results = dest.deliver(items, dry_run=dry_run)
    finally:
        dest.close()
    # a destination that raised for one item must not lose the others
    seen = {r["item_id"] for r in results}
    sw = Stopwatch()
    for item in items:
        if item["item_id"] not in seen:
            results.append(outcome(item["item_id"], "deliver", "failed", "no_result",
                                   detail={"message": "the destination returned no outcome"},
                                   duration_ms=sw.ms) | {"item": item})
    return results
