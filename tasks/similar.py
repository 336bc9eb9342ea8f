"""find-similar: rank a folder of pictures by how much each looks like a small reference.

Plain code (no Prefect). Story 2: a 72 x 62 pixel tile cut from a photo mosaic is
all that is left of a picture; somewhere in a folder of 20,000 downloads is the
original. Plain mean squared error was fooled; structural similarity (SSIM) found it.

How a folder is ranked:

1. **Thumbnails, once.** Every picture's 32 x 32 grayscale thumbnail (the ``thumb`` of
   :func:`tasks.hashing.hash_file`: the whole picture squashed to a square) is kept in
   a cache file keyed by sha256 (:class:`ThumbCache`; a file's sha256 is re-read only
   when its size or modification time changed).
2. **Shortlist.** The reference is made the same kind of thumbnail and compared with
   all of them at once by normalised correlation (one matrix-vector product: zero
   mean, unit norm rows), which forgives the brightness, contrast and tint a mosaic
   gives its tiles. The best ``shortlist`` go on.
3. **Score.** Each shortlisted picture is decoded (at reduced size) and resized to the
   reference's own size, both as grayscale in [0, 1], and scored with
   ``skimage.metrics.structural_similarity``; the picture is tried squashed to the
   tile and cropped to the tile's aspect (a mosaic does one or the other), with its
   mean brightness and contrast set to the reference's (a mosaic tints its tiles),
   and the better score counts. Results are ranked by that score (1 = identical).

:func:`find_similar` returns, per reference, the ranking and the margin between the
best match and the best of the rest (story 2: the true pictures scored 0.63 and 0.69,
everything else below 0.48).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image, ImageOps

from tasks.hashing import THUMB_SIZE, hash_files, image_files

CACHE_NAME = ".photo-escape-thumbs.npz"


# -- the thumbnail cache ---------------------------------------------------------------------
def default_cache_path(folder: str | os.PathLike) -> Path:
    """The cache file beside a folder: ``<parent>/.<folder name>.photo-escape-thumbs.npz``."""
    folder = Path(folder).resolve()
    return folder.parent / f".{folder.name}{CACHE_NAME}"


class ThumbCache:
    """32 x 32 thumbnails by sha256, with each path's (size, mtime_ns, sha256) so an
    unchanged file is not even read again. Stored as one ``.npz`` file."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.by_sha: dict[str, np.ndarray] = {}
        self.files: dict[str, tuple[int, int, str]] = {}
        if self.path.exists():
            try:
                self._load()
            except Exception:  # a damaged cache is rebuilt, never trusted
                self.by_sha, self.files = {}, {}

    def _load(self) -> None:
        with np.load(self.path, allow_pickle=False) as z:
            shas = [str(s) for s in z["shas"]]
            thumbs = z["thumbs"]
            self.by_sha = {s: thumbs[i] for i, s in enumerate(shas)}
            for p, size, mtime, sha in zip(z["paths"], z["sizes"], z["mtimes"], z["file_shas"]):
                self.files[str(p)] = (int(size), int(mtime), str(sha))

    def save(self) -> None:
        shas = sorted(self.by_sha)
        paths = sorted(self.files)
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(
            tmp,
            shas=np.array(shas, dtype=str),
            thumbs=np.stack([self.by_sha[s] for s in shas]) if shas else np.zeros((0, THUMB_SIZE, THUMB_SIZE), np.uint8),
            paths=np.array(paths, dtype=str),
            sizes=np.array([self.files[p][0] for p in paths], dtype=np.int64),
            mtimes=np.array([self.files[p][1] for p in paths], dtype=np.int64),
            file_shas=np.array([self.files[p][2] for p in paths], dtype=str),
        )
        os.replace(tmp, self.path)

    def known(self, path: str) -> str | None:
        """The sha256 of a file whose size and mtime are unchanged and whose
        thumbnail is cached; None if it must be (re)read."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        rec = self.files.get(path)
        if rec and rec[0] == st.st_size and rec[1] == st.st_mtime_ns and rec[2] in self.by_sha:
            return rec[2]
        return None

    def add(self, rec: dict) -> None:
        """Remember a hash record's thumbnail (good records only)."""
        if rec.get("status") != "ok" or rec.get("thumb") is None:
            return
        st = os.stat(rec["path"])
        self.by_sha[rec["sha256"]] = np.frombuffer(rec["thumb"], np.uint8).reshape(THUMB_SIZE, THUMB_SIZE)
        self.files[rec["path"]] = (st.st_size, st.st_mtime_ns, rec["sha256"])


