"""Deciding the true capture time of a photo: local wall clock, UTC instant, and where the zone came from.

EXIF times are local wall-clock times with no zone. To upload a photo at the right
moment we need an absolute UTC time, and to let a person review it we must say where
the time and the zone came from. The evidence, best first (the *provenance* codes):

0. What the photo's source knows (``meta``, :class:`photo_escape.outcomes.ItemMeta`):

   * ``sidecar:utc``  a UTC instant (a Google Takeout sidecar's ``photoTakenTime``); its zone
                      from the EXIF offset tags, EXIF GPS, the sidecar's position, the
                      difference between the file's wall clock and the instant (a whole
                      quarter hour within +-14 h), then the rules and the default
   * the source's own name (``meta.time_provenance``, e.g. ``source:flickr``): a wall clock
                      (Flickr's "date taken"), zoned as EXIF's is; a coarse one (month,
                      year, circa) keeps its ``granularity`` in the record

   When the file's own clock disagrees by more than a zone explains (a date corrected in
   Google Photos or on Flickr, a camera clock never set), the source wins and the conflict
   (``sidecar_vs_file``, ``source_vs_file``) keeps both values: a source's date is what a
   person last said it was.

1. ``exif:offset``   DateTimeOriginal (+ SubSecTimeOriginal) with OffsetTimeOriginal, else OffsetTime
                     (``iptc:offset``: with no EXIF or XMP date, IPTC DateCreated + TimeCreated's offset)
2. ``xmp:offset``    an offset carried by XMP DateCreated (its wall time must agree with EXIF's)
3. ``gps:time``      GPSDateStamp + GPSTimeStamp are UTC: offset = local - GPS, rounded to 15 minutes,
                     accepted when the leftover is <= 5 minutes and the offset is in -12:00..+14:00
                     (a GPS date one day off, a known camera bug, is corrected and noted in ``conflicts``)
4. ``gps:position``  latitude/longitude looked up offline to an IANA zone (timezonefinder), applied
                     with that zone's DST rules; ambiguous and non-existent local times are flagged
                     (``sidecar:position``: the source's latitude/longitude, the same way)
5. ``gps:utc``       no DateTimeOriginal but a GPS date and time: that UTC time, local from the position
6. ``rule``          a user rule (folder, file pattern, date range; first match wins)
7. ``previous``      the zone of the previous photo of the same folder sequence that had one of its own
8. ``default``       the job's ``default_tz``
9. ``unknown``       the local time is kept, ``utc`` is null. File times are never used.

When the file has no DateTimeOriginal, DateTimeDigitized, XMP capture date or GPS
time, its lesser clocks, each zoned as in 1-8 with the zone's provenance in
``source.zone`` (no zone: ``utc`` stays null):

* ``makernote``      a date only in a maker note or an older container (Reconyx, Pentax,
                     Minolta, Sony maker notes, an Olympus APP12 block, a Canon CRW record)
* ``exif:datetime``  IFD0 DateTime (when the file was last written: by then, often the capture)
* ``filename``       a date in the file's name (:mod:`tasks.capture_time.names`; a Pixel's
                     ``PXL_`` name is a UTC instant)

``none`` means nothing anywhere gives a capture time.

:func:`decide_own` weighs one photo's own evidence; :func:`capture_times` borrows a
zone for the photos left without one, over the whole list. The tags come from
:mod:`tasks.capture_time.read`; deciding is plain, fast code in the caller's process.
No Prefect here: the task wrapper lives elsewhere.
"""

from __future__ import annotations

import fnmatch
import functools
import math
import os
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path, PurePath
from typing import Any, Iterable
from zoneinfo import ZoneInfo

from tasks.capture_time.names import filename_time
from tasks.capture_time.read import read_all_tags
from tasks.files import IMAGE_SUFFIXES

PROVENANCES = (
    "sidecar:utc", "exif:offset", "iptc:offset", "xmp:offset", "gps:time", "gps:position", "gps:utc",
    "makernote", "exif:datetime", "filename",
    "rule", "previous", "default", "unknown", "none",
)  # and a source's own name for its wall clock (ItemMeta.time_provenance, e.g. "source:flickr")
#: where a zone may come from that is the photo's own (its provenance, or ``source.zone``
#: for the levels above): a later photo of the same sequence may borrow it
OWN_EVIDENCE = ("exif:offset", "iptc:offset", "xmp:offset", "gps:time", "gps:position", "gps:utc", "sidecar:position",
                "wall_clock")

MIN_OFFSET, MAX_OFFSET = -12 * 60, 14 * 60  # minutes; the world's civil offsets
GPS_STEP, GPS_SLACK = 15, 5  # minutes: offsets are multiples of 15; camera vs GPS clock slack
CONFLICT_MINUTES = 15  # sources disagreeing by more than this are reported
WALL_CLOCK_SLACK = 2  # seconds: a source's instant made from the file's own clock matches it to the second
LOOKBACK = 20  # files read on disk to find the previous photo's zone across a batch boundary


# ----------------------------------------------------------------------------------------
# parsing values
# ----------------------------------------------------------------------------------------

_EXIF_DT = re.compile(r"^\s*(\d{4})[:\-/.](\d{1,2})[:\-/.](\d{1,2})[ T]+(\d{1,2}):(\d{1,2})(?::(\d{1,2})(?:[.,](\d+))?)?\s*"
                      r"(Z|[+-]\d{2}:?\d{2})?")
_OFFSET = re.compile(r"^\s*([+-])(\d{1,2}):?(\d{2})\s*$")


