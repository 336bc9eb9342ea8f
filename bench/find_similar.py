"""find-similar against the story's SSIM loop, on a photomosaic of numbered pictures (story 2).

The data (made once per ``--candidates``/``--seed`` and kept in ``--dir``, under /tmp):

* ``N`` numbered candidates of 600 x 516 (the story's size), ``1.jpg`` .. ``N.jpg``: crops
  of real photographs (scikit-image's and matplotlib's, as ``bench/matching.py`` uses
  them) at their own position and scale, some mirrored, each with its own colour
  cast and gamma, JPEG quality 70-92. Many share a photograph, so near misses abound.
* 24 of them are the *true pictures*; each has 3 *decoys* among the candidates: the
  same photograph cut a little to the side (6-12%), a little closer or further
  (10-15%), or both, with another colour cast.
* A photomosaic (a photograph drawn with 72 x 62 tiles: every tile a candidate,
  squashed or cut to the tile, blended 30-50% towards the colour the mosaic needs
  there), saved as one JPEG (quality 75). The 24 references are the mosaic's tiles of
  the true pictures, cut from the decoded JPEG as the story cut them.

Timed, each in a process of its own, whole command (start-up included), for 2 and for
24 references:

* photo-escape, cold: ``photo-escape find-similar REF... --in DIR --cache C --top 1
  --json`` with no cache file (it is filled on the way);
* photo-escape, warm: the same again, the cache filled;
* the loop (the story's notebook): ``Image.open(p).resize((72, 62))`` then
  ``structural_similarity(candidate, reference, channel_axis=2)`` per reference, over
  every candidate; each reference's ranking sorted by that score.

The pictures are read once before timing, so both sides find them in the page cache.
Printed: times, the ratios loop / photo-escape, and how many references each ranks
first (the true picture first), with scores and margins.

    .venv/bin/python bench/find_similar.py                       # recorded: 20,000 candidates
    .venv/bin/python bench/find_similar.py --candidates 1500 --seed 2024   # a held-out mosaic
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIZE = (600, 516)      # the story's pictures
TILE = (72, 62)        # the story's mosaic tiles
TRUE = 24              # true pictures (references) in every data set
DECOYS = 3             # per true picture
DATA_VERSION = 2


# -- the data ---------------------------------------------------------------------------------
def _bases() -> list[str]:
    from bench.matching import EXTRA_BASES
    from sandbox import photos

    return [b for b in (*photos.BASES, *EXTRA_BASES) if b != "motorcycle_right"]


def _base(name: str) -> np.ndarray:
    from bench.matching import base_photo

    return base_photo(name)


def _draw_box(rng: random.Random, shape: tuple[int, int]) -> tuple[float, float, float]:
    """A crop of a photograph at the candidates' aspect: (centre x, centre y, width) as
    fractions of the photograph."""
    h, w = shape
    aspect = SIZE[0] / SIZE[1]
    frac = rng.uniform(0.3, 0.8)
    cw = min(w, h * frac * aspect) / w
    ch = cw * w / aspect / h
    return rng.uniform(cw / 2, 1 - cw / 2), rng.uniform(ch / 2, 1 - ch / 2), cw


def _pixel_box(box: tuple[float, float, float], shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """The crop of a photograph of ``shape`` (h, w) that ``box`` (centre x, centre y,
    width, as fractions) gives, kept inside the photograph."""
    h, w = shape
    cx, cy, cw = box
    aspect = SIZE[0] / SIZE[1]
    bw = min(cw * w, w)
    bh = bw / aspect
    if bh > h:
        bh, bw = h, h * aspect
    x0 = min(max(0.0, cx * w - bw / 2), w - bw)
    y0 = min(max(0.0, cy * h - bh / 2), h - bh)
    return (x0, y0, x0 + bw, y0 + bh)


def _iou(a: tuple, b: tuple) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def _render(spec: dict) -> Image.Image:
    img = _base(spec["base"])
    box = _pixel_box(spec["box"], img.shape[:2])
    pic = Image.fromarray(img).resize(SIZE, Image.Resampling.LANCZOS, box=box)
    if spec["flip"]:
        pic = ImageOps.mirror(pic)
    arr = np.asarray(pic, dtype=np.float32) / 255.0
    arr = np.clip(arr ** spec["gamma"] * np.array(spec["gains"], np.float32), 0, 1)
    return Image.fromarray((arr * 255 + 0.5).astype(np.uint8))


def _write(job: tuple[dict, str]) -> None:
    spec, path = job
    _render(spec).save(path, "JPEG", quality=spec["quality"])


def _spec(rng: random.Random, bases: list[str], shapes: dict[str, tuple[int, int]], **fixed) -> dict:
    base = fixed.get("base") or rng.choice(bases)
    return {"base": base, "box": fixed.get("box") or _draw_box(rng, shapes[base]),
            "flip": fixed.get("flip", rng.random() < 0.3), "gamma": rng.uniform(0.8, 1.25),
            "gains": [rng.uniform(0.8, 1.15) for _ in range(3)], "quality": rng.randint(70, 92)}


def _decoy_box(rng: random.Random, box: tuple[float, float, float], shape: tuple[int, int], *,
               zoom_in_only: bool = False) -> tuple[float, float, float]:
    """The true picture's crop moved 6-12% to a side, or 10-15% closer or further, or both."""
    cx, cy, cw = box
    h, w = shape
    aspect = SIZE[0] / SIZE[1]
    kind = "zoom" if zoom_in_only else rng.choice(["shift", "zoom", "both"])
    if kind in ("zoom", "both"):
        cw *= rng.uniform(0.85, 0.9) if zoom_in_only or rng.random() < 0.5 else rng.uniform(1.1, 1.15)
    ch = cw * w / aspect / h
    if kind in ("shift", "both"):
        d = rng.uniform(0.06, 0.12)
        if rng.random() < 0.5:
            cx = cx + d * cw if cx + d * cw + cw / 2 <= 1 else cx - d * cw
        else:
            cy = cy + d * ch if cy + d * ch + ch / 2 <= 1 else cy - d * ch
    return (cx, cy, cw)


