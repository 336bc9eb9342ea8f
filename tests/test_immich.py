"""The ``immich`` destination over real HTTP against the Immich stand-in (sandbox/immich.py),
and the proof that the stand-in speaks Immich: Immich's own CLI uploads into it."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from pathlib import Path

import pytest

from photo_escape.jobspec import Options
from photo_escape.plugins import make_destination
from sandbox.immich import ImmichServer
from sandbox.photos import write_jpeg
from tasks.capture_time import capture_times
from tasks.destinations.immich import ImmichConfig, ImmichKeyRefused, file_created_at, parse_target

SMALL = (64, 48)


def make_items(folder: Path, n: int = 4, *, albums: dict[int, list[str]] | None = None, start: int = 0) -> list[dict]:
    """Fetched-and-dated items as the flow hands them to a destination: photos taken at
    15:0i in New York (offset -04:00 in their EXIF), in the given albums."""
    albums = albums if albums is not None else {0: ["Trip"], 1: ["Trip", "Best of"], 2: []}
    paths = [write_jpeg(folder / f"IMG_{i}.JPG", 20 + i, size=SMALL, taken=datetime(2014, 5, 16, 15, i),
                        offset="-04:00") for i in range(start, start + n)]
    caps = capture_times([str(p) for p in paths])
    return [{"item_id": f"local:{p.name}", "name": p.name, "local_path": str(p), "bytes": p.stat().st_size,
             "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
             "meta": {"albums": albums.get(k, []), "favourite": k == 0},
             "capture": {k2: c[k2] for k2 in ("local", "utc", "offset_minutes", "tz", "provenance", "conflicts")}}
            for k, (p, c) in enumerate(zip(paths, caps))]


def destination(immich, workdir: Path, retries: int = 3, **over):
    cfg = {"kind": "immich", "url": immich.url, "api_key": {"env": "IMMICH_API_KEY"}, **over}
    opts = Options(backoff_seconds=0.01, retries=retries, concurrency=3)
    return make_destination(ImmichConfig.model_validate(cfg), workdir=workdir / "work" / "run", options=opts)


def by_name(outcomes: list[dict]) -> dict[str, dict]:
    return {o["item"]["name"]: o for o in outcomes}


def requests_to(immich, pattern: str) -> int:
    return immich.faults.count(pattern)


def test_upload_sends_the_capture_time_with_its_offset_and_fills_the_albums(tmp_path, immich):
    items = make_items(tmp_path / "photos")
    out = by_name(destination(immich, tmp_path).deliver(items))
    assert {o["reason"] for o in out.values()} == {"uploaded"} and all(o["final"] for o in out.values())
    assets = {a["originalFileName"]: a for a in immich.assets()}
    assert sorted(assets) == [f"IMG_{i}.JPG" for i in range(4)]
    a1 = assets["IMG_1.JPG"]
    # the restored time, in its own offset; Immich keeps the instant and the wall clock
    assert a1["fileCreatedAtSent"] == "2014-05-16T15:01:00-04:00"
    assert a1["fileCreatedAt"] == "2014-05-16T19:01:00.000Z" and a1["localDateTime"] == "2014-05-16T15:01:00.000Z"
    assert a1["deviceId"] == "photo-escape" and a1["deviceAssetId"].startswith("IMG_1.JPG-")
    assert a1["sha1"] == hashlib.sha1(Path(items[1]["local_path"]).read_bytes()).hexdigest()
    assert assets["IMG_0.JPG"]["isFavorite"] and not a1["isFavorite"]
    # one bulk check for the batch, one upload per photo, one PUT per album
    assert requests_to(immich, "bulk-upload-check") == 1 and requests_to(immich, "^/api/assets$") == 4
    assert requests_to(immich, "^/api/albums/[^/]+/assets") == 2
    assert immich.albums() == {"Trip": ["IMG_0.JPG", "IMG_1.JPG"], "Best of": ["IMG_1.JPG"]}
    memberships = out["IMG_1.JPG"]["detail"]["albums"]
    assert sorted((m["name"], m["added"], m.get("created")) for m in memberships) == \
        [("Best of", "added", True), ("Trip", "added", True)]
    assert out["IMG_2.JPG"]["detail"]["albums"] == []
    target = parse_target(out["IMG_1.JPG"]["detail"]["target"])
    assert target == (a1["id"], a1["sha1"], items[1]["bytes"])


def test_a_rerun_uploads_nothing_and_adds_nothing_twice(tmp_path, immich):
    items = make_items(tmp_path / "photos")
    destination(immich, tmp_path).deliver(items)
    before = immich.store.stats()
    again = by_name(destination(immich, tmp_path).deliver(items))  # a new run's destination object
    assert {o["reason"] for o in again.values()} == {"already_present"} and all(o["outcome"] == "ok" for o in again.values())
    after = immich.store.stats()
    assert after["uploads_received"] == before["uploads_received"] == 4
    assert after["assets"] == 4 and after["albums_created"] == 2
    assert {m["added"] for o in again.values() for m in o["detail"]["albums"]} == {"already"}
    assert immich.albums() == {"Trip": ["IMG_0.JPG", "IMG_1.JPG"], "Best of": ["IMG_1.JPG"]}


def test_albums_fixed_name_or_none(tmp_path, immich):
    items = make_items(tmp_path / "photos", 2)
    out = destination(immich, tmp_path, albums="Holiday 2014").deliver(items)
    assert {o["reason"] for o in out} == {"uploaded"}
    assert immich.albums() == {"Holiday 2014": ["IMG_0.JPG", "IMG_1.JPG"]}
    more = make_items(tmp_path / "more", 1, start=5)
    destination(immich, tmp_path, albums="none").deliver(more)
    assert immich.albums() == {"Holiday 2014": ["IMG_0.JPG", "IMG_1.JPG"]} and len(immich.assets()) == 3


def test_dry_run_sends_only_the_read_only_checks_and_gives_the_plan(tmp_path, immich):
    items = make_items(tmp_path / "photos")
    destination(immich, tmp_path, albums="none").deliver(items[:1])  # IMG_0 is there already
    immich.faults.clear()
    out = by_name(destination(immich, tmp_path).deliver(items, dry_run=True))
    assert immich.store.stats()["uploads_received"] == 1 and immich.store.stats()["albums_created"] == 0
    sent = [r["target"] for r in immich.faults.requests]
    assert sent == ["/api/assets/bulk-upload-check", "/api/albums"], sent
    assert {o["outcome"] for o in out.values()} == {"skipped"} and {o["reason"] for o in out.values()} == {"dry_run"}
    assert out["IMG_0.JPG"]["detail"]["plan"] == "already_present"
    assert out["IMG_1.JPG"]["detail"]["plan"] == "upload"
    assert sorted(out["IMG_1.JPG"]["detail"]["albums_to_create"]) == ["Best of", "Trip"]
    assert out["IMG_1.JPG"]["detail"]["file_created_at"] == "2014-05-16T15:01:00-04:00"


def test_a_refused_key_stops_with_one_line_before_any_upload(tmp_path, immich, monkeypatch):
    monkeypatch.setenv("IMMICH_API_KEY", "not-the-key-0451")
    items = make_items(tmp_path / "photos", 2)
    with pytest.raises(ImmichKeyRefused) as info:
        destination(immich, tmp_path).deliver(items)
    line = str(info.value)
    assert "\n" not in line and "HTTP 401" in line and "env:IMMICH_API_KEY" in line and "Invalid API key" in line
    assert "not-the-key-0451" not in line
    assert requests_to(immich, "^/api/assets$") == 0 and requests_to(immich, "bulk-upload-check") == 1


def test_429_and_5xx_are_retried_and_a_commit_then_crash_is_no_duplicate(tmp_path, immich):
    immich.faults.add("error", match="bulk-upload-check", status=503)
    immich.faults.add("rate_limit", match="^/api/assets$", retry_after=0.05)
    immich.faults.add("error", match="^/api/assets$", status=502, times=2)
    immich.faults.add("error", match="^/api/albums$", status=500)
    immich.accept_then_fail(1)  # the first upload that gets through is stored, then answered 500
    items = make_items(tmp_path / "photos")
    # four faults on /api/assets, three uploads at once: 4 retries, so even the photo that
    # meets every fault gets through
    out = by_name(destination(immich, tmp_path, retries=4).deliver(items))
    assert {o["outcome"] for o in out.values()} == {"ok"}, out
    reasons = sorted(o["reason"] for o in out.values())
    assert reasons == ["already_present", "uploaded", "uploaded", "uploaded"]  # the crashed commit, found again
    assert max(o["attempt"] for o in out.values()) >= 2
    stats = immich.store.stats()
    assert stats["assets"] == 4 and stats["same_content_twice"] == 0 and stats["duplicates_answered"] == 1
    assert immich.albums() == {"Trip": ["IMG_0.JPG", "IMG_1.JPG"], "Best of": ["IMG_1.JPG"]}


def test_a_photo_immich_refuses_gets_immichs_reason(tmp_path, immich, monkeypatch):
    items = make_items(tmp_path / "photos", 2, albums={})
    odd = Path(items[1]["local_path"]).with_name("IMG_1.xyz")
    Path(items[1]["local_path"]).rename(odd)
    items[1].update(local_path=str(odd), name=odd.name)
    out = by_name(destination(immich, tmp_path).deliver(items))
    assert out["IMG_0.JPG"]["reason"] == "uploaded"
    bad = out["IMG_1.xyz"]
    assert bad["outcome"] == "failed" and bad["reason"] == "unsupported_type"
    assert bad["detail"]["immich"] == "HTTP 400: Unsupported file type IMG_1.xyz"
    with ImmichServer(max_upload_bytes=100) as small:  # a server (or its proxy) with an upload limit
        monkeypatch.setenv("IMMICH_API_KEY", small.key)
        too = destination(small, tmp_path).deliver(items[:1])[0]
    assert too["outcome"] == "failed" and too["reason"] == "too_large" and "413" in too["detail"]["immich"]


def test_the_same_picture_twice_in_a_batch_is_sent_once(tmp_path, immich):
    items = make_items(tmp_path / "photos", 1, albums={0: ["Trip"]})
    twin = dict(items[0], item_id="local:copy/IMG_0.JPG")
    out = destination(immich, tmp_path).deliver([items[0], twin])
    assert [o["reason"] for o in out] == ["uploaded", "already_present"]
    assert out[1]["detail"]["same_content_as"] == "local:IMG_0.JPG"
    assert immich.store.stats()["uploads_received"] == 1 and immich.albums() == {"Trip": ["IMG_0.JPG"]}


def test_file_created_at_keeps_the_offset_or_says_what_it_fell_back_to(tmp_path):
    cap = {"utc": "2019-03-10T04:15:00+00:00", "offset_minutes": 345, "local": "2019-03-10T10:00:00"}
    assert file_created_at({"capture": cap}) == ("2019-03-10T10:00:00+05:45", "capture_time")
    assert file_created_at({"capture": dict(cap, offset_minutes=None)}) == \
        ("2019-03-10T04:15:00+00:00", "capture_time_utc")
    assert file_created_at({"capture": {"local": "2019-03-10T10:00:00"}}) == \
        ("2019-03-10T10:00:00", "local_time_no_zone")
    p = tmp_path / "x.jpg"
    p.write_bytes(b"x")
    when, source = file_created_at({"capture": {}}, str(p))
    assert source == "file_mtime" and datetime.fromisoformat(when).timestamp() == pytest.approx(p.stat().st_mtime)


def test_inventory_is_one_bulk_check_and_read_back_hashes_the_original(tmp_path, immich):
    items = make_items(tmp_path / "photos", 3, albums={})
    dest = destination(immich, tmp_path)
    targets = [o["detail"]["target"] for o in dest.deliver(items)]
    gone = parse_target(targets[2])[0]
    immich.app.test_client().delete("/api/assets", json={"ids": [gone], "force": True},
                                    headers={"x-api-key": immich.key})
    immich.faults.clear()
    found = dest.inventory(targets)
    assert sorted(found) == sorted(targets[:2]) and requests_to(immich, "bulk-upload-check") == 1
    assert found[targets[0]] == (items[0]["bytes"], parse_target(targets[0])[0])
    back = dest.read_back(targets[1])
    assert back["sha256"] == items[1]["sha256"] and back["size"] == items[1]["bytes"]
    assert dest.read_back(targets[2]) is None


# -- through the escape flow ---------------------------------------------------------------------------------

def _job(tmp_path: Path, immich, folder: Path, **dest) -> dict:
    return {"name": "immich-flow", "ledger": str(tmp_path / "ledger.duckdb"), "work_dir": str(tmp_path / "work"),
            "reports_dir": str(tmp_path / "reports"),
            "source": {"kind": "local", "path": str(folder), "pattern": ["*.jpg", "*.JPG"]},
            "destination": {"kind": "immich", "url": immich.url, "api_key": {"env": "IMMICH_API_KEY"},
                            "albums": "Camera", **dest},
            "default_tz": "Europe/Paris",
            "options": {"batch_size": 3, "concurrency": 2, "processes": 1, "retries": 2, "backoff_seconds": 0.01}}


@pytest.mark.usefixtures("prefect_harness")
def test_flow_run_rerun_and_a_photo_deleted_in_immich(tmp_path, immich):
    from flows.escape import escape
    from tasks.ledger import Ledger

    folder = tmp_path / "camera"
    for i in range(5):
        write_jpeg(folder / f"P{i}.jpg", 50 + i, size=SMALL, taken=datetime(2021, 7, 1, 12, i))
    job = _job(tmp_path, immich, folder)
    first = escape(job)
    assert first["done"] == first["listed"] == 5 and first["failed"] == 0, first
    assets = {a["originalFileName"]: a for a in immich.assets()}
    assert len(assets) == 5 and {k: sorted(v) for k, v in immich.albums().items()} == \
        {"Camera": [f"P{i}.jpg" for i in range(5)]}
    # Paris in July: +02:00, from the job's default zone
    assert assets["P3.jpg"]["fileCreatedAtSent"] == "2021-07-01T12:03:00+02:00"
    assert assets["P3.jpg"]["fileCreatedAt"] == "2021-07-01T10:03:00.000Z"

    uploads = immich.store.stats()["uploads_received"]
    again = escape(job)
    assert again["done"] == 5 and again["failed"] == 0
    assert immich.store.stats()["uploads_received"] == uploads  # a rerun sends no upload
    assert requests_to(immich, "bulk-upload-check") == 2 + 1  # two batches, then the rerun's one look

    # someone deletes a photo in Immich: the next run sees it missing and uploads it again
    gone = assets["P1.jpg"]["id"]
    immich.app.test_client().delete("/api/assets", json={"ids": [gone], "force": True},
                                    headers={"x-api-key": immich.key})
    third = escape(job)
    assert third["missing_at_destination"] == 1 and third["failed"] == 0
    assert immich.store.stats()["uploads_received"] == uploads + 1
    assert sorted(a["originalFileName"] for a in immich.assets()) == [f"P{i}.jpg" for i in range(5)]
    with Ledger(tmp_path / "ledger.duckdb") as led:
        rows = led.query("SELECT reason, detail FROM events WHERE stage = 'deliver' AND reason = 'uploaded'")
    albums = [m for r in rows for m in json.loads(r["detail"])["albums"]]
    assert {m["name"] for m in albums} == {"Camera"} and len(rows) == 6


@pytest.mark.usefixtures("prefect_harness")
def test_flow_stops_at_a_refused_key_with_one_line_and_no_batch_retries(tmp_path, immich, monkeypatch):
    from flows.escape import escape

    monkeypatch.setenv("IMMICH_API_KEY", "wrong-key-7731")
    folder = tmp_path / "camera"
    for i in range(2):
        write_jpeg(folder / f"P{i}.jpg", 70 + i, size=SMALL, taken=datetime(2021, 7, 1, 12, i))
    state = escape(_job(tmp_path, immich, folder), return_state=True)
    assert state.is_failed()
    assert "refused the API key (HTTP 401: Invalid API key)" in state.message and "\n" not in state.message
    assert "wrong-key-7731" not in state.message
    assert requests_to(immich, "bulk-upload-check") == 1  # the batch was not tried again
    assert immich.store.stats()["uploads_received"] == 0


# -- Immich's own CLI against the stand-in ------------------------------------------------------------------

def test_immichs_own_cli_logs_in_and_uploads_into_the_stand_in(tmp_path, immich, immich_cli):
    photos = tmp_path / "photos"
    for k, (album, n) in enumerate((("Trip", 3), ("Home", 2))):
        for i in range(n):
            write_jpeg(photos / album / f"{album}_{i}.jpg", 100 + 10 * k + i, size=SMALL,
                       taken=datetime(2020, 1, 1, 10, i))
    (photos / "Trip" / "Trip_0.jpg.xmp").write_text('<x:xmpmeta xmlns:x="adobe:ns:meta/"/>')
    (photos / "notes.txt").write_text("not a photo")
    cfg = tmp_path / "immich-config"

    login = immich_cli(["login", immich.api_url, immich.key], cfg)
    assert login.returncode == 0, login.stderr + login.stdout
    assert "Logged in as anne@example.org" in login.stdout and (cfg / "auth.yml").exists()

    up = immich_cli(["upload", "--recursive", "--album", "--no-progress", "--json-output", str(photos)], cfg)
    assert up.returncode == 0, up.stderr + up.stdout
    assert "Successfully uploaded 5 new assets" in up.stdout and "Successfully created 2 new albums" in up.stdout
    report = json.loads(re.search(r"^\{.*?^\}", up.stdout, re.S | re.M).group(0))
    reported = {a["id"]: Path(a["filepath"]) for a in report["newAssets"]}
    # the stand-in holds exactly what the CLI reports uploading, by id, name and content
    held = {a["id"]: a for a in immich.assets()}
    assert set(held) == set(reported) and len(held) == 5
    for asset_id, path in reported.items():
        assert held[asset_id]["originalFileName"] == path.name
        assert held[asset_id]["sha1"] == hashlib.sha1(path.read_bytes()).hexdigest()
        assert held[asset_id]["fileSizeInByte"] == path.stat().st_size
    assert {k: sorted(v) for k, v in immich.albums().items()} == \
        {"Trip": ["Trip_0.jpg", "Trip_1.jpg", "Trip_2.jpg"], "Home": ["Home_0.jpg", "Home_1.jpg"]}
    assert [a["sidecarName"] for a in held.values() if a["sidecar"]] == ["Trip_0.jpg.xmp"]

    again = immich_cli(["upload", "--recursive", "--album", "--no-progress", str(photos)], cfg)
    assert again.returncode == 0, again.stderr + again.stdout
    assert "Found 0 new files and 5 duplicates" in again.stdout
    assert immich.store.stats()["assets"] == 5 and immich.store.stats()["albums"] == 2

    info = immich_cli(["server-info"], cfg)
    assert info.returncode == 0 and "Total: 5" in info.stdout, info.stderr + info.stdout

    bad = immich_cli(["login", immich.api_url, "wrong-key"], tmp_path / "other-config")
    assert bad.returncode != 0 and "401" in bad.stderr


def test_photo_escape_and_the_cli_agree_on_what_is_there(tmp_path, immich, immich_cli):
    """What photo-escape delivered, Immich's CLI finds as duplicates (same checksums, same user)."""
    items = make_items(tmp_path / "photos", 3, albums={})
    destination(immich, tmp_path).deliver(items)
    cfg = tmp_path / "immich-config"
    assert immich_cli(["login", immich.api_url, immich.key], cfg).returncode == 0
    up = immich_cli(["upload", "--no-progress", str(tmp_path / "photos")], cfg)
    assert up.returncode == 0 and "Found 0 new files and 3 duplicates" in up.stdout, up.stdout + up.stderr
    assert immich.store.stats()["assets"] == 3



