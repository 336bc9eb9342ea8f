"""``photo-escape verify JOB.yaml [--sample PERCENT] [--repair] [--json]``: is the archive still whole?

Reads back what the job delivered, at its destination (a folder, or S3), and records a
``fixity`` event per photo in the job's ledger: ``ok``, ``missing`` or ``changed``
(its sha256 differs). By default every photo is read whole; ``--sample 5`` checks the
size of all and reads a random 5% whole. ``--repair`` delivers missing and changed
photos again from the source, only where the source still holds the bytes the ledger
recorded, keeping a changed copy beside the original (``NAME~changed-YYYYMMDD.EXT``).
With ``--json`` the last line is the summary: ``{"checked", "ok", "missing", "changed", ...}``.
Exit status as ``run``: 0 when the check ran (problems are in the summary and the
report), 1 when it could not (the destination cannot be listed), 2 for a bad job file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from photo_escape.commands.run import print_summary

QUICK_EXIT = True  # the process may end without the interpreter's clean-up (see photo_escape.cli)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="the escape job spec (YAML) whose deliveries to check")
    p.add_argument("--sample", type=float, metavar="PERCENT",
                   help="size of every photo, full read of a random PERCENT of them (default: full reads of all)")
    p.add_argument("--repair", action="store_true",
                   help="deliver missing and changed photos again from the source (changed copies are kept)")


def run(args: argparse.Namespace) -> int:
    from photo_escape.jobspec import JobSpecError
    from photo_escape.stories import load_job
    from tasks.ledger import Ledger, LedgerBusy

    if args.sample is not None and not 0 < args.sample <= 100:
        print("photo-escape verify: --sample is a percentage, more than 0 and at most 100", file=sys.stderr)
        return 2
    try:
        spec = load_job(Path(args.job))
    except JobSpecError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if spec.flow != "escape":
        print(f"{args.job}: verify checks what an escape job delivered; this is a {spec.flow} job", file=sys.stderr)
        return 2
    try:
        hold = Ledger(spec.ledger_path)  # one run at a time per ledger, refused at once
    except LedgerBusy as exc:
        print(f"photo-escape: {exc}", file=sys.stderr)
        return 3
    try:
        from photo_escape.prefect_api import choose, connected

        api = choose()  # a temporary Prefect server (when one is needed) starts while the flow is imported
        from flows.verify import verify

        with connected(api):
            state = verify(spec.dump(), sample_percent=args.sample or 100.0, repair=args.repair,
                           return_state=True)
        summary = state.result(raise_on_failure=False)
        if not isinstance(summary, dict):
            print(f"photo-escape verify: {state.message or summary}", file=sys.stderr)
            return 1
        print_summary(summary, args.json)
        if not args.json:
            print(f"checked {summary['checked']}: ok {summary['ok']}, missing {summary['missing']}, "
                  f"changed {summary['changed']}" + (f"; delivered again {summary['repaired']}"
                                                     if summary.get("repaired") is not None else ""))
        return 0
    finally:
        hold.close()
