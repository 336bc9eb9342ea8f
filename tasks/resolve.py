"""The album resolver: which album image is the same picture as a query, or none.

Plain code (no Prefect). Public API (stable; the Flickr helper and the flows call it):

    resolve(query: dict, candidates: list[dict], **params) -> dict
        query and candidates are hash records as :func:`tasks.hashing.hash_file`
        returns them (or rows of the ledger's ``assets`` table); each candidate also
        carries an ``id`` key (any string: a path, a Digital ID, a URL). Returns

            {"verdict": "match" | "ambiguous" | "not_in_album",
             "best": id of the chosen candidate or None,
             "distance": best hash distance (out of 128, see ``distance``) or None,
             "runner_up_distance": the second best's, or None,
             "candidates": [{"id", "distance", "rank"}, ...]   every candidate, nearest first,
             "rerank": None, or when the hash distances alone did not decide:
                 {"method": "aligned-correlation", "winner", "score", "runner_up",
                  "runner_up_score", "margin", "detail",
                  "scores": [{"id", "score", "distance"}, ...]}}   (score: 1 = same picture)

        ``best`` is set for ``match`` and for ``ambiguous`` (the rerank's favourite,
        for a person to confirm); it is None for ``not_in_album``.

    resolve_many(queries, candidates, **params) -> list[dict]
        the same for several queries against one album (the album is packed once).

    distance(a: dict, b: dict) -> int
        how different two pictures are, **out of 128**: the Hamming distance of the
        64-bit phash plus that of the 64-bit dhash, taking the smaller of the plain
        and the left-right mirrored comparison. 0 = same picture; the same picture
        resized, recompressed, tinted or darkened stays within about 20; unrelated
        photographs are usually 40 or more (about 64 on average). Divide by 2 for the
        "out of 64" scale of a single hash.

How a verdict is reached (thresholds measured by ``bench/matching.py``, figures in
``bench/RESULTS.md``; pass them as keyword parameters to change them):

1. Hash distances to every candidate at once: the 64-bit hashes are numpy ``uint64``
   arrays and the distance is ``np.bitwise_count(q ^ album)``, for the plain and the
   mirrored query.
2. ``match`` straight away when the best is within ``sure`` (SURE_DISTANCE) and the
   runner-up is at least ``gap`` (GAP) further: resize, recompression, tints,
   darkening and gamma land here.
3. Otherwise the ``rerank_top`` nearest candidates by hash, plus the ``thumb_top``
   whose thumbnails (whole or centre) correlate best with the query's, are reranked by
   *aligned correlation* of the 32x32 thumbnails: the mean of the normalised
   correlation of luma and of gradients, maximised over crops of either picture by
   up to 12-16% per side (border crops, zoom) and over the mirror image. Tints,
   sepia, darkening and gamma barely move a normalised correlation; crops and zoom
   are undone by the alignment search; gradients keep two different pictures with
   the same broad light and shade apart.
   ``match`` when the winner scores at least ``accept`` (ACCEPT; plus ``slope``
   for each bit of its hash distance beyond ``slope_from``: 0.85 at 20, 0.916 at 64;
   plus ``blur_extra`` when either thumbnail has little ``detail``)
   and leads the runner-up by ``margin`` (MARGIN), or the hashes also put it first
   by ``gap``;
   ``not_in_album`` when the winner scores below ``reject`` (REJECT);
   ``ambiguous`` otherwise (two candidates too close to call, or a score in the
   grey zone between REJECT and ACCEPT): ``best`` is then the rerank's favourite,
   for a person to confirm.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable

import numpy as np

from tasks.hashing import THUMB_SIZE, hex_to_int

# Thresholds: see bench/matching.py and bench/RESULTS.md (section "matching").
SURE_DISTANCE = 10    # out of 128: within this and a clear gap, the hashes decide alone
GAP = 12              # ... the runner-up being at least this much further
FAR_DISTANCE = 52     # with no thumbnails to compare, beyond this is not in the album
ACCEPT = 0.85         # aligned correlation at or above which the rerank winner is a match,
SLOPE = 0.0015        # ... plus this for each bit its hash distance is beyond SLOPE_FROM
SLOPE_FROM = 20
BLUR_BELOW = 0.25     # a thumbnail with less detail than this (see ``detail``) ...
BLUR_EXTRA = 0.07     # ... makes a match need this much more score
REJECT = 0.70         # a winner scoring below this is not in the album
MARGIN = 0.05         # the winner must lead the runner-up by this much (unless the hashes agree)
RERANK_TOP = 5        # how many nearest candidates by hash are reranked ...
THUMB_TOP = 4         # ... plus how many nearest by thumbnail correlation (whole or centre)
NET_MAX = 50_000      # albums larger than this skip the thumbnail net (4.6 kB a picture)

DEFAULTS = dict(sure=SURE_DISTANCE, gap=GAP, far=FAR_DISTANCE, accept=ACCEPT, slope=SLOPE,
                slope_from=SLOPE_FROM, blur_below=BLUR_BELOW, blur_extra=BLUR_EXTRA, reject=REJECT,
                margin=MARGIN, rerank_top=RERANK_TOP, thumb_top=THUMB_TOP)

_M1 = np.uint64(0xFFFFFFFFFFFFFFFF)


# -- hash distances ---------------------------------------------------------------------------
def _u64(records: Iterable[dict], key: str) -> np.ndarray:
    return np.array([hex_to_int(r.get(key)) or 0 for r in records], dtype=np.uint64)


def distance(a: dict, b: dict) -> int:
    """phash + dhash Hamming distance **out of 128**, the smaller of plain and mirrored.

    0 means the same picture; see the module docstring for the scale."""
    ap, ad = hex_to_int(a["phash"]), hex_to_int(a["dhash"])
    bp, bd = hex_to_int(b["phash"]), hex_to_int(b["dhash"])
    plain = (ap ^ bp).bit_count() + (ad ^ bd).bit_count()
    apm, adm = hex_to_int(a.get("phash_mirror")), hex_to_int(a.get("dhash_mirror"))
    if apm is None or adm is None:
        return plain
    return min(plain, (apm ^ bp).bit_count() + (adm ^ bd).bit_count())


class Album:
    """Candidates packed for fast comparison: hashes as uint64 arrays, thumbnails as
    one matrix of zero-mean, unit-norm rows."""

    def __init__(self, candidates: list[dict]) -> None:
        # a candidate whose file did not decode has no hashes: it cannot be compared
        candidates = [c for c in candidates if c.get("phash") is not None and c.get("dhash") is not None]
        self.ids = [str(c.get("id", c.get("path", i))) for i, c in enumerate(candidates)]
        self.index_of = {cid: i for i, cid in enumerate(self.ids)}
        self.phash = _u64(candidates, "phash")
        self.dhash = _u64(candidates, "dhash")
        self.thumbs = [c.get("thumb") for c in candidates]

    def __len__(self) -> int:
        return len(self.ids)

    def _net_thumbs(self) -> np.ndarray:
        """Every candidate's thumbnail, whole and its centre (10% off each side), on
        the 24x24 grid, normalised: (N, 2, 576), made once."""
        if getattr(self, "_net", None) is None:
            if not self.thumbs or any(t is None for t in self.thumbs):
                self._net = np.zeros((0, 2, ALIGN_SIDE * ALIGN_SIDE), np.float32)
            else:
                stack = np.stack([_thumb(t) for t in self.thumbs])
                self._net = np.stack([_normalise((m @ stack @ m.T).reshape(len(stack), -1)) for m in (_WHOLE_M, _CENTRE_M)], axis=1)
        return self._net

    def nearest_by_thumbnail(self, query: dict, k: int) -> list[int]:
        """The k candidates whose thumbnails correlate best with the query's, whole or
        centre against whole or centre, plain or mirrored: a cheap net for the crops,
        zooms and other edits that move the hashes too far."""
        if k <= 0 or query.get("thumb") is None or len(self) > NET_MAX:
            return []
        net = self._net_thumbs()
        if not len(net):
            return []
        q = _thumb(query["thumb"])
        sig = np.stack([_normalise((m @ t @ m.T).reshape(-1)) for t in (q, q[:, ::-1]) for m in (_WHOLE_M, _CENTRE_M)])
        corr = (net.reshape(-1, net.shape[-1]) @ sig.T).reshape(len(net), -1).max(axis=1)
        return [int(i) for i in np.argsort(-corr, kind="stable")[:k]]

    def distances(self, query: dict) -> np.ndarray:
        """Distance (out of 128) from the query to every candidate, min over mirror."""
        qp, qd = np.uint64(hex_to_int(query["phash"])), np.uint64(hex_to_int(query["dhash"]))
        d = np.bitwise_count(self.phash ^ qp).astype(np.int16) + np.bitwise_count(self.dhash ^ qd)
        if query.get("phash_mirror") is not None and query.get("dhash_mirror") is not None:
            qpm = np.uint64(hex_to_int(query["phash_mirror"]))
            qdm = np.uint64(hex_to_int(query["dhash_mirror"]))
            dm = np.bitwise_count(self.phash ^ qpm).astype(np.int16) + np.bitwise_count(self.dhash ^ qdm)
            d = np.minimum(d, dm)
        return d


# -- the nearest candidates of many queries at once (large albums) -------------------------
def nearest(album: "Album", queries: list[dict], k: int = 5, *, block: int = 32768) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` nearest candidates of each query by :func:`distance` (out of 128,
    min over plain and mirrored): returns (distances (Q, k) int16, indices (Q, k)),
    nearest first; -1 / 32767 pad when the album has fewer than k.

    The album is scanned in blocks that stay in the CPU cache; per block and query
    it is 4 XORs, 4 popcounts (``np.bitwise_count``) and a few uint8 adds, then only
    the candidates at or under the query's current k-th best distance are kept."""
    n = len(album)
    qn = len(queries)
    out_d = np.full((qn, k), 32767, np.int16)
    out_i = np.full((qn, k), -1, np.int64)
    if n == 0 or qn == 0:
        return out_d, out_i
    qp = _u64(queries, "phash")
    qd = _u64(queries, "dhash")
    qpm = np.array([hex_to_int(q.get("phash_mirror") or q["phash"]) for q in queries], np.uint64)
    qdm = np.array([hex_to_int(q.get("dhash_mirror") or q["dhash"]) for q in queries], np.uint64)
    block = max(block, k)
    xb = np.empty(block, np.uint64)
    c1 = np.empty(block, np.uint8)
    c2 = np.empty(block, np.uint8)
    t1 = np.empty(block, np.uint8)
    t2 = np.empty(block, np.uint8)
    best_d = [np.zeros(0, np.uint8) for _ in range(qn)]
    best_i = [np.zeros(0, np.int64) for _ in range(qn)]
    thr = np.full(qn, 255, np.int32)
    for start in range(0, n, block):
        P = album.phash[start:start + block]
        D = album.dhash[start:start + block]
        m = len(P)
        x, a, b, u, v = xb[:m], c1[:m], c2[:m], t1[:m], t2[:m]
        for j in range(qn):
            np.bitwise_count(np.bitwise_xor(P, qp[j], out=x), out=a)
            np.bitwise_count(np.bitwise_xor(D, qd[j], out=x), out=b)
            np.add(a, b, out=u)
            np.bitwise_count(np.bitwise_xor(P, qpm[j], out=x), out=a)
            np.bitwise_count(np.bitwise_xor(D, qdm[j], out=x), out=b)
            np.add(a, b, out=v)
            np.minimum(u, v, out=u)
            keep = np.flatnonzero(u <= thr[j]) if thr[j] < 255 else np.arange(m)
            if not len(keep):
                continue
            dd = np.concatenate([best_d[j], u[keep]])
            ii = np.concatenate([best_i[j], keep + start])
            if len(dd) > k:
                sel = np.argpartition(dd, k - 1)[:k]
                dd, ii = dd[sel], ii[sel]
                thr[j] = int(dd.max())
            best_d[j], best_i[j] = dd, ii
    for j in range(qn):
        order = np.lexsort((best_i[j], best_d[j]))
        kk = len(order)
        out_d[j, :kk] = best_d[j][order]
        out_i[j, :kk] = best_i[j][order]
    return out_d, out_i


