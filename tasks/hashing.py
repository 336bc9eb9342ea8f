"""Perceptual hashes of photographs, decoded once at reduced size.

Plain code (no Prefect): the escape flow's hash stage, ``photo-escape hash``, the
album resolver and find-similar all call :func:`hash_file` / :func:`hash_files`.

What one photo gets (a *hash record*, a plain dict that pickles and serialises):

    path, status ("ok" | "error"), error (reason code or None), message,
    sha256 (hex of the file's bytes; set whenever the file could be read, even if it
    does not decode), bytes,
    phash, dhash            64-bit perceptual / difference hash of the upright picture,
                            16 hex digits as ``str(imagehash.ImageHash)`` prints them
    phash_mirror, dhash_mirror   the same for the picture flipped left-right
    width, height           of the upright picture (after EXIF orientation)
    format                  JPEG, PNG, TIFF, ...
    thumb                   THUMB_SIZE x THUMB_SIZE grayscale (luma) uint8 pixels of
                            the whole upright picture squashed to a square, row-major
                            bytes (1,024 bytes); the resolver and find-similar normalise
                            it (zero mean, unit variance) when they compare
    hash_version            names this algorithm, so cached hashes from another
                            version are never mixed with these

Reason codes: ``empty`` (zero bytes), ``truncated`` (the data stops early),
``corrupt`` (an image format whose data does not decode), ``not_an_image`` (no image
format recognised: text, HTML...), ``too_large`` (more pixels than ``max_pixels`` or
more bytes than ``max_bytes``: decompression bombs and hostile headers end here before
any pixel is decoded), ``unreadable`` (missing, a directory, no permission).

Why it is fast: a JPEG is decoded with Pillow's *draft* mode, which lets libjpeg
scale by 1/2, 1/4 or 1/8 in the DCT domain and decode only the luma channel; other
formats are reduced with a box filter (``Image.reduce``) right after loading. Only
then is the picture turned upright and resized (Lanczos) to the 32x32 of phash and the
9x8 of dhash, as imagehash does. The phash DCT is two small matrix products.
How close this stays to imagehash on the full-size image is measured in
``tests/test_hashing.py`` (mean Hamming distance over real photographs).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from tasks.files import IMAGE_SUFFIXES, read_head, sha256_file, sniff_image
from tasks.isolation import isolated_map

HASH_VERSION = "pe-hash-1 (draft>=256, lanczos, phash 32/8, dhash 9x8, thumb 32 L)"
THUMB_SIZE = 32          # side of the grayscale thumbnail kept for reranking
DECODE_MIN_SIDE = 256    # decode at reduced size, but never smaller than this
REDUCING_GAP = 3.0       # resize: box-reduce first while the picture is 3x the target
READ_WHOLE = 64 << 20   # files up to this size are read into memory once (sha256 and decoding)
REASONS = ("empty", "truncated", "corrupt", "not_an_image", "too_large", "unreadable")

RECORD_KEYS = ("path", "status", "error", "message", "sha256", "bytes", "phash", "dhash",
               "phash_mirror", "dhash_mirror", "width", "height", "format", "thumb", "hash_version")

def _register_heif() -> None:
    """Let Pillow open HEIC/HEIF (phone photos) through pillow-heif, once, if installed."""
    if getattr(_register_heif, "done", False):
        return
    _register_heif.done = True  # type: ignore[attr-defined]
    try:
        from pillow_heif import register_heif_opener

        register_heif_opener()
    except Exception:  # noqa: BLE001 - without it a HEIC file is reported, not hashed
        pass


# -- the DCT of phash --------------------------------------------------------------------
def _dct_rows(n: int = 32, keep: int = 8) -> np.ndarray:
    """The first ``keep`` rows of the (unnormalised) DCT-II matrix of size ``n``.

    ``scipy.fftpack.dct(x)`` is ``2 * sum(x[i] cos(pi k (2i+1) / 2n))``; the factor 2
    does not change which coefficients lie above the median, so it is left out."""
    k = np.arange(keep)[:, None]
    i = np.arange(n)[None, :]
    return np.cos(np.pi * k * (2 * i + 1) / (2 * n))


_DCT8 = _dct_rows()


def _bits_to_hex(bits: np.ndarray) -> str:
    """64 booleans (row-major, first is the most significant bit) as 16 hex digits,
    exactly as ``str(imagehash.ImageHash)`` prints them."""
    return np.packbits(np.asarray(bits, dtype=bool).ravel()).tobytes().hex()  # MSB first, as imagehash


def phash_bits(gray32: np.ndarray) -> np.ndarray:
    """imagehash's phash of a 32x32 grayscale array: the 8x8 lowest DCT
    frequencies compared with their median."""
    low = _DCT8 @ gray32.astype(np.float64) @ _DCT8.T
    return low > np.median(low)


def dhash_bits(gray9x8: np.ndarray) -> np.ndarray:
    """imagehash's dhash of a 8-row, 9-column grayscale array: is each pixel
    brighter than its left neighbour?"""
    return gray9x8[:, 1:] > gray9x8[:, :-1]


# -- decoding ------------------------------------------------------------------------------
@contextmanager
def _pixel_limit(max_pixels: int) -> Iterator[None]:
    """Let Pillow's own decompression-bomb check use our limit while we decode."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max(int(max_pixels), 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _scaled_upright_gray(img: Image.Image, min_size: tuple[int, int] = (DECODE_MIN_SIDE, DECODE_MIN_SIDE)
                         ) -> tuple[Image.Image, int]:
    """Decode ``img`` at reduced size (never below ``min_size``, width and height as
    stored), as luma, upright; also return the EXIF orientation that was applied."""
    orientation = 1
    try:
        orientation = int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # a broken EXIF block must not lose the picture
        orientation = 1
    if img.format == "JPEG":
        img.draft("L", min_size)  # libjpeg scales by 1/2, 1/4 or 1/8 while it decodes
    img.load()
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    w, h = img.size
    factor = min(w // min_size[0], h // min_size[1])
    if factor >= 2:
        img = img.reduce(factor)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img.convert("I"), dtype=np.float64)
        hi = arr.max() or 1.0
        img = Image.fromarray((arr * (255.0 / (65535.0 if hi > 255 else 255.0))).clip(0, 255).astype(np.uint8))
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    gray = img.convert("L")
    if orientation in range(2, 9):
        gray = _orient(gray, orientation)
    return gray, orientation


