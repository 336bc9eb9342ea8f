"""A Flickr account worth escaping from, for the stand-in (:mod:`sandbox.flickr`), and the
"request my data" export Flickr would give of it.

:func:`fill_account` puts photos in a :class:`~sandbox.flickr.FlickrState` with every case
the Flickr sources must get right: dates exact, to the month, the year and "circa"; public,
private and friends-and-family photos; places of street and of city accuracy; tags; photos
in several albums and in none; videos. The same content makes a Pro account (originals
offered) or a free one (``state.max_size = 1024``: no original, no copy above 1024 pixels).
It returns the ground truth, ``{photo_id: AccountPhoto}``.

:func:`write_export` writes what Flickr's "request my data" gives for the account, in the
real export's layout (as the projects that import such exports describe it):

* ``data-download-<n>.zip``: the originals, named ``<title>_<id>_o.<ext>`` (an untitled
  photo ``<id>_<originalsecret>_o.<ext>``; a video ``<title>_<id>.<ext>``, without ``_o``);
* ``<digits>_<hex>_part<k>.zip``: the account's data, ``photo_<id>.json`` per photo spread
  over the parts, ``albums.json`` and ``account_profile.json`` in the first. A photo's JSON
  has ``date_taken`` as ``YYYY-MM-DD HH:MM:SS`` and *no* granularity (a year-only date is
  ``YYYY-01-01 00:00:00``), ``geo`` as micro-degree strings (``[]`` for none), ``tags`` as
  ``[{"tag", "user", "date_create"}]``, ``privacy`` as words, and ``albums: []`` (real
  exports leave it empty: membership is in ``albums.json``).

``drop_json`` / ``drop_original`` leave some out, as broken exports do.
"""

from __future__ import annotations

import json
import random
import re
import struct
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sandbox import photos
from sandbox.flickr import FlickrState

#: Flickr's date-taken granularity codes and their names
GRANULARITY = {0: "exact", 4: "month", 6: "year", 8: "circa"}
FIRST_ID = 52_000_000_001

ALBUMS = {
    "72157700000000001": "Summer holidays",
    "72157700000000002": "Grandparents",
    "72157700000000003": "Best of",
}


@dataclass
class AccountPhoto:
    """What one photo of the account is: the ground truth tests and the demo check against."""

    id: str
    title: str
    media: str  # photo | video
    taken: str  # "YYYY-MM-DD HH:MM:SS" as Flickr keeps it
    granularity: int  # 0 / 4 / 6 / 8
    visibility: str  # public | private | friends & family
    albums: list[str] = field(default_factory=list)  # titles
    tags: list[str] = field(default_factory=list)
    latitude: float | None = None
    longitude: float | None = None
    accuracy: int = 0
    width: int = 0
    height: int = 0

    @property
    def granularity_name(self) -> str:
        return GRANULARITY[self.granularity]


# (title, taken, granularity, visibility, albums, tags, place (lat, lon, accuracy) or None)
_STOCK = [
    ("Beach at Biarritz", "2011-07-18 16:42:05", 0, "public", [0, 2], ["beach", "summer"], (43.4832, -1.5586, 16)),
    ("Grandma's wedding", "1935-01-01 00:00:00", 6, "public", [1, 2], ["family", "scan"], None),
    ("Harbour at dawn", "2012-08-02 06:15:40", 0, "private", [0], ["harbour"], (47.2184, -1.5536, 11)),
    ("Uncle Jo's first car", "1962-06-01 00:00:00", 4, "friends & family", [1], ["family", "car"], None),
    ("Village fair", "1950-01-01 00:00:00", 8, "public", [1], ["scan"], None),
    ("", "2014-03-09 11:20:00", 0, "public", [], [], (51.5007, -0.1246, 16)),
    ("Snow in the garden", "2010-12-24 09:01:13", 0, "private", [], ["winter"], None),
    ("Lighthouse", "2011-07-19 20:55:00", 0, "public", [0], ["summer"], (43.4950, -1.5450, 16)),
]
_VIDEOS = [
    ("Waves", "2011-07-18 17:03:00", 0, "public", [0], ["summer", "video"], None),
    ("Birthday candles", "2013-05-02 19:30:12", 0, "private", [2], ["video"], None),
]
_PRIVACY = {"public": (1, 0, 0), "private": (0, 0, 0), "friends & family": (0, 1, 1), "friends": (0, 1, 0),
            "family": (0, 0, 1)}


