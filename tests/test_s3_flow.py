"""Story 3 through the escape flow (Prefect session harness, moto's S3 server):
a folder with RAW files to the archive layout, S3 to S3 in the same bucket without
ever taking our own output, S3 to S3 across buckets, and S3 to a folder."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from sandbox import photos
from sandbox.s3 import write_raw

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _job(tmp_path: Path, name: str, source: dict, destination: dict) -> dict:
    return {
        "name": name,
        "ledger": str(tmp_path / f"{name}.duckdb"),
        "work_dir": str(tmp_path / "work"),
        "reports_dir": str(tmp_path / "reports"),
        "source": source,
        "destination": destination,
        "options": {"batch_size": 4, "processes": 1, "concurrency": 4},
    }


def _s3(s3_server, bucket: str, creds: str, **kw) -> dict:
    return {"kind": "s3", "bucket": bucket, "endpoint_url": s3_server.url, "credentials": {"env": creds}, **kw}


def _objects(client, bucket: str) -> dict[str, dict]:
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        out.update({o["Key"]: o for o in page.get("Contents", [])})
    return out


def _stages(ledger: str, run_id: str) -> list[tuple]:
    con = duckdb.connect(ledger, read_only=True)
    try:
        return con.execute("select stage, outcome, count(*) from events where run_id = ? group by 1, 2 order by 1, 2",
                           [run_id]).fetchall()
    finally:
        con.close()


def test_folder_with_raw_files_to_the_archive_layout_and_rerun(tmp_path, s3_server, s3_bucket, s3_credentials,
                                                               s3_client):
    from flows.escape import escape

    camera = tmp_path / "camera"
    photos.make_collection(camera, count=5, bad=True)
    write_raw(camera / "2006-10-04" / "IMG_00100.NEF", 30, taken=datetime(2006, 10, 4, 18, 0))
    job = _job(tmp_path, "s3-archive", {"kind": "local", "path": str(camera)},
               _s3(s3_server, s3_bucket, s3_credentials, storage_class="GLACIER_IR", verify="sample"))
    s = escape(job)
    assert (s["listed"], s["done"], s["failed"], s["pending"]) == (9, 6, 3, 0)
    objects = _objects(s3_client, s3_bucket)
    originals = {k for k in objects if k.startswith("originals/")}
    assert len(originals) == 6 and len(objects) == 12
    assert "originals/2006/10/04/IMG_00100.NEF" in originals
    assert objects["originals/2006/10/04/IMG_00100.NEF"]["StorageClass"] == "GLACIER_IR"
    assert objects["thumbnails/2006/10/04/IMG_00100.NEF.jpg"]["StorageClass"] == "STANDARD"
    stages = _stages(job["ledger"], s["run_id"])
    assert ("fixity", "ok", 6) in stages and ("deliver", "ok", 6) in stages
    again = escape(job)
    assert again["listed"] == 9 and again["failed"] == 3 and again["pending"] == 0
    assert _objects(s3_client, s3_bucket) == objects  # nothing added, nothing rewritten


def test_same_bucket_migration_never_takes_its_own_output(tmp_path, s3_server, s3_bucket, s3_credentials,
                                                          s3_client):
    """Photos dropped in the bucket's inbox are filed under originals/ and thumbnails/
    of the same bucket; listing the whole bucket must never pick those up again."""
    from flows.escape import escape

    for i in range(3):
        p = photos.write_jpeg(tmp_path / "in" / f"IMG_{i:04d}.JPG", 40 + i, taken=datetime(2010, 5, 1 + i, 12, 0))
        s3_client.upload_file(str(p), s3_bucket, f"inbox/IMG_{i:04d}.JPG")
    job = _job(tmp_path, "s3-self", _s3(s3_server, s3_bucket, s3_credentials),
               _s3(s3_server, s3_bucket, s3_credentials, sidecar=True))
    first = escape(job)
    assert (first["listed"], first["done"], first["failed"]) == (3, 3, 0)
    landed = _objects(s3_client, s3_bucket)
    assert len(landed) == 3 + 3 * 3  # inbox + original, sidecar, thumbnail each
    again = escape(job)  # the rerun lists the inbox alone and adds nothing
    assert again["listed"] == 3 and again["failed"] == 0
    assert set(again["excluded_prefixes"]) == {"originals/", "thumbnails/"}
    assert _objects(s3_client, s3_bucket).keys() == landed.keys()


def test_s3_to_s3_and_s3_to_folder(tmp_path, s3_server, s3_credentials, s3_client):
    from flows.escape import escape

    old, new = s3_server.make_bucket("legacy-photos-x1"), s3_server.make_bucket("archive-photos-x1")
    for i in range(4):
        p = photos.write_jpeg(tmp_path / "up" / f"DSC{i:04d}.JPG", 50 + i,
                              taken=datetime(2012, 7, 14, 9 + i, 0) if i else None)
        s3_client.upload_file(str(p), old, f"Camera Uploads/2012/DSC{i:04d}.JPG")
    s3_client.put_object(Bucket=old, Key="Camera Uploads/readme.txt", Body=b"not a photo")
    s = escape(_job(tmp_path, "s3-to-s3",
                    _s3(s3_server, old, s3_credentials, prefix="Camera Uploads/", pattern="*.jpg"),
                    _s3(s3_server, new, s3_credentials, storage_class="DEEP_ARCHIVE")))
    assert (s["listed"], s["done"], s["failed"]) == (4, 4, 0)
    keys = _objects(s3_client, new)
    assert {k for k in keys if k.startswith("originals/")} == {
        "originals/undated/DSC0000.JPG", "originals/2012/07/14/DSC0001.JPG",
        "originals/2012/07/14/DSC0002.JPG", "originals/2012/07/14/DSC0003.JPG"}
    assert keys["originals/2012/07/14/DSC0001.JPG"]["StorageClass"] == "DEEP_ARCHIVE"
    # and from S3 back to a folder, keeping the source's own folders
    out = tmp_path / "restored"
    s = escape(_job(tmp_path, "s3-to-folder", _s3(s3_server, old, s3_credentials, pattern="*.JPG"),
                    {"kind": "local", "path": str(out), "layout": "{relpath}"}))
    assert (s["listed"], s["done"], s["failed"]) == (4, 4, 0)
    got = sorted(str(p.relative_to(out)) for p in out.rglob("*.JPG"))
    assert got == [f"Camera Uploads/2012/DSC{i:04d}.JPG" for i in range(4)]
    assert (out / "Camera Uploads/2012/DSC0002.JPG").read_bytes() == (tmp_path / "up" / "DSC0002.JPG").read_bytes()