def thumbnails(paths: list[str], cache: ThumbCache | None = None, *, processes: int = 0) -> tuple[list[str], np.ndarray, dict]:
    """Thumbnails of these pictures, from the cache where possible.

    Returns (the paths that have one, their (N, 32, 32) uint8 thumbnails, stats
    ``{files, from_cache, computed, failed, failures: {path: reason}}``)."""
    known: dict[str, str] = {}
    todo: list[str] = []
    for p in paths:
        sha = cache.known(p) if cache is not None else None
        if sha is None:
            todo.append(p)
        else:
            known[p] = sha
    fresh = {r["path"]: r for r in hash_files(todo, processes=processes)} if todo else {}
    failures = {p: r["error"] for p, r in fresh.items() if r["status"] != "ok"}
    if cache is not None:
        for r in fresh.values():
            cache.add(r)
    keep, stack = [], []
    for p in paths:
        if p in known:
            keep.append(p)
            stack.append(cache.by_sha[known[p]])
        elif p in fresh and fresh[p]["status"] == "ok":
            keep.append(p)
            stack.append(np.frombuffer(fresh[p]["thumb"], np.uint8).reshape(THUMB_SIZE, THUMB_SIZE))
    arr = np.stack(stack) if stack else np.zeros((0, THUMB_SIZE, THUMB_SIZE), np.uint8)
    stats = {"files": len(paths), "from_cache": len(known), "computed": len(todo),
             "failed": len(failures), "failures": failures}
    return keep, arr, stats


# -- comparing ------------------------------------------------------------------------------------
def _normalised_rows(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1).astype(np.float32)
    x -= x.mean(axis=1, keepdims=True)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 1e-6, n, 1.0)


def reference_thumb(img: Image.Image) -> np.ndarray:
    """A reference picture as the same kind of 32 x 32 thumbnail as the folder's."""
    gray = ImageOps.exif_transpose(img).convert("L")
    return np.asarray(gray.resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS))


