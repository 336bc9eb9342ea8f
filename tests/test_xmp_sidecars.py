"""XMP sidecars beside delivered photos (``destination.sidecars: [xmp]``), for a folder and
an S3 bucket (moto's server), each read back with exiftool and compared field by field:
the restored local time with its offset, the place, title, description, albums as
subjects and hierarchical subjects, the provenance. The originals' bytes never change,
and a rerun rewrites a sidecar only when what it says changed."""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from sandbox import photos
from sandbox.photos import write_jpeg
from tasks.capture_time import capture_times
from tasks.destinations.local import LocalDestination, LocalDestinationConfig
from tasks.destinations.s3 import S3Destination, S3DestinationConfig
from tasks.files import sha256_file
from tasks.stages import capture_outcomes
from tests.fixtures.jobs import local_job

SMALL = (64, 48)
FAST = SimpleNamespace(retries=2, backoff_seconds=0.01, concurrency=2, max_bytes=2_000_000_000)
HOLI = {"time_utc": "2019-03-10T04:15:00Z", "time_provenance": "sidecar:utc", "latitude": 27.7172,
        "longitude": 85.324, "title": "Holi in Kathmandu", "description": 'Colours <everywhere> & "music"\nall day',
        "albums": ["Nepal 2019", "Festivals", "Best of|2019"], "sidecar": "IMG_0001.JPG.supplemental-metadata.json"}
PRINT = {"time_local": "1962-05-01T00:00:00", "time_granularity": "month", "time_provenance": "source:flickr",
         "title": "Grandma's garden", "latitude": 0.0, "longitude": 0.0}


def delivered_items(tmp_path: Path) -> list[dict]:
    """Three photos as the escape flow hands them to delivery: fetched, hashed, their
    capture times decided from the real files and their sources' ``meta``
    (:func:`tasks.stages.capture_outcomes` builds ``item["capture"]``)."""
    folder = tmp_path / "in"
    holi = write_jpeg(folder / "IMG_0001.JPG", 1, size=SMALL, taken=datetime(2019, 3, 10, 10, 0))
    xmas = write_jpeg(folder / "IMG_0002.JPG", 2, size=SMALL, taken=datetime(2014, 12, 25, 9, 0), model="Other")
    scan = folder / "grandma.jpg"
    photos.picture(3, SMALL).save(scan, "JPEG")
    items = []
    for path, meta in ((holi, HOLI), (xmas, None), (scan, PRINT)):
        sha, n = sha256_file(str(path))
        item = {"item_id": f"test:{path.name}", "source_ref": str(path), "name": path.name,
                "local_path": str(path), "sha256": sha, "bytes": n}
        if meta:
            item["meta"] = dict(meta)
        items.append(item)
    records = capture_times([{"path": i["local_path"], "item_id": i["item_id"], "name": i["name"],
                              "meta": i.get("meta")} for i in items])
    dated, _ = capture_outcomes(items, records)
    return [o["item"] for o in dated]


def check_holi(found: dict) -> None:
    """The first photo's sidecar as exiftool reads it: every field."""
    assert found["XMP-exif:DateTimeOriginal"] == "2019:03:10 10:00:00+05:45"
    assert found["XMP-photoshop:DateCreated"] == "2019:03:10 10:00:00+05:45"
    assert math.isclose(found["XMP-exif:GPSLatitude"], 27.7172, abs_tol=1e-6)
    assert math.isclose(found["XMP-exif:GPSLongitude"], 85.324, abs_tol=1e-6)
    assert found["XMP-dc:Title"] == "Holi in Kathmandu"
    assert found["XMP-dc:Description"] == 'Colours <everywhere> & "music"\nall day'
    assert found["XMP-dc:Subject"] == ["Nepal 2019", "Festivals", "Best of|2019"]
    assert found["XMP-lr:HierarchicalSubject"] == ["Albums|Nepal 2019", "Albums|Festivals", "Albums|Best of/2019"]
    assert found["XMP-photoescape:Provenance"] == "sidecar:utc"
    assert found["XMP-photoescape:ZoneSource"] == "sidecar:position"
    assert found["XMP-photoescape:TimeZone"] == "Asia/Kathmandu"


