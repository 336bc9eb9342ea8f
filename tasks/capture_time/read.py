"""Reading what a photo file says about its capture: EXIF tags and XMP dates, as plain data.

The readers, best first for each container:

* ``cr3-boxes``    Canon CR3: the TIFF structures in its CMT1/CMT2/CMT4 boxes
* ``raf-preview``  Fujifilm RAF: the EXIF of the JPEG preview its header points to
* ``exifread``     JPEG, TIFF and TIFF-based RAW, HEIC, PNG, WebP (maker notes skipped)
* ``pillow``       the same through Pillow and pillow-heif, when exifread fails or finds nothing

and the XMP packet's capture dates beside them. A reader returns the tags the
decision needs (:mod:`tasks.capture_time.zone`) as texts and numbers, never its own
objects: the answer crosses a process boundary.

Reading metadata from real camera files is the risky part (exifread has known loops
on broken files), so :func:`read_all_tags` reads every file in a worker process with a
time limit (:mod:`tasks.isolation`): a file that hangs or crashes its reader gets
``error: timeout`` or ``error: reader_crashed`` and the next file goes on.

A new reader (a maker note, a sidecar) is a function returning the same tag names,
added to the list in :func:`read_tags`.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import struct
from typing import Any

from tasks.files import is_iso_media, sniff_image
from tasks.isolation import isolated_map

COMMON_FORMATS = ("jpeg", "tiff", "png", "webp", "heif")  # what the readers are expected to open
XMP_SCAN_BYTES = 4 * 1024 * 1024  # XMP packets sit near the start of camera files
READ_CHUNK = 8  # paths sent to a reader at once: answers stream back, one time limit per file
READER_IMPORTS = ("exifread", "PIL.Image")  # imported when a reader process starts, not on a file's clock


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


def _tags_from_exifread(path: str | io.BytesIO) -> dict[str, Any]:
    """The capture-time tags as exifread reads them (maker notes skipped: faster, fewer loops)."""
    import exifread

    logging.getLogger("exifread").setLevel(logging.CRITICAL)
    if isinstance(path, io.BytesIO):
        raw = exifread.process_file(path, details=False, extract_thumbnail=False)
    else:
        with open(path, "rb") as fh:
            raw = exifread.process_file(fh, details=False, extract_thumbnail=False)
    if not raw:
        return {}

    def v(name: str) -> Any:
        tag = raw.get(name)
        return getattr(tag, "values", tag) if tag is not None else None

    return _normalise({
        "make": v("Image Make"), "model": v("Image Model"),
        "dto": v("EXIF DateTimeOriginal"), "dtd": v("EXIF DateTimeDigitized"), "dt": v("Image DateTime"),
        "subsec_o": v("EXIF SubSecTimeOriginal"), "subsec_d": v("EXIF SubSecTimeDigitized"),
        "subsec": v("EXIF SubSecTime"),
        "off_o": v("EXIF OffsetTimeOriginal"), "off_d": v("EXIF OffsetTimeDigitized"), "off": v("EXIF OffsetTime"),
        "gps_date": v("GPS GPSDate"), "gps_time": v("GPS GPSTimeStamp"),
        "lat": v("GPS GPSLatitude"), "lat_ref": v("GPS GPSLatitudeRef"),
        "lon": v("GPS GPSLongitude"), "lon_ref": v("GPS GPSLongitudeRef"),
    })


def _tags_from_pillow(path: str) -> dict[str, Any]:
    """The same tags through Pillow (and pillow-heif for HEIC/HEIF): the second reader."""
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


RAF_PREVIEW_READ = 512 * 1024  # the EXIF of a RAF's embedded JPEG sits at the preview's start


def _tags_from_raf(path: str) -> dict[str, Any]:
    """Fujifilm RAF: the EXIF of the JPEG preview the header points to (offset at byte 84)."""
    with open(path, "rb") as fh:
        head = fh.read(92)
        if len(head) < 92:
            raise ValueError("short RAF header")
        offset, length = struct.unpack(">II", head[84:92])
        fh.seek(offset)
        preview = fh.read(min(length, RAF_PREVIEW_READ))
    if preview[:2] != b"\xff\xd8":
        raise ValueError("RAF preview is not a JPEG")
    return _tags_from_exifread(io.BytesIO(preview))


CR3_SCAN_BYTES = 2 * 1024 * 1024


def _tags_from_cr3(path: str) -> dict[str, Any]:
    """Canon CR3: the TIFF structures in its CMT1 (IFD0), CMT2 (Exif) and CMT4 (GPS) boxes."""
    from PIL import Image

    with open(path, "rb") as fh:
        blob = fh.read(CR3_SCAN_BYTES)
    ifds: dict[str, dict[int, Any]] = {}
    for box in (b"CMT1", b"CMT2", b"CMT4"):
        at = blob.find(box)
        if at < 4:
            continue
        size = struct.unpack(">I", blob[at - 4:at])[0]
        payload = blob[at + 4:at - 4 + size]
        if payload[:4] not in (b"II*\x00", b"MM\x00*"):
            continue
        exif = Image.Exif()
        exif.load(payload)
        ifds[box.decode()] = dict(exif.items())
    if not ifds:
        return {}
    return _from_ifds(ifds.get("CMT1", {}), ifds.get("CMT2", {}), ifds.get("CMT4", {}))


def _from_ifds(ifd0: Any, ex: Any, gps: Any) -> dict[str, Any]:
    """The capture-time fields from the three EXIF directories (IFD0, Exif, GPS),
    whichever container they came from (a JPEG/TIFF header, a CR3's CMT boxes)."""
    return _normalise({
        "make": ifd0.get(0x010F), "model": ifd0.get(0x0110),
        "dto": ex.get(0x9003), "dtd": ex.get(0x9004), "dt": ifd0.get(0x0132),
        "subsec_o": ex.get(0x9291), "subsec_d": ex.get(0x9292), "subsec": ex.get(0x9290),
        "off_o": ex.get(0x9011), "off_d": ex.get(0x9012), "off": ex.get(0x9010),
        "gps_date": gps.get(0x001D), "gps_time": gps.get(0x0007),
        "lat": gps.get(0x0002), "lat_ref": gps.get(0x0001),
        "lon": gps.get(0x0004), "lon_ref": gps.get(0x0003),
    })


def _normalise(t: dict[str, Any]) -> dict[str, Any]:
    """Plain, picklable values: texts, a GPS time triple and signed coordinates."""
    out: dict[str, Any] = {}
    for key in ("dto", "dtd", "dt", "subsec_o", "subsec_d", "subsec", "off_o", "off_d", "off", "gps_date",
                "make", "model"):
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


def _jpeg_xmp(fh: Any) -> bytes | None:
    """The XMP packet of a JPEG from its APP1 segment, walking the header's segments only
    (no need to read the picture data); None when the header is not a clean JPEG one."""
    fh.seek(2)
    for _ in range(64):  # a JPEG header has a handful of segments
        marker = fh.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            return None
        if marker[1] in (0xDA, 0xD9):  # start of scan / end of image: no XMP in the header
            return b""
        size = struct.unpack(">H", fh.read(2) or b"\0\0")[0]
        if size < 2:
            return None
        if marker[1] == 0xE1:
            payload = fh.read(size - 2)
            if payload.startswith(XMP_APP1):
                return payload[len(XMP_APP1):]
        else:
            fh.seek(size - 2, 1)
    return None


def _xmp_dates(path: str, fmt: str | None = None) -> dict[str, str]:
    """Capture dates written in the file's XMP packet (ISO 8601 texts, offsets kept)."""
    with open(path, "rb") as fh:
        blob = _jpeg_xmp(fh) if fmt == "jpeg" else None
        if blob is None:
            fh.seek(0)
            blob = fh.read(XMP_SCAN_BYTES)
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
    ``corrupt`` or ``corrupt_metadata``. exifread first; Pillow (with pillow-heif) when
    exifread fails or finds nothing.
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
    readers = [("exifread", _tags_from_exifread), ("pillow", _tags_from_pillow)]
    if fmt == "raf":
        readers.insert(0, ("raf-preview", _tags_from_raf))
    elif fmt == "cr3":
        readers.insert(0, ("cr3-boxes", _tags_from_cr3))
    for name, fn in readers:
        try:
            got = fn(path)
        except Exception as exc:  # broken files raise anything; the next reader may cope
            problems.append(f"{name}:{type(exc).__name__}")
            continue
        if got:
            tags, reader = got, name
            break
        if reader is None:
            reader = name
    try:
        xmp = _xmp_dates(path, fmt)
    except Exception:
        xmp = {}
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
    # a second reader pays off only when there is enough to share (each costs ~0.1 s to start)
    n = workers or (min(2, os.cpu_count() or 1) if len(paths) >= 4 * READ_CHUNK * 2 else 1)
    return isolated_map(read_tags, paths, lost=_unread, timeout=timeout, workers=n, chunk=READ_CHUNK,
                        preload=READER_IMPORTS)
