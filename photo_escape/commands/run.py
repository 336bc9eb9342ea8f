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

# flow name in a job file's ``flow:`` field -> "module:function"
FLOWS = {
    "escape": "flows.escape:escape",
    "replace_hires": "flows.replace_hires:replace_hires",
    "find_my_photo": "flows.find_my_photo:find_my_photo",
}


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


def run_flow(flow_name: str, job, *, as_json: bool, **params) -> int:
    """Run a flow by name and print its summary; shared by ``run`` and ``demo``."""
    import importlib

    prefect_defaults()
    module, func = FLOWS[flow_name].split(":")
    flow_fn = getattr(importlib.import_module(module), func)
    if flow_name == "escape":
        from flows.escape import escape_flow_for, job_spec

        flow_fn = escape_flow_for(job_spec(job))
    state = flow_fn(job, return_state=True, **params)
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
    import yaml

    from photo_escape.jobspec import JobSpecError, load_job

    path = Path(args.job)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        print(f"cannot read job file {path}: {exc.strerror}", file=sys.stderr)
        return 2
    except yaml.YAMLError as exc:
        print(f"{path} is not valid YAML: {exc}", file=sys.stderr)
        return 2
    flow_name = (data or {}).get("flow", "escape") if isinstance(data, dict) else "escape"
    if flow_name not in FLOWS:
        print(f"{path}: flow {flow_name!r} is not known; expected one of: {', '.join(FLOWS)}", file=sys.stderr)
        return 2
    params = {"dry_run": args.dry_run, "only_failed": args.only_failed}
    if flow_name == "escape":
        try:
            spec = load_job(path)
        except JobSpecError as exc:
            print(str(exc), file=sys.stderr)
            return 2
        if args.runner:
            spec.options.task_runner = args.runner
        job = spec.dump()
        return run_holding_ledger(spec.ledger_path, flow_name, job, as_json=args.json, **params)
    job = str(path)
    return run_flow(flow_name, job, as_json=args.json, **params)


def run_holding_ledger(ledger_path: Path, flow_name: str, job, *, as_json: bool, **params) -> int:
    """Take the ledger's lock before the flow starts and keep it until the flow ends.

    A second run on the same ledger then fails here at once with a clear message
    (exit 3), instead of starting a flow run that would fail on the lock. The flow
    opens the ledger again in this process, which DuckDB allows.
    """
    from tasks.ledger import Ledger, LedgerBusy

    try:
        hold = Ledger(ledger_path)
    except LedgerBusy as exc:
        print(f"photo-escape: {exc}", file=sys.stderr)
        return 3
    try:
        return run_flow(flow_name, job, as_json=as_json, **params)
    finally:
        hold.close()
