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

import atexit
import hashlib
import os
import threading
import warnings
from concurrent.futures import ProcessPoolExecutor, TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

HASH_VERSION = "pe-hash-1 (draft>=256, lanczos, phash 32/8, dhash 9x8, thumb 32 L)"
THUMB_SIZE = 32          # side of the grayscale thumbnail kept for reranking
DECODE_MIN_SIDE = 256    # decode at reduced size, but never smaller than this
REDUCING_GAP = 3.0       # resize: box-reduce first while the picture is 3x the target
REASONS = ("empty", "truncated", "corrupt", "not_an_image", "too_large", "unreadable")

RECORD_KEYS = ("path", "status", "error", "message", "sha256", "bytes", "phash", "dhash",
               "phash_mirror", "dhash_mirror", "width", "height", "format", "thumb", "hash_version")

# magic numbers of image formats: a file starting with one of these that does not
# decode is "corrupt", anything else that does not decode is "not_an_image"
_IMAGE_MAGIC = (
    b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*",
    b"BM", b"RIFF", b"\x00\x00\x00\x0cjP  ", b"8BPS", b"II\xbc\x01", b"FUJIFILMCCD-RAW",
)


def _looks_like_image(head: bytes) -> bool:
    return any(head.startswith(m) for m in _IMAGE_MAGIC) or (head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS)


_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif")


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
    value = 0
    for b in bits.ravel():
        value = (value << 1) | int(b)
    return f"{value:016x}"


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


def _scaled_upright_gray(img: Image.Image) -> tuple[Image.Image, int]:
    """Decode ``img`` at reduced size (never below DECODE_MIN_SIDE), as luma, upright;
    also return the EXIF orientation that was applied."""
    orientation = 1
    try:
        orientation = int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # a broken EXIF block must not lose the picture
        orientation = 1
    if img.format == "JPEG":
        img.draft("L", (DECODE_MIN_SIDE, DECODE_MIN_SIDE))
    img.load()
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    w, h = img.size
    factor = min(w, h) // DECODE_MIN_SIDE
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


def _sha256_of(path: Path) -> tuple[str, int, bytes]:
    """sha256 and size of a file, streamed; also its first bytes (for the magic)."""
    h = hashlib.sha256()
    size = 0
    head = b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            if not head:
                head = chunk[:32]
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size, head


def _fail(rec: dict, code: str, message: str) -> dict:
    rec.update(status="error", error=code, message=message)
    for k in ("phash", "dhash", "phash_mirror", "dhash_mirror", "thumb"):
        rec[k] = None
    return rec


def hash_file(path: str | os.PathLike, *, max_pixels: int = 250_000_000,
              max_bytes: int = 2_000_000_000, thumb: bool = True) -> dict[str, Any]:
    """The hash record of one image file (see the module docstring). Never raises.

    The file is read once for its sha256 (streamed) and decoded once, at reduced size.
    Pixel and byte limits are checked from the header before any pixel is decoded.
    """
    path_s = str(path)
    rec = _empty_record(path_s)
    p = Path(path_s)
    try:
        if not p.is_file():
            return _fail(rec, "unreadable", f"{path_s} is not a readable file")
        size = p.stat().st_size
        rec["bytes"] = size
        if size > max_bytes:
            return _fail(rec, "too_large", f"{size} bytes is more than the limit of {max_bytes}")
        rec["sha256"], rec["bytes"], head = _sha256_of(p)
        if rec["bytes"] == 0:
            return _fail(rec, "empty", "the file has zero bytes")
    except OSError as exc:
        return _fail(rec, "unreadable", f"cannot read the file: {exc.strerror or exc}")
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        _register_heif()
    try:
        with _pixel_limit(max_pixels), Image.open(p) as img:
            rec["format"] = img.format
            w, h = img.size
            if w <= 0 or h <= 0:
                return _fail(rec, "corrupt", f"the header gives an impossible size {w}x{h}")
            if w * h > max_pixels:
                return _fail(rec, "too_large", f"{w}x{h} pixels is more than the limit of {max_pixels}")
            gray, orientation = _scaled_upright_gray(img)
            rec["width"], rec["height"] = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
            out = hashes_of_gray(gray)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return _fail(rec, "too_large", f"decompression bomb: {exc}")
    except MemoryError:
        return _fail(rec, "too_large", "not enough memory to decode this image")
    except UnidentifiedImageError:
        if _looks_like_image(head):
            return _fail(rec, "corrupt", "the file starts like an image but its header does not decode")
        return _fail(rec, "not_an_image", f"not an image (starts with {head[:12]!r})")
    except Exception as exc:  # noqa: BLE001 - every failure becomes a reason code
        text = str(exc)
        low = text.lower()
        if "truncated" in low or "end of file" in low or "outside of file" in low or isinstance(exc, EOFError):
            return _fail(rec, "truncated", f"the image data stops early: {text or type(exc).__name__}")
        return _fail(rec, "corrupt", f"the image does not decode: {type(exc).__name__}: {text}"[:300])
    rec.update(out)
    if not thumb:
        rec["thumb"] = None
    rec.update(status="ok", error=None, message=None)
    return rec


# -- many files ------------------------------------------------------------------------------
def _hash_chunk(paths: list[str], kw: dict) -> list[dict]:
    """Worker entry point: hash a few files (one IPC round trip for several)."""
    return [hash_file(p, **kw) for p in paths]


def _pool(workers: int) -> ProcessPoolExecutor:
    import multiprocessing as mp

    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method),
                               initializer=_die_with, initargs=(os.getpid(),))


