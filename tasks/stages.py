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
from prefect.utilities.annotations import BaseAnnotation

from photo_escape.outcomes import Stopwatch, outcome
from photo_escape.plugins import KindConfig, make_destination, make_source
from photo_escape.secrets import scrubbed_exceptions

BATCH_RETRIES = 2


def _retry_delays(retries: int) -> list[float]:
    return [2.0 * (2**i) for i in range(retries)]


def _unquoted(batch: Any) -> Any:
    """A batch as the flow passed it: in ``quote()`` (so Prefect does not walk every item
    dict looking for futures) when the tasks run in the flow's process; the task itself
    receives the plain list, but its run name is made from the parameters as given."""
    return batch.unwrap() if isinstance(batch, BaseAnnotation) else batch


def _name(prefix: str):
    def name() -> str:
        from prefect.runtime import task_run

        params = task_run.parameters or {}
        return f"{prefix}-{len(_unquoted(params.get('items') or params.get('entries') or []))}-items"

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
      task_run_name=_name("examine"), cache_policy=None, persist_result=False)
def examine_batch(entries: list[dict], hash_entries: list[dict], processes: int, max_pixels: int, max_bytes: int,
                  rules: list[Any], default_tz: str | None) -> dict:
    """Hash a batch of fetched files and restore the capture time of each photo that
    hashed: one task for both, as both are local work on the same files.

    ``hash_entries`` (``path``, ``sha256``) are the contents the ledger has not hashed
    yet; ``entries`` (``path``, ``item_id``, ``sha256``, ``name``, ``folder``) are all
    the batch's photos. Returns ``{"hash": [one hash record per hash entry, in order],
    "capture": {item_id: capture-time record}}``, the latter for every photo whose
    content did not fail to hash (see :func:`tasks.hashing.hash_file` and
    :func:`tasks.capture_time.capture_times`).
    """
    from tasks.capture_time import capture_times
    from tasks.hashing import hash_files

    records = hash_files([e["path"] for e in hash_entries], processes=processes,
                         max_pixels=max_pixels, max_bytes=max_bytes)
    unreadable = {e.get("sha256") for e, r in zip(hash_entries, records) if r.get("status") != "ok"}
    readable = [e for e in entries if e.get("sha256") not in unreadable]
    times = capture_times(readable, rules=rules, default_tz=default_tz)
    return {"hash": records, "capture": {e["item_id"]: t for e, t in zip(readable, times)}}


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
