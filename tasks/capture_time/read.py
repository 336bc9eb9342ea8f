"""Reading what a photo file says about its capture: EXIF tags and XMP dates, as plain data.

The readers, best first:

* ``exiv2``     python-exiv2 (libexiv2, bundled in its wheel): JPEG, TIFF and every TIFF-based
                RAW, HEIC/AVIF, CR3, RAF, Canon CRW (CIFF), PNG, WebP, the dates in the
                maker notes it decodes (Pentax, Minolta, Sony) and IPTC's DateCreated +
                TimeCreated (``iptc_dt``)
* ``exifread``  when exiv2 cannot open the file or finds nothing (maker notes skipped)
* ``pillow``    the same through Pillow and pillow-heif, when both fail or find nothing

and beside them what no library here reads (exiftool does; its tag documentation
says where): a Reconyx trail camera's maker note (:func:`reconyx_date`, decoding the
bytes the reader hands over) and an APP12 "Picture Info" block of old Olympus, Agfa
and Polaroid JPEGs (:func:`picture_info_date`), plus the XMP packet's capture dates.
A date found only in a maker note or an older container (a Canon CRW's ``TimeStamp``
record) is ``makernote_dt``, named by ``makernote_tag``: the wall clock of a camera
that knew no zone, read like DateTimeOriginal. ``bench/metadata_readers.py`` measures
the readers against each other (bench/RESULTS.md).

A reader returns the tags the decision needs (:mod:`tasks.capture_time.zone`) as texts
and numbers, never its own objects: the answer crosses a process boundary.

Reading metadata from real camera files is the risky part (exifread has known loops
on broken files, libexiv2 is C++), so :func:`read_all_tags` reads every file in a
worker process with a time limit (:mod:`tasks.isolation`): a file that hangs or
crashes its reader gets ``error: timeout`` or ``error: reader_crashed`` and the next
file goes on.

A new reader is a function returning the same tag names, added to the list in
:func:`read_tags`.
"""

from __future__ import annotations

import logging
import math
import os
import re
import struct
from datetime import datetime, timedelta
from typing import Any

from tasks.files import is_iso_media, sniff_image
from tasks.isolation import isolated_map

COMMON_FORMATS = ("jpeg", "tiff", "png", "webp", "heif")  # what the readers are expected to open
XMP_SCAN_BYTES = 4 * 1024 * 1024  # XMP packets sit near the start of camera files
READ_CHUNK = 8  # paths sent to a reader at once: answers stream back, one time limit per file
READER_IMPORTS = ("exiv2", "exifread", "PIL.Image")  # imported when a reader process starts, not on a file's clock


# ----------------------------------------------------------------------------------------
# the tags of one file (runs inside a reader process)
# ----------------------------------------------------------------------------------------

def _text(v: Any) -> str | None:
    """A tag value as clean text (NULs and blanks stripped), or None."""
    if v is None:
        return None
    if isinstance(v, bytes):
        v = v.decode("ascii", "replace")
    if isinstance(v, (list, tuple)):
        v = v[0] if len(v) == 1 else " ".join(str(x) for x in v)
    s = str(v).replace("\x00", "").strip()
    return s or None


def _floats(v: Any) -> list[float] | None:
    """A rational triple (degrees/minutes/seconds or h/m/s) as floats, or None."""
    if v is None:
        return None
    if not isinstance(v, (list, tuple)):
        v = [v]
    out = []
    for x in v:
        try:
            f = float(x)
        except (TypeError, ValueError, ZeroDivisionError):
            return None
        if math.isnan(f) or math.isinf(f):
            return None
        out.append(f)
    return out or None


def _coordinate(dms: Any, ref: Any) -> float | None:
    """Signed decimal degrees from an EXIF (deg, min, sec) triple and its N/S/E/W ref."""
    parts = _floats(dms)
    if not parts:
        return None
    parts = (parts + [0.0, 0.0])[:3]
    deg = parts[0] + parts[1] / 60 + parts[2] / 3600
    r = (_text(ref) or "").upper()[:1]
    return -deg if r in ("S", "W") else deg


