"""``photo-escape hash PATH... [--json]``: sha256 and perceptual hashes of image files.

Each PATH is a file (hashed whatever its name) or a directory (walked recursively for
files with an image suffix: .jpg .jpeg .png .tif .tiff .gif .bmp .webp .heic, camera
RAW .nef .cr2 .dng ... (``tasks.files.IMAGE_SUFFIXES``); hidden files skipped). One line per file, in order:

    {path, status, error, message, sha256, bytes, phash, dhash, phash_mirror,
     dhash_mirror, width, height, format, hash_version}

``status`` is ``ok`` or ``error``; ``error`` is a reason code (``empty``, ``truncated``,
``corrupt``, ``not_an_image``, ``too_large``, ``unreadable``) and ``message`` says it in
words. Hashes are 16 hex digits, as imagehash prints them; width and height are of the
upright picture (after EXIF orientation).

The exit code is 0 even when some files are bad (each bad file is reported on its own
line and the others go on); 2 only for a usage error. This command does not import
Prefect, so it starts fast.
"""

from __future__ import annotations

import argparse

from photo_escape.output import emit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or directories")
    parser.add_argument("--processes", type=int, default=0,
                        help="worker processes for decoding (0 = one per core, 1 = none)")
    parser.add_argument("--max-pixels", type=int, default=250_000_000,
                        help="larger images end as too_large before decoding (default 250,000,000)")


def run(args: argparse.Namespace) -> int:
    from tasks.hashing import hash_files, image_files, public

    paths = image_files(args.paths)
    for rec in hash_files(paths, processes=args.processes, max_pixels=args.max_pixels, thumb=False):
        rec = public(rec)
        if rec["status"] == "ok":
            text = (f"{rec['path']}  ok  phash={rec['phash']} dhash={rec['dhash']} "
                    f"{rec['width']}x{rec['height']} {rec['format']} sha256={rec['sha256'][:12]}")
        else:
            text = f"{rec['path']}  ERROR {rec['error']}: {rec['message']}"
        emit(rec, args.json, text)
    return 0
