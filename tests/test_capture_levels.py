"""Capture times beyond EXIF's DateTimeOriginal: what a source hands over (a Takeout
sidecar's UTC instant and place, Flickr's date taken and its granularity), dates only in
maker notes or older containers (checked against exiftool), IFD0 DateTime and file
names. Each level on its own; conflicts keep both values. Expected times are worked
out by hand in each test."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pytest

from sandbox import cameras, photos
from sandbox.photos import write_jpeg
from tasks.capture_time import capture_time, capture_times
from tasks.capture_time.names import filename_time

SMALL = (64, 48)


def jpeg(path: Path, **exif) -> str:
    return str(write_jpeg(path, 5, size=SMALL, **exif))


def plain(path: Path) -> str:
    """A real picture with no metadata at all (a WhatsApp image, a screenshot)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    photos.picture(6, SMALL).save(path, "PNG" if path.suffix.lower() == ".png" else "JPEG")
    return str(path)


def with_meta(path: str, **meta) -> dict:
    return {"path": path, "meta": meta}


# -- sidecar:utc: a UTC instant from the source ---------------------------------------------------

def test_sidecar_utc_takes_its_zone_from_the_exif_offset_tags(tmp_path):
    path = jpeg(tmp_path / "a.jpg", taken=datetime(2019, 3, 10, 10, 0), offset="+05:45")
    rec = capture_times([with_meta(path, time_utc="2019-03-10T04:15:00+00:00", time_provenance="sidecar:utc")])[0]
    assert rec["provenance"] == "sidecar:utc" and rec["utc"] == "2019-03-10T04:15:00+00:00"
    assert rec["local"] == "2019-03-10T10:00:00" and rec["offset_minutes"] == 345 and rec["tz"] == "+05:45"
    assert rec["source"] == {"tag": "time_utc", "zone": "exif:offset"} and rec["conflicts"] == []
    # a Takeout sidecar's timestamp as written (seconds since 1970) is the same instant
    assert capture_times([with_meta(path, time_utc="1552191300")])[0]["utc"] == "2019-03-10T04:15:00+00:00"


def test_sidecar_utc_takes_its_zone_from_the_exif_gps_position(tmp_path):
    path = jpeg(tmp_path / "a.jpg", taken=datetime(2017, 2, 3, 12, 0, 7), gps=(26.99, 84.86))
    rec = capture_times([with_meta(path, time_utc="2017-02-03T06:15:07Z")])[0]
    assert rec["provenance"] == "sidecar:utc" and rec["tz"] == "Asia/Kathmandu" and rec["offset_minutes"] == 345
    assert rec["local"] == "2017-02-03T12:00:07" and rec["source"]["zone"] == "gps:position"
    assert rec["conflicts"] == []


def test_sidecar_utc_takes_its_zone_from_the_sidecars_position_and_zeros_mean_unknown(tmp_path):
    path = plain(tmp_path / "eiffel.jpg")
    rec = capture_times([with_meta(path, time_utc="2019-07-14T10:00:00Z", latitude=48.8584, longitude=2.2945)])[0]
    assert rec["provenance"] == "sidecar:utc" and rec["tz"] == "Europe/Paris" and rec["offset_minutes"] == 120
    assert rec["local"] == "2019-07-14T12:00:00" and rec["source"]["zone"] == "sidecar:position"
    nowhere = with_meta(path, time_utc="2019-07-14T10:00:00Z", latitude=0.0, longitude=0.0)
    rec = capture_times([nowhere])[0]
    assert rec["utc"] == "2019-07-14T10:00:00+00:00" and rec["local"] is None and rec["tz"] is None
    rec = capture_times([nowhere], default_tz="America/New_York")[0]
    assert rec["local"] == "2019-07-14T06:00:00" and rec["offset_minutes"] == -240
    assert rec["provenance"] == "sidecar:utc" and rec["source"]["zone"] == "default"


