"""Crash consistency: SIGKILL real runs at random moments, rerun, and check nothing was lost or doubled.

Each run is ``photo-escape run JOB --json`` (the real CLI and flow against the
session's Prefect API), forked from a driver that has loaded the code once
(``crash_driver.py``), downloading from the sandbox gallery into a local folder.
Runs are killed in two ways, mixed by a seeded random plan:

* at a named crash point in the code (``PHOTO_ESCAPE_CRASH_AT``): after a batch is
  fetched / hashed / dated / delivered but before its outcomes reach the ledger, and
  inside a ledger transaction (rows inserted, not committed);
* from outside, at a random moment after the run was seen making progress
  (downloads appearing in its work folder, photos appearing in the destination).

After every kill: every visible file in the destination is a complete original
(nothing half-written under a photo's name), no picture is there twice, and the
ledger opens (DuckDB replays its WAL), holds every committed batch and none of the
killed transaction, and reconciles. After the final rerun: every picture is there
exactly once, the ledger says all done, killed runs are marked ``abandoned``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.download import safe_name
from tasks.ledger import Ledger
from tests.fixtures.reliability import (escape_job, gallery_originals, photo_files, sha256_file,
                                        staging_files, wait_for, write_job)

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.timeout(420)]

SEED = 20261123
COUNT = 15  # pictures per round: 3 pages of 6 (last has 3), 5 batches of 3
KILLS_WANTED = 21
POINTS = ["fetch", "hash", "capture_time", "deliver", "ledger_write"]


class Driver:
    """The fork server (crash_driver.py) as seen from the test."""

    def __init__(self, env: dict) -> None:
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("crash_driver.py"))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        assert self._read() == {"ready": True}

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        assert line, "the crash driver died"
        return json.loads(line)

    def start(self, args: list[str], out: Path, err: Path, env: dict | None = None) -> int:
        self.proc.stdin.write(json.dumps({"args": args, "out": str(out), "err": str(err), "env": env or {}}) + "\n")
        self.proc.stdin.flush()
        return self._read()["started"]

    def wait(self) -> dict:
        return self._read()

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            self.proc.kill()


@pytest.fixture
def driver(cli_env):
    d = Driver(cli_env)
    yield d
    d.close()


def _progress(work: Path, archive: Path) -> int:
    """Downloads under way or done in the work folder plus photos in the destination."""
    n = sum(1 for p in work.rglob("*") if p.is_file()) if work.exists() else 0
    return n + len(photo_files(archive))


def _check_destination(archive: Path, originals: dict[str, str]) -> list[str]:
    """Every visible photo is a complete original, none twice, none under a suffixed name."""
    shas = []
    for p in photo_files(archive):
        sha = sha256_file(p)
        assert sha in originals, f"{p} is not a complete original (half-written or foreign)"
        assert p.name == safe_name(originals[sha]), f"{p}: not under its own name (a suffixed copy?)"
        shas.append(sha)
    assert len(shas) == len(set(shas)), "a picture reached the destination twice"
    return shas


def _check_ledger(path: Path, killed: dict | None) -> dict:
    """Open the ledger after a kill (WAL replay), check the killed transaction left nothing
    and every run reconciles; returns the job's reconciliation."""
    with Ledger(path) as led:  # a read-write open replays the WAL
        for r in led.query("SELECT * FROM reconciliation_run"):
            assert r["listed"] == r["done"] + r["skipped"] + r["failed"] + r["pending"], r
        job = led.reconciliation(job="rel-crash")
        assert job["listed"] == job["done"] + job["skipped"] + job["failed"] + job["pending"]
        assert job["failed"] == 0, led.query("SELECT * FROM item_status WHERE status = 'failed'")
        if killed and killed.get("point"):
            run = led.query("SELECT run_id, status FROM runs ORDER BY started_at DESC LIMIT 1")[0]
            assert run["status"] == "running"  # nobody could say otherwise: it was killed
            point, n = killed["point"], killed["n"]
            # one transaction per recorded batch stage: exactly the n-1 before the kill are there
            where = "stage <> 'list'" if point == "ledger_write" else f"stage = '{point}'"
            commits = led.query(f"SELECT count(DISTINCT \"at\") AS n FROM events WHERE run_id = ? AND {where}",
                                [run["run_id"]])[0]["n"]
            assert commits == n - 1, (point, n, commits)
        # no item has two 'delivered' events: the destination never received it twice
        twice = led.query("SELECT item_id, count(*) AS n FROM events WHERE stage = 'deliver' "
                          "AND reason = 'delivered' GROUP BY ALL HAVING count(*) > 1")
        assert not twice, twice
        return job


