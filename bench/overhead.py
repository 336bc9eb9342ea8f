"""Orchestration overhead: the escape pipeline on N sandbox images (default 2,000) with
Prefect and the ledger, against the same per-item functions called in a plain loop,
in the same run.

The images come from the sandbox numbered host on 127.0.0.1 (made once, before either
side runs, so both download the same cached files). Both sides use the same source,
hashing, capture-time and destination code and the same batches:

* ``plain, sequential``  one batch after another: fetch -> hash -> capture time -> deliver
* ``plain, pipelined``   the same with as many batches in flight as the flow keeps
                         (the fair peer: same parallelism, no Prefect, no ledger)
* ``escape flow``        the real flow on a Prefect API (test harness), ledger and report

    .venv/bin/python bench/overhead.py              # 2,000 images
    .venv/bin/python bench/overhead.py --images 300 # quick look

Target (issue 9): flow / plain at most 1.15.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="pe-bench-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def plain_batch(spec, items: list[dict], workdir: Path) -> int:
    """One batch through the same plain functions the flow's tasks call; returns photos delivered."""
    from photo_escape.plugins import make_destination, make_source
    from tasks.capture_time import capture_times
    from tasks.hashing import hash_files

    source = make_source(spec.source, workdir=workdir, options=spec.options)
    fetched = [o["item"] for o in source.fetch(items) if o["outcome"] == "ok"]
    records = hash_files([i["local_path"] for i in fetched], processes=spec.options.processes)
    hashed = [dict(i, asset=r) for i, r in zip(fetched, records) if r["status"] == "ok"]
    times = capture_times([{"path": i["local_path"], "item_id": i["item_id"]} for i in hashed])
    dated = [dict(i, capture=t) for i, t in zip(hashed, times)]
    dest = make_destination(spec.destination, workdir=workdir, options=spec.options)
    return sum(o["outcome"] == "ok" for o in dest.deliver(dated))


def plain(spec, workdir: Path, in_flight: int) -> tuple[float, int]:
    from flows.escape import _batches
    from photo_escape.plugins import make_source

    workdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    batches = list(_batches(make_source(spec.source, workdir=workdir, options=spec.options).list_pages(),
                            spec.options.batch_size))
    with ThreadPoolExecutor(in_flight) as pool:
        delivered = sum(pool.map(lambda b: plain_batch(spec, b, workdir), batches))
    return time.perf_counter() - t, delivered


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=200)
    args = ap.parse_args()

    import logging

    from prefect.testing.utilities import prefect_test_harness

    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    from flows.escape import BATCHES_IN_FLIGHT, escape, job_spec
    from sandbox.numbered import NumberedHost

    work = Path(tempfile.mkdtemp(prefix="pe-overhead-"))
    host = NumberedHost(count=args.images, missing=set(), cache_dir=work / "host").start()
    try:
        t = time.perf_counter()
        for n in range(1, args.images + 1):
            host.picture_file(n)
        print(f"{args.images} sandbox images made in {time.perf_counter() - t:.1f} s (not timed below)")

        def job(name: str) -> dict:
            return {
                "name": name,
                "ledger": str(work / f"{name}.duckdb"),
                "work_dir": str(work / f"{name}-work"),
                "reports_dir": str(work / "reports"),
                "source": host.job_source(1, args.images, stop_after_missing=None),
                "destination": {"kind": "local", "path": str(work / f"{name}-out")},
                "options": {"batch_size": args.batch_size},
            }

        t_seq, n_seq = plain(job_spec(job("plain-seq")), work / "plain-seq-work", 1)
        t_pipe, n_pipe = plain(job_spec(job("plain-pipe")), work / "plain-pipe-work", BATCHES_IN_FLIGHT)
        with prefect_test_harness(server_startup_timeout=120):
            t = time.perf_counter()
            summary = escape(job("flow"))
            t_flow = time.perf_counter() - t
    finally:
        host.stop()
    print(f"plain loop, sequential batches:  {t_seq:7.1f} s  ({n_seq} delivered)")
    print(f"plain loop, {BATCHES_IN_FLIGHT} batches in flight: {t_pipe:7.1f} s  ({n_pipe} delivered)")
    print(f"escape flow (Prefect + ledger + report): {t_flow:7.1f} s  ({summary['done']} done of {summary['listed']})")
    print(f"ratio flow / plain pipelined: {t_flow / t_pipe:.3f}   flow / plain sequential: {t_flow / t_seq:.3f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
