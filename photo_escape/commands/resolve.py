"""``photo-escape resolve QUERY... --album DIR [--ledger PATH] [--top N] [--json]``.

Which picture of an album is the same picture as each query, or none. QUERY and
``--album`` may be files or directories (walked recursively for image files). One
line per query:

    {query, verdict, best, distance, runner_up_distance, candidates, rerank}

* ``verdict``: ``match`` (``best`` is the album picture), ``not_in_album`` (nothing
  in the album is this picture), or ``ambiguous`` (two or more album pictures are too
  close to call: ``best`` is the favourite, for a person to confirm);
* ``distance`` and ``runner_up_distance``: hash distances **out of 128** (phash + dhash
  Hamming distance, the smaller of plain and mirrored) of the nearest and second
  nearest album picture: 0 is identical, under ~20 is the same picture;
* ``candidates``: every album picture with its distance and rank, nearest first
  (``--top N`` keeps the N nearest);
* ``rerank``: when the hashes alone did not decide, the aligned-correlation scores
  of the nearest few thumbnails (1 = the same picture): the winner, its score, the
  runner-up's and the margin between them.

A query that is not a readable image gets ``status: "error"`` with a reason and no
verdict. ``--ledger PATH`` caches hashes by content in that ledger's ``assets``
table, so an album shared by many runs is decoded once (each file is still read for
its sha256). The exit code is 0 unless the command line is wrong or the album
does not exist (2).
"""

from __future__ import annotations

import argparse
import os
import sys

from photo_escape.output import emit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("queries", nargs="+", metavar="QUERY", help="image files (or directories) to look for")
    parser.add_argument("--album", required=True, action="append", metavar="DIR",
                        help="the album: a directory or image file (repeatable)")
    parser.add_argument("--ledger", help="a ledger (DuckDB file) to cache hashes in, by sha256")
    parser.add_argument("--top", type=int, default=None, help="list only the N nearest candidates")
    parser.add_argument("--processes", type=int, default=0, help="decoding processes (0 = one per core)")


def _text(res: dict) -> str:
    if res.get("status") == "error":
        return f"{res['query']}  ERROR {res['error']}: {res.get('message')}"
    head = f"{res['query']}  {res['verdict']}"
    if res["best"]:
        head += f"  {res['best']}"
    head += f"  (distance {res['distance']}, runner-up {res['runner_up_distance']}, of 128)"
    rr = res.get("rerank")
    if rr:
        head += f"  rerank: {rr['winner']} scored {rr['score']:.3f}, margin {rr['margin']:.3f}"
    lines = [head] + [f"    {c['rank']:>3}. {c['distance']:>3}  {c['id']}" for c in res["candidates"][:10]]
    if len(res["candidates"]) > 10:
        lines.append(f"    ... {len(res['candidates']) - 10} more (use --json for all)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from tasks.hashing import hash_files_cached, image_files
    from tasks.resolve import Album, resolve_many

    missing = [a for a in args.album if not os.path.exists(a)]
    if missing:
        print(f"resolve: the album {', '.join(missing)} does not exist", file=sys.stderr)
        return 2
    album_paths = image_files(args.album)
    query_paths = image_files(args.queries)
    recs, stats = hash_files_cached(album_paths + query_paths, args.ledger, processes=args.processes)
    album_recs = [{**r, "id": r["path"]} for r in recs[: len(album_paths)] if r["status"] == "ok"]
    bad_album = len(album_paths) - len(album_recs)
    print(f"album: {len(album_recs)} pictures ({bad_album} unreadable); {stats['hashed']} files decoded "
          f"({stats['failed']} of them unreadable), {stats['from_cache']} from the ledger cache", file=sys.stderr)
    queries = recs[len(album_paths):]
    good = [q for q in queries if q["status"] == "ok"]
    results = iter(resolve_many(good, Album(album_recs), limit=args.top))
    for q in queries:
        if q["status"] != "ok":
            res = {"query": q["path"], "status": "error", "error": q["error"], "message": q["message"],
                   "verdict": None, "best": None, "distance": None, "runner_up_distance": None,
                   "candidates": [], "rerank": None}
        else:
            res = {"query": q["path"], "status": "ok", **next(results)}
        emit(res, args.json, _text(res))
    return 0
