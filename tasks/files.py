"""What several stages need to know about a photo file: is its name an image's, what
its first bytes say it is, and the sha256 of its content.

One home for each, so the downloader, the hasher, the capture-time reader, the
thumbnail maker and the sources and destinations agree on them. Plain code, no
Prefect, no third-party imports.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Iterable

CHUNK = 1 << 20  # bytes read at a time when hashing a file

#: camera RAW files by name: their bytes are often a TIFF, sometimes a container of their own
RAW_SUFFIXES = frozenset({
    ".nef", ".nrw", ".cr2", ".cr3", ".crw", ".arw", ".srf", ".sr2", ".dng", ".pef", ".orf", ".rw2",
    ".raf", ".srw", ".3fr", ".erf", ".kdc", ".dcr", ".mef", ".mos", ".iiq", ".x3f", ".rwl", ".mrw",
})
#: file names taken as photos when a folder is walked (compared lower-case)
IMAGE_SUFFIXES = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".tif", ".tiff", ".gif", ".bmp", ".webp",
    ".heic", ".heif", ".hif", ".avif", ".jxl", ".jp2", ".j2k", ".ppm", ".pgm", ".pbm", ".psd",
}) | RAW_SUFFIXES

# (first bytes, format); TIFF-based RAW (NEF, CR2, DNG, ARW, ORF, RW2...) is "tiff":
# a reader walks it as a TIFF, whatever the maker changed in its first bytes
_SIGNATURES = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"IIRO", "tiff"),  # Olympus ORF
    (b"IIRS", "tiff"),  # Olympus ORF
    (b"MMOR", "tiff"),  # Olympus ORF, big-endian
    (b"IIU\x00", "tiff"),  # Panasonic RW2
    (b"FUJIFILMCCD-RAW", "raf"),
    (b"BM", "bmp"),
    (b"8BPS", "psd"),
    (b"\xff\x0a", "jxl"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "jxl"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "jp2"),
    (b"\xff\x4f\xff\x51", "jp2"),  # a bare JPEG 2000 codestream (.j2k)
    (b"II\xbc\x01", "jxr"),
)
# brands of an ISO base media file's ftyp box that make it a still image
_ISO_BRANDS = {
    **dict.fromkeys((b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"),
                    "heif"),
    b"avif": "avif", b"avis": "avif",
    b"crx ": "cr3",
}
#: every name :func:`sniff_image` gives
IMAGE_FORMATS = frozenset(f for _, f in _SIGNATURES) | frozenset(_ISO_BRANDS.values()) | {"webp", "crw"}


def inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` is in ``folder`` (or below it), by their absolute paths (our own
    work folders: no symlinks to resolve)."""
    return os.path.abspath(path).startswith(os.path.join(os.path.abspath(folder), ""))


def sniff_image(head: bytes) -> str | None:
    """The image format a file's first bytes announce (one of IMAGE_FORMATS), or None when
    they announce no image (text, an HTML error page, a video...). 16 bytes are enough.

    Decoders trust the bytes, not the name: a PNG named .jpg is a PNG, an HTML page
    named .jpg no image at all."""
    for magic, name in _SIGNATURES:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] in (b"II", b"MM") and head[6:14] == b"HEAPCCDR":  # Canon CRW (CIFF)
        return "crw"
    if is_iso_media(head):
        return _ISO_BRANDS.get(head[8:12])
    return None


def is_iso_media(head: bytes) -> bool:
    """Whether the first bytes start an ISO base media file (its ``ftyp`` box): an
    image (HEIF, AVIF, CR3) or not (MP4, QuickTime), a container a metadata reader may
    still know although :func:`sniff_image` names no image in it."""
    return head[4:8] == b"ftyp"


def sha256_stream(chunks: Iterable[bytes], sink: Any = None) -> tuple[str, int]:
    """sha256 and byte count of a stream of chunks, copying them to ``sink`` if given
    (a download hashed on its way to disk is read once)."""
    h = hashlib.sha256()
    n = 0
    for block in chunks:
        h.update(block)
        n += len(block)
        if sink is not None:
            sink.write(block)
    return h.hexdigest(), n


def sha256_file(path: str | bytes | os.PathLike, *, chunk: int = CHUNK) -> tuple[str, int]:
    """sha256 hex digest and size of a file's content, streamed (never held whole in
    memory). Raises OSError when the file cannot be read."""
    with open(path, "rb") as fh:
        return sha256_stream(iter(lambda: fh.read(chunk), b""))


def read_head(path: str | bytes | os.PathLike, n: int = 32) -> bytes:
    """The first ``n`` bytes of a file (fewer if it is shorter), for :func:`sniff_image`."""
    with open(path, "rb") as fh:
        return fh.read(n)