def _tags_from_exifread(path: str) -> dict[str, Any]:
    """The capture-time tags as exifread reads them (maker notes skipped: faster, fewer loops)."""
    import exifread

    logging.getLogger("exifread").setLevel(logging.CRITICAL)
    with open(path, "rb") as fh:
        raw = exifread.process_file(fh, details=False, extract_thumbnail=False)
    if not raw:
        return {}

    def v(name: str) -> Any:
        tag = raw.get(name)
        return getattr(tag, "values", tag) if tag is not None else None

    return _normalise({
        "make": v("Image Make"), "model": v("Image Model"),
        "dto": v("EXIF DateTimeOriginal") or v("Image DateTimeOriginal"), "dtd": v("EXIF DateTimeDigitized"), "dt": v("Image DateTime"),
        "subsec_o": v("EXIF SubSecTimeOriginal"), "subsec_d": v("EXIF SubSecTimeDigitized"),
        "subsec": v("EXIF SubSecTime"),
        "off_o": v("EXIF OffsetTimeOriginal"), "off_d": v("EXIF OffsetTimeDigitized"), "off": v("EXIF OffsetTime"),
        "gps_date": v("GPS GPSDate"), "gps_time": v("GPS GPSTimeStamp"),
        "lat": v("GPS GPSLatitude"), "lat_ref": v("GPS GPSLatitudeRef"),
        "lon": v("GPS GPSLongitude"), "lon_ref": v("GPS GPSLongitudeRef"),
    })


def _tags_from_pillow(path: str) -> dict[str, Any]:
    """The same tags through Pillow (and pillow-heif for HEIC/HEIF): the last reader."""
    from PIL import Image

    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
    except Exception:  # pragma: no cover - optional
        pass
    Image.MAX_IMAGE_PIXELS = None  # only the header is read, never the pixels
    with Image.open(path) as im:
        exif = im.getexif()
        return _from_ifds(exif, exif.get_ifd(0x8769), exif.get_ifd(0x8825))


#: dates libexiv2 decodes from maker notes: (date key, time key or None), tried in order
EXIV2_MAKERNOTE_DATES = (
    ("Exif.Pentax.Date", "Exif.Pentax.Time"),
    ("Exif.PentaxDng.Date", "Exif.PentaxDng.Time"),
    ("Exif.MinoltaCsNew.MinoltaDate", "Exif.MinoltaCsNew.MinoltaTime"),
    ("Exif.MinoltaCsOld.MinoltaDate", "Exif.MinoltaCsOld.MinoltaTime"),
    ("Exif.Sony1MltCsNew.MinoltaDate", "Exif.Sony1MltCsNew.MinoltaTime"),
    ("Exif.Sony1MltCsOld.MinoltaDate", "Exif.Sony1MltCsOld.MinoltaTime"),
    ("Exif.SonySInfo1.SonyDateTime", None),
    ("Exif.Sony2010e.SonyDateTime", None),
)


#: the XMP capture dates, as :func:`_xmp_packet_dates` names them, and their exiv2 keys
XMP_KEYS = (("DateCreated", "Xmp.photoshop.DateCreated"), ("DateTimeOriginal", "Xmp.exif.DateTimeOriginal"),
            ("CreateDate", "Xmp.xmp.CreateDate"))


