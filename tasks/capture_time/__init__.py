"""The true capture time of a photo: local wall clock, UTC instant, and where the zone came from.

Two parts, each readable on its own:

* :mod:`tasks.capture_time.read`: what a file says (EXIF, CR3 boxes, a RAF's preview,
  XMP dates), as plain tags, each file read in a time-limited reader process
  (:mod:`tasks.isolation`). New readers (maker notes, sidecars) go here.
* :mod:`tasks.capture_time.zone`: the decision from those tags (offset tag, GPS time,
  GPS position, rules, the previous photo, the default) and its provenance. New
  levels of evidence go here.

``capture_times`` (many photos) and ``capture_time`` (one) are the entry points; the
names below are what the rest of photo-escape imports from here.
"""

from tasks.capture_time.read import read_all_tags, read_tags
from tasks.capture_time.zone import (
    OWN_EVIDENCE,
    PROVENANCES,
    capture_time,
    capture_times,
    decide_own,
    format_offset,
    in_zone,
    offset_from_gps,
    parse_exif_datetime,
    parse_gps_datetime,
    parse_offset,
    rule_matches,
    zone_at,
    zone_spec,
)

__all__ = [
    "OWN_EVIDENCE", "PROVENANCES", "capture_time", "capture_times", "decide_own",
    "format_offset", "in_zone", "offset_from_gps", "parse_exif_datetime", "parse_gps_datetime",
    "parse_offset", "read_all_tags", "read_tags", "rule_matches", "zone_at", "zone_spec",
]
