"""``photo-escape run JOB.yaml [--dry-run] [--only-failed] [--json]``: run a job spec.

The job runs as a Prefect flow run (against the Prefect API in ``PREFECT_API_URL``,
or an ephemeral one when none is set). With ``--json`` the last line printed is the
run's summary ``{run_id, ledger, report, listed, done, skipped, failed, pending, ...}``.
Exit status: 0 when the run finished (photos that failed are in the summary and
the report), 1 when the run itself could not run or crashed, 2 for a bad job spec,
3 when another run holds the job's ledger (one run at a time per ledger: the second
fails at once with a message, before starting a flow run).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from photo_escape.output import emit

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="the job spec (YAML)")
    p.add_argument("--dry-run", action="store_true", help="plan and report; deliver nothing")
    p.add_argument("--only-failed", action="store_true", help="redo only the photos whose last outcome failed")
    p.add_argument("--runner", choices=["threads", "dask"], help="override options.task_runner")


def prefect_defaults() -> None:
    """Quiet, offline-friendly Prefect settings unless the user set their own."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # temporary Prefect servers of runs that were killed (SIGKILL) would otherwise pile up
    from photo_escape.orphans import stop_orphaned_prefect_servers

    stop_orphaned_prefect_servers()


def run_flow(job, *, as_json: bool, **params) -> int:
    """Run a job's story as a Prefect flow run and print its summary; shared by ``run`` and the demos."""
    from photo_escape.stories import load_job, story_of

    prefect_defaults()
    spec = load_job(job)
    story_flow = story_of(spec.dump()).flow_for(spec)
    state = story_flow(spec.dump(), return_state=True, **params)
    try:
        summary = state.result(raise_on_failure=False)
    except Exception as exc:  # noqa: BLE001
        summary = exc
    if isinstance(summary, BaseException) or not isinstance(summary, dict):
        print(f"the run did not finish: {state.message or summary}", file=sys.stderr)
        return 1
    print_summary(summary, as_json)
    return 0


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
    from photo_escape.stories import load_job

    try:
        spec = load_job(Path(args.job))
    except JobSpecError as exc:
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
        print(f"photo-escape: {exc}", file=sys.stderr)
        return 3
    try:
        return run_flow(spec, as_json=as_json, **params)
    finally:
        hold.close()