def _tags_from_exiv2(path: str) -> dict[str, Any]:
    """The capture-time tags as libexiv2 reads them (python-exiv2), with the maker-note
    dates it decodes (and the Reconyx one, from the maker note it hands over), and the
    XMP packet's capture dates as ``_xmp`` (so that the file need not be scanned for it)."""
    import exiv2

    exiv2.LogMsg.setLevel(exiv2.LogMsg.Level.mute)  # its warnings about odd files go to stderr
    # an absolute path: libexiv2 would fetch a name that looks like a URL
    image = exiv2.ImageFactory.open(os.path.abspath(path))
    image.readMetadata()
    xmp = {}
    for prop, key in XMP_KEYS:
        it = image.xmpData().findKey(exiv2.XmpKey(key))
        if it != image.xmpData().end() and (value := _text(it.toString())):
            xmp[prop] = value
    iptc = _iptc_date(exiv2, image.iptcData())
    data = image.exifData()
    if data.empty():  # no EXIF here (the next reader may find some); the XMP and IPTC are read
        return {"_xmp": xmp, **({"iptc_dt": iptc} if iptc else {})}

    def datum(key: str) -> Any:
        try:
            it = data.findKey(exiv2.ExifKey(key))
        except exiv2.Exiv2Error:  # a key this libexiv2 does not know
            return None
        return None if it == data.end() else it

    def text(key: str) -> str | None:
        d = datum(key)
        return d.toString() if d is not None else None

    def numbers(key: str) -> list[float] | None:
        d = datum(key)
        return [d.toFloat(i) for i in range(d.count())] if d is not None else None

    out = _normalise({
        "make": text("Exif.Image.Make"), "model": text("Exif.Image.Model"),
        # DateTimeOriginal belongs in the Exif IFD; TIFF/EP cameras put it in IFD0
        "dto": text("Exif.Photo.DateTimeOriginal") or text("Exif.Image.DateTimeOriginal"),
        "dtd": text("Exif.Photo.DateTimeDigitized"), "dt": text("Exif.Image.DateTime"),
        "subsec_o": text("Exif.Photo.SubSecTimeOriginal"), "subsec_d": text("Exif.Photo.SubSecTimeDigitized"),
        "subsec": text("Exif.Photo.SubSecTime"),
        "off_o": text("Exif.Photo.OffsetTimeOriginal"), "off_d": text("Exif.Photo.OffsetTimeDigitized"),
        "off": text("Exif.Photo.OffsetTime"),
        "gps_date": text("Exif.GPSInfo.GPSDateStamp"), "gps_time": numbers("Exif.GPSInfo.GPSTimeStamp"),
        "lat": numbers("Exif.GPSInfo.GPSLatitude"), "lat_ref": text("Exif.GPSInfo.GPSLatitudeRef"),
        "lon": numbers("Exif.GPSInfo.GPSLongitude"), "lon_ref": text("Exif.GPSInfo.GPSLongitudeRef"),
    })
    if image.mimeType() == "image/x-canon-crw" and "dto" in out:
        # libexiv2 maps a CRW's CIFF TimeStamp record (seconds of the wall clock) to DateTimeOriginal
        out["makernote_dt"], out["makernote_tag"] = out.pop("dto"), "CanonRaw:TimeStamp"
        return dict(out, _xmp=xmp, **({"iptc_dt": iptc} if iptc else {}))
    for date_key, time_key in EXIV2_MAKERNOTE_DATES:
        day = datum(date_key)
        if day is None:
            continue
        clock = datum(time_key) if time_key else None
        stamp = f"{day.print()} {clock.print()}" if clock is not None else day.print()
        out["makernote_dt"], out["makernote_tag"] = _text(stamp), date_key.split(".", 1)[1].replace(".", ":")
        break
    note = datum("Exif.Photo.MakerNote")
    if note is not None and "makernote_dt" not in out:
        found = reconyx_date(bytes(note.value().data()), out.get("make"))
        if found:
            out["makernote_dt"], out["makernote_tag"] = found, "Reconyx:DateTimeOriginal"
    if iptc:
        out["iptc_dt"] = iptc
    out["_xmp"] = xmp
    return out


def _iptc_date(exiv2: Any, iptc: Any) -> str | None:
    """IPTC's DateCreated and TimeCreated (with its offset: ``10:00:00+05:45``) as one ISO
    text, when both are there (scanning and news software write them, often alone)."""
    found = []
    for key in ("Iptc.Application2.DateCreated", "Iptc.Application2.TimeCreated"):
        it = iptc.findKey(exiv2.IptcKey(key))
        if it == iptc.end():
            return None
        found.append(it.toString().strip())
    return "T".join(found)


