"""Orchestration overhead: the escape pipeline on N sandbox images (default 2,000) with
Prefect and the ledger, against the same per-item functions called in a plain loop,
in the same run.

The images come from the sandbox numbered host on 127.0.0.1, served from its own
process as a remote host would be (so its request handling does not share this
process's interpreter lock with the pipeline under test); the pictures are made once,
before either side runs, so both download the same cached files. Both sides use the same source,
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
import json
import os
import shutil
import statistics
import subprocess
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
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds; medians are reported")
    args = ap.parse_args()

    import logging

    from prefect.testing.utilities import prefect_test_harness

    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    from flows.escape import BATCHES_IN_FLIGHT, EscapeRun, escape, job_spec
    from sandbox.numbered import NumberedHost

    work = Path(tempfile.mkdtemp(prefix="pe-overhead-"))
    host = NumberedHost(count=args.images, missing=set(), cache_dir=work / "host")
    t = time.perf_counter()
    for n in range(1, args.images + 1):
        host.picture_file(n)
    print(f"{args.images} sandbox images made in {time.perf_counter() - t:.1f} s (not timed below)")
    server = subprocess.Popen([sys.executable, "-m", "sandbox.numbered", "--count", str(args.images),
                               "--missing-rate", "0", "--cache-dir", str(work / "host")],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        host.url = json.loads(server.stdout.readline())["url"]

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

        times: dict[str, list[float]] = {"seq": [], "pipe": [], "flow": [], "body": []}
        # the flow function's own body, to tell Prefect's start and end of a flow run from the rest
        run_body = EscapeRun.run

        def timed_body(self):
            t0 = time.perf_counter()
            try:
                return run_body(self)
            finally:
                times["body"].append(time.perf_counter() - t0)

        EscapeRun.run = timed_body
        counts: dict[str, int] = {}
        with prefect_test_harness(server_startup_timeout=120):
            for r in range(args.repeat):  # interleaved rounds, each side on fresh folders and ledger
                t, counts["seq"] = plain(job_spec(job(f"plain-seq-{r}")), work / f"plain-seq-{r}-work", 1)
                times["seq"].append(t)
                t, counts["pipe"] = plain(job_spec(job(f"plain-pipe-{r}")), work / f"plain-pipe-{r}-work",
                                          BATCHES_IN_FLIGHT)
                times["pipe"].append(t)
                t = time.perf_counter()
                summary = escape(job(f"flow-{r}"))
                times["flow"].append(time.perf_counter() - t)
                counts["flow"] = summary["done"]
                print(f"round {r + 1}: plain sequential {times['seq'][-1]:.2f} s, plain pipelined "
                      f"{times['pipe'][-1]:.2f} s, flow {times['flow'][-1]:.2f} s "
                      f"(its body {times['body'][-1]:.2f} s)", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"medians of {args.repeat} rounds:")
    print(f"plain loop, one batch after another: {med['seq']:7.2f} s  ({counts['seq']} delivered)")
    print(f"plain loop, {BATCHES_IN_FLIGHT} batches in flight:     {med['pipe']:7.2f} s  ({counts['pipe']} delivered)")
    print(f"escape flow (Prefect + ledger + report): {med['flow']:7.2f} s  ({counts['flow']} done)")
    print(f"  of which the flow's body (ledger, tasks, report): {med['body']:7.2f} s; "
          f"Prefect's start and end of the flow run: {med['flow'] - med['body']:.2f} s")
    print(f"ratio flow / plain loop: {med['flow'] / med['seq']:.3f}   "
          f"flow / plain pipelined: {med['flow'] / med['pipe']:.3f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
