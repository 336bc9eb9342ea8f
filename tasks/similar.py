"""find-similar: rank a folder of pictures by how much each looks like a small reference.

Plain code (no Prefect). Story 2: a 72 x 62 pixel tile cut from a photo mosaic is
all that is left of a picture; somewhere in a folder of 20,000 downloads is the
original. Plain mean squared error was fooled; structural similarity (SSIM) found it.

How a folder is ranked:

1. **Thumbnails, once.** Every picture is decoded once, at 1/8 of its size where it
   is a JPEG (libjpeg scales in the DCT domain and decodes only the luma channel),
   turned upright, and reduced to two grayscale thumbnails: 32 x 32 (box filter) for
   the shortlist and :data:`DETAIL` (72 x 64, Lanczos) for the scoring, both the whole
   picture squashed.
   They are kept in a cache file keyed by sha256 (:class:`ThumbCache`; a file's
   sha256 is re-read only when its size or modification time changed). The decoding
   runs on a pool of worker processes (:func:`tasks.isolation.isolated_map`), so a
   file that crashes or hangs the decoder costs only itself.
2. **Shortlist, all references at once.** Each reference is made the same kind of
   32 x 32 thumbnail; all of them are compared with every picture by normalised
   correlation (zero mean, unit norm rows: one matrix product for all references),
   which forgives the brightness, contrast and tint a mosaic gives its tiles. The
   best ``shortlist`` pictures of each reference go on.
3. **Score, in one vectorised SSIM.** Each shortlisted picture's detail thumbnail is
   resized to the reference's size (squashed, and cropped to the tile's aspect: a
   mosaic does one or the other), given the reference's mean brightness and contrast
   (a mosaic tints its tiles), and scored by :func:`ssim_batch`, the formula of
   ``skimage.metrics.structural_similarity`` (7 x 7 uniform window, K1 = 0.01,
   K2 = 0.03, the data range, sample covariance, the mean over the pixels whose
   window lies inside the picture) computed for all pairs at once. The better of the
   two crops counts; pictures are ranked by that score (1 = identical).

:func:`find_similar` returns, per reference, the ranking and the margin between the
best match and the best of the rest (story 2: the true pictures scored 0.63 and 0.69,
everything else below 0.48).
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from PIL import Image, ImageOps

from tasks.hashing import THUMB_SIZE, _scaled_upright_gray, decode_checked, image_files
from tasks.files import sha256_file

CACHE_NAME = ".photo-escape-thumbs.npz"
DETAIL = (72, 64)  # (width, height) of the thumbnail kept for scoring: a story tile (72 x 62) and a bit
SIMILAR_VERSION = "pe-similar-2 (draft L >= 72x64; thumb 32 box, detail 72x64 lanczos)"
WIN = 7            # skimage's structural_similarity: 7 x 7 uniform window ...
K1, K2 = 0.01, 0.03  # ... and its constants
SSIM_CHUNK = 64    # pairs scored at once (their arrays stay in the processor's cache)
FLAT = 1e-6        # a picture whose standard deviation is below this is flat

Progress = Callable[[int], None]  # told how many more pictures are done


# -- one picture: its two thumbnails ----------------------------------------------------------
def _empty_record(path: str) -> dict[str, Any]:
    return {"path": path, "status": "error", "error": None, "message": None, "sha256": None, "bytes": None,
            "format": None, "width": None, "height": None, "thumb": None, "detail": None,
            "version": SIMILAR_VERSION}


def _thumbnails_of(img: Image.Image) -> dict[str, Any]:
    gray, orientation = _scaled_upright_gray(img, DETAIL)
    w, h = img.size
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    thumb = gray.resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BOX)  # for the shortlist, a box will do
    detail = gray.resize(DETAIL, Image.Resampling.LANCZOS)
    return {"width": w, "height": h, "thumb": thumb.tobytes(), "detail": detail.tobytes()}


def picture_record(path: str | os.PathLike, *, max_pixels: int = 250_000_000,
                   max_bytes: int = 2_000_000_000) -> dict[str, Any]:
    """One picture's thumbnails: ``{path, status, error, message, sha256, bytes, format,
    width, height, thumb (32 x 32 bytes), detail (DETAIL bytes), version}``, with the
    reason codes of :func:`tasks.hashing.hash_file` for a file that is not a readable
    image. Never raises."""
    return decode_checked(path, _thumbnails_of, _empty_record(str(path)), max_pixels=max_pixels, max_bytes=max_bytes)


def _lost(path: str, why: str, detail: str, *, timeout_s: float) -> dict:
    rec = _empty_record(path)
    try:
        rec["sha256"], rec["bytes"] = sha256_file(path)
    except OSError:
        pass
    message = {"timeout": f"decoding took longer than {timeout_s:.0f} s",
               "crashed": f"the decoder crashed ({detail or 'its process ended'})"}.get(why, f"the decoder raised {detail}")
    rec.update(error="corrupt", message=message)
    return rec


def picture_records(paths: Iterable[str | os.PathLike], *, processes: int = 0, chunk: int = 32,
                    timeout_s: float = 120.0, progress: Progress | None = None, **kw: Any) -> list[dict]:
    """:func:`picture_record` of many files, in input order: on ``processes`` worker
    processes (0 = one per core; 1 = in this process), a file that crashes or hangs
    its decoder ending alone as ``corrupt``. ``progress(n)`` is told as files are done."""
    paths = [str(p) for p in paths]
    if processes == 1 or len(paths) < 4:
        out = []
        for i, p in enumerate(paths):
            out.append(picture_record(p, **kw))
            if progress is not None and (i % chunk == chunk - 1 or i == len(paths) - 1):
                progress(i % chunk + 1)
        return out
    from tasks.isolation import isolated_map

    workers = min(processes or os.cpu_count() or 1, max(1, len(paths) // 2))
    return isolated_map(picture_record, paths, lost=functools.partial(_lost, timeout_s=timeout_s), timeout=timeout_s,
                        workers=workers, chunk=chunk, kw=kw, progress=progress)


# -- the thumbnail cache ---------------------------------------------------------------------
def default_cache_path(folder: str | os.PathLike) -> Path:
    """The cache file beside a folder: ``<parent>/.<folder name>.photo-escape-thumbs.npz``."""
    folder = Path(folder).resolve()
    return folder.parent / f".{folder.name}{CACHE_NAME}"


class ThumbCache:
    """Both thumbnails and the upright size of each picture, by sha256, with each path's
    (size, mtime_ns, sha256) so an unchanged file is not even read again. Stored as one
    ``.npz`` file; a cache of another version (or damaged) is started afresh."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._empty()
        if self.path.exists():
            try:
                self._load()
            except Exception:  # a damaged cache is rebuilt, never trusted
                self._empty()

    def _empty(self) -> None:
        self.rows: dict[str, int] = {}  # sha256 -> row of the arrays
        self.files: dict[str, tuple[int, int, str]] = {}
        self._thumbs = np.zeros((0, THUMB_SIZE, THUMB_SIZE), np.uint8)
        self._details = np.zeros((0, DETAIL[1], DETAIL[0]), np.uint8)
        self._dims = np.zeros((0, 2), np.int32)
        self._new: list[tuple[bytes, bytes, int, int]] = []
        self.changed = False

    def _load(self) -> None:
        with np.load(self.path, allow_pickle=False) as z:
            if "version" not in z.files or str(z["version"]) != SIMILAR_VERSION:
                return  # another version's thumbnails: made again
            shas = [str(s) for s in z["shas"]]
            thumbs, details, dims = z["thumbs"], z["details"], z["dims"]
            if not (len(shas) == len(thumbs) == len(details) == len(dims)):
                raise ValueError("inconsistent cache")
            rows = dict(zip(shas, range(len(shas))))
            files = {str(p): (int(size), int(mtime), shas[i])
                     for p, size, mtime, i in zip(z["paths"], z["sizes"], z["mtimes"], z["file_rows"])}
        self.rows, self.files = rows, files
        self._thumbs, self._details, self._dims = thumbs, details, dims

    def __len__(self) -> int:
        return len(self.rows)

    def _settle(self) -> None:
        if self._new:
            thumbs, details, w, h = zip(*self._new)
            n = len(self._new)
            self._thumbs = np.concatenate([self._thumbs, np.frombuffer(b"".join(thumbs), np.uint8)
                                           .reshape(n, THUMB_SIZE, THUMB_SIZE)])
            self._details = np.concatenate([self._details, np.frombuffer(b"".join(details), np.uint8)
                                            .reshape(n, DETAIL[1], DETAIL[0])])
            self._dims = np.concatenate([self._dims, np.array(list(zip(w, h)), np.int32).reshape(n, 2)])
            self._new = []

    @property
    def thumbs(self) -> np.ndarray:
        """(rows, 32, 32) uint8."""
        self._settle()
        return self._thumbs

    @property
    def details(self) -> np.ndarray:
        """(rows, DETAIL height, DETAIL width) uint8."""
        self._settle()
        return self._details

    @property
    def dims(self) -> np.ndarray:
        """(rows, 2) upright width and height of each picture."""
        self._settle()
        return self._dims

    def save(self) -> None:
        """Write the cache (atomically: a temporary file, then renamed over the old one)."""
        self._settle()
        shas = sorted(self.rows, key=self.rows.get)
        paths = sorted(self.files)
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp.npz")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            tmp,
            version=np.array(SIMILAR_VERSION),
            shas=np.array(shas, dtype=str),
            thumbs=self._thumbs, details=self._details, dims=self._dims,
            paths=np.array(paths, dtype=str),
            sizes=np.array([self.files[p][0] for p in paths], dtype=np.int64),
            mtimes=np.array([self.files[p][1] for p in paths], dtype=np.int64),
            file_rows=np.array([self.rows[self.files[p][2]] for p in paths], dtype=np.int64),
        )
        os.replace(tmp, self.path)
        self.changed = False

    def known(self, path: str) -> str | None:
        """The sha256 of a file whose size and mtime are unchanged and whose
        thumbnails are cached; None if it must be (re)read."""
        rec = self.files.get(path)
        if rec is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        if rec[0] == st.st_size and rec[1] == st.st_mtime_ns and rec[2] in self.rows:
            return rec[2]
        return None

    def row(self, path: str) -> int | None:
        """The row of a known file's thumbnails, else None."""
        sha = self.known(path)
        return None if sha is None else self.rows[sha]

    def add(self, rec: dict) -> None:
        """Remember a record's thumbnails (good records of :func:`picture_record` only)."""
        if rec.get("status") != "ok" or rec.get("detail") is None or rec.get("version") != SIMILAR_VERSION:
            return
        try:
            st = os.stat(rec["path"])
        except OSError:
            return
        if rec["sha256"] not in self.rows:
            self.rows[rec["sha256"]] = len(self._thumbs) + len(self._new)
            self._new.append((rec["thumb"], rec["detail"], rec["width"], rec["height"]))
        self.files[rec["path"]] = (st.st_size, st.st_mtime_ns, rec["sha256"])
        self.changed = True


