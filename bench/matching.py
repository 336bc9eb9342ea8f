"""Robustness of the album resolver: recall per transform, and false matches on absent queries.

An album of distinct real photographs (crops of scikit-image's and matplotlib's
photographs at their own positions and scales, as ``sandbox.photos.picture(i)``
makes them, no picture showing more than half of another: many
album pictures share a subject, which makes near misses likely), and queries made from them by what
fooled the State Library's first attempt: resize, JPEG recompression, tint, colour
correction, sepia, darkening, gamma, border crops up to 10% per side, zoom,
horizontal flip (and ``combo``: two of these at once, reported apart). Absent
queries are other pictures, transformed the same way, that are not in the album.

For each query the resolver's verdict is compared with the truth:

* recall (per transform and overall) = present queries resolved ``match`` to the
  right album picture; ``ambiguous`` and ``not_in_album`` count as misses, a match
  to the wrong picture counts as a false match;
* false-match rate = absent queries resolved ``match`` (to anything).

The peer is the State Library's first attempt in the same run: a single phash with
the threshold of 13 out of 64 (best candidate within 13 = match).

    .venv/bin/python bench/matching.py            # quick: one album of 120, 15 queries per transform
    .venv/bin/python bench/matching.py --full     # recorded: 4 albums of 100, 15 per transform, the rest absent
    .venv/bin/python bench/matching.py --dump out.jsonl   # every query's distances and scores
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandbox import photos  # noqa: E402
from tasks.hashing import hash_image  # noqa: E402
from tasks.resolve import Album, resolve_many  # noqa: E402


# -- the transforms (each takes the upright picture and a seeded RNG) ----------------------------
def resize(img, rng):
    s = rng.uniform(0.2, 0.6)
    return img.resize((max(16, int(img.width * s)), max(16, int(img.height * s))),
                      rng.choice([Image.Resampling.LANCZOS, Image.Resampling.BILINEAR, Image.Resampling.BOX]))


def jpeg(img, rng):
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=rng.randint(12, 40))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def tint(img, rng):
    a = np.asarray(img.convert("RGB"), dtype=np.float64)
    gains = np.array([rng.uniform(0.7, 1.3) for _ in range(3)])
    shift = np.array([rng.uniform(-25, 25) for _ in range(3)])
    return Image.fromarray(np.clip(a * gains + shift, 0, 255).astype(np.uint8))


def colour(img, rng):
    img = ImageEnhance.Color(img.convert("RGB")).enhance(rng.uniform(0.2, 1.8))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.7, 1.4))
    return ImageOps.autocontrast(img, cutoff=rng.uniform(0, 3)) if rng.random() < 0.5 else img


def sepia(img, rng):
    a = np.asarray(img.convert("RGB"), dtype=np.float64)
    m = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])
    out = a @ m.T * rng.uniform(0.8, 1.0)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def darken(img, rng):
    return ImageEnhance.Brightness(img.convert("RGB")).enhance(rng.uniform(0.3, 0.7))


def gamma(img, rng):
    g = rng.choice([rng.uniform(0.45, 0.75), rng.uniform(1.4, 2.2)])
    a = np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0
    return Image.fromarray((np.power(a, g) * 255).astype(np.uint8))


def crop(img, rng):
    w, h = img.size
    l, r, t, b = (rng.uniform(0, 0.10) for _ in range(4))
    return img.crop((int(w * l), int(h * t), int(w * (1 - r)), int(h * (1 - b))))


def zoom(img, rng):
    z = rng.uniform(1.08, 1.25)
    w, h = img.size
    cw, ch = w / z, h / z
    cx, cy = w / 2 + rng.uniform(-0.02, 0.02) * w, h / 2 + rng.uniform(-0.02, 0.02) * h
    box = (int(cx - cw / 2), int(cy - ch / 2), int(cx + cw / 2), int(cy + ch / 2))
    return img.crop(box).resize((w, h), Image.Resampling.BICUBIC)


def flip(img, rng):
    return ImageOps.mirror(img)


TRANSFORMS = {f.__name__: f for f in (resize, jpeg, tint, colour, sepia, darken, gamma, crop, zoom, flip)}


def combo(img, rng):
    a, b = rng.sample(sorted(TRANSFORMS), 2)
    return TRANSFORMS[b](TRANSFORMS[a](img, rng), rng)


# -- hashing the pictures as files would be hashed ----------------------------------------------
def as_file_hash(img: Image.Image, quality: int = 90) -> dict:
    """Save as JPEG in memory and hash it the way hash_file does."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return hash_image(Image.open(io.BytesIO(buf.getvalue())))


EXTRA_BASES = ("brick", "grass", "gravel", "clock", "cell", "page", "text", "microaneurysms",
               "grace_hopper", "present")