def make_data(root: Path, count: int, seed: int, workers: int) -> dict:
    """The candidates, the mosaic and the references (kept: made again only when missing)."""
    folder = root / f"mosaic-{count}-seed{seed}"
    manifest = folder / "manifest.json"
    if manifest.exists():
        data = json.loads(manifest.read_text())
        if data.get("version") == DATA_VERSION:
            return data
    pics = folder / "candidates"
    pics.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    bases = _bases()
    shapes = {b: _base(b).shape[:2] for b in bases}
    numbers = list(range(1, count + 1))
    rng.shuffle(numbers)
    specs: dict[int, dict] = {}
    truth: list[int] = numbers[:TRUE]
    decoys: dict[int, list[int]] = {}
    free = iter(numbers[TRUE:TRUE + TRUE * DECOYS])
    for n in truth:
        s = _spec(rng, bases, shapes)
        specs[n] = s
        decoys[n] = []
        for _ in range(DECOYS):
            for attempt in range(20):  # a decoy shows the scene differently: never (nearly) the same crop
                box = _decoy_box(rng, s["box"], shapes[s["base"]], zoom_in_only=attempt >= 10)
                if _iou(_pixel_box(box, shapes[s["base"]]), _pixel_box(s["box"], shapes[s["base"]])) <= 0.85:
                    break
            cx, cy, cw = box
            m = next(free)
            specs[m] = _spec(rng, bases, shapes, base=s["base"], box=(cx, cy, cw), flip=s["flip"])
            decoys[n].append(m)
    for n in numbers[TRUE + TRUE * DECOYS:]:
        specs[n] = _spec(rng, bases, shapes)
    jobs = [(specs[n], str(pics / f"{n}.jpg")) for n in sorted(specs)]
    t = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write, jobs, chunksize=64))
    made = time.perf_counter() - t

    # the mosaic: a photograph drawn with tiles of candidates, tinted towards it, one JPEG
    cols, rows = 40, 30
    target = np.asarray(Image.fromarray(_base("astronaut")).resize((cols, rows), Image.Resampling.BOX), np.float32)
    cells = [(c, r) for r in range(rows) for c in range(cols)]
    rng.shuffle(cells)
    fill = [n for n in numbers if n not in set(truth)]
    mosaic = Image.new("RGB", (cols * TILE[0], rows * TILE[1]))
    placed: dict[int, tuple[int, int, int, int]] = {}
    for k, (c, r) in enumerate(cells):
        n = truth[k] if k < len(truth) else rng.choice(fill)
        pic = Image.open(pics / f"{n}.jpg").convert("RGB")
        tile = ImageOps.fit(pic, TILE, Image.Resampling.LANCZOS) if rng.random() < 0.3 else \
            pic.resize(TILE, Image.Resampling.LANCZOS)
        colour = tuple(int(v) for v in target[r, c])
        tile = Image.blend(tile, Image.new("RGB", TILE, colour), rng.uniform(0.3, 0.5))
        box = (c * TILE[0], r * TILE[1], (c + 1) * TILE[0], (r + 1) * TILE[1])
        mosaic.paste(tile, box[:2])
        if k < len(truth):
            placed[n] = box
    buf = io.BytesIO()
    mosaic.save(buf, "JPEG", quality=75)
    (folder / "mosaic.jpg").write_bytes(buf.getvalue())
    decoded = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    refs = folder / "references"
    refs.mkdir(exist_ok=True)
    references = []
    for i, n in enumerate(truth):
        p = refs / f"tile{i:02d}-{n}.png"
        decoded.crop(placed[n]).save(p)
        references.append({"reference": str(p), "truth": str(pics / f"{n}.jpg"),
                           "decoys": [str(pics / f"{m}.jpg") for m in decoys[n]]})
    data = {"version": DATA_VERSION, "count": count, "seed": seed, "folder": str(pics),
            "references": references, "seconds_to_make": round(made, 1)}
    manifest.write_text(json.dumps(data, indent=1))
    return data