def parse_offset(text: str | None) -> int | None:
    """Minutes east of UTC from ``+05:30``, ``-0330`` or ``Z``; None when blank or out of range."""
    if not text:
        return None
    if text.strip().upper() == "Z":
        return 0
    m = _OFFSET.match(text)
    if not m:
        return None
    minutes = int(m.group(2)) * 60 + int(m.group(3))
    if int(m.group(3)) >= 60:
        return None
    minutes = -minutes if m.group(1) == "-" else minutes
    return minutes if MIN_OFFSET <= minutes <= MAX_OFFSET else None


def format_offset(minutes: int) -> str:
    """``+05:30`` style text for an offset in minutes."""
    sign = "-" if minutes < 0 else "+"
    h, m = divmod(abs(int(minutes)), 60)
    return f"{sign}{h:02d}:{m:02d}"


def _fraction(subsec: str | None) -> int:
    """Microseconds from a SubSecTime text (``"12"`` means 0.12 s)."""
    digits = re.sub(r"\D", "", subsec or "")[:6]
    return int(digits.ljust(6, "0")) if digits else 0


def parse_exif_datetime(text: str | None, subsec: str | None = None) -> tuple[datetime | None, int | None]:
    """A naive wall-clock time (and an offset if the text carries one) from an EXIF or
    ISO 8601 date-time text; ``(None, None)`` for blanks, zeros and impossible dates."""
    if not text:
        return None, None
    m = _EXIF_DT.match(text)
    if not m:
        return None, None
    y, mo, d, h, mi = (int(m.group(k)) for k in range(1, 6))
    s = int(m.group(6) or 0)
    micro = _fraction(m.group(7)) if m.group(7) else _fraction(subsec)
    try:
        if y < 1800:
            return None, None
        if h == 24 and mi == 0 and s == 0:  # some cameras write midnight as 24:00:00
            when = datetime(y, mo, d) + timedelta(days=1)
        else:
            when = datetime(y, mo, d, h, mi, min(s, 59), micro)
    except ValueError:
        return None, None
    return when, parse_offset(m.group(8)) if m.group(8) else None


def parse_gps_datetime(date_text: str | None, hms: list[float] | None) -> tuple[date | None, float | None]:
    """The GPS date (if valid) and the GPS time of day in seconds (if valid)."""
    day = None
    if date_text:
        m = re.match(r"^\s*(\d{4})[:\-/](\d{1,2})[:\-/](\d{1,2})", date_text)
        if m:
            try:
                day = date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
            except ValueError:
                day = None
            if day is not None and day.year < 1980:
                day = None
    seconds = None
    if hms and len(hms) >= 1:
        h, mi, s = (list(hms) + [0.0, 0.0])[:3]
        if 0 <= h < 24 and 0 <= mi < 60 and 0 <= s < 61:
            seconds = h * 3600 + mi * 60 + s
    return day, seconds


# ----------------------------------------------------------------------------------------
# zones
# ----------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _finder() -> Any:
    from timezonefinder import TimezoneFinder

    return TimezoneFinder()


@functools.lru_cache(maxsize=4096)
def zone_at(lat: float, lon: float) -> str | None:
    """The IANA zone at a position (offline, timezonefinder), or None if not on the map."""
    if not (-90 <= lat <= 90 and -180 <= lon <= 180) or (lat == 0 and lon == 0):
        return None  # (0, 0) is the "null island" of cameras with no fix
    try:
        name = _finder().timezone_at(lng=lon, lat=lat)
        if name:
            ZoneInfo(name)  # a zone this machine's tz database lacks is no zone to use
        return name
    except Exception:
        return None


def zone_spec(text: str | None) -> tuple[str, Any] | None:
    """``("iana", "Asia/Kolkata")`` or ``("fixed", 330)`` from a zone name or a ``+05:30`` offset."""
    if not text:
        return None
    minutes = parse_offset(text)
    if minutes is not None:
        return ("fixed", minutes)
    if text.upper() in ("UTC", "GMT", "Z"):
        return ("iana", "UTC")
    try:
        ZoneInfo(text)
    except Exception:
        raise ValueError(f"{text!r} is not an IANA time zone (e.g. Europe/Paris) or an offset like +05:30") from None
    return ("iana", text)


def in_zone(local: datetime, zone: tuple[str, Any]) -> tuple[datetime, int, str, list[dict]]:
    """Apply a zone to a local wall-clock time: (UTC instant, offset minutes, tz text, flags).

    For an IANA zone the DST rules apply; a wall time that happened twice (clocks set
    back) is flagged ``ambiguous_local_time`` and taken as its first occurrence, one that
    never happened (clocks set forward) is flagged ``nonexistent_local_time`` and read
    with the offset in force just before the change.
    """
    kind, value = zone
    if kind == "fixed":
        off = int(value)
        return local - timedelta(minutes=off), off, format_offset(off), []
    z = ZoneInfo(value)
    first = local.replace(tzinfo=z, fold=0)
    second = local.replace(tzinfo=z, fold=1)
    o1, o2 = first.utcoffset(), second.utcoffset()
    off = int(round(o1.total_seconds() / 60))
    utc = (local - o1).replace(tzinfo=None)
    flags: list[dict] = []
    if o1 != o2:
        back = first.astimezone(timezone.utc).astimezone(z).replace(tzinfo=None)
        alt = int(round(o2.total_seconds() / 60))
        kind_flag = "nonexistent_local_time" if back != local else "ambiguous_local_time"
        flags.append({
            "kind": kind_flag, "tz": value, "local": local.isoformat(),
            "chosen_offset": format_offset(off), "other_offset": format_offset(alt),
            "other_utc": _utc_text(local - o2),
        })
    return utc, off, value, flags