def reconyx_date(note: bytes, make: str | None) -> str | None:
    """The capture date in a Reconyx trail camera's maker note, as an EXIF date text, or
    None when the note is not Reconyx's. Three layouts (exiftool's Reconyx tables):

    * HyperFire (HC500, HC600, PC900): starts ``01 f1`` (then ``02 00`` or ``03 00``, or the
      camera's Make is ``RECONYX``); little-endian 16-bit words, the date at word 0x0b as
      second, minute, hour, month, day, year (some firmware wrote those words big-endian)
    * UltraFire: starts ``RECONYXUF\\0``; bytes from 0x3b: second, minute, hour, day,
      month, then the year in two bytes, low first
    * HF2 PRO: starts ``RECONYXH2\\0``; 16-bit words from byte 0x3e: second, minute, hour,
      day, month, year
    """
    if note.startswith(b"RECONYXUF\0") and len(note) >= 0x42:
        sec, mi, hour, day, month, y_lo, y_hi = note[0x3B:0x42]
        year = y_lo + 256 * y_hi
    elif note.startswith(b"RECONYXH2\0") and len(note) >= 0x4A:
        sec, mi, hour, day, month, year = struct.unpack_from("<6H", note, 0x3E)
    elif note[:2] == b"\x01\xf1" and (note[2:4] in (b"\x02\x00", b"\x03\x00") or (make or "").strip() == "RECONYX") \
            and len(note) >= 0x22:
        words = list(struct.unpack_from("<6H", note, 0x16))
        if words[0] & 0xFF00 and not words[0] & 0xFF:  # written big-endian
            words = [(w >> 8) | ((w & 0xFF) << 8) for w in words]
        sec, mi, hour, month, day, year = words
    else:
        return None
    return f"{year:04d}:{month:02d}:{day:02d} {hour:02d}:{mi:02d}:{sec:02d}"


_PICTURE_INFO_TIME = re.compile(rb"TimeDate=([\x20-\x7e]+?)\s*(?=[\r\n\0]|$)")


def picture_info_date(block: bytes) -> str | None:
    """The capture date of an APP12 "Picture Info" block (old Olympus, Agfa, Polaroid
    JPEGs): ``TimeDate=`` a count of seconds since 1970 *of the camera's wall clock* (the
    camera knew no zone; exiftool shows it through gmtime), as an EXIF date text; a value
    that is not a count is returned as written."""
    m = _PICTURE_INFO_TIME.search(block)
    if not m:
        return None
    value = m.group(1).decode("ascii")
    if not value.isdigit():
        return value
    seconds = int(value)
    if seconds <= 0:
        return None
    try:
        return (datetime(1970, 1, 1) + timedelta(seconds=seconds)).strftime("%Y:%m:%d %H:%M:%S")
    except OverflowError:
        return None


def _from_ifds(ifd0: Any, ex: Any, gps: Any) -> dict[str, Any]:
    """The capture-time fields from the three EXIF directories (IFD0, Exif, GPS), and a
    Reconyx maker note's date (:func:`reconyx_date`)."""
    out = _normalise({
        "make": ifd0.get(0x010F), "model": ifd0.get(0x0110),
        "dto": ex.get(0x9003) or ifd0.get(0x9003), "dtd": ex.get(0x9004), "dt": ifd0.get(0x0132),
        "subsec_o": ex.get(0x9291), "subsec_d": ex.get(0x9292), "subsec": ex.get(0x9290),
        "off_o": ex.get(0x9011), "off_d": ex.get(0x9012), "off": ex.get(0x9010),
        "gps_date": gps.get(0x001D), "gps_time": gps.get(0x0007),
        "lat": gps.get(0x0002), "lat_ref": gps.get(0x0001),
        "lon": gps.get(0x0004), "lon_ref": gps.get(0x0003),
    })
    note = ex.get(0x927C)
    found = reconyx_date(note, out.get("make")) if isinstance(note, bytes) else None
    if found:
        out["makernote_dt"], out["makernote_tag"] = found, "Reconyx:DateTimeOriginal"
    return out


