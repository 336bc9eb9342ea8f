"""A hostile and broken corpus, built byte by byte, and a web site with hostile image names.

What a photo collection stuck somewhere for fifteen years really contains, and what a
malicious server could send: every file here must end as a recorded outcome with a
reason, quickly, without a hang, a crash of the run, or a byte written outside the
destination.

:func:`build` writes the files into a folder and returns ``{key: Case}``; each case
says what it is and what a hash of it must say (``ok`` or the reason code). The
files:

* ``good``              a real photograph with EXIF (the control)
* ``truncated``         the first third of a real JPEG
* ``zero``              zero bytes named ``.jpg``
* ``html``              an HTML error page saved as ``.jpg``
* ``bomb``              a PNG of 20,000 x 20,000 one-bit pixels, all its data present,
                        ~50 KB on disk: 400 megapixels once decoded (a decompression bomb)
* ``huge_header``       a JPEG whose frame header claims 65,000 x 65,000 pixels, with
                        the rest of a small picture after it
* ``exif_loop``         a real JPEG whose EXIF IFD0 links to itself (next IFD and
                        ExifIFD pointer both point back)
* ``exif_counts``       a real JPEG whose EXIF tags claim absurd counts (4 billion
                        values, offsets past the end) and a garbage date
* ``tiff_broken``       a TIFF whose IFD claims 65,535 entries and stops short
* ``tiff_eof``          a TIFF whose first IFD lies beyond the end of the file
* ``tiff_loop``         a small TIFF whose strips point outside the file and whose IFD
                        chain loops
* ``png_as_jpg``        a good PNG named ``.jpg`` (a wrong extension: still a photo)
* ``jpg_as_png``        a good JPEG named ``.png``
* ``non_utf8``          a good JPEG whose file name is not UTF-8 (Latin-1 bytes)
* ``control_chars``     a good JPEG whose name holds a newline and a control character
* ``oversized``         a sparse file of 64 MiB named ``.jpg`` (larger than a job's
                        ``max_bytes`` in the tests)

Plus, not image files: a symlink loop (``loop -> .``) and a FIFO named ``fifo.jpg``
(opening one for reading blocks forever), which listing and hashing must survive.

:class:`HostileSite` is a tiny web gallery (no login) whose album page names images
with traversal and absolute paths (``../../``, ``%2F``, ``%5C``, ``/etc/...``), each
served as a real JPEG: a source's name mapping must keep every download and every
delivered file inside its folder.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable


from sandbox import photos


@dataclass
class Case:
    """One file of the corpus: where it is and what a hash of it must say."""

    key: str
    path: bytes  # file-system path as bytes (names need not be UTF-8)
    what: str
    hash: str  # "ok" or the reason code(s) photo-escape hash may give, "|"-separated
    image: bool = True  # a regular file listed by a folder source

    @property
    def text_path(self) -> str:
        return os.fsdecode(self.path)


def _jpeg(picture: int = 5, size: tuple[int, int] = (96, 72), taken: datetime | None = None) -> bytes:
    buf = io.BytesIO()
    tmp = photos.picture(picture, size)
    if taken is None:
        tmp.save(buf, "JPEG", quality=85)
    else:
        tmp.save(buf, "JPEG", quality=85, exif=photos.exif_bytes(taken))
    return buf.getvalue()


def _with_app1(jpeg: bytes, tiff: bytes) -> bytes:
    """A JPEG with ``tiff`` as its EXIF (APP1) segment, right after the SOI marker."""
    payload = b"Exif\x00\x00" + tiff
    seg = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + seg + jpeg[2:]


def _ifd(entries: list[tuple[int, int, int, bytes]], next_ifd: int) -> bytes:
    """A little-endian TIFF IFD: ``(tag, type, count, 4-byte value/offset)`` entries."""
    out = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        out += struct.pack("<HHI", tag, typ, count) + value.ljust(4, b"\x00")[:4]
    return out + struct.pack("<I", next_ifd)


def _u32(n: int) -> bytes:
    return struct.pack("<I", n)


def exif_loop_tiff() -> bytes:
    """EXIF whose IFD0 is its own next IFD and its own Exif sub-IFD."""
    ifd0 = _ifd([(0x010F, 2, 4, b"Cam\x00"), (0x8769, 4, 1, _u32(8))], next_ifd=8)
    return b"II*\x00" + _u32(8) + ifd0


def exif_counts_tiff() -> bytes:
    """EXIF whose tags claim billions of values at offsets past the end, and a garbage date."""
    date_at = 8 + 2 + 3 * 12 + 4 + 2 + 3 * 12 + 4
    exif_at = 8 + 2 + 3 * 12 + 4
    ifd0 = _ifd([(0x0132, 2, 0xFFFFFFF0, _u32(0x7FFFFFF0)),   # DateTime: 4 GB of text
                 (0x8769, 4, 1, _u32(exif_at)),                 # Exif sub-IFD
                 (0x0111, 4, 0x3FFFFFFF, _u32(0xFFFFFF00))],    # StripOffsets: a billion longs
                next_ifd=0xFFFFFFF0)                              # next IFD past the end
    exif = _ifd([(0x9003, 2, 20, _u32(date_at)),                  # DateTimeOriginal
                 (0x927C, 7, 0xFFFFFFFF, _u32(0)),                # MakerNote: 4 GB
                 (0x8825, 4, 1, _u32(0xFFFFFFFF))],               # GPS IFD past the end
                next_ifd=0)
    return b"II*\x00" + _u32(8) + ifd0 + exif + b"9999:99:99 99:99:99\x00"


def tiff_broken() -> bytes:
    """A TIFF whose IFD claims 65,535 entries and holds three."""
    entries = _ifd([(0x0100, 3, 1, struct.pack("<H", 64)), (0x0101, 3, 1, struct.pack("<H", 64)),
                    (0x0102, 3, 1, struct.pack("<H", 8))], next_ifd=0)
    return b"II*\x00" + _u32(8) + struct.pack("<H", 0xFFFF) + entries[2:]


def tiff_eof() -> bytes:
    return b"II*\x00" + _u32(0xFFFFFF00) + b"\x00" * 16


def tiff_loop() -> bytes:
    """A 64 x 64 grey TIFF whose strip lies outside the file and whose IFD chain loops."""
    ifd = _ifd([
        (0x0100, 3, 1, struct.pack("<H", 64)),       # ImageWidth
        (0x0101, 3, 1, struct.pack("<H", 64)),       # ImageLength
        (0x0102, 3, 1, struct.pack("<H", 8)),        # BitsPerSample
        (0x0103, 3, 1, struct.pack("<H", 1)),        # no compression
        (0x0106, 3, 1, struct.pack("<H", 1)),        # BlackIsZero
        (0x0111, 4, 1, _u32(0x7FFF0000)),            # StripOffsets: far past the end
        (0x0116, 3, 1, struct.pack("<H", 64)),       # RowsPerStrip
        (0x0117, 4, 1, _u32(4096)),                  # StripByteCounts
    ], next_ifd=8)                                   # the next IFD is this one again
    return b"II*\x00" + _u32(8) + ifd


def png_bomb(side: int = 20_000) -> bytes:
    """A complete one-bit PNG of ``side`` x ``side`` pixels: tiny on disk, huge decoded."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def huge_header_jpeg() -> bytes:
    """A small JPEG whose frame header (SOF) is rewritten to claim 65,000 x 65,000 pixels."""
    data = bytearray(_jpeg(7))
    i = 2
    while i < len(data) - 9:
        if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC2):
            struct.pack_into(">HH", data, i + 5, 65000, 65000)
            break
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    return bytes(data)