_ORIENT_OPS = {
    2: [Image.Transpose.FLIP_LEFT_RIGHT],
    3: [Image.Transpose.ROTATE_180],
    4: [Image.Transpose.FLIP_TOP_BOTTOM],
    5: [Image.Transpose.TRANSPOSE],
    6: [Image.Transpose.ROTATE_270],
    7: [Image.Transpose.TRANSVERSE],
    8: [Image.Transpose.ROTATE_90],
}


def _orient(img: Image.Image, orientation: int) -> Image.Image:
    """Turn stored pixels upright as a viewer does for EXIF Orientation 2..8
    (the same operations as ``ImageOps.exif_transpose``)."""
    for op in _ORIENT_OPS.get(orientation, []):
        img = img.transpose(op)
    return img


def hashes_of_gray(gray: Image.Image) -> dict[str, Any]:
    """phash, dhash, their mirrored twins and the thumbnail of an upright luma picture.

    Resizing commutes with a left-right flip (the filter is symmetric), so the
    mirrored hashes come from the flipped 32x32 and 9x8 arrays."""
    g32 = np.asarray(gray.resize((32, 32), Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP))
    g98 = np.asarray(gray.resize((9, 8), Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)).astype(np.int16)
    if THUMB_SIZE == 32:
        thumb = g32
    else:
        thumb = np.asarray(gray.resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS))
    return {
        "phash": _bits_to_hex(phash_bits(g32)),
        "dhash": _bits_to_hex(dhash_bits(g98)),
        "phash_mirror": _bits_to_hex(phash_bits(g32[:, ::-1])),
        "dhash_mirror": _bits_to_hex(dhash_bits(g98[:, ::-1])),
        "thumb": np.ascontiguousarray(thumb, dtype=np.uint8).tobytes(),
    }


