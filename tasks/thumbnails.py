"""Thumbnail JPEGs for photographs, RAW files included.

* JPEG, PNG, TIFF, WebP, GIF: decoded by Pillow (JPEGs at a reduced scale with
  ``draft``), turned upright by their EXIF orientation.
* HEIC/HEIF/AVIF: by Pillow through pillow-heif when it is installed.
* RAW (NEF, CR2, ARW, DNG, PEF, ORF, RW2, RAF...): from the JPEG preview the camera
  embedded, found by walking the TIFF structure (IFD0, its chain, SubIFDs, the EXIF
  IFD: ``JPEGInterchangeFormat``/``Length`` or a JPEG-compressed strip), as dcraw
  ``-e`` does; failing that rawpy's ``extract_thumb``; failing that a half-size
  rawpy rendering. The preview is turned upright by the RAW's own orientation tag.

Plain code: no Prefect, no network. Errors are :class:`ThumbnailError` with a short
reason (``unsupported_format``, ``unreadable``, ``too_large``, ``no_preview``).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from photo_escape.outcomes import PermanentError
from tasks.files import RAW_SUFFIXES, read_head, sniff_image

# what Pillow decodes here (HEIF and AVIF through pillow-heif); RAW goes its own way
DECODED_FORMATS = ("jpeg", "png", "tiff", "gif", "webp", "heif", "avif")
MAX_PREVIEW_BYTES = 64 << 20
MAX_IFDS = 64
MAX_ENTRIES = 4096

# what a viewer does for each EXIF orientation (as PIL.ImageOps.exif_transpose)
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ThumbnailError(PermanentError):
    """No thumbnail can be made from this file (the reason says why)."""


@dataclass
class Thumbnail:
    """A thumbnail JPEG and how it was made."""

    data: bytes
    width: int
    height: int
    method: str  # "decode", "raw_preview", "rawpy_thumb", "rawpy_render"


def _heif_opener() -> bool:
    """Register pillow-heif with Pillow once; False when it is not installed."""
    try:
        import pillow_heif
    except ImportError:
        return False
    if not getattr(_heif_opener, "done", False):
        pillow_heif.register_heif_opener()
        _heif_opener.done = True  # type: ignore[attr-defined]
    return True


# --- the TIFF walk: where a RAW file keeps its JPEG previews -----------------------------

_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}


def _ifd_values(fh, bo: str, typ: int, count: int, raw: bytes, size: int) -> list[int]:
    """Integer values of one IFD entry (SHORT/LONG/IFD), read inline or from their offset."""
    if typ not in (3, 4, 13, 9) or count < 1 or count > 4096:
        return []
    fmt = "H" if typ == 3 else "L"
    nbytes = _TYPE_SIZE[typ] * count
    if nbytes <= 4:
        data = raw[:nbytes]
    else:
        off = struct.unpack(bo + "L", raw)[0]
        if off + nbytes > size:
            return []
        fh.seek(off)
        data = fh.read(nbytes)
        if len(data) < nbytes:
            return []
    return list(struct.unpack(f"{bo}{count}{fmt}", data))


def tiff_previews(path: str | Path) -> tuple[list[tuple[int, int]], int]:
    """Every embedded JPEG a TIFF-based file points at, as (offset, length), and the
    orientation tag of IFD0 (1 if none). Robust to loops and absurd counts."""
    path = Path(path)
    size = path.stat().st_size
    found: list[tuple[int, int]] = []
    orientation = 1
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8 or head[:2] not in (b"II", b"MM"):
            return [], 1
        bo = "<" if head[:2] == b"II" else ">"
        queue = [(struct.unpack(bo + "L", head[4:8])[0], True)]
        seen: set[int] = set()
        while queue and len(seen) < MAX_IFDS:
            off, is_ifd0 = queue.pop(0)
            if off in seen or off < 8 or off + 2 > size:
                continue
            seen.add(off)
            fh.seek(off)
            n = struct.unpack(bo + "H", fh.read(2))[0]
            if n == 0 or n > MAX_ENTRIES or off + 2 + 12 * n > size:
                continue
            block = fh.read(12 * n + 4)
            tags: dict[int, list[int]] = {}
            for i in range(n):
                tag, typ, count = struct.unpack(bo + "HHL", block[12 * i: 12 * i + 8])
                if tag in (0x0201, 0x0202, 0x0111, 0x0117, 0x0103, 0x014A, 0x8769, 0x0112):
                    pos = fh.tell()
                    tags[tag] = _ifd_values(fh, bo, typ, count, block[12 * i + 8: 12 * i + 12], size)
                    fh.seek(pos)
            nxt = struct.unpack(bo + "L", block[12 * n: 12 * n + 4])[0] if len(block) >= 12 * n + 4 else 0
            if is_ifd0 and tags.get(0x0112):
                orientation = tags[0x0112][0] if 1 <= tags[0x0112][0] <= 8 else 1
            if tags.get(0x0201) and tags.get(0x0202):
                found.append((tags[0x0201][0], tags[0x0202][0]))
            comp = (tags.get(0x0103) or [0])[0]
            strips, counts = tags.get(0x0111) or [], tags.get(0x0117) or []
            if comp in (6, 7, 99) and len(strips) == 1 and len(counts) == 1:
                found.append((strips[0], counts[0]))
            for sub in tags.get(0x014A, []) + tags.get(0x8769, []):
                queue.append((sub, False))
            if nxt:
                queue.append((nxt, False))
    return [(o, n) for o, n in found if 0 < n <= MAX_PREVIEW_BYTES and o + n <= size], orientation


def _raf_preview(path: Path) -> list[tuple[int, int]]:
    """Fujifilm RAF: the JPEG's offset and length sit at bytes 84 and 88 of the header."""
    with path.open("rb") as fh:
        head = fh.read(92)
    if len(head) < 92:
        return []
    off, n = struct.unpack(">LL", head[84:92])
    return [(off, n)] if 0 < n <= MAX_PREVIEW_BYTES and off + n <= path.stat().st_size else []