def _utc_text(naive_utc: datetime) -> str:
    return naive_utc.replace(tzinfo=timezone.utc).isoformat()


def _round_offset(diff_minutes: float, slack: float = GPS_SLACK) -> int | None:
    """``diff`` rounded to the 15-minute grid if close enough to it and a real offset."""
    off = int(round(diff_minutes / GPS_STEP)) * GPS_STEP
    if abs(diff_minutes - off) <= slack and MIN_OFFSET <= off <= MAX_OFFSET:
        return off
    return None


def offset_from_gps(local: datetime, gps_day: date | None, gps_seconds: float,
                    hint: int | None = None) -> tuple[int | None, list[dict]]:
    """The zone offset that turns ``local`` into the GPS UTC time, and the notes about it.

    The GPS date is tried as written first; when that gives no valid offset, a day
    either way (some cameras write the date of the wrong day while the time of day is
    right). Without a GPS date the time of day decides, and between two valid offsets
    a day apart (+13:00 or -11:00) the position's offset (``hint``) or the smaller wins.
    """
    notes: list[dict] = []
    gps_day_used = gps_day or local.date()
    gps_dt = datetime.combine(gps_day_used, time()) + timedelta(seconds=gps_seconds)
    diff = (local - gps_dt).total_seconds() / 60
    if gps_day is not None:
        off = _round_offset(diff)
        if off is not None:
            return off, notes
    candidates = [(k, o) for k in (0, -1, 1) if (o := _round_offset(diff + k * 1440)) is not None]
    if gps_day is not None:
        candidates = [(k, o) for k, o in candidates if k != 0]
    if not candidates:
        notes.append({"kind": "gps_time_unusable", "gps_utc": _utc_text(gps_dt) if gps_day else None,
                      "gps_time": _seconds_text(gps_seconds),
                      "minutes_from_grid": round(abs(diff - round(diff / GPS_STEP) * GPS_STEP) % 1440, 1)})
        return None, notes
    if len(candidates) > 1:
        if hint is not None and any(o == hint for _, o in candidates):
            k, off = next((k, o) for k, o in candidates if o == hint)
        else:
            k, off = min(candidates, key=lambda c: (abs(c[1]), c[0]))
        notes.append({"kind": "gps_offset_ambiguous", "candidates": [format_offset(o) for _, o in candidates],
                      "chosen_offset": format_offset(off)})
    else:
        k, off = candidates[0]
    if gps_day is not None and k != 0:
        # k days were added to the local-minus-GPS difference: the true GPS date is k days earlier
        notes.append({"kind": "gps_date_off_by_day", "gps_date": gps_day.isoformat(),
                      "corrected_gps_date": (gps_day - timedelta(days=k)).isoformat(),
                      "offset": format_offset(off)})
    return off, notes


