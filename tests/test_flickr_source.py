"""Flickr as a place to escape from: ``source.kind: flickr`` (the account through the API,
over real HTTP against the sandbox stand-in, flickrapi unmodified) and
``source.kind: flickr_export`` (the "request my data" zips, read in place)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pytest

from reports.build import write_reports
from sandbox.flickr_account import write_export
from tasks.sources.flickr import FlickrAccessRefused, FlickrSource, FlickrSourceConfig
from tasks.sources.flickr_export import FlickrExportConfig, FlickrExportSource, ids_in_name

OPTIONS = SimpleNamespace(concurrency=4, retries=3, backoff_seconds=0.01, max_bytes=10**9)


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _source(acct, tmp_path: Path, **over) -> FlickrSource:
    cfg = FlickrSourceConfig.model_validate(acct.source(**over))
    return FlickrSource(cfg, workdir=tmp_path / "work" / "run-1", options=OPTIONS)


def _listed(source) -> list[dict]:
    return [item for page in source.list_pages() for item in page]


def _rows(ledger: str, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(ledger, read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


# -- the account through the API ------------------------------------------------------------------
def test_the_listing_carries_every_photos_metadata_in_a_handful_of_calls(escape_account, tmp_path):
    acct = escape_account("pro")
    source = _source(acct, tmp_path)
    items = _listed(source)
    assert sorted(i["photo_id"] for i in items) == sorted(acct.truth)  # private ones and videos included
    # no call per photo: the albums once (list + each album), then pages of the listing
    calls = [m for m, _, _ in acct.state.calls]
    assert "flickr.photos.getInfo" not in calls and "flickr.photos.getSizes" not in calls
    assert calls.count("flickr.photosets.getList") == 1
    assert calls.count("flickr.photosets.getPhotos") == len(acct.state.photosets)
    assert calls.count("flickr.people.getPhotos") == -(-len(acct.truth) // 4)  # per_page 4
    granularity = {0: "exact", 4: "month", 6: "year", 8: "circa"}
    for item in items:
        t, meta = acct.truth[item["photo_id"]], item["meta"]
        assert meta["time_provenance"] == "source:flickr"
        assert meta["time_local"] == t.taken.replace(" ", "T")
        assert meta["time_granularity"] == granularity[t.granularity] == item["date_taken_granularity"]
        assert sorted(meta["albums"]) == sorted(t.albums)
        assert meta["visibility"] == t.visibility
        assert meta.get("tags", []) == t.tags
        assert meta.get("title", "") == t.title
        if t.latitude is None:
            assert "latitude" not in meta
        else:
            assert (meta["latitude"], meta["longitude"], meta["location_accuracy"]) == (t.latitude, t.longitude,
                                                                                       t.accuracy)
        assert item["media"] == t.media and item["fingerprint"].startswith(str(acct.state.photos[t.id].lastupdate))
    by_title = {acct.truth[i["photo_id"]].title: i for i in items}
    # a year-only date stays a year: 1 January at midnight is not taken for the moment it was taken
    assert by_title["Grandma's wedding"]["meta"]["time_granularity"] == "year"
    assert by_title["Uncle Jo's first car"]["meta"]["time_granularity"] == "month"
    assert by_title["Village fair"]["meta"]["time_granularity"] == "circa"
    assert len(by_title["Beach at Biarritz"]["meta"]["albums"]) == 2  # several albums
    facts = source.report_facts()
    assert facts["listing_complete"] is True
    assert facts["flickr"]["dates_by_granularity"] == {"circa": 1, "exact": 7, "month": 1, "year": 1}
    assert facts["flickr"]["listing_api_calls"] == len(calls) < len(items)
    assert facts["flickr"]["private"] == sum(t.visibility != "public" for t in acct.truth.values())


def test_a_pro_account_gives_originals_and_videos(escape_account, tmp_path):
    acct = escape_account("pro")
    source = _source(acct, tmp_path)
    outs = source.fetch(_listed(source))
    assert [o["outcome"] for o in outs] == ["ok"] * len(acct.truth)
    assert {o["reason"] for o in outs} == {"original"}
    for o in outs:
        photo = acct.state.photos[o["item"]["photo_id"]]
        assert o["sha256"] == _sha(photo.path) == _sha(o["item"]["local_path"])  # the very original's bytes
    videos = [o for o in outs if o["item"]["media"] == "video"]
    assert len(videos) == 2 and all(o["detail"]["size_label"] == "Video Original" for o in videos)
    # one getSizes per video, none per photo
    assert acct.state.calls_to("flickr.photos.getSizes") == 2


def test_a_free_account_gives_its_largest_copies_recorded_size_limited(escape_account, tmp_path):
    from PIL import Image

    acct = escape_account("free")
    source = _source(acct, tmp_path)
    items = _listed(source)
    assert all(not i["original_offered"] for i in items if i["media"] == "photo")
    outs = source.fetch(items)
    assert {o["outcome"] for o in outs} == {"ok"} and {o["reason"] for o in outs} == {"size_limited"}
    for o in outs:
        if o["item"]["media"] == "photo":
            assert (o["detail"]["size_label"], o["detail"]["width"], o["detail"]["height"]) == ("Large", 1024, 768)
            with Image.open(o["item"]["local_path"]) as im:
                assert im.size == (1024, 768)
            assert o["sha256"] != _sha(acct.state.photos[o["item"]["photo_id"]].path)
        else:
            assert o["detail"]["size_label"] == "Site MP4"
    # the same photo asked with size: largest from a Pro account is the largest rendered copy
    pro = escape_account("pro")
    largest = _source(pro, tmp_path / "pro", size="largest")
    got = {o["reason"] for o in largest.fetch([i for i in _listed(largest) if i["media"] == "photo"][:2])}
    assert got == {"largest_copy"}


def test_one_album_only_and_photos_knowing_all_their_albums(escape_account, tmp_path):
    acct = escape_account("pro")
    set_id = next(s for s, t in acct.state.photoset_titles.items() if t == "Best of")
    items = _listed(_source(acct, tmp_path, photoset_id=set_id))
    assert sorted(i["photo_id"] for i in items) == sorted(acct.state.photosets[set_id])
    assert all("Best of" in i["meta"]["albums"] for i in items)
    assert any(len(i["meta"]["albums"]) > 1 for i in items)


def test_transient_errors_are_retried_and_every_attempt_spends_the_budget(escape_account, tmp_path):
    acct = escape_account("pro")
    f105 = acct.state.inject("flickr.people.getPhotos", code=105, times=2)
    f502 = acct.state.inject("flickr.photosets.getList", status=502, times=1)
    source = _source(acct, tmp_path, calls_per_hour=360, burst=40)  # refills 0.1 call a second: the count stays exact
    items = _listed(source)
    assert len(items) == len(acct.truth) and f105.fired == 2 and f502.fired == 1
    assert source.client.stats.retried == ["http_502", "flickr_105", "flickr_105"]
    made = len(acct.state.calls)
    assert source.client.stats.calls == made
    left = json.loads((tmp_path / "work" / "flickr-calls.json").read_text())["tokens"]
    assert left == pytest.approx(40 - made, abs=0.5)  # retries spent the job's budget too
    # the budget file is the job's: the next run (another work folder under it) draws from it
    assert _source(acct, tmp_path).budget_path == tmp_path / "work" / "flickr-calls.json"


def test_the_call_budget_is_never_exceeded(escape_account, tmp_path):
    """5 calls a second with bursts of 3: the stand-in's own clock never sees more (0.1 s
    allowed for the first call arriving late, half the spacing: one call too many is 0.2 s off)."""
    acct = escape_account("pro")
    source = _source(acct, tmp_path, calls_per_hour=18_000, burst=3, per_page=2)
    _listed(source)
    stamps = sorted(t for _, _, t in acct.state.calls)
    assert len(stamps) >= 9
    for i, t in enumerate(stamps):
        assert t - stamps[0] >= (i + 1 - 3) / 5 - 0.1, (i, t - stamps[0])


def test_a_listing_flickr_keeps_failing_stops_with_one_line(escape_account, tmp_path):
    acct = escape_account("pro")
    acct.state.inject("flickr.people.getPhotos", code=105, times=10)
    with pytest.raises(Exception) as err:
        _listed(_source(acct, tmp_path))
    assert str(err.value).startswith("Flickr failed while listing page 1 of the photos (flickr_105, after 4 "
                                     "attempts)") and "\n" not in str(err.value)  # options.retries = 3


def test_errors_about_the_account_stop_with_one_line(escape_account, tmp_path, monkeypatch):
    acct = escape_account("pro")
    monkeypatch.setenv("PE_TEST_FLICKR_TOKEN", "a-revoked-token")
    with pytest.raises(FlickrAccessRefused) as err:
        _listed(_source(acct, tmp_path))
    text = str(err.value)
    assert "error 98" in text and "oauth_token" in text and "\n" not in text
    assert "a-revoked-token" not in text
    monkeypatch.setenv("PE_TEST_FLICKR_TOKEN", acct.state.token)
    acct.state.inject("flickr.people.getPhotos", code=99, times=1)
    with pytest.raises(FlickrAccessRefused, match="error 99: insufficient permissions"):
        _listed(_source(acct, tmp_path, albums=False))


def test_errors_about_one_photo_are_its_reason(escape_account, tmp_path):
    acct = escape_account("pro")
    source = _source(acct, tmp_path)
    items = _listed(source)
    v1, v2 = sorted(acct.ids("video"))
    photo = sorted(acct.ids("photo"))[0]
    acct.state.inject("flickr.photos.getSizes", code=1, photo_id=v1)
    acct.state.inject("flickr.photos.getSizes", code=2, photo_id=v2)
    acct.state.inject("image", status=503, times=2, photo_id=photo)  # retried, then fine
    acct.state.delete(sorted(acct.ids("photo"))[1])  # deleted between listing and fetching
    outs = {o["item"]["photo_id"]: o for o in source.fetch(items)}
    assert (outs[v1]["outcome"], outs[v1]["reason"]) == ("failed", "flickr_photo_not_found")
    assert (outs[v2]["outcome"], outs[v2]["reason"]) == ("failed", "flickr_permission_denied")
    assert outs[photo]["outcome"] == "ok" and outs[photo]["detail"]["retried"] == ["http_503", "http_503"]
    assert outs[sorted(acct.ids("photo"))[1]]["reason"] == "not_found"
    assert sum(o["outcome"] == "ok" for o in outs.values()) == len(items) - 3


# -- through the escape flow ------------------------------------------------------------------------
@pytest.mark.usefixtures("prefect_harness")
def test_the_account_escapes_and_a_rerun_fetches_only_what_changed(escape_account, tmp_path):
    from flows.escape import escape

    acct = escape_account("pro")
    job = acct.job(tmp_path)
    first = escape(job)
    n = len(acct.truth)
    assert first["listed"] == first["done"] == n and first["failed"] == 0, first
    assert first["flickr"]["photos"] == 8 and first["flickr"]["videos"] == 2 and first["listing_complete"]
    delivered = {p.name: p for p in (tmp_path / "archive").rglob("*") if p.is_file()}
    assert len(delivered) == n
    stored = {_sha(p.path) for p in acct.state.photos.values()}
    assert {_sha(p) for p in delivered.values()} == stored  # every original, byte for byte, videos too
    # the metadata is on the listed items in the ledger
    details = dict(_rows(first["ledger"], "SELECT item_id, detail FROM items WHERE job = ?", [job["name"]]))
    wedding = next(pid for pid, t in acct.truth.items() if t.title == "Grandma's wedding")
    meta = json.loads(details[f"flickr:{wedding}"])["meta"]
    assert meta["time_granularity"] == "year" and meta["time_local"] == "1935-01-01T00:00:00"
    assert sorted(meta["albums"]) == ["Best of", "Grandparents"]
    # the report has the account's section
    html = Path(first["report"]).read_text()
    assert "A Flickr account" in html and "originals downloaded" in html

    # on Flickr: one photo's title edited, one deleted
    edited, deleted = sorted(acct.ids("photo"))[2], sorted(acct.ids("photo"))[3]
    acct.state.edit(edited, title="A new title")
    acct.state.delete(deleted)
    second = escape(job)
    fetched = _rows(second["ledger"], "SELECT item_id FROM events WHERE run_id = ? AND stage = 'fetch'",
                    [second["run_id"]])
    assert fetched == [(f"flickr:{edited}",)]  # only the changed photo is fetched again
    assert second["listed"] == n - 1 and second["failed"] == 0
    # the deleted photo: named by the report, still at the destination
    assert (delivered[next(k for k in delivered if deleted in k)]).exists()
    report = write_reports(second["ledger"], run_id=second["run_id"], out_dir=tmp_path / "again")
    assert report["summary"]["stories"]["flickr"]["flickr-gone"] == 1
    assert deleted in Path(second["report"]).read_text()


@pytest.mark.usefixtures("prefect_harness")
def test_a_free_accounts_escape_reports_its_size_limited_photos(escape_account, tmp_path):
    from flows.escape import escape

    acct = escape_account("free")
    s = escape(acct.job(tmp_path))
    assert s["done"] == s["listed"] == len(acct.truth), s
    report = write_reports(s["ledger"], run_id=s["run_id"], out_dir=tmp_path / "again")["summary"]["stories"]["flickr"]
    assert report["flickr-size-limited"] == len(acct.truth) and report["flickr-originals"] == 0
    assert report["flickr-dates-year"] == 1 and report["flickr-dates-circa"] == 1


# -- the export archive -----------------------------------------------------------------------------
def test_file_names_give_the_photo_id():
    assert ids_in_name("beach-at-biarritz_52000000001_o.jpg") == ["52000000001"]
    assert ids_in_name("52000000006_f6e5d4c3b2_o.jpg") == ["52000000006"]
    assert ids_in_name("IMG_20110718_52000000001_o.jpg") == ["52000000001", "20110718"]
    assert ids_in_name("waves_52000000009.mp4") == ["52000000009"]
    assert ids_in_name("holiday.jpg") == []


def _export_source(folder: Path, tmp_path: Path) -> FlickrExportSource:
    cfg = FlickrExportConfig.model_validate({"kind": "flickr_export", "path": str(folder)})
    return FlickrExportSource(cfg, workdir=tmp_path / "work" / "run-1", options=OPTIONS)


def test_the_export_is_read_in_place_and_matched_by_photo_id(escape_account, tmp_path):
    acct = escape_account("pro")
    folder = tmp_path / "export"
    zips = write_export(acct.state, folder, per_zip=3, json_parts=3)
    before = sorted(p.name for p in folder.iterdir())
    source = _export_source(folder, tmp_path)
    items = _listed(source)
    assert sorted(i["photo_id"] for i in items) == sorted(acct.truth)
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing extracted beside the zips
    for item in items:
        t, meta = acct.truth[item["photo_id"]], item["meta"]
        assert meta["time_local"] == t.taken.replace(" ", "T") and meta["time_provenance"] == "source:flickr"
        assert sorted(meta["albums"]) == sorted(t.albums) and meta["visibility"] == t.visibility
        assert meta.get("tags", []) == t.tags and meta["sidecar"] == f"photo_{t.id}.json"
        if t.latitude is not None:  # micro-degrees in the export
            assert meta["latitude"] == pytest.approx(t.latitude) and meta["longitude"] == pytest.approx(t.longitude)
        # the export says no granularity: year and month are read from Flickr's way of storing them
        want = {0: "exact", 4: "month", 6: "year", 8: "year"}[t.granularity]
        assert meta["time_granularity"] == want and meta["time_granularity_from"] == "inferred"
    outs = source.fetch(items)
    assert {o["outcome"] for o in outs} == {"ok"} and {o["reason"] for o in outs} == {None}
    for o in outs:
        assert o["sha256"] == _sha(acct.state.photos[o["item"]["photo_id"]].path)
    # parts in any order: the same listing from the archives renamed and shuffled
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    for n, z in enumerate(reversed(zips)):
        (shuffled / f"z{n}-{z.name}").write_bytes(z.read_bytes())
    again = _listed(_export_source(shuffled, tmp_path))
    assert {i["item_id"]: i["meta"] for i in again} == {i["item_id"]: i["meta"] for i in items}


def test_a_json_without_original_and_an_original_without_json_are_listed_never_lost(escape_account, tmp_path):
    acct = escape_account("pro")
    no_json, no_original = sorted(acct.ids("photo"))[:2]
    write_export(acct.state, tmp_path / "export", drop_json={no_json}, drop_original={no_original})
    source = _export_source(tmp_path / "export", tmp_path)
    items = _listed(source)
    assert sorted(i["photo_id"] for i in items) == sorted(acct.truth)  # both are there
    outs = {o["item"]["photo_id"]: o for o in source.fetch(items)}
    assert (outs[no_json]["outcome"], outs[no_json]["reason"]) == ("ok", "no_metadata")
    assert outs[no_json]["sha256"] == _sha(acct.state.photos[no_json].path)
    assert (outs[no_original]["outcome"], outs[no_original]["reason"]) == ("failed", "original_not_in_export")
    assert no_original in outs[no_original]["detail"]["original_url"]
    facts = source.report_facts()["flickr_export"]
    assert (facts["originals_without_json"], facts["json_without_original"]) == (1, 1)


def test_a_corrupt_member_is_a_reason_not_a_crash(escape_account, tmp_path):
    acct = escape_account("pro")
    zips = write_export(acct.state, tmp_path / "export", per_zip=20)
    media = next(z for z in zips if z.name.startswith("data-download"))
    with zipfile.ZipFile(media) as z:
        info = z.infolist()[0]
        offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw = bytearray(media.read_bytes())
    raw[offset + 500] ^= 0xFF  # a flipped byte in the first original: its CRC no longer matches
    media.write_bytes(bytes(raw))
    source = _export_source(tmp_path / "export", tmp_path)
    outs = source.fetch(_listed(source))
    bad = [o for o in outs if o["outcome"] == "failed"]
    assert [o["reason"] for o in bad] == ["corrupt_in_archive"] and "CRC" in bad[0]["detail"]["message"]
    assert sum(o["outcome"] == "ok" for o in outs) == len(acct.truth) - 1


@pytest.mark.usefixtures("prefect_harness")
def test_the_export_escapes_through_the_flow(escape_account, tmp_path):
    from flows.escape import escape

    acct = escape_account("pro")
    missing = sorted(acct.ids("photo"))[0]
    write_export(acct.state, tmp_path / "export", drop_original={missing})
    job = acct.job(tmp_path, name="flickr-export", source={})
    job["source"] = {"kind": "flickr_export", "path": str(tmp_path / "export")}
    s = escape(job)
    assert s["listed"] == len(acct.truth) and s["done"] == len(acct.truth) - 1 and s["failed"] == 1, s
    assert s["flickr_export"]["json_without_original"] == 1
    failed = _rows(s["ledger"], "SELECT item_id, reason FROM item_status WHERE status = 'failed'")
    assert failed == [(f"flickr:{missing}", "original_not_in_export")]
    story = write_reports(s["ledger"], run_id=s["run_id"], out_dir=tmp_path / "again")["summary"]["stories"]["flickr"]
    assert story["flickr-export-no-original"] == 1 and story["flickr-export-matched"] == len(acct.truth) - 1
    assert story["flickr-albums"] == 3 and story["flickr-dates-year"] == 2  # a circa date reads as its year


@pytest.mark.usefixtures("prefect_harness")
def test_the_flickr_demo(tmp_path):
    from sandbox.demos import flickr as demo

    s = demo.run(tmp_path, True)
    assert s["listed"] == s["done"] == s["account"]["photos"] + s["account"]["videos"], s
    assert s["originals"] == s["listed"] and s["size_limited"] == 0
    assert s["flickr"]["dates_by_granularity"] == {"circa": 3, "exact": 17, "month": 3, "year": 3}
    assert s["rerun"]["fetched_again"] == 0 and s["objects"] >= 2 * s["listed"]


def test_export_metadata_in_the_shapes_exports_have():
    from tasks.sources.flickr_export import export_meta

    doc = {"id": "1", "name": "Pier", "date_taken": "1962-06-01 00:00:00", "privacy": "friend & family",
           "geo": [{"latitude": "49696401", "longitude": "-123159753", "accuracy": "15"}],
           "tags": [{"tag": "sea"}, "pier"], "albums": ["72157", {"id": "9", "title": "Given"}]}
    meta = export_meta(doc, ["From albums.json"], "photo_1.json", {"72157": "By id"})
    assert meta["albums"] == ["From albums.json", "By id", "Given"]
    assert (meta["latitude"], meta["longitude"], meta["location_accuracy"]) == (49.696401, -123.159753, 15)
    assert meta["visibility"] == "friends & family" and meta["tags"] == ["sea", "pier"]
    assert (meta["time_local"], meta["time_granularity"]) == ("1962-06-01T00:00:00", "month")
    decimal = export_meta({"geo": {"latitude": 48.8566, "longitude": "2.3522"}, "date_taken": "1935-01-01 00:00:00",
                           "date_taken_granularity": 8}, [], "photo_2.json")
    assert (decimal["latitude"], decimal["longitude"]) == (48.8566, 2.3522)
    assert (decimal["time_granularity"], decimal["time_granularity_from"]) == ("circa", "source")
    assert export_meta({"date_taken": "2011-07-18 16:42:05"}, [], "p.json")["time_granularity"] == "exact"
