"""``source.kind: takeout``: Google Photos Takeout exports read in place.

The naming rules one by one (each real-world case from the importers' issue trackers),
then a two-part export made from real photographs (sandbox/takeout.py) run through the
escape flow for real: each photo once, albums recorded, sidecars in the other part,
videos, a broken part, a hostile member name, an 800 MB member, a rerun."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import unicodedata
import zipfile
from pathlib import Path

import duckdb
import pytest

from sandbox import takeout as export
from tasks import takeout
from tasks.ledger import Ledger
from tests.fixtures.jobs import local_job


# -- the naming rules, each on its own ------------------------------------------------------------------
def _match(media: list[str], jsons: list[str], titles: dict[str, str] | None = None) -> dict:
    titles = titles or {}
    found = takeout.match_folder(media, {takeout.nfc(j): j for j in jsons}, lambda j: titles.get(j))
    return {m: (x.sidecar, x.rule) for m, x in found.items()}


@pytest.mark.parametrize("photo, sidecar, rule", [
    ("IMG_20190301_101500.jpg", "IMG_20190301_101500.jpg.json", "json"),
    ("IMG_20190302_111500.jpg", "IMG_20190302_111500.jpg.supplemental-metadata.json", "supplemental"),
    # the new naming cut to 46: any prefix of supplemental-metadata remains
    ("PXL_20190303_122000123.jpg", "PXL_20190303_122000123.jpg.supplemental-metada.json", "supplemental_clipped"),
    ("Screenshot_20190304-131500_Messenger.jpg", "Screenshot_20190304-131500_Messenger.jpg.suppl.json",
     "supplemental_clipped"),
    ("IMG_20190305_141500_HDR_BURST_0012_COVER.jpg", "IMG_20190305_141500_HDR_BURST_0012_COVER.jpg.s.json",
     "supplemental_clipped"),
    # a suffix another tool cut shorter than Google does
    ("IMG_1.jpg", "IMG_1.jpg.supp.json", "supplemental_clipped"),
    # the name itself cut (the issue's example; immich-go's ORIGINA/ORIGIN case)
    ("WhatsApp Image 2019-12-25 at 14.50.00 from the .jpg", "WhatsApp Image 2019-12-25 at 14.50.00 from the.json",
     "name_clipped"),
    ("PXL_20230809_203449253.LONG_EXPOSURE-02.ORIGINA.jpg", "PXL_20230809_203449253.LONG_EXPOSURE-02.ORIGIN.json",
     "name_clipped"),
    # 46 UTF-16 code units: an emoji counts two
    ("😀😃😄😁😆😅😂🤣🥲☺️😊😇🙂🙃😉😌😍🥰😘😗😙😚😋😛.jpg", "😀😃😄😁😆😅😂🤣🥲☺️😊😇🙂🙃😉😌😍🥰😘😗😙😚😋.json", "name_clipped"),
    # numbered duplicates: the counter moves after the rest of the sidecar's name
    ("IMG_1234(1).jpg", "IMG_1234.jpg(1).json", "numbered"),
    ("IMG_1234(1).jpg", "IMG_1234.jpg.supplemental-metadata(1).json", "numbered"),
    ("IMG_2710(1).HEIC", "IMG_2710.HEIC(1).json", "numbered"),
    ("13039_327707840323_537645323_9470255_27214_n(1).jpg", "13039_327707840323_537645323_9470255_27214_n.j(1).json",
     "numbered"),
    ("Backyard_ceremony_wedding_photography_xxxxxxx_m(494).jpg",
     "Backyard_ceremony_wedding_photography_xxxxxxx_(494).json", "numbered"),
    # a photo really called Scan(1).jpg
    ("Scan(1).jpg", "Scan(1).jpg.supplemental-metadata.json", "supplemental"),
])
def test_a_naming_rule_finds_the_sidecar(photo, sidecar, rule):
    assert _match([photo], [sidecar, "metadata.json", "print-subscriptions.json"]) == {photo: (sidecar, rule)}


@pytest.mark.parametrize("edited, original_sidecar", [
    ("IMG_1-edited.jpg", "IMG_1.jpg.json"),
    ("IMG_1-bearbeitet.jpg", "IMG_1.jpg.supplemental-metadata.json"),
    (unicodedata.normalize("NFD", "PXL_20220405_090123740.PORTRAIT-modifié.jpg"),
     "PXL_20220405_090123740.PORTRAIT.jpg.json"),
    ("IMG_1-redigerad.jpg", "IMG_1.jpg.json"),  # a language not in the list: the original is beside it
])
def test_an_edited_copy_takes_its_originals_sidecar(edited, original_sidecar):
    original = original_sidecar.split(".json")[0].replace(".supplemental-metadata", "")
    got = _match([edited, original], [original_sidecar])
    assert got[edited] == (original_sidecar, "edited") and got[original][0] == original_sidecar


def test_a_dash_word_is_no_edit_without_its_original():
    assert _match(["party-fun.jpg"], ["party.jpg.json"]) == {"party-fun.jpg": (None, None)}


@pytest.mark.parametrize("photo, video, sidecar", [
    ("PXL_20231118_035751175.MP.jpg", "PXL_20231118_035751175.MP", "PXL_20231118_035751175.MP.jpg.json"),
    ("IMG_5000.HEIC", "IMG_5000.MOV", "IMG_5000.HEIC.supplemental-metadata.json"),
])
def test_the_video_of_a_motion_photo_takes_its_photos_sidecar(photo, video, sidecar):
    assert _match([photo, video], [sidecar]) == {photo: (sidecar, _match([photo], [sidecar])[photo][1]),
                                                 video: (sidecar, "motion")}


def test_a_sidecar_no_name_reaches_is_found_by_its_title():
    """Uploaded without an extension: the title and the sidecar's name have none."""
    got = _match(["IMG_20190311_140000.jpg"], ["IMG_20190311_140000.json"],
                 {"IMG_20190311_140000.json": "IMG_20190311_140000"})
    assert got == {"IMG_20190311_140000.jpg": ("IMG_20190311_140000.json", "title")}