def _seconds_text(seconds: float) -> str:
    h, rest = divmod(int(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}:{s:02d}"


# ----------------------------------------------------------------------------------------
# deciding one photo from its own evidence and its source's
# ----------------------------------------------------------------------------------------

def _local_time(tags: dict[str, Any], xmp: dict[str, str]) -> tuple[datetime | None, str | None, int | None]:
    """The local capture time, the tag it came from, and the offset that tag's own
    OffsetTime field gives (OffsetTimeOriginal, else OffsetTime)."""
    for key, tag, sub, off_key in (("dto", "DateTimeOriginal", "subsec_o", "off_o"),
                                   ("dtd", "DateTimeDigitized", "subsec_d", "off_d")):
        local, inline = parse_exif_datetime(tags.get(key), tags.get(sub))
        if local is not None:
            off = parse_offset(tags.get(off_key))
            if off is None:
                off = parse_offset(tags.get("off"))
            return local, tag, off if off is not None else inline
    return None, None, None


XMP_CAPTURE = ("DateCreated", "DateTimeOriginal")  # capture dates; xmp:CreateDate may be an editor's
XMP_ALL = XMP_CAPTURE + ("CreateDate",)


def _xmp_times(xmp: dict[str, str], names: tuple[str, ...] = XMP_ALL) -> list[tuple[datetime, int | None, str]]:
    """The XMP dates that carry a time of day: (wall time, offset if written, property)."""
    out = []
    for name in names:
        local, off = parse_exif_datetime(xmp.get(name))
        if local is not None and ("T" in xmp[name] or " " in xmp[name].strip()):
            out.append((local, off, name))
    return out


def _xmp_offset(xmp: dict[str, str], local: datetime) -> tuple[int | None, dict | None]:
    """The offset an XMP date gives for ``local`` (its wall time must agree within a minute),
    or a note when XMP dates with offsets all tell another time."""
    differing = None
    for x_local, x_off, name in _xmp_times(xmp):
        if x_off is None:
            continue
        if abs((x_local - local).total_seconds()) <= 60:
            return x_off, None
        if differing is None and name in XMP_CAPTURE:
            differing = {"kind": "xmp_time_differs", "xmp": xmp[name], "property": name, "local": local.isoformat()}
    return None, differing


def _blank(path: str, item_id: Any) -> dict[str, Any]:
    return {"path": path, "item_id": item_id, "status": "ok", "error": None, "local": None, "utc": None,
            "offset_minutes": None, "tz": None, "provenance": "none", "conflicts": []}


def _set_time(rec: dict, local: datetime | None, utc: datetime | None, off: int | None, tz: str | None,
              provenance: str) -> None:
    rec["local"] = local.isoformat() if local is not None else None
    rec["utc"] = _utc_text(utc) if utc is not None else None
    rec["offset_minutes"] = off
    rec["tz"] = tz
    rec["provenance"] = provenance


@dataclass
class _Clues:
    """What one photo says about its capture, parsed once: the file's tags and XMP dates,
    and what its source handed over (``meta``, :class:`photo_escape.outcomes.ItemMeta`)."""

    tags: dict[str, Any]
    xmp: dict[str, str]
    meta: dict[str, Any]
    name: str
    local: datetime | None = None  # the EXIF (or XMP, or IPTC) capture wall clock
    local_tag: str | None = None
    exif_off: int | None = None  # the offset tag written for that wall clock
    offset_name: str = "exif:offset"  # what that offset is (an IPTC TimeCreated's: iptc:offset)
    gps_day: date | None = None
    gps_seconds: float | None = None
    pos_zone: str | None = None  # the zone at the EXIF GPS position
    meta_zone: str | None = None  # the zone at the source's position (a Takeout sidecar's geoData)

    @classmethod
    def of(cls, read: dict[str, Any], meta: dict[str, Any] | None, name: str) -> "_Clues":
        c = cls(read.get("tags") or {}, read.get("xmp") or {}, dict(meta or {}), name)
        c.local, c.local_tag, c.exif_off = _local_time(c.tags, c.xmp)
        if c.local is None and (xmp_capture := _xmp_times(c.xmp, XMP_CAPTURE)):
            c.local, _, prop = xmp_capture[0]
            c.local_tag = f"XMP:{prop}"
        if c.local is None and c.tags.get("iptc_dt"):
            c.local, c.exif_off = parse_exif_datetime(c.tags["iptc_dt"])
            c.local_tag, c.offset_name = "IPTC:DateCreated", "iptc:offset"
        c.gps_day, c.gps_seconds = parse_gps_datetime(c.tags.get("gps_date"), c.tags.get("gps_time"))
        lat, lon = c.tags.get("lat"), c.tags.get("lon")
        c.pos_zone = zone_at(lat, lon) if lat is not None and lon is not None else None
        mlat, mlon = _number(c.meta.get("latitude")), _number(c.meta.get("longitude"))
        c.meta_zone = zone_at(mlat, mlon) if mlat is not None and mlon is not None else None
        return c

    def wall_clocks(self) -> list[tuple[str, datetime, str]]:
        """The file's own wall clocks, best first: (level, local time, tag or pattern)."""
        out = []
        if self.local is not None:
            out.append(("exif", self.local, self.local_tag))
        made, _ = parse_exif_datetime(self.tags.get("makernote_dt"))
        if made is not None:
            out.append(("makernote", made, self.tags.get("makernote_tag") or "maker note"))
        changed, _ = parse_exif_datetime(self.tags.get("dt"), self.tags.get("subsec"))
        if changed is not None:
            out.append(("exif:datetime", changed, "DateTime"))
        named = filename_time(self.name) if self.name else None
        if named is not None and not named.utc and named.granularity == "exact":
            out.append(("filename", named.when, f"filename:{named.pattern}"))
        return out


def _number(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _zone_evidence(c: _Clues, local: datetime, conflicts: list[dict], offset_tag: int | None,
                   offset_name: str = "exif:offset") -> list[tuple[str, int, str, list[dict]]]:
    """Every piece of the photo's own evidence for the zone of the wall clock ``local``,
    best first, each as (provenance, offset minutes, tz text, DST flags): the offset tag,
    an XMP offset, GPS time (against the file's own clock), the GPS position, the
    source's position."""
    evidence: list[tuple[str, int, str, list[dict]]] = []
    if offset_tag is not None:
        evidence.append((offset_name, offset_tag, format_offset(offset_tag), []))
    xmp_off, xmp_note = _xmp_offset(c.xmp, local)
    if xmp_off is not None:
        evidence.append(("xmp:offset", xmp_off, format_offset(xmp_off), []))
    elif xmp_note:
        conflicts.append(xmp_note)
    pos: tuple[int, str, list[dict]] | None = None
    if c.pos_zone:
        _, p_off, _, flags = in_zone(local, ("iana", c.pos_zone))
        pos = (p_off, c.pos_zone, flags)
    if c.gps_seconds is not None:
        g_off, notes = offset_from_gps(c.local or local, c.gps_day, c.gps_seconds, hint=pos[0] if pos else None)
        conflicts.extend(notes)
        if g_off is not None:
            tz = pos[1] if pos and pos[0] == g_off else format_offset(g_off)
            evidence.append(("gps:time", g_off, tz, []))
    if pos:
        evidence.append(("gps:position", pos[0], pos[1], pos[2]))
    if c.meta_zone:
        _, m_off, _, flags = in_zone(local, ("iana", c.meta_zone))
        evidence.append(("sidecar:position", m_off, c.meta_zone, flags))
    return evidence


def _settle(rec: dict, local: datetime, evidence: list, level: str | None) -> tuple | None:
    """Fill ``rec`` from the best of ``evidence`` for the wall clock ``local`` and note the
    rest where it disagrees; the zone a later photo may borrow. ``level`` names a time
    that is not EXIF's own (then the zone's provenance goes to ``source.zone``)."""
    provenance, off, tz, flags = evidence[0]
    rec["conflicts"].extend(flags)
    _set_time(rec, local, local - timedelta(minutes=off), off, tz, level or provenance)
    if level:
        rec.setdefault("source", {})["zone"] = provenance
    for other, o_off, o_tz, _ in evidence[1:]:
        if abs(o_off - off) > CONFLICT_MINUTES:
            rec["conflicts"].append({"kind": "disagree", "source": other, "offset": format_offset(o_off), "tz": o_tz,
                                     "utc": _utc_text(local - timedelta(minutes=o_off)), "minutes": o_off - off})
    return ("iana", tz) if "/" in tz or tz == "UTC" else ("fixed", off)


def _wants_zone(rec: dict, local: datetime, level: str | None) -> tuple[dict, datetime, None]:
    """A wall clock with no zone of its own: the rules, the previous photo or the default
    may lend one (:func:`capture_times`)."""
    rec["local"] = local.isoformat()
    rec["provenance"] = level or "unknown"
    if level:
        rec["_level"] = level
    return rec, local, None


def decide_own(path: str, item_id: Any, read: dict[str, Any], meta: dict[str, Any] | None = None,
               name: str | None = None) -> tuple[dict[str, Any], datetime | None, tuple | None]:
    """The record from the photo's own evidence and what its source handed over
    (``meta``), its local time, and the zone (``("iana", name)`` or ``("fixed", minutes)``)
    a later photo may borrow. The levels, best first:

    1. the source's UTC instant (``meta.time_utc``: ``sidecar:utc``), :func:`_decide_instant`
    2. the source's wall clock (``meta.time_local``, named by ``meta.time_provenance``)
    3. EXIF's DateTimeOriginal / DateTimeDigitized, XMP's capture date, GPS UTC (steps 1-5)
    4. ``makernote``: a date only in a maker note or an older container
    5. ``exif:datetime``: IFD0 DateTime (when the file was last written: the last resort in the file)
    6. ``filename``: a date in the file's name (:mod:`tasks.capture_time.names`)

    A record still needing a zone has a local time and no UTC time: provenance
    ``unknown`` (an EXIF time) or its level's name (a borrowed zone keeps it).
    """
    rec = _blank(path, item_id)
    meta = meta or {}
    if "error" in read and not (meta.get("time_utc") or meta.get("time_local")):
        rec.update(status="error", error=read["error"])
        return rec, None, None
    if "error" in read:  # a file no reader knows (a video) whose source knows its time
        rec["file_error"] = read["error"]
    c = _Clues.of(read, meta, name or PurePath(path).name)
    rec["reader"] = read.get("reader")

    if meta.get("time_utc"):
        utc = _parse_instant(meta["time_utc"])
        if utc is not None:
            return _decide_instant(rec, c, utc, meta.get("time_provenance") or "sidecar:utc", "time_utc")
        rec["conflicts"].append({"kind": "unparsable_source_time", "time_utc": str(meta["time_utc"])[:64]})
    if meta.get("time_local"):
        src, _ = parse_exif_datetime(str(meta["time_local"]))
        if src is not None:
            return _decide_source_local(rec, c, src, meta.get("time_provenance") or "source:local",
                                        meta.get("time_granularity") or "exact")
        rec["conflicts"].append({"kind": "unparsable_source_time", "time_local": str(meta["time_local"])[:64]})
    exif_clock = c.local is not None and not (c.local_tag or "").startswith("XMP:")
    if not exif_clock and c.gps_day is not None and c.gps_seconds is not None:
        return _decide_gps_utc(rec, c)
    if c.local is not None:
        rec["source"] = {"tag": c.local_tag}
        evidence = _zone_evidence(c, c.local, rec["conflicts"], c.exif_off, c.offset_name)
        if not evidence:
            return _wants_zone(rec, c.local, None)
        return rec, c.local, _settle(rec, c.local, evidence, None)
    for level, local, tag in c.wall_clocks():  # the file's lesser clocks
        rec["source"] = {"tag": tag}
        off_tag = parse_offset(c.tags.get("off")) if level == "exif:datetime" else None
        evidence = _zone_evidence(c, local, rec["conflicts"], off_tag)
        if not evidence:
            return _wants_zone(rec, local, level)
        return rec, local, _settle(rec, local, evidence, level)
    named = filename_time(c.name)
    if named is not None and named.utc:
        return _decide_instant(rec, c, named.when, "filename", f"filename:{named.pattern}")
    if named is not None:  # a date with no time of day (IMG-20191225-WA0001)
        rec["source"], rec["granularity"] = {"tag": f"filename:{named.pattern}"}, named.granularity
        return _wants_zone(rec, named.when, "filename")
    return rec, None, None


def _decide_gps_utc(rec: dict, c: _Clues) -> tuple[dict, None, tuple | None]:
    """Step 5: no wall clock but a GPS date and time: that UTC time, local from the position."""
    utc = datetime.combine(c.gps_day, time()) + timedelta(seconds=c.gps_seconds)
    utc = utc.replace(microsecond=int(round((c.gps_seconds % 1) * 1e6)) % 1000000)
    rec["source"] = {"tag": "GPSDateStamp+GPSTimeStamp"}
    zone = c.pos_zone or c.meta_zone
    if zone:
        local, off, tz = _from_instant(utc, ("iana", zone))
        _set_time(rec, local, utc, off, tz, "gps:utc")
        return rec, None, ("iana", zone)
    _set_time(rec, None, utc, None, None, "gps:utc")
    rec["needs_local"] = True
    return rec, None, None


def _parse_instant(text: Any) -> datetime | None:
    """A naive UTC datetime from an ISO 8601 instant (an offset or Z; none means UTC) or a
    count of seconds since 1970 (a Takeout sidecar's ``timestamp`` as written)."""
    raw = str(text).strip()
    try:
        if raw.isdigit():
            return datetime(1970, 1, 1) + timedelta(seconds=int(raw))
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        return None
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc).replace(tzinfo=None)
    return when


def _from_instant(utc: datetime, zone: tuple) -> tuple[datetime, int, str]:
    """The wall clock, offset and tz text of the UTC instant ``utc`` in ``zone``."""
    if zone[0] == "iana":
        aware = utc.replace(tzinfo=timezone.utc).astimezone(ZoneInfo(zone[1]))
        return aware.replace(tzinfo=None), int(round(aware.utcoffset().total_seconds() / 60)), zone[1]
    return utc + timedelta(minutes=zone[1]), int(zone[1]), format_offset(zone[1])


def _wall_clock_offset(wall: datetime, utc: datetime) -> int | None:
    """The offset that makes the wall clock ``wall`` the instant ``utc``, when one can: a
    whole quarter hour (to within 2 seconds), within +-14 hours; else None."""
    diff = (wall - utc).total_seconds()
    off = int(round(diff / (GPS_STEP * 60))) * GPS_STEP
    if abs(diff - off * 60) <= WALL_CLOCK_SLACK and abs(off) <= 14 * 60:
        return off
    return None


def _decide_instant(rec: dict, c: _Clues, utc: datetime, level: str, tag: str) -> tuple[dict, datetime | None,
                                                                                      tuple | None]:
    """A UTC instant from the source (a Takeout sidecar's ``photoTakenTime``) or a Pixel's
    file name. The instant stands; its zone comes from, in order, the EXIF offset tags,
    an XMP offset, the EXIF GPS position, the EXIF GPS time, the source's position, the
    difference between the file's wall clock and the instant (``wall_clock``: a whole
    quarter hour within +-14 h); else the job's rules, then its default (not the
    previous photo: a source's instant is exact, a neighbour's zone a guess).

    When the file's wall clock and the instant disagree by more than any zone explains
    (someone corrected the date in Google Photos; a camera clock never set), **the
    source's instant wins** (it is what a person last said the time was; the camera's
    clock is what it was set to, often never) and the conflict ``sidecar_vs_file``
    keeps both values.
    """
    rec["source"] = {"tag": tag}
    walls = [w for w in c.wall_clocks() if w[0] != "exif:datetime"]
    candidates: list[tuple[str, tuple]] = []
    if c.exif_off is not None:
        candidates.append((c.offset_name, ("fixed", c.exif_off)))
    if c.local is not None:
        xmp_off, _ = _xmp_offset(c.xmp, c.local)
        if xmp_off is not None:
            candidates.append(("xmp:offset", ("fixed", xmp_off)))
    if c.pos_zone:
        candidates.append(("gps:position", ("iana", c.pos_zone)))
    if c.local is not None and c.gps_seconds is not None:
        g_off, _ = offset_from_gps(c.local, c.gps_day, c.gps_seconds)
        if g_off is not None:
            candidates.append(("gps:time", ("fixed", g_off)))
    if c.meta_zone:
        candidates.append(("sidecar:position", ("iana", c.meta_zone)))
    if walls:
        _, wall, wall_tag = walls[0]
        w_off = _wall_clock_offset(wall, utc)
        if w_off is not None:
            candidates.append(("wall_clock", ("fixed", w_off)))
        else:
            rec["conflicts"].append({
                "kind": "sidecar_vs_file", "source_utc": _utc_text(utc), "file_local": wall.isoformat(),
                "file_tag": wall_tag, "minutes": round((wall - utc).total_seconds() / 60, 1), "chosen": level})
    if not candidates:
        _set_time(rec, None, utc, None, None, level)
        rec["needs_local"] = rec["_no_previous"] = True
        return rec, None, None
    zone_from, zone = candidates[0]
    local, off, tz = _from_instant(utc, zone)
    _set_time(rec, local, utc, off, tz, level)
    rec["source"]["zone"] = zone_from
    for other, o_zone in candidates[1:]:
        _, o_off, o_tz = _from_instant(utc, o_zone)
        if abs(o_off - off) > CONFLICT_MINUTES:
            rec["conflicts"].append({"kind": "disagree", "source": other, "offset": format_offset(o_off),
                                     "tz": o_tz, "local": (utc + timedelta(minutes=o_off)).isoformat(),
                                     "minutes": o_off - off})
    return rec, local, zone


GRANULAR_YEARS = {"year": 0, "circa": 5}  # how far a coarse source date reaches either way, in years


def _within(local: datetime, start: datetime, granularity: str) -> bool:
    """Whether ``local`` falls in the period a coarse source date names (its start)."""
    if granularity == "day":
        return local.date() == start.date()
    if granularity == "month":
        return (local.year, local.month) == (start.year, start.month)
    reach = GRANULAR_YEARS.get(granularity)
    return reach is not None and abs(local.year - start.year) <= reach


def _decide_source_local(rec: dict, c: _Clues, src: datetime, level: str,
                         granularity: str) -> tuple[dict, datetime, tuple | None]:
    """A wall clock from the source (Flickr's "date taken"), named ``level``, its zone as
    for EXIF's (offset tags, XMP, GPS, the source's position; else borrowed).

    A coarse date (``granularity`` month, year or circa: a scan of an old print) is never
    made an exact midnight: the record keeps ``granularity``, and the XMP sidecar writes
    only what is known (``2019-03``). When the file's own clock falls in that period it
    refines the date (``source.refined_by``). When the file's clock disagrees (a scanner's
    date, a camera clock never set), **the source wins** (a person set it) and the
    conflict ``source_vs_file`` keeps both values.
    """
    rec["source"] = {"tag": "time_local"}
    local = src
    walls = [w for w in c.wall_clocks() if w[0] in ("exif", "makernote")]
    if granularity not in ("exact", "", None):
        rec["granularity"] = granularity
    if walls:
        _, wall, wall_tag = walls[0]
        if granularity == "exact" and abs((wall - src).total_seconds()) <= 60:
            local = wall  # the same moment, to the file's precision (sub-seconds)
        elif granularity != "exact" and _within(wall, src, granularity):
            local = wall
            rec["source"]["refined_by"] = wall_tag
            rec.pop("granularity", None)
        else:
            rec["conflicts"].append({"kind": "source_vs_file", "source_local": src.isoformat(),
                                     "granularity": granularity, "file_local": wall.isoformat(),
                                     "file_tag": wall_tag, "chosen": level})
    evidence = _zone_evidence(c, local, rec["conflicts"], c.exif_off, c.offset_name)
    if not evidence:
        return _wants_zone(rec, local, level)
    return rec, local, _settle(rec, local, evidence, level)


# ----------------------------------------------------------------------------------------
# rules, previous photo, default (steps 6-9) over a whole list
# ----------------------------------------------------------------------------------------

def _rule_fields(rule: Any) -> dict[str, Any]:
    """A rule as a dict (TimeZoneRule objects and plain dicts alike), dates parsed."""
    d = rule.model_dump() if hasattr(rule, "model_dump") else dict(rule)
    for k in ("start", "end"):
        v = d.get(k)
        if isinstance(v, str):
            d[k] = date.fromisoformat(v)
        elif isinstance(v, datetime):
            d[k] = v.date()
    return d


def _folder_matches(rule_folder: str, folder: str, path: str) -> bool:
    """A rule's folder names this photo's folder: the same, a parent, a trailing part, or a glob."""
    rf = rule_folder.replace("\\", "/").rstrip("/")
    for f in {folder.replace("\\", "/").rstrip("/"), Path(path).parent.as_posix()}:
        if not f:
            continue
        if f == rf or f.startswith(rf + "/") or f.endswith("/" + rf) or f"/{rf}/" in f + "/" \
                or fnmatch.fnmatchcase(f, rf) or fnmatch.fnmatchcase(f, "*/" + rf):
            return True
    return False


def rule_matches(rule: dict[str, Any], *, path: str, name: str, folder: str, local: datetime | None) -> bool:
    """Whether every condition the rule states (folder, pattern, start/end date) holds."""
    if rule.get("folder") and not _folder_matches(rule["folder"], folder, path):
        return False
    pattern = rule.get("pattern")
    if pattern:
        target = Path(path).as_posix() if "/" in pattern else name
        if not fnmatch.fnmatch(target.lower(), pattern.lower()):
            return False
    if rule.get("start") or rule.get("end"):
        if local is None:
            return False
        if rule.get("start") and local.date() < rule["start"]:
            return False
        if rule.get("end") and local.date() > rule["end"]:
            return False
    return True


def _apply_zone(rec: dict, local: datetime | None, zone: tuple, zone_from: str) -> None:
    """Fill a record from a borrowed zone (``zone_from``: rule, previous photo, default).
    An EXIF wall clock takes the zone's provenance; a lesser level keeps its own and
    says where the zone came from in ``source.zone``; so does a UTC instant given a wall clock."""
    level = rec.get("_level")
    if local is None and rec.get("needs_local") and rec.get("utc"):  # an instant with no zone of its own
        utc = datetime.fromisoformat(rec["utc"]).astimezone(timezone.utc).replace(tzinfo=None)
        new_local, off, tz = _from_instant(utc, zone)
        rec["local"], rec["offset_minutes"], rec["tz"] = new_local.isoformat(), off, tz
        rec.setdefault("source", {})["zone"] = zone_from
        return
    utc, off, tz, flags = in_zone(local, zone)
    _set_time(rec, local, utc, off, tz, level or zone_from)
    if level:
        rec.setdefault("source", {})["zone"] = zone_from
    rec["conflicts"].extend(flags)


@dataclass
class _Photo:
    """One photo on its way through the sequence pass."""

    rec: dict[str, Any]
    local: datetime | None
    carry: tuple | None  # the zone a later photo may borrow from this one
    name: str
    folder: str
    camera: str  # make and model: only the same camera's photos form a sequence

    @property
    def seq(self) -> tuple[str, str]:
        return (self.folder, self.camera)

    @property
    def has_own_zone(self) -> bool:
        zone_from = (self.rec.get("source") or {}).get("zone")
        return self.carry is not None and (self.rec["provenance"] in OWN_EVIDENCE or zone_from in OWN_EVIDENCE)


def _camera(read: dict[str, Any]) -> str:
    tags = read.get("tags") or {}
    return " ".join(x for x in (tags.get("make"), tags.get("model")) if x)


def capture_times(entries: Iterable[dict[str, Any] | str | os.PathLike], *, rules: Iterable[Any] = (),
                  default_tz: str | None = None, timeout: float = 10.0, workers: int | None = None,
                  lookback: int = LOOKBACK, carry: dict | None = None) -> list[dict[str, Any]]:
    """Capture-time records for photos, in the order given.

    ``entries`` are dicts with ``path`` and optionally ``item_id``, ``name`` (also read
    for a date, :mod:`tasks.capture_time.names`), ``folder`` (the sequence a "previous
    photo" belongs to; the file's folder by default) and ``meta`` (what the source knows:
    :class:`photo_escape.outcomes.ItemMeta`), or plain paths. ``rules`` are
    :class:`photo_escape.jobspec.TimeZoneRule` objects or dicts (tz, folder, pattern,
    start, end; first match wins). Each record:
    ``{path, item_id, status, error, local, utc, offset_minutes, tz, provenance, conflicts}``
    plus ``source`` (which tag, rule or previous photo; ``zone``: where a lesser level's
    zone came from), ``reader``, and ``granularity`` for a date coarser than a moment.

    The previous photo is the one before in the same folder *from the same camera*
    (make and model), in order of local time, then name. A folder's sequence may be cut
    into calls: pass the same ``carry`` dict to consecutive calls, or, where calls come
    in any order (the flow's batches), let ``lookback`` files of the folder on disk that
    sort before the first photo needing a zone be read to find it.
    """
    items = [e if isinstance(e, dict) else {"path": os.fspath(e)} for e in entries]
    paths = [os.fspath(e["path"]) for e in items]
    default = zone_spec(default_tz) if default_tz else None
    rule_list = [_rule_fields(r) for r in rules]
    reads = read_all_tags(paths, timeout=timeout, workers=workers)

    photos = []
    for e, path, read in zip(items, paths, reads):
        try:
            rec, local, own = decide_own(path, e.get("item_id"), read, e.get("meta"), e.get("name"))
        except Exception as exc:  # a value no parser foresaw: this photo fails, the rest go on
            rec, local, own = _blank(path, e.get("item_id")), None, None
            rec.update(status="error", error="unparsable_metadata",
                       conflicts=[{"kind": "exception", "type": type(exc).__name__}])
        folder = os.fspath(e.get("folder")) if e.get("folder") is not None else Path(path).parent.as_posix()
        photos.append(_Photo(rec, local, own, e.get("name") or PurePath(path).name, folder, _camera(read)))

    # the sequence within each folder and camera: by local time, then name
    order = sorted(photos, key=lambda p: (p.seq, p.local is None, p.local or datetime.min, p.name))
    last_zone: dict = carry if carry is not None else {}
    if lookback:
        for seq, found in _zones_before(order, rule_list, set(paths), lookback, timeout).items():
            last_zone.setdefault(seq, found)
    for p in order:
        if p.rec["status"] != "ok":
            continue
        if p.has_own_zone:
            last_zone[p.seq] = (p.carry, p.name)
            continue
        if _needs_zone(p):
            _fill_borrowed(p, rule_list, last_zone, default)
    for p in photos:
        for internal in ("needs_local", "_level", "_no_previous"):
            p.rec.pop(internal, None)
    return [p.rec for p in photos]


def _needs_zone(p: _Photo) -> bool:
    """A wall clock with no zone of its own, or a UTC time (GPS, a source's) with no local zone."""
    return p.rec["status"] == "ok" and ((p.local is not None and p.rec["utc"] is None)
                                        or bool(p.rec.get("needs_local")))


def _zones_before(order: list[_Photo], rules: list[dict], here: set[str], lookback: int,
                  timeout: float) -> dict[tuple[str, str], tuple[tuple, str]]:
    """For each sequence whose first photos here want a previous photo's zone and find none
    here: the zone of the nearest earlier file of that folder and camera on disk."""
    first_needy: dict[tuple[str, str], _Photo] = {}
    seen_own: set[tuple[str, str]] = set()
    for p in order:
        if p.has_own_zone:
            seen_own.add(p.seq)
        elif p.seq not in seen_own and p.seq not in first_needy and _needs_zone(p) and not any(
                rule_matches(r, path=p.rec["path"], name=p.name, folder=p.folder, local=p.local) for r in rules):
            first_needy[p.seq] = p
    found: dict[tuple[str, str], tuple[tuple, str]] = {}
    for seq, p in first_needy.items():
        before = _earlier_siblings(p.rec["path"], p.folder, here, lookback)
        if not before:
            continue
        reads = read_all_tags(before, timeout=timeout, workers=1)
        for path, read in zip(reversed(before), reversed(reads)):
            if _camera(read) != p.camera:
                continue
            try:
                rec, _, own = decide_own(path, None, read)
            except Exception:  # noqa: BLE001 - a neighbour's oddity only means no zone from it
                continue
            if own is not None and rec["provenance"] in OWN_EVIDENCE:
                found[seq] = (own, PurePath(path).name)
                break
    return found


def _earlier_siblings(path: str, folder: str, exclude: set[str], limit: int) -> list[str]:
    """Up to ``limit`` image files beside ``path`` whose names sort before it, nearest last;
    only when ``path``'s directory is the sequence's folder (not a download area)."""
    parent = Path(path).parent
    where = parent.as_posix()
    if folder and where != folder and not where.endswith("/" + folder.strip("/")):
        return []
    name = PurePath(path).name
    try:
        with os.scandir(parent) as it:
            names = sorted(e.name for e in it if e.name < name and not e.name.startswith(".")
                           and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES and e.is_file())
    except OSError:
        return []
    out = [os.path.join(os.fspath(parent), n) for n in names]
    return [p for p in out if p not in exclude][-limit:]


def _fill_borrowed(p: _Photo, rules: list[dict], last_zone: dict, default: tuple | None) -> None:
    """Steps 6-9 for one photo with a local time (or a UTC time) but no zone of its own."""
    rec, local = p.rec, p.local
    for k, rule in enumerate(rules):
        if rule_matches(rule, path=rec["path"], name=p.name, folder=p.folder, local=local):
            _apply_zone(rec, local, zone_spec(rule["tz"]), "rule")
            rec.setdefault("source", {})["rule"] = k
            return
    if p.seq in last_zone and not rec.get("_no_previous"):
        zone, prev = last_zone[p.seq]
        _apply_zone(rec, local, zone, "previous")
        rec.setdefault("source", {})["previous"] = prev
        return
    if default is not None:
        _apply_zone(rec, local, default, "default")
        return
    if local is not None and not rec.get("_level"):
        rec["provenance"] = "unknown"


def capture_time(path: str | os.PathLike, **kw: Any) -> dict[str, Any]:
    """The capture-time record of one file (see :func:`capture_times`)."""
    return capture_times([{"path": os.fspath(path)}], **kw)[0]
