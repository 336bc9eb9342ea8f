"""Thumbnails for the report, embedded as data URIs so report.html stands alone.

They come from the ledger's ``assets.thumb`` (small grayscale pictures the hashing
stage keeps: raw 8-bit pixels, or an encoded PNG/JPEG) or, failing that, are made
small from a file on disk named in an event's detail. Nothing is fetched over a
network: a report must open anywhere, offline.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
from pathlib import Path
from typing import Any
from urllib.parse import quote

THUMB_PX = 128
PARTIAL_MAX_BYTES = 64_000_000  # a truncated JPEG is read into memory to show its part


def data_uri(png: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(png).decode("ascii")


def from_blob(blob: bytes | None, shape: tuple[int, int] | None = None) -> str | None:
    """A data URI for a stored thumbnail: PNG/JPEG bytes as they are, raw grayscale
    pixels (a square, or ``shape`` = (width, height)) turned into a PNG."""
    if not blob:
        return None
    blob = bytes(blob)
    if blob[:8] == b"\x89PNG\r\n\x1a\n":
        return data_uri(blob)
    if blob[:3] == b"\xff\xd8\xff":
        return data_uri(blob, "image/jpeg")
    from PIL import Image

    if shape is None:
        side = math.isqrt(len(blob))
        if side * side != len(blob):
            return None
        shape = (side, side)
    w, h = shape
    if w * h != len(blob):
        return None
    img = Image.frombytes("L", (w, h), blob)
    if max(w, h) < THUMB_PX:  # tiny hash thumbnails: scale up so a person can see them
        scale = max(1, THUMB_PX // max(w, h))
        img = img.resize((w * scale, h * scale), Image.NEAREST)
    return _png(img)


def from_file(path: str | Path | None, *, partial: bool = False) -> str | None:
    """A small JPEG data URI of an image file on disk, or None if it cannot be read.

    With ``partial``, a JPEG cut short (a truncated copy in an archive) still shows what
    it holds: the part that is there, grey below."""
    if not path:
        return None
    p = Path(str(path))
    try:
        if not p.is_file() or p.stat().st_size == 0 or p.stat().st_size > 300_000_000:
            return None
        try:
            return _thumbnail(p)
        except Exception:  # noqa: BLE001
            if not partial or p.stat().st_size > PARTIAL_MAX_BYTES:
                return None
            data = p.read_bytes()
            if data[:3] != b"\xff\xd8\xff":
                return None
            # an end-of-image marker lets the decoder finish what is there instead of refusing
            return _thumbnail(io.BytesIO(data + b"\xff\xd9"))
    except Exception:  # a report never fails because one picture is broken
        return None


def from_original(path: str | Path | None, sha256: str | None, size: int | None = None) -> str | None:
    """A thumbnail of a source file only while it still holds the content the ledger
    recorded (its ``sha256``, and ``size`` when known): the original beside a changed
    copy, never some later edit of it. None otherwise."""
    if not path or not sha256:
        return None
    p = Path(str(path))
    try:
        if not p.is_file() or (size is not None and p.stat().st_size != size):
            return None
        with p.open("rb") as f:
            if hashlib.file_digest(f, "sha256").hexdigest() != sha256:
                return None
    except OSError:
        return None
    return from_file(p)


def _thumbnail(fp: Any) -> str:
    """A THUMB_PX JPEG data URI of the image in a file or file object (raises if it cannot be decoded)."""
    from PIL import Image, ImageOps

    with Image.open(fp) as im:
        im.draft("RGB", (THUMB_PX * 2, THUMB_PX * 2))
        im = ImageOps.exif_transpose(im)
        im.thumbnail((THUMB_PX, THUMB_PX))
        im = im.convert("RGB")
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=80)
    return data_uri(buf.getvalue(), "image/jpeg")


def _png(img) -> str:
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return data_uri(buf.getvalue())


def link(ref: Any) -> str | None:
    """A link to an original: URLs as they are, absolute local paths as file:// URLs."""
    if not ref or not isinstance(ref, str):
        return None
    if ref.startswith(("http://", "https://", "file://")):
        return ref
    if ref.startswith("local:"):
        ref = ref[len("local:"):]
    if ref.startswith("/"):
        return "file://" + quote(ref)
    return None


def short_name(ref: Any, width: int = 32) -> str:
    """The last part of a path, URL or id, short enough for a caption."""
    text = str(ref or "").rstrip("/").rsplit("/", 1)[-1]
    return text if len(text) <= width else "…" + text[-(width - 1):]