def test_numbered_sidecars_are_never_swapped():
    """immich-go's negative cases: a counter must agree, and an original's sidecar is its own."""
    got = _match(["DSC_0103.JPG", "DSC_0104.JPG", "DSC_0104(1).JPG", "DSC_0102(1).JPG"],
                 ["DSC_0103.JPG(1).json", "DSC_0104.JPG.json", "DSC_0102.JPG(2).json"])
    assert got == {"DSC_0103.JPG": (None, None), "DSC_0104.JPG": ("DSC_0104.JPG.json", "json"),
                   "DSC_0104(1).JPG": (None, None), "DSC_0102(1).JPG": (None, None)}


def test_a_cut_name_two_photos_share_goes_by_the_title():
    """Two long names with the same first 46 characters: the sidecar's title says whose it is."""
    a = "WhatsApp Image 2019-12-25 at 14.50.00 from the_a.jpg"
    b = "WhatsApp Image 2019-12-25 at 14.50.00 from the_b.jpg"
    cut = "WhatsApp Image 2019-12-25 at 14.50.00 from the"
    titles = {f"{cut}.json": "WhatsApp Image 2019-12-25 at 14.50.00 from the_b group.jpg"}
    assert _match([a, b], [f"{cut}.json"], titles) == {a: (None, None), b: (f"{cut}.json", "name_clipped")}
    # and a title that fits neither gives it to nobody: no guessing
    assert _match([a, b], [f"{cut}.json"], {f"{cut}.json": "Something else.jpg"}) == {a: (None, None),
                                                                                      b: (None, None)}


def test_what_a_sidecar_says():
    doc = export.sidecar_doc("IMG_1.jpg", export.datetime(2019, 3, 10, 4, 15), place=(27.7, 85.3),
                             description="Boudhanath", favourite=True)
    meta = takeout.sidecar_meta(doc)
    assert meta == {"time_utc": "2019-03-10T04:15:00+00:00", "time_provenance": "sidecar:utc",
                    "latitude": 27.7, "longitude": 85.3, "title": "IMG_1.jpg", "description": "Boudhanath",
                    "favourite": True}
    # zeros mean no place; geoDataExif where geoData has none; no photoTakenTime, no time (never creationTime)
    doc = export.sidecar_doc("IMG_2.jpg", None)
    doc["geoDataExif"] = {"latitude": -33.9, "longitude": 18.4}
    assert takeout.sidecar_meta(doc) == {"latitude": -33.9, "longitude": 18.4, "title": "IMG_2.jpg"}
    assert takeout.album_title({"title": "Trip", "date": {"timestamp": "0"}}) == "Trip"
    assert takeout.album_title({"albumData": {"title": "Old trip", "date": {}}}) == "Old trip"
    assert takeout.album_title(doc) is None and takeout.album_title({"comments": []}) is None


