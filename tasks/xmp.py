"""XMP sidecars: what photo-escape restored about a photo, in a file photo applications read.

Beside a delivered ``NAME.EXT`` goes ``NAME.EXT.xmp`` (the name digiKam, darktable and
Immich look for; on S3 ``<key>.xmp``); the photo's own bytes are never touched. The
packet says:

* ``exif:DateTimeOriginal`` and ``photoshop:DateCreated``: the restored local time with
  its offset (``2019-03-10T10:00:00+05:45``); without an offset only when the zone is
  truly unknown; the UTC instant (``Z``) when only that is known; a coarse date only as
  far as it is known (``1962-05``, ``1950``)
* ``exif:GPSLatitude`` / ``exif:GPSLongitude`` (``DD,MM.mmmmmmN``) when the source knows
  the place (``0, 0`` is no place)
* ``dc:title``, ``dc:description`` from the source
* albums as ``dc:subject`` and ``lr:hierarchicalSubject`` ``Albums|<title>``; the
  source's tags as ``dc:subject``
* in the ``photoescape`` namespace (:data:`NAMESPACE`): the time's provenance, where the
  zone came from, the zone, the UTC instant, the granularity, the original's sha256

It is built with libexiv2's XMP toolkit (python-exiv2's ``XmpData`` and
``XmpParser.encode``), never a string template, from the item's capture record and
its ``meta`` (:class:`photo_escape.outcomes.ItemMeta`). The same item gives the same
bytes (no time stamps in it), so a rerun rewrites a sidecar only when what it says
changed: :func:`xmp_sidecar` returns the bytes, the destinations compare them with
what is there. Plain code, no Prefect.
"""

from __future__ import annotations

import hashlib
import math
import threading
from datetime import datetime
from typing import Any

NAMESPACE = "http://ns.photo-escape.org/capture/1.0/"
PREFIX = "photoescape"
SUFFIX = ".xmp"
HEADER = b'<?xml version="1.0" encoding="UTF-8"?>\n'
#: how much of a coarse date XMP says (its date format allows YYYY, YYYY-MM, YYYY-MM-DD)
GRANULAR_FORMATS = {"year": "%Y", "circa": "%Y", "month": "%Y-%m", "day": "%Y-%m-%d"}
ALBUMS = "Albums"

_lock = threading.Lock()  # libexiv2's namespace registry and XMP toolkit are process-wide
_registered = False


def _exiv2() -> Any:
    """python-exiv2, with the photo-escape namespace registered (once)."""
    global _registered
    import exiv2

    if not _registered:
        exiv2.XmpProperties.registerNs(NAMESPACE, PREFIX)
        _registered = True
    return exiv2


def capture_date(capture: dict[str, Any] | None) -> str | None:
    """The capture time as an XMP date: the local wall clock with its offset; the local
    time alone when no zone is known; the UTC instant when only that is known; a coarse
    date only as far as it is known."""
    capture = capture or {}
    local, utc, off = capture.get("local"), capture.get("utc"), capture.get("offset_minutes")
    if local:
        when = datetime.fromisoformat(str(local))
        fmt = GRANULAR_FORMATS.get(capture.get("granularity") or "")
        if fmt:
            return when.strftime(fmt)
        text = when.isoformat(timespec="milliseconds" if when.microsecond else "seconds")
        if off is None:
            return text
        sign = "-" if off < 0 else "+"
        return f"{text}{sign}{abs(off) // 60:02d}:{abs(off) % 60:02d}"
    if utc:
        when = datetime.fromisoformat(str(utc))
        return when.replace(tzinfo=None).isoformat(timespec="milliseconds" if when.microsecond else "seconds") + "Z"
    return None


def gps_coordinate(value: float, positive: str, negative: str) -> str:
    """A coordinate in XMP's GPSCoordinate form ``DDD,MM.mmmmmmK`` (degrees, decimal minutes,
    a hemisphere letter)."""
    ref = positive if value >= 0 else negative
    minutes = round(abs(value) * 60, 6)
    degrees, minutes = divmod(minutes, 60)
    return f"{int(degrees)},{minutes:.6f}{ref}"