def shortlist(ref_thumb: np.ndarray, thumbs: np.ndarray, k: int, *, normalised: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices and correlations of the ``k`` thumbnails that correlate best with the
    reference (normalised correlation: brightness, contrast and tint do not count)."""
    rows = normalised if normalised is not None else _normalised_rows(thumbs)
    q = _normalised_rows(ref_thumb[None])[0]
    corr = rows @ q
    k = min(k, len(corr))
    if k <= 0:
        return np.zeros(0, int), np.zeros(0, np.float32)
    idx = np.argpartition(-corr, k - 1)[:k]
    idx = idx[np.argsort(-corr[idx], kind="stable")]
    return idx, corr[idx]


def _gray01(img: Image.Image, size: tuple[int, int], crop_to_aspect: bool) -> np.ndarray:
    if crop_to_aspect:
        img = ImageOps.fit(img, size, Image.Resampling.LANCZOS)
    else:
        img = img.resize(size, Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.float64) / 255.0


def _open_small(path: str, size: tuple[int, int]) -> Image.Image:
    """A picture decoded at reduced size (JPEG draft), upright, as grayscale."""
    img = Image.open(path)
    if img.format == "JPEG":
        img.draft("L", (size[0] * 2, size[1] * 2))
    return ImageOps.exif_transpose(img).convert("L")


def _match_light(cand: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The candidate with the reference's mean brightness and contrast: a mosaic
    lightens, darkens and tints its tiles towards the colour it needs there, which
    says nothing about which picture the tile was."""
    sd = cand.std()
    if sd < 1e-6:
        return np.full_like(cand, reference.mean())
    return np.clip((cand - cand.mean()) / sd * reference.std() + reference.mean(), 0.0, 1.0)


def ssim_score(reference: np.ndarray, path: str) -> float:
    """Structural similarity of a grayscale reference (in [0, 1]) and a picture
    resized to the reference's size, its brightness and contrast matched to the
    reference's: the better of squashed and cropped-to-aspect."""
    from skimage.metrics import structural_similarity

    h, w = reference.shape
    try:
        img = _open_small(path, (w, h))
        best = -1.0
        for crop in (False, True):
            cand = _match_light(_gray01(img, (w, h), crop), reference)
            best = max(best, float(structural_similarity(reference, cand, data_range=1.0)))
        return best
    except Exception:  # noqa: BLE001 - a picture that no longer decodes just scores nothing
        return -1.0


def rank(references: list[str | os.PathLike], paths: list[str], thumbs: np.ndarray, *, top: int = 5,
         shortlist_size: int = 200) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """Rank pictures (``paths`` with their ``thumbs``) by similarity to each reference.

    Returns (rankings ``{reference: [{rank, path, score, correlation}, ...]}`` (the
    ``top`` best), margins ``{reference: {best, best_score, rest_best_score,
    margin}}``). ``margin`` is the best score minus the runner-up's (the best of the
    rest); only the shortlist is scored by SSIM, the others correlate less with the
    reference."""
    rows = _normalised_rows(thumbs) if len(thumbs) else thumbs.reshape(0, THUMB_SIZE * THUMB_SIZE).astype(np.float32)
    rankings: dict[str, list[dict]] = {}
    margins: dict[str, dict] = {}
    for ref in references:
        ref = str(ref)
        ref_img = ImageOps.exif_transpose(Image.open(ref)).convert("L")
        ref_arr = np.asarray(ref_img, dtype=np.float64) / 255.0
        idx, corr = shortlist(reference_thumb(ref_img), thumbs, shortlist_size, normalised=rows)
        scored = [(ssim_score(ref_arr, paths[i]), float(c), paths[i]) for i, c in zip(idx, corr)]
        scored.sort(key=lambda s: (-s[0], -s[1]))
        rankings[ref] = [{"rank": r + 1, "path": p, "score": round(s, 4), "correlation": round(c, 4)}
                         for r, (s, c, p) in enumerate(scored[:top])]
        rest = [s for s, _, _ in scored[1:]]
        best = scored[0] if scored else None
        margins[ref] = {
            "best": best[2] if best else None,
            "best_score": round(best[0], 4) if best else None,
            "rest_best_score": round(max(rest), 4) if rest else None,
            "margin": round(best[0] - max(rest), 4) if best and rest else None,
        }
    return rankings, margins


def find_similar(references: list[str | os.PathLike], folder_paths: list[str], *, top: int = 5,
                 shortlist_size: int = 200, cache: ThumbCache | None = None, processes: int = 0) -> dict[str, Any]:
    """Thumbnails of ``folder_paths`` (cached), then :func:`rank`.

    Returns ``{"rankings", "margins", "stats"}``: ``stats`` has the thumbnail counts
    (files, from_cache, computed, failed, failures) and the seconds each step took."""
    t0 = time.perf_counter()
    paths, thumbs, stats = thumbnails(list(folder_paths), cache, processes=processes)
    t1 = time.perf_counter()
    rankings, margins = rank(references, paths, thumbs, top=top, shortlist_size=shortlist_size)
    stats.update(seconds_thumbnails=round(t1 - t0, 3), seconds_ranking=round(time.perf_counter() - t1, 3))
    return {"rankings": rankings, "margins": margins, "stats": stats}


def folder_pictures(folders: Iterable[str | os.PathLike]) -> list[str]:
    """The image files of one or more folders (recursively), sorted."""
    return image_files(folders)