def base_photo(name: str) -> np.ndarray:
    """A real photograph as RGB uint8: sandbox.photos' twelve, plus a few more from
    scikit-image and matplotlib's sample data (all shipped with the packages)."""
    if name in photos.BASES:
        return photos.base(name)
    if name in ("grace_hopper", "present"):
        from matplotlib import cbook

        fname = "grace_hopper.jpg" if name == "grace_hopper" else "Minduka_Present_Blue_Pack.png"
        img = np.asarray(Image.open(cbook.get_sample_data(fname)).convert("RGB"))
    else:
        import skimage.data as data

        img = data.clock() if name == "clock" else getattr(data, name)()
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        img = img[..., :3]
    return np.ascontiguousarray(img.astype(np.uint8))


def _overlap(a: tuple, b: tuple) -> float:
    """How much of the smaller of two crop boxes lies inside the other (0..1)."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return ix * iy / min(area(a), area(b))


def distinct_pictures(count: int, seed: int, max_overlap: float = 0.5):
    """``count`` pictures, each a crop (35-70% of the side, as sandbox.photos.picture
    makes them) of a real photograph at its own position and scale, none
    showing more than ``max_overlap`` of another crop of the same photograph (or
    the other way round): different pictures of the same subject, as an album has
    them, but never the same picture twice, nor a zoomed-in part of another, nor
    (since a flip must match) the mirror-image position of another: the two halves
    of a symmetric subject (a clock face, a retina) mirror each other.
    Yields (name, PIL image)."""
    bases = [b for b in (*photos.BASES, *EXTRA_BASES) if b != "motorcycle_right"]  # a stereo twin
    arrays = {b: base_photo(b) for b in bases}
    taken: dict[str, list[tuple]] = {b: []for b in bases}
    rng = random.Random(seed)
    made, tries = 0, 0
    while made < count and tries < count * 200:
        tries += 1
        b = bases[tries % len(bases)]
        img = arrays[b]
        h, w = img.shape[:2]
        size = rng.choice([(640, 480)] * 3 + [(480, 640), (560, 560), (720, 405)])
        aspect = size[0] / size[1]
        frac = rng.uniform(0.35, 0.7)
        ch = int(h * frac)
        cw = min(w, int(ch * aspect))
        ch = min(h, int(cw / aspect))
        y, x = rng.randint(0, h - ch), rng.randint(0, w - cw)
        box = (x, y, x + cw, y + ch)
        mirrored = (w - box[2], box[1], w - box[0], box[3])  # the same region seen in a mirror
        if any(max(_overlap(box, other), _overlap(mirrored, other)) > max_overlap for other in taken[b]):
            continue
        taken[b].append(box)
        made += 1
        yield f"{b}@{x},{y},{cw}x{ch}", Image.fromarray(img[y:y + ch, x:x + cw]).resize(size, Image.Resampling.LANCZOS)


def picture_pool(count: int, seed: int) -> list[tuple[str, Image.Image]]:
    """Distinct pictures: the crops of :func:`distinct_pictures` and the 100 small
    photographs of faces (25x25) of scikit-image's ``lfw_subset``, enlarged,
    shuffled together. (Its other 100 are featureless patches, not photographs.)"""
    import skimage.data as data

    crops = list(distinct_pictures(count, seed))
    faces = data.lfw_subset()
    extra = [(f"lfw{i}", Image.fromarray((np.clip(f, 0, 1) * 255).astype(np.uint8)).convert("RGB")
              .resize((400, 400), Image.Resampling.BICUBIC)) for i, f in enumerate(faces[:100])]
    pool = crops + extra
    random.Random(seed).shuffle(pool)
    return pool[:count]


def library_phash_peer(q: dict, album: list[dict], threshold: int = 13) -> tuple[str, str | None]:
    """The first attempt: best single-phash distance (out of 64) within 13 is a match."""
    qp = int(q["phash"], 16)
    ds = [(int(c["phash"], 16) ^ qp).bit_count() for c in album]
    i = int(np.argmin(ds))
    return ("match", album[i]["id"]) if ds[i] <= threshold else ("not_in_album", None)


def one_round(seed: int, n_album: int, per: int, n_absent: int, edits_per_absent: int) -> dict:
    """One album and its queries: every present and absent query's verdict."""
    rng = random.Random(seed)
    t0 = time.perf_counter()
    pool = picture_pool(n_album + n_absent, seed)
    album_imgs = dict(pool[:n_album])
    absent_imgs = [img for _, img in pool[n_album:]]
    absent_names = [name for name, _ in pool[n_album:]]
    album = [{"id": k, **as_file_hash(v)} for k, v in album_imgs.items()]
    packed = Album(album)
    keys = list(album_imgs)
    queries, truth, kinds, sources = [], [], [], []
    for name, fn in [*TRANSFORMS.items(), ("combo", combo)]:
        for k in rng.sample(keys, min(per, len(keys))):
            queries.append(as_file_hash(fn(album_imgs[k], rng)))
            truth.append(k)
            kinds.append(name)
            sources.append(k)
    for src, img in zip(absent_names, absent_imgs):
        for name in rng.sample(sorted(TRANSFORMS), edits_per_absent):
            queries.append(as_file_hash(TRANSFORMS[name](img, rng)))
            truth.append(None)
            kinds.append("absent:" + name)
            sources.append(src)
    t_hash = time.perf_counter() - t0
    t1 = time.perf_counter()
    results = resolve_many(queries, packed, limit=5)
    t_resolve = time.perf_counter() - t1
    peer = [library_phash_peer(q, album) for q in queries]
    return {"album": n_album, "absent_pictures": len(absent_imgs), "queries": queries, "truth": truth,
            "kinds": kinds, "sources": sources, "results": results, "peer": peer, "t_hash": t_hash, "t_resolve": t_resolve}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="the recorded size")
    ap.add_argument("--rounds", type=int, help="albums, each from its own seed (default 1; --full 4)")
    ap.add_argument("--album", type=int, help="album size")
    ap.add_argument("--per-transform", type=int, help="present queries per transform and album")
    ap.add_argument("--absent", type=int, help="absent pictures per album (each edited twice)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--dump", help="write every query's result as JSON lines here")
    args = ap.parse_args(argv)
    rounds = args.rounds or (4 if args.full else 1)
    n_album = args.album or (100 if args.full else 120)
    per = args.per_transform or (15 if args.full else 15)
    n_absent = args.absent or (200 if args.full else 60)

    per_kind: dict[str, list[int]] = {}
    peer_hits: dict[str, list[int]] = {}
    wrong = absent_fm = peer_fm = n_abs_q = n_abs_pics = 0
    verdicts: dict[str, int] = {}
    t_hash = t_resolve = 0.0
    dump = open(args.dump, "w") if args.dump else None
    for r in range(rounds):
        out = one_round(args.seed + 1000 * r, n_album, per, n_absent, edits_per_absent=2)
        t_hash += out["t_hash"]
        t_resolve += out["t_resolve"]
        n_abs_pics += out["absent_pictures"]
        for res, t, kind, src, (pv, pb) in zip(out["results"], out["truth"], out["kinds"], out["sources"], out["peer"]):
            verdicts[res["verdict"]] = verdicts.get(res["verdict"], 0) + 1
            if dump:
                dump.write(json.dumps({"round": r, "kind": kind, "source": src, "truth": t, **{k: res[k] for k in (
                    "verdict", "best", "distance", "runner_up_distance", "rerank", "candidates")}}) + "\n")
            if t is None:
                n_abs_q += 1
                absent_fm += res["verdict"] == "match"
                peer_fm += pv == "match"
                continue
            per_kind.setdefault(kind, []).append(int(res["verdict"] == "match" and res["best"] == t))
            wrong += res["verdict"] == "match" and res["best"] != t
            peer_hits.setdefault(kind, []).append(int(pv == "match" and pb == t))
    if dump:
        dump.close()

    main_kinds = [k for k in per_kind if k != "combo"]
    overall = sum(sum(per_kind[k]) for k in main_kinds) / sum(len(per_kind[k]) for k in main_kinds)
    peer_overall = sum(sum(peer_hits[k]) for k in main_kinds) / sum(len(peer_hits[k]) for k in main_kinds)
    n_present = sum(len(v) for v in per_kind.values())
    print(f"{rounds} album(s) of {n_album} pictures; {n_present} present queries ({per} per transform and album), "
          f"{n_abs_q} absent queries ({n_abs_pics} pictures not in the album, 2 edits each); "
          f"hashing {t_hash:.1f} s, resolving {t_resolve:.1f} s ({t_resolve / (n_present + n_abs_q) * 1000:.0f} ms a query)")
    print(f"{'transform':<10} {'recall':>7} {'peer':>7}")
    for k in per_kind:
        print(f"{k:<10} {np.mean(per_kind[k]):7.3f} {np.mean(peer_hits[k]):7.3f}")
    print(f"overall recall (all transforms but combo): {overall:.3f}   peer (phash <= 13 of 64): {peer_overall:.3f}")
    print(f"matched to the wrong album picture: {wrong}")
    print(f"false matches on absent queries: {absent_fm}/{n_abs_q} = {absent_fm / max(1, n_abs_q):.4f}   "
          f"peer: {peer_fm}/{n_abs_q} = {peer_fm / max(1, n_abs_q):.4f}")
    print("verdicts:", json.dumps(verdicts, sort_keys=True))
    ok = overall >= 0.95 and absent_fm == 0 and wrong == 0
    print("targets (recall >= 0.95, no false match):", "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
