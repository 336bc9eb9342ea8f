"""Benchmark: the DuckDB master index against grep over the same listing, in the same run.

The story's peer is grep: "dump the entire directory listing into a huge text file and
grep that for the sought Digital ID; under a second". This makes a listing of
``--lines`` paths shaped like the library's store (nested folders, directories
included, odd files), then measures:

* load: ``tasks.master_index.build_from_listing`` (parse + ID extraction + sort);
* single lookups: ``--lookups`` IDs looked up one at a time (``MasterIndex.lookup_one``),
  against ``grep -F ID listing`` run for a sample of ``--grep-sample`` of the same IDs
  (a full 10,000 greps of a 10-million-line file would take hours; the per-lookup
  time is what the ratio compares);
* batch: all the IDs in one query (``MasterIndex.lookup``) against one
  ``grep -F -f ids.txt listing`` (Aho-Corasick over the file once).

    .venv/bin/python bench/master_index.py                  # quick: 200,000 lines
    .venv/bin/python bench/master_index.py --lines 10000000 # the recorded figure
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks.master_index import MasterIndex, build_from_listing  # noqa: E402


def make_listing(path: Path, lines: int, seed: int = 1) -> int:
    """A ``find``-style listing of ``lines`` paths: per Digital ID a folder and 1-3 files,
    plus directories and odd files (written by DuckDB, fast)."""
    con = duckdb.connect()
    con.execute(f"SELECT setseed({(seed % 1000) / 1000})")
    # each n gives 4 lines: its folder and up to three files (u.tif, h.jpg, r.jpg or notes.txt)
    ids = lines // 4 + 1
    con.execute(f"""
        COPY (
          SELECT line FROM (
            SELECT n, k,
              '/mnt/digital-store/masters/' || chr((97 + n % 6)::INTEGER) || '/' || chr((97 + n % 6)::INTEGER) || (n // 10000)::VARCHAR
              || '/' || chr((97 + n % 6)::INTEGER) || lpad(n::VARCHAR, 7, '0')
              || CASE k WHEN 0 THEN ''
                        WHEN 1 THEN '/' || chr((97 + n % 6)::INTEGER) || lpad(n::VARCHAR, 7, '0') || 'u.tif'
                        WHEN 2 THEN '/' || chr((97 + n % 6)::INTEGER) || lpad(n::VARCHAR, 7, '0') || 'h.jpg'
                        ELSE CASE WHEN n % 3 = 0 THEN '/Thumbs.db'
                                  ELSE '/' || chr((97 + n % 6)::INTEGER) || lpad(n::VARCHAR, 7, '0') || 'r.jpg' END
                 END AS line
            FROM range({ids}) r(n), range(4) q(k)
            ORDER BY n, k
          ) LIMIT {lines}
        ) TO '{path}' (FORMAT csv, HEADER false, QUOTE '', DELIMITER '\x01')""")
    con.close()
    return lines


def pick_ids(lines: int, count: int, seed: int = 2) -> list[str]:
    """IDs to look up: mostly present, one in ten absent (as real lookups go)."""
    rng = random.Random(seed)
    ids = lines // 4
    out = []
    for _ in range(count):
        if rng.random() < 0.1:
            out.append(f"q{rng.randint(0, 9_999_999):07d}")
        else:
            n = rng.randrange(ids)
            out.append(f"{chr(97 + n % 6)}{n:07d}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--lookups", type=int, default=10_000)
    ap.add_argument("--grep-sample", type=int, default=20)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-master-index-"))
    work.mkdir(parents=True, exist_ok=True)
    listing = work / "masters.txt"
    index = work / "masters.duckdb"

    t = time.perf_counter()
    make_listing(listing, args.lines)
    size_mb = listing.stat().st_size / 1e6
    print(f"listing: {args.lines:,} lines, {size_mb:,.0f} MB, made in {time.perf_counter() - t:.1f} s")

    stats = build_from_listing(listing, index)
    print(f"load: {stats['masters']:,} masters, {stats['ids']:,} IDs in {stats['seconds']:.1f} s "
          f"({args.lines / stats['seconds']:,.0f} lines/s)")

    ids = pick_ids(args.lines, args.lookups)
    with MasterIndex(index) as mi:
        times = []
        found = 0
        for did in ids:
            s = time.perf_counter()
            found += bool(mi.lookup_one(did))
            times.append(time.perf_counter() - s)
        s = time.perf_counter()
        batch = mi.lookup(ids)
        batch_s = time.perf_counter() - s
    single_mean = statistics.fmean(times)
    p99 = sorted(times)[int(len(times) * 0.99) - 1]
    print(f"duckdb single lookups: {len(ids):,} in {sum(times):.2f} s; mean {single_mean * 1e3:.2f} ms, "
          f"p99 {p99 * 1e3:.2f} ms; {found:,} found")
    print(f"duckdb batch lookup: {len(ids):,} IDs in one query: {batch_s * 1e3:.0f} ms "
          f"({sum(1 for v in batch.values() if v):,} distinct IDs found)")

    sample = ids[: args.grep_sample]
    grep_times = []
    for did in sample:
        s = time.perf_counter()
        # output captured, as the paths are what a lookup is for (GNU grep stops at the
        # first match when writing to /dev/null, which would flatter it)
        subprocess.run(["grep", "-F", did, str(listing)], capture_output=True, check=False)
        grep_times.append(time.perf_counter() - s)
    grep_mean = statistics.fmean(grep_times)
    print(f"grep single lookups: {len(sample)} sampled, mean {grep_mean * 1e3:.1f} ms each "
          f"(10,000 would take ~{grep_mean * len(ids) / 60:.1f} min)")
    pattern_file = work / "ids.txt"
    pattern_file.write_text("\n".join(ids) + "\n")
    s = time.perf_counter()
    subprocess.run(["grep", "-F", "-f", str(pattern_file), str(listing)], capture_output=True, check=False)
    grep_batch = time.perf_counter() - s
    print(f"grep batch: all {len(ids):,} IDs in one pass (grep -F -f): {grep_batch * 1e3:.0f} ms")

    print("ratios (grep time / duckdb time):")
    print(f"  single lookup: {grep_mean / single_mean:,.0f}x faster per lookup")
    print(f"  batch of {len(ids):,}: {grep_batch / batch_s:,.1f}x")
    print(f"  break-even: the load pays for itself after {stats['seconds'] / max(grep_mean - single_mean, 1e-9):,.0f} "
          "single lookups")


if __name__ == "__main__":
    main()
