"""Demo, story 4: a timezone-correct upload to a photo API that cannot delete.

A camera-roll export with the mix real collections have (photos with offset tags,
photos with only a GPS time, only a GPS position, airplane-mode photos with nothing,
an old camera's folder with only the wall clock, a scan with no date, a broken file)
goes to the sandbox upload API (Fluxtream's ``photoUpload`` stand-in, 127.0.0.1):

1. a dry run: nothing is uploaded; the report lists every photo with its UTC time and
   where the zone came from, for a person to review;
2. the upload;
3. a rerun, which uploads nothing (the remote would keep duplicates forever).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

from sandbox import photos
from sandbox.upload_api import UploadAPI

USER, PASSWORD = "anne", "demo-upload-pw"
PASSWORD_ENV = "PHOTO_ESCAPE_DEMO_UPLOAD_PASSWORD"
SMALL = (320, 240)


def make_camera_roll(root: Path) -> None:
    """A trip to Kathmandu via Delhi, airplane-mode shots, an old camera and a scan."""
    k = 0

    def shot(folder: str, name: str, **exif) -> None:
        nonlocal k
        k += 1
        photos.write_jpeg(root / folder / name, 30 + k, size=SMALL, **exif)

    delhi = datetime(2016, 4, 1, 9, 15)
    for i in range(3):  # a phone that writes OffsetTimeOriginal
        shot("2016-04 trip", f"IMG_{100 + i}.JPG", taken=delhi + timedelta(minutes=20 * i), offset="+05:30")
    for i in range(2):  # airplane mode to Kathmandu: nothing but the wall clock (still on Delhi time)
        shot("2016-04 trip", f"IMG_{103 + i}.JPG", taken=delhi + timedelta(hours=3, minutes=5 * i))
    ktm = datetime(2016, 4, 1, 16, 0)
    for i in range(3):  # landed: GPS time but no offset tag
        t = ktm + timedelta(minutes=30 * i)
        shot("2016-04 trip", f"IMG_{105 + i}.JPG", taken=t, gps=(27.70, 85.32), gps_utc=t - timedelta(minutes=345))
    for i in range(2):  # a camera with a GPS position but no GPS time
        shot("2016-04 trip", f"DSC_{200 + i}.JPG", taken=ktm + timedelta(hours=2, minutes=9 * i), gps=(27.71, 85.31))
    for i in range(3):  # an old camera: wall clock only; a rule says where it was
        shot("2013-12 christmas", f"P{1000 + i}.JPG", taken=datetime(2013, 12, 25, 10 + i, 0))
    photos.write_jpeg(root / "scans" / "grandma-1962.jpg", 60, size=SMALL)  # no date at all
    photos.bad_files(root / "broken")


def job(workdir: Path, upload_url: str) -> dict:
    return {
        "name": "demo-upload",
        "ledger": str(workdir / "ledger.duckdb"),
        "work_dir": str(workdir / "work"),
        "reports_dir": str(workdir / "reports"),
        "source": {"kind": "local", "path": str(workdir / "camera-roll"), "pattern": ["*.jpg", "*.jpeg"]},
        "destination": {
            "kind": "http_upload",
            "url": upload_url,
            "username": USER,
            "secret_fields": {"password": {"env": PASSWORD_ENV}},
            "file_field": "photo",
            "metadata_field": "metadata",
        },
        "time_zones": [{"folder": "2013-12 christmas", "tz": "America/Chicago"}],
        "default_tz": "America/New_York",
        "options": {"batch_size": 50, "concurrency": 4, "processes": 1},
    }


def deliveries(ledger: str, run_id: str) -> list[tuple[str, str, dict]]:
    """A run's deliver outcomes from its ledger: (item id, reason, detail), by item id."""
    import duckdb

    con = duckdb.connect(ledger, read_only=True)
    try:
        rows = con.execute(
            """SELECT item_id, reason, detail FROM events
               WHERE run_id = ? AND stage = 'deliver' ORDER BY item_id""", [run_id]).fetchall()
    finally:
        con.close()
    return [(i, r, json.loads(d) if isinstance(d, str) else (d or {})) for i, r, d in rows]


def plan(ledger: str, run_id: str) -> list[dict]:
    """What the dry run would upload: one row per photo with its UTC time and provenance."""
    out = []
    for item_id, reason, d in deliveries(ledger, run_id):
        out.append({"item_id": item_id, "plan": d.get("plan") or reason, "utc": d.get("utc"),
                    "local": d.get("local"), "tz": d.get("tz"), "provenance": d.get("provenance"),
                    "conflicts": len(d.get("conflicts") or [])})
    return out


def run(workdir: Path, as_json: bool) -> dict:
    from flows.escape import escape

    make_camera_roll(workdir / "camera-roll")
    os.environ[PASSWORD_ENV] = PASSWORD  # the sandbox's password, for this process only
    with UploadAPI({USER: PASSWORD}) as api:
        spec = job(workdir, api.upload_url)
        dry = escape(spec, dry_run=True)
        planned = plan(dry["ledger"], dry["run_id"])
        received_after_dry_run = api.store.stats()["uploads_received"]
        summary = escape(spec)
        after_upload = api.store.stats()
        again = escape(spec)
        after_rerun = api.store.stats()
    if not as_json:
        print(f"dry run {dry['run_id']}: the plan, for review (nothing uploaded: {received_after_dry_run} requests)")
        for row in planned:
            print(f"  {row['item_id'][-40:]:40}  {row['plan']:16}  {row['utc'] or '-':26}  {row['provenance'] or '-'}")
    summary.update(
        dry_run_plan={"run_id": dry["run_id"], "report": dry.get("report"),
                      "would_upload": sum(r["plan"] == "upload" for r in planned),
                      "provenance": dict(Counter(r["provenance"] for r in planned if r["provenance"])),
                      "uploads_sent": received_after_dry_run},
        remote={"stored": after_upload["stored"], "duplicates": after_upload["duplicates"]},
        rerun={"run_id": again["run_id"], "done": again["done"], "failed": again["failed"],
               "uploads_sent": after_rerun["uploads_received"] - after_upload["uploads_received"],
               "duplicates": after_rerun["duplicates"]},
    )
    return summary
