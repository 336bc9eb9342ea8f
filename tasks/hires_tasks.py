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
from tasks.flickr import PrefectRateLimit  # noqa: F401 - its old home: imports of it from here go on working


def _worker(job: dict) -> hires.HiresWorker:
    """The batch's worker, pacing its Flickr calls by the job's budget."""
    spec = hires.load_hires_job(job)
    return hires.HiresWorker(spec)  # FlickrConnection.connect paces by flickr.prefect_rate_limit when named


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
