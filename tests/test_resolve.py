"""The album resolver: match through edits and a mirror, not_in_album, ambiguity,
the ledger cache (a second run decodes nothing) and the command's output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from sandbox import photos
from tasks.hashing import hash_file, hash_files, hash_files_cached
from tasks.resolve import distance, resolve, resolve_many
from tests.fixtures.matching import save_variant

ROOT = Path(__file__).resolve().parent.parent


def album_records(album: dict[str, Path]) -> list[dict]:
    recs = hash_files(list(album.values()), processes=1)
    return [{**r, "id": k} for k, r in zip(album, recs)]


def sepia(img: Image.Image) -> Image.Image:
    a = np.asarray(img.convert("RGB"), dtype=np.float64)
    m = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])
    return Image.fromarray(np.clip(a @ m.T, 0, 255).astype(np.uint8))


def test_distance_scale_and_mirror(album, tmp_path):
    a = hash_file(album["p03"])
    flipped = hash_file(save_variant(ImageOps.mirror(Image.open(album["p03"])), tmp_path / "f.jpg"))
    other = hash_file(album["p07"])
    assert distance(a, a) == 0
    assert distance(a, flipped) <= 6            # the mirrored hashes make a flip near 0
    assert 30 <= distance(a, other) <= 128      # out of 128 (phash + dhash)


def test_mirrored_and_edited_copies_match(album, tmp_path):
    cands = album_records(album)
    src = Image.open(album["p04"]).convert("RGB")
    w, h = src.size
    edits = {
        "flip": ImageOps.mirror(src),
        "sepia": sepia(src),
        "darker": ImageEnhance.Brightness(src).enhance(0.5),
        "small": src.resize((w // 4, h // 4)),
        "cropped": src.crop((int(w * 0.08), int(h * 0.05), int(w * 0.93), int(h * 0.9))),
        "flipped_tinted_crop": ImageOps.mirror(ImageEnhance.Color(src).enhance(0.4)).crop((20, 10, w - 15, h - 25)),
    }
    for name, img in edits.items():
        res = resolve(hash_file(save_variant(img, tmp_path / f"{name}.jpg", quality=70)), cands)
        assert res["verdict"] == "match" and res["best"] == "p04", (name, res["verdict"], res["best"], res["rerank"])
        assert [c["rank"] for c in res["candidates"]] == list(range(1, len(cands) + 1))
        assert res["candidates"][0]["distance"] == res["distance"]


def test_a_picture_not_in_the_album(album, tmp_path):
    cands = album_records(album)
    for i, pic in enumerate((77, "immunohistochemistry", 151)):  # other pictures, or other crops
        q = hash_file(photos.write_jpeg(tmp_path / f"absent{i}.jpg", picture=pic, size=(400, 300)))
        res = resolve(q, cands)
        assert res["verdict"] == "not_in_album", res
        assert res["best"] is None
        assert res["distance"] > 10 and res["runner_up_distance"] >= res["distance"]


def test_two_copies_of_one_picture_are_ambiguous(album, tmp_path):
    """Two album entries of the same picture (say a master and its access copy):
    too close to call, so the verdict is ambiguous and the rerank says by how much."""
    twin = save_variant(Image.open(album["p02"]), tmp_path / "twin.jpg", quality=60)
    cands = album_records({**album, "p02-copy": twin})
    q = hash_file(save_variant(ImageEnhance.Contrast(Image.open(album["p02"])).enhance(1.2), tmp_path / "q.jpg"))
    res = resolve(q, cands)
    assert res["verdict"] == "ambiguous", res
    assert res["best"] in ("p02", "p02-copy")
    rr = res["rerank"]
    assert {rr["winner"], rr["runner_up"]} == {"p02", "p02-copy"}
    assert rr["margin"] < 0.05 and rr["score"] > 0.9


def test_unreadable_candidates_are_left_out_and_bad_queries_say_why(album, hostile_files):
    cands = album_records(album) + [{**hash_file(hostile_files["truncated"]), "id": "broken"}]
    res = resolve(hash_file(album["p01"]), cands)
    assert res["verdict"] == "match" and res["best"] == "p01"
    assert "broken" not in {c["id"] for c in res["candidates"]}
    bad = resolve_many([hash_file(hostile_files["empty"])], cands)[0]
    assert bad["verdict"] == "not_in_album" and bad["error"] == "empty"


def test_the_ledger_cache_means_a_second_run_decodes_nothing(album, tmp_path):
    ledger = tmp_path / "ledger.duckdb"
    paths = list(album.values())
    first, s1 = hash_files_cached(paths, ledger, processes=1)
    second, s2 = hash_files_cached(paths, ledger, processes=1)
    assert s1["hashed"] == len(paths) and s1["from_cache"] == 0
    assert s2["hashed"] == 0 and s2["from_cache"] == len(paths)
    for a, b in zip(first, second):
        assert {k: a[k] for k in ("sha256", "phash", "dhash", "phash_mirror", "dhash_mirror", "width", "height", "thumb")} \
            == {k: b[k] for k in ("sha256", "phash", "dhash", "phash_mirror", "dhash_mirror", "width", "height", "thumb")}
    import duckdb

    con = duckdb.connect(str(ledger), read_only=True)
    assert con.execute("SELECT count(*) FROM assets WHERE phash IS NOT NULL AND thumb IS NOT NULL").fetchone()[0] == len(paths)
    con.close()


def test_resolve_command(album, tmp_path, hostile_files):
    q = save_variant(ImageOps.mirror(Image.open(album["p06"])), tmp_path / "q" / "flipped.jpg")
    absent = photos.write_jpeg(tmp_path / "q" / "absent.jpg", picture="coffee", size=(300, 200))
    ledger = tmp_path / "l.duckdb"
    cmd = [sys.executable, "-m", "photo_escape.cli", "resolve", str(q), str(absent), str(hostile_files["empty"]),
           "--album", str(album["p00"].parent), "--ledger", str(ledger), "--json"]
    runs = [subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=180) for _ in range(2)]
    for proc in runs:
        assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in runs[1].stdout.splitlines()]
    assert [x["query"] for x in lines] == [str(q), str(absent), str(hostile_files["empty"])]
    flipped, missing, broken = lines
    assert flipped["verdict"] == "match" and flipped["best"] == str(album["p06"])
    assert len(flipped["candidates"]) == len(album)
    assert {"query", "verdict", "best", "distance", "runner_up_distance", "candidates"} <= set(flipped)
    assert missing["verdict"] == "not_in_album" and missing["best"] is None
    assert broken["status"] == "error" and broken["error"] == "empty"
    n = len(album) + 2  # the album and the two good queries; the empty file is never cached
    assert f"{n + 1} files decoded (1 of them unreadable), 0 from the ledger cache" in runs[0].stderr
    assert f"1 files decoded (1 of them unreadable), {n} from the ledger cache" in runs[1].stderr


def test_chunk_index_radius_search_is_exact():
    """Multi-index hashing finds exactly what a full scan finds within the radius."""
    from tasks.resolve import Album, ChunkIndex

    rng = np.random.default_rng(3)
    n = 5000
    P = rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True)
    D = rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True)
    cands = [{"id": str(i), "phash": f"{int(p):016x}", "dhash": f"{int(d):016x}"} for i, (p, d) in enumerate(zip(P, D))]
    album = Album(cands)
    index = ChunkIndex(album)
    for j in range(30):
        base = cands[int(rng.integers(n))]
        flipped = int(base["phash"], 16) ^ sum(1 << int(b) for b in rng.choice(64, int(rng.integers(0, 14)), replace=False))
        q = {"phash": f"{flipped:016x}", "dhash": base["dhash"],
             "phash_mirror": f"{int(rng.integers(0, 2**63)):016x}", "dhash_mirror": base["dhash"]}
        for radius in (7, 15, 23, 31):
            ids, dist = index.within(q, radius)
            full = album.distances(q)
            expect = np.flatnonzero(full <= radius)
            assert sorted(ids.tolist()) == sorted(expect.tolist())
            assert all(full[i] == d for i, d in zip(ids, dist))
            assert list(dist) == sorted(dist)
