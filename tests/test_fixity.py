"""Fixity (issue 23): the archive as it is, not as the ledger remembers it.

A collection escapes through the real flow into a folder and into S3 (moto's server);
then the archive is tampered with (5 photos deleted, one byte flipped in 3, one
truncated) and the plain fixity code must see exactly that: the rerun's size check
(``compare``), the full read (``verify``), ``repair`` from the source keeping the
changed copies, and a second ``verify`` all ok. Destinations that cannot be listed
raise one clear exception instead of reading as empty."""

from __future__ import annotations

import hashlib
import math
from datetime import date, datetime
from pathlib import Path

import pytest

from photo_escape.jobspec import parse_job
from photo_escape.layout import with_suffix
from photo_escape.plugins import DestinationUnreadable, destination_kinds, make_destination, make_source
from sandbox import photos
from tasks.fixity import FixityUnsupported, compare, counts, repair, verify
from tasks.ledger import Ledger, new_run_id
from tasks.s3util import split_uri
from tests.fixtures.jobs import local_job

DAY = date(2024, 5, 1)
CHANGED = "~changed-20240501"


def _escaped(tmp_path: Path, name: str, destination: dict | None = None, count: int = 12):
    """Run the escape flow over ``count`` photos; return (spec, destination, source)."""
    from flows.escape import escape

    photos.make_collection(tmp_path / "camera", count=count, bad=False)
    over = {"destination": destination} if destination else {}
    job = local_job(tmp_path, name, {"batch_size": 5, "processes": 1, "concurrency": 4}, **over)
    s = escape(job)
    assert (s["listed"], s["done"], s["failed"]) == (count, count, 0)
    spec = parse_job(job)
    work = tmp_path / "work" / "fixity"
    return (spec, make_destination(spec.destination, workdir=work, options=spec.options),
            make_source(spec.source, workdir=work, options=spec.options))


def _record(spec, outcomes: list[dict], flow: str) -> None:
    """Append outcomes to the ledger as a flow would (one run)."""
    with Ledger(spec.ledger_path) as ledger:
        run_id = new_run_id()
        ledger.start_run(run_id, spec.name, flow=flow, settings="fixity-test")
        ledger.append_events(spec.name, run_id, outcomes)
        ledger.finish_run(run_id, "finished", {})


def _delivered(spec, destination) -> list[dict]:
    with Ledger(spec.ledger_path) as ledger:
        return ledger.delivered(spec.name, settings=destination.settings_key())


def _by(outcomes: list[dict], stage: str = "fixity") -> dict[str, set[str]]:
    """{verdict: item ids} of the stage's outcomes."""
    out: dict[str, set[str]] = {}
    for o in outcomes:
        if o["stage"] == stage:
            out.setdefault("ok" if o["outcome"] == "ok" else o["reason"], set()).add(o["item_id"])
    return out


def _destination(tmp_path: Path, **config):
    """A destination straight from its config (no job around it)."""
    kind = destination_kinds()[config["kind"]]
    return kind(kind.Config(**config), workdir=tmp_path / "work")


def _flip(data: bytes) -> bytes:
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]