def _normalise(t: dict[str, Any]) -> dict[str, Any]:
    """Plain, picklable values: texts, a GPS time triple and signed coordinates."""
    out: dict[str, Any] = {}
    for key in ("dto", "dtd", "dt", "subsec_o", "subsec_d", "subsec", "off_o", "off_d", "off", "gps_date",
                "make", "model", "makernote_dt", "makernote_tag", "iptc_dt"):
        s = _text(t.get(key))
        if s:
            out[key] = s
    gt = _floats(t.get("gps_time"))
    if gt:
        out["gps_time"] = (gt + [0.0, 0.0])[:3]
    lat = _coordinate(t.get("lat"), t.get("lat_ref"))
    lon = _coordinate(t.get("lon"), t.get("lon_ref"))
    if lat is not None and lon is not None:
        out["lat"], out["lon"] = lat, lon
    return out


_XMP_DATE = re.compile(
    rb"(photoshop:DateCreated|exif:DateTimeOriginal|xmp:CreateDate)"
    rb"""(?:\s*=\s*["']([^"'<>]{4,40})["']|\s*>\s*([^<]{4,40})<)"""
)


XMP_APP1 = b"http://ns.adobe.com/xap/1.0/\x00"


def _jpeg_header(fh: Any) -> dict[str, bytes] | None:
    """The XMP packet (APP1) and the "Picture Info" block (APP12) of a JPEG, walking the
    header's segments only (no need to read the picture data); None when the header is
    not a clean JPEG one."""
    found: dict[str, bytes] = {}
    fh.seek(2)
    for _ in range(64):  # a JPEG header has a handful of segments
        marker = fh.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            return None
        if marker[1] in (0xDA, 0xD9):  # start of scan / end of image: the header is over
            return found
        size = struct.unpack(">H", fh.read(2) or b"\0\0")[0]
        if size < 2:
            return None
        if marker[1] == 0xE1 and "xmp" not in found:
            payload = fh.read(size - 2)
            if payload.startswith(XMP_APP1):
                found["xmp"] = payload[len(XMP_APP1):]
        elif marker[1] == 0xEC and "picture_info" not in found:
            payload = fh.read(size - 2)
            if not payload.startswith(b"Ducky"):  # Photoshop's APP12 holds no date
                found["picture_info"] = payload
        else:
            fh.seek(size - 2, 1)
    return None


def _header_dates(path: str, fmt: str | None = None,
                  known_xmp: dict[str, str] | None = None) -> tuple[dict[str, str], str | None]:
    """Capture dates written in the file's XMP packet (ISO 8601 texts, offsets kept), and
    a JPEG's APP12 Picture Info date (:func:`picture_info_date`). A JPEG's header is
    walked; another file's XMP is ``known_xmp`` when a reader read it, else scanned for."""
    picture_info = None
    if fmt != "jpeg" and known_xmp is not None:
        return known_xmp, None
    with open(path, "rb") as fh:
        header = _jpeg_header(fh) if fmt == "jpeg" else None
        if header is None:
            fh.seek(0)
            blob = fh.read(XMP_SCAN_BYTES)
        else:
            blob = header.get("xmp", b"")
            picture_info = picture_info_date(header["picture_info"]) if "picture_info" in header else None
    return _xmp_packet_dates(blob), picture_info


def _xmp_packet_dates(blob: bytes) -> dict[str, str]:
    start = blob.find(b"<x:xmpmeta")
    if start < 0:
        return {}
    end = blob.find(b"</x:xmpmeta>", start)
    packet = blob[start:end if end > 0 else start + 256 * 1024]
    found: dict[str, str] = {}
    for m in _XMP_DATE.finditer(packet):
        name = m.group(1).decode().split(":", 1)[1]
        value = (m.group(2) or m.group(3) or b"").decode("utf-8", "replace").strip()
        if value:
            found.setdefault(name, value)
    return found


