"""The resolver's hash search at catalogue scale: photo-escape against FAISS, per core.

10,000 queries against 1,000,000 album codes (``--small``: 1,000 against 100,000).
A code is the 128-bit phash . dhash of a picture; the distance is the Hamming
distance, the smaller of the plain and the mirrored query's (``tasks.resolve.distance``).
The search asked of both: every album picture within radius R = 23 of each query
(out of 128; the resolver decides a match on the hashes alone when the best is
within 10 and the runner-up 12 further, so R = 23 is what that decision needs).

* photo-escape: ``tasks.resolve.ChunkIndex`` (multi-index hashing: 8 chunks of
  16 bits, numpy), one query at a time, in this process.
* peer: FAISS ``IndexBinaryFlat`` (``range_search`` for the plain and for the
  mirrored query, merged), with one OpenMP thread.

Each side's time includes building its index (``ChunkIndex`` from the album codes;
FAISS's ``add``): the resolver builds it for every run, so a per-query figure that left
it out would flatter whichever index costs more to build. Both answers are compared
query by query (they must be identical). Codes are
uniformly random (the worst case for multi-index hashing: real perceptual hashes
cluster, so buckets are fuller); a third of the queries are absent, a third are
album codes with 14 bits changed, a third mirrored copies with 10 bits changed.

    .venv/bin/python bench/resolve.py --small     # quick
    .venv/bin/python bench/resolve.py             # recorded: 10,000 x 1,000,000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.resolve import Album, ChunkIndex  # noqa: E402

RADIUS = 23


def hexs(x) -> str:
    return f"{int(x):016x}"


def flip_bits(rng, x: np.uint64, n: int) -> np.uint64:
    for b in rng.choice(64, n, replace=False):
        x ^= np.uint64(1) << np.uint64(int(b))
    return x


def make_data(n_album: int, n_queries: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    P = rng.integers(0, 2**64 - 1, size=n_album, dtype=np.uint64, endpoint=True)
    D = rng.integers(0, 2**64 - 1, size=n_album, dtype=np.uint64, endpoint=True)
    rnd = lambda: rng.integers(0, 2**64 - 1, dtype=np.uint64, endpoint=True)  # noqa: E731
    queries = []
    for j in range(n_queries):
        i = int(rng.integers(n_album))
        if j % 3 == 0:    # not in the album
            q = {"phash": rnd(), "dhash": rnd(), "phash_mirror": rnd(), "dhash_mirror": rnd()}
        elif j % 3 == 1:  # an edited copy
            q = {"phash": flip_bits(rng, P[i], 6), "dhash": flip_bits(rng, D[i], 8),
                 "phash_mirror": rnd(), "dhash_mirror": rnd()}
        else:             # a mirrored, edited copy
            q = {"phash": rnd(), "dhash": rnd(),
                 "phash_mirror": flip_bits(rng, P[i], 5), "dhash_mirror": flip_bits(rng, D[i], 5)}
        queries.append({k: hexs(v) for k, v in q.items()})
    return P, D, queries


def big_endian_codes(p: np.ndarray, d: np.ndarray) -> np.ndarray:
    """(n, 16) uint8: phash then dhash, most significant byte first (FAISS's layout)."""
    return np.stack([p, d], axis=1).astype(">u8").view(np.uint8).reshape(len(p), 16)


def clock():
    return time.perf_counter(), time.process_time()


def since(t):
    w, c = clock()
    return w - t[0], c - t[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="1,000 queries against 100,000 codes")
    ap.add_argument("--album", type=int)
    ap.add_argument("--queries", type=int)
    args = ap.parse_args(argv)
    n_album = args.album or (100_000 if args.small else 1_000_000)
    n_q = args.queries or (1_000 if args.small else 10_000)

    import faiss

    faiss.omp_set_num_threads(1)
    P, D, queries = make_data(n_album, n_q)
    album = Album.__new__(Album)  # codes only: the search needs no thumbnails
    album.ids, album.phash, album.dhash, album.thumbs = list(range(n_album)), P, D, [None] * n_album
    print(f"{n_q:,} queries against {n_album:,} codes of 128 bits, radius {RADIUS}, one core each")

    t = clock()
    index = ChunkIndex(album)
    build = since(t)
    t = clock()
    ours = [index.within(q, RADIUS) for q in queries]
    w_ours, c_ours = since(t)

    t = clock()
    flat = faiss.IndexBinaryFlat(128)
    flat.add(big_endian_codes(P, D))
    f_build = since(t)
    qa = big_endian_codes(np.array([int(q["phash"], 16) for q in queries], np.uint64),
                          np.array([int(q["dhash"], 16) for q in queries], np.uint64))
    qm = big_endian_codes(np.array([int(q["phash_mirror"], 16) for q in queries], np.uint64),
                          np.array([int(q["dhash_mirror"], 16) for q in queries], np.uint64))
    t = clock()
    plain = flat.range_search(qa, RADIUS + 1)  # FAISS keeps distances < radius
    mirrored = flat.range_search(qm, RADIUS + 1)
    w_faiss, c_faiss = since(t)

    same = 0
    for j, (ids, dist) in enumerate(ours):
        theirs: dict[int, int] = {}
        for lims, dd, ii in (plain, mirrored):
            for i, d in zip(ii[lims[j]:lims[j + 1]], dd[lims[j]:lims[j + 1]]):
                theirs[int(i)] = min(theirs.get(int(i), 999), int(d))
        same += theirs == dict(zip(ids.tolist(), dist.tolist()))
    found = sum(len(ids) > 0 for ids, _ in ours)
    print(f"identical answers: {same}/{n_q}; queries with a candidate within {RADIUS}: {found}")
    # whole: the index built, then every query (the build is part of every resolver run)
    wt_ours, ct_ours = build[0] + w_ours, build[1] + c_ours
    wt_faiss, ct_faiss = f_build[0] + w_faiss, f_build[1] + c_faiss
    print(f"{'':30}{'CPU':>12}{'wall':>12}")
    print(f"{'photo-escape ChunkIndex':30}{ct_ours:10.2f} s{wt_ours:10.2f} s  index built + all queries"
          f"  (build {build[0]:.2f} s, {w_ours / n_q * 1e3:.3f} ms per query)")
    print(f"{'FAISS IndexBinaryFlat':30}{ct_faiss:10.2f} s{wt_faiss:10.2f} s  add + all queries"
          f"  (add {f_build[0]:.2f} s, {w_faiss / n_q * 1e3:.3f} ms per query)")
    print(f"ratio per core, build included: {ct_faiss / ct_ours:.2f}x by CPU time, {wt_faiss / wt_ours:.2f}x by wall "
          f"time (FAISS / photo-escape; target >= 2x); queries alone: {c_faiss / c_ours:.2f}x by CPU time")
    return 0 if same == n_q else 1


if __name__ == "__main__":
    sys.exit(main())
