"""Benchmark: fixity (issue 23), ``photo-escape verify`` against ``rclone check --checksum``
on the same photos, and a rerun's look at 100,000 delivered photos.

**1. Verify, whole commands.** ``--photos`` real JPEGs (sandbox pictures with EXIF, made
before timing) are delivered once by ``photo-escape run`` to a folder laid out like the
source (``layout: "{relpath}"``, so rclone can compare the two trees path by path) and,
with ``--s3``, to moto's S3 server in its own process (``originals: "originals/{relpath}"``).
Then, in alternating order each round, each contender runs as a whole command from the
shell, interpreter and start-up included, 8 files at a time:

* ``photo-escape verify JOB --json``: one listing, every photo read back whole and its
  sha256 compared with the ledger's (S3: every object downloaded), a ``fixity`` event
  per photo in the ledger, a report written;
* ``rclone check --checksum --one-way SOURCE DEST --checkers 8``: the peer the issue
  names. Folder to folder it hashes both trees (MD5), reading twice the bytes; to S3
  it hashes the source and takes the destination's MD5 from the ETag, reading none of
  the archive;
* beside ours, as a whole command too, its check alone: ``tasks.fixity.verify`` (the same
  listing and full reads) without Prefect, the ledger's writes or the report, to show
  what the command's fixed start-up costs;
* ``rclone checksum sha256 SUMS DEST --checkers 8`` (S3: ``--download``): rclone checking
  the archive against a sum file, the same work as ours (read the archive, compare with
  recorded sha256s); the sum file is written from the ledger before timing.

A Prefect server runs for the whole benchmark (as a deployment would have one), so
each ``photo-escape`` command talks to it; ``--ephemeral-prefect`` leaves it out and
each command starts its own temporary server (about 8 s here). The page cache is
warm for everyone (the photos were just written and are read every round).

**2. A rerun's listing.** ``--listing`` photos (100,000 by default) as small files in a
folder (100 a day folder) and a synthetic ledger saying each was delivered there
(written through the Ledger API as the escape flow writes it). Timed in-process, as a
rerun does it before its first batch: ``Ledger.delivered`` (what the ledger says is
there) and ``fixity.look`` (one listing of the folders, sizes and versions compared);
beside it, as a reference, ``rclone lsf -R --format sp`` listing the same folder as a
whole command.

    .venv/bin/python bench/verify.py --photos 5000 --rounds 3 --s3     # the recorded figure
    .venv/bin/python bench/verify.py                                  # quick: 100 photos, 5,000 listed

Prints each round's seconds, the medians and the ratios (peer / photo-escape: above 1,
photo-escape is faster).
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
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="pe-bench-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

WORKERS = 8  # files at a time, for every contender


# -- whole commands -------------------------------------------------------------------------
def timed(cmd: list[str], env: dict, ok=None) -> tuple[float, subprocess.CompletedProcess]:
    """Wall seconds of one whole command; stops the benchmark when it did not do its job
    (``ok(process)`` false; by default, a non-zero exit status)."""
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    dt = time.perf_counter() - t
    if not (ok(proc) if ok else proc.returncode == 0):
        raise SystemExit(f"{' '.join(cmd[:4])}... failed ({proc.returncode}):\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}")
    return dt, proc


# photo-escape's check alone, as a whole command too: the same listing and full reads as
# ``verify`` (tasks.fixity.verify), without Prefect, the ledger's writes or the report
CHECK_ONLY = """
import json, sys
from photo_escape.plugins import make_destination
from photo_escape.stories import load_job
from tasks import fixity
from tasks.ledger import Ledger
spec = load_job(sys.argv[1])
destination = make_destination(spec.destination, workdir=spec.work_path, options=spec.options)
with Ledger(spec.ledger_path, read_only=True) as led:
    rows = led.delivered(spec.name, settings=destination.settings_key())