def tiny_mp4(seed: int, created: datetime) -> bytes:
    """A small, structurally valid MP4 (``ftyp``, ``moov`` with an ``mvhd`` carrying the
    creation time, ``mdat`` of seeded bytes): a video as far as a container reader goes."""

    def box(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", 8 + len(payload)) + kind + payload

    stamp = int((created.replace(tzinfo=timezone.utc) - datetime(1904, 1, 1, tzinfo=timezone.utc)).total_seconds())
    matrix = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    mvhd = (struct.pack(">IIIII", 0, stamp, stamp, 1000, 3000) + struct.pack(">IH", 0x10000, 0x100)
            + b"\0" * 10 + matrix + b"\0" * 24 + struct.pack(">I", 2))
    rng = random.Random(seed)
    return (box(b"ftyp", b"isom" + struct.pack(">I", 512) + b"isomiso2mp41") + box(b"moov", box(b"mvhd", mvhd))
            + box(b"mdat", bytes(rng.getrandbits(8) for _ in range(2048))))


def fill_account(state: FlickrState, folder: str | Path, *, copies: int = 1, size: tuple[int, int] = (1280, 960),
                 videos: bool = True) -> dict[str, AccountPhoto]:
    """Put the stock photos (``copies`` times over, for a larger account) and videos in
    ``state``; the files are written under ``folder`` (kept there: the same call on the
    same folder reuses them). Returns the ground truth."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    truth: dict[str, AccountPhoto] = {}
    stock = [(row, False) for _ in range(copies) for row in _STOCK] + ([(row, True) for row in _VIDEOS] if videos else [])
    for n, ((title, taken, gran, vis, albums, tags, place), is_video) in enumerate(stock):
        pid = str(FIRST_ID + n)
        if copies > 1 and title and not is_video:
            title = f"{title} {n // len(_STOCK) + 1}"
        when = datetime.strptime(taken, "%Y-%m-%d %H:%M:%S")
        if is_video:
            path = folder / f"{pid}.mp4"
            if not path.exists():  # the same content every time: a folder serves many accounts
                path.write_bytes(tiny_mp4(n, when))
            w, h = 1280, 720
        else:
            path = folder / f"{pid}-{size[0]}x{size[1]}.jpg"
            if not path.exists():
                exif = {"taken": when} if gran == 0 else {}  # old scans carry no camera date
                photos.write_jpeg(path, n, size=size, **exif)
            w, h = size
        pub, fri, fam = _PRIVACY[vis]
        lat, lon, acc = place if place else (None, None, 0)
        state.add_photo(pid, path, title=title, description=f"{title or 'untitled'}: from the family albums",
                        taken=taken, granularity=gran, posted=1_300_000_000 + n * 3600,
                        video=(w, h) if is_video else None, ispublic=pub, isfriend=fri, isfamily=fam,
                        tags=list(tags), latitude=lat, longitude=lon, accuracy=acc or 16)
        set_ids = list(ALBUMS)
        for a in albums:
            state.add_to_album(set_ids[a], pid, ALBUMS[set_ids[a]])
        truth[pid] = AccountPhoto(pid, title, "video" if is_video else "photo", taken, gran, vis,
                                  [ALBUMS[set_ids[a]] for a in albums], list(tags), lat, lon, acc, w, h)
    return truth


# -- the export archive ------------------------------------------------------------------------
def _safe_title(title: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", title).strip("-").lower()


def export_name(p, media: str) -> str:
    """The file name Flickr's export gives an original (``p`` a sandbox Photo)."""
    title = _safe_title(p.title)
    if media == "video":
        return f"{title or p.id}_{p.id}.{p.originalformat}"
    return f"{title}_{p.id}_o.{p.originalformat}" if title else f"{p.id}_{p.originalsecret}_o.{p.originalformat}"


def _micro(deg: float) -> str:
    return str(int(round(deg * 1_000_000)))


def photo_json(state: FlickrState, p) -> dict:
    """A photo's ``photo_<id>.json``, in the real export's field shapes."""
    privacy = {v: k for k, v in _PRIVACY.items()}[(p.ispublic, p.isfriend, p.isfamily)]
    geo = ({"latitude": _micro(p.latitude), "longitude": _micro(p.longitude), "accuracy": str(p.accuracy)}
           if p.latitude is not None else [])
    imported = datetime.fromtimestamp(p.posted, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return {
        "id": p.id, "name": p.title, "description": p.description, "count_views": "12", "count_faves": "0",
        "count_comments": "0", "date_taken": p.taken, "count_tags": str(len(p.tags)), "count_notes": "0",
        "rotation": 0, "date_imported": imported,
        "photopage": f"https://www.flickr.com/photos/{state.username}/{p.id}/",
        "original": f"https://live.staticflickr.com/{p.server}/{p.id}_{p.originalsecret}_o.{p.originalformat}",
        "license": "All Rights Reserved", "geo": geo, "groups": [], "albums": [],
        "tags": [{"tag": t, "user": state.nsid, "date_create": imported} for t in p.tags],
        "people": [], "notes": [], "privacy": privacy, "comment_permissions": "any flickr member",
        "tagging_permissions": "people you follow", "safety": "safe", "comments": [],
    }


def albums_json(state: FlickrState) -> dict:
    return {"albums": [
        {"photo_count": str(len(ids)), "id": sid, "url": f"https://www.flickr.com/photos/{state.username}/albums/{sid}",
         "title": state.photoset_titles.get(sid, f"Set {sid}"), "description": "", "view_count": "0",
         "created": "1300000000", "last_updated": "1300000000",
         "cover_photo": f"https://www.flickr.com/photos/{state.username}/{ids[0] if ids else 0}",
         "photos": list(ids)}
        for sid, ids in state.photosets.items()]}


def write_export(state: FlickrState, folder: str | Path, *, per_zip: int = 4, json_parts: int = 2,
                 drop_json: set[str] = frozenset(), drop_original: set[str] = frozenset()) -> list[Path]:
    """Write the account's export archives into ``folder``; returns the zip files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ps = [state.photos[i] for i in sorted(state.photos)]
    written = []
    media = [p for p in ps if p.id not in drop_original]
    for n in range(0, len(media), per_zip):
        path = folder / f"data-download-{n // per_zip + 1}.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            for p in media[n:n + per_zip]:
                z.write(p.path, export_name(p, p.media))
        written.append(path)
    stem = f"{re.sub(r'[^0-9]', '', state.nsid)}_3ac1836c2225"
    parts = [zipfile.ZipFile(folder / f"{stem}_part{k + 1}.zip", "w", zipfile.ZIP_DEFLATED) for k in range(json_parts)]
    try:
        parts[0].writestr("account_profile.json", json.dumps({"nsid": state.nsid, "screen_name": state.username,
                                                              "is_pro": state.max_size is None}))
        parts[0].writestr("albums.json", json.dumps(albums_json(state), indent=1))
        for k, p in enumerate(x for x in ps if x.id not in drop_json):
            parts[k % json_parts].writestr(f"photo_{p.id}.json", json.dumps(photo_json(state, p), indent=1))
    finally:
        for z in parts:
            z.close()
            written.append(Path(z.filename))
    return written