def test_sidecar_utc_takes_its_zone_from_the_difference_with_the_wall_clock(tmp_path):
    path = jpeg(tmp_path / "a.jpg", taken=datetime(2019, 3, 9, 12, 20))  # no offset, no GPS
    rec = capture_times([with_meta(path, time_utc="2019-03-09T06:50:00Z")])[0]
    assert rec["provenance"] == "sidecar:utc" and rec["offset_minutes"] == 330 and rec["tz"] == "+05:30"
    assert rec["local"] == "2019-03-09T12:20:00" and rec["source"]["zone"] == "wall_clock"
    assert rec["conflicts"] == []


def test_a_date_corrected_in_google_photos_is_a_conflict_and_the_sidecar_wins(tmp_path):
    path = jpeg(tmp_path / "a.jpg", taken=datetime(2019, 3, 9, 12, 20))  # the camera's clock
    rec = capture_times([with_meta(path, time_utc="2019-03-12T08:00:00Z")], default_tz="Europe/Berlin")[0]
    assert rec["provenance"] == "sidecar:utc" and rec["utc"] == "2019-03-12T08:00:00+00:00"
    assert rec["local"] == "2019-03-12T09:00:00" and rec["source"]["zone"] == "default"  # CET, before DST
    # 2019-03-09 12:20 (wall) against 2019-03-12 08:00 (UTC): 2 days 19 h 40 min, no zone's doing
    assert rec["conflicts"] == [{"kind": "sidecar_vs_file", "source_utc": "2019-03-12T08:00:00+00:00",
                                 "file_local": "2019-03-09T12:20:00", "file_tag": "DateTimeOriginal",
                                 "minutes": -4060.0, "chosen": "sidecar:utc"}]
    # the camera's offset tag still says where it was: the corrected instant in that zone
    path = jpeg(tmp_path / "b.jpg", taken=datetime(2019, 3, 9, 12, 20), offset="+05:30")
    rec = capture_times([with_meta(path, time_utc="2019-03-12T08:00:00Z")])[0]
    assert rec["local"] == "2019-03-12T13:30:00" and rec["source"]["zone"] == "exif:offset"
    assert [c["kind"] for c in rec["conflicts"]] == ["sidecar_vs_file"]
    assert rec["conflicts"][0]["file_local"] == "2019-03-09T12:20:00"


def test_sidecar_utc_takes_rules_and_the_default_but_not_the_previous_photo(tmp_path):
    folder = tmp_path / "Photos from 2019"
    first = jpeg(folder / "IMG_1.jpg", taken=datetime(2019, 3, 9, 12, 0), offset="+05:30", model="X")
    second = plain(folder / "IMG_2.jpg")
    entries = [{"path": first}, with_meta(second, time_utc="2019-03-09T07:00:00Z")]
    recs = capture_times(entries)
    assert recs[0]["provenance"] == "exif:offset"
    assert recs[1]["utc"] == "2019-03-09T07:00:00+00:00" and recs[1]["local"] is None  # no borrowing
    recs = capture_times(entries, rules=[{"tz": "Asia/Tokyo", "folder": "Photos from 2019"}])
    assert recs[1]["local"] == "2019-03-09T16:00:00" and recs[1]["source"]["zone"] == "rule"
    assert recs[1]["provenance"] == "sidecar:utc"


def test_a_sidecar_utc_photo_with_a_zone_of_its_own_lends_it_to_the_next(tmp_path):
    folder = tmp_path / "trip"
    first = jpeg(folder / "a1.jpg")  # the camera's make and model, no date
    second = jpeg(folder / "a2.jpg")
    third = jpeg(folder / "a3.jpg", taken=datetime(2019, 7, 14, 18, 0))
    recs = capture_times([with_meta(first, time_utc="2019-07-14T10:00:00Z", latitude=48.85, longitude=2.35),
                          with_meta(second, time_utc="2019-07-14T11:00:00Z"), {"path": third}])
    assert recs[0]["tz"] == "Europe/Paris" and recs[0]["source"]["zone"] == "sidecar:position"
    assert recs[1]["local"] is None  # a sidecar's instant never takes a neighbour's zone
    assert recs[2]["provenance"] == "previous" and recs[2]["tz"] == "Europe/Paris"
    assert recs[2]["utc"] == "2019-07-14T16:00:00+00:00" and recs[2]["source"]["previous"] == "a1.jpg"


