"""Every story's runs are recorded alike (flows/run_record.py), and the story table is one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import yaml

from sandbox import photos
from tests.fixtures.jobs import local_job

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _runs(ledger: str | Path) -> list[dict]:
    con = duckdb.connect(str(ledger), read_only=True)
    try:
        cur = con.execute("SELECT run_id, flow, flow_run_id, status, finished_at, summary FROM runs ORDER BY started_at")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]
    finally:
        con.close()


def _recorded_alike(run: dict, flow: str) -> None:
    """A finished run as every story records it: its flow, its Prefect flow run, its summary
    with the reconciliation, and the report that was written."""
    assert run["flow"] == flow and run["status"] == "finished" and run["finished_at"] is not None
    assert run["flow_run_id"], f"{flow}: no Prefect flow run id recorded"
    summary = json.loads(run["summary"])
    assert summary["listed"] == summary["done"] + summary["skipped"] + summary["failed"] + summary["pending"]
    assert summary["report"] and Path(summary["report"]).is_file(), f"{flow}: no report path in the run"


def _find_job(tmp_path: Path, harvest: dict) -> Path:
    path = tmp_path / "find.yaml"
    path.write_text(yaml.safe_dump({
        "flow": "find_my_photo", "name": "find-run", "ledger": "find.duckdb", "folder": str(harvest["folder"]),
        "references": [str(r) for r in harvest["references"]], "top": 2, "processes": 1,
        "cache": "thumbs.npz", "reports_dir": "reports"}))
    return path


def test_a_killed_find_my_photo_run_is_marked_ended_by_the_next(tmp_path, harvest):
    from prefect.settings import PREFECT_API_URL

    from flows.find_my_photo import find_my_photo

    job = _find_job(tmp_path, harvest)
    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), PYTHONPATH=str(ROOT),
               PHOTO_ESCAPE_CRASH_AT="match:1")  # SIGKILL with the rankings done, not yet recorded
    killed = subprocess.run([sys.executable, "-m", "photo_escape.cli", "run", str(job), "--json"], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    ledger = tmp_path / "find.duckdb"  # relative paths of a find job are the job file's folder's
    (first,) = _runs(ledger)
    assert first["status"] == "running" and first["flow_run_id"]  # what the kill left behind

    summary = find_my_photo(str(job))
    first, second = _runs(ledger)
    assert first["status"] == "abandoned" and first["finished_at"] is not None
    _recorded_alike(second, "find_my_photo")
    assert json.loads(second["summary"])["report"] == summary["report"]
    assert summary["done"] == 2 and set(summary["rankings"]) == {str(r) for r in harvest["references"]}


def test_the_escape_and_hires_stories_record_their_runs_alike(tmp_path, flickr_account, flickr_test_secrets):
    from flows.run_job import JobInput, run_job

    photos.make_collection(tmp_path / "camera", count=3)
    escape_job = local_job(tmp_path, "alike", {"processes": 1})
    run_job(JobInput(spec=escape_job), fail_on_failed_items=False)
    _recorded_alike(_runs(escape_job["ledger"])[-1], "escape")

    hires_job = flickr_account().job(tmp_path / "hires")
    summary = run_job(JobInput(spec=hires_job))
    _recorded_alike(_runs(summary["ledger"])[-1], "replace_hires")


def test_failed_photos_end_every_story_with_one_exception(tmp_path):
    from flows.escape import escape
    from flows.run_record import PhotosFailed

    photos.make_collection(tmp_path / "camera", count=2, bad=True)
    state = escape(local_job(tmp_path, "fails", {"processes": 1}), fail_on_failed_items=True, return_state=True)
    assert state.is_failed()
    with pytest.raises(PhotosFailed, match="photos failed"):
        state.result()


def test_the_command_line_and_the_prefect_entry_point_read_one_story_table(tmp_path):
    """A job naming an unknown story is refused the same way by both, before any run starts."""
    from photo_escape.stories import STORIES

    assert set(STORIES) == {"escape", "replace_hires", "find_my_photo"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("flow: no_such_story\nname: x\n")
    cli = subprocess.run([sys.executable, "-m", "photo_escape.cli", "run", str(bad)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert cli.returncode == 2 and "flow 'no_such_story' is not known" in cli.stderr
    from flows.run_job import JobInput, run_job

    state = run_job(JobInput(job_file=str(bad)), return_state=True)
    assert state.is_failed() and "flow 'no_such_story' is not known" in state.message
