"""Crash consistency: SIGKILL real runs at random moments, rerun, and check nothing was lost or doubled.

Each run is ``photo-escape run JOB --json`` (the real CLI and flow against the
session's Prefect API), forked from a driver that has loaded the code once
(``crash_driver.py``), downloading from the sandbox gallery into a local folder.
Runs are killed in two ways, mixed by a seeded random plan:

* at a named crash point in the code (``PHOTO_ESCAPE_CRASH_AT``): after a batch is
  fetched / hashed / dated / delivered but before its outcomes reach the ledger, and
  inside a ledger transaction (rows inserted, not committed);
* from outside, at a random moment after the run was seen making progress
  (originals asked of the gallery's CDN, photos arriving at the destination).

After every kill: every visible file in the destination is a complete original
(nothing half-written under a photo's name), no picture is there twice, and the
ledger opens (DuckDB replays its WAL), holds none of the killed transaction (nor the
writes gathered with it), records each photo's stages only as a prefix of the work
(no stage without the ones before it), and reconciles. After the final rerun: every
picture is there exactly once, the ledger says all done, killed runs are marked
``abandoned``.
"""

from __future__ import annotations

import hashlib
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
from tests.fixtures.reliability import (ROOT, escape_job, gallery_originals, photo_files, sha256_file,
                                        staging_files, wait_for, write_job)

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.timeout(420)]

SEED = 20261123
COUNT = 15  # pictures per round: 3 pages of 6 (last has 3), 5 batches of 3
KILLS_WANTED = 20
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

    def start(self, args: list[str], out: Path, err: Path, env: dict | None = None, *,
              leave_helpers: bool = False) -> int:
        self.proc.stdin.write(json.dumps({"args": args, "out": str(out), "err": str(err), "env": env or {},
                                          "leave_helpers": leave_helpers}) + "\n")
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


@pytest.fixture(scope="module")
def driver(prefect_harness):
    """One fork server for the module, on the session's Prefect API."""
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), PYTHONPATH=str(ROOT))
    env.pop("PHOTO_ESCAPE_CRASH_AT", None)
    d = Driver(env)
    yield d
    d.close()




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
        # what a killed run left is a prefix of what it did: a photo's stage is recorded
        # only with every stage before it (the writer commits in the order of the work)
        gaps = led.query(
            "SELECT e.run_id, e.item_id, e.stage FROM events e JOIN (VALUES ('fetch', 'list'), ('hash', 'fetch'), "
            "('capture_time', 'hash'), ('deliver', 'capture_time')) AS p(stage, before) USING (stage) "
            "WHERE NOT EXISTS (SELECT 1 FROM events b WHERE b.run_id = e.run_id AND b.item_id = e.item_id "
            "AND b.stage = p.before)")
        assert not gaps, gaps
        if killed and killed.get("point"):
            run = led.query("SELECT run_id, status FROM runs ORDER BY started_at DESC LIMIT 1")[0]
            assert run["status"] == "running"  # nobody could say otherwise: it was killed
            point, n = killed["point"], killed["n"]
            if point != "ledger_write":
                # the n-th write of this stage never reached the ledger (nor did the writes
                # gathered with it to commit together); the ones committed before are there
                commits = led.query(f"SELECT count(DISTINCT \"at\") AS n FROM events WHERE run_id = ? "
                                    f"AND stage = '{point}'", [run["run_id"]])[0]["n"]
                assert commits <= n - 1, (point, n, commits)
        # no item has two 'delivered' events: the destination never received it twice
        twice = led.query("SELECT item_id, count(*) AS n FROM events WHERE stage = 'deliver' "
                          "AND reason IN ('delivered', 'uploaded') GROUP BY ALL HAVING count(*) > 1")
        assert not twice, twice
        return job


def _plan(rng: random.Random) -> list[dict]:
    """A shuffled mix of crash points (small counts, so a shrinking rerun still reaches them)
    and timed kills after a random amount of progress."""
    plan = []
    for _ in range(14):
        point = rng.choice(POINTS)
        # small, so a shrinking rerun still gets there; a short run commits only a few times
        n = 1 if point == "ledger_write" else rng.randint(1, 2)
        plan.append({"point": point, "n": n})
    for _ in range(14):
        plan.append({"after_progress": rng.randint(1, COUNT), "delay": rng.uniform(0.0, 0.4)})
    rng.shuffle(plan)
    return plan