def raw_preview(path: str | Path) -> tuple[bytes, int] | None:
    """The largest decodable JPEG preview embedded in a RAW file and the RAW's
    orientation, or None when the file points at none."""
    path = Path(path)
    kind = sniff_image(read_head(path))
    if kind == "tiff":
        spots, orientation = tiff_previews(path)
    elif kind == "raf":
        spots, orientation = _raf_preview(path), 1
    else:
        return None
    best: bytes | None = None
    with path.open("rb") as fh:
        for off, n in sorted(set(spots), key=lambda s: -s[1]):
            fh.seek(off)
            data = fh.read(n)
            if data[:2] != b"\xff\xd8":
                continue
            try:
                with Image.open(io.BytesIO(data)) as im:
                    im.draft("RGB", (64, 64))
                    im.load()
            except Exception:  # lossless-JPEG raw data and broken previews are not previews
                continue
            best = data
            break
    return (best, orientation) if best else None


def _rawpy_image(path: Path) -> tuple[Image.Image, str]:
    """The embedded thumbnail via rawpy (LibRaw), else a half-size rendering."""
    try:
        import rawpy
    except ImportError:
        raise ThumbnailError("unsupported_format", "rawpy is not installed") from None
    try:
        with rawpy.imread(str(path)) as raw:
            try:
                thumb = raw.extract_thumb()
                if thumb.format == rawpy.ThumbFormat.JPEG:
                    return Image.open(io.BytesIO(bytes(thumb.data))), "rawpy_thumb"
                return Image.fromarray(thumb.data), "rawpy_thumb"
            except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
                return Image.fromarray(raw.postprocess(half_size=True, use_camera_wb=True)), "rawpy_render"
    except ThumbnailError:
        raise
    except Exception as exc:
        raise ThumbnailError("no_preview", f"no preview in RAW file ({type(exc).__name__})") from None


def _upright(img: Image.Image, orientation: int) -> Image.Image:
    op = _UPRIGHT.get(orientation)
    return img.transpose(op) if op is not None else img


def _encode(img: Image.Image, size: int, quality: int, method: str) -> Thumbnail:
    img = img.convert("RGB")
    # Pillow's own choice for thumbnails (bicubic, antialiased like every Pillow reduction):
    # a third cheaper than Lanczos from the draft's size; no second Huffman pass (optimize),
    # which made files 2% smaller for 7% more of a thumbnail's time
    img.thumbnail((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Thumbnail(buf.getvalue(), img.width, img.height, method)


def _draft(img: Image.Image, size: int) -> None:
    """Let a JPEG decode at the smallest DCT scale (1/2, 1/4, 1/8) whose LONGEST side
    still reaches ``size``: the thumbnail fits a ``size`` square, so asking for a
    ``size`` x ``size`` draft (both sides) would decode a 4:3 photo at twice the pixels
    it needs (a 1024x768 at full size instead of 512x384)."""
    w, h = img.size
    longest = max(w, h)
    if img.format != "JPEG" or longest <= size:
        return
    img.draft("RGB", (max(1, -(-size * w // longest)), max(1, -(-size * h // longest))))


def _decode(path: Path, size: int) -> Image.Image:
    """Open a non-RAW image with Pillow, upright, reduced for speed where JPEG allows."""
    img = Image.open(path)
    _draft(img, size)
    img.load()
    return ImageOps.exif_transpose(img)


def make_thumbnail(path: str | Path, size: int = 512, quality: int = 85) -> Thumbnail:
    """A JPEG thumbnail (longest side ``size``) of a photograph or a RAW file's preview."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise ThumbnailError("unreadable", exc.strerror or "cannot read") from None
    if not head:
        raise ThumbnailError("empty", "zero-byte file")
    kind = sniff_image(head)
    is_raw = path.suffix.lower() in RAW_SUFFIXES or kind == "raf"
    if kind in ("heif", "avif"):
        _heif_opener()
    try:
        if is_raw:
            found = raw_preview(path) if kind in ("tiff", "raf") else None
            if found:
                data, orientation = found
                img = Image.open(io.BytesIO(data))
                _draft(img, size)
                own = img.getexif().get(0x0112)
                return _encode(_upright(img, own if own and own != 1 else orientation), size, quality, "raw_preview")
            img, method = _rawpy_image(path)
            return _encode(ImageOps.exif_transpose(img), size, quality, method)
        if kind not in DECODED_FORMATS:
            raise ThumbnailError("unsupported_format", "not an image format we can read")
        try:
            return _encode(_decode(path, size), size, quality, "decode")
        except (Image.DecompressionBombError, ThumbnailError):
            raise
        except Exception:
            if kind == "tiff":  # a RAW with a .tif name: try its previews
                found = raw_preview(path)
                if found:
                    img = Image.open(io.BytesIO(found[0]))
                    return _encode(_upright(img, found[1]), size, quality, "raw_preview")
            raise
    except ThumbnailError:
        raise
    except Image.DecompressionBombError:
        raise ThumbnailError("too_large", "more pixels than allowed") from None
    except Exception as exc:
        reason = "unsupported_format" if kind in ("heif", "avif") and not _heif_opener() else "unreadable"
        raise ThumbnailError(reason, f"cannot make a thumbnail ({type(exc).__name__})") from None


def thumbnail_jpeg(path: str | Path, size: int = 512, quality: int = 85) -> bytes:
    """Just the thumbnail's JPEG bytes (see :func:`make_thumbnail`)."""
    return make_thumbnail(path, size, quality).data
