"""``photo-escape capture-time PATH...``: the true capture time (UTC) of photos, with its provenance.

One line per file, in the order given (folders are walked for image files):
``{path, status, error, local, utc, offset_minutes, tz, provenance, conflicts}``.
A broken file gets ``status: error`` and a reason; none stops or hangs the command.
No Prefect is imported.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from photo_escape.output import emit

CHUNK = 500  # files per call: output streams, memory stays flat
FIELDS = ("path", "status", "error", "local", "utc", "offset_minutes", "tz", "provenance", "conflicts")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="photo files or folders")
    parser.add_argument("--default-tz", metavar="ZONE",
                        help="zone for photos with no zone of their own nor a previous one "
                             "(IANA name like Europe/Paris, or an offset like +05:30)")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="time limit for reading one file's metadata (default 10)")
    parser.add_argument("--no-previous", action="store_true",
                        help="do not borrow the zone of the previous photo (same folder and camera)")


def expand(paths: list[str]) -> list[str]:
    """Files as given; folders replaced by their image files (sorted, recursively)."""
    from tasks.files import IMAGE_SUFFIXES

    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            found = [str(f) for f in sorted(Path(p).rglob("*")) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
            out.extend(found or [p])  # an empty folder still gets its line
        else:
            out.append(p)
    return out


def _text(rec: dict) -> str:
    if rec["status"] != "ok":
        return f"{rec['path']}  error: {rec['error']}"
    when = rec["utc"] or "utc unknown"
    local = rec["local"] or "no capture time"
    tz = f" {rec['tz']}" if rec.get("tz") else ""
    extra = f"  conflicts: {len(rec['conflicts'])}" if rec["conflicts"] else ""
    return f"{rec['path']}  {local}{tz}  ->  {when}  [{rec['provenance']}]{extra}"


def run(args: argparse.Namespace) -> int:
    from tasks.capture_time import capture_times, zone_spec

    try:
        zone_spec(args.default_tz)
    except ValueError as exc:
        emit({"status": "error", "error": "bad_default_tz", "message": str(exc)}, args.json, f"error: {exc}")
        return 2
    entries = []
    for k, path in enumerate(expand(args.paths)):
        entry = {"path": path}
        if args.no_previous:
            entry["folder"] = f"#{k}"  # every photo its own sequence
        entries.append(entry)
    failed = 0
    # lines appear as each chunk is done; the previous photo's zone carries from one chunk
    # to the next. Only the files given count: no other file on disk is read.
    carry: dict = {}
    for start in range(0, len(entries), CHUNK):
        chunk = entries[start:start + CHUNK]
        for rec in capture_times(chunk, default_tz=args.default_tz, timeout=args.timeout,
                                 lookback=0, carry=carry):
            record = {k: rec.get(k) for k in FIELDS}
            for extra in ("source", "granularity"):
                if rec.get(extra):
                    record[extra] = rec[extra]
            failed += rec["status"] != "ok"
            emit(record, args.json, _text(rec))
    return 1 if failed and failed == len(entries) else 0