# -- the loop (the story's notebook), as a program of its own ------------------------------------
LOOP = r'''
import json, sys
import numpy as np
from PIL import Image
from skimage.metrics import structural_similarity
refs, truths = json.loads(sys.argv[1])
paths = open(sys.argv[2]).read().splitlines()
crops = [np.asarray(Image.open(r).convert("RGB")) for r in refs]
scores = np.empty((len(refs), len(paths)))
for j, p in enumerate(paths):
    current = np.asarray(Image.open(p).resize((72, 62)))
    for i, crop in enumerate(crops):
        scores[i, j] = structural_similarity(current, crop, channel_axis=2)
out = []
for i, t in enumerate(truths):
    k = paths.index(t)
    best = int(np.argmax(scores[i]))
    others = np.delete(scores[i], k)
    out.append({"best": paths[best], "best_score": scores[i, best], "truth_score": scores[i, k],
                "truth_rank": 1 + int((scores[i] > scores[i, k]).sum()), "best_other": float(others.max())})
print(json.dumps(out))
'''


def run_loop(refs: list[str], truths: list[str], listing: Path) -> tuple[float, list[dict]]:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", LOOP, json.dumps([refs, truths]), str(listing)],
                          capture_output=True, text=True, check=True)
    return time.perf_counter() - t, json.loads(proc.stdout)


def run_ours(command: list[str], refs: list[str], folder: str, cache: Path, env: dict) -> tuple[float, dict, str]:
    t = time.perf_counter()
    proc = subprocess.run(command + ["find-similar", *refs, "--in", folder, "--cache", str(cache), "--top", "1",
                                     "--json"], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"photo-escape find-similar failed:\n{proc.stderr}")
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.strip()]
    return seconds, {ln["reference"]: ln for ln in lines if ln.get("rank") == 1}, proc.stderr