@pytest.mark.usefixtures("prefect_harness")
def test_the_immich_demo_story(tmp_path):
    """``photo-escape demo --story immich``: the plan, the run and the rerun, as printed."""
    from sandbox.demos import immich as demo

    s = demo.run(tmp_path, as_json=True)
    assert s["dry_run_plan"] == {"run_id": s["dry_run_plan"]["run_id"], "would_upload": 12, "already_present": 2,
                                 "albums_to_create": [demo.ALBUM], "uploads_sent": 0}
    assert s["immich"]["uploaded"] == 12 and s["immich"]["already_present"] == 2
    assert s["immich"]["albums_created"] == [demo.ALBUM] and s["immich"]["album_members"] == {demo.ALBUM: 14}
    assert s["immich"]["assets"] == 14 and s["failed"] == 3  # the broken files
    assert s["rerun"]["uploads_sent"] == 0 and s["rerun"]["failed"] == 3


def test_each_photo_goes_with_its_xmp_sidecar_that_exiftool_reads(tmp_path, immich, exiftool):
    """The sidecar sent as ``sidecarData`` is the photo's XMP (tasks/xmp.py), as the folder
    and S3 destinations write it: the restored time with its offset, and its albums."""
    items = make_items(tmp_path / "photos", n=2)
    destination(immich, tmp_path).deliver(items)
    held = {a["originalFileName"]: a for a in immich.assets()}
    xmp = tmp_path / "IMG_1.JPG.xmp"
    xmp.write_text(held["IMG_1.JPG"]["sidecar"], encoding="utf-8")
    got = exiftool(xmp)
    assert str(got["XMP-exif:DateTimeOriginal"]).startswith("2014:05:16 15:01:00-04:00")
    assert set(got["XMP-lr:HierarchicalSubject"]) == {"Albums|Trip", "Albums|Best of"}
