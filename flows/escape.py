"""The escape flow: list a source, fetch, hash, restore capture times, deliver, record.

It reads like the job it automates:

1. open the job's ledger (one run at a time per ledger) and start a run;
2. list the source page by page, recording every listed photo;
3. leave out what an earlier run already finished with the same settings;
4. for each batch: fetch, then hash -> capture time -> deliver, two Prefect tasks over
   hundreds of photos each, with at most three batches under way at once;
5. append every outcome to the ledger as each batch's stage completes (this flow is
   the ledger's only writer; its writes run in order on one writer thread, so the
   loop goes on submitting stages meanwhile), updating a progress artifact;
6. reconcile (``listed = done + skipped + failed + pending``), write the report and
   return the summary.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any, Iterator

from prefect import flow, get_run_logger
from prefect.futures import as_completed
from prefect.utilities.annotations import quote
from prefect.task_runners import ThreadPoolTaskRunner

from flows.progress import Progress as _Progress
from flows.run_record import RunRecord, stopped
from photo_escape.jobspec import JobSpec
from photo_escape.outcomes import Item, Outcome
from photo_escape.plugins import DestinationUnreadable, Unreadable, make_destination, make_source
from photo_escape.secrets import scrubbed_exceptions
from photo_escape.stories import load_job
from tasks import fixity
from tasks.files import inside
from tasks.hashing import cached_assets, int_to_hex
from tasks.ledger import new_run_id
from tasks.stages import deliver_batch, examine_and_deliver_batch, fetch_batch, look_at_destination

BATCHES_IN_FLIGHT = 3  # batches under way at once, each at its own stage


def _batches(pages: Iterator[list[dict]], size: int) -> Iterator[list[dict]]:
    """Re-cut a source's pages into batches of ``size`` items."""
    buf: list[dict] = []
    for page in pages:
        buf.extend(page)
        while len(buf) >= size:
            yield buf[:size]
            buf = buf[size:]
    if buf:
        yield buf


