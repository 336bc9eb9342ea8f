"""Capture times: every provenance, odd zones, GPS quirks, DST edges, rules, carry-forward,
broken files and the ``capture-time`` command. Photos are real pictures whose EXIF the
tests write; expected UTC times are worked out by hand in each test."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image

from photo_escape.jobspec import TimeZoneRule
from sandbox import photos
from sandbox.photos import exif_bytes, write_jpeg
from tasks.capture_time import capture_time, capture_times, offset_from_gps, parse_offset

ROOT = Path(__file__).resolve().parent.parent
SMALL = (64, 48)


def jpeg(path: Path, **exif) -> str:
    return str(write_jpeg(path, 5, size=SMALL, **exif))


def custom_jpeg(path: Path, ifd0=None, exif=None, gps=None, xmp: bytes | None = None) -> str:
    """A JPEG with exactly the tags given (tag number -> value) in IFD0, the Exif IFD and the GPS IFD."""
    e = Image.Exif()
    for k, v in (ifd0 or {}).items():
        e[k] = v
    if exif:
        ifd = e.get_ifd(0x8769)
        for k, v in exif.items():
            ifd[k] = v
    if gps:
        g = e.get_ifd(0x8825)
        for k, v in gps.items():
            g[k] = v
    kw = {"xmp": xmp} if xmp else {}
    photos.picture(7, SMALL).save(path, "JPEG", exif=e.tobytes(), **kw)
    return str(path)


def _r(n, d=1):
    from PIL.TiffImagePlugin import IFDRational

    return IFDRational(n, d)


# -- 1. offset tags -------------------------------------------------------------------------

@pytest.mark.parametrize("offset, minutes, utc", [
    ("+05:30", 330, "2019-03-09T06:50:00+00:00"),   # India
    ("+05:45", 345, "2019-03-09T06:35:00+00:00"),   # Nepal
    ("-03:30", -210, "2019-03-09T15:50:00+00:00"),  # Newfoundland
    ("+12:45", 765, "2019-03-08T23:35:00+00:00"),   # Chatham Islands (summer)
    ("+03:30", 210, "2019-03-09T08:50:00+00:00"),   # Iran
])
def test_offset_tags_give_utc_for_half_and_quarter_hour_zones(tmp_path, offset, minutes, utc):
    rec = capture_time(jpeg(tmp_path / "a.jpg", taken=datetime(2019, 3, 9, 12, 20), offset=offset))
    assert rec["status"] == "ok" and rec["provenance"] == "exif:offset"
    assert rec["offset_minutes"] == minutes and rec["tz"] == offset
    assert rec["utc"] == utc and rec["local"] == "2019-03-09T12:20:00"
    assert rec["conflicts"] == []


def test_offset_time_is_used_when_offset_time_original_is_missing(tmp_path):
    path = custom_jpeg(tmp_path / "a.jpg", exif={0x9003: "2019:03:09 12:20:00", 0x9010: "-03:30", 0x9291: "250"})
    rec = capture_time(path)
    assert rec["provenance"] == "exif:offset"
    assert rec["utc"] == "2019-03-09T15:50:00.250000+00:00"  # SubSecTimeOriginal kept


def test_blank_offset_tags_are_not_evidence(tmp_path):
    path = custom_jpeg(tmp_path / "a.jpg", exif={0x9003: "2019:03:09 12:20:00", 0x9011: "      "})
    rec = capture_time(path)
    assert rec["provenance"] == "unknown" and rec["utc"] is None and rec["local"] == "2019-03-09T12:20:00"


# -- 2. XMP ---------------------------------------------------------------------------------

XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" '
       b'photoshop:DateCreated="%s"/></rdf:RDF></x:xmpmeta>')


def test_xmp_date_created_offset(tmp_path):
    path = custom_jpeg(tmp_path / "a.jpg", exif={0x9003: "2020:01:02 03:04:05"}, xmp=XMP % b"2020-01-02T03:04:05-03:30")
    rec = capture_time(path)
    assert rec["provenance"] == "xmp:offset" and rec["offset_minutes"] == -210
    assert rec["utc"] == "2020-01-02T06:34:05+00:00"


def test_xmp_with_another_wall_time_is_a_conflict_not_evidence(tmp_path):
    path = custom_jpeg(tmp_path / "a.jpg", exif={0x9003: "2020:01:02 03:04:05"}, xmp=XMP % b"2020-01-02T09:04:05Z")
    rec = capture_time(path)
    assert rec["provenance"] == "unknown" and rec["utc"] is None
    assert [c["kind"] for c in rec["conflicts"]] == ["xmp_time_differs"]


# -- 3. GPS time ----------------------------------------------------------------------------

@pytest.mark.parametrize("local, gps_utc, minutes", [
    (datetime(2016, 4, 1, 15, 46, 24), datetime(2016, 4, 1, 10, 1, 20), 345),   # Kathmandu, GPS 4 s off
    (datetime(2016, 4, 1, 9, 0, 0), datetime(2016, 4, 1, 12, 30, 3), -210),     # St. John's standard time
    (datetime(2016, 1, 10, 8, 0, 0), datetime(2016, 1, 9, 19, 15, 0), 765),     # Chatham, the day before in UTC
    (datetime(2016, 1, 10, 23, 50, 0), datetime(2016, 1, 11, 9, 50, 0), -600),  # Hawaii, the day after in UTC
])
def test_gps_time_gives_the_offset_rounded_to_15_minutes(tmp_path, local, gps_utc, minutes):
    rec = capture_time(jpeg(tmp_path / "a.jpg", taken=local, gps_utc=gps_utc))
    assert rec["provenance"] == "gps:time", rec
    assert rec["offset_minutes"] == minutes
    assert datetime.fromisoformat(rec["utc"]).replace(tzinfo=None) == local - __import__("datetime").timedelta(minutes=minutes)
    assert rec["conflicts"] == []


def test_gps_date_a_day_off_is_corrected_and_noted(tmp_path):
    # the camera wrote the next day's date with the right time of day
    rec = capture_time(jpeg(tmp_path / "a.jpg", taken=datetime(2016, 4, 1, 15, 46, 24),
                            gps_utc=datetime(2016, 4, 2, 10, 1, 24)))
    assert rec["provenance"] == "gps:time" and rec["offset_minutes"] == 345
    assert rec["utc"] == "2016-04-01T10:01:24+00:00"
    (note,) = rec["conflicts"]
    assert note["kind"] == "gps_date_off_by_day" and note["corrected_gps_date"] == "2016-04-01"


def test_gps_time_too_far_from_the_grid_is_not_used(tmp_path):
    # 52 minutes: 7 from the 15-minute grid, a stale fix, not a zone
    rec = capture_time(jpeg(tmp_path / "a.jpg", taken=datetime(2016, 4, 1, 12, 52), gps_utc=datetime(2016, 4, 1, 12, 0)))
    assert rec["provenance"] == "unknown" and rec["utc"] is None
    assert rec["conflicts"][0]["kind"] == "gps_time_unusable"


def test_gps_time_without_a_date_uses_the_position_to_choose_between_a_day_apart():
    # local 13:00, GPS 00:00 without date: +13:00 (Tonga) or -11:00 (Niue)
    off, notes = offset_from_gps(datetime(2020, 6, 1, 13, 0), None, 0.0, hint=-660)
    assert off == -660 and notes[0]["kind"] == "gps_offset_ambiguous"
    off, _ = offset_from_gps(datetime(2020, 6, 1, 13, 0), None, 0.0, hint=780)
    assert off == 780


def test_gps_time_and_offset_tag_disagreeing_is_a_conflict(tmp_path):
    # the offset tag says Paris summer time, the GPS says India: the tag wins, the disagreement is reported
    rec = capture_time(jpeg(tmp_path / "a.jpg", taken=datetime(2018, 7, 1, 12, 0), offset="+02:00",
                            gps_utc=datetime(2018, 7, 1, 6, 30)))
    assert rec["provenance"] == "exif:offset" and rec["utc"] == "2018-07-01T10:00:00+00:00"
    (c,) = rec["conflicts"]
    assert c["kind"] == "disagree" and c["source"] == "gps:time" and c["offset"] == "+05:30" and c["minutes"] == 210


# -- 4. GPS position ------------------------------------------------------------------------

@pytest.mark.parametrize("lat, lon, zone, minutes", [
    (26.97, 84.85, "Asia/Kolkata", 330),     # Raxaul, India ...
    (26.99, 84.86, "Asia/Kathmandu", 345),   # ... and Birgunj, Nepal, 2 km away across the border
])
def test_gps_position_near_a_zone_border(tmp_path, lat, lon, zone, minutes):
    rec = capture_time(jpeg(tmp_path / "a.jpg", taken=datetime(2017, 2, 3, 12, 0), gps=(lat, lon)))
    assert rec["provenance"] == "gps:position" and rec["tz"] == zone and rec["offset_minutes"] == minutes


def test_gps_position_applies_dst(tmp_path):
    summer = capture_time(jpeg(tmp_path / "s.jpg", taken=datetime(2021, 7, 4, 12, 0), gps=(40.71, -74.0)))
    winter = capture_time(jpeg(tmp_path / "w.jpg", taken=datetime(2021, 1, 4, 12, 0), gps=(40.71, -74.0)))
    assert summer["tz"] == winter["tz"] == "America/New_York"
    assert summer["utc"] == "2021-07-04T16:00:00+00:00" and winter["utc"] == "2021-01-04T17:00:00+00:00"


def test_dst_ambiguous_local_time_is_flagged(tmp_path):
    # 2021-11-07 01:30 happened twice in New York
    rec = capture_time(jpeg(tmp_path / "a.jpg", taken=datetime(2021, 11, 7, 1, 30), gps=(40.71, -74.0)))
    assert rec["provenance"] == "gps:position"
    assert rec["utc"] == "2021-11-07T05:30:00+00:00"  # the first 01:30 (EDT)
    (flag,) = rec["conflicts"]
    assert flag["kind"] == "ambiguous_local_time" and flag["other_utc"] == "2021-11-07T06:30:00+00:00"


def test_dst_nonexistent_local_time_is_flagged(tmp_path):
    # 2021-03-14 02:30 never happened in New York (clocks went from 02:00 to 03:00)
    rec = capture_time(jpeg(tmp_path / "a.jpg", taken=datetime(2021, 3, 14, 2, 30), gps=(40.71, -74.0)))
    assert rec["utc"] == "2021-03-14T07:30:00+00:00"  # read with the offset before the change (EST)
    assert [c["kind"] for c in rec["conflicts"]] == ["nonexistent_local_time"]


def test_gps_time_beats_position_and_names_the_zone_when_they_agree(tmp_path):
    rec = capture_time(jpeg(tmp_path / "a.jpg", taken=datetime(2017, 2, 3, 12, 0), gps=(26.99, 84.86),
                            gps_utc=datetime(2017, 2, 3, 6, 15)))
    assert rec["provenance"] == "gps:time" and rec["tz"] == "Asia/Kathmandu" and rec["conflicts"] == []


# -- 5. GPS UTC only ------------------------------------------------------------------------

def test_gps_utc_without_date_time_original(tmp_path):
    rec = capture_time(jpeg(tmp_path / "a.jpg", gps=(26.99, 84.86), gps_utc=datetime(2017, 2, 3, 6, 15, 7)))
    assert rec["provenance"] == "gps:utc" and rec["utc"] == "2017-02-03T06:15:07+00:00"
    assert rec["local"] == "2017-02-03T12:00:07" and rec["tz"] == "Asia/Kathmandu"


# -- 6-9. rules, previous photo, default, unknown -------------------------------------------

def test_default_and_unknown(tmp_path):
    path = jpeg(tmp_path / "a.jpg", taken=datetime(2014, 12, 25, 9, 0))
    assert capture_time(path)["provenance"] == "unknown"
    assert capture_time(path)["utc"] is None
    rec = capture_time(path, default_tz="America/Chicago")
    assert rec["provenance"] == "default" and rec["utc"] == "2014-12-25T15:00:00+00:00" and rec["tz"] == "America/Chicago"
    assert capture_time(path, default_tz="+05:30")["utc"] == "2014-12-25T03:30:00+00:00"


def test_editor_create_date_is_no_capture_time_and_file_change_date_is_the_last_resort(tmp_path):
    editor_xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
                  b'<rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:CreateDate="2012-06-29T09:29-04:00"/>'
                  b'</rdf:RDF></x:xmpmeta>')
    path = custom_jpeg(tmp_path / "edited.jpg", xmp=editor_xmp)
    rec = capture_time(path, default_tz="Europe/Paris")
    assert rec["provenance"] == "none" and rec["local"] is None and rec["utc"] is None
    # IFD0 DateTime (when the file was last written) only when nothing better exists: exif:datetime
    path = custom_jpeg(tmp_path / "edited2.jpg", ifd0={0x0132: "2012:09:17 15:53:45"}, xmp=editor_xmp)
    rec = capture_time(path, default_tz="Europe/Paris")
    assert rec["provenance"] == "exif:datetime" and rec["local"] == "2012-09-17T15:53:45"
    assert rec["utc"] == "2012-09-17T13:53:45+00:00" and rec["source"] == {"tag": "DateTime", "zone": "default"}
    assert capture_time(path)["utc"] is None and capture_time(path)["provenance"] == "exif:datetime"


def test_no_exif_has_no_time_and_never_a_file_time(tmp_path):
    path = tmp_path / "plain.jpg"
    photos.picture(2, SMALL).save(path, "JPEG")
    rec = capture_time(path, default_tz="Europe/Paris")
    assert rec["status"] == "ok" and rec["provenance"] == "none"
    assert rec["local"] is None and rec["utc"] is None


def test_rules_folder_pattern_and_dates_first_match_wins(tmp_path):
    hawaii = tmp_path / "2014" / "honeymoon"
    texas = tmp_path / "2014" / "christmas"
    a = jpeg(hawaii / "IMG_1.JPG", taken=datetime(2014, 4, 20, 7, 0))
    b = jpeg(texas / "IMG_2.JPG", taken=datetime(2014, 12, 25, 9, 0))
    c = jpeg(texas / "DSC_3.JPG", taken=datetime(2014, 12, 25, 10, 0))
    d = jpeg(tmp_path / "misc" / "IMG_4.JPG", taken=datetime(2015, 6, 1, 12, 0))
    rules = [
        TimeZoneRule(tz="America/Los_Angeles", folder="honeymoon"),  # kept to PDT in Hawaii
        {"tz": "America/Chicago", "pattern": "IMG_*.JPG", "start": "2014-12-01", "end": "2014-12-31"},
        {"tz": "Europe/London", "folder": "2014/christmas"},
        {"tz": "Asia/Tokyo"},  # matches everything left
    ]
    recs = capture_times([a, b, c, d], rules=rules, default_tz="UTC")
    assert [r["provenance"] for r in recs] == ["rule"] * 4
    assert [r["tz"] for r in recs] == ["America/Los_Angeles", "America/Chicago", "Europe/London", "Asia/Tokyo"]
    assert recs[0]["utc"] == "2014-04-20T14:00:00+00:00"
    assert recs[1]["utc"] == "2014-12-25T15:00:00+00:00"


def test_previous_photo_zone_carries_forward_within_a_folder_only(tmp_path):
    trip, home = tmp_path / "trip", tmp_path / "home"
    first = jpeg(trip / "IMG_0001.JPG", taken=datetime(2015, 5, 1, 10, 0), gps_utc=datetime(2015, 5, 1, 4, 30))
    airplane = jpeg(trip / "IMG_0002.JPG", taken=datetime(2015, 5, 1, 18, 0))  # no GPS: airplane mode
    before = jpeg(trip / "IMG_0000.JPG", taken=datetime(2015, 5, 1, 8, 0))  # earlier than any zone
    other = jpeg(home / "IMG_0003.JPG", taken=datetime(2015, 5, 2, 9, 0))
    recs = capture_times([airplane, other, first, before], default_tz="Europe/Berlin")  # input order kept
    assert [Path(r["path"]).name for r in recs] == ["IMG_0002.JPG", "IMG_0003.JPG", "IMG_0001.JPG", "IMG_0000.JPG"]
    assert recs[2]["provenance"] == "gps:time" and recs[2]["offset_minutes"] == 330
    assert recs[0]["provenance"] == "previous" and recs[0]["offset_minutes"] == 330
    assert recs[0]["utc"] == "2015-05-01T12:30:00+00:00"
    assert recs[1]["provenance"] == "default" and recs[3]["provenance"] == "default"


def test_previous_photo_is_found_across_a_batch_boundary(tmp_path):
    """The flow works in batches: a folder's airplane-mode photos may come in the batch
    after the photo that had the zone; the neighbours on disk are read to find it."""
    trip = tmp_path / "trip"
    shots = [jpeg(trip / f"IMG_{i}.JPG", taken=datetime(2015, 5, 1, 10 + i), offset="+05:30" if i == 1 else None)
             for i in range(5)]
    first = capture_times([{"path": p, "folder": "trip"} for p in shots[:2]], default_tz="UTC")
    later = capture_times([{"path": p, "folder": "trip"} for p in shots[2:]], default_tz="UTC")
    assert [r["provenance"] for r in first] == ["default", "exif:offset"]
    assert [r["provenance"] for r in later] == ["previous"] * 3
    assert all(r["source"]["previous"] == "IMG_1.JPG" and r["offset_minutes"] == 330 for r in later)
    # a sequence key that is not the file's folder (a download area) reads no neighbours
    other = capture_times([{"path": shots[3], "folder": "http://host/album"}], default_tz="UTC")
    assert other[0]["provenance"] == "default"
    assert capture_times([shots[3]], default_tz="UTC", lookback=0)[0]["provenance"] == "default"


def test_previous_photo_must_come_from_the_same_camera(tmp_path):
    phone = jpeg(tmp_path / "mix" / "IMG_1.JPG", taken=datetime(2015, 5, 1, 10, 0), offset="+05:30",
                 make="Apple", model="iPhone 6")
    camera = jpeg(tmp_path / "mix" / "IMG_2.JPG", taken=datetime(2015, 5, 1, 11, 0), make="Canon", model="EOS 5D")
    phone2 = jpeg(tmp_path / "mix" / "IMG_3.JPG", taken=datetime(2015, 5, 1, 12, 0), make="Apple", model="iPhone 6")
    recs = capture_times([phone, camera, phone2])
    assert [r["provenance"] for r in recs] == ["exif:offset", "unknown", "previous"]


def test_carry_joins_consecutive_calls(tmp_path):
    a = jpeg(tmp_path / "f" / "IMG_1.JPG", taken=datetime(2015, 5, 1, 10, 0), offset="-03:30")
    b = jpeg(tmp_path / "f" / "IMG_2.JPG", taken=datetime(2015, 5, 1, 11, 0))
    carry: dict = {}
    capture_times([a], lookback=0, carry=carry)
    assert capture_times([b], lookback=0, carry=carry)[0]["provenance"] == "previous"
    assert capture_times([b], lookback=0)[0]["provenance"] == "unknown"


def test_rule_comes_before_previous(tmp_path):
    first = jpeg(tmp_path / "f" / "IMG_1.JPG", taken=datetime(2015, 5, 1, 10, 0), offset="+05:30")
    second = jpeg(tmp_path / "f" / "IMG_2.JPG", taken=datetime(2015, 5, 1, 11, 0))
    recs = capture_times([{"path": first, "item_id": "a"}, {"path": second, "item_id": "b"}],
                         rules=[{"tz": "Asia/Dubai", "pattern": "IMG_2.*"}])
    assert [r["item_id"] for r in recs] == ["a", "b"]
    assert recs[1]["provenance"] == "rule" and recs[1]["offset_minutes"] == 240


def test_rule_dst_edges_are_flagged(tmp_path):
    path = jpeg(tmp_path / "a.jpg", taken=datetime(2021, 10, 31, 2, 30))  # happened twice in Paris
    rec = capture_time(path, rules=[{"tz": "Europe/Paris"}])
    assert rec["provenance"] == "rule" and rec["utc"] == "2021-10-31T00:30:00+00:00"
    assert rec["conflicts"][0]["kind"] == "ambiguous_local_time"


def test_parse_offset_range():
    assert parse_offset("+14:00") == 840 and parse_offset("-12:00") == -720
    assert parse_offset("+14:15") is None and parse_offset("-1200") == -720 and parse_offset("garbage") is None


# -- other containers and readers ------------------------------------------------------------

def test_heic_and_tiff_are_read(tmp_path):
    import pillow_heif

    pillow_heif.register_heif_opener()
    img = photos.picture(4, SMALL)
    ex = exif_bytes(datetime(2020, 1, 2, 3, 4, 5), offset="+05:45")
    img.save(tmp_path / "a.heic", format="HEIF", exif=ex, quality=50)
    img.save(tmp_path / "b.tif", format="TIFF", exif=ex)
    recs = capture_times([tmp_path / "a.heic", tmp_path / "b.tif"])
    assert [r["utc"] for r in recs] == ["2020-01-01T21:19:05+00:00"] * 2
    assert all(r["provenance"] == "exif:offset" for r in recs)
    # libexiv2 reads HEIC (exifread cannot parse this one)
    assert recs[0]["reader"] == "exiv2"


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _tiff(tags: dict) -> bytes:
    e = Image.Exif()
    for k, v in tags.items():
        e[k] = v
    return e.tobytes()[6:]  # without the "Exif\0\0" of a JPEG segment


def test_fujifilm_raf_is_read_through_its_jpeg_preview(tmp_path):
    buf = io.BytesIO()
    photos.picture(3, SMALL).save(buf, "JPEG", exif=exif_bytes(datetime(2018, 7, 1, 12, 0), offset="+09:00"))
    jpg = buf.getvalue()
    head = b"FUJIFILMCCD-RAW 0201FF383501".ljust(84, b"\0") + struct.pack(">II", 160, len(jpg))
    (tmp_path / "DSCF0001.RAF").write_bytes(head.ljust(160, b"\0") + jpg + b"\0" * 4096)
    rec = capture_time(tmp_path / "DSCF0001.RAF")
    assert rec["provenance"] == "exif:offset" and rec["utc"] == "2018-07-01T03:00:00+00:00"


CANON_UUID = bytes.fromhex("85c0b687820f11e08111f4ce462b6a48")  # the uuid box Canon puts its CMT boxes in


def test_canon_cr3_is_read_from_its_cmt_boxes(tmp_path):
    gps = {1: "N", 2: (_r(48), _r(51), _r(0)), 3: "E", 4: (_r(2), _r(21), _r(0)),
           7: (_r(10), _r(0), _r(5)), 0x1D: "2018:07:01"}
    cmt = (_box(b"CMT1", _tiff({0x010F: "Canon", 0x0132: "2018:07:01 12:00:00"}))
           + _box(b"CMT2", _tiff({0x9003: "2018:07:01 12:00:00"})) + _box(b"CMT4", _tiff(gps)))
    data = (_box(b"ftyp", b"crx \0\0\0\x01crx isom") + _box(b"moov", _box(b"uuid", CANON_UUID + cmt))
            + _box(b"mdat", b"\0" * 4096))
    (tmp_path / "IMG_0001.CR3").write_bytes(data)
    rec = capture_time(tmp_path / "IMG_0001.CR3")
    # Paris in summer: GPS time says +02:00 and the position names the zone
    assert rec["provenance"] == "gps:time" and rec["tz"] == "Europe/Paris"
    assert rec["utc"] == "2018-07-01T10:00:00+00:00"


# -- broken files ---------------------------------------------------------------------------

def looped_exif_jpeg(path: Path) -> str:
    """A JPEG whose EXIF IFD points back at itself (the loop that hangs naive readers)."""
    ifd = 8
    dt_at = ifd + 2 + 2 * 12 + 4
    tiff = (b"II*\x00" + struct.pack("<I", ifd) + struct.pack("<H", 2)
            + struct.pack("<HHII", 0x8769, 4, 1, ifd) + struct.pack("<HHII", 0x9003, 2, 20, dt_at)
            + struct.pack("<I", ifd) + b"2020:01:02 03:04:05\x00")
    body = b"Exif\x00\x00" + tiff
    buf = io.BytesIO()
    photos.picture(3, SMALL).save(buf, "JPEG")
    data = buf.getvalue()
    path.write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + data[2:])
    return str(path)


def test_broken_files_each_get_a_record_and_a_hang_is_cut_short(tmp_path):
    bad = photos.bad_files(tmp_path / "broken")
    loop = looped_exif_jpeg(tmp_path / "loop.jpg")
    fifo = tmp_path / "stuck.jpg"
    os.mkfifo(fifo)  # opening it blocks forever: the worker must be killed, the rest go on
    good = jpeg(tmp_path / "good.jpg", taken=datetime(2019, 3, 9, 12, 20), offset="+05:30")
    clip = tmp_path / "clip.mov"  # a QuickTime movie among the photos
    clip.write_bytes(b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00qt  " + bytes(range(256)) * 40)
    paths = [str(bad["truncated"]), str(bad["empty"]), str(bad["text"]), loop, str(fifo),
             str(tmp_path / "missing.jpg"), str(clip), good]
    recs = capture_times(paths, timeout=1.5)
    assert [r["path"] for r in recs] == paths
    by = {Path(r["path"]).name: r for r in recs}
    assert by["empty.jpg"]["error"] == "empty"
    assert by["notes.jpg"]["error"] == "not_an_image"
    assert by["stuck.jpg"]["status"] == "error" and by["stuck.jpg"]["error"] == "timeout"
    assert by["missing.jpg"]["error"] == "no_such_file"
    assert by["clip.mov"]["error"] == "unsupported_format"
    assert by["truncated.jpg"]["status"] == "ok" and by["truncated.jpg"]["provenance"] == "none"
    assert by["loop.jpg"]["status"] in ("ok", "error")
    assert by["good.jpg"]["utc"] == "2019-03-09T06:50:00+00:00"


# -- the command ----------------------------------------------------------------------------

def test_capture_time_command_prints_a_line_per_file_without_prefect(tmp_path):
    good = jpeg(tmp_path / "a" / "IMG_1.JPG", taken=datetime(2019, 3, 9, 12, 20), offset="-03:30")
    plain = jpeg(tmp_path / "a" / "IMG_2.JPG", taken=datetime(2019, 3, 9, 13, 0))
    bad = photos.bad_files(tmp_path / "broken")
    fifo = tmp_path / "stuck.jpg"
    os.mkfifo(fifo)
    args = [good, plain, str(bad["empty"]), str(bad["text"]), str(fifo), "--default-tz", "Europe/Paris",
            "--json", "--timeout", "1.5"]
    code = ("import sys, runpy; from photo_escape.cli import main; rc = main(sys.argv[1:]); "
            "print('prefect imported' if 'prefect' in sys.modules else 'prefect not imported', file=sys.stderr); "
            "sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "capture-time", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "prefect not imported" in proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [x["path"] for x in lines] == [good, plain, str(bad["empty"]), str(bad["text"]), str(fifo)]
    assert set(lines[0]) >= {"path", "status", "local", "utc", "offset_minutes", "tz", "provenance", "conflicts"}
    assert lines[0]["utc"] == "2019-03-09T15:50:00+00:00" and lines[0]["offset_minutes"] == -210
    assert lines[1]["provenance"] == "previous"  # same folder, after a photo with a zone
    assert [x["status"] for x in lines[2:]] == ["error"] * 3
    assert lines[4]["error"] == "timeout"
    # alone, the same photo borrows nothing: only the files given count
    alone = subprocess.run([sys.executable, "-m", "photo_escape.cli", "capture-time", plain, "--json"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert json.loads(alone.stdout)["provenance"] == "unknown"


def test_capture_time_command_rejects_a_bad_zone(tmp_path):
    good = jpeg(tmp_path / "a.jpg", taken=datetime(2019, 3, 9, 12, 20))
    proc = subprocess.run([sys.executable, "-m", "photo_escape.cli", "capture-time", good, "--default-tz",
                           "Mars/Olympus", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["error"] == "bad_default_tz"


def test_a_reader_that_died_between_calls_is_replaced(tmp_path):
    import signal

    from tasks.isolation import idle_workers

    path = jpeg(tmp_path / "a.jpg", taken=datetime(2019, 3, 9, 12, 20), offset="+05:30")
    assert capture_time(path)["status"] == "ok"
    for worker in idle_workers():  # the readers (and other workers) this test process started
        os.kill(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(timeout=10)
    assert capture_time(path)["utc"] == "2019-03-09T06:50:00+00:00"