# -- an export, listed ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def made(tmp_path_factory) -> export.Export:
    return export.make_export(tmp_path_factory.mktemp("takeout"))


def _listed(path) -> tuple[list[dict], takeout.Listing]:
    listing = takeout.Listing()
    return [i for page in takeout.items(takeout.scan(path), listing=listing) for i in page], listing


def test_every_photo_is_listed_once_with_its_sidecar(made):
    items, listing = _listed(made.root)
    by_sha = {p.sha256: p for p in made.photos}
    assert len(items) == len(by_sha) == len(made.photos)
    listed = {}
    for item in items:
        with takeout.open_item(made.root, item) as fh:
            listed[hashlib.sha256(fh.read()).hexdigest()] = item
    assert set(listed) == set(by_sha)
    for sha, item in listed.items():
        truth = by_sha[sha]
        assert item["meta"].get("sidecar_rule") == truth.rule, truth.key
        assert item["name"] == truth.delivered_name, truth.key
        assert item["meta"].get("albums", []) == truth.albums, truth.key
        assert (item.get("media") == "video") == truth.video, truth.key
        told = truth.utc + export.timedelta(days=2) if truth.corrected else truth.utc
        assert item["meta"].get("time_utc") == (told.isoformat() + "+00:00" if truth.rule else None), truth.key
    # counts by rule, as the report and the demo give them
    assert listing.rules == {r: sum(p.rule == r for p in made.photos) for r in {p.rule for p in made.photos} if r}
    assert listing.no_sidecar == 1 and listing.albums == 3


def test_a_photo_in_three_albums_is_listed_once_with_three_albums(made):
    items, listing = _listed(made.root)
    three = [i for i in items if len(i["meta"].get("albums", [])) == 3]
    assert len(three) == 1
    item = three[0]
    assert item["meta"]["albums"] == sorted(export.ALBUMS)  # the titles, not Google's folder names
    assert item["relpath"].startswith("Photos from 2019/") and len(item["copies"]) == 3
    assert listing.copies_merged == sum(len(p.albums) for p in made.photos if p.folder.startswith("Photos from"))


def test_a_sidecar_in_the_other_part_is_found(made):
    items, _ = _listed(made.root)
    for key in ("other-part", "other-part-2", "numbered-old"):
        truth = made.by_key(key)
        item = next(i for i in items if i["member"].endswith("/" + truth.name))
        sidecar_part = item["meta"]["sidecar"].split(":", 1)[0]
        assert sidecar_part != item["part"], key
        assert item["meta"]["time_utc"] == truth.utc.isoformat() + "+00:00"


def test_json_files_that_describe_no_photo_are_never_listed(made):
    items, listing = _listed(made.root)
    names = {i["member"].rsplit("/", 1)[-1] for i in items}
    assert not any(n.endswith((".json", ".html")) for n in names)
    assert listing.not_photos == len(export.NOT_PHOTOS) + len(export.ALBUMS) + 2  # comments, archive_browser


def test_files_that_are_no_photo_are_counted_not_listed(tmp_path):
    with zipfile.ZipFile(tmp_path / "takeout-001.zip", "w") as zf:
        zf.writestr("Takeout/archive_browser.html", "<html></html>")
        zf.writestr("Takeout/Google Photos/print-subscriptions.json", "{}")
        zf.writestr("Takeout/Google Photos/Photos from 2019/IMG_1.jpg", export.jpeg(3, None))
        zf.writestr("Takeout/Google Photos/Photos from 2019/notes.txt", "a note")
        zf.writestr("__MACOSX/Takeout/Google Photos/Photos from 2019/._IMG_1.jpg", b"\0\5\x16\7")
    items, listing = _listed(tmp_path)
    assert [i["item_id"] for i in items] == ["takeout:Photos from 2019/IMG_1.jpg"]
    facts = listing.facts()
    assert facts["takeout_other_files"] == 3 and facts["takeout_not_photos"] == 4
    assert facts["takeout_other_examples"] == ["Takeout/Google Photos/Photos from 2019/notes.txt"]
    assert facts["takeout_no_sidecar"] == 1


