"""Two runs on one ledger at once: the second fails fast with a clear message; the ledger stays whole.

Two real ``photo-escape run`` processes are started on the same job (same ledger).
The first is kept busy by a CDN that holds one picture back; the second is started while the first holds
the ledger, and must exit with status 3 and the ledger-busy message, no traceback,
without starting a run. The first finishes normally; the ledger then opens,
reconciles, and holds exactly one run; a later run on it works.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from tasks.ledger import Ledger
from tests.fixtures.reliability import RELIABILITY_SIZE, ROOT, escape_job, photo_files, wait_for, write_job

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.timeout(240)]


def _start(job, env, out, err) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "photo_escape.cli", "run", str(job), "--json"],
                            stdout=out.open("wb"), stderr=err.open("wb"), env=env, cwd=ROOT)


class HeldPicture:
    """WSGI middleware for the CDN: the request for one picture waits until ``release()``
    (or two minutes), so the first run is still busy, whatever the machine's load, while
    the second run starts, asks for the ledger and is turned away."""

    def __init__(self, app, key: str) -> None:
        self.app, self.key = app, key
        self.released = threading.Event()

    def __call__(self, environ, start_response):
        if self.key in environ.get("PATH_INFO", ""):
            self.released.wait(timeout=120)
        return self.app(environ, start_response)

    def release(self) -> None:
        self.released.set()


def test_a_second_run_on_the_same_ledger_fails_fast_and_corrupts_nothing(tmp_path, rel_cache, cli_env):
    from sandbox.gallery import Gallery

    g = Gallery(10, per_page=5, size=RELIABILITY_SIZE, thumb_size=(32, 24), cache_dir=rel_cache / "busy")
    held = g.cdn_app = HeldPicture(g.cdn_app, g.original_key(0))
    with g:  # serves the site and the CDN (through the hold) until the test ends
        env = dict(cli_env, KODAK_PASSWORD=g.password)
        job = write_job(tmp_path / "job.yaml", escape_job(tmp_path, g.job_source(), name="rel-busy",
                                                          concurrency=2, batch_size=5))
        first = _start(job, env, tmp_path / "a.out", tmp_path / "a.err")
        second = None
        try:
            # the first run holds the ledger from before it logs in until it has finished
            assert wait_for(lambda: g.logins >= 1 or first.poll() is not None, timeout=120)
            assert first.poll() is None, (tmp_path / "a.err").read_text()[-2000:]
            t0 = time.monotonic()
            second = _start(job, env, tmp_path / "b.out", tmp_path / "b.err")
            rc2 = second.wait(timeout=120)
            took = time.monotonic() - t0
            assert first.poll() is None, "the first run ended before the second was turned away: too fast to prove it"
            err2 = (tmp_path / "b.err").read_text()
            assert rc2 == 3, err2
            assert "in use by another photo-escape run" in err2 and "Traceback" not in err2, err2
            assert (tmp_path / "b.out").read_text() == ""
            assert took < 60
            held.release()
            rc1 = first.wait(timeout=180)
        finally:
            held.release()
            for p in (first, second):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait()
        assert rc1 == 0, (tmp_path / "a.err").read_text()[-3000:]
        summary = json.loads((tmp_path / "a.out").read_text().strip().splitlines()[-1])
        assert summary["done"] == summary["listed"] == 10
        assert len(photo_files(tmp_path / "archive")) == 10
        with Ledger(tmp_path / "ledger.duckdb") as led:
            runs = led.query("SELECT run_id, status FROM runs")
            assert runs == [{"run_id": summary["run_id"], "status": "finished"}]  # the second never started
            for r in led.query("SELECT * FROM reconciliation_run"):
                assert r["listed"] == r["done"] + r["skipped"] + r["failed"] + r["pending"]
            assert led.reconciliation(job="rel-busy")["done"] == 10
            # every table reads back whole
            for table in ("runs", "items", "events", "assets", "capture_times", "matches"):
                led.query(f"SELECT * FROM {table}")
        # once the first is gone, the ledger takes the next run (which has nothing left to do)
        again = subprocess.run([sys.executable, "-m", "photo_escape.cli", "run", str(job), "--json"],
                               capture_output=True, text=True, env=env, cwd=ROOT, timeout=180)
        assert again.returncode == 0, again.stderr[-3000:]
        last = json.loads(again.stdout.strip().splitlines()[-1])
        assert last["done"] == 10 and len(photo_files(tmp_path / "archive")) == 10
