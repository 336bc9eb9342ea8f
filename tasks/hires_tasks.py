"""The hi-res replacement's Prefect tasks: each works on a BATCH of photos and calls
:mod:`tasks.hires`. A task never writes the ledger; it returns outcome records.

The job travels as plain data (``HiresJob.model_dump(mode="json")``); secrets are
resolved inside the task, where they are used.

Batch tasks are *not* retried by Prefect: the per-call retries of transient Flickr
errors happen inside (tasks.flickr), and a blind re-run of a replace batch is what
the flow must never do. A photo left unfinished is picked up by the next run.
"""

from __future__ import annotations

from prefect import task

from tasks import hires


class PrefectRateLimit:
    """A call budget kept by the Prefect server: a global concurrency limit with slot
    decay, so batches on different machines (Dask workers) share Flickr's 3,600 calls
    an hour. Same ``take()`` as :class:`tasks.flickr.CallBudget`."""

    def __init__(self, name: str) -> None:
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        try:
            with get_client(sync_client=True) as client:
                limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            raise ValueError(
                f"there is no Prefect concurrency limit named {name!r}; create it with "
                f"`prefect gcl create {name} --limit 60 --slot-decay-per-second 1` (3,600 calls an hour)") from None
        if not limit.slot_decay_per_second:
            raise ValueError(f"the Prefect concurrency limit {name!r} has no slot decay: it cannot pace calls")
        self.name = name
        self.waited = 0.0

    def take(self) -> float:
        import time

        from prefect.concurrency.sync import rate_limit

        start = time.monotonic()
        rate_limit(self.name, occupy=1, strict=True)
        waited = time.monotonic() - start
        self.waited += waited
        return waited


def _worker(job: dict) -> hires.HiresWorker:
    """The batch's worker, pacing its Flickr calls by the job's budget."""
    spec = hires.load_hires_job(job)
    name = spec.flickr.prefect_rate_limit
    return hires.HiresWorker(spec, budget=PrefectRateLimit(name) if name else None)


def _named(prefix: str):
    def name() -> str:
        from prefect.runtime import task_run

        params = task_run.parameters or {}
        if "page" in params:
            return f"{prefix}-page-{params['page']}"
        return f"{prefix}-{len(params.get('items') or [])}-photos"

    return name


@task(task_run_name=_named("list-flickr"), cache_policy=None, persist_result=False, retries=1,
      retry_delay_seconds=5)
def list_flickr_page(job: dict, page: int) -> dict:
    """One page of the account's photos as ledger items (listing is read-only: retried)."""
    worker = _worker(job)
    try:
        return worker.list_page(page)
    finally:
        worker.close()


@task(task_run_name=_named("build-master-index"), cache_policy=None, persist_result=False)
def build_master_index(job: dict) -> dict:
    """The master index, built from the store's listing if missing or stale."""
    return hires.ensure_master_index(hires.load_hires_job(job))


@task(task_run_name=_named("match-and-find-masters"), cache_policy=None, persist_result=False)
def match_and_find_masters(job: dict, items: list[dict], remembered: dict) -> dict:
    """Steps 1-2 for a batch: compare with the catalogue, find the master, read date taken."""
    worker = _worker(job)
    try:
        return worker.prepare(items, remembered)
    finally:
        worker.close()


@task(task_run_name=_named("replace-restore-verify"), cache_policy=None, persist_result=False)
def replace_restore_verify(job: dict, items: list[dict], dry_run: bool = False) -> dict:
    """Steps 3-5 for a batch: replace the file, restore date taken, verify."""
    worker = _worker(job)
    try:
        return worker.replace_batch(items, dry_run=dry_run)
    finally:
        worker.close()