class FolderTarget:
    """A local folder as the destination under test."""

    name = "folder"

    def __init__(self, originals: dict[str, str]) -> None:
        self.originals = originals

    def destination(self, root: Path) -> dict:
        return {"kind": "local", "path": str(root / "archive")}

    def progress(self, root: Path) -> int:
        return len(photo_files(root / "archive"))

    def check(self, root: Path) -> list[str]:
        return _check_destination(root / "archive", self.originals)

    def check_final(self, root: Path) -> None:
        assert sorted(self.check(root)) == sorted(self.originals), "not every picture arrived exactly once"
        assert not staging_files(root / "archive"), staging_files(root / "archive")


class BucketTarget:
    """An S3 bucket (moto's server) as the destination under test: one bucket per round."""

    name = "s3"

    def __init__(self, originals: dict[str, str], s3_server, creds_var: str) -> None:
        self.originals = originals
        self.server = s3_server
        self.client = s3_server.client()
        self.creds_var = creds_var
        self.buckets: dict[Path, str] = {}

    def destination(self, root: Path) -> dict:
        bucket = self.server.make_bucket(f"rel-crash-{len(self.buckets)}-{random.randrange(1 << 30):x}")
        self.buckets[root] = bucket
        return {"kind": "s3", "bucket": bucket, "endpoint_url": self.server.url,
                "credentials": {"env": self.creds_var}, "verify": "full", "max_attempts": 2}

    def _objects(self, root: Path) -> list[dict]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.buckets[root])
        return [o for page in pages for o in page.get("Contents", [])]

    def progress(self, root: Path) -> int:
        return len(self._objects(root))

    def check(self, root: Path) -> list[str]:
        """Every object is complete and verified (its bytes hash to its sha256 metadata and to an
        original), each original once under its own name, each thumbnail beside its original."""
        bucket, shas, originals_keys, thumbs = self.buckets[root], [], set(), []
        for obj in self._objects(root):
            key = obj["Key"]
            got = self.client.get_object(Bucket=bucket, Key=key)
            data = got["Body"].read()
            if key.startswith("originals/"):
                sha = hashlib.sha256(data).hexdigest()
                assert sha in self.originals, f"{key} is not a complete original"
                assert got["Metadata"].get("sha256") == sha, (key, got["Metadata"])
                assert key.rsplit("/", 1)[-1] == safe_name(self.originals[sha]), f"{key}: not under its own name"
                shas.append(sha)
                originals_keys.add(key)
            else:
                assert key.startswith("thumbnails/") and data[:3] == b"\xff\xd8\xff", key
                thumbs.append(key)
        assert len(shas) == len(set(shas)), "a picture reached the bucket twice"
        for t in thumbs:  # an original goes up (verified) before its thumbnail
            assert "originals/" + t[len("thumbnails/"):-len(".jpg")] in originals_keys, t
        return shas

    def check_final(self, root: Path) -> None:
        assert sorted(self.check(root)) == sorted(self.originals), "not every picture arrived exactly once"
        keys = [o["Key"] for o in self._objects(root)]
        thumbs = sorted(k for k in keys if k.startswith("thumbnails/"))
        assert thumbs == sorted("thumbnails/" + k[len("originals/"):] + ".jpg" for k in keys
                                if k.startswith("originals/"))
        uploads = self.client.list_multipart_uploads(Bucket=self.buckets[root]).get("Uploads", [])
        assert not uploads, uploads  # no half-done multipart upload left behind


class UploadTarget:
    """The sandbox photo-upload API (a remote that cannot delete): one emptied store per round."""

    name = "upload"
    spec_extra = {"default_tz": "Europe/Paris"}  # every photo gets a UTC time, so all are uploaded

    def __init__(self, originals: dict[str, str], api) -> None:
        self.originals = originals
        self.api = api

    def destination(self, root: Path) -> dict:
        self.api.store.reset()
        return {"kind": "http_upload", "url": self.api.upload_url, "username": "anne",
                "secret_fields": {"password": {"env": "REL_CRASH_UPLOAD_PW"}}}

    def progress(self, root: Path) -> int:
        return self.api.store.stats()["uploads_received"]

    def check(self, root: Path) -> list[str]:
        """The remote holds each picture at most once (repeats with the same time are ignored by it)."""
        stats = self.api.store.stats()
        assert stats["duplicates"] == 0, stats
        with self.api.store.lock:
            shas = [p["sha256"] for p in self.api.store.photos]
        assert set(shas) <= set(self.originals)
        return shas

    def check_final(self, root: Path) -> None:
        assert sorted(self.check(root)) == sorted(self.originals), "not every picture arrived exactly once"