def _die_with(pid: int) -> None:
    """Pool worker initializer: end this worker soon after process ``pid`` (the one that
    made the pool) is gone. A flow process killed with SIGKILL cannot shut its pool
    down, and a forkserver worker's parent is the fork server, so without this the
    idle workers would outlive the run forever."""
    import time

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:  # pragma: no cover - alive, another user's pid
                pass

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


_SHARED: dict[str, Any] = {"pool": None, "workers": 0}
POOL_START_TIMEOUT_S = 60.0
_SHARED_LOCK = threading.RLock()


def _shared_pool(workers: int, kw: dict) -> ProcessPoolExecutor | None:
    """One worker pool per process, kept between calls (a flow hashes batch after
    batch; starting workers costs about a second each time). None when no worker
    can start here (an odd ``__main__``, no /dev/shm): then hash in this process."""
    with _SHARED_LOCK:
        if _SHARED.get("unavailable"):
            return None
        pool = _SHARED["pool"]
        if pool is not None and _SHARED["workers"] == workers and not getattr(pool, "_broken", False):
            return pool
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        pool = _pool(workers)
        try:
            pool.submit(_hash_chunk, [], kw).result(timeout=POOL_START_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - remembered: later calls do not wait again
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            _SHARED.update(pool=None, workers=0, unavailable=True)
            return None
        if _SHARED["pool"] is None and not _SHARED.get("atexit"):
            atexit.register(_shutdown_shared)
            _SHARED["atexit"] = True
        _SHARED.update(pool=pool, workers=workers)
        return pool


def _shutdown_shared() -> None:
    """Stop the shared workers (at exit, or when a test wants a clean slate)."""
    with _SHARED_LOCK:
        if _SHARED["pool"] is not None:
            _SHARED["pool"].shutdown(wait=True, cancel_futures=True)
        _SHARED.update(pool=None, workers=0)


def _kill(pool: ProcessPoolExecutor) -> None:
    """Stop a pool whose worker hangs or died (terminating its processes)."""
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            proc.terminate()
        except Exception:
            pass
    pool.shutdown(wait=False, cancel_futures=True)
    with _SHARED_LOCK:
        if _SHARED["pool"] is pool:
            _SHARED.update(pool=None, workers=0)


def _crashed(path: str, why: str) -> dict:
    rec = _empty_record(path)
    try:
        rec["sha256"], rec["bytes"], _ = _sha256_of(Path(path))
    except OSError:
        pass
    return _fail(rec, "corrupt", why)


def hash_files(paths: Iterable[str | os.PathLike], *, processes: int = 0, chunk: int = 8,
               timeout_s: float = 120.0, **kw: Any) -> list[dict]:
    """Hash records of many files, in input order.

    ``processes``: 0 = one worker process per core, 1 = in this process. A worker
    that crashes (a decoder segfault, the OOM killer) or takes longer than
    ``timeout_s`` per file does not lose the batch: its files are retried one by one
    in a fresh worker, and the culprit ends as ``corrupt`` with a message saying so.
    ``kw`` goes to :func:`hash_file` (``max_pixels``, ``max_bytes``, ``thumb``).
    """
    paths = [str(p) for p in paths]
    if not paths:
        return []
    workers = processes or os.cpu_count() or 1
    workers = min(workers, max(1, len(paths) // 2))
    if workers <= 1:
        return [hash_file(p, **kw) for p in paths]
    chunks = [paths[i:i + chunk] for i in range(0, len(paths), chunk)]
    results: dict[int, list[dict]] = {}
    retry: list[int] = []
    pool = _shared_pool(workers, kw)
    if pool is None:  # no worker can start here: hash in this process
        return [hash_file(p, **kw) for p in paths]
    futures: list = []
    try:
        futures = [pool.submit(_hash_chunk, c, kw) for c in chunks]
        for i, fut in enumerate(futures):
            try:
                results[i] = fut.result(timeout=timeout_s * len(chunks[i]) + 30)
            except (BrokenProcessPool, FutureTimeout):
                # the pool is dead or stuck: stop it, redo what is left one file at a time
                for j in range(i + 1, len(chunks)):  # keep what finished before the trouble
                    f = futures[j]
                    if f.done() and not f.cancelled() and f.exception() is None:
                        results[j] = f.result()
                _kill(pool)
                retry.extend(j for j in range(i, len(chunks)) if j not in results)
                break
            except Exception:  # noqa: BLE001 - hash_file never raises; pickling might
                retry.append(i)
    finally:
        for f in futures:  # after a failure, nothing of this call stays queued
            f.cancel()
    for i in sorted(set(retry)):
        results[i] = [_isolated(p, kw, timeout_s) for p in chunks[i]]
    return [rec for i in range(len(chunks)) for rec in results[i]]


def _isolated(path: str, kw: dict, timeout_s: float) -> dict:
    """Hash one file in its own worker so a crash or hang is pinned on it alone."""
    pool = _pool(1)
    try:
        return pool.submit(_hash_chunk, [path], kw).result(timeout=timeout_s)[0]
    except FutureTimeout:
        _kill(pool)
        return _crashed(path, f"decoding took longer than {timeout_s:.0f} s")
    except Exception as exc:  # noqa: BLE001
        _kill(pool)
        return _crashed(path, f"the decoder crashed ({type(exc).__name__})")
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


IMAGE_SUFFIXES = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".tif", ".tiff", ".gif", ".bmp", ".webp",
    ".heic", ".heif", ".avif", ".jp2", ".j2k", ".ppm", ".pgm", ".pbm", ".psd",
})


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
        return path, _sha256_of(Path(path))[0]
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
