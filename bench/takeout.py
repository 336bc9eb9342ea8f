"""Benchmark: a Google Photos Takeout export into a folder, photo-escape against the recipe
people use today, in the same run, on the same export.

    .venv/bin/python bench/takeout.py --quick            # smoke run: ~60 photos
    .venv/bin/python bench/takeout.py                    # the recorded figure: 2,000 photos
    .venv/bin/python bench/takeout.py --listing 100000   # listing memory of a 100,000-photo export

The export is sandbox/takeout.py's two zip parts (every quirk: clipped and numbered
sidecar names, edited copies, album copies, videos, sidecars in the other part, photos
taken in Kathmandu, +05:45) plus ``--photos`` plain photos named as a recent export
names them. Both contenders start from the zip parts:

* **the recipe**: ``unzip`` each part, then
  ``exiftool -tagsfromfile %d%F.json "-DateTimeOriginal<PhotoTakenTimeTimestamp" -r``
  (with ``-overwrite_original``, which only spares it writing backups). It finds only
  ``NAME.json`` sidecars, writes the UTC instant as a wall clock in the machine's zone
  (TZ=UTC here), and extracts album copies as more files;
* **photo-escape**: ``source.kind: takeout`` through the escape flow (Prefect's API
  started before the clock starts), parts read in place, into a dated folder, with XMP
  sidecars where this build writes them.

Then, for every photo (videos aside), whether its restored wall-clock capture time is
the true one (the camera's clock in Kathmandu): the recipe's DateTimeOriginal as
exiftool reads it back, photo-escape's ``capture_times.local`` in the ledger. Also
counted: files delivered (album copies delivered again are duplicates).

``--listing N`` builds an export of N photos (tiny members, each with its sidecar, a
tenth in albums, in parts of 2,000 as Takeout's default 2 GB parts hold) and measures
with tracemalloc the peak memory of listing it against holding the parts' zip
directories open (what a reader keeping ``ZipFile`` objects holds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zipfile
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def recipe(parts: list[Path], out: Path) -> tuple[float, dict[str, str | None]]:
    """unzip + exiftool as the guides give it; returns (seconds, {relative path: DateTimeOriginal})."""
    env = {**os.environ, "TZ": "UTC"}
    start = time.perf_counter()
    for part in parts:
        subprocess.run(["unzip", "-q", "-o", str(part), "-d", str(out)], check=True)
    subprocess.run(["exiftool", "-q", "-q", "-overwrite_original", "-d", "%s", "-tagsfromfile", "%d%F.json",
                    "-DateTimeOriginal<PhotoTakenTimeTimestamp", "-r", str(out)], env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    read = subprocess.run(["exiftool", "-j", "-q", "-q", "-DateTimeOriginal", "-r", "--ext", "json", "--ext", "html",
                           str(out)], capture_output=True, text=True, env=env)
    dates = {}
    for rec in json.loads(read.stdout or "[]"):
        dates[Path(rec["SourceFile"]).relative_to(out).as_posix()] = rec.get("DateTimeOriginal")
    return seconds, dates


def photo_escape(parts_dir: Path, work: Path) -> tuple[float, dict, str]:
    """The escape flow on the export; returns (seconds, summary, ledger path)."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.escape import escape
    from sandbox.takeout import ZONE

    destination = {"kind": "local", "path": str(work / "archive"), "layout": "{taken:%Y/%m/%d}/{name}",
                   "sidecars": "xmp"}
    job = {"name": "bench-takeout", "ledger": str(work / "ledger.duckdb"), "work_dir": str(work / "work"),
           "reports_dir": str(work / "reports"), "source": {"kind": "takeout", "path": str(parts_dir)},
           "destination": destination, "default_tz": ZONE, "options": {"batch_size": 200}}
    with prefect_test_harness(server_startup_timeout=120):
        start = time.perf_counter()
        summary = escape(job)
        seconds = time.perf_counter() - start
    return seconds, summary, job["ledger"]


