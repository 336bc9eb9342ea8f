"""``photo-escape report``: regenerate the reports of a run or of a whole job from a ledger."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime

from photo_escape.output import emit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ledger", help="the DuckDB ledger file (or give --job-file)")
    parser.add_argument("--job-file", help="a job spec (YAML): its ledger, and its name as --job")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--run", dest="run_id", metavar="RUN_ID", help="report on one run")
    which.add_argument("--job", metavar="NAME", help="report on a whole job across its runs")
    parser.add_argument("--since", metavar="DATE",
                        help="with --job (or alone): only items listed since DATE (ISO 8601, UTC if no zone)")
    parser.add_argument("--out", metavar="DIR", help="where to write (default reports/out/<job>/<run or all>/)")


def _since(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(f"photo-escape report: --since {text!r} is not a date (use YYYY-MM-DD or ISO 8601)")


def _job_file(path: str) -> tuple[str, str]:
    """(job name, ledger path) from a job file. Only these two are needed to report, so a
    job whose source is gone (an unplugged disk) can still be reported on."""
    import yaml

    from photo_escape.jobspec import home

    try:
        data = yaml.safe_load(open(path, encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read job file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise ValueError(f"{path}: a job file needs a 'name'")
    return data["name"], str(data.get("ledger") or home() / "ledgers" / f"{data['name']}.duckdb")


def run(args: argparse.Namespace) -> int:
    """Write report.html, report.md, outcomes.csv and outcomes.parquet; print their paths."""
    from reports.build import write_reports
    from tasks.ledger import LedgerBusy

    ledger, job = args.ledger, args.job
    if args.job_file:
        try:
            name, job_ledger = _job_file(args.job_file)
        except ValueError as exc:
            print(f"photo-escape report: {exc}", file=sys.stderr)
            return 2
        ledger = ledger or job_ledger
        if not args.run_id:
            job = job or name
    if not ledger:
        print("photo-escape report: give --ledger PATH (or --job-file JOB.yaml)", file=sys.stderr)
        return 2
    if args.since and args.run_id:
        print("photo-escape report: --since goes with --job (a run is reported whole)", file=sys.stderr)
        return 2
    since = _since(args.since)
    try:
        result = write_reports(ledger, run_id=args.run_id, job=job, since=since, out_dir=args.out)
    except FileNotFoundError as exc:
        print(f"photo-escape report: {exc}", file=sys.stderr)
        return 2
    except LookupError as exc:
        print(f"photo-escape report: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    except LedgerBusy as exc:
        print(f"photo-escape report: {exc}", file=sys.stderr)
        return 3
    s = result["summary"]
    record = {"report": result["report_html"], "report_md": result["report_md"],
              "outcomes_csv": result["outcomes_csv"], "outcomes_parquet": result["outcomes_parquet"],
              **{k: s[k] for k in ("job", "run_id", "scope", "listed", "done", "skipped", "failed",
                                   "pending", "needs_review", "reconciles")},
              "stories": s.get("stories", {})}
    mark = "✔ reconciles" if s["reconciles"] else "⚠ does NOT reconcile"
    text = (f"{s['job']} ({s['scope']}): {s['listed']} listed = {s['done']} done + {s['skipped']} skipped"
            f" + {s['failed']} failed + {s['pending']} pending  {mark}"
            + (f"; {s['needs_review']} need review" if s["needs_review"] else "")
            + f"\nreport: {result['report_html']}\nmarkdown: {result['report_md']}"
            + f"\noutcomes: {result['outcomes_csv']}  {result['outcomes_parquet']}")
    emit(record, args.json, text)
    return 0
