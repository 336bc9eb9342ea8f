"""``photo-escape run JOB.yaml [--dry-run] [--only-failed] [--json]``: run a job spec.

The job runs as a Prefect flow run, against the Prefect API that Prefect's settings
name (``PREFECT_API_URL``), else the local server of ``photo-escape server start`` when
it is up, else a temporary server started for the run (see
:mod:`photo_escape.prefect_api`). With ``--json`` the last line printed is the
run's summary ``{run_id, ledger, report, listed, done, skipped, failed, pending, ...}``.
Exit status: 0 when the run finished (photos that failed are in the summary and
the report), 1 when the run itself could not run or crashed, 2 for a bad job spec,
3 when another run holds the job's ledger (one run at a time per ledger: the second
fails at once with a message, before starting a flow run).
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

from photo_escape.output import emit

QUICK_EXIT = True  # the process may end without the interpreter's clean-up (see photo_escape.cli)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="the job spec (YAML)")
    p.add_argument("--dry-run", action="store_true", help="plan and report; deliver nothing")
    p.add_argument("--only-failed", action="store_true", help="redo only the photos whose last outcome failed")
    p.add_argument("--runner", choices=["threads", "dask"], help="override options.task_runner")


def run_flow(job, *, as_json: bool, **params) -> int:
    """Run a job's story as a Prefect flow run and print its summary; shared by ``run`` and the demos."""
    from photo_escape.prefect_api import ServerUnavailable, choose, connected
    from photo_escape.stories import load_job, story_of

    api = choose()  # a temporary server, if one is needed, starts now (``run`` did it earlier still)
    spec = load_job(job)
    story = story_of(spec.dump())
    story_flow = story.flow_for(spec)
    if api.server is not None:  # a temporary server is still starting, most likely
        _import_what_the_run_needs_later()
        _start_workers_early(spec, story.name)  # its imports here too, before the survey's thread starts
        _survey_early(spec)  # after the imports: a thread importing beside them could deadlock on their locks
    _resume_gc()
    try:
        with connected(api):
            state = story_flow(spec.dump(), return_state=True, **params)
    except ServerUnavailable as exc:
        print(f"the run did not start: {exc}", file=sys.stderr)
        return 1
    try:
        summary = state.result(raise_on_failure=False)
    except Exception as exc:  # noqa: BLE001
        summary = exc
    if isinstance(summary, BaseException) or not isinstance(summary, dict):
        print(f"the run did not finish: {state.message or summary}", file=sys.stderr)
        return 1
    print_summary(summary, as_json)
    return 0


# modules every run imports only when it gets there: the report at its end, Prefect's engines
# and artifacts, and what Prefect imports when a flow is called (its graph drawing, and
# FastAPI's encoder for the flow run's parameters)
NEEDED_LATER = ("reports.build", "prefect.flow_engine", "prefect.task_engine", "prefect.artifacts",
                "prefect.utilities.visualization", "fastapi.encoders")


def _survey_early(spec) -> None:
    """Let the job's destination take its first look (S3: the run's one listing of the
    bucket) in a thread now, while the temporary server starts; the run's survey then
    uses it (:meth:`photo_escape.plugins.Destination.survey_early`)."""
    import threading

    config = getattr(spec, "destination", None)
    if config is None:
        return

    def look() -> None:
        try:
            from photo_escape.plugins import find_kind

            kind = find_kind("destination", config.kind)
            if kind is not None and kind.surveys:
                kind(config, workdir=spec.work_path, options=spec.options).survey_early()
        except Exception:  # noqa: BLE001 - the run's own survey looks again and says why
            pass

    threading.Thread(target=look, name="survey-early", daemon=True).start()


def _start_workers_early(spec, story: str) -> None:
    """Start the escape's first hashing and tag-reading processes while the temporary
    server starts: each is a new interpreter and its imports (0.1-0.3 s) that the first
    batch would otherwise wait for (:func:`tasks.stages.warm_examine`)."""
    if story != "escape":
        return
    try:
        from tasks.stages import warm_examine

        warm_examine(spec.options)
    except Exception:  # noqa: BLE001 - the first batch starts them itself
        pass


def _import_what_the_run_needs_later() -> None:
    """Import now what the run will import anyway: while a temporary server starts, this
    process would otherwise sit waiting for it."""
    import importlib

    for name in NEEDED_LATER:
        try:
            importlib.import_module(name)
        except ImportError:  # the run will say what is missing when it gets there
            pass
    try:  # and the report's templates and first chart (matplotlib's fonts): now, not at the end of the run
        from reports.build import warm_up

        warm_up()
    except Exception:  # noqa: BLE001 - the report says what is wrong when it gets there
        pass


_gc_paused = False


def _pause_gc() -> None:
    """Keep the garbage collector off while the command imports Prefect and the flow: those
    imports make a few hundred thousand objects that live until the process ends, and the
    collector would walk them again and again (seconds, on a loaded machine)."""
    global _gc_paused
    if gc.isenabled():
        gc.disable()
        _gc_paused = True


def _resume_gc() -> None:
    """Imports done: set what they made aside for good (:func:`gc.freeze`) and collect again."""
    global _gc_paused
    if _gc_paused:
        gc.freeze()
        gc.enable()
        _gc_paused = False


def print_summary(summary: dict, as_json: bool) -> None:
    if as_json:
        emit(summary, True)
        return
    s = summary
    line = (f"run {s.get('run_id')}: listed {s.get('listed')} = done {s.get('done')} + skipped {s.get('skipped')}"
            f" + failed {s.get('failed')} + pending {s.get('pending')}")
    emit(s, False, line)
    if s.get("expected_count") is not None:
        met = "met" if s.get("expected_count_met") else "NOT met"
        emit(s, False, f"expected {s['expected_count']} photos: {met}")
    emit(s, False, f"ledger: {s.get('ledger')}")
    emit(s, False, f"report: {s.get('report')}")


def run(args: argparse.Namespace) -> int:
    from photo_escape.jobspec import JobSpecError
    from photo_escape.prefect_api import choose
    from photo_escape.stories import load_job

    if getattr(args, "program", False):  # the whole process is this command
        _pause_gc()
    api = choose()  # first: a temporary Prefect server comes up while the job is read and the flow imported
    try:
        spec = load_job(Path(args.job))
    except JobSpecError as exc:
        api.release()
        print(str(exc), file=sys.stderr)
        return 2
    if args.runner:
        spec.options.task_runner = args.runner
    return run_holding_ledger(spec, as_json=args.json, dry_run=args.dry_run, only_failed=args.only_failed)


def run_holding_ledger(spec, *, as_json: bool, **params) -> int:
    """Take the ledger's lock before the flow starts and keep it until the flow ends.

    A second run on the same ledger then fails here at once with a clear message
    (exit 3), instead of starting a flow run that would fail on the lock. The flow
    opens the ledger again in this process, which DuckDB allows.
    """
    from tasks.ledger import Ledger, LedgerBusy

    try:
        hold = Ledger(spec.ledger_path)
    except LedgerBusy as exc:
        from photo_escape.prefect_api import choose

        choose().release()
        print(f"photo-escape: {exc}", file=sys.stderr)
        return 3
    try:
        return run_flow(spec, as_json=as_json, **params)
    finally:
        hold.close()