def check_others(xmas: dict, scan: dict) -> None:
    # no zone anywhere: the wall clock alone, no invented offset, no place, no title
    assert xmas["XMP-exif:DateTimeOriginal"] == "2014:12:25 09:00:00"
    assert xmas["XMP-photoshop:DateCreated"] == "2014:12:25 09:00:00"
    assert xmas["XMP-photoescape:Provenance"] == "unknown"
    assert not any(k.startswith(("XMP-exif:GPS", "XMP-dc:", "XMP-lr:")) for k in xmas)
    # "May 1962" stays a month, never a midnight; (0, 0) is no place
    assert scan["XMP-exif:DateTimeOriginal"] == "1962:05" and scan["XMP-photoshop:DateCreated"] == "1962:05"
    assert scan["XMP-photoescape:Granularity"] == "month" and scan["XMP-photoescape:Provenance"] == "source:flickr"
    assert scan["XMP-dc:Title"] == "Grandma's garden" and "XMP-exif:GPSLatitude" not in scan


def test_local_sidecars_read_back_with_exiftool_and_a_rerun_rewrites_only_what_changed(tmp_path, exiftool):
    items = delivered_items(tmp_path)
    root = tmp_path / "archive"
    dest = LocalDestination(LocalDestinationConfig(kind="local", path=root, sidecars="xmp"), workdir=tmp_path)
    out = {o["item_id"]: o for o in dest.deliver(items)}
    assert all(o["outcome"] == "ok" for o in out.values())
    holi = out["test:IMG_0001.JPG"]["detail"]
    assert holi["target"] == "2019/03/10/IMG_0001.JPG"
    assert holi["xmp"]["path"] == "2019/03/10/IMG_0001.JPG.xmp" and holi["xmp"]["result"] == "written"
    sidecars = {i["item_id"]: root / out[i["item_id"]]["detail"]["xmp"]["path"] for i in items}
    check_holi(exiftool(sidecars["test:IMG_0001.JPG"]))
    check_others(exiftool(sidecars["test:IMG_0002.JPG"]), exiftool(sidecars["test:grandma.jpg"]))
    for i in items:  # the originals, byte for byte
        assert sha256_file(root / out[i["item_id"]]["detail"]["target"])[0] == i["sha256"]

    # a rerun: the same sidecars stay untouched; a title changed at the source is rewritten
    before = {k: (p.read_bytes(), p.stat().st_mtime_ns) for k, p in sidecars.items()}
    items[1]["meta"] = {"title": "Christmas morning"}
    again = {o["item_id"]: o for o in dest.deliver(items)}
    assert [again[i["item_id"]]["detail"]["xmp"]["result"] for i in items] == ["already_present", "updated",
                                                                                "already_present"]
    assert {k: (p.read_bytes(), p.stat().st_mtime_ns) for k, p in sidecars.items() if k != "test:IMG_0002.JPG"} \
        == {k: v for k, v in before.items() if k != "test:IMG_0002.JPG"}
    assert exiftool(sidecars["test:IMG_0002.JPG"])["XMP-dc:Title"] == "Christmas morning"
    assert not (root / ".photo-escape-staging").exists() or not any((root / ".photo-escape-staging").iterdir())


def test_a_sidecar_another_application_wrote_is_never_replaced(tmp_path):
    items = delivered_items(tmp_path)[:1]
    root = tmp_path / "archive"
    theirs = root / "2019/03/10/IMG_0001.JPG.xmp"
    theirs.parent.mkdir(parents=True)
    digikam = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/></x:xmpmeta>'
    theirs.write_bytes(digikam)
    dest = LocalDestination(LocalDestinationConfig(kind="local", path=root, sidecars=["xmp"]), workdir=tmp_path)
    (o,) = dest.deliver(items)
    assert o["outcome"] == "ok" and o["detail"]["xmp"]["result"] == "foreign_kept"
    assert theirs.read_bytes() == digikam