class ImmichTarget:
    """The Immich stand-in: one emptied server per round; every photo goes into one album."""

    name = "immich"

    def __init__(self, originals: dict[str, str], immich) -> None:
        self.originals = originals
        self.immich = immich

    def destination(self, root: Path) -> dict:
        self.immich.store.reset()
        return {"kind": "immich", "url": self.immich.url, "api_key": {"env": "REL_CRASH_IMMICH_KEY"},
                "albums": "Gallery"}

    def progress(self, root: Path) -> int:
        return self.immich.store.stats()["uploads_received"]

    def check(self, root: Path) -> list[str]:
        """Each picture at most once, and no picture ever sent to Immich twice: a photo a killed
        run delivered is found by the rerun's bulk check, not uploaded again (Immich would
        have answered ``duplicate``)."""
        stats = self.immich.store.stats()
        assert stats["same_content_twice"] == 0 and stats["duplicates_answered"] == 0, stats
        shas = [a["sha256"] for a in self.immich.assets()]
        assert set(shas) <= set(self.originals)
        return shas

    def check_final(self, root: Path) -> None:
        assert sorted(self.check(root)) == sorted(self.originals), "not every picture arrived exactly once"
        albums = self.immich.albums()
        assert list(albums) == ["Gallery"] and len(albums["Gallery"]) == len(set(albums["Gallery"])) == COUNT


def _kill_rounds(tmp_path: Path, g, driver: "Driver", target, plan: list[dict], kills_wanted: int,
                 extra_env: dict | None = None) -> list[dict]:
    """Run the job again and again, each run killed as ``plan`` says, checking after every kill;
    when a run gets to its end (or enough kills were made) a final rerun must finish the rest.
    Returns the kills made."""
    kills: list[dict] = []
    round_no = 0
    base_env = {"KODAK_PASSWORD": g.password, **(extra_env or {})}
    while len(kills) < kills_wanted and plan:
        round_no += 1
        assert round_no <= 6, f"only {len(kills)} kills after 5 rounds"
        root = tmp_path / f"{target.name}-round{round_no}"
        root.mkdir()
        spec = escape_job(root, g.job_source(), name="rel-crash", batch_size=3, concurrency=3)
        spec["destination"] = target.destination(root)
        spec.update(getattr(target, "spec_extra", {}))
        job = write_job(root / "job.yaml", spec)
        runs = 0
        while plan and len(kills) < kills_wanted:
            step = plan.pop(0)
            runs += 1
            env = dict(base_env)
            if "point" in step:
                env["PHOTO_ESCAPE_CRASH_AT"] = f"{step['point']}:{step['n']}"
            out, err = root / f"run{runs}.out", root / f"run{runs}.err"
            pid = driver.start(["run", str(job), "--json"], out, err, env)
            if "after_progress" in step:
                # progress as the services see it: originals asked of the CDN, photos delivered
                def progress() -> int:
                    return g.cdn_faults.count("~a~") + target.progress(root)

                before = progress()
                seen = wait_for(lambda: progress() >= before + step["after_progress"] or not _alive(pid),
                                timeout=90)
                assert seen, "the run made no progress in 90 s"
                time.sleep(step["delay"])
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            res = driver.wait()
            if res["signal"] == signal.SIGKILL:
                kills.append(dict(step, round=round_no))
                target.check(root)
                _check_ledger(root / "ledger.duckdb", step if "point" in step else None)
                continue
            # the run got to its end before the kill: this round is complete
            assert res["rc"] == 0, err.read_text()[-3000:]
            break
        # the final rerun, never killed, finishes the rest
        out, err = root / "final.out", root / "final.err"
        driver.start(["run", str(job), "--json"], out, err, base_env)
        res = driver.wait()
        assert res["rc"] == 0, err.read_text()[-3000:]
        summary = json.loads(out.read_text().strip().splitlines()[-1])
        assert summary["listed"] == summary["done"] == COUNT and summary["failed"] == 0, summary
        assert summary["status"] == "finished"
        target.check_final(root)
        # the killed runs' downloads are gone: only the final run's work folder is left
        # (beside the upload journal, which outlives runs on purpose)
        left = sorted(p.name for p in (root / "work").iterdir() if p.name != "upload-journal")
        assert left == [summary["run_id"]], left
        job_counts = _check_ledger(root / "ledger.duckdb", None)
        assert job_counts["done"] == COUNT and job_counts["pending"] == 0
        with Ledger(root / "ledger.duckdb") as led:
            statuses = [r["status"] for r in led.query("SELECT status FROM runs ORDER BY started_at")]
            present = led.query("SELECT count(*) AS n FROM events "
                                "WHERE reason IN ('already_present', 'already_uploaded')")[0]["n"]
        assert statuses[-1] == "finished"
        assert all(s in ("abandoned", "finished") for s in statuses[:-1]), statuses
        in_round = [k for k in kills if k["round"] == round_no]
        if any(k.get("point") == "deliver" for k in in_round):
            # photos delivered by a run killed before it could record them were found in
            # place by the rerun (same content): recorded, not copied again
            assert present > 0
        # every killed run that got as far as recording its start is now marked abandoned
        # (a timed kill may strike while Prefect is still starting, before the run exists)
        assert sum(1 for k in in_round if "point" in k) <= statuses.count("abandoned") <= len(in_round)
    return kills


