"""A Google Photos Takeout export, made from real photographs, with every quirk Google's
exports have (see :mod:`tasks.takeout` for where each is documented):

- two zip parts, ``takeout-20240101T000000Z-001.zip`` and ``-002.zip``, some photos'
  sidecars in the other part than the photo;
- old ``NAME.json`` and new ``NAME.supplemental-metadata.json`` sidecars, the latter cut
  to 46 characters (``.supplemental-metada.json``, ``.suppl.json``, ``.s.json``), long
  names cut themselves (``WhatsApp Image 2019-12-25 at 14.50.00 from the.json``, the
  photo's own file name cut at 47 and its whole name only in the sidecar's ``title``);
- numbered duplicates (``IMG_1234(1).jpg`` with ``IMG_1234.jpg.supplemental-metadata(1).json``
  and ``DSC_0101(1).JPG`` with ``DSC_0101.JPG(1).json``), each a different picture;
- edited copies without a sidecar (``-edited``, German ``-bearbeitet``, Swedish
  ``-redigerad`` beside its original);
- a photo uploaded without an extension (its sidecar named and titled without one);
- three albums, their folders named by Google's sanitising of the title, with the same
  bytes as the year folders (one photo in all three, one only in an album), each with
  its ``metadata.json``;
- a video with its sidecar, a Pixel motion photo (``….MP.jpg`` and its ``….MP`` video),
  an iPhone live photo (``IMG_5000.JPG`` and ``IMG_5000.MOV``);
- JSON files that describe no photo and ``archive_browser.html``;
- a photo whose sidecar is missing (its own EXIF has a time and offset);
- capture times: EXIF ``DateTimeOriginal`` is the camera's wall clock in Kathmandu
  (+05:45) with no offset tag, the sidecar's ``photoTakenTime`` the UTC instant; a few
  places in ``geoData`` (others 0,0); WhatsApp images and screenshots with no EXIF date
  at all; one date someone corrected in Google Photos (the sidecar disagrees by days).

:func:`make_export` writes it and returns what is in it (:class:`Export`), which the
tests and the demo compare the delivery with. ``extra`` adds plain photos (with the
naming of a recent export, some numbered, some cut) for the benchmark.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sandbox import photos
from tasks.takeout import CLIP, SUPPLEMENTAL, clip

ZONE = "Asia/Kathmandu"
OFFSET = timedelta(hours=5, minutes=45)
KATHMANDU = (27.7172, 85.3240)
POKHARA = (28.2096, 83.9856)
ROOT = "Takeout/Google Photos"
PARTS = ("takeout-20240101T000000Z-001.zip", "takeout-20240101T000000Z-002.zip")
ALBUMS = {  # title -> the folder name Google writes for it
    "Trip to Nepal: Kathmandu & Pokhara": "Trip to Nepal_ Kathmandu & Pokhara",
    "Family": "Family",
    "Best of 2019 ★": "Best of 2019 ★",
}
NOT_PHOTOS = ("print-subscriptions.json", "shared_album_comments.json", "user-generated-memory-titles.json")


@dataclass
class Photo:
    """One picture of the export, and what a faithful import must make of it."""

    key: str  # a short label for tests ("numbered", "edited-de"...)
    name: str  # its file name in the year (or album) folder
    data: bytes
    local: datetime | None  # the true wall-clock capture time where it was taken
    utc: datetime | None  # the true instant (None: unknown to everyone)
    delivered_name: str  # the name it should arrive under (the title for a cut name)
    rule: str | None  # the sidecar rule that finds its sidecar (None: it has none)
    albums: list[str] = field(default_factory=list)
    folder: str = ""  # the year folder, or the only album folder
    video: bool = False
    exif_dated: bool = True  # whether its own EXIF carries the wall clock
    place: tuple[float, float] | None = None
    description: str | None = None
    favourite: bool = False
    corrected: bool = False  # the sidecar's date was corrected by hand in Google Photos

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class Export:
    root: Path
    parts: list[Path]
    photos: list[Photo]
    members: dict[str, int] = field(default_factory=dict)  # member name -> part (0 or 1)

    def by_key(self, key: str) -> Photo:
        return next(p for p in self.photos if p.key == key)

    @property
    def albums(self) -> list[str]:
        return sorted({a for p in self.photos for a in p.albums})


def jpeg(picture: int, taken: datetime | None, *, size: tuple[int, int] = (480, 360), tint: bool = False,
         **exif: Any) -> bytes:
    """A real photograph as JPEG bytes with a camera's EXIF (no EXIF date when ``taken`` is None)."""
    img = photos.picture(picture, size)
    if tint:  # an edit: other bytes, the same scene
        from PIL import ImageEnhance

        img = ImageEnhance.Color(img).enhance(1.8)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=85, exif=photos.exif_bytes(taken, **exif))
    return buf.getvalue()