def test_s3_sidecars_read_back_with_exiftool_and_a_rerun_stores_nothing_new(
        tmp_path, exiftool, s3_server, s3_bucket, s3_credentials, s3_client):
    items = delivered_items(tmp_path)

    def dest(**cfg) -> S3Destination:
        config = S3DestinationConfig(kind="s3", bucket=s3_bucket, endpoint_url=s3_server.url,
                                     credentials={"env": s3_credentials}, thumbnails="", **cfg)
        return S3Destination(config, workdir=tmp_path, options=FAST)

    first = dest(sidecars=["xmp", "json"])
    out = {o["item_id"]: o for o in first.deliver(items) if o["stage"] == "deliver"}
    assert all(o["outcome"] == "ok" for o in out.values())
    key = out["test:IMG_0001.JPG"]["detail"]["key"]
    assert key == "originals/2019/03/10/IMG_0001.JPG"
    assert out["test:IMG_0001.JPG"]["detail"]["xmp"] == {"key": key + ".xmp", "result": "uploaded",
                                                         "sha256": out["test:IMG_0001.JPG"]["detail"]["xmp"]["sha256"]}
    assert out["test:IMG_0001.JPG"]["detail"]["sidecar"]["key"] == key + ".json"

    def read_back(item_id: str) -> dict:
        obj = s3_client.get_object(Bucket=s3_bucket, Key=out[item_id]["detail"]["key"] + ".xmp")
        assert obj["ContentType"] == "application/rdf+xml"
        path = tmp_path / "back" / (item_id.split(":")[1] + ".xmp")
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(obj["Body"].read())
        return exiftool(path)

    check_holi(read_back("test:IMG_0001.JPG"))
    check_others(read_back("test:IMG_0002.JPG"), read_back("test:grandma.jpg"))
    original = s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    assert original == Path(items[0]["local_path"]).read_bytes()

    # a rerun (a new destination object, as a new run makes): nothing uploaded again
    second = dest(sidecars=["xmp", "json"])
    again = {o["item_id"]: o for o in second.deliver(items) if o["stage"] == "deliver"}
    assert {o["detail"]["xmp"]["result"] for o in again.values()} == {"already_present"}
    assert sum(second.upload_requests(o["detail"]["key"] + ".xmp") for o in again.values()) == 0
    # the older spelling still works: `sidecar: true` is the JSON document alone
    legacy = dest(sidecar=True)
    assert legacy.config.sidecars == ["json"] and legacy.keys_for(items[0])["xmp"] is None
    assert legacy.settings_key() == dest(sidecars=["json"]).settings_key()


@pytest.mark.usefixtures("prefect_harness")
def test_the_escape_flow_writes_sidecars_beside_the_photos_it_delivers(tmp_path, exiftool):
    from flows.escape import escape

    camera = tmp_path / "camera"
    write_jpeg(camera / "nepal.jpg", 1, size=SMALL, taken=datetime(2019, 3, 10, 10, 0), offset="+05:45")
    write_jpeg(camera / "paris.jpg", 2, size=SMALL, taken=datetime(2019, 7, 14, 12, 0), gps=(48.8584, 2.2945))
    job = local_job(tmp_path, "xmp-sidecars", {"batch_size": 4, "processes": 1},
                    destination={"kind": "local", "path": str(tmp_path / "archive"), "sidecars": ["xmp"]})
    s = escape(job)
    assert s["done"] == 2 and s["failed"] == 0
    nepal = exiftool(tmp_path / "archive/2019/03/10/nepal.jpg.xmp")
    assert nepal["XMP-exif:DateTimeOriginal"] == "2019:03:10 10:00:00+05:45"
    assert nepal["XMP-photoescape:Provenance"] == "exif:offset"
    paris = exiftool(tmp_path / "archive/2019/07/14/paris.jpg.xmp")
    assert paris["XMP-exif:DateTimeOriginal"] == "2019:07:14 12:00:00+02:00"
    assert paris["XMP-photoescape:Provenance"] == "gps:position" and paris["XMP-photoescape:TimeZone"] == "Europe/Paris"
    assert sha256_file(tmp_path / "archive/2019/03/10/nepal.jpg") == sha256_file(camera / "nepal.jpg")
