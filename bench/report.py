"""Benchmark: the report from a big ledger, DuckDB aggregates against a Python-loop peer.

Builds a synthetic ledger through the Ledger API, in bulk, shaped like a real job:
``--events`` events over items that each go list -> fetch -> hash -> capture_time ->
deliver (5 events when all goes well), with 404s, corrupt files, duplicates,
items needing review and retried fetches, spread over several hours and two runs,
plus capture times and match records. Then it times:

* ``reports.build.write_reports`` for the whole job and for the last run (queries,
  charts, templates, outcomes.csv and .parquet: the whole thing);
* peer 1, the way a script reading the ledger would do it: fetch every event into
  Python, keep the latest event per item and stage and per item in dicts, count,
  and write the same outcomes CSV with the csv module;
* peer 2, the ledger's own views used straight (``reconciliation_job``, and a pivot of
  ``item_stage_latest`` joined to ``item_status`` written with DuckDB's COPY).

Both peers' numbers are checked against the report's.

    .venv/bin/python bench/report.py                     # quick: 100,000 events
    .venv/bin/python bench/report.py --events 1000000    # the recorded figure
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from photo_escape.outcomes import outcome  # noqa: E402
from reports.build import write_reports  # noqa: E402
from tasks.ledger import Ledger  # noqa: E402

JOB = "bench-archive"
STAGES = ("fetch", "hash", "capture_time", "deliver")


def item_events(iid: str, rng: random.Random) -> list[dict]:
    """The events of one item in run 1: mostly all ok, sometimes a failure or a skip."""
    roll = rng.random()
    sha = f"{rng.getrandbits(256):064x}"
    if roll < 0.03:
        return [outcome(iid, "fetch", "failed", "not_found", detail={"status": 404})]
    if roll < 0.05:
        return [outcome(iid, "fetch", "failed", "timeout", attempt=3, detail={"message": "read timed out"})]
    evs = [outcome(iid, "fetch", "ok", bytes=rng.randint(2_000_000, 9_000_000), sha256=sha, duration_ms=80.0)]
    if roll < 0.06:
        return evs + [outcome(iid, "hash", "failed", "corrupt", sha256=sha, detail={"message": "truncated"})]
    evs.append(outcome(iid, "hash", "ok", sha256=sha))
    evs.append(outcome(iid, "capture_time", "ok", rng.choice(("exif_offset", "gps_time", "gps_position",
                                                               "folder_rule", "default")), sha256=sha))
    if roll < 0.07:
        return evs + [outcome(iid, "deliver", "skipped", "already_present", sha256=sha)]
    if roll < 0.075:
        return evs + [outcome(iid, "deliver", "needs_review", "ambiguous", sha256=sha)]
    return evs + [outcome(iid, "deliver", "ok", final=True, bytes=rng.randint(2_000_000, 9_000_000), sha256=sha)]


def build_ledger(path: Path, events: int, batch: int = 5000, seed: int = 7) -> dict:
    """Write about ``events`` events through the Ledger API in batches; returns counts."""
    rng = random.Random(seed)
    n_items = max(10, int(events / 4.9))  # ~5 events per item in run 1, a few retries in run 2
    written = 0
    t0 = time.perf_counter()
    with Ledger(path) as led:
        run1 = "20240101T000000Z-bench1"
        led.start_run(run1, JOB, flow="escape", settings="s", spec={
            "name": JOB, "source": {"kind": "local", "path": "/photos"},
            "destination": {"kind": "local", "path": "/backup"}})
        failed: list[str] = []
        start = datetime(2024, 1, 1, tzinfo=timezone.utc)
        for lo in range(0, n_items, batch):
            ids = [f"local:/photos/{i // 1000:04d}/IMG_{i:07d}.JPG" for i in range(lo, min(n_items, lo + batch))]
            led.add_items(JOB, run1, [{"item_id": i, "source_ref": i[6:], "name": i.rsplit("/", 1)[-1]} for i in ids])
            evs = [e for i in ids for e in item_events(i, rng)]
            failed += [e["item_id"] for e in evs if e["outcome"] == "failed" and e["reason"] == "timeout"]
            led.append_events(JOB, run1, evs)
            led.add_capture_times(JOB, run1, [
                {"item_id": e["item_id"], "sha256": e["sha256"], "local": start, "utc": start,
                 "offset_minutes": 60, "tz": "Europe/Paris", "provenance": e["reason"], "conflicts": []}
                for e in evs if e["stage"] == "capture_time"])
            # the photos needing review were compared with candidates (thumbnails kept)
            review = [e for e in evs if e["outcome"] == "needs_review"]
            led.add_assets([{"sha256": e["sha256"], "width": 4000, "height": 3000, "format": "JPEG",
                             "thumb": rng.randbytes(32 * 32)} for e in review])
            led.add_matches(JOB, run1, [
                {"query": e["item_id"], "candidate": ids[(k + r) % len(ids)], "distance": 8 + 3 * r, "rank": r,
                 "chosen": False, "method": "direct", "detail": {"threshold": 10}}
                for k, e in enumerate(review) for r in (1, 2, 3)])
            written += len(ids) + len(evs)
        # spread run 1 over ten hours, as a real run would be
        led.con.execute("""UPDATE events SET "at" = TIMESTAMPTZ '2024-01-01 00:00:00+00'
                           + to_microseconds((seq * 36000000000 // (SELECT max(seq) FROM events))::BIGINT)""")
        led.finish_run(run1, "finished", {})
        run2 = "20240102T000000Z-bench2"
        led.start_run(run2, JOB, flow="escape", settings="s", only_failed=True)
        for lo in range(0, len(failed), batch):
            ids = failed[lo:lo + batch]
            led.add_items(JOB, run2, [{"item_id": i, "source_ref": i[6:], "name": i.rsplit("/", 1)[-1]} for i in ids])
            evs = [outcome(i, "fetch", "ok", bytes=3_000_000, attempt=2) for i in ids]
            evs += [outcome(i, "hash", "ok") for i in ids] + [outcome(i, "deliver", "ok", final=True) for i in ids]
            led.append_events(JOB, run2, evs)
            written += len(ids) + len(evs)
        led.finish_run(run2, "finished", {})
        total = led.con.execute("SELECT count(*) FROM events").fetchall()[0][0]
    return {"items": n_items, "events": total, "runs": [run1, run2], "seconds": time.perf_counter() - t0}


def peer(path: Path, out: Path) -> dict:
    """The Python-loop way: every event into Python, latest per item/stage in dicts, count, write CSV."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        events = con.execute(
            "SELECT seq, item_id, stage, outcome, reason, final FROM events WHERE job = ? ORDER BY seq", [JOB]
        ).fetchall()
        items = con.execute("SELECT item_id, name, source_ref FROM items WHERE job = ?", [JOB]).fetchall()
    finally:
        con.close()
    per_stage: dict[tuple[str, str], tuple] = {}
    last: dict[str, tuple] = {}
    for seq, item_id, stage, result, reason, final in events:
        per_stage[(item_id, stage)] = (result, reason)
        if stage != "list":
            last[item_id] = (stage, result, reason, final)
    counts = {"listed": 0, "done": 0, "skipped": 0, "failed": 0, "pending": 0, "needs_review": 0}
    by_stage: dict[tuple[str, str], int] = {}
    for (_, stage), (result, _) in per_stage.items():
        by_stage[(stage, result)] = by_stage.get((stage, result), 0) + 1
    stages = ["list", *STAGES]
    with (out / "outcomes.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "name", "source_ref", "status", "reason", *stages])
        for item_id, name, ref in sorted(items):
            stage, result, reason, final = last.get(item_id, (None, None, None, False))
            status = ("failed" if result == "failed" else "skipped" if result == "skipped"
                      else "done" if result == "ok" and final else "pending")
            counts["listed"] += 1
            counts[status] += 1
            counts["needs_review"] += result == "needs_review"
            w.writerow([item_id, name, ref, status, reason,
                        *[(per_stage.get((item_id, s)) or ("",))[0] for s in stages]])
    return counts


CPU: dict[str, float] = {}


def views_peer(path: Path, out: Path) -> dict:
    """The ledger's own views, straight: ``reconciliation_job`` for the counts and a pivot of
    ``item_stage_latest`` joined to ``item_status`` for the outcomes CSV (DuckDB COPY)."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        cur = con.execute("SELECT * FROM reconciliation_job WHERE job = ?", [JOB])
        names = [d[0] for d in cur.description]
        counts = dict(zip(names, cur.fetchall()[0]))
        stages = ["list", *STAGES]
        cols = ", ".join(f"max(l.outcome) FILTER (WHERE l.stage = '{s}') AS {s}" for s in stages)
        con.execute(f"""COPY (SELECT s.item_id, any_value(s.name) AS name, any_value(s.status) AS status,
                                     any_value(s.reason) AS reason, {cols}
                              FROM item_status s LEFT JOIN item_stage_latest l USING (job, item_id)
                              WHERE s.job = '{JOB}' GROUP BY s.item_id ORDER BY s.item_id)
                        TO '{out / "outcomes_views.csv"}' (HEADER)""")
    finally:
        con.close()
    return {k: int(counts[k]) for k in ("listed", "done", "skipped", "failed", "pending", "needs_review")}


def timed(fn, *args, **kw):
    """(result, wall seconds); the process's CPU seconds (all threads) go to CPU[fn name]."""
    t, c = time.perf_counter(), time.process_time()
    result = fn(*args, **kw)
    CPU[getattr(fn, "__name__", "?")] = CPU.get(getattr(fn, "__name__", "?"), 0) + time.process_time() - c
    return result, time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000, help="events in the synthetic ledger (default 100,000)")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--reuse", action="store_true", help="reuse the ledger already in --dir")
    args = ap.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="pe-bench-report-"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / "ledger.duckdb"
    if args.reuse and path.exists():
        with Ledger(path, read_only=True) as led:
            info = {"events": led.con.execute("SELECT count(*) FROM events").fetchall()[0][0],
                    "items": led.con.execute("SELECT count(*) FROM items").fetchall()[0][0],
                    "runs": [r[0] for r in led.con.execute("SELECT run_id FROM runs ORDER BY started_at").fetchall()],
                    "seconds": 0.0}
    else:
        if path.exists():
            path.unlink()
        info = build_ledger(path, args.events)
    print(f"ledger: {info['events']:,} events, {info['items']:,} items, 2 runs "
          f"(built through the Ledger API in {info['seconds']:.1f} s)")
    job, t_job = timed(write_reports, path, job=JOB, out_dir=work / "job")
    cpu_job = CPU.pop("write_reports")
    run, t_run = timed(write_reports, path, run_id=info["runs"][0], out_dir=work / "run1")
    cpu_run = CPU.pop("write_reports")
    (work / "peer").mkdir(exist_ok=True)
    counts, t_peer = timed(peer, path, work / "peer")
    views, t_views = timed(views_peer, path, work / "peer")
    s = job["summary"]
    same = all(s[k] == counts[k] for k in counts) and all(s[k] == views[k] for k in views)
    load = os.getloadavg()[0]
    print(f"(load average {load:.1f} on {os.cpu_count()} cores: wall times include waiting for the CPU)")
    print(f"photo-escape write_reports, whole job : {t_job:6.2f} s wall, {cpu_job:5.2f} s CPU  (listed {s['listed']:,} = done {s['done']:,}"
          f" + skipped {s['skipped']:,} + failed {s['failed']:,} + pending {s['pending']:,})")
    tj = job["timings"]
    print(f"  of which summarise (DuckDB queries, outcomes.csv/.parquet): {tj['summarise_s']:.2f} s wall,"
          f" {tj['summarise_cpu_s']:.2f} s CPU; render (charts, thumbnails, templates): {tj['render_s']:.2f} s wall,"
          f" {tj['render_cpu_s']:.2f} s CPU")
    print(f"photo-escape write_reports, run 1     : {t_run:6.2f} s wall, {cpu_run:5.2f} s CPU"
          f"  (listed {run['summary']['listed']:,})")
    print(f"peer: Python loop over all events     : {t_peer:6.2f} s wall, {CPU['peer']:5.2f} s CPU"
          f"  (same numbers: {same})")
    print(f"peer: the ledger's views + COPY        : {t_views:6.2f} s wall, {CPU['views_peer']:5.2f} s CPU"
          f"  (same numbers: {all(s[k] == views[k] for k in views)})")
    print(f"ratio peer / photo-escape, whole report : {t_peer / t_job:6.1f}x wall, {CPU['peer'] / cpu_job:.1f}x CPU")
    print(f"ratio peer / photo-escape, summarising  : {t_peer / tj['summarise_s']:6.1f}x wall,"
          f" {CPU['peer'] / tj['summarise_cpu_s']:.1f}x CPU  (the peer only summarises)")
    print(f"ratio views peer / photo-escape, summarising : {t_views / tj['summarise_s']:6.1f}x wall,"
          f" {CPU['views_peer'] / tj['summarise_cpu_s']:.1f}x CPU")
    print(f"report.html {Path(job['report_html']).stat().st_size / 1e6:.2f} MB,"
          f" outcomes.parquet {Path(job['outcomes_parquet']).stat().st_size / 1e6:.1f} MB  in {work}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