def hash_image(img: Image.Image) -> dict[str, Any]:
    """Hashes and thumbnail of an already opened PIL image (EXIF orientation
    applied); no size checks, so only for images you made yourself."""
    gray, _ = _scaled_upright_gray(img)
    return hashes_of_gray(gray)


# -- one file --------------------------------------------------------------------------------
def _empty_record(path: str) -> dict[str, Any]:
    rec: dict[str, Any] = {k: None for k in RECORD_KEYS}
    rec.update(path=path, status="error", hash_version=HASH_VERSION)
    return rec


def _fail(rec: dict, code: str, message: str) -> dict:
    rec.update(status="error", error=code, message=message)
    for k in ("phash", "dhash", "phash_mirror", "dhash_mirror", "thumb", "detail"):
        if k in rec:
            rec[k] = None
    return rec


def hash_file(path: str | os.PathLike, *, max_pixels: int = 250_000_000,
              max_bytes: int = 2_000_000_000, thumb: bool = True) -> dict[str, Any]:
    """The hash record of one image file (see the module docstring). Never raises.

    The file is read once for its sha256 (streamed) and decoded once, at reduced size.
    Pixel and byte limits are checked from the header before any pixel is decoded.
    """
    rec = decode_checked(path, _hash_decoded, _empty_record(str(path)), max_pixels=max_pixels, max_bytes=max_bytes)
    if rec["status"] == "ok" and not thumb:
        rec["thumb"] = None
    return rec


def _hash_decoded(img: Image.Image) -> dict[str, Any]:
    gray, orientation = _scaled_upright_gray(img)
    w, h = img.size
    return {"width": h if orientation in (5, 6, 7, 8) else w, "height": w if orientation in (5, 6, 7, 8) else h,
            **hashes_of_gray(gray)}