# -- radius search by multi-index hashing (catalogue-sized albums) ------------------------
CHUNKS = 8      # the 128-bit code (phash then dhash) is cut into 8 chunks of 16 bits


@functools.lru_cache(maxsize=8)
def _chunk_masks(radius: int) -> np.ndarray:
    """All 16-bit masks with at most ``radius`` bits set (the neighbours of a chunk)."""
    from itertools import combinations

    masks = [0]
    for r in range(1, radius + 1):
        masks += [sum(1 << b for b in bits) for bits in combinations(range(16), r)]
    return np.array(masks, dtype=np.int64)


def _chunk_of(p: int, d: int, j: int) -> int:
    """Chunk ``j`` (0..7) of the 128-bit code phash . dhash, most significant first."""
    word = p if j < CHUNKS // 2 else d
    return (word >> (48 - 16 * (j % (CHUNKS // 2)))) & 0xFFFF


class ChunkIndex:
    """A multi-index hash of an album (Norouzi et al., "Fast search in Hamming space
    with multi-index hashing"): for each of the 8 16-bit chunks of the 128-bit code,
    the candidates' codes sorted by that chunk's value and where each value starts.

    Two codes within distance R agree to within ``R // 8`` bits on at least one chunk
    (if every chunk differed by more, the whole would differ by more than R), so a
    radius search only reads the neighbouring buckets of each chunk, which lie side by
    side in memory: for R = 23 (chunk radius 2, 137 neighbours a chunk) about 2% of a
    random album, instead of all of it. The result is exact. Memory: 8 sorted copies
    of the codes (128 bytes per candidate) plus the bucket starts."""

    def __init__(self, album: "Album") -> None:
        self.album = album
        n = len(album)
        order, starts = [], []
        for j in range(CHUNKS):
            word = album.phash if j < CHUNKS // 2 else album.dhash
            vals = ((word >> np.uint64(48 - 16 * (j % (CHUNKS // 2)))) & np.uint64(0xFFFF)).astype(np.int64)
            order.append(np.argsort(vals, kind="stable"))
            starts.append(j * n + np.concatenate([[0], np.cumsum(np.bincount(vals, minlength=1 << 16))]))
        # the 8 sorted copies side by side, so one gather serves every chunk at once
        self.order = np.concatenate(order)
        self.starts = np.stack(starts)                  # (8, 65537) positions in the copies
        self.phash = album.phash[self.order]
        self.dhash = album.dhash[self.order]

    def within(self, query: dict, radius: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, distances) of every candidate within ``radius`` of the query by
        :func:`distance` (min over plain and mirrored), nearest first."""
        masks = _chunk_masks(radius // CHUNKS)
        probes = [(hex_to_int(query["phash"]), hex_to_int(query["dhash"]))]
        if query.get("phash_mirror") is not None and query.get("dhash_mirror") is not None:
            probes.append((hex_to_int(query["phash_mirror"]), hex_to_int(query["dhash_mirror"])))
        rows = np.arange(CHUNKS)
        # every (orientation, chunk, neighbour value) bucket, as [lo, hi) ranges
        vals = np.stack([np.array([_chunk_of(a, b, j) for j in range(CHUNKS)])[:, None] ^ masks for a, b in probes])
        lo = self.starts[rows[None, :, None], vals].ravel()
        hi = self.starts[rows[None, :, None], vals + 1].ravel()
        n = hi - lo
        total = int(n.sum())
        if not total:
            return np.zeros(0, np.int64), np.zeros(0, np.int16)
        offs = np.repeat(lo - np.concatenate([[0], np.cumsum(n)[:-1]]), n) + np.arange(total)
        per_probe = n.reshape(len(probes), -1).sum(axis=1)  # each probe with its own code
        qa = np.repeat(np.array([a for a, _ in probes], np.uint64), per_probe)
        qb = np.repeat(np.array([b for _, b in probes], np.uint64), per_probe)
        d = np.bitwise_count(self.phash[offs] ^ qa).astype(np.int16) + np.bitwise_count(self.dhash[offs] ^ qb)
        keep = np.flatnonzero(d <= radius)
        # a candidate within R both ways (or on two chunks) is found more than once:
        # its distance is the smallest
        ids, dist = self.order[offs[keep]], d[keep]
        by = np.lexsort((dist, ids))
        ids, dist = ids[by], dist[by]
        first = np.concatenate([[True], ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, bool)
        ids, dist = ids[first], dist[first]
        order = np.lexsort((ids, dist))
        return ids[order], dist[order]


# -- aligned correlation of thumbnails -----------------------------------------------------
ALIGN_SIDE = 24                          # the grid both thumbnails are compared on
CROP_STEPS = (0.0, 0.04, 0.08, 0.12)     # crop fractions tried on each side (coarse)
REFINE_STEP = 0.02                       # then +-this around the best coarse crop


@functools.lru_cache(maxsize=4096)
def _resample_matrix(lo: float, hi: float, n_out: int = ALIGN_SIDE, n_in: int = THUMB_SIZE) -> np.ndarray:
    """A (n_out x n_in) matrix that resamples the span [lo, hi] (fractions of the
    side) of a signal of n_in samples to n_out samples, by area weighting (so it
    also anti-aliases)."""
    m = np.zeros((n_out, n_in))
    edges = lo * n_in + (hi - lo) * n_in * np.arange(n_out + 1) / n_out
    for i in range(n_out):
        a, b = edges[i], edges[i + 1]
        for j in range(int(np.floor(a)), int(np.ceil(b))):
            w = min(b, j + 1) - max(a, j)
            if w > 0 and 0 <= j < n_in:
                m[i, j] += w
        m[i] /= m[i].sum() or 1.0
    return m


def _spans(steps: Iterable[float]) -> list[tuple[float, float]]:
    """(near, far) crop fractions of one axis, as (lo, hi) spans."""
    steps = list(steps)
    return [(round(a, 4), round(b, 4)) for a in steps for b in steps]


def _matrices(spans: list[tuple[float, float]]) -> np.ndarray:
    return np.stack([_resample_matrix(a, 1.0 - b) for a, b in spans])


_COARSE = _spans(CROP_STEPS)
_COARSE_M = _matrices(_COARSE)


def _normalise(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit norm over the last axis (so a dot product is a correlation)."""
    x = x - x.mean(axis=-1, keepdims=True)
    n = np.sqrt((x * x).sum(axis=-1, keepdims=True))
    return x / np.where(n > 1e-9, n, 1.0)


def _gradients(x: np.ndarray) -> np.ndarray:
    """Horizontal and vertical differences of (..., 24, 24) pictures, flattened."""
    lead = x.shape[:-2]
    gx = (x[..., :-1, 1:] - x[..., :-1, :-1]).reshape(*lead, -1)
    gy = (x[..., 1:, :-1] - x[..., :-1, :-1]).reshape(*lead, -1)
    return np.concatenate([gx, gy], axis=-1)


def _target(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What a picture (24x24) is compared by: its normalised luma and its
    normalised gradients."""
    return _normalise(x.reshape(-1)), _normalise(_gradients(x))


def _scores(x: np.ndarray, target: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """For each of K pictures (K, 24, 24): the mean of its luma correlation and its
    gradient correlation with the target. Luma alone is fooled by pictures with the
    same broad light and shade; gradients see the structure."""
    k = x.shape[0]
    flat = x.reshape(k, -1)
    lum = flat @ target[0] / _spread(flat)
    g = _gradients(x)
    grad = g @ target[1] / _spread(g)
    return 0.5 * lum + 0.5 * grad


def _spread(v: np.ndarray) -> np.ndarray:
    """Norm of each row after removing its mean."""
    n = v.shape[-1]
    ss = np.einsum("ij,ij->i", v, v) - n * v.mean(axis=-1) ** 2
    return np.sqrt(np.maximum(ss, 1e-9))


def _thumb(thumb: bytes | np.ndarray) -> np.ndarray:
    a = np.frombuffer(thumb, dtype=np.uint8) if isinstance(thumb, (bytes, bytearray, memoryview)) else np.asarray(thumb)
    return a.reshape(THUMB_SIZE, THUMB_SIZE).astype(np.float32)


def _crop_stack(t: np.ndarray, row_m: np.ndarray, col_m: np.ndarray) -> np.ndarray:
    """Every (row span x column span) crop of a thumbnail on the 24x24 grid."""
    rows = row_m @ t                                       # (kr, 24, 32)
    both = rows[:, None] @ col_m.transpose(0, 2, 1)[None]  # (kr, kc, 24, 24)
    return both.reshape(-1, ALIGN_SIDE, ALIGN_SIDE)


_WHOLE_M = _resample_matrix(0.0, 1.0).astype(np.float32)
_CENTRE_M = _resample_matrix(0.1, 0.9).astype(np.float32)
_COARSE_M = _COARSE_M.astype(np.float32)


def _whole(t: np.ndarray) -> np.ndarray:
    return _WHOLE_M @ t @ _WHOLE_M.T


def _best_crop(cropped: np.ndarray, whole: np.ndarray) -> float:
    """Best score of crops of ``cropped`` against ``whole``: a coarse search over
    CROP_STEPS on each side, then a finer one around the best."""
    target = _target(_whole(whole))
    s = _scores(_crop_stack(cropped, _COARSE_M, _COARSE_M), target)
    k = int(np.argmax(s))
    (t, b), (l, r) = _COARSE[k // len(_COARSE)], _COARSE[k % len(_COARSE)]
    rm = _matrices(_spans_pair(t, b)).astype(np.float32)
    cm = _matrices(_spans_pair(l, r)).astype(np.float32)
    return max(float(s[k]), float(_scores(_crop_stack(cropped, rm, cm), target).max()))


def _spans_pair(near: float, far: float) -> list[tuple[float, float]]:
    """Spans around one (near, far) crop pair, REFINE_STEP either way, kept in [0, 0.16]."""
    d = REFINE_STEP
    nears = sorted({min(max(near + x, 0.0), 0.16) for x in (-d, 0.0, d)})
    fars = sorted({min(max(far + x, 0.0), 0.16) for x in (-d, 0.0, d)})
    return [(round(a, 4), round(b, 4)) for a in nears for b in fars]


def aligned_correlation(a: bytes | np.ndarray, b: bytes | np.ndarray) -> float:
    """How alike two thumbnails are (about -1..1; 1 = the same picture), forgiving
    tints, darkening, gamma, crops, zoom and a mirror: the mean of the normalised
    correlation of luma and of gradients, maximised over crops of either picture by
    up to 12-16% per side (the other whole), the first also mirrored."""
    ta, tb = _thumb(a), _thumb(b)
    best = -1.0
    for qa in (ta, ta[:, ::-1]):
        best = max(best, _best_crop(qa, tb), _best_crop(tb, qa))
    return best


# -- the verdict ---------------------------------------------------------------------------------
def _candidate_rows(album: Album, d: np.ndarray, order: np.ndarray, limit: int | None) -> list[dict]:
    idx = order if limit is None else order[:limit]
    return [{"id": album.ids[i], "distance": int(d[i]), "rank": r + 1} for r, i in enumerate(idx)]


def _decide(query: dict, album: Album, p: dict, limit: int | None) -> dict:
    d = album.distances(query)
    order = np.argsort(d, kind="stable")
    best_i = int(order[0])
    best_d = int(d[best_i])
    runner_d = int(d[order[1]]) if len(order) > 1 else None
    gap = None if runner_d is None else runner_d - best_d
    out: dict[str, Any] = {
        "verdict": None, "best": None, "distance": best_d, "runner_up_distance": runner_d,
        "candidates": _candidate_rows(album, d, order, limit), "rerank": None,
    }
    if best_d <= p["sure"] and (gap is None or gap >= p["gap"]):
        out.update(verdict="match", best=album.ids[best_i])
        return out
    pool = list(order[: p["rerank_top"]])
    pool += [i for i in album.nearest_by_thumbnail(query, p["thumb_top"]) if i not in pool]
    out["rerank"] = rr = _rerank(query, album, pool, d)
    if rr is None:  # no thumbnails to compare: the hashes are all there is
        out.update(verdict="ambiguous" if best_d <= p["far"] else "not_in_album",
                   best=album.ids[best_i] if best_d <= p["far"] else None)
        return out
    # the hashes back the winner when it is also their nearest by a clear gap
    backed = rr["winner"] == album.ids[best_i] and (gap is None or gap >= p["gap"])
    if rr["score"] < p["reject"]:
        out.update(verdict="not_in_album")
    elif rr["score"] >= _needed(p, int(d[album.index_of[rr["winner"]]]), rr["detail"]) and (rr["margin"] >= p["margin"] or backed):
        out.update(verdict="match", best=rr["winner"])
    else:
        out.update(verdict="ambiguous", best=rr["winner"])
    return out


def _needed(p: dict, winner_distance: int, detail: float | None = None) -> float:
    """The score a rerank winner needs to be a match: ``accept``, plus ``slope`` for
    every bit of hash distance beyond ``slope_from`` (the two kinds of evidence add
    up: a winner whose hashes are far needs the pixels to agree more), plus
    ``blur_extra`` when either picture has little detail (``detail`` below
    ``blur_below``): two soft, blurred pictures correlate well whatever they show."""
    need = p["accept"] + p["slope"] * max(0, winner_distance - p["slope_from"])
    if detail is not None and detail < p["blur_below"]:
        need += p["blur_extra"]
    return need


def detail(thumb: bytes | np.ndarray) -> float:
    """How much fine structure a thumbnail has: the RMS of its gradients once its
    contrast is normalised (about 0.35-0.8 for photographs; under 0.25 for a
    blurred or enlarged picture with little left to compare)."""
    x = _thumb(thumb)
    x = (x - x.mean()) / (x.std() + 1e-6)
    g = _gradients(_WHOLE_M @ x @ _WHOLE_M.T)
    return float(np.sqrt((g * g).mean()))


def _rerank(query: dict, album: Album, pool: list[int], d: np.ndarray) -> dict | None:
    """Aligned correlation of the query's thumbnail with each candidate's in ``pool``."""
    if query.get("thumb") is None or any(album.thumbs[i] is None for i in pool):
        return None
    scores = [(album.ids[i], aligned_correlation(query["thumb"], album.thumbs[i]), int(d[i])) for i in pool]
    scores.sort(key=lambda s: (-s[1], s[2]))
    winner, score, _ = scores[0]
    runner, runner_score = (scores[1][0], scores[1][1]) if len(scores) > 1 else (None, None)
    margin = score - runner_score if runner_score is not None else score
    win_thumb = album.thumbs[album.index_of[winner]]
    return {
        "method": "aligned-correlation", "winner": winner, "score": round(score, 4),
        "detail": round(min(detail(query["thumb"]), detail(win_thumb)), 4),
        "runner_up": runner, "runner_up_score": None if runner_score is None else round(runner_score, 4),
        "margin": round(margin, 4),
        "scores": [{"id": i, "score": round(sc, 4), "distance": dd} for i, sc, dd in scores],
    }


def resolve_many(queries: list[dict], candidates: list[dict] | Album, *, limit: int | None = None,
                 **params: Any) -> list[dict]:
    """:func:`resolve` for several queries against one album (packed once).

    ``limit`` caps how many candidates are listed per query (None = all)."""
    p = {**DEFAULTS, **params}
    album = candidates if isinstance(candidates, Album) else Album(candidates)
    out = []
    for q in queries:
        if not len(album):
            out.append({"verdict": "not_in_album", "best": None, "distance": None,
                        "runner_up_distance": None, "candidates": [], "rerank": None})
        elif q.get("phash") is None or q.get("dhash") is None:
            out.append({"verdict": "not_in_album", "best": None, "distance": None, "runner_up_distance": None,
                        "candidates": [], "rerank": None, "error": q.get("error") or "no_hash"})
        else:
            out.append(_decide(q, album, p, limit))
    return out


def resolve(query: dict, candidates: list[dict], **params: Any) -> dict:
    """The verdict for one query against an album (see the module docstring)."""
    return resolve_many([query], candidates, **params)[0]
