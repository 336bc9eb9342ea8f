"""One run of a story, as its job's ledger records it: the bookkeeping every story flow shares.

Each story's flow tells its own story (list, fetch, match, replace...); around it,
every run is recorded alike:

1. **start**: open the job's ledger (one writer at a time), mark runs a killed process
   left ``running`` as abandoned, and add this run with its Prefect flow run id;
2. **still to do**: of what was listed, leave out what an earlier run finished with the
   same settings and the same source fingerprint (or, with ``only_failed``, keep just
   the photos whose last outcome failed);
3. **record** each stage's outcomes (and the assets, capture times and matches found
   on the way), in order, straight away or through a writer thread;
4. **finish**: reconcile (``listed = done + skipped + failed + pending``), write the
   summary and the report into the run, and, when the caller asked for it, end with
   :class:`PhotosFailed` so the Prefect UI offers *Retry*. A run that raises is
   finished ``crashed`` with whatever it recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from photo_escape.crashpoints import crash_point
from photo_escape.jobspec import JobBase
from photo_escape.outcomes import Item, Outcome
from tasks.ledger import Ledger, LedgerWriter, new_run_id


class PhotosFailed(Exception):
    """Raised at the end of a recorded and reported run when photos failed and the caller asked to fail."""


def flow_run_id() -> str | None:
    """The id of the Prefect flow run we are in, if any (recorded with each ledger run)."""
    try:
        from prefect.runtime import flow_run

        return str(flow_run.id) if flow_run.id else None
    except Exception:  # noqa: BLE001 - outside Prefect there is simply no id
        return None


def stopped(exc: BaseException) -> Any:
    """The Failed state a flow returns when its run cannot go on for a reason a person must
    fix (a destination that cannot be listed): its message is that one line, with no
    traceback in the logs; the run is already recorded as crashed in the ledger."""
    from prefect.states import Failed

    return Failed(message=str(exc))


Facts = dict[str, Any] | Callable[[Ledger], dict[str, Any]]


class RunRecord:
    """The ledger's record of one story run, from start to reconciliation and report.

    Use it as a context manager around the story: ``with RunRecord(...) as run:``
    starts the run; leaving the block by an exception finishes it ``crashed`` (what was
    recorded stays) and closes the ledger. ``run.finish(facts)`` ends a run that got
    to its end and returns its summary.
    """

    def __init__(self, job: JobBase, *, flow: str, settings: str, dry_run: bool = False,
                 only_failed: bool = False, run_id: str | None = None, fail_on_failed_items: bool = False,
                 log: Any = None, redo_changed: bool = True) -> None:
        self.job = job
        self.redo_changed = redo_changed
        self.flow = flow
        self.settings = settings
        self.dry_run = dry_run
        self.only_failed = only_failed
        self.run_id = run_id or new_run_id()
        self.fail_on_failed_items = fail_on_failed_items
        self.log = log
        self.ledger: Ledger | None = None
        self.writer: LedgerWriter | None = None
        self._reads: Ledger | None = None
        self._failed_before: set[str] | None = None
        self._history = True
        self.summary: dict[str, Any] | None = None

    # -- start ------------------------------------------------------------------------------
    def __enter__(self) -> "RunRecord":
        self.ledger = Ledger(self.job.ledger_path)
        try:
            self._history = self.ledger.has_history(self.job.name)
            self.ledger.start_run(self.run_id, self.job.name, flow=self.flow, settings=self.settings,
                                  spec=self.job.dump(), dry_run=self.dry_run, only_failed=self.only_failed,
                                  flow_run_id=flow_run_id())
            if self.only_failed:
                self._failed_before = {i["item_id"] for i in self.ledger.failed_items(self.job.name)}
        except BaseException:
            self.ledger.close()
            raise
        return self

    def write_in_background(self) -> None:
        """Record through a writer thread from now on: the story goes on while outcomes are
        written in order, and a second connection answers its questions meanwhile."""
        self.writer = LedgerWriter(self.ledger)
        self._reads = self.ledger.reader()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is not None and self.summary is None:
                try:
                    self.finish(status="crashed")
                except Exception as inner:  # noqa: BLE001 - the story's own exception is the one to see
                    if self.log is not None:
                        self.log.error("the crashed run could not be summed up: %s", inner)
        finally:
            self._close()

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self._reads is not None:
            self._reads.close()
        if self.ledger is not None:
            self.ledger.close()

    @property
    def has_history(self) -> bool:
        """Whether an earlier run of the job did any work (else nothing can be complete)."""
        return self._history

    @property
    def reads(self) -> Ledger:
        """The connection for the story's questions (the writer's own while none is in the background)."""
        return self._reads or self.ledger

    # -- what is still to do ----------------------------------------------------------------------
    def failed_items(self) -> list[Item]:
        """The photos whose latest outcome failed, as their listing recorded them (``only_failed``)."""
        return self.reads.failed_items(self.job.name)

    def still_to_do(self, items: list[Item]) -> list[Item]:
        """The listed items an earlier run has not finished with these settings (and, with
        ``redo_changed``, this source fingerprint); with ``only_failed``, only those whose
        last outcome failed."""
        if self._failed_before is not None:
            items = [i for i in items if i["item_id"] in self._failed_before]
        if not self._history or not items:  # a job's first run: nothing can be complete yet
            return items
        done = self.reads.completed(self.job.name, [i["item_id"] for i in items], self.settings)
        return [i for i in items if i["item_id"] not in done
                or (self.redo_changed and i.get("fingerprint") and done[i["item_id"]] and i["fingerprint"] != done[i["item_id"]])]

    # -- record ------------------------------------------------------------------------------------
    def listed(self, items: list[Item]) -> None:
        """Record listed items (a ``list`` event each)."""
        self._do(self.ledger.add_items, self.job.name, self.run_id, items)

    def record(self, stage: str, outcomes: list[Outcome], *, assets: list[dict] | None = None,
               capture_rows: list[dict] | None = None, matches: list[dict] | None = None) -> None:
        """Record one stage of a batch: its outcomes and what it found, all or nothing."""
        self._do(self._write, stage, outcomes, assets, capture_rows, matches)

    def _do(self, fn: Callable, *args: Any) -> None:
        if self.writer is not None:
            self.writer.put(fn, *args)
        else:
            fn(*args)

    def _write(self, stage: str, outcomes: list[Outcome], assets: list[dict] | None,
               capture_rows: list[dict] | None, matches: list[dict] | None) -> None:
        if not outcomes and not assets and not capture_rows and not matches:
            return  # nothing reached this stage (every photo of the batch failed before it)
        crash_point(stage)  # tests only: die here, the stage done but not yet recorded
        with self.ledger.transaction():
            if assets:
                from tasks.hashing import store_assets

                store_assets(self.ledger, assets)
            if capture_rows:
                self.ledger.add_capture_times(self.job.name, self.run_id, capture_rows)
            if matches:
                self.ledger.add_matches(self.job.name, self.run_id, matches)
            self.ledger.append_events(self.job.name, self.run_id, outcomes, settings=self.settings)

    def check(self) -> None:
        """Raise here if the writer thread failed (the story should stop, not go on unrecorded)."""
        if self.writer is not None:
            self.writer.check()

    def flush(self) -> None:
        """Wait until everything recorded so far is written."""
        if self.writer is not None:
            self.writer.flush()

    # -- finish ------------------------------------------------------------------------------------
    def finish(self, facts: Facts | None = None, *, status: str = "finished",
               returned: dict[str, Any] | None = None) -> dict[str, Any]:
        """Reconcile, record the summary and the report, and return the summary.

        ``facts`` (or a function of the ledger giving them) join the summary: the story's
        own counts, and ``expected_count`` when the source knows how many to expect.
        ``returned`` joins the summary the caller gets but is not stored (large rankings).
        With ``fail_on_failed_items``, a finished run in which photos failed raises
        :class:`PhotosFailed` after all of this.
        """
        if self.writer is not None:
            self.writer.close()  # whatever was put is written before the run is summed up
        counts = self.ledger.reconciliation(run_id=self.run_id)
        summary: dict[str, Any] = {
            "run_id": self.run_id, "job": self.job.name, "ledger": str(Path(self.job.ledger_path).resolve()),
            "report": None, **counts, "dry_run": self.dry_run, "only_failed": self.only_failed, "status": status,
        }
        found = (facts(self.ledger) if callable(facts) else facts) or {}
        if found.get("expected_count") is not None:
            summary["expected_count"] = found["expected_count"]
            summary["expected_count_met"] = counts["done"] + counts["skipped"] >= found["expected_count"] \
                and counts["listed"] == found["expected_count"]
        summary.update({k: v for k, v in found.items() if k not in summary})
        self.summary = summary
        self.ledger.finish_run(self.run_id, status, summary)
        summary["report"] = self._report()
        if summary["report"]:
            self.ledger.finish_run(self.run_id, status, summary)
        if status == "finished" and self.fail_on_failed_items and counts["failed"]:
            raise PhotosFailed(f"{counts['failed']} of {counts['listed']} photos failed; see {summary['report']}")
        return {**summary, **(returned or {})}

    def _report(self) -> str | None:
        """Write and publish the run's report; a report problem never loses the run's record."""
        from reports.artifacts import report_run

        return report_run(self.ledger, job=self.job.name, run_id=self.run_id, reports_dir=self.job.reports_dir,
                          log=self.log)
