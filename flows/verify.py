"""Fixity: check that the archive still holds what the ledger says was delivered, and mend it.

It reads like the job it automates:

1. open the escape job's ledger and start a ``verify`` run;
2. take what the ledger says was delivered to the job's destination (target, sha256,
   size of every photo), and record it as this run's listing;
3. look at the destination itself: one listing for every photo's presence and size,
   then a full read of each (or, with ``sample_percent``, of a random share), several
   at once; a ``fixity`` event per photo: ``ok``, ``missing`` or ``changed``;
4. with ``repair``, deliver again what is missing or changed, from the source, only
   where the source still holds the very bytes the ledger recorded; a changed copy is
   kept beside the original (``NAME~changed-YYYYMMDD.EXT``), never destroyed;
5. reconcile, write the report and return the summary, which counts ``checked``,
   ``ok``, ``missing`` and ``changed``.

A destination that cannot be listed (permission denied, no such bucket) stops the run
with one line saying so: it never reads as an empty archive.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.utilities.annotations import quote

from flows.run_job import JobInput
from flows.run_record import RunRecord, stopped
from photo_escape.plugins import DestinationUnreadable, make_destination
from photo_escape.secrets import scrubbed_exceptions
from photo_escape.stories import load_job
from tasks import fixity
from tasks.stages import repair_batch, verify_batch


@flow(name="verify", log_prints=True)
def verify(job: JobInput, sample_percent: float = 100.0, repair: bool = False, run_id: str = "",
           fail_on_failed_items: bool = False) -> dict:
    """Check the photos an escape job delivered, at its destination; returns the summary
    (``checked``, ``ok``, ``missing``, ``changed``; with ``repair``, ``repaired``).

    Args:
        job: The escape job whose destination is checked: the path of its job file on the
            worker, or the job written inline (Python callers may pass either directly).
        sample_percent: The share of the photos read back whole, in percent (the others
            only have their presence and size checked); 100 reads every one.
        repair: Deliver again, from the source, the photos found missing or changed (a
            changed copy is kept beside, never destroyed).
        run_id: Leave empty: a new run id is made (for callers that name the run).
        fail_on_failed_items: End the run Failed when it finds problems it did not mend.
    """
    log = get_run_logger()
    job = JobInput.model_validate(job)
    spec = load_job(job.job())
    sample_percent = None if sample_percent >= 100 else sample_percent
    run_id = run_id or None
    if spec.flow != "escape":
        raise ValueError(f"verify checks what an escape job delivered; {spec.name} is a {spec.flow} job")
    settings = make_destination(spec.destination, workdir=spec.work_path, options=spec.options).settings_key()
    try:
        return _verify(spec, settings, sample_percent, repair, run_id, fail_on_failed_items, log)
    except DestinationUnreadable as exc:  # recorded as crashed; said in one line, no traceback
        return stopped(exc)


def _verify(spec, settings: str, sample_percent: float | None, repair: bool, run_id: str | None,
            fail_on_failed_items: bool, log) -> dict:
    with scrubbed_exceptions(), RunRecord(spec, flow="verify", settings=settings, run_id=run_id,
                                          fail_on_failed_items=fail_on_failed_items,
                                          log=log) as run:
        workdir = str(spec.work_path / run.run_id)
        Path(workdir).mkdir(parents=True, exist_ok=True)
        delivered = run.ledger.delivered(spec.name, settings=settings)
        run.listed([row["item"] for row in delivered])
        looked = verify_batch(spec.destination, quote(delivered), workdir, spec.options, sample_percent)
        if looked["unreadable"]:
            raise DestinationUnreadable(looked["unreadable"])
        findings = looked["findings"]
        run.record("fixity", findings)
        found = fixity.counts(findings)
        log.info("%(checked)d photos checked: %(ok)d ok, %(missing)d missing, %(changed)d changed", found)
        facts = {**found, "sample_percent": sample_percent, "repair": repair}
        problems = [f for f in findings if f["outcome"] == "failed" and f["reason"] in ("missing", "changed")]
        if repair and problems:
            repaired = repair_batch(spec.source, spec.destination, quote(delivered), quote(problems), workdir,
                                    spec.options)
            run.record("repair", repaired)
            facts["repaired"] = sum(1 for r in repaired if r["stage"] == "deliver" and r["outcome"] == "ok")
            facts["left_alone"] = sum(1 for r in repaired if r["stage"] == "repair")
            log.info("%d photos delivered again, %d left alone", facts["repaired"], facts["left_alone"])
        return run.finish(facts)
