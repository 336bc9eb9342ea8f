"""find-similar over a harvested folder (story 2): cached thumbnails against the story's scan.

A folder of numbered pictures (real photographs: ``sandbox.photos.picture(i)``,
200 x 150 JPEGs) and two 72 x 62 mosaic tiles cut from two of them (squashed or
cropped to the tile, blended 35% towards a colour, JPEG) are the references.

* photo-escape: the whole command, start-up included, ``photo-escape find-similar
  REF1 REF2 --in DIR --json`` (correlation over all 32x32 thumbnails, SSIM on the best
  200, both references): first with an empty thumbnail cache (filling it is part of
  the first search; this is the headline figure), then again with the cache filled.
* peer: the story's notebook, SSIM of the reference against every picture loaded
  and resized to 72 x 62, in a Python process of its own: its start-up (imports) is
  counted once and its scan, timed on the first ``--peer-sample`` pictures, is scaled
  to the whole folder (it is linear in the folder's size) and to both references.

    .venv/bin/python bench/find_similar.py             # quick: 2,000 pictures
    .venv/bin/python bench/find_similar.py --full      # recorded: 20,000 pictures
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.peers import default_photo_escape  # noqa: E402
from sandbox import photos  # noqa: E402
from tasks.similar import folder_pictures  # noqa: E402


def make_folder(folder: Path, count: int) -> None:
    """``count`` numbered pictures (kept between runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(1, count + 1):
        p = folder / f"{n}.jpg"
        if not p.exists():
            photos.picture(1000 + n, (200, 150)).save(p, "JPEG", quality=85)


def make_tile(picture: Path, out: Path, tint, crop: bool) -> Path:
    from PIL import ImageOps

    img = Image.open(picture).convert("RGB")
    img = ImageOps.fit(img, (72, 62), Image.Resampling.LANCZOS) if crop else img.resize((72, 62), Image.Resampling.LANCZOS)
    Image.blend(img, Image.new("RGB", img.size, tint), 0.35).save(out, "JPEG", quality=80)
    return out


def story_scan(reference: Path, paths: list[str]) -> list[tuple[float, str]]:
    """The notebook's way: load every picture, resize to the tile, SSIM."""
    from skimage.metrics import structural_similarity

    ref = np.asarray(Image.open(reference).convert("L"), dtype=np.float64) / 255.0
    out = []
    for p in paths:
        img = np.asarray(Image.open(p).convert("L").resize((72, 62)), dtype=np.float64) / 255.0
        out.append((structural_similarity(ref, img, data_range=1.0), p))
    return sorted(out, reverse=True)


def peer_script() -> str:
    """The story's scan as a Python program of its own (the notebook's imports, then
    :func:`story_scan` over the listed pictures), printing how long the scan took."""
    import inspect

    return "\n".join([
        "import json, sys, time",
        "from pathlib import Path",
        "import numpy as np",
        "from PIL import Image",
        "from skimage.metrics import structural_similarity",
        inspect.getsource(story_scan),
        "t = time.perf_counter()",
        "best = story_scan(Path(sys.argv[1]), Path(sys.argv[2]).read_text().splitlines())[0]",
        "print(json.dumps({'scan': time.perf_counter() - t, 'best_score': best[0]}))",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--count", type=int)
    ap.add_argument("--peer-sample", type=int, default=1000)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "photo-escape-bench-find-similar"))
    ap.add_argument("--photo-escape", help="photo-escape's command (default: the console script beside this Python)")
    args = ap.parse_args(argv)
    count = args.count or (20_000 if args.full else 2_000)
    root = Path(args.dir)
    folder = root / f"harvest-{count}"
    t = time.perf_counter()
    make_folder(folder, count)
    made = time.perf_counter() - t
    truth = {make_tile(folder / f"{count * 3 // 7}.jpg", root / "forehead.jpg", (200, 140, 90), False): folder / f"{count * 3 // 7}.jpg",
             make_tile(folder / f"{count * 5 // 6}.jpg", root / "sky.jpg", (90, 120, 220), True): folder / f"{count * 5 // 6}.jpg"}
    refs = list(truth)
    paths = folder_pictures([folder])
    print(f"{count:,} pictures (made in {made:.0f} s, not timed)")

    pe = shlex.split(args.photo_escape) if args.photo_escape else default_photo_escape()
    cache = root / f"thumbs-{count}-{os.getpid()}.npz"
    cache.unlink(missing_ok=True)
    command = pe + ["find-similar", *map(str, refs), "--in", str(folder), "--cache", str(cache), "--json"]

    def search() -> tuple[float, dict[str, dict]]:
        t = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - t
        lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.strip()]
        return seconds, {ln["reference"]: ln for ln in lines if ln.get("rank") == 1}

    cold, best = search()
    warm, _ = search()
    cache.unlink(missing_ok=True)
    ok = all(best[str(r)]["path"] == str(truth[r]) for r in refs)

    sample = paths[: args.peer_sample]
    listing = root / "peer-sample.txt"
    listing.write_text("\n".join(sample))
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", peer_script(), str(refs[0]), str(listing)],
                          capture_output=True, text=True, check=True)
    peer_wall = time.perf_counter() - t
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    startup = peer_wall - res["scan"]  # the interpreter, the imports
    peer = startup + res["scan"] / len(sample) * len(paths) * len(refs)

    print(f"photo-escape find-similar, whole command: {cold:.2f} s with an empty thumbnail cache (filled on the way), "
          f"{warm:.2f} s with it filled; {len(refs)} references over {count:,} pictures; found both: {ok}")
    for r in refs:
        b = best[str(r)]
        print(f"  {r.name}: best {b['score']:.3f} ({Path(b['path']).name}; truth {truth[r].name}), "
              f"runner-up {b.get('runner_up_score', float('nan')):.3f}, margin {b.get('margin', float('nan')):.3f}")
    print(f"story's scan (SSIM of every picture), its own process: {peer:.1f} s for the same ({startup:.1f} s start-up; "
          f"scan timed on {len(sample):,} pictures and scaled); its best on the sample scored {res['best_score']:.3f}")
    print(f"ratio peer / photo-escape: {peer / cold:.1f}x with the cache filled on the way (the first search), "
          f"{peer / warm:.1f}x with it filled")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