def _tamper(rows: list[dict], read, write, delete) -> dict[str, set[str]]:
    """Delete 5, flip a byte in 3, truncate 1; returns the item ids of each, with
    ``tampered`` mapping to the bytes left at each changed target."""
    rows = sorted(rows, key=lambda r: r["item_id"])
    deleted, flipped, truncated = rows[:5], rows[5:8], rows[8:9]
    for r in deleted:
        delete(r["target"])
    for r in flipped:
        write(r["target"], _flip(read(r["target"])))
    for r in truncated:
        write(r["target"], read(r["target"])[: r["bytes"] // 2])
    return {"missing": {r["item_id"] for r in deleted}, "flipped": {r["item_id"] for r in flipped},
            "truncated": {r["item_id"] for r in truncated}}


def _check_the_whole_story(spec, destination, source, read, write, delete) -> dict[str, bytes]:
    """compare, verify (full and sampled), repair, verify again; returns the tampered
    bytes of each changed target (to check the kept copies against)."""
    rows = _delivered(spec, destination)
    assert len(rows) == 12 and all(r["target"] and r["sha256"] and r["bytes"] for r in rows)
    assert all(hashlib.sha256(read(r["target"])).hexdigest() == r["sha256"] for r in rows)
    assert all(r["item"]["item_id"] == r["item_id"] and r["capture"]["local"] for r in rows)
    done = _tamper(rows, read, write, delete)
    changed = done["flipped"] | done["truncated"]
    tampered = {r["target"]: read(r["target"]) for r in rows if r["item_id"] in changed}
    untouched = {r["item_id"] for r in rows} - done["missing"] - changed

    # the rerun's check: one listing, sizes only (a flipped byte keeps the size)
    by_size = compare(rows, destination.inventory([r["target"] for r in rows]))
    assert _by(by_size) == {"missing": done["missing"], "changed": done["truncated"],
                            "ok": untouched | done["flipped"]}
    assert all(o["detail"]["method"] == "size" for o in by_size)

    # a sampled verify: size for all, a full read for a random share of the right-sized
    sampled = verify(destination, rows, sample_percent=50, seed=3, workers=3)
    methods = [o["detail"]["method"] for o in sampled]
    assert methods.count("full_read") >= math.ceil(len(untouched | done["flipped"]) / 2)
    assert methods.count("full_read") < len(untouched | done["flipped"])  # a sample, not all of them
    # what was written to since delivery (a new mtime, a new ETag) is read whatever the draw
    assert _by(sampled)["missing"] == done["missing"] and _by(sampled)["changed"] == changed

    # the full verify: every photo read back and hashed
    full = verify(destination, rows, workers=4)
    assert counts(full) == {"checked": 12, "ok": 3, "missing": 5, "changed": 4, "unreadable": 0}
    assert _by(full) == {"missing": done["missing"], "changed": changed, "ok": untouched}
    for o in full:
        if o["item_id"] in done["flipped"]:
            assert o["detail"]["changed_by"] == "sha256" and o["detail"]["method"] == "full_read"
            assert o["detail"]["found_sha256"] == hashlib.sha256(tampered[o["detail"]["target"]]).hexdigest()
    _record(spec, full, "verify")
    with Ledger(spec.ledger_path) as ledger:  # the checked photos keep their status and settings
        assert ledger.reconciliation(job=spec.name)["done"] == 3
        assert ledger.reconciliation(job=spec.name)["failed"] == 9
        assert set(ledger.completed(spec.name, sorted(untouched), destination.settings_key())) == untouched

    fixed = repair(destination, source, rows, full, today=DAY)
    assert _by(fixed, "deliver") == {"ok": done["missing"] | changed}
    reasons = {o["item_id"]: o["reason"] for o in fixed if o["stage"] == "deliver"}
    assert {i for i, r in reasons.items() if r == "missing_at_destination"} == done["missing"]
    assert {i for i, r in reasons.items() if r == "changed_at_destination"} == changed
    _record(spec, fixed, "verify")
    copies = {o["item_id"]: o["detail"]["repair"]["changed_copy"] for o in fixed if o["stage"] == "deliver"}
    for r in rows:  # the changed copies are kept beside the originals, the originals are back
        if r["item_id"] in changed:
            assert read(copies[r["item_id"]]) == tampered[r["target"]]
        if r["item_id"] in copies:
            assert hashlib.sha256(read(r["target"])).hexdigest() == r["sha256"]
    assert {i for i, c in copies.items() if c} == changed
    rows_after = _delivered(spec, destination)
    assert [(r["item_id"], r["target"]) for r in rows_after] == [(r["item_id"], r["target"]) for r in rows]
    again = verify(destination, rows_after)
    assert counts(again) == {"checked": 12, "ok": 12, "missing": 0, "changed": 0, "unreadable": 0}
    assert {o["detail"]["method"] for o in again} == {"full_read"}
    _record(spec, again, "verify")
    with Ledger(spec.ledger_path) as ledger:
        assert ledger.reconciliation(job=spec.name)["done"] == 12
    return tampered


def test_folder_destination_tampered_compared_verified_repaired(tmp_path, prefect_harness):
    spec, destination, source = _escaped(tmp_path, "fixity-folder")
    root = Path(spec.destination.path)
    tampered = _check_the_whole_story(
        spec, destination, source,
        read=lambda t: (root / t).read_bytes(), write=lambda t, b: (root / t).write_bytes(b),
        delete=lambda t: (root / t).unlink())
    kept = sorted(str(p.relative_to(root)) for p in root.rglob(f"*{CHANGED}*"))
    assert kept == sorted(with_suffix(t, CHANGED) for t in tampered)
    assert len([p for p in root.rglob("*") if p.is_file()]) == 12 + 4  # nothing else added


def test_repair_leaves_both_alone_when_the_source_changed(tmp_path, prefect_harness):
    spec, destination, source = _escaped(tmp_path, "fixity-source-changed", count=3)
    root = Path(spec.destination.path)
    rows = _delivered(spec, destination)
    gone, edited = rows[0], rows[1]
    (root / gone["target"]).unlink()
    (root / edited["target"]).write_bytes(_flip((root / edited["target"]).read_bytes()))
    at_destination = (root / edited["target"]).read_bytes()
    for r in (gone, edited):  # the photographer edited the originals since
        src = Path(r["item"]["path"])
        src.write_bytes(src.read_bytes() + b"edited")
    found = verify(destination, rows)
    assert _by(found) == {"missing": {gone["item_id"]}, "changed": {edited["item_id"]}, "ok": {rows[2]["item_id"]}}
    fixed = repair(destination, source, rows, found, today=DAY)
    assert [(o["stage"], o["outcome"], o["reason"]) for o in fixed] == [("repair", "failed", "source_changed")] * 2
    assert fixed[0]["detail"]["expected_sha256"] == gone["sha256"] != fixed[0]["detail"]["source_sha256"]
    assert not (root / gone["target"]).exists()
    assert (root / edited["target"]).read_bytes() == at_destination
    assert not list(root.rglob(f"*{CHANGED}*"))


def test_s3_destination_tampered_compared_verified_repaired(tmp_path, prefect_harness, s3_server, s3_bucket,
                                                            s3_credentials, s3_client):
    spec, destination, source = _escaped(tmp_path, "fixity-s3", {
        "kind": "s3", "bucket": s3_bucket, "endpoint_url": s3_server.url, "credentials": {"env": s3_credentials}})

    def key(target: str) -> str:
        return split_uri(target, s3_bucket)

    def read(target: str) -> bytes:
        return s3_client.get_object(Bucket=s3_bucket, Key=key(target))["Body"].read()

    def write(target: str, data: bytes) -> None:  # a sneaky edit: the old metadata kept
        head = s3_client.head_object(Bucket=s3_bucket, Key=key(target))
        s3_client.put_object(Bucket=s3_bucket, Key=key(target), Body=data, Metadata=head["Metadata"])

    requests: list[str] = []
    destination.client.meta.events.register(
        "before-send.s3.*", lambda request=None, event_name="", **_: requests.append(event_name.rsplit(".", 1)[-1]))
    rows = _delivered(spec, destination)
    destination.inventory([r["target"] for r in rows])
    folders = {r["target"].rsplit("/", 1)[0] for r in rows}  # a listing, never a look per photo
    assert set(requests) == {"ListObjectsV2"} and 1 <= len(requests) <= len(folders) < len(rows)

    tampered = _check_the_whole_story(spec, destination, source, read, write,
                                      delete=lambda t: s3_client.delete_object(Bucket=s3_bucket, Key=key(t)))
    keys = {o["Key"] for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
            for o in page.get("Contents", [])}
    kept = {k for k in keys if CHANGED in k}
    assert kept == {with_suffix(key(t), CHANGED) for t in tampered}
    for k in kept:
        meta = s3_client.head_object(Bucket=s3_bucket, Key=k)["Metadata"]
        assert "sha256" not in meta and meta["set-aside-from"] == k.replace(CHANGED, "")


def test_repair_downloads_again_from_a_remote_source(tmp_path, prefect_harness, s3_server, s3_bucket,
                                                     s3_credentials, s3_client):
    """A source that downloads (S3 here) is fetched again for the repair, its download
    removed afterwards; a photo gone from the source too is left as it is, said so."""
    from flows.escape import escape

    for i in range(3):
        p = photos.write_jpeg(tmp_path / "up" / f"DSC{i:04d}.JPG", 60 + i, taken=datetime(2012, 7, 14, 9 + i, 0))
        s3_client.upload_file(str(p), s3_bucket, f"Camera/DSC{i:04d}.JPG")
    job = local_job(tmp_path, "fixity-from-s3", {"batch_size": 5, "processes": 1},
                    source={"kind": "s3", "bucket": s3_bucket, "endpoint_url": s3_server.url,
                            "credentials": {"env": s3_credentials}})
    assert escape(job)["done"] == 3
    spec = parse_job(job)
    work = tmp_path / "work" / "fixity"
    destination = make_destination(spec.destination, workdir=work, options=spec.options)
    source = make_source(spec.source, workdir=work, options=spec.options)
    root = Path(spec.destination.path)
    rows = _delivered(spec, destination)
    for r in rows[:2]:
        (root / r["target"]).unlink()
    s3_client.delete_object(Bucket=s3_bucket, Key="Camera/DSC0001.JPG")  # gone at the source as well
    fixed = repair(destination, source, rows, verify(destination, rows), today=DAY)
    assert {(o["item_id"], o["stage"], o["reason"]) for o in fixed} == {
        (rows[0]["item_id"], "deliver", "missing_at_destination"),
        (rows[1]["item_id"], "repair", "source_unavailable")}
    assert hashlib.sha256((root / rows[0]["target"]).read_bytes()).hexdigest() == rows[0]["sha256"]
    assert not (root / rows[1]["target"]).exists()
    assert not [p for p in work.rglob("*") if p.is_file()]  # the download is gone


def test_a_destination_that_cannot_be_listed_says_so(tmp_path, s3_server, s3_credentials):
    """Never "everything is missing": a folder that is a file, a folder that is not
    there, a bucket that does not exist, an endpoint that does not answer."""
    photo = photos.write_jpeg(tmp_path / "IMG_0001.JPG", 3, taken=datetime(2006, 10, 4, 9, 30))
    data = photo.read_bytes()
    item = {"item_id": "local:IMG_0001.JPG", "name": photo.name, "local_path": str(photo), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "capture": {"local": "2006-10-04T09:30:00"}}
    archive = _destination(tmp_path, kind="local", path=tmp_path / "archive")
    [done] = archive.deliver([item])
    row = {"item_id": item["item_id"], "target": done["detail"]["target"], "sha256": item["sha256"],
           "bytes": item["bytes"], "settings": None, "fingerprint": None}
    assert counts(verify(archive, [row]))["ok"] == 1
    (tmp_path / "archive" / "2006" / "10" / "04").rename(tmp_path / "elsewhere")  # a whole folder gone
    assert _by(verify(archive, [row])) == {"missing": {row["item_id"]}}

    broken = tmp_path / "not-a-folder"
    broken.write_bytes(b"a file where the archive should be")
    dest = _destination(tmp_path, kind="local", path=broken)
    with pytest.raises(DestinationUnreadable, match="is not a folder"):
        dest.inventory([row["target"]])
    with pytest.raises(DestinationUnreadable):
        verify(dest, [row])
    # an archive folder deleted whole (or a new disk with nothing on it yet): all of it is missing
    assert _by(verify(_destination(tmp_path, kind="local", path=tmp_path / "gone"), [row])) == {"missing": {row["item_id"]}}
    (tmp_path / "archive" / "2006" / "10").rmdir()
    (tmp_path / "archive" / "2006" / "10").write_bytes(b"a file where a folder should be")
    with pytest.raises(DestinationUnreadable, match="cannot list"):
        archive.inventory([row["target"]])

    s3 = {"kind": "s3", "endpoint_url": s3_server.url, "credentials": {"env": s3_credentials}, "max_attempts": 1}
    nowhere = _destination(tmp_path, **s3, bucket="no-such-bucket-x9")
    with pytest.raises(DestinationUnreadable, match="NoSuchBucket"):
        nowhere.inventory(["s3://no-such-bucket-x9/originals/2006/10/04/IMG_0001.JPG"])
    unreachable = _destination(tmp_path, **dict(s3, endpoint_url="http://127.0.0.1:9"), bucket="b", timeout_seconds=2)
    with pytest.raises(DestinationUnreadable, match="cannot list s3://b/originals/"):
        unreachable.inventory(["s3://b/originals/2006/10/04/IMG_0001.JPG"])


def test_redelivery_goes_to_the_recorded_target_and_never_to_another_name(tmp_path):
    """``redeliver_to`` wins over the layout, and an occupied target is a conflict, not
    a suffixed second copy (the folder destination's default for new deliveries)."""
    archive = _destination(tmp_path, kind="local", path=tmp_path / "archive")
    photo = photos.write_jpeg(tmp_path / "IMG_0002.JPG", 4, taken=datetime(2007, 1, 2, 3, 4))
    data = photo.read_bytes()
    item = {"item_id": "local:IMG_0002.JPG", "name": photo.name, "local_path": str(photo), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "capture": {"local": "2007-01-02T03:04:00"}}
    [placed] = archive.deliver([dict(item, redeliver_to="old layout/IMG_0002.JPG")])
    assert (placed["outcome"], placed["detail"]["target"]) == ("ok", "old layout/IMG_0002.JPG")
    assert (tmp_path / "archive" / "old layout" / "IMG_0002.JPG").read_bytes() == data
    (tmp_path / "archive" / "old layout" / "IMG_0002.JPG").write_bytes(b"something else")
    [conflict] = archive.deliver([dict(item, redeliver_to="old layout/IMG_0002.JPG")])
    assert (conflict["outcome"], conflict["reason"]) == ("failed", "key_conflict")
    assert sorted(p.name for p in (tmp_path / "archive" / "old layout").iterdir()) == ["IMG_0002.JPG"]
    kept = archive.set_aside("old layout/IMG_0002.JPG", CHANGED)
    assert kept == "old layout/IMG_0002~changed-20240501.JPG"
    (tmp_path / "archive" / "old layout" / "IMG_0002.JPG").write_bytes(b"and again")
    assert archive.set_aside("old layout/IMG_0002.JPG", CHANGED) == "old layout/IMG_0002~changed-20240501-2.JPG"
    assert (tmp_path / "archive" / kept).read_bytes() == b"something else"


def test_an_upload_api_cannot_be_listed_and_says_so(tmp_path):
    api = _destination(tmp_path, kind="http_upload", url="http://127.0.0.1:9/api/photoUpload")
    row = {"item_id": "a", "target": None, "sha256": "0" * 64, "bytes": 1}
    assert api.inventory(["anything"]) is None
    assert compare([row], api.inventory([])) == []
    with pytest.raises(FixityUnsupported, match="http_upload destination cannot be listed"):
        verify(api, [row])
