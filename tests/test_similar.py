"""find-similar: mosaic tiles find their pictures with a clear margin, many references
at once as well as one; the vectorised SSIM gives skimage's values; thumbnails are
cached (a rerun computes none); the command's output and its progress bar on a
terminal; the story-2 flow records matches and shows its progress in Prefect."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np

from sandbox import photos
from tasks.similar import (Reference, ThumbCache, find_similar, folder_pictures, match_light, rank, scores,
                           shortlists, ssim_batch, thumbnails)

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
    # the run showed its progress in Prefect: a progress artifact of the flow run, at 100%
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

    con = duckdb.connect(job["ledger"], read_only=True)
    flow_run = con.execute("SELECT flow_run_id FROM runs WHERE run_id = ?", [summary["run_id"]]).fetchone()[0]
    con.close()
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run]), type=ArtifactFilterType(any_=["progress"])))
    assert [(a.key, float(a.data)) for a in arts] == [("find-test-progress", 100.0)]


def _pairs_of_real_pictures():
    """Grayscale pairs in [0, 1] of 72 x 62 cut from real photographs: unrelated, the
    same picture tinted and recompressed, and flat or nearly flat ones."""
    def gray(i, size=(72, 62)):
        return np.asarray(photos.picture(i, size).convert("L"), dtype=np.float64) / 255.0

    xs, ys = [], []
    for k in range(12):
        x = gray(400 + k)
        xs.append(x)
        ys.append(gray(500 + k) if k % 2 else np.clip(0.6 * x + 0.3 + 0.02 * np.sin(np.arange(72) / 3), 0, 1))
    xs.append(gray(600))
    ys.append(np.full((62, 72), 0.5))
    return np.stack(xs), np.stack(ys)


def test_vectorised_ssim_is_skimages():
    from skimage.metrics import structural_similarity

    xs, ys = _pairs_of_real_pictures()
    theirs = np.array([structural_similarity(x, y, data_range=1.0) for x, y in zip(xs, ys)])
    ours = ssim_batch(xs, ys, data_range=1.0)
    assert np.abs(ours - theirs).max() < 1e-6
    assert abs(float(ssim_batch(xs[0], ys[0])) - theirs[0]) < 1e-6  # one pair
    matched = match_light(ys, xs)
    theirs = np.array([structural_similarity(x, y, data_range=1.0) for x, y in zip(xs, matched)])
    assert np.abs(ssim_batch(xs, matched) - theirs).max() < 1e-6
    assert theirs[1] > 0.9 or theirs[3] > 0.9 or max(theirs[0::2]) > 0.9  # tinted copies score high


def test_shortlist_scores_are_skimages_ssim_of_the_light_matched_pictures(crowd):
    """The shortlist's scores (float32, light matching applied to window statistics)
    are skimage's SSIM of the reference and each light-matched picture."""
    from skimage.metrics import structural_similarity

    from tasks.similar import _views

    gallery, _ = thumbnails(folder_pictures([crowd["folder"]]), processes=1)
    refs = [Reference(r) for r in crowd["references"][:4]]
    idx, _ = shortlists(refs, gallery.thumbs, 30)
    fast = scores(refs, gallery, idx)
    exact = scores(refs, gallery, idx, exact=30)
    for r, ref in enumerate(refs):
        for slot, i in enumerate(idx[r]):
            views = _views(gallery.details_of(np.array([i]))[0], gallery.dims[i], ref.size)
            theirs = max(structural_similarity(ref.pixels, match_light(v.astype(np.float64)[None], ref.pixels[None])[0],
                                               data_range=1.0) for v in views)
            assert abs(exact[r, slot] - theirs) < 1e-6
            assert abs(fast[r, slot] - theirs) < 1e-5


def test_many_references_at_once(crowd, tmp_path):
    pics = folder_pictures([crowd["folder"]])
    out = find_similar(crowd["references"], pics, top=3, processes=1)
    assert out["stats"]["computed"] == len(pics) == 110 and out["stats"]["failed"] == 0
    for ref, truth in crowd["truth"].items():
        assert out["rankings"][ref][0]["path"] == truth, (ref, out["rankings"][ref])
        assert out["margins"][ref]["best"] == truth and out["margins"][ref]["margin"] > 0.05
    # ranked together or one at a time, each reference gets the same ranking
    gallery, _ = thumbnails(pics, processes=1)
    for ref in crowd["references"][::4]:
        alone, margins = rank([ref], gallery, top=3)
        assert alone[ref] == out["rankings"][ref] and margins[ref] == out["margins"][ref]


def test_progress_is_told_of_every_picture(harvest, tmp_path):
    pics = folder_pictures([harvest["folder"]])
    told = []
    cache = ThumbCache(tmp_path / "c.npz")
    find_similar(harvest["references"], pics, cache=cache, processes=2, progress=told.append)
    assert sum(told) == len(pics)  # the unreadable ones too
    cache.save()
    told.clear()
    find_similar(harvest["references"], pics, cache=ThumbCache(tmp_path / "c.npz"), processes=1, progress=told.append)
    assert sum(told) == len(pics)


def test_the_command_shows_a_progress_bar_on_a_terminal(harvest, tmp_path):
    import os
    import pty

    cmd = [sys.executable, "-m", "photo_escape.cli", "find-similar", str(harvest["references"][0]),
           "--in", str(harvest["folder"]), "--no-cache", "--processes", "1", "--json"]
    import fcntl
    import struct
    import termios

    main, tty = pty.openpty()
    fcntl.ioctl(tty, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal of 100 columns
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=tty, text=True, cwd=ROOT, timeout=180)
        os.close(tty)
        seen = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(main)
    assert proc.returncode == 0
    assert b"thumbnails" in seen and b"62/62" in seen  # tqdm's bar, to the last picture
    assert all(json.loads(x)["reference"] for x in proc.stdout.splitlines())  # stdout stays clean JSON


def test_an_old_or_damaged_cache_is_started_afresh(harvest, tmp_path):
    pics = folder_pictures([harvest["folder"]])
    old = tmp_path / "old.npz"
    np.savez(old, shas=np.array(["x"]), thumbs=np.zeros((1, 32, 32), np.uint8))  # the first version's layout
    out = find_similar(harvest["references"], pics, cache=ThumbCache(old), processes=1)
    assert out["stats"]["computed"] == len(pics)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK not really")
    assert len(ThumbCache(bad)) == 0