def test_an_extracted_tree_lists_as_its_zips(made, tmp_path):
    for part in made.parts:
        with zipfile.ZipFile(part) as zf:
            zf.extractall(tmp_path)
    from_zips, _ = _listed(made.root)
    from_tree, listing = _listed(tmp_path / "Takeout")
    key = ("item_id", "name", "relpath", "size", "meta")
    assert [{k: i[k] for k in key} | {"meta": {k: v for k, v in i["meta"].items() if k != "sidecar"}}
            for i in from_tree] == \
        [{k: i[k] for k in key} | {"meta": {k: v for k, v in i["meta"].items() if k != "sidecar"}}
         for i in from_zips]
    assert listing.copies_merged > 0 and not any(i.get("part") for i in from_tree)


def test_a_broken_part_is_named(made, tmp_path):
    (tmp_path / made.parts[0].name).write_bytes(made.parts[0].read_bytes())
    data = made.parts[1].read_bytes()
    (tmp_path / made.parts[1].name).write_bytes(data[: len(data) * 2 // 3])  # cut short: no central directory
    with pytest.raises(takeout.BrokenPart, match=made.parts[1].name):
        takeout.scan(tmp_path)


# -- through the escape flow ----------------------------------------------------------------------------------
def _job(tmp_path: Path, source_path: Path, name: str = "takeout-test", **source) -> dict:
    return local_job(tmp_path, name, {"batch_size": 8, "processes": 1},
                     source={"kind": "takeout", "path": str(source_path), **source}, default_tz=export.ZONE)


def _query(ledger: str, sql: str, params=None) -> list[tuple]:
    con = duckdb.connect(ledger, read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def _archive(root: Path) -> dict[str, Path]:
    return {hashlib.sha256(p.read_bytes()).hexdigest(): p for p in root.rglob("*")
            if p.is_file() and ".photo-escape" not in str(p)}


@pytest.mark.usefixtures("prefect_harness")
def test_an_export_escapes_each_photo_once_and_a_rerun_changes_nothing(made, tmp_path):
    from flows.escape import escape

    s = escape(_job(tmp_path, made.root))
    truth = {p.sha256: p for p in made.photos}
    assert s["listed"] == len(truth) and s["done"] == len(truth) and s["failed"] == 0 and s["skipped"] == 0
    delivered = _archive(tmp_path / "archive")
    assert set(delivered) == set(truth)  # every photo and video, each exactly once
    assert len(list(p for p in (tmp_path / "archive").rglob("*") if p.is_file())) == len(truth)
    for sha, path in delivered.items():
        assert path.name == truth[sha].delivered_name
    # albums in the ledger: a table a person can query
    rows = _query(s["ledger"], "SELECT album, count(*) FROM albums GROUP BY ALL ORDER BY 1")
    assert dict(rows) == {a: sum(a in p.albums for p in made.photos) for a in export.ALBUMS}
    three = _query(s["ledger"], "SELECT item_id FROM albums GROUP BY item_id HAVING count(*) = 3")
    assert [r[0] for r in three] == [f"takeout:Photos from 2019/{made.by_key('json').name}"]
    # videos went through as files; the photo with no sidecar is listed with its reason, not failed
    reasons = dict(_query(s["ledger"], "SELECT reason, count(*) FROM events WHERE stage = 'hash' GROUP BY ALL"))
    assert reasons.get("video") == sum(p.video for p in made.photos)
    no_sidecar = _query(s["ledger"], "SELECT item_id FROM events WHERE stage = 'fetch' AND reason = 'no_sidecar'")
    assert [r[0] for r in no_sidecar] == [f"takeout:Photos from 2020/{made.by_key('no-sidecar').name}"]
    report = Path(s["report"])
    assert "no_sidecar" in report.read_text()  # the reasons table: fetch ok no_sidecar 1
    csv = (report.parent / "outcomes.csv").read_text().splitlines()
    assert [line for line in csv if "no_sidecar" in line][0].split(",")[4] == '"done"'
    assert s["takeout_albums"] == 3 and s["takeout_videos"] == 3 and s["takeout_no_sidecar"] == 1
    # the work folder holds nothing once the batches are done
    assert [p for p in (tmp_path / "work").rglob("*") if p.is_file()] == []

    before = {p: p.stat().st_mtime_ns for p in delivered.values()}
    again = escape(_job(tmp_path, made.root))
    assert again["listed"] == len(truth) and again["done"] == len(truth)
    assert {p: p.stat().st_mtime_ns for p in _archive(tmp_path / "archive").values()} == before
    runs = _query(s["ledger"], "SELECT run_id, count(*) FROM events WHERE stage <> 'list' GROUP BY ALL")
    assert dict(runs) == {s["run_id"]: dict(runs)[s["run_id"]]}  # the rerun did no work at all
    assert _query(s["ledger"], "SELECT count(*) FROM albums")[0][0] == sum(len(p.albums) for p in made.photos)


@pytest.mark.usefixtures("prefect_harness")
def test_videos_can_be_skipped_and_never_fail(made, tmp_path):
    from flows.escape import escape

    s = escape(_job(tmp_path, made.root, videos="skip"))
    videos = sum(p.video for p in made.photos)
    assert s["skipped"] == videos and s["failed"] == 0 and s["done"] == len(made.photos) - videos
    assert dict(_query(s["ledger"], "SELECT reason, count(*) FROM item_status WHERE status = 'skipped' GROUP BY ALL")) \
        == {"video": videos}
    # changing one's mind delivers them on the next run (the choice is part of what a rerun compares)
    again = escape(_job(tmp_path, made.root, videos="deliver"))
    assert again["done"] == len(made.photos) and again["skipped"] == 0
    assert set(_archive(tmp_path / "archive")) == {p.sha256 for p in made.photos}


@pytest.mark.usefixtures("prefect_harness")
def test_a_broken_part_stops_the_run_naming_it_and_loses_nothing(made, tmp_path):
    from flows.escape import escape

    parts = tmp_path / "parts"
    parts.mkdir()
    for part in made.parts:
        (parts / part.name).write_bytes(part.read_bytes())
    first = escape(_job(tmp_path, parts))
    assert first["done"] == len(made.photos)
    before = {p: p.read_bytes() for p in _archive(tmp_path / "archive").values()}
    data = (parts / made.parts[1].name).read_bytes()
    (parts / made.parts[1].name).write_bytes(data[: len(data) // 2])
    state = escape(_job(tmp_path, parts), return_state=True)
    assert state.is_failed()
    assert made.parts[1].name in state.message
    assert {p: p.read_bytes() for p in _archive(tmp_path / "archive").values()} == before
    with Ledger(first["ledger"], read_only=True) as led:
        assert led.reconciliation(job="takeout-test")["done"] == len(made.photos)
        last = led.last_run("takeout-test")
        assert last["status"] == "crashed"


@pytest.mark.usefixtures("prefect_harness")
def test_a_hostile_member_name_never_leaves_the_destination(tmp_path):
    from flows.escape import escape

    photo = export.jpeg(7, export.datetime(2019, 5, 1, 10, 0))
    parts = tmp_path / "parts"
    parts.mkdir()
    with zipfile.ZipFile(parts / "takeout-001.zip", "w") as zf:
        zf.writestr("../../etc/x.jpg", photo)
        zf.writestr("Takeout/Google Photos/Photos from 2019/../../../../escaped.jpg", photo + b"\0")
        zf.writestr("/abs/y.jpg", photo + b"\0\0")
    s = escape(_job(tmp_path, parts))
    assert s["done"] == 3 and s["failed"] == 0
    inside = sorted(p.relative_to(tmp_path / "archive").as_posix() for p in (tmp_path / "archive").rglob("*")
                    if p.is_file())
    assert len(inside) == 3 and all(".." not in p for p in inside)
    assert not (tmp_path / "etc").exists() and not (tmp_path.parent / "etc" / "x.jpg").exists()
    assert not list(tmp_path.parent.glob("escaped.jpg")) and not (tmp_path / "escaped.jpg").exists()
    assert {p.rsplit("/", 1)[-1] for p in inside} == {"x.jpg", "escaped.jpg", "y.jpg"}


# -- memory --------------------------------------------------------------------------------------------------
_STREAM = r"""
import json, resource, sys
from pathlib import Path
from tasks import takeout
from tasks.sources.takeout import TakeoutSource, TakeoutSourceConfig

root, work = Path(sys.argv[1]), Path(sys.argv[2])
items = [i for page in takeout.items(takeout.scan(root)) for i in page]
source = TakeoutSource(TakeoutSourceConfig(kind="takeout", path=root), workdir=work)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = source.fetch(items)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_kb": before, "after_kb": after, "outcome": out[0]["outcome"],
                  "bytes": out[0]["bytes"], "sha256": out[0]["sha256"]}))
"""


def test_an_800_mb_member_streams_with_flat_memory(tmp_path):
    """A long video in a part: fetched into the work folder 1 MiB at a time, hashed on the
    way, its CRC checked; the process's peak memory grows by a few MiB, not 800."""
    size = 800 * (1 << 20)
    parts = tmp_path / "parts"
    parts.mkdir()
    block = b"\0" * (1 << 20)
    digest = hashlib.sha256()
    with zipfile.ZipFile(parts / "takeout-001.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("Takeout/Google Photos/Photos from 2020/VID_20200101_000000.mp4", "w", force_zip64=True) as fh:
            for _ in range(size // len(block)):
                fh.write(block)
                digest.update(block)
    assert (parts / "takeout-001.zip").stat().st_size < 5 * (1 << 20)
    run = subprocess.run([sys.executable, "-c", _STREAM, str(parts), str(tmp_path / "work")], capture_output=True,
                         text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.splitlines()[-1])
    assert got["outcome"] == "ok" and got["bytes"] == size and got["sha256"] == digest.hexdigest()
    assert got["after_kb"] - got["before_kb"] < 48 * 1024, got  # KiB: under 48 MiB for an 800 MiB member


# -- the ledger's albums table ----------------------------------------------------------------------------------
def test_album_memberships_are_recorded_once(tmp_path):
    items = [{"item_id": "takeout:a.jpg", "name": "a.jpg", "meta": {"albums": ["Trip", "Family"]}},
             {"item_id": "takeout:b.jpg", "name": "b.jpg"}]
    with Ledger(tmp_path / "l.duckdb") as led:
        led.add_items("job", "r1", items)
        led.add_items("job", "r2", items)  # a rerun lists them again
        assert led.query("SELECT item_id, album FROM albums ORDER BY ALL") == [
            {"item_id": "takeout:a.jpg", "album": "Family"}, {"item_id": "takeout:a.jpg", "album": "Trip"}]


def test_an_older_ledger_gets_an_albums_table(tmp_path):
    path = tmp_path / "old.duckdb"
    with Ledger(path) as led:
        led.add_items("job", "r1", [{"item_id": "x", "name": "x.jpg"}])
    con = duckdb.connect(str(path))
    con.execute("DROP TABLE albums")
    con.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    con.close()
    with Ledger(path, read_only=True) as led:  # a report on an old ledger: an empty table, nothing written
        assert led.query("SELECT count(*) AS n FROM albums") == [{"n": 0}]
    with Ledger(path) as led:
        assert led.schema_version() == 4
        led.add_items("job", "r2", [{"item_id": "x", "name": "x.jpg", "meta": {"albums": ["Trip"]}}])
        assert led.query("SELECT album FROM albums") == [{"album": "Trip"}]


@pytest.mark.usefixtures("prefect_harness")
def test_the_takeout_demo_runs_end_to_end(tmp_path):
    from sandbox.demos import takeout as demo

    s = demo.run(tmp_path, as_json=True)
    told = s["takeout_story"]
    assert s["failed"] == 0 and s["done"] == s["listed"] == told["photos"] + told["videos"]
    assert told["delivered_exactly_once"] and len(told["albums"]) == 3
    assert sum(told["sidecar_rules"].values()) == s["listed"] and told["sidecar_rules"]["no sidecar"] == 1
    assert sum(told["times_by_provenance"].values()) == s["listed"]


def test_the_example_job_file_is_valid(tmp_path):
    from photo_escape.jobspec import load_job

    text = (Path(__file__).parent.parent / "jobs" / "takeout.yaml").read_text()
    (tmp_path / "takeout").mkdir()
    (tmp_path / "job.yaml").write_text(text.replace("./takeout", str(tmp_path / "takeout")))
    spec = load_job(tmp_path / "job.yaml")
    assert spec.source.kind == "takeout" and spec.source.videos == "deliver"