class Gallery:
    """The pictures that have thumbnails: ``paths`` and, row for row, ``thumbs``
    (N, 32, 32) uint8, ``dims`` (N, 2) upright sizes, and their detail thumbnails
    (:meth:`details_of`; kept where they are, in the cache, until a few are wanted)."""

    def __init__(self, paths: list[str], thumbs: np.ndarray, details: np.ndarray, dims: np.ndarray,
                 rows: np.ndarray | None = None) -> None:
        self.paths, self.thumbs, self.dims = paths, thumbs, dims
        self._details, self._rows = details, rows

    def __len__(self) -> int:
        return len(self.paths)

    def details_of(self, idx: np.ndarray) -> np.ndarray:
        """The detail thumbnails (n, DETAIL h, w) uint8 of the pictures ``idx``."""
        return self._details[idx if self._rows is None else self._rows[idx]]

    @classmethod
    def from_records(cls, recs: list[dict]) -> "Gallery":
        good = [r for r in recs if r.get("status") == "ok" and r.get("detail") is not None]
        n = len(good)
        return cls([r["path"] for r in good],
                   np.frombuffer(b"".join(r["thumb"] for r in good), np.uint8).reshape(n, THUMB_SIZE, THUMB_SIZE),
                   np.frombuffer(b"".join(r["detail"] for r in good), np.uint8).reshape(n, DETAIL[1], DETAIL[0]),
                   np.array([(r["width"], r["height"]) for r in good], np.int32).reshape(n, 2))

    @classmethod
    def from_cache(cls, paths: list[str], cache: ThumbCache) -> "Gallery":
        """The pictures of ``paths`` the cache knows (unchanged files), in that order."""
        keep, rows = [], []
        for p in paths:
            r = cache.row(p)
            if r is not None:
                keep.append(p)
                rows.append(r)
        idx = np.array(rows, dtype=np.int64)
        return cls(keep, cache.thumbs[idx], cache.details, cache.dims[idx], rows=idx)


