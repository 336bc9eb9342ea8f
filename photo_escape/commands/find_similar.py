"""``photo-escape find-similar REFERENCE... --in DIR [--top K] [--cache PATH] [--json]``.

Rank the pictures of a folder by structural similarity to each small REFERENCE
(story 2: a 72 x 62 tile cut from a photo mosaic). One line per ranked picture:

    {reference, rank, path, score, correlation}

``score`` is SSIM (1 = identical; story 2's true pictures scored 0.63 and 0.69 and
everything else below 0.48); ``correlation`` is the thumbnail correlation that put
the picture on the shortlist. The rank-1 line also carries ``margin`` (its score
minus the runner-up's) and ``runner_up_score``: a wide margin means the best match
stands out from the rest. A summary per reference goes to stderr.

Thumbnails are computed once and cached by sha256 in ``--cache`` (default: a file
``.<DIR name>.photo-escape-thumbs.npz`` beside DIR); a rerun reads only the pictures
that changed. On a terminal a progress bar on stderr counts the pictures as their
thumbnails are made. Files that are not readable images are skipped and counted. The exit
code is 0 unless the command line is wrong, a reference cannot be read or a
folder does not exist (2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from photo_escape.output import emit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("references", nargs="+", metavar="REFERENCE", help="small reference pictures (crops)")
    parser.add_argument("--in", dest="folders", required=True, action="append", metavar="DIR",
                        help="the folder to search (repeatable)")
    parser.add_argument("--top", type=int, default=5, help="how many pictures to list per reference (default 5)")
    parser.add_argument("--shortlist", type=int, default=200,
                        help="how many best-correlating thumbnails are scored by SSIM (default 200)")
    parser.add_argument("--cache", help="thumbnail cache file (default: beside the folder)")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write a thumbnail cache")
    parser.add_argument("--processes", type=int, default=0, help="decoding processes (0 = one per core)")


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from tasks.similar import ThumbCache, default_cache_path, find_similar, folder_pictures

    for ref in args.references:
        try:
            with Image.open(ref) as im:
                im.load()
        except Exception as exc:  # noqa: BLE001
            print(f"find-similar: cannot read the reference {ref}: {exc}", file=sys.stderr)
            return 2
    missing = [d for d in args.folders if not Path(d).is_dir()]
    if missing:
        print(f"find-similar: {', '.join(missing)} is not a folder", file=sys.stderr)
        return 2
    cache = None
    if not args.no_cache:
        cache = ThumbCache(args.cache or default_cache_path(args.folders[0]))
    pictures = folder_pictures(args.folders)
    bar = None
    if sys.stderr.isatty():  # a progress bar on a terminal, never in a pipe or a log
        from tqdm import tqdm

        bar = tqdm(total=len(pictures), unit="picture", desc="thumbnails", file=sys.stderr, dynamic_ncols=True,
                   leave=True)
    try:
        out = find_similar(args.references, pictures, top=args.top, shortlist_size=args.shortlist, cache=cache,
                           processes=args.processes, progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    if cache is not None and cache.changed:
        cache.save()
    for ref, ranking in out["rankings"].items():
        m = out["margins"][ref]
        for row in ranking:
            rec = {"reference": ref, **row}
            if row["rank"] == 1:
                rec.update(margin=m["margin"], runner_up_score=m["rest_best_score"])
            emit(rec, args.json, f"{ref}  #{row['rank']}  {row['score']:.3f}  {row['path']}")
        print(f"{ref}: best {m['best_score']} ({m['best']}), runner-up {m['rest_best_score']}, "
              f"margin {m['margin']}", file=sys.stderr)
    st = out["stats"]
    print(f"{st['files']} pictures: {st['from_cache']} thumbnails from the cache, {st['computed']} computed, "
          f"{st['failed']} unreadable; ranking took {st['seconds_ranking']} s", file=sys.stderr)
    return 0