def test_a_video_no_reader_knows_gets_its_time_from_the_sidecar(tmp_path):
    clip = tmp_path / "VID_1.MP4"
    clip.write_bytes(b"\x00\x00\x00\x14ftypisom\x00\x00\x02\x00isom" + bytes(range(256)) * 40)
    rec = capture_times([with_meta(str(clip), time_utc="2019-07-14T10:00:00Z", latitude=48.85, longitude=2.35)])[0]
    assert rec["status"] == "ok" and rec["file_error"] == "unsupported_format"
    assert rec["provenance"] == "sidecar:utc" and rec["local"] == "2019-07-14T12:00:00"
    assert capture_times([str(clip)])[0]["status"] == "error"  # without the sidecar: as before


# -- a source's wall clock (Flickr's date taken) -------------------------------------------------

def test_source_local_time_agreeing_with_exif_is_zoned_by_the_file(tmp_path):
    path = jpeg(tmp_path / "a.jpg", taken=datetime(2015, 6, 1, 9, 30), offset="-04:00")
    rec = capture_times([with_meta(path, time_local="2015-06-01T09:30:00", time_provenance="source:flickr")])[0]
    assert rec["provenance"] == "source:flickr" and rec["local"] == "2015-06-01T09:30:00"
    assert rec["utc"] == "2015-06-01T13:30:00+00:00" and rec["source"]["zone"] == "exif:offset"
    assert rec["conflicts"] == [] and "granularity" not in rec


def test_source_local_time_disagreeing_with_the_file_wins_and_both_are_kept(tmp_path):
    scan = jpeg(tmp_path / "scan.jpg", taken=datetime(2012, 1, 4, 10, 0), offset="+01:00")  # the scanner's clock
    rec = capture_times([with_meta(scan, time_local="1975-08-15T14:00:00", time_provenance="source:flickr")])[0]
    assert rec["provenance"] == "source:flickr" and rec["local"] == "1975-08-15T14:00:00"
    assert rec["utc"] == "1975-08-15T13:00:00+00:00"
    assert rec["conflicts"] == [{"kind": "source_vs_file", "source_local": "1975-08-15T14:00:00",
                                 "granularity": "exact", "file_local": "2012-01-04T10:00:00",
                                 "file_tag": "DateTimeOriginal", "chosen": "source:flickr"}]


def test_a_coarse_source_date_keeps_its_granularity(tmp_path):
    path = plain(tmp_path / "print.jpg")
    month = with_meta(path, time_local="1962-05-01T00:00:00", time_granularity="month", time_provenance="source:flickr")
    rec = capture_times([month], default_tz="Europe/London")[0]
    assert rec["provenance"] == "source:flickr" and rec["granularity"] == "month"
    assert rec["local"] == "1962-05-01T00:00:00" and rec["utc"] == "1962-04-30T23:00:00+00:00"  # British Summer Time
    # the file's own clock inside that month refines it: an exact time, no granularity left
    inside = jpeg(tmp_path / "b.jpg", taken=datetime(1999, 5, 17, 8, 0))
    rec = capture_times([with_meta(inside, time_local="1999-05-01T00:00:00", time_granularity="month")])[0]
    assert rec["local"] == "1999-05-17T08:00:00" and "granularity" not in rec
    assert rec["source"]["refined_by"] == "DateTimeOriginal" and rec["conflicts"] == []
    # a scan's date is no refinement of "circa 1950": a conflict, the granularity stays
    scan = jpeg(tmp_path / "c.jpg", taken=datetime(2012, 1, 4, 10, 0))
    rec = capture_times([with_meta(scan, time_local="1950-01-01T00:00:00", time_granularity="circa")])[0]
    assert rec["granularity"] == "circa" and rec["local"] == "1950-01-01T00:00:00"
    assert rec["conflicts"][0]["kind"] == "source_vs_file" and rec["conflicts"][0]["granularity"] == "circa"