def _paged(items: list[dict], size: int) -> Iterator[list[dict]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


class _Batch:
    """One batch on its way through the steps."""

    def __init__(self, items: list[Item]) -> None:
        self.items = items
        self.step = -1
        self.staged: list[str] = []  # files the fetch downloaded into the work folder


@flow(name="escape", task_runner=ThreadPoolTaskRunner(max_workers=8), log_prints=True)
def escape(
    job: dict | str,
    dry_run: bool = False,
    only_failed: bool = False,
    run_id: str | None = None,
    fail_on_failed_items: bool = False,
) -> dict:
    """Move a photo collection from the job's source to its destination, recording everything.

    ``job`` is a job spec (a dict, or the path of a YAML file). ``dry_run`` plans
    without delivering; ``only_failed`` redoes just the photos whose last outcome
    was a failure. Returns the run's summary. With ``fail_on_failed_items`` the flow
    run ends Failed (after recording and reporting) when photos failed, so it can be
    retried from the Prefect UI; the retry skips what is already done.
    """
    spec = load_job(job, "escape")
    try:
        with scrubbed_exceptions():  # an exception's text becomes the flow run's state message
            return EscapeRun(spec, dry_run=dry_run, only_failed=only_failed, run_id=run_id,
                             fail_on_failed_items=fail_on_failed_items).run()
    except Unreadable as exc:  # a source or destination unreadable: recorded as crashed; one line, no traceback
        return stopped(exc)


class EscapeRun:
    """The orchestration of one run; no HTTP or SQL of its own (sources, tasks and the run record do that)."""

    def __init__(self, spec: JobSpec, *, dry_run: bool, only_failed: bool, run_id: str | None,
                 fail_on_failed_items: bool) -> None:
        self.spec = spec
        self.opts = spec.options
        self.dry_run = dry_run
        self.only_failed = only_failed
        self.run_id = run_id or new_run_id()
        self.fail_on_failed_items = fail_on_failed_items
        self._examiners_started = False
        self.workdir = str(spec.work_path / self.run_id)
        self.log = get_run_logger()

    # -- the story ------------------------------------------------------------------------
    def run(self) -> dict:
        spec = self.spec
        Path(self.workdir).mkdir(parents=True, exist_ok=True)
        destination = make_destination(spec.destination, workdir=Path(self.workdir), options=self.opts)
        source = make_source(spec.source, workdir=Path(self.workdir), options=self.opts)
        self.destination = destination
        try:
            source.protect(destination.protected_prefixes())
            self.steps = _steps(source.pipeline)
            self.downloads = source.downloads
            with RunRecord(spec, flow="escape", settings=destination.settings_key(), dry_run=self.dry_run,
                           only_failed=self.only_failed, run_id=self.run_id,
                           fail_on_failed_items=self.fail_on_failed_items, log=self.log) as run:
                self.record = run
                # only now that this run holds the ledger: another run's staging is not ours to clear
                if hasattr(destination, "clear_staging") and not self.dry_run:
                    destination.clear_staging()
                self._clear_work_of_ended_runs()
                self._look_at_destination()
                self.log.info("run %s of job %s: %s -> %s%s", self.run_id, spec.name, spec.source.kind,
                              spec.destination.kind, " (dry run)" if self.dry_run else "")
                self.progress = _Progress(spec.name, self.run_id)
                run.write_in_background()
                with ThreadPoolExecutor(1, thread_name_prefix="unstage") as self.janitor:
                    try:
                        self._work(source)
                    finally:
                        self.progress.close()
                return run.finish({**source.report_facts(), "missing_at_destination": len(self.missing),
                                   "changed_at_destination": len(self.changed)})
        finally:
            source.close()
            destination.close()

    def _clear_work_of_ended_runs(self) -> None:
        """Remove the work folders of this job's earlier runs: a run killed mid-way leaves
        its downloads there, and many killed runs would otherwise fill the disk."""
        import shutil

        here = Path(self.workdir)
        for run_id in self.record.ledger.ended_runs(self.spec.name):
            if not run_id or Path(run_id).name != run_id or run_id in (".", ".."):
                continue  # a run id given by hand that is not a plain folder name: leave it
            old = here.parent / run_id
            if old != here and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)

    def _look_at_destination(self) -> None:
        """Survey the destination (:meth:`Destination.survey`) and compare what the ledger
        says was delivered with ONE listing of it.

        A photo the ledger calls delivered but which is not there any more is delivered
        again, to the same place, after a ``fixity`` event ``missing_at_destination``; one
        whose size there differs (or that a ``verify`` found changed) is left alone and
        reported ``changed`` (``photo-escape verify --repair`` keeps the changed copy and
        restores the original). A destination that cannot be listed stops the run here,
        before anything is delivered twice."""
        self.missing: dict[str, str] = {}  # item_id -> the target it was delivered to
        self.changed: set[str] = set()
        delivered = self.record.ledger.delivered(self.spec.name, settings=self.record.settings) \
            if self.record.has_history else []
        if not delivered and not self.destination.surveys:
            return  # nothing delivered yet, and nothing a look now would spare later
        looked = look_at_destination(self.spec.destination, self._batch_arg(delivered), self.workdir, self.opts)
        if looked["unreadable"]:
            raise DestinationUnreadable(looked["unreadable"])
        found = looked["findings"]
        verified_changed = self.record.ledger.fixity_problems(self.spec.name, "changed")
        by_id = {r["item_id"]: r for r in delivered}
        problems = []
        for rec in found:
            if rec["outcome"] == "ok" and rec["reason"] == "size" and rec["item_id"] in verified_changed:
                # a verify read other bytes there, of the same size, and nothing has mended it since
                rec = fixity.fixity_outcome(by_id[rec["item_id"]], "changed", "full_read",
                                            changed_by="sha256", found_by="verify")
            if rec["outcome"] != "failed":
                continue
            if rec["reason"] == "missing":
                rec["reason"] = "missing_at_destination"
                self.missing[rec["item_id"]] = by_id[rec["item_id"]]["target"]
            else:
                self.changed.add(rec["item_id"])
            problems.append(rec)
        if problems:
            self.record.record("fixity", problems)  # before the first batch: nothing is redone unrecorded
            self.log.warning("the destination differs from the ledger: %d photos missing (delivered again), "
                             "%d changed (left alone; see `photo-escape verify --repair`)",
                             len(self.missing), len(self.changed))

    def _listing(self, source) -> Iterator[list[Item]]:
        size = self.opts.batch_size
        if self.only_failed:
            return _paged(self.record.failed_items(), size)
        return _batches(source.list_pages(), size)

    def _work(self, source) -> None:
        batches = self._listing(source)
        in_flight: dict[Any, _Batch] = {}
        exhausted = False
        while True:
            # a new batch starts when fewer than BATCHES_IN_FLIGHT are under way, at whatever step:
            # the work folder holds at most that many batches' downloads however slow the destination
            while not exhausted and len(in_flight) < BATCHES_IN_FLIGHT:
                items = next(batches, None)
                if items is None:
                    exhausted = True
                    break
                batch = self._admit(items)
                if batch is not None:
                    in_flight[self._advance(batch)] = batch
            if not in_flight:
                break
            self.record.check()
            future = next(as_completed(list(in_flight)))
            batch = in_flight.pop(future)
            nxt = self._record(batch, future.result())
            if nxt is not None:
                in_flight[nxt] = batch

    def _admit(self, items: list[Item]) -> _Batch | None:
        """Record a listed batch; keep the photos that still need work."""
        self.record.listed(items)
        self.progress.add_listed(len(items))
        todo = self.record.still_to_do(items)
        if self.missing or self.changed:  # what the destination's listing found (_look_at_destination)
            chosen = {i["item_id"] for i in todo}
            todo = [dict(i, redeliver_to=self.missing[i["item_id"]]) if i["item_id"] in self.missing else i
                    for i in items if (i["item_id"] in chosen or i["item_id"] in self.missing)
                    and i["item_id"] not in self.changed]
        self.progress.add_finished(len(items) - len(todo))
        return _Batch(todo) if todo else None

    def _advance(self, batch: _Batch):
        """Submit the batch's next step; returns its future."""
        batch.step += 1
        step = self.steps[batch.step]
        items = batch.items
        if step == "fetch":
            future = fetch_batch.submit(self.spec.source, self._batch_arg(items), self.workdir, self.opts)
            self._start_examiners(len(items))
            return future
        if step == "deliver":  # a source without hashing
            return deliver_batch.submit(self.spec.destination, self._batch_arg(items), self.workdir, self.opts,
                                        self.dry_run)
        if step != EXAMINE_AND_DELIVER:
            raise ValueError(f"the escape flow has no task for the step {step!r}")
        # content the ledger has already hashed (same sha256, same algorithm) is not decoded again
        cached = cached_assets(self.record.reads, [i.get("sha256") for i in items])
        todo = {i["sha256"]: i["local_path"] for i in items if i.get("sha256") not in cached}
        return examine_and_deliver_batch.submit(
            self._batch_arg(items), self._batch_arg([{"path": p, "sha256": h} for h, p in todo.items()]),
            self._batch_arg({sha: _asset(row) for sha, row in cached.items()}),
            self._batch_arg({"processes": self._processes(), "max_pixels": self.opts.max_pixels,
                             "max_bytes": self.opts.max_bytes, "rules": list(self.spec.time_zones),
                             "default_tz": self.spec.default_tz}),
            self.spec.destination, self.workdir, self.opts, self.dry_run)

    def _batch_arg(self, batch: list[dict] | dict) -> Any:
        """A batch as a task argument. In this process it goes in ``quote()``: Prefect then
        does not walk hundreds of item dicts looking for futures to resolve (a measurable
        share of the flow's own CPU). Dask ships arguments to its workers in its own
        encoding, which does not keep Prefect's annotations, so there it goes as it is."""
        return batch if self.opts.task_runner == "dask" else quote(batch)

    def _start_examiners(self, count: int) -> None:
        """Once, as the first batch starts downloading: start the processes that will hash
        and date it, so that they are ready when it is (each is a new interpreter and its
        imports, 0.1-0.2 s; started by the first examination they came one after the other).
        A run with nothing to download starts none."""
        if self._examiners_started or EXAMINE_AND_DELIVER not in self.steps:
            return
        self._examiners_started = True
        from tasks.stages import warm_examine

        warm_examine(self.opts, count)

    def _processes(self) -> int:
        if self.opts.task_runner == "dask":
            return 1
        return self.opts.processes

    def _record(self, batch: _Batch, results: list[Outcome] | dict):
        """Record a finished step's outcomes; return the next step's future (or None)."""
        step = self.steps[batch.step]
        if step == EXAMINE_AND_DELIVER:  # three stages' outcomes, recorded stage by stage, in order
            self.record.record("hash", results["hash"], assets=results["assets"])
            self.record.record("capture_time", results["capture_time"], capture_rows=results["capture_rows"])
            self.record.record("deliver", results["deliver"])
            going_on: list[Item] = []
        else:
            self.record.record(step, results)
            going_on = [o["item"] for o in results if o["outcome"] == "ok" and not o.get("final") and "item" in o]
        if batch.step + 1 >= len(self.steps):  # after the last step the batch is done
            going_on = []
        self.progress.add_finished(len(batch.items) - len(going_on))
        if step == "fetch" and self.downloads:
            batch.staged = [o["item"]["local_path"] for o in results if (o.get("item") or {}).get("local_path")]
        batch.items = going_on
        if not going_on:
            self._unstage(batch)
            return None
        return self._advance(batch)

    def _unstage(self, batch: _Batch) -> None:
        """Remove a finished batch's downloads from the work folder (disk stays flat), on
        the janitor thread: hundreds of unlinks would hold up the loop's next submission."""
        if batch.staged:
            self.janitor.submit(_remove_downloads, batch.staged, self.workdir, self.log)
        batch.staged = []