def _place(meta: dict[str, Any]) -> tuple[float, float] | None:
    try:
        lat, lon = float(meta["latitude"]), float(meta["longitude"])
    except (KeyError, TypeError, ValueError):
        return None
    if not (math.isfinite(lat) and math.isfinite(lon)) or (lat == 0 and lon == 0):
        return None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return lat, lon


def _texts(values: Any) -> list[str]:
    """Non-blank texts, in order, each once."""
    out: list[str] = []
    for v in values or ():
        text = str(v).strip()
        if text and text not in out:
            out.append(text)
    return out


def xmp_sidecar(capture: dict[str, Any] | None, meta: dict[str, Any] | None = None, *,
                sha256: str | None = None) -> bytes:
    """The XMP sidecar of a photo from its capture-time record (``item["capture"]``:
    local, utc, offset_minutes, tz, provenance, granularity, source) and what its source
    knows (``item["meta"]``), as UTF-8 bytes. The same input always gives the same bytes."""
    capture, meta = capture or {}, meta or {}
    with _lock:
        exiv2 = _exiv2()
        data = exiv2.XmpData()

        def text(key: str, value: Any) -> None:
            if value not in (None, ""):
                data[key] = str(value)

        def alt(key: str, value: Any) -> None:
            if value is not None and str(value).strip():
                v = exiv2.LangAltValue()
                v.read(f'lang="x-default" {str(value).strip()}')
                data.add(exiv2.XmpKey(key), v)

        def bag(key: str, values: list[str]) -> None:
            if values:
                v = exiv2.XmpArrayValue(exiv2.TypeId.xmpBag)
                for item in values:
                    v.read(item)
                data.add(exiv2.XmpKey(key), v)

        when = capture_date(capture)
        text("Xmp.exif.DateTimeOriginal", when)
        text("Xmp.photoshop.DateCreated", when)
        place = _place(meta)
        if place:
            text("Xmp.exif.GPSVersionID", "2.3.0.0")
            text("Xmp.exif.GPSLatitude", gps_coordinate(place[0], "N", "S"))
            text("Xmp.exif.GPSLongitude", gps_coordinate(place[1], "E", "W"))
        alt("Xmp.dc.title", meta.get("title"))
        alt("Xmp.dc.description", meta.get("description"))
        albums = _texts(meta.get("albums"))
        bag("Xmp.dc.subject", _texts(albums + _texts(meta.get("tags"))))
        bag("Xmp.lr.hierarchicalSubject", [f"{ALBUMS}|{a.replace('|', '/')}" for a in albums])
        source = capture.get("source") or {}
        ns = f"Xmp.{PREFIX}."
        text(ns + "Provenance", capture.get("provenance"))
        text(ns + "ZoneSource", source.get("zone") if isinstance(source, dict) else None)
        text(ns + "TimeZone", capture.get("tz"))
        text(ns + "CaptureTimeUTC", capture.get("utc"))
        text(ns + "Granularity", capture.get("granularity"))
        text(ns + "OriginalSHA256", sha256)
        flags = exiv2.XmpParser.XmpFormatFlags
        status, packet = exiv2.XmpParser.encode(data, flags.omitPacketWrapper | flags.useCompactFormat)
    if status != 0:
        raise RuntimeError(f"libexiv2 could not write the XMP packet (status {status})")
    return HEADER + packet.encode("utf-8")


def sidecar_kinds(value: Any) -> list[str]:
    """A destination's ``sidecars`` setting as a list, each kind once: ``xmp`` and
    ``[xmp, json]`` alike (for the config models' validators)."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    out: list[str] = []
    for kind in value:
        kind = str(kind).strip().lower()
        if kind not in out:
            out.append(kind)
    return out


def digest(packet: bytes) -> str:
    """The sha256 of a sidecar's bytes (what a destination stores to know it unchanged)."""
    return hashlib.sha256(packet).hexdigest()


def is_ours(existing: bytes) -> bool:
    """Whether a sidecar already there was written by photo-escape (it names our
    namespace): one written by another application is never replaced."""
    return NAMESPACE.encode() in existing
