"""Capture times that file names carry: the last clue, when the file itself says nothing.

Phones and messaging apps name files after the moment they were made::

    IMG_20190412_101010.jpg  VID_20190412_101010.mp4    Android cameras (local wall clock)
    PXL_20190412_101010123.jpg                          Google Pixel (UTC, milliseconds)
    20190412_101010.jpg                                 Samsung (local)
    WhatsApp Image 2019-12-25 at 14.50.00.jpeg          WhatsApp (local; also "at 2.50.00 PM")
    IMG-20191225-WA0001.jpg                             WhatsApp on Android (local date only)
    Screenshot_20200617-220400.png                      Android screenshots (local)
    Screenshot 2020-06-17 at 22.04.00.png               macOS screenshots (local)
    2019-04-12 10.10.10.jpg                             Dropbox camera uploads (local)

:func:`filename_time` reads them; a name the patterns do not know gives None (a
number like ``IMG_1234`` is a counter, not a date).
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import PurePath
from typing import NamedTuple

_D8 = r"(?P<y>\d{4})(?P<mo>\d{2})(?P<d>\d{2})"
_T6 = r"(?P<h>\d{2})(?P<mi>\d{2})(?P<s>\d{2})"
_ISO_DAY = r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})"
_DOTTED = r"(?P<h>\d{1,2})[.\-](?P<mi>\d{2})[.\-](?P<s>\d{2})(?:\s*(?P<ampm>[AP]M))?"

#: (name, pattern, the time is UTC, granularity); first match wins
PATTERNS: tuple[tuple[str, re.Pattern[str], bool, str], ...] = tuple(
    (name, re.compile(rx, re.IGNORECASE), utc, granularity) for name, rx, utc, granularity in (
        ("pixel", rf"^PXL_{_D8}_{_T6}(?P<ms>\d{{3}})?", True, "exact"),
        ("android", rf"^(?:IMG|VID|PANO|BURST\d*|MVIMG|Screenshot)[_-]{_D8}[_-]{_T6}", False, "exact"),
        ("whatsapp", rf"^WhatsApp (?:Image|Video|Audio) {_ISO_DAY} at {_DOTTED}", False, "exact"),
        ("screenshot", rf"^Screen ?shot[ _]{_ISO_DAY}(?: at |[ _-]){_DOTTED}", False, "exact"),
        ("whatsapp-android", rf"^(?:IMG|VID)-{_D8}-WA\d+", False, "day"),
        ("samsung", rf"^{_D8}_{_T6}", False, "exact"),
        ("dropbox", rf"^{_ISO_DAY} {_DOTTED}", False, "exact"),
    )
)
YEARS = (1990, 2100)  # digital cameras' years: outside, digits that only look like a date


class NameTime(NamedTuple):
    """A time read from a file name: the wall clock (or the UTC instant when ``utc``)."""

    when: datetime
    utc: bool
    granularity: str  # "exact" or "day"
    pattern: str


def filename_time(name: str) -> NameTime | None:
    """The capture time a file name carries (see the module's list), or None."""
    stem = PurePath(name).name
    for label, rx, utc, granularity in PATTERNS:
        m = rx.match(stem)
        if not m:
            continue
        g = m.groupdict()
        hour = int(g.get("h") or 0)
        ampm = (g.get("ampm") or "").upper()
        if ampm:
            if not 1 <= hour <= 12:
                continue
            hour = hour % 12 + (12 if ampm == "PM" else 0)
        try:
            when = datetime(int(g["y"]), int(g["mo"]), int(g["d"]), hour, int(g.get("mi") or 0),
                            int(g.get("s") or 0), int(g.get("ms") or 0) * 1000)
        except ValueError:
            continue
        if YEARS[0] <= when.year <= YEARS[1]:
            return NameTime(when, utc, granularity, label)
    return None