def thumbnails(paths: list[str], cache: ThumbCache | None = None, *, processes: int = 0,
               progress: Progress | None = None) -> tuple[Gallery, dict]:
    """Thumbnails of these pictures, from the cache where possible (new ones are added
    to it). Returns (the :class:`Gallery` of those that have them, in input order; stats
    ``{files, from_cache, computed, failed, failures: {path: reason}}``)."""
    todo = [p for p in paths if cache is None or cache.known(p) is None]
    if progress is not None and len(paths) > len(todo):
        progress(len(paths) - len(todo))
    fresh = picture_records(todo, processes=processes, progress=progress) if todo else []
    failures = {r["path"]: r["error"] for r in fresh if r["status"] != "ok"}
    if cache is not None:
        for r in fresh:
            cache.add(r)
        gallery = Gallery.from_cache(paths, cache)
    else:
        gallery = Gallery.from_records(fresh)
    stats = {"files": len(paths), "from_cache": len(paths) - len(todo), "computed": len(todo),
             "failed": len(failures), "failures": failures}
    return gallery, stats


# -- SSIM, the formula of skimage.metrics.structural_similarity, for many pairs at once ------------
def _run(f: np.ndarray, step: int, k: int = WIN) -> np.ndarray:
    """``r[i] = f[i] + f[i + step] + ... + f[i + (k - 1) step]`` of a flat array (for
    k = 7 by doubling: 4 additions of whole arrays, each one long contiguous loop)."""
    n = len(f)
    if k != 7:
        return sum(f[j * step:n - (k - 1 - j) * step] for j in range(k))
    s2 = f[:n - step] + f[step:]
    s4 = s2[:n - 3 * step] + s2[2 * step:n - step]
    return s4[:n - 6 * step] + s2[4 * step:n - 2 * step] + f[6 * step:]