def video(seed: int, size: int = 40_000) -> bytes:
    """An MP4's first box and some data: enough to be a video to every reader, never an image."""
    rng = random.Random(seed)
    head = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41"
    body = bytes(rng.getrandbits(8) for _ in range(size))
    return head + len(body + b"....").to_bytes(4, "big") + b"mdat" + body


def sidecar_doc(title: str, utc: datetime | None, *, place: tuple[float, float] | None = None,
                description: str = "", favourite: bool = False, created: datetime | None = None) -> dict:
    """A photo's sidecar as Takeout writes it."""
    def stamp(t: datetime) -> dict:
        return {"timestamp": str(int(t.replace(tzinfo=timezone.utc).timestamp())),
                "formatted": t.strftime("%b %d, %Y, %I:%M:%S %p UTC")}

    geo = {"latitude": place[0], "longitude": place[1], "altitude": 1400.0,
           "latitudeSpan": 0.0, "longitudeSpan": 0.0} if place else \
        {"latitude": 0.0, "longitude": 0.0, "altitude": 0.0, "latitudeSpan": 0.0, "longitudeSpan": 0.0}
    doc: dict[str, Any] = {"title": title, "description": description, "imageViews": "3",
                           "creationTime": stamp(created or datetime(2024, 1, 1, 12, 0)),
                           "geoData": geo, "geoDataExif": geo,
                           "url": "https://photos.google.com/photo/AF1Qip_sandbox",
                           "googlePhotosOrigin": {"mobileUpload": {"deviceType": "ANDROID_PHONE"}}}
    if utc is not None:
        doc["photoTakenTime"] = stamp(utc)
    if favourite:
        doc["favorited"] = True
    return doc


def sidecar_name(title: str, counter: str | None = None, *, new: bool = True) -> str:
    """The sidecar's file name Google gives the photo whose real name is ``title``."""
    base = clip(title + SUPPLEMENTAL) if new else clip(title)
    return f"{base}({counter}).json" if counter else f"{base}.json"


def file_name(title: str, counter: str | None = None) -> str:
    """The photo's own file name: its stem cut at 47 characters, then the counter."""
    stem, ext = (title.rsplit(".", 1) + [""])[:2] if "." in title else (title, "")
    ext = f".{ext}" if ext else ""
    return f"{clip(stem, CLIP + 1)}{f'({counter})' if counter else ''}{ext}"


class _Writer:
    def __init__(self) -> None:
        self.files: list[tuple[int, str, bytes]] = []

    def add(self, part: int, name: str, data: bytes | str | dict) -> None:
        if isinstance(data, dict):
            data = json.dumps(data, indent=2, ensure_ascii=False)
        if isinstance(data, str):
            data = data.encode()
        self.files.append((part, name, data))


