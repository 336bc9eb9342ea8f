"""Orchestration overhead: the escape pipeline on N sandbox images (default 2,000), the
whole ``photo-escape run`` command (start-up, Prefect, ledger, report included) against
the same per-item functions called in a plain loop, each a process of its own, in
alternating rounds.

The images come from the sandbox numbered host on 127.0.0.1, served from its own
process as a remote host would be (so its request handling does not share an
interpreter lock with the pipeline under test); the pictures are made once, before
either side runs, so both download the same cached files. Both sides use the same
source, hashing, capture-time and destination code and the same batches:

* ``plain, sequential``  one batch after another: fetch -> hash -> capture time -> deliver
* ``plain, pipelined``   the same with as many batches in flight as the flow keeps: the
                         fair peer (same parallelism, no Prefect, no ledger); the ratio
                         is against this one
* ``escape flow``        ``photo-escape run JOB.yaml``: Prefect (a temporary server, or
                         ``--prefect-api``), the ledger and the report

Every side is timed from outside its process, start-up included (the plain loop
imports no Prefect).

    .venv/bin/python bench/overhead.py              # 2,000 images
    .venv/bin/python bench/overhead.py --images 300 # quick look
    .venv/bin/python bench/overhead.py --server     # with `photo-escape server start` (warm runner) up

Target (issues 9 and 21): flow / plain pipelined at most 1.15.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


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


def plain(job: Path, in_flight: int) -> int:
    """The plain loop over a job file's whole listing (the worker process's body)."""
    from photo_escape.jobspec import load_job
    from photo_escape.plugins import make_source

    spec = load_job(job)
    workdir = spec.work_path
    workdir.mkdir(parents=True, exist_ok=True)
    items = [i for page in make_source(spec.source, workdir=workdir, options=spec.options).list_pages() for i in page]
    size = spec.options.batch_size
    batches = [items[k:k + size] for k in range(0, len(items), size)]
    with ThreadPoolExecutor(in_flight) as pool:
        return sum(pool.map(lambda b: plain_batch(spec, b, workdir), batches))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3, help="alternating rounds; medians are reported")
    ap.add_argument("--photo-escape", help="photo-escape's command (default: the console script beside this Python)")
    ap.add_argument("--prefect-api", help="PREFECT_API_URL of a running Prefect server (default: a temporary one)")
    ap.add_argument("--server", action="store_true",
                    help="with `photo-escape server start` up (its Prefect server and warm runner)")
    ap.add_argument("--worker", nargs=2, metavar=("JOB", "IN_FLIGHT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps({"delivered": plain(Path(args.worker[0]), int(args.worker[1]))}))
        return

    import yaml

    from bench.peers import Command, default_photo_escape, timed
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
    warm = None
    pe = shlex.split(args.photo_escape) if args.photo_escape else default_photo_escape()
    pe_env = {"PREFECT_HOME": str(work / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
              "PREFECT_LOGGING_LEVEL": "WARNING", **({"PREFECT_API_URL": args.prefect_api} if args.prefect_api else {})}
    try:
        host.url = json.loads(server.stdout.readline())["url"]

        def job(name: str) -> Path:
            path = work / f"{name}.yaml"
            path.write_text(yaml.safe_dump({
                "name": name,
                "ledger": str(work / f"{name}.duckdb"),
                "work_dir": str(work / f"{name}-work"),
                "reports_dir": str(work / "reports"),
                "source": host.job_source(1, args.images, stop_after_missing=None),
                "destination": {"kind": "local", "path": str(work / f"{name}-out")},
                "options": {"batch_size": args.batch_size},
            }))
            return path

        def delivered(folder: Path) -> int:
            return sum(1 for p in folder.rglob("*.jpg")) if folder.is_dir() else 0

        from flows.escape import BATCHES_IN_FLIGHT

        sides = {
            "seq": lambda r: Command([sys.executable, __file__, "--worker", str(job(f"plain-seq-{r}")), "1"],
                                     {"PYTHONPATH": str(ROOT)}),
            "pipe": lambda r: Command([sys.executable, __file__, "--worker", str(job(f"plain-pipe-{r}")),
                                       str(BATCHES_IN_FLIGHT)], {"PYTHONPATH": str(ROOT)}),
            "flow": lambda r: Command(pe + ["run", str(job(f"flow-{r}")), "--json"], pe_env),
        }
        if args.server:
            from bench.peers import WarmServer

            pe_env["PHOTO_ESCAPE_HOME"] = str(work / "pe-home")
            warm = WarmServer(pe, pe_env).__enter__()
        timed(Command(pe + ["run", str(job("warm-up")), "--json"], pe_env), 1800)  # Prefect's database, caches
        times: dict[str, list[float]] = {k: [] for k in sides}
        counts: dict[str, int] = {}
        for r in range(args.repeat):
            order = list(sides) if r % 2 == 0 else list(sides)[::-1]
            for side in order:
                seconds, error = timed(sides[side](r), 3600)
                if error:
                    raise SystemExit(f"{side}, round {r + 1}: {error}")
                times[side].append(seconds)
                counts[side] = delivered(work / f"{'plain-' if side != 'flow' else ''}{side}-{r}-out")
            print(f"round {r + 1}: plain sequential {times['seq'][-1]:.2f} s, plain pipelined "
                  f"{times['pipe'][-1]:.2f} s, photo-escape run {times['flow'][-1]:.2f} s", flush=True)
    finally:
        if warm is not None:
            warm.__exit__()
        server.terminate()
        server.wait(timeout=10)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"medians of {args.repeat} rounds, each side a whole process timed from outside:")
    print(f"plain loop, one batch after another: {med['seq']:7.2f} s  ({counts['seq']} delivered)")
    print(f"plain loop, {BATCHES_IN_FLIGHT} batches in flight:     {med['pipe']:7.2f} s  ({counts['pipe']} delivered)")
    print(f"photo-escape run (Prefect + ledger + report): {med['flow']:7.2f} s  ({counts['flow']} delivered)")
    print(f"ratio photo-escape run / plain pipelined (the same parallelism): {med['flow'] / med['pipe']:.3f}   "
          f"(/ plain sequential: {med['flow'] / med['seq']:.3f})")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
