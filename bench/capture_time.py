"""Benchmark: capture times for a folder of photos, guarded readers against in-process peers.

Makes ``--photos`` real pictures (sandbox.photos) with the mix of EXIF a trip gives
(offset tags, GPS time, GPS position only, wall clock only) and times:

* **photo-escape**: ``tasks.capture_time.capture_times`` — every file read in a
  time-limited reader subprocess (2 of them), then the full decision (15-minute GPS
  rounding, timezonefinder lookups, DST checks, previous-photo carry-forward); once in
  one call (readers and timezonefinder started cold), once in batches of 200 as the
  escape flow calls it (readers kept up between calls);
* **peer A, the seed notebook's way**: ``exifread.process_file`` on each file in this
  process (maker notes and all, as the notebook called it), offset from the GPS hour;
* **peer B, bare exifread**: the same in-process read with ``details=False`` and no
  decision at all: the floor of reading EXIF with exifread, with no guard against hangs.

Both peers have no protection: one file that loops exifread stops them for good.

    .venv/bin/python bench/capture_time.py                 # quick: 200 photos
    .venv/bin/python bench/capture_time.py --photos 2000   # the recorded figure
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sandbox.photos import write_jpeg  # noqa: E402
from tasks.capture_time import capture_times  # noqa: E402


def make_photos(folder: Path, n: int) -> list[str]:
    """A trip's worth of photos, a quarter of each kind of EXIF."""
    out = []
    start = datetime(2016, 4, 1, 9, 0)
    for i in range(n):
        t = start + timedelta(minutes=7 * i)
        kind = i % 4
        exif: dict = {"taken": t}
        if kind == 0:
            exif["offset"] = "+05:45"
        elif kind == 1:
            exif["gps_utc"] = t - timedelta(minutes=345)
            exif["gps"] = (27.70, 85.32)
        elif kind == 2:
            exif["gps"] = (27.70 + (i % 50) * 0.001, 85.32)
        out.append(str(write_jpeg(folder / f"day{i // 100:02d}" / f"IMG_{i:05d}.JPG", i, size=(640, 480), **exif)))
    return out


def notebook_way(paths: list[str]) -> int:
    """The seed notebook: exifread on every file, the offset from the GPS hour, else last/default."""
    import exifread

    found = 0
    for p in paths:
        with open(p, "rb") as fh:
            tags = exifread.process_file(fh)
        if "EXIF DateTimeOriginal" not in tags:
            continue
        local = datetime.strptime(str(tags["EXIF DateTimeOriginal"]), "%Y:%m:%d %H:%M:%S")
        if "GPS GPSTimeStamp" in tags:
            hour = int(tags["GPS GPSTimeStamp"].values[0])
            off = local.hour - hour
            off = off + 24 if off <= -12 else off - 24 if off > 12 else off
        found += 1
    return found


def bare_exifread(paths: list[str]) -> int:
    import exifread

    found = 0
    for p in paths:
        with open(p, "rb") as fh:
            tags = exifread.process_file(fh, details=False, extract_thumbnail=False)
        found += "EXIF DateTimeOriginal" in tags
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ct-") as tmp:
        paths = make_photos(Path(tmp), args.photos)
        runs = {}
        t = time.perf_counter()
        recs = capture_times(paths)
        runs["photo-escape (guarded, full decision)"] = time.perf_counter() - t
        with_utc = sum(r["utc"] is not None for r in recs)
        t = time.perf_counter()  # as the flow calls it: batch after batch, readers kept up
        for k in range(0, len(paths), 200):
            capture_times(paths[k:k + 200])
        runs["photo-escape, batches of 200 (as the flow)"] = time.perf_counter() - t
        t = time.perf_counter()
        notebook_way(paths)
        runs["peer A: seed notebook (exifread in-process)"] = time.perf_counter() - t
        t = time.perf_counter()
        bare_exifread(paths)
        runs["peer B: bare exifread, details=False"] = time.perf_counter() - t
    ours = runs["photo-escape (guarded, full decision)"]
    print(f"{args.photos} photos; photo-escape gave a UTC time to {with_utc} "
          f"(wall-clock-only photos borrow the previous photo's zone)")
    for name, secs in runs.items():
        print(f"  {name:45} {secs:7.2f} s  {args.photos / secs:8.0f} photos/s  ratio to photo-escape {secs / ours:5.2f}")


if __name__ == "__main__":
    main()