def _box_mean(a: np.ndarray, k: int = WIN) -> np.ndarray:
    """The mean of every k x k window lying wholly inside each (h, w) picture of
    ``a`` (n, h, w): (n, h - k + 1, w - k + 1), in ``a``'s float type. Windows that
    reach the border are not needed: skimage averages the SSIM map without them. The
    sums run over the flat array (along rows, then k rows down); sums that wrap past
    a row or a picture are computed and left out."""
    from numpy.lib.stride_tricks import as_strided

    a = np.ascontiguousarray(a)
    n, h, w = a.shape
    sums = _run(_run(a.reshape(-1), 1, k), w, k)
    size = sums.itemsize
    view = as_strided(sums, shape=(n, h - k + 1, w - k + 1), strides=(h * w * size, w * size, size), writeable=False)
    return view * a.dtype.type(1.0 / (k * k))


def _ssim_with(ux: np.ndarray, vx: np.ndarray, x: np.ndarray, y: np.ndarray, data_range: float) -> np.ndarray:
    """SSIM of pairs (n, h, w) given the first pictures' window means ``ux`` and
    variances ``vx`` (sample covariance), as skimage computes it."""
    n = WIN * WIN
    cov_norm = n / (n - 1.0)
    uy = _box_mean(y)
    vy = cov_norm * (_box_mean(y * y) - uy * uy)
    vxy = cov_norm * (_box_mean(x * y) - ux * uy)
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(axis=(-2, -1))