# -- makernote: dates only in maker notes or older containers, read as exiftool reads them ---------

MAKERNOTE_FILES = {
    "reconyx-hyperfire": (lambda p, w: cameras.reconyx_jpeg(p / "RCNX0001.JPG", w), "Reconyx:DateTimeOriginal"),
    "reconyx-big-endian": (lambda p, w: cameras.reconyx_jpeg(p / "RCNX0002.JPG", w, swapped=True),
                           "Reconyx:DateTimeOriginal"),
    "reconyx-ultrafire": (lambda p, w: cameras.reconyx_jpeg(p / "RCNX0003.JPG", w, "ultrafire"),
                          "Reconyx:DateTimeOriginal"),
    "reconyx-hf2": (lambda p, w: cameras.reconyx_jpeg(p / "RCNX0004.JPG", w, "hf2"), "Reconyx:DateTimeOriginal"),
    "olympus-app12": (lambda p, w: cameras.olympus_app12_jpeg(p / "PA220001.JPG", w), "PictureInfo:TimeDate"),
    "canon-crw": (lambda p, w: cameras.canon_crw(p / "CRW_0001.CRW", w), "CanonRaw:TimeStamp"),
    "pentax": (lambda p, w: cameras.pentax_jpeg(p / "IMGP0001.JPG", w), "Pentax:Date"),
}


DATE_TIME = re.compile(r"^\d{4}:\d\d:\d\d \d\d:\d\d:\d\d$")


def exiftool_dates(found: dict) -> list[str]:
    """Every date and time exiftool found (``-time:all``, file-system dates aside), a
    separate date and time (Pentax) put together."""
    dates = [str(v) for k, v in found.items() if not k.startswith("System:") and DATE_TIME.match(str(v))]
    for group in {k.split(":", 1)[0] for k in found}:
        if f"{group}:Date" in found and f"{group}:Time" in found:
            dates.append(f"{found[group + ':Date']} {found[group + ':Time']}")
    return dates


@pytest.mark.parametrize("kind", sorted(MAKERNOTE_FILES))
def test_every_date_exiftool_finds_photo_escape_finds(tmp_path, exiftool, kind):
    when = datetime(1998 if kind in ("olympus-app12", "canon-crw") else 2016, 7, 14, 5, 43, 21)
    make, tag = MAKERNOTE_FILES[kind]
    path = make(tmp_path, when)
    dates = exiftool_dates(exiftool(path, "-time:all"))
    assert dates, "exiftool finds a date"
    rec = capture_time(path)
    for text in dates:  # exiftool's EXIF-style text, read back as a wall clock
        assert datetime.strptime(text, "%Y:%m:%d %H:%M:%S").isoformat() == rec["local"]
    assert rec["status"] == "ok" and rec["provenance"] == "makernote" and rec["source"] == {"tag": tag}
    assert rec["local"] == when.isoformat() and rec["utc"] is None  # a camera that knew no zone


def test_an_iptc_only_date_is_read_with_its_offset(tmp_path, exiftool):
    path = cameras.iptc_jpeg(tmp_path / "scan0001.jpg", datetime(2019, 3, 10, 10, 0), "+0545")
    assert exiftool(path, "-time:all")["Composite:DateTimeOriginal"] == "2019:03:10 10:00:00+05:45"
    rec = capture_time(path)
    assert rec["provenance"] == "iptc:offset" and rec["local"] == "2019-03-10T10:00:00"
    assert rec["offset_minutes"] == 345 and rec["utc"] == "2019-03-10T04:15:00+00:00"
    assert rec["source"] == {"tag": "IPTC:DateCreated"}