def make_export(root: str | Path, *, extra: int = 0, size: tuple[int, int] = (480, 360)) -> Export:
    """Write the two-part export into ``root``; return what it holds."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    w = _Writer()
    out: list[Photo] = []
    y19, y20 = f"{ROOT}/Photos from 2019", f"{ROOT}/Photos from 2020"
    pic = iter(range(100, 10_000))

    def local_at(day: int, hour: int, minute: int = 0) -> datetime:
        return datetime(2019, 3, 1, hour, minute) + timedelta(days=day)

    def photo(key: str, title: str, local: datetime | None, rule: str | None, *, folder: str = y19,
              counter: str | None = None, new: bool = True, exif_dated: bool = True, part: int = 0,
              sidecar_part: int | None = None, albums: tuple[str, ...] = (), place=None, description: str = "",
              favourite: bool = False, data: bytes | None = None, sidecar: str | None = "auto",
              sidecar_title: str | None = None, corrected: timedelta | None = None, is_video: bool = False,
              exif: dict | None = None) -> Photo:
        utc = local - OFFSET if local else None
        if data is None:
            data = jpeg(next(pic), local if exif_dated else None, size=size, **(exif or {}))
        fname = file_name(title, counter)
        w.add(part, f"{folder}/{fname}", data)
        told = utc + corrected if (utc and corrected) else utc
        doc = sidecar_doc(sidecar_title or title, told, place=place, description=description, favourite=favourite)
        json_name = sidecar_name(title, counter, new=new) if sidecar == "auto" else sidecar
        if json_name:
            w.add(part if sidecar_part is None else sidecar_part, f"{folder}/{json_name}", doc)
        for album in albums:
            w.add(0, f"{ROOT}/{ALBUMS[album]}/{fname}", data)
            if json_name:
                w.add(0, f"{ROOT}/{ALBUMS[album]}/{json_name}", doc)
        stem, dot, ext = title.rpartition(".")
        shown = f"{stem}({counter}).{ext}" if counter and dot else (fname if counter else title)
        p = Photo(key, fname, data, local, utc, shown, rule if json_name else None, sorted(albums),
                  folder.rsplit("/", 1)[-1], is_video, exif_dated, place, description or None, favourite,
                  corrected is not None)
        out.append(p)
        return p

    # the two namings, in full
    photo("json", "IMG_20190301_101500.jpg", local_at(0, 10, 15), "json", new=False, place=KATHMANDU,
          albums=("Trip to Nepal: Kathmandu & Pokhara", "Family", "Best of 2019 ★"),
          description="Boudhanath at dawn", favourite=True)
    photo("supplemental", "IMG_20190302_111500.jpg", local_at(1, 11, 15), "supplemental",
          albums=("Trip to Nepal: Kathmandu & Pokhara",))
    # the new naming cut to 46 characters: what is left of ".supplemental-metadata" depends on the name's length
    for key, keep in (("clipped-metada", len(".supplemental-metada")), ("clipped-suppl", len(".suppl")),
                      ("clipped-s", len(".s"))):
        length = CLIP - keep
        stem = f"PXL_20190303_12{len(out):02d}00"
        stem += "_" + "X" * (length - len(stem) - len(".jpg") - 1)
        photo(key, f"{stem}.jpg", local_at(2, 12, len(out)), "supplemental_clipped")
    # long names cut themselves, in both namings; the whole name is only in the sidecar's title
    photo("whatsapp", "WhatsApp Image 2019-12-25 at 14.50.00 from the family group.jpeg",
          datetime(2019, 12, 25, 14, 50), "name_clipped", exif_dated=False, place=POKHARA)
    photo("long-old", "PXL_20190304_093000123.LONG_EXPOSURE-02.ORIGINAL.jpg", local_at(3, 9, 30), "name_clipped",
          new=False)
    # numbered duplicates: other pictures with the same name, their sidecars numbered after the rest
    photo("dup-original", "IMG_1234.jpg", local_at(4, 8, 0), "supplemental")
    photo("numbered", "IMG_1234.jpg", local_at(4, 8, 5), "numbered", counter="1")
    photo("dup-old-original", "DSC_0101.JPG", local_at(4, 9, 0), "json", new=False)
    photo("numbered-old", "DSC_0101.JPG", local_at(4, 9, 5), "numbered", counter="1", new=False, sidecar_part=1)
    # edited copies: no sidecar of their own, the original's applies
    original = photo("edited-original", "IMG_20190310_090000.jpg", local_at(9, 9, 0), "supplemental",
                     place=KATHMANDU)
    for key, marker in (("edited", "-edited"), ("edited-de", "-bearbeitet"), ("edited-sv", "-redigerad")):
        data = jpeg(0, original.local, size=size, tint=True) if key == "edited" else \
            jpeg(len(out) + 300, original.local, size=size, tint=True)
        name = f"IMG_20190310_090000{marker}.jpg"
        w.add(0, f"{y19}/{name}", data)
        out.append(Photo(key, name, data, original.local, original.utc, name, "edited", [], "Photos from 2019",
                         place=KATHMANDU))
    # uploaded without an extension: Google added one to the file, not to the title or the sidecar's name
    photo("title", "IMG_20190311_140000.jpg", local_at(10, 14, 0), "title",
          sidecar="IMG_20190311_140000.json", sidecar_title="IMG_20190311_140000")
    out[-1].delivered_name = "IMG_20190311_140000.jpg"
    # a sidecar in the other part than its photo (both ways)
    photo("other-part", "IMG_20200105_173000.jpg", datetime(2020, 1, 5, 17, 30), "supplemental", folder=y20,
          part=0, sidecar_part=1, place=KATHMANDU)
    photo("other-part-2", "IMG_20200106_080000.jpg", datetime(2020, 1, 6, 8, 0), "supplemental", folder=y20,
          part=1, sidecar_part=0)
    # screenshots have no EXIF date: the sidecar is all there is
    photo("screenshot", "Screenshot_20200107-220400.png", datetime(2020, 1, 7, 22, 4), "supplemental_clipped",
          folder=y20, exif_dated=False, part=1, data=_png(next(pic), size))
    # a date corrected by hand in Google Photos: the sidecar says two days later than the camera
    photo("corrected", "IMG_20200110_100000.jpg", datetime(2020, 1, 10, 10, 0), "supplemental", folder=y20,
          part=1, corrected=timedelta(days=2))
    # no sidecar at all: its own EXIF (with an offset) decides
    photo("no-sidecar", "IMG_20200111_120000.jpg", datetime(2020, 1, 11, 12, 0), None, folder=y20, part=1,
          sidecar=None, exif={"offset": "+05:45"})
    # only in an album (shared with the user): listed from there, with that album
    photo("album-only", "IMG_20200112_130000.jpg", datetime(2020, 1, 12, 13, 0), "supplemental",
          folder=f"{ROOT}/{ALBUMS['Family']}", part=0)
    out[-1].albums = ["Family"]
    # videos: one with its sidecar, a Pixel motion photo, an iPhone live photo
    clip_time = datetime(2020, 1, 13, 16, 0)
    photo("video", "VID_20200113_160000.mp4", clip_time, "supplemental", folder=y20, part=1,
          data=video(1), is_video=True, exif_dated=False)
    motion = photo("motion-photo", "PXL_20200114_101010123.MP.jpg", datetime(2020, 1, 14, 10, 10, 10), "json",
                   folder=y20, part=1, new=False)
    w.add(1, f"{y20}/PXL_20200114_101010123.MP", video(2))
    out.append(Photo("motion-video", "PXL_20200114_101010123.MP", video(2), motion.local, motion.utc,
                     "PXL_20200114_101010123.MP", "motion", [], "Photos from 2020", video=True, exif_dated=False))
    live = photo("live-photo", "IMG_5000.JPG", datetime(2020, 1, 15, 18, 20), "json", folder=y20, part=0, new=False)
    w.add(1, f"{y20}/IMG_5000.MOV", video(3))
    out.append(Photo("live-video", "IMG_5000.MOV", video(3), live.local, live.utc, "IMG_5000.MOV", "motion", [],
                     "Photos from 2020", video=True, exif_dated=False))
    # the benchmark's bulk: a recent export's names, some numbered, some cut
    rng = random.Random(16)
    for i in range(extra):
        local = datetime(2021, 1, 1, 8, 0) + timedelta(minutes=37 * i)
        kind = rng.random()
        folder = f"{ROOT}/Photos from {local.year}"
        if kind < 0.1:
            title = f"WhatsApp Image {local:%Y-%m-%d at %H.%M.%S} from a group with a long name {i}.jpeg"
            photo(f"extra-{i}", title, local, "name_clipped", folder=folder, exif_dated=False, part=i % 2,
                  sidecar_part=(i // 2) % 2)
        elif kind < 0.2 and i:
            photo(f"extra-{i}", f"IMG_{i - 1:05d}.jpg", local, "numbered", folder=folder, counter="1",
                  part=i % 2)
        else:
            new = kind > 0.35
            photo(f"extra-{i}", f"IMG_{i:05d}.jpg", local, "supplemental" if new else "json", folder=folder,
                  part=i % 2, sidecar_part=(i // 3) % 2, new=new)
    # what is not a photo
    for name in NOT_PHOTOS:
        w.add(0, f"{ROOT}/{name}", {"note": "not a photo", "items": []})
    for title, folder in ALBUMS.items():
        w.add(0, f"{ROOT}/{folder}/metadata.json",
              {"title": title, "description": "", "access": "protected",
               "date": {"timestamp": "1577836800", "formatted": "Jan 1, 2020, 12:00:00 AM UTC"}})
    w.add(0, f"{ROOT}/Trip to Nepal_ Kathmandu & Pokhara/shared_album_comments.json", {"comments": []})
    w.add(0, "Takeout/archive_browser.html", "<html><body>Your Google data archive</body></html>")
    paths = [root / name for name in PARTS]
    members: dict[str, int] = {}
    for i, path in enumerate(paths):
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for part, name, data in w.files:
                if part == i and name not in members:
                    members[name] = i
                    zf.writestr(name, data)
    return Export(root, paths, out, members)


def _png(picture: int, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    photos.picture(picture, size).convert("RGB").save(buf, "PNG")
    return buf.getvalue()