def _window_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ux = _box_mean(x)
    return ux, (WIN * WIN / (WIN * WIN - 1.0)) * (_box_mean(x * x) - ux * ux)


def ssim_batch(x: np.ndarray, y: np.ndarray, *, data_range: float = 1.0) -> np.ndarray:
    """The mean structural similarity of each pair ``x[i]``, ``y[i]`` of grayscale
    pictures ((n, h, w) or (h, w) arrays, float): the value
    ``skimage.metrics.structural_similarity(x[i], y[i], data_range=data_range)``
    gives with its defaults (a 7 x 7 uniform window, K1 = 0.01, K2 = 0.03, sample
    covariance, the mean of the SSIM map without the 3 pixels next to each border),
    computed for all pairs together. ``x`` may also be one picture for every ``y``."""
    y = np.asarray(y, dtype=np.float64)
    single = y.ndim == 2
    y = y.reshape((-1,) + y.shape[-2:])
    if y.shape[-2] < WIN or y.shape[-1] < WIN:
        raise ValueError(f"pictures must be at least {WIN} x {WIN} pixels")
    x = np.ascontiguousarray(np.broadcast_to(np.asarray(x, dtype=np.float64), y.shape))
    ux, vx = _window_stats(x)
    out = _ssim_with(ux, vx, x, y, data_range)
    return out[0] if single else out


def match_light(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Each picture of ``y`` (n, h, w) with the mean brightness and contrast (standard
    deviation) of its ``x`` (n, h, w): a mosaic lightens, darkens and tints its tiles
    towards the colour it needs there, which says nothing about which picture the
    tile was. A flat picture becomes the reference's mean. (An affine change of each
    picture, so :func:`scores` can apply it to the window statistics instead.)"""
    my, sy = y.mean(axis=(-2, -1), keepdims=True), y.std(axis=(-2, -1), keepdims=True)
    mx, sx = x.mean(axis=(-2, -1), keepdims=True), x.std(axis=(-2, -1), keepdims=True)
    flat = sy < FLAT
    return np.where(flat, mx, (y - my) / np.where(flat, 1.0, sy) * sx + mx)


# -- references and candidates at the reference's size ---------------------------------------------
class Reference:
    """A reference picture, upright, as grayscale in [0, 1] (``pixels``, at most the
    size of a detail thumbnail: a larger reference is reduced to fit) and as a
    normalised 32 x 32 thumbnail row (``row``)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        with Image.open(self.path) as im:
            gray = ImageOps.exif_transpose(im).convert("L")
        self.row = _normalised_rows(np.asarray(gray.resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BOX))[None])[0]
        w, h = gray.size
        scale = min(1.0, DETAIL[0] / w, DETAIL[1] / h)
        if scale < 1.0:
            gray = gray.resize((max(WIN, round(w * scale)), max(WIN, round(h * scale))), Image.Resampling.LANCZOS)
        if min(gray.size) < WIN:
            gray = gray.resize((max(WIN, gray.size[0]), max(WIN, gray.size[1])), Image.Resampling.LANCZOS)
        self.size = gray.size  # (w, h) at which it is scored
        self.pixels = np.asarray(gray, dtype=np.float64) / 255.0


