"""Story 5: replace a library's Flickr Commons photos with their hi-res masters.

It reads like the job it automates:

1. make sure the master index exists (built from the store's ``find`` listing);
2. open the job's ledger and start a run;
3. list the account's photos page by page, recording every listed photo, and leave
   out what an earlier run already finished with the same settings;
4. for each batch: match each Flickr photo with its catalogue image (directly or
   through its album), find its master, skip it when the master is no larger or
   too large for Flickr, and read its date taken, recording all of it;
5. then replace the ready ones, restore the date taken Flickr wiped out, verify;
6. reconcile (``listed = done + skipped + failed + pending``), write the report and
   return the summary.

One run at a time per deployment comes from the deployment's concurrency limit
(``prefect.yaml``), and the ledger itself refuses a second writer. A run can stop
anywhere: the next one skips what is finished, restores dates from what the ledger
remembers, and never uploads a photo Flickr already holds at the master's size.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows import flow_run_id
from reports.artifacts import report_run

from tasks import hires
from tasks.hires_tasks import build_master_index, list_flickr_page, match_and_find_masters, replace_restore_verify
from tasks.ledger import Ledger, new_run_id


@flow(name="replace-hires", log_prints=True)
def replace_hires(job: dict | str, dry_run: bool = False, only_failed: bool = False,
                  run_id: str | None = None, fail_on_failed_items: bool = False) -> dict:
    """Replace the account's photos with larger masters; returns the run's summary.

    ``job`` is a hi-res job (a dict, or the path of a YAML file with ``flow: replace_hires``).
    ``dry_run`` matches and checks everything but uploads nothing; ``only_failed``
    works only on photos whose last outcome failed. With ``fail_on_failed_items`` the
    flow run ends Failed (after recording and reporting) when photos failed, so a
    retry from the Prefect UI picks them up.
    """
    log = get_run_logger()
    spec = hires.load_hires_job(job)
    plain = spec.model_dump(mode="json")
    index = build_master_index(plain)
    log.info("master index: %s masters for %s Digital IDs", index.get("masters"), index.get("ids"))

    run_id = run_id or new_run_id()
    settings = spec.settings_key()
    ledger = Ledger(spec.ledger_path)
    try:
        ledger.start_run(run_id, spec.name, flow="replace_hires", settings=settings, spec=plain,
                         dry_run=dry_run, only_failed=only_failed, flow_run_id=flow_run_id())
        status = "crashed"
        try:
            failed_before = {i["item_id"] for i in ledger.failed_items(spec.name)} if only_failed else None
            page, pages = 1, 1
            while page <= pages:
                listing = list_flickr_page(plain, page)
                pages = listing["pages"]
                ledger.add_items(spec.name, run_id, listing["items"])
                todo = _still_to_do(ledger, spec, settings, listing["items"], failed_before)
                for batch in _batches(todo, spec.options.batch_size):
                    remembered = hires.remembered_dates(ledger, spec.name, [i["item_id"] for i in batch])
                    prepared = match_and_find_masters(plain, batch, remembered)
                    _record(ledger, spec.name, run_id, settings, prepared)
                    if prepared["ready"]:
                        replaced = replace_restore_verify(plain, prepared["ready"], dry_run)
                        _record(ledger, spec.name, run_id, settings, replaced)
                log.info("page %s of %s: %s photos listed, %s to do", page, pages, len(listing["items"]), len(todo))
                page += 1
            status = "finished"
        finally:
            summary = _finish(ledger, spec, run_id, status, dry_run, only_failed)
        if fail_on_failed_items and summary["failed"]:
            raise PhotosFailed(f"{summary['failed']} of {summary['listed']} photos failed; see {summary['report']}")
        return summary
    finally:
        ledger.close()


class PhotosFailed(Exception):
    """Raised at the end of a recorded run when photos failed and the caller asked to fail."""


def _still_to_do(ledger: Ledger, spec: hires.HiresJob, settings: str, items: list[dict],
                 failed_before: set[str] | None) -> list[dict]:
    """The listed photos an earlier run has not already finished (or, with
    ``only_failed``, the ones whose last outcome failed)."""
    finished = ledger.completed(spec.name, [i["item_id"] for i in items], settings)
    todo = [i for i in items if i["item_id"] not in finished]
    if failed_before is not None:
        todo = [i for i in todo if i["item_id"] in failed_before]
    return todo


def _batches(items: list[dict], size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _record(ledger: Ledger, job: str, run_id: str, settings: str, result: dict) -> None:
    """Append a batch's hash records, match rows and outcomes (the flow is the only writer)."""
    ledger.add_assets(result.get("assets") or [])
    ledger.add_matches(job, run_id, result.get("matches") or [])
    ledger.append_events(job, run_id, result.get("outcomes") or [], settings=settings)


def _finish(ledger: Ledger, spec: hires.HiresJob, run_id: str, status: str, dry_run: bool,
            only_failed: bool) -> dict:
    counts = ledger.reconciliation(run_id=run_id)
    summary = {
        "run_id": run_id, "job": spec.name, "ledger": str(Path(spec.ledger_path).resolve()), "report": None,
        **counts, **hires.run_counts(ledger, run_id),
        "dry_run": dry_run, "only_failed": only_failed, "status": status,
    }
    ledger.finish_run(run_id, status, summary)
    summary["report"] = report_run(ledger, job=spec.name, run_id=run_id, reports_dir=spec.reports_dir,
                                   log=get_run_logger())
    if summary["report"]:
        ledger.finish_run(run_id, status, summary)
    return summary