def decode_checked(path: str | os.PathLike, decode: Any, rec: dict[str, Any], *, max_pixels: int = 250_000_000,
                   max_bytes: int = 2_000_000_000) -> dict[str, Any]:
    """The checks and reason codes of :func:`hash_file` around any decoding: ``rec``
    (with ``path``, ``status``, ``error``, ``message``, ``sha256``, ``bytes``,
    ``format``) filled in, and ``decode(opened image)``'s fields added when it decodes.
    ``decode`` is called with the pixel limit in force; whatever it raises becomes a
    reason code. Never raises."""
    path_s = str(path)
    p = Path(path_s)
    try:
        if not p.is_file():
            return _fail(rec, "unreadable", f"{path_s} is not a readable file")
        size = p.stat().st_size
        rec["bytes"] = size
        if size > max_bytes:
            return _fail(rec, "too_large", f"{size} bytes is more than the limit of {max_bytes}")
        data = None
        if size <= READ_WHOLE:  # a photo: read once, for its sha256 and its pixels
            with open(p, "rb") as fh:
                data = fh.read()
            rec["sha256"], rec["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
            head = data[:32]
        else:  # a large file is streamed, never held whole in memory
            rec["sha256"], rec["bytes"] = sha256_file(p)
            head = read_head(p)
        if rec["bytes"] == 0:
            return _fail(rec, "empty", "the file has zero bytes")
    except OSError as exc:
        return _fail(rec, "unreadable", f"cannot read the file: {exc.strerror or exc}")
    kind = sniff_image(head)
    if kind in ("heif", "avif"):
        _register_heif()
    try:
        with _pixel_limit(max_pixels), Image.open(p if data is None else io.BytesIO(data)) as img:
            rec["format"] = img.format
            w, h = img.size
            if w <= 0 or h <= 0:
                return _fail(rec, "corrupt", f"the header gives an impossible size {w}x{h}")
            if w * h > max_pixels:
                return _fail(rec, "too_large", f"{w}x{h} pixels is more than the limit of {max_pixels}")
            out = decode(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return _fail(rec, "too_large", f"decompression bomb: {exc}")
    except MemoryError:
        return _fail(rec, "too_large", "not enough memory to decode this image")
    except UnidentifiedImageError:
        if kind is not None:
            return _fail(rec, "corrupt", f"the file starts like an image ({kind}) but its header does not decode here")
        return _fail(rec, "not_an_image", f"not an image (starts with {head[:12]!r})")
    except Exception as exc:  # noqa: BLE001 - every failure becomes a reason code
        text = str(exc)
        low = text.lower()
        if "truncated" in low or "end of file" in low or "outside of file" in low or isinstance(exc, EOFError):
            return _fail(rec, "truncated", f"the image data stops early: {text or type(exc).__name__}")
        return _fail(rec, "corrupt", f"the image does not decode: {type(exc).__name__}: {text}"[:300])
    rec.update(out)
    rec.update(status="ok", error=None, message=None)
    return rec


# -- many files ------------------------------------------------------------------------------
def _lost(path: str, why: str, detail: str, *, timeout_s: float) -> dict:
    """The record of a file whose decoding hung, ended its worker or raised: ``corrupt``,
    with the file's sha256 when it can be read (its content is still identified)."""
    rec = _empty_record(path)
    try:
        rec["sha256"], rec["bytes"] = sha256_file(path)
    except OSError:
        pass
    if why == "timeout":
        message = f"decoding took longer than {timeout_s:.0f} s"
    elif why == "crashed":
        message = f"the decoder crashed ({detail or 'its process ended'})"
    else:
        message = f"the decoder raised {detail}"
    return _fail(rec, "corrupt", message)


def hash_files(paths: Iterable[str | os.PathLike], *, processes: int = 0, chunk: int = 8,
               timeout_s: float = 120.0, **kw: Any) -> list[dict]:
    """Hash records of many files, in input order.

    ``processes``: 0 = one worker process per core, 1 = in this process (no guard).
    In worker processes (:func:`tasks.isolation.isolated_map`) a file whose decoder
    crashes (a segfault, the OOM killer) or takes longer than ``timeout_s`` does not
    lose the batch: that file alone ends as ``corrupt`` with a message saying so.
    ``kw`` goes to :func:`hash_file` (``max_pixels``, ``max_bytes``, ``thumb``).
    """
    paths = [str(p) for p in paths]
    if processes == 1:
        return [hash_file(p, **kw) for p in paths]
    return isolated_map(hash_file, paths, lost=functools.partial(_lost, timeout_s=timeout_s), timeout=timeout_s,
                        workers=hashers_for(len(paths), processes), chunk=chunk, kw=kw)


def hashers_for(count: int, processes: int = 0) -> int:
    """How many worker processes :func:`hash_files` uses for ``count`` files."""
    return min(processes or os.cpu_count() or 1, max(1, count // 2))


def image_files(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Expand the command line's paths: a file is taken as it is (whatever its name);
    a directory is walked recursively for files with an image suffix
    (IMAGE_SUFFIXES, case-insensitive), skipping hidden files and folders, sorted."""
    out: list[str] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = []
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found.extend(os.path.join(root, f) for f in files
                             if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES)
            out.extend(sorted(found))
        else:
            out.append(str(p))
    return out


# -- helpers for the resolver and the ledger ------------------------------------------------
def hex_to_int(value: str | int | None) -> int | None:
    """A 16-hex-digit hash (or an int from the ledger's UBIGINT column) as an int."""
    if value is None:
        return None
    return int(value, 16) if isinstance(value, str) else int(value)


def int_to_hex(value: int | None) -> str | None:
    return None if value is None else f"{int(value):016x}"


def thumb_array(thumb: bytes | None) -> np.ndarray | None:
    """The thumbnail bytes of a hash record as a THUMB_SIZE x THUMB_SIZE uint8 array."""
    if thumb is None:
        return None
    return np.frombuffer(thumb, dtype=np.uint8).reshape(THUMB_SIZE, THUMB_SIZE)


def public(rec: dict) -> dict:
    """A hash record without the thumbnail bytes (for JSON output)."""
    return {k: v for k, v in rec.items() if k != "thumb"}


# -- the ledger as a cache of hash records, by content ----------------------------------------
def _sha256_only(path: str) -> tuple[str, str | None]:
    try:
        return path, sha256_file(path)[0]
    except OSError:
        return path, None


def sha256_files(paths: list[str], threads: int = 4) -> dict[str, str | None]:
    """sha256 of each file (None when unreadable), read on a few threads."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return dict(pool.map(_sha256_only, paths))


def record_from_asset(row: dict, path: str) -> dict[str, Any]:
    """A hash record rebuilt from a row of the ledger's ``assets`` table."""
    rec = _empty_record(path)
    rec.update(
        status="ok", sha256=row["sha256"], bytes=row.get("bytes"), width=row.get("width"),
        height=row.get("height"), format=row.get("format"), thumb=row.get("thumb"),
        hash_version=row.get("hash_version"),
        **{k: int_to_hex(row.get(k)) for k in ("phash", "dhash", "phash_mirror", "dhash_mirror")},
    )
    if isinstance(rec["thumb"], (bytearray, memoryview)):
        rec["thumb"] = bytes(rec["thumb"])
    return rec


def cached_assets(ledger: Any, shas: list[str]) -> dict[str, dict]:
    """The ledger's asset rows for these sha256s hashed by this version
    (:meth:`tasks.ledger.Ledger.hashed_assets`)."""
    return ledger.hashed_assets(shas, HASH_VERSION)


def store_assets(ledger: Any, records: list[dict]) -> int:
    """Put the good hash records in the ledger's ``assets`` table (replacing rows
    hashed by another version of this algorithm). Returns how many were stored."""
    good = [r for r in records if r.get("status") == "ok" and r.get("sha256")]
    if not good:
        return 0
    unique = list({r["sha256"]: r for r in good}.values())
    # an older hash version of the same content is replaced, not kept beside
    ledger.add_assets([{**r, "detail": {"message": r.get("message")} if r.get("message") else None}
                       for r in unique], replace_other_versions=HASH_VERSION)
    return len(unique)


def hash_files_cached(paths: Iterable[str | os.PathLike], ledger: Any = None, *, processes: int = 0,
                      **kw: Any) -> tuple[list[dict], dict[str, int]]:
    """:func:`hash_files`, but content the ledger already knows (same sha256, same
    hash version) is not decoded again: each file is only read for its sha256.
    ``ledger`` is a :class:`tasks.ledger.Ledger` or a path (None = no cache).

    Returns (records in input order, {"files", "from_cache", "hashed", "failed"})."""
    paths = [str(p) for p in paths]
    if ledger is None:
        recs = hash_files(paths, processes=processes, **kw)
        return recs, {"files": len(paths), "from_cache": 0, "hashed": len(paths),
                      "failed": sum(r["status"] != "ok" for r in recs)}
    own = False
    if not hasattr(ledger, "con"):
        from tasks.ledger import Ledger

        ledger, own = Ledger(ledger), True
    try:
        shas = sha256_files(paths)
        known = cached_assets(ledger, list(shas.values()))
        out: dict[str, dict] = {}
        for p in paths:
            row = known.get(shas.get(p) or "")
            if row is not None:
                out[p] = record_from_asset(row, p)
        todo = [p for p in paths if p not in out]
        fresh = hash_files(todo, processes=processes, **kw) if todo else []
        out.update({r["path"]: r for r in fresh})
        store_assets(ledger, fresh)
    finally:
        if own:
            ledger.close()
    recs = [out[p] for p in paths]
    return recs, {"files": len(paths), "from_cache": len(paths) - len(todo), "hashed": len(todo),
                  "failed": sum(r["status"] != "ok" for r in recs)}
