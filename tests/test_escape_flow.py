"""The escape flow end to end on a local collection, through Prefect (session harness)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from sandbox import photos
from tests.fixtures.jobs import local_job

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _job(tmp_path: Path, name="escape-test", **over) -> dict:
    return local_job(tmp_path, name, {"batch_size": 4, "processes": 1}, **over)


@pytest.fixture
def camera(tmp_path):
    return photos.make_collection(tmp_path / "camera", count=9, bad=True)


def _events(ledger: str, sql: str):
    con = duckdb.connect(ledger, read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _delivered(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_a_run_reconciles_exactly_with_failures(tmp_path, camera):
    from flows.escape import escape

    s = escape(_job(tmp_path))
    assert s["listed"] == 12 and s["done"] == 9 and s["failed"] == 3 and s["pending"] == 0
    assert s["listed"] == s["done"] + s["skipped"] + s["failed"] + s["pending"]
    # dated layout from the EXIF capture time; nothing half-written left anywhere
    files = _delivered(tmp_path / "archive")
    assert len(files) == 9
    assert all(len(p.relative_to(tmp_path / "archive").parts) == 4 for p in files), files
    assert (tmp_path / "archive" / "2006" / "10" / "04" / "IMG_00001.JPG").exists()
    assert not any(".photo-escape-staging" in str(p) for p in files)
    # every bad file failed with a reason at the hash stage
    reasons = dict(_events(s["ledger"], "SELECT item_id, reason FROM item_status WHERE status = 'failed'"))
    assert reasons == {"local:broken/empty.jpg": "empty", "local:broken/notes.jpg": "not_an_image",
                       "local:broken/truncated.jpg": "truncated"}
    # the ledger's own reconciliation agrees with the summary
    row = _events(s["ledger"], f"SELECT listed, done, skipped, failed, pending FROM reconciliation_run WHERE run_id = '{s['run_id']}'")
    assert row == [(12, 9, 0, 3, 0)]
    # assets and capture times were recorded
    assert _events(s["ledger"], "SELECT count(*) FROM assets")[0][0] == 9
    assert _events(s["ledger"], "SELECT count(*) FROM capture_times WHERE local IS NOT NULL")[0][0] == 9
    report = Path(s["report"])
    assert report.name == "report.html" and report.exists()
    assert (report.parent / "report.md").exists() and (report.parent / "outcomes.csv").exists()


def test_a_rerun_neither_redoes_nor_duplicates(tmp_path, camera):
    from flows.escape import escape

    first = escape(_job(tmp_path))
    before = {p: p.stat().st_mtime_ns for p in _delivered(tmp_path / "archive")}
    second = escape(_job(tmp_path))
    assert second["listed"] == 12 and second["done"] == 9 and second["failed"] == 3
    assert {p: p.stat().st_mtime_ns for p in _delivered(tmp_path / "archive")} == before
    delivers = _events(first["ledger"], "SELECT run_id, count(*) FROM events WHERE stage = 'deliver' GROUP BY ALL")
    assert dict(delivers) == {first["run_id"]: 9}  # the rerun delivered nothing again
    # a changed photo is redone; --only-failed redoes only the failures
    photos.write_jpeg(Path(camera["empty"]), 40, taken=photos.datetime(2007, 1, 2, 3, 4, 5))
    third = escape(_job(tmp_path), only_failed=True)
    assert third["listed"] == 3 and third["done"] == 1 and third["failed"] == 2
    worked = _events(first["ledger"], f"SELECT DISTINCT item_id FROM events WHERE run_id = '{third['run_id']}' AND stage <> 'list'")
    assert {w[0] for w in worked} == {"local:broken/empty.jpg", "local:broken/notes.jpg", "local:broken/truncated.jpg"}
    job = _events(first["ledger"], "SELECT listed, done, failed FROM reconciliation_job")
    assert job == [(12, 10, 2)]
    assert len(_delivered(tmp_path / "archive")) == 10


def test_a_dry_run_delivers_nothing_and_a_real_run_follows(tmp_path, camera):
    from flows.escape import escape

    dry = escape(_job(tmp_path), dry_run=True)
    assert dry["skipped"] == 9 and dry["failed"] == 3 and not (tmp_path / "archive").exists()
    real = escape(_job(tmp_path))
    assert real["done"] == 9 and len(_delivered(tmp_path / "archive")) == 9


def test_the_destination_is_never_read_as_source(tmp_path):
    """Archive inside the camera folder: the second run must not pick up its own output."""
    from flows.escape import escape

    photos.make_collection(tmp_path / "camera", count=3, bad=False)
    job = _job(tmp_path, destination={"kind": "local", "path": str(tmp_path / "camera" / "archive")})
    job["source"]["pattern"] = "*"
    escape(job)
    again = escape(job)
    assert again["listed"] == 3


def test_same_name_different_content_never_overwrites(tmp_path):
    from flows.escape import escape

    t = photos.datetime(2010, 5, 6, 7, 8, 9)
    photos.write_jpeg(tmp_path / "camera" / "a" / "IMG_1.JPG", 1, taken=t)
    photos.write_jpeg(tmp_path / "camera" / "b" / "IMG_1.JPG", 2, taken=t)
    s = escape(_job(tmp_path, source={"kind": "local", "path": str(tmp_path / "camera"), "pattern": "*.jpg"}))
    assert s["done"] == 2
    names = sorted(p.name for p in _delivered(tmp_path / "archive"))
    assert names[0] == "IMG_1.JPG" and names[1].startswith("IMG_1~") and len(names) == 2


def test_run_command_prints_a_json_summary(tmp_path, camera):
    """`photo-escape run --json` in a subprocess, against the harness's Prefect API."""
    import yaml
    from prefect.settings import PREFECT_API_URL

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_job(tmp_path, name="cli-run")))
    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value())
    out = subprocess.run([sys.executable, "-m", "photo_escape.cli", "run", str(job), "--json"],
                         capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"run_id", "ledger", "report", "listed", "done", "skipped", "failed", "pending"} <= set(last)
    assert last["listed"] == last["done"] + last["skipped"] + last["failed"] + last["pending"] == 12
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsource: {kind: local}\ndestination: {kind: local, path: /tmp/x}\n")
    out = subprocess.run([sys.executable, "-m", "photo_escape.cli", "run", str(bad)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and "source.path: is required but missing" in out.stderr


def test_the_local_demo_runs_end_to_end(tmp_path):
    from sandbox.demos import local

    s = local.run(tmp_path, as_json=True)
    assert s["listed"] == 43 and s["done"] == 40 and s["failed"] == 3


def test_downloads_leave_the_work_folder_once_delivered(tmp_path):
    """Fetched files are staged in the work folder only while their batch is in flight."""
    from flows.escape import escape
    from sandbox.numbered import NumberedHost

    with NumberedHost(count=12, missing={4}, cache_dir=tmp_path / "host") as host:
        s = escape(_job(tmp_path, name="staging", source=host.job_source(1, 12, stop_after_missing=None),
                        destination={"kind": "local", "path": str(tmp_path / "found"), "layout": "{name}"}))
    assert s["done"] == 11 and s["skipped"] == 1
    assert len([p for p in (tmp_path / "found").iterdir() if p.is_file()]) == 11
    assert [p for p in (tmp_path / "work").rglob("*") if p.is_file()] == []


def test_content_already_hashed_is_not_decoded_again(tmp_path, camera):
    """A second job reading the same photos into the same ledger takes their hashes from it."""
    from flows.escape import escape

    first = escape(_job(tmp_path))
    second = escape(_job(tmp_path, name="second-copy",
                         destination={"kind": "local", "path": str(tmp_path / "copy2")}))
    assert second["done"] == 9 and second["failed"] == 3
    reasons = _events(first["ledger"], f"SELECT reason, count(*) FROM events WHERE run_id = '{second['run_id']}'"
                                       " AND stage = 'hash' GROUP BY ALL ORDER BY 1")
    assert reasons == [("cached", 9), ("empty", 1), ("not_an_image", 1), ("truncated", 1)]
    assert _events(first["ledger"], "SELECT count(*) FROM assets")[0][0] == 9
    # the delivered copies are dated by their capture time as before
    assert (tmp_path / "copy2" / "2006" / "10" / "04" / "IMG_00001.JPG").exists()


def test_task_runs_are_two_per_batch_and_say_their_size(tmp_path, camera):
    """12 photos in batches of 4: a fetch task run and an examine-and-deliver task run
    (hash, capture time, deliver) per batch, none per photo, each named with its batch's size."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.escape import escape

    state = escape(_job(tmp_path), return_state=True)
    assert state.result()["listed"] == 12

    async def names():
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
            return sorted(r.name for r in runs)

    got = asyncio.run(names())
    # 3 batches of 4: each fetched by one task run, then hashed, dated and delivered by one
    # more (the 3 broken files fail at the hash, inside it); never a task run per photo
    assert got == ["examine-and-deliver-4-items"] * 3 + ["fetch-4-items"] * 3, got
    # the ledger still has each stage on its own, in order: 12 hashed, 9 dated and delivered
    ledger = state.result()["ledger"]
    stages = dict(_events(ledger, "SELECT stage, count(*) FROM events WHERE stage <> 'list' GROUP BY ALL"))
    assert stages == {"fetch": 12, "hash": 12, "capture_time": 9, "deliver": 9}, stages


def test_a_rerun_with_nothing_to_download_starts_no_worker_process(tmp_path):
    """The hashing and tag-reading processes start as the first batch starts downloading
    (not one after the other when it is examined); a rerun that downloads nothing starts
    none of them."""
    from flows.escape import escape
    from tasks.isolation import close_workers, idle_workers

    photos.make_collection(tmp_path / "camera", count=6, bad=False)
    job = local_job(tmp_path, "examiners", {"batch_size": 20, "processes": 0})
    close_workers()  # none kept from earlier tests
    first = escape(job)
    assert first["done"] == first["listed"] > 0 and first["failed"] == 0
    kinds = {w.spec.rsplit(":", 1)[1] for w in idle_workers()}
    assert kinds == {"hash_file", "read_tags"}  # examined in worker processes, kept for the next batch
    close_workers()
    second = escape(job)
    assert second["listed"] == second["done"] == first["listed"] and second["failed"] == 0
    worked = _events(first["ledger"], f"SELECT count(*) FROM events WHERE run_id = '{second['run_id']}' AND stage <> 'list'")
    assert worked == [(0,)]  # nothing downloaded, examined or delivered again
    assert idle_workers() == []
