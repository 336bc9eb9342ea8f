"""Benchmark: the metadata readers side by side, on speed and on what each reads.

The capture-time stage reads a handful of tags (DateTimeOriginal, its offset, GPS) from
every photo. This compares, on the same files, in this process (no guard):

* **exifread** ``process_file(details=False)`` (photo-escape's first reader until now);
* **Pillow** ``getexif()`` (with pillow-heif: the second reader);
* **python-exiv2** (libexiv2 0.28, bundled in the wheel) ``readMetadata()`` and the tags looked up;
* **photo-escape** ``tasks.capture_time.read_tags`` (every reader and the XMP scan, as the
  stage calls it in its reader process);

on 640 x 480 JPEGs (most of a collection), 4000 x 3000 JPEGs, TIFFs, HEICs, and the old
cameras' files whose dates sit in a maker note or an older container (sandbox.cameras):
a Reconyx trail camera's maker note, an Olympus APP12 Picture Info block and a Canon
CRW. Prints per reader: files a second on each kind, and which kinds it found a date in.

    .venv/bin/python bench/metadata_readers.py            # quick: 50 of each common kind
    .venv/bin/python bench/metadata_readers.py --files 400
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sandbox import cameras, photos  # noqa: E402
from sandbox.photos import exif_bytes, write_jpeg  # noqa: E402


def make_files(folder: Path, n: int) -> dict[str, list[str]]:
    """``n`` files of each common kind (fewer of the large ones) and one of each old camera's."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    start = datetime(2016, 4, 1, 9, 0)
    out: dict[str, list[str]] = {"jpeg 640x480": [], "jpeg 4000x3000": [], "tiff": [], "heic": [], "old cameras": []}
    for i in range(n):
        t = start + timedelta(minutes=7 * i)
        out["jpeg 640x480"].append(str(write_jpeg(folder / f"small/IMG_{i:05d}.JPG", i, size=(640, 480), taken=t,
                                                  offset="+05:45", gps=(27.7, 85.32))))
    big = photos.picture(1, (4000, 3000))
    small = photos.picture(2, (640, 480))
    for i in range(max(2, n // 10)):
        ex = exif_bytes(start + timedelta(hours=i), offset="+01:00", gps=(48.85, 2.35))
        for kind, img, fmt, suffix in (("jpeg 4000x3000", big, "JPEG", "JPG"), ("tiff", small, "TIFF", "TIF"),
                                       ("heic", small, "HEIF", "HEIC")):
            path = folder / kind.split()[0] / f"P{i:04d}.{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            img.save(path, fmt, exif=ex, **({"quality": 60} if fmt == "HEIF" else {}))
            out[kind].append(str(path))
    old = folder / "old"
    when = datetime(2009, 6, 1, 21, 30, 5)
    out["old cameras"] = [str(p) for p in (
        cameras.reconyx_jpeg(old / "RCNX0001.JPG", when),
        cameras.reconyx_jpeg(old / "RCNX0002.JPG", when, "ultrafire"),
        cameras.reconyx_jpeg(old / "RCNX0003.JPG", when, "hf2"),
        cameras.olympus_app12_jpeg(old / "PA220001.JPG", datetime(1998, 8, 22, 14, 58, 48)),
        cameras.canon_crw(old / "CRW_0001.CRW", datetime(1999, 5, 1, 10, 20, 30)),
    )]
    return out


def by_exifread(path: str) -> str | None:
    import exifread

    with open(path, "rb") as fh:
        tags = exifread.process_file(fh, details=False, extract_thumbnail=False)
    got = tags.get("EXIF DateTimeOriginal")
    return str(got) if got else None


def by_pillow(path: str) -> str | None:
    from PIL import Image

    with Image.open(path) as im:
        return im.getexif().get_ifd(0x8769).get(0x9003)


_WANTED = ("Exif.Photo.DateTimeOriginal", "Exif.Photo.OffsetTimeOriginal", "Exif.GPSInfo.GPSLatitude",
           "Exif.GPSInfo.GPSLongitude", "Exif.GPSInfo.GPSTimeStamp", "Exif.Image.Make", "Exif.Image.Model")


def by_exiv2(path: str) -> str | None:
    import exiv2

    image = exiv2.ImageFactory.open(path)
    image.readMetadata()
    data = image.exifData()
    found = {}
    for key in _WANTED:
        it = data.findKey(exiv2.ExifKey(key))
        if it != data.end():
            found[key] = it.toString()
    return found.get("Exif.Photo.DateTimeOriginal")


def by_photo_escape(path: str) -> str | None:
    from tasks.capture_time.read import read_tags

    got = read_tags(path)
    tags = got.get("tags") or {}
    return tags.get("dto") or tags.get("makernote_dt")


def measure(fn: Callable[[str], Any], paths: list[str]) -> tuple[float, int]:
    """Seconds for all ``paths`` and how many gave a date (errors count as none)."""
    found = 0
    t = time.perf_counter()
    for p in paths:
        try:
            found += bool(fn(p))
        except Exception:  # noqa: BLE001 - a reader that cannot open a kind finds nothing in it
            pass
    return time.perf_counter() - t, found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=50)
    args = ap.parse_args()
    import exiv2

    exiv2.LogMsg.setLevel(exiv2.LogMsg.Level.mute)
    readers = {"exifread": by_exifread, "pillow": by_pillow, "exiv2": by_exiv2, "photo-escape": by_photo_escape}
    with tempfile.TemporaryDirectory(prefix="bench-readers-") as tmp:
        files = make_files(Path(tmp), args.files)
        for fn in readers.values():  # imports and first-use set-up are not a file's time
            measure(fn, files["jpeg 640x480"][:2])
        print(f"{'kind':16} {'files':>5}  " + "  ".join(f"{name:>22}" for name in readers))
        for kind, paths in files.items():
            cells = []
            for fn in readers.values():
                secs, found = measure(fn, paths)
                cells.append(f"{len(paths) / secs:8.0f}/s {found:3d} dated")
            print(f"{kind:16} {len(paths):5d}  " + "  ".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main()
