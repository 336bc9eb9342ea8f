"""find-similar: mosaic tiles find their pictures with a clear margin; thumbnails are
cached (a rerun computes none); the command's output; the story-2 flow records matches."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb

from tasks.similar import ThumbCache, find_similar, folder_pictures

ROOT = Path(__file__).resolve().parent.parent


def test_each_tile_finds_its_picture_with_a_margin(harvest, tmp_path):
    cache = ThumbCache(tmp_path / "thumbs.npz")
    out = find_similar(harvest["references"], folder_pictures([harvest["folder"]]), top=3, cache=cache, processes=1)
    for ref, truth in harvest["truth"].items():
        ranking = out["rankings"][ref]
        assert ranking[0]["path"] == truth, ranking
        assert [r["rank"] for r in ranking] == [1, 2, 3]
        m = out["margins"][ref]
        assert m["best"] == truth and m["best_score"] > 0.5
        assert m["margin"] > 0.2, m   # the story: 0.63 / 0.69 against < 0.48
    assert out["stats"]["failed"] == 2 and set(out["stats"]["failures"].values()) == {"empty", "not_an_image"}


def test_thumbnails_are_computed_once(harvest, tmp_path):
    pics = folder_pictures([harvest["folder"]])
    cache_path = tmp_path / "thumbs.npz"
    cache = ThumbCache(cache_path)
    first = find_similar(harvest["references"][:1], pics, cache=cache, processes=1)
    assert first["stats"]["computed"] == len(pics) and first["stats"]["from_cache"] == 0
    cache.save()
    second = find_similar(harvest["references"], pics, cache=ThumbCache(cache_path), processes=1)
    assert second["stats"]["from_cache"] == len(pics) - 2 and second["stats"]["computed"] == 2  # the broken ones
    ref = str(harvest["references"][0])
    assert second["rankings"][ref][0]["path"] == harvest["truth"][ref]


def test_find_similar_command(harvest, tmp_path):
    cache = tmp_path / "c.npz"
    cmd = [sys.executable, "-m", "photo_escape.cli", "find-similar", *map(str, harvest["references"]),
           "--in", str(harvest["folder"]), "--top", "2", "--cache", str(cache), "--json"]
    runs = [subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=180) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    assert cache.exists()
    assert "60 thumbnails from the cache, 2 computed" in runs[1].stderr
    lines = [json.loads(x) for x in runs[1].stdout.splitlines()]
    assert len(lines) == 4
    for line in lines:
        assert {"reference", "rank", "path", "score"} <= set(line)
    firsts = [x for x in lines if x["rank"] == 1]
    assert {x["reference"]: x["path"] for x in firsts} == harvest["truth"]
    assert all(x["margin"] > 0.2 and x["score"] - x["margin"] == x["runner_up_score"] or
               abs(x["score"] - x["margin"] - x["runner_up_score"]) < 1e-3 for x in firsts)


def test_find_my_photo_flow_records_matches(harvest, tmp_path, prefect_harness):
    from flows.find_my_photo import find_my_photo

    job = {"name": "find-test", "ledger": str(tmp_path / "l.duckdb"), "folder": str(harvest["folder"]),
           "references": [str(r) for r in harvest["references"]], "top": 3, "batch_size": 25, "processes": 1,
           "cache": str(tmp_path / "thumbs.npz"), "reports_dir": str(tmp_path / "reports")}
    summary = find_my_photo(job)
    assert summary["listed"] == 2 and summary["done"] == 2 and summary["failed"] == 0
    assert summary["unreadable"] == 2 and summary["pictures"] == 62
    for ref, truth in harvest["truth"].items():
        assert summary["rankings"][ref][0]["path"] == truth
        assert summary["margins"][ref]["margin"] > 0.2
    again = find_my_photo(job)
    assert again["thumbnails_computed"] == 0
    con = duckdb.connect(job["ledger"], read_only=True)
    rows = con.execute("SELECT query, candidate, rank, chosen, method FROM matches WHERE run_id = ? ORDER BY query, rank",
                       [summary["run_id"]]).fetchall()
    con.close()
    assert len(rows) == 6 and all(r[4] == "ssim" for r in rows)
    chosen = {r[0]: r[1] for r in rows if r[3]}
    assert chosen == {f"reference:{Path(k).name}": v for k, v in harvest["truth"].items()}