def read_tags(path: str | os.PathLike) -> dict[str, Any]:
    """Everything the decision needs from one file, as plain data.

    ``{"format", "reader", "tags": {...}, "xmp": {...}}`` or ``{"error": reason}``
    where reason is ``no_such_file``, ``not_a_file``, ``unreadable``, ``empty``,
    ``not_an_image``, ``unsupported_format`` (a container no reader knows: a video),
    ``corrupt`` or ``corrupt_metadata``. exiv2 first; exifread, then Pillow (with
    pillow-heif) when it fails or finds nothing. A date only in a maker note or an older
    container is ``tags["makernote_dt"]`` (its tag in ``tags["makernote_tag"]``).
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(32)
    except FileNotFoundError:
        return {"error": "no_such_file"}
    except IsADirectoryError:
        return {"error": "not_a_file"}
    except OSError:
        return {"error": "unreadable"}
    if size == 0:
        return {"error": "empty"}
    fmt = sniff_image(head)
    tags: dict[str, Any] = {}
    reader = None
    problems = []
    readers = [("exiv2", _tags_from_exiv2), ("exifread", _tags_from_exifread), ("pillow", _tags_from_pillow)]
    known_xmp = None
    for name, fn in readers:
        try:
            got = fn(path)
        except Exception as exc:  # broken files raise anything; the next reader may cope
            problems.append(f"{name}:{type(exc).__name__}")
            continue
        known_xmp = got.pop("_xmp", known_xmp)
        if got:
            tags, reader = got, name
            break
        if reader is None:
            reader = name
    try:
        xmp, picture_info = _header_dates(path, fmt, known_xmp)
    except Exception:
        xmp, picture_info = {}, None
    if picture_info and "makernote_dt" not in tags:
        tags = dict(tags, makernote_dt=picture_info, makernote_tag="PictureInfo:TimeDate")
    if fmt is None and not tags and not xmp and not is_iso_media(head):
        return {"error": "not_an_image"}
    if not tags and not xmp:
        if "pillow:UnidentifiedImageError" in problems:
            # Pillow cannot open it: a container no reader knows (a video, a rare RAW), or,
            # for a common image format, a file broken beyond its first bytes
            return {"error": "unsupported_format" if fmt not in COMMON_FORMATS else "corrupt",
                    "format": fmt, "problems": problems}
        if len(problems) == len(readers):
            return {"error": "corrupt_metadata", "format": fmt, "problems": problems}
    return {"format": fmt, "reader": reader, "tags": tags, "xmp": xmp, "problems": problems}



# ----------------------------------------------------------------------------------------
# many files, each in a reader process with a time limit
# ----------------------------------------------------------------------------------------

def _unread(path: str, why: str, detail: str) -> dict[str, Any]:
    """The answer for a file whose reading hung, crashed its reader or raised."""
    if why == "raised":
        return {"error": "corrupt_metadata", "problems": [detail]}
    return {"error": "timeout" if why == "timeout" else "reader_crashed"}


def read_all_tags(paths: list[str], *, timeout: float = 10.0, workers: int | None = None) -> list[dict[str, Any]]:
    """:func:`read_tags` for many files, in order, each in a reader process limited to ``timeout`` seconds."""
    return isolated_map(read_tags, paths, lost=_unread, timeout=timeout, workers=workers or readers_for(len(paths)),
                        chunk=READ_CHUNK, preload=READER_IMPORTS)


def readers_for(count: int) -> int:
    """How many reader processes :func:`read_all_tags` uses for ``count`` files: a second
    pays off only when there is enough to share (each costs ~0.1 s to start)."""
    return min(2, os.cpu_count() or 1) if count >= 4 * READ_CHUNK * 2 else 1