def _crop_box(dims: tuple[int, int], size: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """The box of a detail thumbnail that shows the middle of the picture cut to the
    aspect of ``size`` (as ``ImageOps.fit`` cuts it), or None when that is (within 1%)
    the whole picture: then the squashed and the cropped picture are the same."""
    w0, h0 = int(dims[0]), int(dims[1])
    if w0 <= 0 or h0 <= 0:
        return None
    want = size[0] / size[1]
    have = w0 / h0
    if abs(have / want - 1.0) < 0.01:
        return None
    dw, dh = DETAIL
    if have > want:  # wider: cut the sides
        keep = want / have * dw
        return ((dw - keep) / 2, 0.0, (dw + keep) / 2, float(dh))
    keep = have / want * dh
    return (0.0, (dh - keep) / 2, float(dw), (dh + keep) / 2)


@functools.lru_cache(maxsize=256)
def _lanczos(n_in: int, n_out: int, lo: float, hi: float) -> np.ndarray:
    """The (n_out, n_in) matrix that resamples ``[lo, hi)`` of a line of ``n_in``
    pixels to ``n_out`` with Pillow's Lanczos filter (a = 3, widened by the reduction,
    weights normalised, as ``Image.resize`` computes them), float32."""
    scale = (hi - lo) / n_out
    widen = max(scale, 1.0)
    support = 3.0 * widen
    m = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        centre = lo + (i + 0.5) * scale
        first, last = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
        x = (np.arange(first, last) - centre + 0.5) / widen
        w = np.where(np.abs(x) < 3.0, np.sinc(x) * np.sinc(x / 3.0), 0.0)
        m[i, first:last] = w / w.sum() if w.sum() else 0.0
    return m.astype(np.float32)


def _resampled(details: np.ndarray, box: tuple[float, float, float, float] | None,
               size: tuple[int, int]) -> np.ndarray:
    """Detail thumbnails (n, DETAIL h, w) uint8, their ``box`` (all of them if None)
    resampled to ``size`` (w, h) with Lanczos: (n, h, w) float32 in [0, 1]."""
    dw, dh = DETAIL
    x0, y0, x1, y1 = box or (0.0, 0.0, float(dw), float(dh))
    out = details.astype(np.float32) * np.float32(1 / 255.0)
    if (y0, y1, size[1]) != (0.0, float(dh), dh):
        out = np.matmul(_lanczos(dh, size[1], y0, y1), out)
    if (x0, x1, size[0]) != (0.0, float(dw), dw):
        out = np.matmul(out, _lanczos(dw, size[0], x0, x1).T)
    return np.ascontiguousarray(out)


def views_of(details: np.ndarray, dims: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The pictures at ``size`` (w, h) as grayscale in [0, 1] (float32), each squashed
    and, where that is another picture, cut to the aspect of ``size``: (views (m, h, w),
    which picture each view shows (m,)), a picture's views next to each other."""
    n = len(details)
    boxes = [_crop_box(d, size) for d in dims]
    squashed = _resampled(details, None, size)
    cut: dict[int, np.ndarray] = {}
    groups: dict[tuple, list[int]] = {}
    for i, b in enumerate(boxes):
        if b is not None:
            groups.setdefault(b, []).append(i)
    for b, members in groups.items():  # pictures of one shape share their box
        for i, v in zip(members, _resampled(details[members], b, size)):
            cut[i] = v
    if not cut:
        return squashed, np.arange(n)
    views, owner = [], []
    for i in range(n):
        views.append(squashed[i])
        owner.append(i)
        if i in cut:
            views.append(cut[i])
            owner.append(i)
    return np.stack(views), np.array(owner, np.int64)


def _views(detail: np.ndarray, dims: np.ndarray, size: tuple[int, int]) -> list[np.ndarray]:
    """One picture's views (:func:`views_of`)."""
    views, _ = views_of(detail[None], np.asarray(dims)[None], size)
    return list(views)


def _normalised_rows(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1).astype(np.float32)
    x -= x.mean(axis=1, keepdims=True)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 1e-6, n, 1.0)


def shortlists(refs: list[Reference], thumbs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For each reference, the indices (R, k) and correlations of the ``k`` thumbnails
    that correlate best with it (normalised correlation: brightness, contrast and tint
    do not count), best first: one matrix product for all references.

    A reference row is centred (it sums to 0), so a thumbnail's own mean drops out of
    the product; only its norm about its mean is divided out."""
    n = len(thumbs)
    k = min(k, n)
    if k <= 0 or not refs:
        return np.zeros((len(refs), 0), np.int64), np.zeros((len(refs), 0), np.float32)
    t = thumbs.reshape(n, -1).astype(np.float32)
    sums = t.sum(axis=1, dtype=np.float64)
    spread = np.einsum("ij,ij->i", t, t, dtype=np.float64) - sums * sums / t.shape[1]
    norms = np.sqrt(np.maximum(spread, 0.0)).astype(np.float32)
    corr = (np.stack([r.row for r in refs]) @ t.T) / np.where(norms > 1e-6, norms, np.float32(1.0))  # (R, N)
    idx = np.argpartition(-corr, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(refs), 1))
    part = np.take_along_axis(corr, idx, axis=1)
    order = np.argsort(-part, axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(part, order, axis=1)


def _view_stats(views: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per view (n, h, w) float32: the view less its mean (``centred``; differences
    keep float32's precision where sums of squares would lose it), its standard
    deviation, its window means (less the mean) and window variances (sample
    covariance), computed in chunks."""
    n = len(views)
    centred = np.empty_like(views)
    sy = np.empty(n, np.float32)
    shape = (n, views.shape[1] - WIN + 1, views.shape[2] - WIN + 1)
    d, vy = np.empty(shape, np.float32), np.empty(shape, np.float32)
    cov_norm = np.float32(WIN * WIN / (WIN * WIN - 1.0))
    step = SSIM_CHUNK
    for a in range(0, n, step):
        y = views[a:a + step] - views[a:a + step].mean(axis=(1, 2), keepdims=True)
        centred[a:a + step] = y
        yy = y * y
        sy[a:a + step] = np.sqrt(yy.mean(axis=(1, 2)))
        uy = _box_mean(y)
        vy[a:a + step] = cov_norm * (_box_mean(yy) - uy * uy)
        d[a:a + step] = uy
    return centred, sy, d, vy


def _ssim_light_matched(x: np.ndarray, stats: tuple[np.ndarray, ...], which: np.ndarray) -> np.ndarray:
    """SSIM (data range 1) of the reference ``x`` (h, w) with each view ``which`` (of
    :func:`_view_stats`) given the reference's mean and standard deviation
    (:func:`match_light`), in float32: the change of light is applied to the views'
    window statistics, so per pair only the cross term is computed."""
    centred, sy, d, vy = stats
    cov_norm = np.float32(WIN * WIN / (WIN * WIN - 1.0))
    c1, c2 = np.float32(K1 ** 2), np.float32(K2 ** 2)
    mx = float(x.mean())
    xc = (x - mx).astype(np.float32)
    mx = np.float32(mx)
    sx = np.float32(np.sqrt((xc * xc).mean()))
    uxc = _box_mean(xc[None])[0]
    vx = cov_norm * (_box_mean((xc * xc)[None])[0] - uxc * uxc)
    ux = uxc + mx
    lum_den = ux * ux + c1
    cs_den = vx + c2
    two_ux = 2 * ux
    out = np.empty(len(which))
    for a in range(0, len(which), SSIM_CHUNK):
        j = which[a:a + SSIM_CHUNK]
        s = sy[j]
        alpha = np.where(s < FLAT, np.float32(0), sx / np.where(s < FLAT, np.float32(1), s))[:, None, None]
        dj = d[j]
        vxy = cov_norm * (_box_mean(xc * centred[j]) - uxc * dj)  # covariance of x and y in each window
        uy = alpha * dj + mx  # the light-matched view's window means; its variances and covariance scale
        lum = (two_ux * uy + c1) / (lum_den + uy * uy)
        cs = (2 * alpha * vxy + c2) / (cs_den + alpha * alpha * vy[j])
        out[a:a + len(j)] = (lum * cs).mean(axis=(1, 2), dtype=np.float64)
    return out


def scores(refs: list[Reference], gallery: Gallery, idx: np.ndarray, *, exact: int = 0) -> np.ndarray:
    """SSIM of each reference ``r`` with each of its pictures ``idx[r]``: (R, k). Each
    picture counts by the better of its squashed and its cut view, light matched
    (:func:`match_light`). All pairs are scored together in float32, the light
    matching applied to the window statistics; the ``exact`` best of each reference
    are then scored again by :func:`ssim_batch` (float64, skimage's values)."""
    out = np.full(idx.shape, -1.0)
    by_size: dict[tuple[int, int], list[int]] = {}
    for r, ref in enumerate(refs):
        by_size.setdefault(ref.size, []).append(r)
    for size, members in by_size.items():
        wanted = np.zeros(len(gallery), bool)
        wanted[idx[members].ravel()] = True
        pictures = np.flatnonzero(wanted)  # each shortlisted picture once, in order
        if not len(pictures):
            continue
        stack, owner = views_of(gallery.details_of(pictures), gallery.dims[pictures], size)
        stats = _view_stats(stack)
        where = np.searchsorted(pictures, idx)  # shortlist slot -> position in ``pictures``
        starts = np.searchsorted(owner, np.arange(len(pictures)))
        counts = np.bincount(owner, minlength=len(pictures))
        for r in members:
            first, many = starts[where[r]], counts[where[r]]
            which = np.concatenate([first + j for j in range(int(many.max()))])
            slot = np.concatenate([np.arange(len(first))] * int(many.max()))
            keep = np.concatenate([many > j for j in range(int(many.max()))])
            which, slot = which[keep], slot[keep]
            vals = _ssim_light_matched(refs[r].pixels, stats, which)
            np.maximum.at(out[r], slot, vals)
            if exact > 0:
                x = refs[r].pixels
                for s in np.argsort(-out[r], kind="stable")[:exact]:
                    y = stack[first[s]:first[s] + many[s]].astype(np.float64)
                    xs = np.broadcast_to(x, y.shape)
                    out[r, s] = float(ssim_batch(xs, match_light(y, xs)).max())
    return out


def rank(references: list[str | os.PathLike], gallery: Gallery, *, top: int = 5,
         shortlist_size: int = 200) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """Rank the pictures of ``gallery`` by similarity to each reference, all references
    together.

    Returns (rankings ``{reference: [{rank, path, score, correlation}, ...]}`` (the
    ``top`` best), margins ``{reference: {best, best_score, rest_best_score,
    margin}}``). ``margin`` is the best score minus the runner-up's (the best of the
    rest); only the shortlist is scored by SSIM, the others correlate less with the
    reference. A reference that cannot be read raises (``OSError`` and the like)."""
    refs = [Reference(r) for r in references]
    idx, corr = shortlists(refs, gallery.thumbs, shortlist_size)
    sc = scores(refs, gallery, idx, exact=max(top, 2)) if idx.size else np.zeros(idx.shape)
    rankings: dict[str, list[dict]] = {}
    margins: dict[str, dict] = {}
    for r, ref in enumerate(refs):
        order = np.lexsort((-corr[r], -sc[r]))  # by score, then correlation
        ranked = [(float(sc[r, j]), float(corr[r, j]), gallery.paths[int(idx[r, j])]) for j in order]
        rankings[ref.path] = [{"rank": n + 1, "path": p, "score": round(s, 4), "correlation": round(c, 4)}
                              for n, (s, c, p) in enumerate(ranked[:top])]
        best = ranked[0] if ranked else None
        rest = ranked[1][0] if len(ranked) > 1 else None
        margins[ref.path] = {
            "best": best[2] if best else None,
            "best_score": round(best[0], 4) if best else None,
            "rest_best_score": round(rest, 4) if rest is not None else None,
            "margin": round(best[0] - rest, 4) if best and rest is not None else None,
        }
    return rankings, margins


def find_similar(references: list[str | os.PathLike], folder_paths: list[str], *, top: int = 5,
                 shortlist_size: int = 200, cache: ThumbCache | None = None, processes: int = 0,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Thumbnails of ``folder_paths`` (cached), then :func:`rank`.

    Returns ``{"rankings", "margins", "stats"}``: ``stats`` has the thumbnail counts
    (files, from_cache, computed, failed, failures) and the seconds each step took.
    ``progress(n)`` is told as pictures get their thumbnails."""
    t0 = time.perf_counter()
    gallery, stats = thumbnails(list(folder_paths), cache, processes=processes, progress=progress)
    t1 = time.perf_counter()
    rankings, margins = rank(references, gallery, top=top, shortlist_size=shortlist_size)
    stats.update(seconds_thumbnails=round(t1 - t0, 3), seconds_ranking=round(time.perf_counter() - t1, 3))
    return {"rankings": rankings, "margins": margins, "stats": stats}


def folder_pictures(folders: Iterable[str | os.PathLike]) -> list[str]:
    """The image files of one or more folders (recursively), sorted."""
    return image_files(folders)
