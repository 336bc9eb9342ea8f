"""find-similar over a harvested folder (story 2): cached thumbnails against the story's scan.

A folder of numbered pictures (real photographs: ``sandbox.photos.picture(i)``,
200 x 150 JPEGs) and two 72 x 62 mosaic tiles cut from two of them (squashed or
cropped to the tile, blended 35% towards a colour, JPEG) are the references.

* photo-escape: ``tasks.similar.find_similar`` with the thumbnail cache already
  filled (the first run fills it; timed apart): correlation over all 32x32
  thumbnails, SSIM on the best 200, both references.
* peer: the story's notebook, SSIM of the reference against every picture loaded
  and resized to 72 x 62, timed on the first ``--peer-sample`` pictures and scaled
  to the whole folder (it is linear in the folder's size).

    .venv/bin/python bench/find_similar.py             # quick: 2,000 pictures
    .venv/bin/python bench/find_similar.py --full      # recorded: 20,000 pictures
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandbox import photos  # noqa: E402
from tasks.similar import ThumbCache, find_similar, folder_pictures  # noqa: E402


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--count", type=int)
    ap.add_argument("--peer-sample", type=int, default=1000)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "photo-escape-bench-find-similar"))
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
    cache_path = root / f"thumbs-{count}.npz"
    cache = ThumbCache(cache_path)
    t = time.perf_counter()
    first = find_similar(refs[:1], paths, cache=cache, top=5)
    if first["stats"]["computed"]:
        cache.save()
    fill = time.perf_counter() - t
    print(f"{count:,} pictures (made in {made:.0f} s); filling the thumbnail cache: {first['stats']['computed']:,} "
          f"computed in {fill:.1f} s")

    t = time.perf_counter()
    out = find_similar(refs, paths, cache=ThumbCache(cache_path), top=5)
    ours = time.perf_counter() - t
    assert out["stats"]["computed"] == 0, out["stats"]
    ok = all(out["rankings"][str(r)][0]["path"] == str(truth[r]) for r in refs)

    sample = paths[: args.peer_sample]
    t = time.perf_counter()
    peer_rank = story_scan(refs[0], sample)
    peer = (time.perf_counter() - t) / len(sample) * len(paths) * len(refs)

    print(f"photo-escape, cache filled: {ours:.2f} s for {len(refs)} references over {count:,} pictures "
          f"(target < 10 s); found both: {ok}")
    for r in refs:
        m = out["margins"][str(r)]
        print(f"  {r.name}: best {m['best_score']:.3f} ({Path(m['best']).name}; truth {truth[r].name}), "
              f"runner-up {m['rest_best_score']:.3f}, margin {m['margin']:.3f}")
    print(f"story's scan (SSIM of every picture): {peer:.1f} s for the same (timed on {len(sample):,} pictures, "
          f"scaled); its best on the sample scored {peer_rank[0][0]:.3f}")
    print(f"ratio: {peer / ours:.1f}x")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
