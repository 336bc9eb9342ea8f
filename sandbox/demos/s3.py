"""Demo, story 3: a personal archive in S3. A camera folder (real photographs with
EXIF capture times, a RAW file, a photo with no date, a few broken files) goes to a
bucket on moto's S3 server (a real HTTP endpoint on 127.0.0.1) in the archive layout:

    originals/2006/10/04/IMG_00001.JPG       (STANDARD_IA, sha256 in its metadata)
    originals/2006/10/04/IMG_00001.JPG.json  (the recorded metadata)
    thumbnails/2006/10/04/IMG_00001.JPG.jpg  (STANDARD; for a RAW, its embedded preview)
    originals/undated/...                    (no capture time)

then runs the job again (nothing is added) and lists what landed.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sandbox import photos
from sandbox.s3 import MotoS3, sandbox_credentials_env, write_raw

BUCKET = "photo-archive"


def make_camera(folder: Path) -> None:
    """JPEGs in dated folders, two RAW files (NEF and DNG style), an undated photo, broken files."""
    photos.make_collection(folder, count=10, bad=True)
    write_raw(folder / "2006-10-04" / "IMG_00101.NEF", 20, taken=datetime(2006, 10, 4, 18, 5), orientation=6)
    write_raw(folder / "2006-10-05" / "IMG_00102.DNG", 21, taken=datetime(2006, 10, 5, 7, 40), style="dng")
    photos.write_jpeg(folder / "scans" / "grandma-1962.jpg", 22)  # a scan: no capture time


def job(workdir: Path, endpoint_url: str, credentials_env: str) -> dict:
    return {
        "name": "demo-s3",
        "ledger": str(workdir / "ledger.duckdb"),
        "work_dir": str(workdir / "work"),
        "reports_dir": str(workdir / "reports"),
        "source": {"kind": "local", "path": str(workdir / "camera")},
        "destination": {
            "kind": "s3",
            "bucket": BUCKET,
            "endpoint_url": endpoint_url,
            "region": "us-east-1",
            "credentials": {"env": credentials_env},
            "storage_class": "STANDARD_IA",
            "sidecar": True,
            "verify": "sample",
            "verify_sample": 0.5,
        },
        "options": {"batch_size": 50, "concurrency": 4, "processes": 1},
    }


def landed(client, bucket: str) -> list[dict]:
    """Every object in the bucket: key, size, storage class."""
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            out.append({"key": obj["Key"], "bytes": obj["Size"], "storage_class": obj.get("StorageClass", "STANDARD")})
    return out


def run(workdir: Path, as_json: bool) -> dict:
    from flows.escape import escape

    make_camera(workdir / "camera")
    with MotoS3() as s3:
        s3.make_bucket(BUCKET)
        spec = job(workdir, s3.url, sandbox_credentials_env())
        summary = escape(spec)
        objects = landed(s3.client(), BUCKET)
        again = escape(spec)
        after = landed(s3.client(), BUCKET)
    summary.update(
        bucket=BUCKET,
        objects=len(objects),
        originals=sum(o["key"].startswith("originals/") and not o["key"].endswith(".json") for o in objects),
        thumbnails=sum(o["key"].startswith("thumbnails/") for o in objects),
        rerun={"run_id": again["run_id"], "done": again["done"], "failed": again["failed"],
               "objects_added": len(after) - len(objects)},
        landed=objects,
    )
    if not as_json:
        print(f"s3://{BUCKET}: {len(objects)} objects")
        for o in objects:
            print(f"  {o['storage_class']:<12} {o['bytes']:>9}  {o['key']}")
        print(f"rerun {again['run_id']}: {len(after) - len(objects)} objects added")
    return summary