def read_all(paths: list[str]) -> None:
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 20):
                pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=20_000, help="pictures in the folder (default 20,000)")
    ap.add_argument("--seed", type=int, default=19, help="draws the data (another seed: a held-out mosaic)")
    ap.add_argument("--references", default="2,24", help="comma-separated reference counts to time (default 2,24)")
    ap.add_argument("--rounds", type=int, default=1, help="timed rounds (the median is reported)")
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "photo-escape-bench-find-similar"),
                    help="where the data is made and kept")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes making the data")
    ap.add_argument("--photo-escape", help="photo-escape's command (default: this checkout's, "
                                           "python -m photo_escape.cli with it first on PYTHONPATH)")
    ap.add_argument("--no-loop", action="store_true", help="time photo-escape only")
    args = ap.parse_args(argv)
    if args.candidates < TRUE * (DECOYS + 1) + 10:
        ap.error(f"--candidates must be at least {TRUE * (DECOYS + 1) + 10}")
    root = Path(args.dir)
    t = time.perf_counter()
    data = make_data(root, args.candidates, args.seed, args.workers)
    print(f"data: {args.candidates:,} candidates of {SIZE[0]} x {SIZE[1]}, seed {args.seed}, in {data['folder']} "
          f"(ready in {time.perf_counter() - t:.0f} s, not timed); load average {os.getloadavg()[0]:.2f}")
    from tasks.similar import folder_pictures

    paths = folder_pictures([data["folder"]])
    read_all(paths)
    listing = root / f"listing-{args.candidates}-seed{args.seed}.txt"
    listing.write_text("\n".join(paths))
    command = shlex.split(args.photo_escape) if args.photo_escape else [sys.executable, "-m", "photo_escape.cli"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    cache = root / f"cache-{os.getpid()}.npz"
    ok = True
    for n_refs in [int(x) for x in args.references.split(",")]:
        chosen = data["references"][:n_refs]
        refs = [r["reference"] for r in chosen]
        truth = {r["reference"]: r["truth"] for r in chosen}
        colds, warms, loops = [], [], []
        ours = loop = None
        loads = []
        for _ in range(args.rounds):
            loads.append(os.getloadavg()[0])
            cache.unlink(missing_ok=True)
            s, ours, _ = run_ours(command, refs, data["folder"], cache, env)
            colds.append(s)
            s, warm_out, _ = run_ours(command, refs, data["folder"], cache, env)
            warms.append(s)
            assert {k: v["path"] for k, v in warm_out.items()} == {k: v["path"] for k, v in ours.items()}
            if not args.no_loop:
                s, loop = run_loop(refs, [truth[r] for r in refs], listing)
                loops.append(s)
        cache.unlink(missing_ok=True)
        cold, warm = statistics.median(colds), statistics.median(warms)
        ours_first = sum(ours[r]["path"] == truth[r] for r in refs)
        print(f"\n{n_refs} references over {args.candidates:,} candidates ({args.rounds} round(s), "
              f"load average {statistics.median(loads):.2f} at the start of each)")
        print(f"  photo-escape find-similar, whole command: cold (no cache) {cold:.2f} s, warm {warm:.2f} s; "
              f"true picture first for {ours_first}/{n_refs}")
        if loops:
            lp = statistics.median(loops)
            loop_first = sum(out["best"] == truth[r] for r, out in zip(refs, loop))
            print(f"  the loop (Image.open().resize((72, 62)), structural_similarity(channel_axis=2)), whole program: "
                  f"{lp:.2f} s; true picture first for {loop_first}/{n_refs}")
            print(f"  ratio loop / photo-escape: cold {lp / cold:.1f}x, warm {lp / warm:.1f}x")
            need = 10 if args.candidates >= 20_000 else 5
            print(f"  targets: cold >= {need}x {'met' if lp / cold >= need else 'NOT met'}; "
                  f"warm < 2 s {'met' if warm < 2 else 'NOT met'}; true picture first at least as often as the loop "
                  f"{'met' if ours_first >= loop_first else 'NOT met'}")
            ok &= ours_first >= loop_first
        else:
            ok &= ours_first == n_refs
        for r, out in zip(refs, loop or [None] * len(refs)):
            o = ours[r]
            line = (f"    {Path(r).name}: photo-escape {'first' if o['path'] == truth[r] else 'MISSED'} "
                    f"score {o['score']:.3f} runner-up {o.get('runner_up_score') or float('nan'):.3f} "
                    f"margin {o.get('margin') or float('nan'):.3f}")
            if out is not None:
                line += (f" | loop: truth ranked {out['truth_rank']}, its score {out['truth_score']:.3f}, "
                         f"best other {out['best_other']:.3f}")
            print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
