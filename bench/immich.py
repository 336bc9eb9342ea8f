"""Benchmark: into Immich, whole commands: Immich's own CLI (``immich upload --recursive``)
against ``photo-escape run``, first run and rerun, on the same photos, in the same run.

    .venv/bin/python bench/immich.py                  # quick check: 40 photos
    .venv/bin/python bench/immich.py --photos 2000    # the recorded figure

The Immich stand-in (``python -m sandbox.immich PORT``) runs in its own process, emptied
before each side. The photos are real pictures with EXIF capture times and offsets, in
album folders. Both sides put every photo into one album:

* peer: ``immich login URL KEY`` once, then ``immich upload --recursive --album-name bench
  DIR`` (hash, bulk check, upload, album), and the same command again (the rerun);
* photo-escape: ``photo-escape run job.yaml --json`` (list, hash, capture time, bulk check,
  upload with the restored time and offset, album, ledger, report), then again.

Immich's CLI (Node 22 and ``@immich/cli``) comes from the test setup's ``.cache/immich-cli``
(installed with npm when missing). ``photo-escape run`` starts its own temporary Prefect
API unless ``PREFECT_API_URL`` is set, as a user's first command would. Prints one JSON
object: seconds per command and what the server held after each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def start_stand_in() -> tuple[subprocess.Popen, str]:
    """The Immich stand-in in a child process on a free port; returns (process, url)."""
    from bench.s3_deliver import _free_port

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sandbox.immich", str(port)], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/api/server/ping", timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the Immich stand-in did not start")


def sandbox(url: str, path: str, method: str = "GET") -> dict:
    req = urllib.request.Request(url + path, method=method, data=b"{}" if method == "POST" else None,
                                 headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=60).read())


def make_photos(root: Path, count: int) -> None:
    """``count`` real pictures with capture times and offsets, 50 to a folder."""
    from sandbox.photos import write_jpeg

    start = datetime(2016, 4, 1, 9, 0)
    for i in range(count):
        taken = start + timedelta(minutes=17 * i)
        write_jpeg(root / f"album-{i // 50:03d}" / f"IMG_{i:05d}.JPG", i, size=(320, 240), taken=taken,
                   offset="+05:45")


def timed(cmd: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    took = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])}... failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return took, done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=int, default=40, help="photos (2000 for the recorded figure)")
    ap.add_argument("--concurrency", type=int, default=4, help="uploads at once, both sides")
    args = ap.parse_args()

    from sandbox.immich import SANDBOX_KEY
    from tests.fixtures.immich import install_immich_cli

    bin_dir = install_immich_cli()
    if isinstance(bin_dir, str):
        raise SystemExit(bin_dir)
    proc, url = start_stand_in()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-immich-") as tmp:
            tmp = Path(tmp)
            photos = tmp / "photos"
            make_photos(photos, args.photos)
            out: dict = {"photos": args.photos, "concurrency": args.concurrency}

            # the peer: Immich's own CLI
            env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                       IMMICH_CONFIG_DIR=str(tmp / "immich-config"))
            sandbox(url, "/sandbox/reset", "POST")
            timed([str(bin_dir / "immich"), "login", f"{url}/api", SANDBOX_KEY], env)
            upload = [str(bin_dir / "immich"), "upload", "--recursive", "--album-name", "bench", "--no-progress",
                      "--concurrency", str(args.concurrency), str(photos)]
            first, _ = timed(upload, env)
            held = sandbox(url, "/sandbox/stats")
            rerun, _ = timed(upload, env)
            out["immich_cli"] = {"first_run_s": round(first, 2), "rerun_s": round(rerun, 2),
                                 "assets": held["assets"],
                                 "rerun_uploads": sandbox(url, "/sandbox/stats")["uploads_received"]
                                 - held["uploads_received"]}

            # photo-escape run
            sandbox(url, "/sandbox/reset", "POST")
            job = {"name": "bench-immich", "ledger": str(tmp / "ledger.duckdb"), "work_dir": str(tmp / "work"),
                   "reports_dir": str(tmp / "reports"),
                   "source": {"kind": "local", "path": str(photos), "pattern": ["*.JPG"]},
                   "destination": {"kind": "immich", "url": url, "api_key": {"env": "BENCH_IMMICH_KEY"},
                                   "albums": "bench"},
                   "options": {"batch_size": 200, "concurrency": args.concurrency}}
            (tmp / "job.yaml").write_text(json.dumps(job))
            env = dict(os.environ, BENCH_IMMICH_KEY=SANDBOX_KEY, PYTHONPATH=str(ROOT))
            run = [sys.executable, "-m", "photo_escape.cli", "run", str(tmp / "job.yaml"), "--json"]
            first, done = timed(run, env)
            summary = json.loads(done.stdout.strip().splitlines()[-1])
            held = sandbox(url, "/sandbox/stats")
            rerun, _ = timed(run, env)
            out["photo_escape"] = {"first_run_s": round(first, 2), "rerun_s": round(rerun, 2),
                                   "assets": held["assets"], "done": summary["done"],
                                   "rerun_uploads": sandbox(url, "/sandbox/stats")["uploads_received"]
                                   - held["uploads_received"]}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
