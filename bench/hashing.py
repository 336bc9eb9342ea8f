"""Hashing 12-megapixel JPEGs: photo-escape's way against naive imagehash, per core.

Pictures: scikit-image's real photographs upscaled to 4000 x 3000 (12 megapixels),
saved as camera-like JPEGs (quality 92, some with an EXIF orientation).

* photo-escape: ``tasks.hashing.hash_file`` (sha256 of the bytes, a reduced-size
  decode, EXIF orientation, phash, dhash, both mirrored, a 32x32 thumbnail), in one
  process (``processes=1``) so the figure is per core; then ``hash_files`` with a
  process pool on every core for the throughput.
* peer: ``imagehash.phash(Image.open(p))``, the way it is usually written (a full
  decode, one hash, no orientation), in one process.

    .venv/bin/python bench/hashing.py            # quick: 4 pictures
    .venv/bin/python bench/hashing.py --full     # recorded: 12 pictures, 3 rounds
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import imagehash  # noqa: E402
from PIL import Image  # noqa: E402

from sandbox import photos  # noqa: E402
from tasks.hashing import hash_file, hash_files  # noqa: E402

SIZE = (4000, 3000)


def make_pictures(folder: Path, count: int) -> list[Path]:
    """``count`` 12-megapixel camera-like JPEGs (reused when already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        p = folder / f"IMG_{i:04d}.JPG"
        if not p.exists():
            photos.write_jpeg(p, i % len(photos.BASES), size=SIZE, quality=92, orientation=(1, 6, 1, 8)[i % 4])
        out.append(p)
    return out


def timed(fn, paths) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) to run ``fn(paths)``. The CPU time
    is the per-core figure that the other agents sharing this machine disturb least."""
    w, c = time.perf_counter(), time.process_time()
    fn(paths)
    return time.perf_counter() - w, time.process_time() - c


def ours(paths):
    for p in paths:
        rec = hash_file(p)
        assert rec["status"] == "ok", rec


def naive(paths):
    for p in paths:
        imagehash.phash(Image.open(p))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--count", type=int)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "photo-escape-bench-12mp"))
    args = ap.parse_args(argv)
    count = args.count or (12 if args.full else 4)
    rounds = args.rounds or (3 if args.full else 1)
    paths = make_pictures(Path(args.dir), count)
    mb = sum(p.stat().st_size for p in paths) / 1e6
    print(f"{count} JPEGs of {SIZE[0]}x{SIZE[1]} ({mb:.1f} MB), {rounds} round(s), {os.cpu_count()} cores")
    ours(paths[:1]), naive(paths[:1])  # warm the page cache and the imports
    r_ours, r_naive = [], []
    for _ in range(rounds):  # interleaved, so a busy moment on the machine hits both
        r_ours.append(timed(ours, paths))
        r_naive.append(timed(naive, paths))
    w_ours, c_ours = (statistics.median(x) for x in zip(*r_ours))
    w_naive, c_naive = (statistics.median(x) for x in zip(*r_naive))
    w_pool, _ = timed(lambda ps: hash_files(ps, processes=0), paths)
    ms = lambda t: f"{t / count * 1000:7.1f} ms"  # noqa: E731
    print(f"{'':26}{'CPU':>10}{'wall':>10}   per picture")
    print(f"{'photo-escape, 1 process':26}{ms(c_ours):>10}{ms(w_ours):>10}   (sha256 + phash + dhash + mirrors + thumbnail)")
    print(f"{'naive imagehash.phash':26}{ms(c_naive):>10}{ms(w_naive):>10}   (phash only)")
    print(f"ratio per core: {c_naive / c_ours:.1f}x by CPU time, {w_naive / w_ours:.1f}x by wall time (target >= 8x)")
    print(f"photo-escape on all cores (hash_files, process pool, start-up included): {ms(w_pool)} per picture wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
