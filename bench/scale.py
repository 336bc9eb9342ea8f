"""Scale: a synthetic collection of N items (default 1,000,000) through the real escape flow.

Listing, ledger, batching, Prefect task runs and reporting are real; the per-item
work is a stand-in (``--work-ms`` of waiting per item, as a download would). The
peer, in the same run, is the same per-item work at the same parallelism in plain
thread pools (the same batches, threads per batch and batches in flight) with no
Prefect, no ledger and no report. Prints wall times, the
orchestration overhead ((flow - plain) / flow), task runs created, events written
and the flow process's peak memory.

    .venv/bin/python bench/scale.py                     # 1,000,000 items (several minutes)
    .venv/bin/python bench/scale.py --items 20000       # a quick look

Targets (issue 9): peak memory under 1.5 GB, overhead under 10%, no task run per item.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
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

from bench import synthetic  # noqa: E402  (registers the synthetic kinds)
from flows.escape import BATCHES_IN_FLIGHT  # noqa: E402


def plain(items: int, work_ms: float, batch_size: int, concurrency: int) -> float:
    """The same per-item work cut the same way, without Prefect, a ledger or a report:
    batches of ``batch_size``, each on its own pool of ``concurrency`` threads (as the
    synthetic source's fetch does), ``BATCHES_IN_FLIGHT`` batches at a time."""
    from flows.escape import _batches

    def batch(b: list[dict]) -> int:
        with ThreadPoolExecutor(concurrency) as pool:
            return len(list(pool.map(lambda it: synthetic.stand_in_work(it, work_ms), b)))

    t = time.perf_counter()
    with ThreadPoolExecutor(BATCHES_IN_FLIGHT) as outer:
        done = sum(outer.map(batch, _batches(synthetic.synthetic_items(items), batch_size)))
    assert done == items
    return time.perf_counter() - t


async def _count_task_runs(flow_run_id: str) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                           limit=200)
        n, offset = len(runs), len(runs)
        while len(runs) == 200:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200, offset=offset)
            n += len(runs)
            offset += len(runs)
        return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--work-ms", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=16, help="threads per fetch task")
    ap.add_argument("--batch-size", type=int, default=2000)
    args = ap.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    from flows.escape import escape

    work = Path(tempfile.mkdtemp(prefix="pe-scale-"))
    job = {
        "name": "scale",
        "ledger": str(work / "ledger.duckdb"),
        "work_dir": str(work / "work"),
        "reports_dir": str(work / "reports"),
        "source": {"kind": "synthetic", "count": args.items, "work_ms": args.work_ms},
        "destination": {"kind": "discard"},
        "options": {"batch_size": args.batch_size, "concurrency": args.concurrency},
    }
    print(f"{args.items:,} items, {args.work_ms} ms of stand-in work each, batches of {args.batch_size}, "
          f"{BATCHES_IN_FLIGHT} batches x {args.concurrency} threads in flight")
    t_plain = plain(args.items, args.work_ms, args.batch_size, args.concurrency)
    print(f"plain thread pools, same batches ({BATCHES_IN_FLIGHT} x {args.concurrency} threads): {t_plain:8.1f} s")

    with prefect_test_harness(server_startup_timeout=120):
        t = time.perf_counter()
        state = escape(job, return_state=True)
        t_flow = time.perf_counter() - t
        summary = state.result()
        task_runs = asyncio.run(_count_task_runs(str(state.state_details.flow_run_id)))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    import duckdb

    con = duckdb.connect(summary["ledger"], read_only=True)
    events = con.execute("SELECT count(*) FROM events").fetchone()[0]
    con.close()
    overhead = (t_flow - t_plain) / t_flow
    print(f"escape flow (Prefect, ledger, report): {t_flow:8.1f} s")
    print(f"  listed {summary['listed']:,} = done {summary['done']:,} + skipped {summary['skipped']} + "
          f"failed {summary['failed']} + pending {summary['pending']}")
    print(f"  task runs created: {task_runs:,} ({task_runs / max(1, args.items):.5f} per item)")
    print(f"  ledger events: {events:,}")
    print(f"  peak memory of the flow process: {peak_mb:,.0f} MB")
    print(f"  orchestration overhead: {100 * overhead:.1f}% of the flow's wall time "
          f"(ratio flow/plain = {t_flow / t_plain:.3f})")


if __name__ == "__main__":
    main()
