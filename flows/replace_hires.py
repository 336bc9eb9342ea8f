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


from prefect import flow, get_run_logger

from flows.run_record import RunRecord
from photo_escape.stories import load_job
from tasks import hires
from tasks.hires_tasks import build_master_index, list_flickr_page, match_and_find_masters, replace_restore_verify


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
    spec = load_job(job, "replace_hires")
    plain = spec.dump()
    index = build_master_index(plain)
    log.info("master index: %s masters for %s Digital IDs", index.get("masters"), index.get("ids"))

    # a replaced photo's Flickr fingerprint (secret, size) is the replace's own doing: not a reason to redo it
    with RunRecord(spec, flow="replace_hires", settings=spec.settings_key(), dry_run=dry_run,
                   only_failed=only_failed, run_id=run_id, fail_on_failed_items=fail_on_failed_items, log=log,
                   redo_changed=False) as run:
        page, pages = 1, 1
        while page <= pages:
            listing = list_flickr_page(plain, page)
            pages = listing["pages"]
            run.listed(listing["items"])
            todo = run.still_to_do(listing["items"])
            for batch in _batches(todo, spec.options.batch_size):
                remembered = hires.remembered_dates(run.ledger, spec.name, [i["item_id"] for i in batch])
                prepared = match_and_find_masters(plain, batch, remembered)
                _record(run, "match", prepared)
                if prepared["ready"]:
                    _record(run, "replace", replace_restore_verify(plain, prepared["ready"], dry_run))
            log.info("page %s of %s: %s photos listed, %s to do", page, pages, len(listing["items"]), len(todo))
            page += 1
        return run.finish(lambda ledger: hires.run_counts(ledger, run.run_id))


def _batches(items: list[dict], size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _record(run: RunRecord, step: str, result: dict) -> None:
    """Record a batch's hash records, match rows and outcomes (the flow is the only writer)."""
    run.record(step, result.get("outcomes") or [], assets=result.get("assets"), matches=result.get("matches"))