def test_a_makernote_time_takes_a_borrowed_zone_and_keeps_its_provenance(tmp_path):
    trail = tmp_path / "cam1"
    path = str(cameras.reconyx_jpeg(trail / "RCNX0001.JPG", datetime(2016, 7, 14, 5, 43, 21)))
    rec = capture_time(path, rules=[{"tz": "America/Denver", "folder": "cam1"}])
    assert rec["provenance"] == "makernote" and rec["source"] == {"tag": "Reconyx:DateTimeOriginal", "zone": "rule",
                                                                 "rule": 0}
    assert rec["utc"] == "2016-07-14T11:43:21+00:00" and rec["tz"] == "America/Denver"  # MDT, -06:00


def test_a_maker_note_date_never_beats_date_time_original(tmp_path):
    note = cameras.reconyx_maker_note(datetime(2016, 7, 14, 5, 43, 21))
    from PIL import Image

    exif = Image.Exif()
    exif[0x010F] = "RECONYX"
    ifd = exif.get_ifd(0x8769)
    ifd[0x927C] = note
    ifd[0x9003] = "2016:07:14 05:43:25"
    path = tmp_path / "both.jpg"
    photos.picture(2, SMALL).save(path, "JPEG", exif=exif.tobytes())
    rec = capture_time(path)
    assert rec["provenance"] == "unknown" and rec["local"] == "2016-07-14T05:43:25"


# -- filename: the last clue ----------------------------------------------------------------------

@pytest.mark.parametrize("name, local, utc, pattern", [
    ("IMG_20190412_101010.jpg", "2019-04-12T10:10:10", "2019-04-12T08:10:10+00:00", "android"),
    ("WhatsApp Image 2019-12-25 at 14.50.00.jpeg", "2019-12-25T14:50:00", "2019-12-25T13:50:00+00:00", "whatsapp"),
    ("WhatsApp Image 2019-12-25 at 2.50.00 PM.jpeg", "2019-12-25T14:50:00", "2019-12-25T13:50:00+00:00", "whatsapp"),
    ("Screenshot_20200617-220400.png", "2020-06-17T22:04:00", "2020-06-17T20:04:00+00:00", "android"),
    ("Screenshot 2020-06-17 at 22.04.00.png", "2020-06-17T22:04:00", "2020-06-17T20:04:00+00:00", "screenshot"),
    ("20190412_101010.jpg", "2019-04-12T10:10:10", "2019-04-12T08:10:10+00:00", "samsung"),
    # a Pixel names its files in UTC: the instant, its local time from the zone
    ("PXL_20190412_101010123.jpg", "2019-04-12T12:10:10.123000", "2019-04-12T10:10:10.123000+00:00", "pixel"),
])
def test_a_date_in_the_file_name_is_the_last_resort(tmp_path, name, local, utc, pattern):
    rec = capture_time(plain(tmp_path / name), default_tz="Europe/Paris")
    assert rec["provenance"] == "filename" and rec["local"] == local and rec["utc"] == utc
    assert rec["source"] == {"tag": f"filename:{pattern}", "zone": "default"}


def test_file_names_without_a_date_or_with_a_better_clock_beside(tmp_path):
    assert capture_time(plain(tmp_path / "IMG_1234.jpg"))["provenance"] == "none"
    assert filename_time("IMG_20191332_101010.jpg") is None  # no 32nd of the 13th month
    rec = capture_time(plain(tmp_path / "IMG-20191225-WA0001.jpg"))
    assert rec["provenance"] == "filename" and rec["local"] == "2019-12-25T00:00:00" and rec["granularity"] == "day"
    rec = capture_time(jpeg(tmp_path / "IMG_20190412_101010.jpg", taken=datetime(2019, 4, 13, 9, 0)))
    assert rec["provenance"] == "unknown" and rec["local"] == "2019-04-13T09:00:00"  # EXIF wins