def _describe(kills: list[dict]) -> str:
    return ", ".join(f"{k['point']}:{k['n']}" if "point" in k else f"timed@{k['after_progress']}" for k in kills)


def test_killed_runs_rerun_to_exactly_once(tmp_path, small_gallery, driver):
    """A local folder: 20+ kills, each followed by the checks, then final reruns."""
    started = time.monotonic()
    g = small_gallery(COUNT, per_page=6)
    target = FolderTarget(gallery_originals(g))
    kills = _kill_rounds(tmp_path, g, driver, target, _plan(random.Random(SEED)), KILLS_WANTED)
    assert len(kills) >= 20, kills
    kinds = {k.get("point", "timed") for k in kills}
    assert {"deliver", "ledger_write", "timed"} <= kinds, kinds
    print(f"{len(kills)} kills, {time.monotonic() - started:.0f} s: {_describe(kills)}")


def test_killed_runs_to_s3_rerun_to_exactly_once(tmp_path, small_gallery, driver, s3_server):
    """An S3 bucket (moto server): fewer kills, the same promises, objects verified."""
    from sandbox.s3 import SANDBOX_KEYS

    started = time.monotonic()
    g = small_gallery(COUNT, per_page=6)
    target = BucketTarget(gallery_originals(g), s3_server, "REL_CRASH_S3_KEYS")
    rng = random.Random(SEED + 1)
    plan = [{"point": "deliver", "n": 1}, {"point": "ledger_write", "n": rng.randint(2, 3)}]
    plan += [{"after_progress": rng.randint(2, COUNT), "delay": rng.uniform(0.0, 0.3)} for _ in range(4)]
    plan.insert(3, {"point": "deliver", "n": 2})
    kills = _kill_rounds(tmp_path, g, driver, target, plan, 5,
                         extra_env={"REL_CRASH_S3_KEYS": json.dumps(SANDBOX_KEYS)})
    assert len(kills) >= 4, kills
    print(f"{len(kills)} kills (s3), {time.monotonic() - started:.0f} s: {_describe(kills)}")


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


def test_killed_runs_to_an_upload_api_rerun_to_exactly_once(tmp_path, small_gallery, driver):
    """A remote that cannot delete: after kills at every moment, each picture is stored once."""
    from sandbox.upload_api import UploadAPI

    started = time.monotonic()
    g = small_gallery(COUNT, per_page=6)
    rng = random.Random(SEED + 2)
    plan = [{"point": "deliver", "n": 1}, {"after_progress": rng.randint(3, COUNT), "delay": rng.uniform(0, 0.3)},
            {"point": "ledger_write", "n": rng.randint(2, 3)}, {"point": "deliver", "n": 2},
            {"after_progress": rng.randint(3, COUNT), "delay": rng.uniform(0, 0.3)},
            {"after_progress": rng.randint(3, COUNT), "delay": rng.uniform(0, 0.3)}]
    with UploadAPI({"anne": "rel-crash-upload-pw"}) as api:
        kills = _kill_rounds(tmp_path, g, driver, UploadTarget(gallery_originals(g), api), plan, 5,
                             extra_env={"REL_CRASH_UPLOAD_PW": "rel-crash-upload-pw"})
    assert len(kills) >= 4, kills
    print(f"{len(kills)} kills (upload), {time.monotonic() - started:.0f} s: {_describe(kills)}")