def _plan(rng: random.Random) -> list[dict]:
    """A shuffled mix of crash points (small counts, so a shrinking rerun still reaches them)
    and timed kills after a random amount of progress."""
    plan = []
    for _ in range(14):
        point = rng.choice(POINTS)
        n = rng.randint(1, 6 if point == "ledger_write" else 2)
        plan.append({"point": point, "n": n})
    for _ in range(14):
        plan.append({"after_progress": rng.randint(1, COUNT), "delay": rng.uniform(0.0, 0.4)})
    rng.shuffle(plan)
    return plan


def test_killed_runs_rerun_to_exactly_once(tmp_path, small_gallery, driver):
    rng = random.Random(SEED)
    g = small_gallery(COUNT, per_page=6)
    originals = gallery_originals(g)
    plan = _plan(rng)
    kills: list[dict] = []
    round_no = 0
    started = time.monotonic()
    while len(kills) < KILLS_WANTED and plan:
        round_no += 1
        assert round_no <= 6, f"only {len(kills)} kills after 5 rounds"
        root = tmp_path / f"round{round_no}"
        root.mkdir()
        archive, work = root / "archive", root / "work"
        job = write_job(root / "job.yaml", escape_job(root, g.job_source(), name="rel-crash", batch_size=3,
                                                      concurrency=3))
        runs = 0
        while plan and len(kills) < KILLS_WANTED:
            step = plan.pop(0)
            runs += 1
            env = {"KODAK_PASSWORD": g.password}
            if "point" in step:
                env["PHOTO_ESCAPE_CRASH_AT"] = f"{step['point']}:{step['n']}"
            out, err = root / f"run{runs}.out", root / f"run{runs}.err"
            pid = driver.start(["run", str(job), "--json"], out, err, env)
            if "after_progress" in step:
                before = _progress(work, archive)
                seen = wait_for(lambda: _progress(work, archive) >= before + step["after_progress"]
                                or not _alive(pid), timeout=30)
                assert seen, "the run made no progress in 30 s"
                time.sleep(step["delay"])
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            res = driver.wait()
            if res["signal"] == signal.SIGKILL:
                kills.append(dict(step, round=round_no))
                _check_destination(archive, originals)
                _check_ledger(root / "ledger.duckdb", step if "point" in step else None)
                continue
            # the run got to its end before the kill: this round is complete
            assert res["rc"] == 0, err.read_text()[-3000:]
            break
        # the final rerun, never killed, finishes the rest
        out, err = root / "final.out", root / "final.err"
        driver.start(["run", str(job), "--json"], out, err, {"KODAK_PASSWORD": g.password})
        res = driver.wait()
        assert res["rc"] == 0, err.read_text()[-3000:]
        summary = json.loads(out.read_text().strip().splitlines()[-1])
        assert summary["listed"] == summary["done"] == COUNT and summary["failed"] == 0, summary
        assert summary["status"] == "finished"
        shas = _check_destination(archive, originals)
        assert sorted(shas) == sorted(originals), "not every picture arrived exactly once"
        assert not staging_files(archive), staging_files(archive)
        job_counts = _check_ledger(root / "ledger.duckdb", None)
        assert job_counts["done"] == COUNT and job_counts["pending"] == 0
        with Ledger(root / "ledger.duckdb") as led:
            statuses = [r["status"] for r in led.query("SELECT status FROM runs ORDER BY started_at")]
            present = led.query("SELECT count(*) AS n FROM events WHERE reason = 'already_present'")[0]["n"]
        assert statuses[-1] == "finished"
        assert all(s in ("abandoned", "finished") for s in statuses[:-1]), statuses
        # every killed run that got as far as recording its start is now marked abandoned
        # (a timed kill may strike while Prefect is still starting, before the run exists)
        in_round = [k for k in kills if k["round"] == round_no]
        if any(k.get("point") == "deliver" for k in in_round):
            # photos delivered by a run killed before it could record them were found in
            # place by the rerun (same content): recorded, not copied again
            assert present > 0
        assert sum(1 for k in in_round if "point" in k) <= statuses.count("abandoned") <= len(in_round)
    assert len(kills) >= 20, kills
    kinds = {k.get("point", "timed") for k in kills}
    assert {"deliver", "ledger_write", "timed"} <= kinds, kinds
    print(f"{len(kills)} kills in {round_no} rounds, {time.monotonic() - started:.0f} s: "
          + ", ".join(f"{k['point']}:{k['n']}" if "point" in k else f"timed@{k['after_progress']}" for k in kills))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
