"""The ``http_upload`` destination over real HTTP against the sandbox upload API:
auth, dry run, no duplicates across reruns and crashes, retries, secrets kept out."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime
from pathlib import Path

import pytest
import requests

from photo_escape.jobspec import Options
from photo_escape.plugins import make_destination
from sandbox.photos import write_jpeg
from tasks.capture_time import capture_times
from tasks.destinations.http_upload import HttpUploadConfig
from tests.fixtures.upload import UPLOAD_PASSWORD

SMALL = (64, 48)


def make_items(folder: Path, n: int = 3, *, with_undated: bool = True) -> list[dict]:
    """Fetched-and-dated items as the flow hands them to a destination."""
    paths = [write_jpeg(folder / f"IMG_{i}.JPG", 20 + i, size=SMALL, taken=datetime(2014, 5, 16, 15, i),
                        offset="-04:00") for i in range(n)]
    if with_undated:
        paths.append(write_jpeg(folder / "scan.jpg", 40, size=SMALL))  # no capture time at all
    caps = capture_times([str(p) for p in paths])
    return [{"item_id": f"local:{p.name}", "name": p.name, "local_path": str(p), "bytes": p.stat().st_size,
             "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
             "capture": {k: c[k] for k in ("local", "utc", "offset_minutes", "tz", "provenance", "conflicts")}}
            for p, c in zip(paths, caps)]


def destination(api, workdir: Path, **over):
    cfg = {"kind": "http_upload", "url": api.upload_url, "username": "anne",
           "secret_fields": {"password": {"env": "UPLOAD_PASSWORD"}}, **over}
    opts = Options(backoff_seconds=0.01, retries=3, concurrency=3)
    return make_destination(HttpUploadConfig.model_validate(cfg), workdir=workdir / "run", options=opts)


def stored(api) -> list[dict]:
    return requests.get(api.url + "/sandbox/photos", timeout=10).json()["photos"]


def stats(api) -> dict:
    return requests.get(api.url + "/sandbox/stats", timeout=10).json()


def by_name(outcomes: list[dict]) -> dict[str, dict]:
    return {o["item"]["name"]: o for o in outcomes}


def test_dry_run_uploads_nothing_and_shows_the_plan(tmp_path, upload_api):
    items = make_items(tmp_path / "photos")
    out = by_name(destination(upload_api, tmp_path).deliver(items, dry_run=True))
    assert stats(upload_api)["uploads_received"] == 0 and upload_api.faults.count("photoUpload") == 0
    plan = out["IMG_1.JPG"]
    assert plan["outcome"] == "skipped" and plan["reason"] == "dry_run"
    assert plan["detail"]["plan"] == "upload" and plan["detail"]["provenance"] == "exif:offset"
    assert plan["detail"]["utc"] == "2014-05-16T19:01:00+00:00"
    assert plan["detail"]["capture_time_secs_utc"] == datetime.fromisoformat("2014-05-16T19:01:00+00:00").timestamp()
    assert out["scan.jpg"]["reason"] == "dry_run" and out["scan.jpg"]["detail"]["plan"] == "no_capture_time"


def test_upload_sends_the_utc_time_and_never_twice(tmp_path, upload_api):
    items = make_items(tmp_path / "photos")
    out = by_name(destination(upload_api, tmp_path).deliver(items))
    assert [out[f"IMG_{i}.JPG"]["reason"] for i in range(3)] == ["uploaded"] * 3
    assert all(out[f"IMG_{i}.JPG"]["final"] for i in range(3))
    assert out["scan.jpg"]["outcome"] == "skipped" and out["scan.jpg"]["reason"] == "no_capture_time"
    photos_there = {p["filename"]: p for p in stored(upload_api)}
    assert set(photos_there) == {"IMG_0.JPG", "IMG_1.JPG", "IMG_2.JPG"}
    assert photos_there["IMG_2.JPG"]["capture_time_secs_utc"] == 1400266920.0  # 15:02 at -04:00
    assert photos_there["IMG_2.JPG"]["sha256"] == items[2]["sha256"]

    # a rerun (a new destination object, as a new run makes) sends nothing
    again = by_name(destination(upload_api, tmp_path).deliver(items))
    assert [again[f"IMG_{i}.JPG"]["reason"] for i in range(3)] == ["already_uploaded"] * 3
    s = stats(upload_api)
    assert s["uploads_received"] == 3 and s["duplicates"] == 0


def test_a_changed_time_is_held_for_review_not_sent(tmp_path, upload_api):
    items = make_items(tmp_path / "photos", n=1, with_undated=False)
    destination(upload_api, tmp_path).deliver(items)
    items[0]["capture"] = dict(items[0]["capture"], utc="2014-05-16T15:00:00+00:00", provenance="rule")
    dry = destination(upload_api, tmp_path).deliver(items, dry_run=True)[0]
    assert dry["detail"]["plan"] == "refuse_time_changed"
    (o,) = destination(upload_api, tmp_path).deliver(items)
    assert o["outcome"] == "needs_review" and o["reason"] == "time_changed_since_upload"
    assert o["detail"]["sent_before_secs_utc"] == [1400266800.0]
    assert stats(upload_api)["duplicates"] == 0
    assert stats(upload_api)["uploads_received"] == 1


def test_hold_conflicts_keeps_disagreeing_times_for_review(tmp_path, upload_api):
    items = make_items(tmp_path / "photos", n=2, with_undated=False)
    items[1]["capture"]["conflicts"] = [{"kind": "disagree", "source": "gps:time", "minutes": 210}]
    dry = destination(upload_api, tmp_path, hold_conflicts=True).deliver(items, dry_run=True)
    assert [o["detail"]["plan"] for o in dry] == ["upload", "hold_for_review"]
    out = destination(upload_api, tmp_path, hold_conflicts=True).deliver(items)
    assert [(o["outcome"], o["reason"]) for o in out] == [("ok", "uploaded"), ("needs_review", "capture_time_conflict")]
    assert stats(upload_api)["stored"] == 1


def test_the_same_picture_twice_in_a_batch_is_sent_once(tmp_path, upload_api):
    items = make_items(tmp_path / "photos", n=1, with_undated=False)
    twin = dict(items[0], item_id="local:copy/IMG_0.JPG")
    out = destination(upload_api, tmp_path).deliver([items[0], twin])
    assert sorted(o["reason"] for o in out) == ["already_uploaded", "uploaded"]
    assert stats(upload_api)["uploads_received"] == 1


def test_wrong_password_fails_with_auth_failed_once_and_no_secret_anywhere(tmp_path, upload_api, monkeypatch,
                                                                           caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("UPLOAD_PASSWORD", "not-the-password-123")
    items = make_items(tmp_path / "photos", n=3)
    out = destination(upload_api, tmp_path).deliver(items)
    assert "not-the-password-123" not in caplog.text
    failed = [o for o in out if o["outcome"] == "failed"]
    assert len(failed) == 3 and {o["reason"] for o in failed} == {"auth_failed"}
    assert upload_api.faults.count("photoUpload") == 1  # one refused request, not a burst
    text = json.dumps(out, default=str)
    assert "not-the-password-123" not in text and UPLOAD_PASSWORD not in text
    assert stats(upload_api)["stored"] == 0


def test_missing_secret_is_a_clear_failure(tmp_path, upload_api, monkeypatch):
    monkeypatch.delenv("UPLOAD_PASSWORD")
    out = destination(upload_api, tmp_path).deliver(make_items(tmp_path / "photos", n=1))
    assert {o["reason"] for o in out} == {"secret_missing"}
    assert "UPLOAD_PASSWORD" in out[0]["detail"]["message"]


def test_5xx_and_429_are_retried(tmp_path, upload_api):
    upload_api.faults.add("error", match="photoUpload", status=503, times=2)
    upload_api.faults.add("rate_limit", match="photoUpload", retry_after=1, times=1)
    items = make_items(tmp_path / "photos", n=1, with_undated=False)
    t0 = time.monotonic()
    (o,) = destination(upload_api, tmp_path).deliver(items)
    assert o["outcome"] == "ok" and o["reason"] == "uploaded" and o["attempt"] == 4
    assert time.monotonic() - t0 >= 1.0  # Retry-After was honoured
    assert stats(upload_api)["stored"] == 1


def test_resets_are_retried(tmp_path, upload_api):
    upload_api.faults.add("reset", match="photoUpload", times=1)
    (o,) = destination(upload_api, tmp_path).deliver(make_items(tmp_path / "photos", n=1, with_undated=False))
    assert o["reason"] == "uploaded" and o["attempt"] == 2


def test_a_slow_answer_times_out_and_the_retry_makes_no_duplicate(tmp_path, upload_api):
    """The server is slow: the client gives up, but the server stores the photo anyway;
    the retry carries the identical time, so the server ignores it."""
    upload_api.faults.add("slow", match="photoUpload", delay=1.5, times=1)
    (o,) = destination(upload_api, tmp_path, timeout_seconds=0.5).deliver(
        make_items(tmp_path / "photos", n=1, with_undated=False))
    assert o["reason"] == "uploaded" and o["attempt"] == 2
    assert upload_api.faults.wait_idle(10)  # the slow request has finished on the server
    s = stats(upload_api)
    assert s["stored"] == 1 and s["duplicates"] == 0 and s["ignored_repeats"] == 1


def test_5xx_that_does_not_stop_fails_with_its_reason(tmp_path, upload_api):
    upload_api.faults.add("error", match="photoUpload", status=502, times=None)
    (o,) = destination(upload_api, tmp_path).deliver(make_items(tmp_path / "photos", n=1, with_undated=False))
    assert o["outcome"] == "failed" and o["reason"] == "server_error" and o["attempt"] == 4
    assert upload_api.faults.count("photoUpload") == 4


def test_a_long_retry_after_is_not_waited_for(tmp_path, upload_api):
    upload_api.faults.add("rate_limit", match="photoUpload", retry_after=3600, times=None)
    (o,) = destination(upload_api, tmp_path, max_retry_after=5).deliver(
        make_items(tmp_path / "photos", n=1, with_undated=False))
    assert o["outcome"] == "failed" and o["reason"] == "rate_limited"
    assert upload_api.faults.count("photoUpload") == 1


def test_a_4xx_is_not_retried(tmp_path, upload_api):
    (o,) = destination(upload_api, tmp_path, metadata_field="meta").deliver(
        make_items(tmp_path / "photos", n=1, with_undated=False))
    assert o["outcome"] == "failed" and o["reason"] == "rejected" and "capture_time_secs_utc" in o["detail"]["message"]
    assert upload_api.faults.count("photoUpload") == 1


@pytest.mark.parametrize("mode", ["error", "reset"])
def test_accepted_then_crashed_is_resent_with_the_same_time_and_no_duplicate(tmp_path, upload_api, mode):
    """The remote stores the photo and then fails to answer: our retry carries the identical
    time, so the remote ignores it; a run that gave up is finished by the rerun the same way."""
    items = make_items(tmp_path / "photos", n=2, with_undated=False)
    upload_api.accept_then_fail(1, mode)
    out = destination(upload_api, tmp_path).deliver(items[:1])
    assert out[0]["reason"] == "uploaded" and out[0]["attempt"] == 2
    s = stats(upload_api)
    assert s["uploads_received"] == 2 and s["ignored_repeats"] == 1 and s["duplicates"] == 0

    # now with no retries left: the run records a failure although the remote has the photo
    upload_api.accept_then_fail(1, mode)
    dest = destination(upload_api, tmp_path)
    dest.retries = 0
    (o,) = dest.deliver(items[1:])
    assert o["outcome"] == "failed"
    (o,) = destination(upload_api, tmp_path).deliver(items[1:])  # the rerun
    assert o["reason"] == "uploaded"
    s = stats(upload_api)
    assert s["stored"] == 2 and s["duplicates"] == 0


def test_config_refuses_credentials_in_the_url():
    with pytest.raises(ValueError):
        HttpUploadConfig.model_validate({"kind": "http_upload", "url": "https://anne:pw@example.org/up"})


# -- through the escape flow ----------------------------------------------------------------

def test_flow_dry_run_then_upload_then_rerun_uploads_nothing(tmp_path, upload_api, prefect_harness):
    import duckdb

    from flows.escape import escape

    roll = tmp_path / "roll"
    for i in range(4):
        write_jpeg(roll / "trip" / f"IMG_{i}.JPG", 50 + i, size=SMALL, taken=datetime(2016, 4, 1, 16, 10 * i),
                   gps=(27.70, 85.32) if i % 2 else None, offset=None if i % 2 else "+05:45")
    write_jpeg(roll / "scans" / "old.jpg", 60, size=SMALL)  # no capture time
    job = {
        "name": "upload-flow-test",
        "ledger": str(tmp_path / "ledger.duckdb"),
        "work_dir": str(tmp_path / "work"),
        "reports_dir": str(tmp_path / "reports"),
        "source": {"kind": "local", "path": str(roll), "pattern": "*.jpg"},
        "destination": {"kind": "http_upload", "url": upload_api.upload_url, "username": "anne",
                        "secret_fields": {"password": {"env": "UPLOAD_PASSWORD"}}},
        "options": {"batch_size": 3, "processes": 1, "backoff_seconds": 0.01},
    }
    dry = escape(job, dry_run=True)
    assert stats(upload_api)["uploads_received"] == 0
    assert dry["listed"] == 5 and dry["skipped"] == 5 and dry["failed"] == 0

    real = escape(job)
    assert real["done"] == 4 and real["skipped"] == 1 and real["failed"] == 0
    assert real["listed"] == real["done"] + real["skipped"] + real["failed"] + real["pending"]
    there = stored(upload_api)
    assert len(there) == 4
    # 16:00 in Kathmandu (+05:45) is 10:15 UTC, whether from the offset tag or the position
    assert sorted(p["capture_time_secs_utc"] for p in there)[0] == datetime.fromisoformat(
        "2016-04-01T10:15:00+00:00").timestamp()

    again = escape(job)
    assert again["failed"] == 0 and again["listed"] == 5
    s = stats(upload_api)
    assert s["uploads_received"] == 4 and s["duplicates"] == 0

    con = duckdb.connect(job["ledger"], read_only=True)
    try:
        prov = dict(con.execute("SELECT provenance, count(DISTINCT item_id) FROM capture_times "
                                "WHERE run_id = ? GROUP BY 1", [real["run_id"]]).fetchall())
        reasons = dict(con.execute("SELECT reason, count(*) FROM events WHERE run_id = ? AND stage = 'deliver' "
                                   "GROUP BY 1", [real["run_id"]]).fetchall())
    finally:
        con.close()
    assert prov == {"exif:offset": 2, "gps:position": 2, "none": 1}
    assert reasons == {"uploaded": 4, "no_capture_time": 1}