def test_killed_runs_to_immich_rerun_to_exactly_once(tmp_path, small_gallery, driver):
    """Immich (the stand-in): killed between Immich accepting photos and the ledger recording
    them, and at other moments; the reruns' bulk checks find what was accepted, nothing is
    uploaded twice, every photo ends up once in its album."""
    from sandbox.immich import ImmichServer

    started = time.monotonic()
    g = small_gallery(COUNT, per_page=6)
    rng = random.Random(SEED + 3)
    plan = [{"point": "deliver", "n": 1}, {"after_progress": rng.randint(3, COUNT), "delay": rng.uniform(0, 0.3)},
            {"point": "ledger_write", "n": rng.randint(2, 3)}, {"point": "deliver", "n": 2},
            {"after_progress": rng.randint(3, COUNT), "delay": rng.uniform(0, 0.3)}]
    with ImmichServer() as immich:
        kills = _kill_rounds(tmp_path, g, driver, ImmichTarget(gallery_originals(g), immich), plan, 4,
                             extra_env={"REL_CRASH_IMMICH_KEY": immich.key})
    assert len(kills) >= 3 and any(k.get("point") == "deliver" for k in kills), kills
    print(f"{len(kills)} kills (immich), {time.monotonic() - started:.0f} s: {_describe(kills)}")


def _group(pgid: int) -> list[int]:
    """Live processes in a process group (zombies left out)."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(d))
    return found


def test_a_killed_run_leaves_no_process_behind(tmp_path, driver):
    """SIGKILL only the run's own process (as the OOM killer would) once its hash workers and
    metadata reader are up: they notice and end by themselves, none lingers."""
    from sandbox import photos

    photos.make_collection(tmp_path / "camera", count=6, bad=False, size=(96, 72))
    job = write_job(tmp_path / "job.yaml", escape_job(tmp_path, {"kind": "local", "path": str(tmp_path / "camera")},
                                                      name="rel-orphans", batch_size=4, processes=2))
    pid = driver.start(["run", str(job), "--json"], tmp_path / "out", tmp_path / "err",
                       {"PHOTO_ESCAPE_CRASH_AT": "capture_time:1"}, leave_helpers=True)
    res = driver.wait()
    assert res["signal"] == signal.SIGKILL, (tmp_path / "err").read_text()[-2000:]
    try:
        left = wait_for(lambda: not _group(pid), timeout=20, interval=0.2)
        assert left, [open(f"/proc/{p}/cmdline").read().replace("\0", " ")[:150] for p in _group(pid)]
    finally:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_temporary_prefect_servers_of_killed_runs_are_stopped(tmp_path):
    """A killed run's temporary Prefect server (re-parented to PID 1) is stopped by the next
    run; a server whose run is alive, or of another PREFECT_HOME, is left alone."""
    from photo_escape.orphans import orphaned_prefect_servers, stop_orphaned_prefect_servers

    home = str(tmp_path / "prefect-home")
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]

    def orphan(prefect_home: str) -> int:
        """A sleeping process marked as a temporary server, whose parent has exited."""
        code = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:], start_new_session=True, "
                "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, "
                f"env=dict(os.environ, PREFECT__SERVER_EPHEMERAL='1', PREFECT_HOME={prefect_home!r})); print(p.pid)")
        out = subprocess.run([sys.executable, "-c", code, *sleeper], capture_output=True, text=True, check=True)
        return int(out.stdout)

    mine, others = orphan(home), orphan(home + "-other")
    alive_run = subprocess.Popen(sleeper, env=dict(os.environ, PREFECT__SERVER_EPHEMERAL="1", PREFECT_HOME=home))
    try:
        assert wait_for(lambda: mine in orphaned_prefect_servers(home), timeout=10)
        assert stop_orphaned_prefect_servers(home) == [mine]
        assert wait_for(lambda: not _alive(mine), timeout=10)
        assert _alive(others) and alive_run.poll() is None
    finally:
        for pid in (mine, others):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        alive_run.kill()
        alive_run.wait()