found = fixity.counts(fixity.verify(destination, rows, workers=spec.options.concurrency))
print(json.dumps(found))
sys.exit(0 if found["ok"] == found["checked"] == len(rows) > 0 else 1)
"""


def photo_escape(*args: str) -> list[str]:
    return [sys.executable, "-m", "photo_escape.cli", *args]


def last_json(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def verified_all(n: int):
    """A check that ``photo-escape verify --json`` found all ``n`` photos ok."""
    def ok(proc: subprocess.CompletedProcess) -> bool:
        if proc.returncode != 0:
            return False
        s = last_json(proc)
        return (s["checked"], s["ok"], s["missing"], s["changed"]) == (n, n, 0, 0)
    return ok


def write_job(work: Path, name: str, camera: Path, destination: dict) -> Path:
    job = {"name": name, "ledger": str(work / f"{name}.duckdb"), "work_dir": str(work / "work"),
           "reports_dir": str(work / "reports"),
           "source": {"kind": "local", "path": str(camera), "pattern": "*.JPG"},
           "destination": destination,
           "options": {"concurrency": WORKERS, "batch_size": 500}}
    path = work / f"{name}.yaml"
    path.write_text(json.dumps(job))  # JSON is YAML
    return path


def sums_file(ledger: Path, job: str, out: Path, strip: str = "") -> Path:
    """``sha256  path`` lines of what the ledger says was delivered (rclone's sum file)."""
    from tasks.ledger import Ledger

    with Ledger(ledger, read_only=True) as led:
        rows = led.delivered(job)
    lines = [f"{r['sha256']}  {r['target'][len(strip):] if strip else r['target']}" for r in rows]
    out.write_text("\n".join(lines) + "\n")
    return out


def rounds(contenders: dict[str, tuple[list[str], object]], env: dict, n: int) -> dict[str, list[float]]:
    """Each contender once a round, the order reversed every other round."""
    times: dict[str, list[float]] = {k: [] for k in contenders}
    names = list(contenders)
    for r in range(n):
        for name in (names if r % 2 == 0 else names[::-1]):
            cmd, ok = contenders[name]
            dt, _ = timed(cmd, env, ok)
            times[name].append(dt)
            print(f"  round {r + 1}: {name:<48} {dt:7.2f} s", flush=True)
    return times


VERIFY = "photo-escape verify (full read)"
ALONE = "  its check alone (no Prefect, no ledger writes)"


def summarise(title: str, times: dict[str, list[float]], photos: int, megabytes: float) -> dict:
    """Medians, and each one's time over ``photo-escape verify``'s and over its check alone's
    (for a peer: above 1, photo-escape is faster)."""
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{title}: medians of {len(times[VERIFY])} round(s), {photos:,} photos, {megabytes:,.1f} MB")
    for k, v in med.items():
        ratio = "" if k in (VERIFY, ALONE) else \
            f"   / verify's = {v / med[VERIFY]:.2f}, / the check alone's = {v / med[ALONE]:.2f}"
        print(f"  {k:<48} {v:7.2f} s  ({photos / v:,.0f} photos/s, {megabytes / v:,.1f} MB/s){ratio}")
    return {"medians_s": {k.strip(): round(v, 3) for k, v in med.items()},
            "rounds_s": {k.strip(): [round(x, 3) for x in v] for k, v in times.items()},
            "peer_over_verify": {k: round(v / med[VERIFY], 2) for k, v in med.items() if k not in (VERIFY, ALONE)},
            "peer_over_check_alone": {k: round(v / med[ALONE], 2) for k, v in med.items()
                                      if k not in (VERIFY, ALONE)}}


def verify_benchmark(args, work: Path, env: dict) -> dict:
    from sandbox import photos

    camera = work / "camera"
    t = time.perf_counter()
    files = list(photos.make_collection(camera, count=args.photos, bad=False, size=args.size).values())
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    print(f"{len(files):,} photos made ({megabytes:,.1f} MB) in {time.perf_counter() - t:.1f} s", flush=True)
    rclone = ["rclone", "--config", os.devnull, "--checkers", str(WORKERS)]
    out: dict = {"photos": len(files), "megabytes": round(megabytes, 1)}

    folder = write_job(work, "bench-verify-folder", camera,
                       {"kind": "local", "path": str(work / "archive"), "layout": "{relpath}"})
    dt, proc = timed(photo_escape("run", str(folder), "--json"), env)
    assert last_json(proc)["done"] == len(files), last_json(proc)
    print(f"delivered to the folder by photo-escape run in {dt:.1f} s (setup, not compared)", flush=True)
    sums = sums_file(work / "bench-verify-folder.duckdb", "bench-verify-folder", work / "folder.sha256")
    out["folder"] = summarise("folder destination", rounds({
        VERIFY: (photo_escape("verify", str(folder), "--json"), verified_all(len(files))),
        ALONE: ([sys.executable, "-c", CHECK_ONLY, str(folder)], None),
        "rclone check --checksum --one-way (MD5 both)": (rclone + ["check", "--checksum", "--one-way",
                                                                    str(camera), str(work / "archive")], None),
        "rclone checksum sha256 SUMS (archive only)": (rclone + ["checksum", "sha256", str(sums),
                                                                  str(work / "archive")], None),
    }, env, args.rounds), len(files), megabytes)

    if args.s3:
        out["s3"] = s3_benchmark(args, work, env, camera, files, megabytes, rclone)
    return out


def s3_benchmark(args, work: Path, env: dict, camera: Path, files: list[Path], megabytes: float,
                 rclone: list[str]) -> dict:
    """The same photos to moto's S3 server (its own process), checked by both."""
    import boto3

    from bench.s3_deliver import start_moto
    from sandbox.s3 import SANDBOX_KEYS, sandbox_credentials_env

    proc, url = start_moto()
    try:
        boto3.client("s3", endpoint_url=url, region_name="us-east-1", **SANDBOX_KEYS).create_bucket(Bucket="archive")
        creds = sandbox_credentials_env()
        env = {k: v for k, v in env.items() if k != "AWS_CA_BUNDLE"}  # plain http; rclone's SDK refuses it
        env.update(**{creds: os.environ[creds],
                      "RCLONE_CONFIG_MOTO_TYPE": "s3", "RCLONE_CONFIG_MOTO_PROVIDER": "Other",
                      "RCLONE_CONFIG_MOTO_ACCESS_KEY_ID": SANDBOX_KEYS["aws_access_key_id"],
                      "RCLONE_CONFIG_MOTO_SECRET_ACCESS_KEY": SANDBOX_KEYS["aws_secret_access_key"],
                      "RCLONE_CONFIG_MOTO_ENDPOINT": url, "RCLONE_CONFIG_MOTO_REGION": "us-east-1"})
        job = write_job(work, "bench-verify-s3", camera, {
            "kind": "s3", "bucket": "archive", "endpoint_url": url, "credentials": {"env": creds},
            "originals": "originals/{relpath}", "thumbnails": None})
        dt, done = timed(photo_escape("run", str(job), "--json"), env)
        assert last_json(done)["done"] == len(files), last_json(done)
        print(f"delivered to S3 by photo-escape run in {dt:.1f} s (setup, not compared)", flush=True)
        sums = sums_file(work / "bench-verify-s3.duckdb", "bench-verify-s3", work / "s3.sha256",
                         strip="s3://archive/originals/")
        return summarise("S3 destination (moto server)", rounds({
            VERIFY: (photo_escape("verify", str(job), "--json"), verified_all(len(files))),
            ALONE: ([sys.executable, "-c", CHECK_ONLY, str(job)], None),
            "rclone check --checksum --one-way (ETag)": (rclone + ["check", "--checksum", "--one-way", str(camera),
                                                                   "moto:archive/originals"], None),
            "rclone checksum sha256 SUMS --download": (rclone + ["checksum", "sha256", "--download", str(sums),
                                                                 "moto:archive/originals"], None),
        }, env, args.rounds), len(files), megabytes)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# -- a rerun's look at 100,000 delivered photos ------------------------------------------------
def synthetic_archive(work: Path, count: int) -> tuple[Path, dict, str]:
    """``count`` small files, 100 a day folder, and a ledger saying each was delivered
    there (one run, one deliver event each, as the escape flow records them).
    Returns (ledger path, destination config, job name)."""
    import hashlib
    from datetime import date, timedelta

    from photo_escape.outcomes import outcome
    from photo_escape.plugins import make_destination
    from photo_escape.stories import load_job
    from tasks.ledger import Ledger

    root = work / "big-archive"
    job = "bench-rerun-listing"
    spec = load_job({"name": job, "ledger": str(work / "big.duckdb"), "work_dir": str(work / "work"),
                     "source": {"kind": "local", "path": str(work / "camera")},
                     "destination": {"kind": "local", "path": str(root)}})
    destination = make_destination(spec.destination, workdir=work / "work", options=spec.options)
    items, events = [], []
    for n in range(count):
        day = date(2006, 1, 1) + timedelta(days=n // 100)
        target = f"{day:%Y/%m/%d}/IMG_{n:06d}.JPG"
        path = root / target
        if n % 100 == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        data = f"photo {n}\n".encode()
        path.write_bytes(data)
        item_id = f"local:{target}"
        items.append({"item_id": item_id, "source_ref": str(work / "camera" / target), "name": path.name,
                      "path": str(work / "camera" / target)})
        events.append(outcome(item_id, "deliver", "ok", "delivered", final=True, bytes=len(data),
                              sha256=hashlib.sha256(data).hexdigest(),
                              detail={"target": target, "version": str(path.stat().st_mtime_ns)}))
    settings = destination.settings_key()
    with Ledger(spec.ledger_path) as led:
        led.start_run("listing-run-1", job, flow="escape", settings=settings, spec=spec.dump())
        for start in range(0, count, 20_000):
            led.add_items(job, "listing-run-1", items[start:start + 20_000])
            led.append_events(job, "listing-run-1", events[start:start + 20_000], settings=settings)
        led.finish_run("listing-run-1", "finished", {})
    destination.close()
    return spec.ledger_path, spec.destination, job


def listing_benchmark(args, work: Path) -> dict:
    from photo_escape.plugins import make_destination
    from tasks import fixity
    from tasks.ledger import Ledger

    t = time.perf_counter()
    ledger, dest_config, job = synthetic_archive(work, args.listing)
    print(f"{args.listing:,} delivered photos made (files and ledger) in {time.perf_counter() - t:.1f} s", flush=True)
    times: dict[str, list[float]] = {"Ledger.delivered": [], "fixity.look (one listing)": [],
                                     "rerun's look (both)": [], "rclone lsf -R --format sp (reference)": []}
    for r in range(args.rounds):
        t0 = time.perf_counter()
        with Ledger(ledger, read_only=True) as led:
            destination = make_destination(dest_config, workdir=work / "work")
            rows = led.delivered(job, settings=destination.settings_key())
        t1 = time.perf_counter()
        found = fixity.look(destination, rows, workers=WORKERS)
        t2 = time.perf_counter()
        destination.close()
        assert len(rows) == args.listing and fixity.counts(found)["ok"] == args.listing, fixity.counts(found)
        dt, proc = timed(["rclone", "--config", os.devnull, "lsf", "-R", "--files-only", "--format", "sp",
                          str(work / "big-archive")], dict(os.environ))
        assert len(proc.stdout.splitlines()) == args.listing
        for k, v in zip(times, (t1 - t0, t2 - t1, t2 - t0, dt)):
            times[k].append(v)
        print(f"  round {r + 1}: delivered {t1 - t0:.2f} s + look {t2 - t1:.2f} s = {t2 - t0:.2f} s; "
              f"rclone lsf {dt:.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"a rerun's look at {args.listing:,} delivered photos: medians of {args.rounds} round(s)")
    for k, v in med.items():
        print(f"  {k:<40} {v:7.2f} s")
    return {"photos": args.listing, "medians_s": {k: round(v, 3) for k, v in med.items()},
            "rounds_s": {k: [round(x, 3) for x in v] for k, v in times.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=100, help="photos verified (5000 for the recorded figure)")
    ap.add_argument("--size", type=lambda s: tuple(int(x) for x in s.split("x")), default=(640, 480),
                    help="picture size, WxH (default 640x480)")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds; medians are reported")
    ap.add_argument("--s3", action="store_true", help="also an S3 destination on moto's server")
    ap.add_argument("--listing", type=int, default=5000,
                    help="delivered photos for the rerun's look (100000 for the recorded figure; 0: skip)")
    ap.add_argument("--ephemeral-prefect", action="store_true",
                    help="no Prefect server: each photo-escape command starts its own temporary one")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    if not shutil.which("rclone"):
        raise SystemExit("rclone is not installed (apt-get install -y rclone)")
    print(subprocess.run(["rclone", "version"], capture_output=True, text=True).stdout.splitlines()[0])

    work = Path(tempfile.mkdtemp(prefix="pe-bench-verify-"))
    results: dict = {"workers": WORKERS}
    try:
        with ExitStack() as stack:
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            if args.photos:
                if not args.ephemeral_prefect:
                    from prefect.settings import PREFECT_API_URL
                    from prefect.testing.utilities import prefect_test_harness

                    stack.enter_context(prefect_test_harness(server_startup_timeout=120))
                    env["PREFECT_API_URL"] = PREFECT_API_URL.value()
                else:
                    env.pop("PREFECT_API_URL", None)
                results["verify"] = verify_benchmark(args, work, env)
        if args.listing:
            results["rerun_listing"] = listing_benchmark(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work folder kept: {work}")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