def build(root: str | Path) -> dict[str, Case]:
    """Write the corpus into ``root`` (made if missing); returns ``{key: Case}``."""
    root_b = os.fsencode(Path(root))
    os.makedirs(root_b, exist_ok=True)
    cases: dict[str, Case] = {}

    def put(key: str, name: bytes, data: bytes, what: str, expect: str) -> None:
        path = os.path.join(root_b, name)
        with open(path, "wb") as f:
            f.write(data)
        cases[key] = Case(key, path, what, expect)

    good = _jpeg(1, taken=datetime(2004, 7, 14, 16, 20, 0))
    put("good", b"good.jpg", good, "a real photograph (control)", "ok")
    put("truncated", b"truncated.jpg", _jpeg(2)[:1200], "the first part of a JPEG", "truncated")
    put("zero", b"zero.jpg", b"", "zero bytes", "empty")
    put("html", b"error-page.jpg", b"<!DOCTYPE html><html><head><title>503</title></head>"
        b"<body>Service Unavailable</body></html>\n", "an HTML page named .jpg", "not_an_image")
    put("bomb", b"bomb.png", png_bomb(), "400 megapixels in ~50 KB (decompression bomb)", "too_large")
    put("huge_header", b"huge-header.jpg", huge_header_jpeg(), "a JPEG header claiming 65000x65000",
        "too_large")
    put("exif_loop", b"exif-loop.jpg", _with_app1(_jpeg(3), exif_loop_tiff()), "EXIF IFDs that loop", "ok")
    put("exif_counts", b"exif-counts.jpg", _with_app1(_jpeg(4), exif_counts_tiff()),
        "EXIF with absurd counts and offsets", "ok")
    put("tiff_broken", b"broken-ifd.tif", tiff_broken(), "a TIFF whose IFD stops short", "corrupt|truncated")
    put("tiff_eof", b"ifd-past-end.tif", tiff_eof(), "a TIFF whose IFD is past the end", "corrupt|truncated")
    put("tiff_loop", b"strip-outside.tif", tiff_loop(), "a TIFF with a looping IFD chain and a strip outside",
        "corrupt|truncated")
    buf = io.BytesIO()
    photos.picture(6, (96, 72)).save(buf, "PNG")
    put("png_as_jpg", b"really-a-png.jpg", buf.getvalue(), "a PNG named .jpg", "ok")
    put("jpg_as_png", b"really-a-jpeg.png", _jpeg(8), "a JPEG named .png", "ok")
    put("non_utf8", b"caf\xe9-\xff\xfe.jpg", _jpeg(9), "a file name that is not UTF-8", "ok")
    put("control_chars", b"line\nbreak\x01.jpg", _jpeg(10), "a newline and a control character in the name",
        "ok")
    big = os.path.join(root_b, b"oversized.jpg")
    with open(big, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0")
        f.truncate(64 << 20)  # sparse: no disk used
    cases["oversized"] = Case("oversized", big, "64 MiB of a JPEG signature then zeros (over the tests' max_bytes)",
                             "corrupt|truncated")
    # not image files: they must be skipped or refused, never hang a listing or a read
    loop = os.path.join(root_b, b"loop")
    if not os.path.lexists(loop):
        os.symlink(b".", loop)
    fifo = os.path.join(root_b, b"fifo.jpg")
    if not os.path.lexists(fifo):
        os.mkfifo(fifo)
    cases["fifo"] = Case("fifo", fifo, "a FIFO named .jpg (a read would block)", "unreadable", image=False)
    return cases


# -- a web gallery with hostile names ---------------------------------------------------
HOSTILE_SRCS = (
    "media/plain.jpg",
    "../../../../tmp/pe-escape-dotdot.jpg",
    "media/..%2F..%2F..%2F..%2Ftmp%2Fpe-escape-encoded.jpg",
    "media/..%5C..%5C..%5Cpe-escape-backslash.jpg",
    "/etc/pe-escape-absolute.jpg",
    "media/%2Fetc%2Fpe-escape-abs-encoded.jpg",
    "media/.hidden.jpg",
    "media/..",
    "media/nul%00byte.jpg",
    "media/photo.jpg?name=../../../tmp/pe-escape-query.jpg",
    "file:///etc/passwd",
)


class HostileSite:
    """A one-page web album (no login) naming images with traversal and absolute paths.

    Any ``GET`` of a path outside ``/album`` answers a real JPEG (a different picture
    per path), so every hostile URL downloads and must then be named safely.
    Use with :func:`sandbox.server.serve`; :meth:`job_source` gives the gallery
    source block for a job.
    """

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[str] = []
        self._cache: dict[str, bytes] = {}

    def _picture(self, path: str) -> bytes:
        if path not in self._cache:
            self._cache[path] = _jpeg(zlib.crc32(path.encode("utf-8", "surrogateescape")) % 50, taken=datetime(2012, 3, 4, 5, 6, 7))
        return self._cache[path]

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or path
        self.requests.append(raw)
        if path == "/album":
            page = environ.get("QUERY_STRING", "")
            imgs = "".join(f'<img src="{s}"/>' for s in HOSTILE_SRCS) if page in ("", "p=1") else ""
            body = f"<!DOCTYPE html><html><body><table>{imgs}</table></body></html>".encode()
            start_response("200 OK", [("Content-Type", "text/html"), ("Content-Length", str(len(body)))])
            return [body]
        data = self._picture(raw)
        start_response("200 OK", [("Content-Type", "image/jpeg"), ("Content-Length", str(len(data))),
                                  ("Content-Disposition", 'attachment; filename="../../../tmp/pe-escape-cd.jpg"')])
        return [data]

    def job_source(self) -> dict[str, Any]:
        return {"kind": "gallery", "pages": {"url": f"{self.url}/album?p={{page}}", "first": 1},
                "images": {"css": "img", "attribute": "src"}}