def scores(made, recipe_dates: dict[str, str | None], ledger: str) -> dict:
    """How many photos (videos aside) each got the true wall-clock capture time."""
    from tasks.ledger import Ledger

    photos = [p for p in made.photos if not p.video]
    with Ledger(ledger, read_only=True) as led:
        rows = led.query("SELECT sha256, local FROM capture_times")
    ours = {r["sha256"]: r["local"] for r in rows}
    ours_right = sum(1 for p in photos if ours.get(p.sha256) == p.local)
    want = {p.sha256: p.local.strftime("%Y:%m:%d %H:%M:%S") for p in photos}
    recipe_right = 0
    for p in photos:  # the copy in the year folder (the album-only photo: its album copy)
        rel = next((r for r in recipe_dates if r.endswith("/" + p.name) and f"/{p.folder}/" in r), None)
        recipe_right += rel is not None and recipe_dates[rel] == want[p.sha256]
    return {"photos": len(photos), "photo_escape_right": ours_right, "recipe_right": recipe_right}


PHOTOS_PER_PART = 2000  # Takeout's default part is 2 GB: about 2,000 phone photos


def listing_memory(n: int, work: Path) -> dict:
    """Peak memory of listing an export of ``n`` photos (in parts of 2,000) against
    holding its zip directories."""
    from tasks import takeout

    count = max(2, -(-n // PHOTOS_PER_PART))
    parts = [work / f"takeout-{i + 1:03d}.zip" for i in range(count)]
    tiny = b"\xff\xd8\xff\xe0" + b"\0" * 60
    zs = [zipfile.ZipFile(p, "w", zipfile.ZIP_STORED) for p in parts]
    for i in range(n):
        folder = f"Takeout/Google Photos/Photos from {2000 + i % 20}"
        name = f"IMG_{i:07d}.jpg"
        part = i * count // n
        zs[part].writestr(f"{folder}/{name}", tiny + i.to_bytes(4, "big"))
        sidecar = {"title": name, "photoTakenTime": {"timestamp": str(10**9 + i)}}
        zs[(part + i % 2) % count].writestr(f"{folder}/{name}.supplemental-metadata.json", json.dumps(sidecar))
        if i % 10 == 0:
            zs[part].writestr(f"Takeout/Google Photos/Album {i % 50}/{name}", tiny + i.to_bytes(4, "big"))
    for z in zs:
        z.close()
    tracemalloc.start()
    held = [zipfile.ZipFile(p) for p in parts]
    directories = tracemalloc.get_traced_memory()[0]
    for z in held:
        z.close()
    del held
    tracemalloc.stop()
    tracemalloc.start()
    start = time.perf_counter()
    pages = listed = 0
    for page in takeout.items(takeout.scan(work), page_size=500):
        pages += 1
        listed += len(page)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"photos": n, "parts": count, "listed": listed, "pages": pages, "seconds": round(seconds, 2),
            "listing_peak_mib": round(peak / 2**20, 1), "zip_directories_mib": round(directories / 2**20, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=int, default=2000, help="photos in the export, quirks included")
    ap.add_argument("--quick", action="store_true", help="a smoke run: about 60 photos")
    ap.add_argument("--listing", type=int, default=0, help="measure listing memory of an export of N photos instead")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-takeout-"))
    try:
        if args.listing:
            print(json.dumps(listing_memory(args.listing, work)))
            return
        for tool in ("unzip", "exiftool"):
            if not shutil.which(tool):
                raise SystemExit(f"{tool} is needed for the recipe (apt-get install unzip libimage-exiftool-perl)")
        from sandbox.takeout import make_export

        count = 60 if args.quick else args.photos
        made = make_export(work / "export", extra=max(0, count - 27), size=(640, 480))
        ours_s, summary, ledger = photo_escape(work / "export", work / "ours")
        theirs_s, dates = recipe(made.parts, work / "recipe")
        n = len(made.photos)
        files = sum(1 for rel in dates)
        result = {"photos_and_videos": n, **scores(made, dates, ledger),
                  "photo_escape_seconds": round(ours_s, 2), "photo_escape_per_s": round(n / ours_s, 1),
                  "recipe_seconds": round(theirs_s, 2), "recipe_per_s": round(n / theirs_s, 1),
                  "photo_escape_files": summary["done"], "recipe_files": files,
                  "photo_escape_failed": summary["failed"], "when": datetime.now().isoformat(timespec="seconds")}
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