def _asset(row: dict) -> dict:
    """The hashes of a photo's content as the ledger keeps them, as a hash outcome shows
    them (the 64-bit hashes as the 16 hex digits imagehash prints)."""
    return {"width": row.get("width"), "height": row.get("height"), "format": row.get("format"),
            **{k: int_to_hex(row.get(k)) for k in ("phash", "dhash")}}


EXAMINE_AND_DELIVER = "examine_and_deliver"  # hash, capture time and delivery of a batch: one task run


def _steps(pipeline: tuple[str, ...]) -> tuple[str, ...]:
    """The task runs a batch goes through: the source's stages, except that hashing,
    reading the capture time and delivering are one step, ``examine_and_deliver`` (all
    work on the same local files; a task run per stage cost the run more than the work
    between them, measured in bench/RESULTS.md). The ledger still records each stage
    on its own, in order."""
    steps = tuple(pipeline)
    if steps[-3:] == ("hash", "capture_time", "deliver"):
        steps = steps[:-3] + (EXAMINE_AND_DELIVER,)
    return steps


def _remove_downloads(paths: list[str], workdir: str, log: Any) -> None:
    """Delete a finished batch's downloads, only ever inside the run's work folder."""
    for path in paths:
        p = os.path.abspath(path)
        if inside(p, workdir):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
            except OSError as exc:  # the next run of the job clears this run's folder
                log.warning("could not remove %s from the work folder: %s", p, exc.strerror or exc)

