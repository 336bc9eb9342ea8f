"""The hashing engine: upright hashes whatever the EXIF orientation, close to imagehash,
and a clear reason code (never a traceback) for every kind of bad file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageOps

from sandbox import photos
from tasks.hashing import HASH_VERSION, THUMB_SIZE, hash_file, hash_files, thumb_array

ROOT = Path(__file__).resolve().parent.parent


def hamming(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def test_every_exif_orientation_hashes_alike(tmp_path):
    paths = [photos.write_jpeg(tmp_path / f"o{k}.jpg", picture="chelsea", orientation=k, size=(600, 400))
             for k in range(1, 9)]
    recs = hash_files(paths, processes=1)
    assert all(r["status"] == "ok" for r in recs)
    assert {(r["width"], r["height"]) for r in recs} == {(600, 400)}
    base = recs[0]
    for r in recs[1:]:
        assert hamming(r["phash"], base["phash"]) <= 2, r["path"]
        assert hamming(r["dhash"], base["dhash"]) <= 2, r["path"]


def test_close_to_imagehash_on_the_full_size_upright_image(tmp_path):
    """Our reduced-size decode against imagehash on the full-size, upright decode:
    mean Hamming distance at most 1.5 bits of 64 for phash and for dhash (over 12
    real photographs of 1600x1200, stored with orientations 1, 3, 6, 8)."""
    dp, dd, dpm = [], [], []
    for i in range(12):
        p = photos.write_jpeg(tmp_path / f"{i}.jpg", i, size=(1600, 1200), orientation=(1, 3, 6, 8)[i % 4])
        rec = hash_file(p)
        full = ImageOps.exif_transpose(Image.open(p))
        dp.append(hamming(rec["phash"], str(imagehash.phash(full))))
        dd.append(hamming(rec["dhash"], str(imagehash.dhash(full))))
        dpm.append(hamming(rec["phash_mirror"], str(imagehash.phash(ImageOps.mirror(full)))))
    assert np.mean(dp) <= 1.5 and max(dp) <= 6, dp
    assert np.mean(dd) <= 1.5 and max(dd) <= 6, dd
    assert np.mean(dpm) <= 1.5, dpm


def test_record_shape(tmp_path):
    p = photos.write_jpeg(tmp_path / "a.jpg", picture="coffee", size=(320, 240))
    rec = hash_file(p)
    assert rec["status"] == "ok" and rec["error"] is None and rec["format"] == "JPEG"
    assert rec["hash_version"] == HASH_VERSION
    for k in ("phash", "dhash", "phash_mirror", "dhash_mirror"):
        assert len(rec[k]) == 16 and int(rec[k], 16) >= 0
    assert thumb_array(rec["thumb"]).shape == (THUMB_SIZE, THUMB_SIZE)
    import hashlib

    assert rec["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    assert rec["bytes"] == p.stat().st_size


def test_mirrored_hashes_are_the_mirror_images_hashes(tmp_path):
    img = photos.picture("astronaut", (480, 360))
    a = photos.write_jpeg(tmp_path / "a.jpg", image=img)
    b = photos.write_jpeg(tmp_path / "b.jpg", image=ImageOps.mirror(img))
    ra, rb = hash_file(a), hash_file(b)
    assert hamming(ra["phash_mirror"], rb["phash"]) <= 3
    assert hamming(ra["dhash_mirror"], rb["dhash"]) <= 3
    assert hamming(ra["phash"], rb["phash"]) > 10


@pytest.mark.parametrize("kind", ["truncated", "empty", "not_an_image", "too_large", "too_large_header", "corrupt"])
def test_bad_files_get_a_reason(hostile_files, kind):
    rec = hash_file(hostile_files[kind])
    assert rec["status"] == "error"
    assert rec["error"] == kind.replace("_header", "")
    assert rec["message"]
    assert rec["phash"] is None
    assert rec["sha256"] and len(rec["sha256"]) == 64  # readable, so its content is still identified


def test_missing_file_and_directory_are_unreadable(tmp_path):
    assert hash_file(tmp_path / "nope.jpg")["error"] == "unreadable"
    assert hash_file(tmp_path)["error"] == "unreadable"


def test_pool_keeps_order_and_survives_bad_files(hostile_files, tmp_path):
    good = [photos.write_jpeg(tmp_path / f"g{i}.jpg", i, size=(200, 150)) for i in range(5)]
    paths = [good[0], *hostile_files.values(), *good[1:]]
    recs = hash_files(paths, processes=2, chunk=2)
    assert [r["path"] for r in recs] == [str(p) for p in paths]
    assert [r["status"] for r in recs] == ["ok"] + ["error"] * len(hostile_files) + ["ok"] * 4
    assert recs[0]["phash"] == hash_file(good[0])["phash"]


def test_hash_command_prints_json_without_importing_prefect(hostile_files, tmp_path):
    """``photo-escape hash`` on good and bad files: exit 0, one JSON line each, and
    Prefect never imported (it must start fast)."""
    good = photos.write_jpeg(tmp_path / "good.jpg", 2, size=(300, 200))
    script = (
        "import sys; from photo_escape.cli import main; rc = main(sys.argv[1:]); "
        "sys.stdout.flush(); print('PREFECT_LOADED' if any(m == 'prefect' or m.startswith('prefect.') "
        "for m in sys.modules) else 'PREFECT_ABSENT', file=sys.stderr); sys.exit(rc)"
    )
    args = ["hash", "--json", "--processes", "1", str(good), *map(str, hostile_files.values())]
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "PREFECT_ABSENT" in proc.stderr and "Traceback" not in proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 1 + len(hostile_files)
    assert lines[0]["status"] == "ok" and len(lines[0]["phash"]) == 16
    for line in lines:
        assert {"path", "status", "error", "sha256", "phash", "dhash", "width", "height"} <= set(line)
    assert [line["error"] for line in lines[1:]] == [k.replace("_header", "") for k in hostile_files]


def test_hash_command_walks_a_directory(tmp_path):
    for i in range(3):
        photos.write_jpeg(tmp_path / "d" / f"{i}.JPG", i, size=(120, 90))
    (tmp_path / "d" / "notes.txt").write_text("not a photo")
    proc = subprocess.run([sys.executable, "-m", "photo_escape.cli", "hash", "--json", str(tmp_path / "d")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [Path(x["path"]).name for x in lines] == ["0.JPG", "1.JPG", "2.JPG"]
    assert all(x["status"] == "ok" for x in lines)


@pytest.mark.parametrize("head", [b"IIRO\x08\x00\x00\x00", b"IIU\x00\x08\x00\x00\x00", b"\x00\x00\x00\x18ftypcrx ",
                                  b"\x00\x00\x00\x0cJXL \r\n\x87\n"], ids=["orf", "rw2", "cr3", "jxl"])
def test_what_the_downloader_takes_for_an_image_the_hasher_calls_corrupt_not_no_image(tmp_path, head):
    """One sniffer: a file whose first bytes the downloader accepts as an image (ORF, RW2,
    CR3, JPEG XL here) and that does not decode is ``corrupt`` for the hasher, as a
    broken JPEG is; only bytes no image starts with are ``not_an_image``."""
    from tasks.download import Downloader

    path = tmp_path / "x.raw"
    path.write_bytes(head + bytes(range(256)) * 4)
    assert Downloader._check_head(path.read_bytes()[:16], None)
    rec = hash_file(path)
    assert (rec["status"], rec["error"]) == ("error", "corrupt"), rec


def test_hash_and_capture_time_walk_the_same_photos(tmp_path):
    """One suffix set: a folder walked by ``hash`` and by ``capture-time`` gives both the
    same files, RAW (which ``hash`` used to pass over) and GIF/BMP (which ``capture-time``
    did) included; a RAW's TIFF structure is hashed like any TIFF."""
    from photo_escape.commands.capture_time import expand
    from sandbox.s3 import write_raw
    from tasks.hashing import image_files

    folder = tmp_path / "mixed"
    jpg = photos.write_jpeg(folder / "IMG_1.JPG", 1, size=(120, 90))
    nef = write_raw(folder / "IMG_2.NEF", 2)
    gif, bmp = folder / "scan.gif", folder / "old.BMP"
    photos.picture(3, (64, 48)).save(gif)
    photos.picture(4, (64, 48)).save(bmp)
    (folder / "notes.txt").write_text("not a photo")
    walked = sorted(map(str, (jpg, nef, gif, bmp)))
    assert sorted(image_files([folder])) == walked
    assert sorted(expand([str(folder)])) == walked
    assert [r["status"] for r in hash_files([str(nef)], processes=1)] == ["ok"]
