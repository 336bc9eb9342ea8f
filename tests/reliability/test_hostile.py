"""Hostile and broken input: every file ends as a recorded outcome, quickly; nothing escapes.

The corpus (:mod:`sandbox.hostile`) goes through ``photo-escape hash``,
``photo-escape capture-time`` and the escape flow (local folder to local folder);
remote names with ``../``, encoded slashes and absolute paths go through the web
source's name mapping (:class:`sandbox.hostile.HostileSite` served on 127.0.0.1).
Each test has a time limit: a hang is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pytest

from photo_escape.layout import render, safe_relpath
from sandbox import hostile
from sandbox.server import serve
from tasks.download import NameBook, safe_name
from tests.fixtures.reliability import escape_job, json_lines, photo_files, run_cli

HASH_REASONS = {"empty", "truncated", "corrupt", "not_an_image", "too_large", "unreadable"}
# what the escape flow must make of each regular file of the corpus: (status, stage, reasons)
FLOW_EXPECT = {
    "good": ("done",), "exif_loop": ("done",), "exif_counts": ("done",), "png_as_jpg": ("done",),
    "jpg_as_png": ("done",), "non_utf8": ("done",), "control_chars": ("done",),
    "truncated": ("failed", "hash", {"truncated"}), "zero": ("failed", "hash", {"empty"}),
    "html": ("failed", "hash", {"not_an_image"}), "bomb": ("failed", "hash", {"too_large"}),
    "huge_header": ("failed", "hash", {"too_large"}),
    "tiff_broken": ("failed", "hash", {"corrupt", "truncated"}),
    "tiff_eof": ("failed", "hash", {"corrupt", "truncated"}),
    "tiff_loop": ("failed", "hash", {"corrupt", "truncated"}),
    "oversized": ("failed", "fetch", {"too_large"}),
}
ESCAPE_MARK = "pe-escape"


def _tree(root: Path) -> dict[bytes, tuple[int, int]]:
    """Every entry under ``root`` (bytes paths) with its size and mtime, symlinks not followed."""
    out = {}
    for dirpath, dirs, files in os.walk(os.fsencode(root)):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[p] = (st.st_size, st.st_mtime_ns)
    return out


def _no_escapes() -> list[str]:
    """Files a traversal would have created outside every folder we gave."""
    found = []
    for folder in ("/tmp", "/etc", "/", str(Path.cwd()), str(Path.home())):
        try:
            found += [os.path.join(folder, n) for n in os.listdir(folder) if ESCAPE_MARK in n]
        except OSError:
            pass
    return found


@pytest.mark.timeout(120)
def test_hash_command_gives_every_file_a_reason(hostile_corpus, tmp_path):
    cases = hostile_corpus["files"]
    paths = [os.fsdecode(c.path) for c in cases.values()]
    out = run_cli(["hash", *paths, "--json", "--processes", "1"], dict(os.environ), timeout=100)
    assert out.returncode == 0, out.stderr[-2000:]
    assert b"Traceback" not in out.stderr
    lines = {rec["path"]: rec for rec in json_lines(out.stdout)}
    for key, case in cases.items():
        rec = lines[case.text_path]
        want = case.hash.split("|")
        if want == ["ok"]:
            assert rec["status"] == "ok" and rec["phash"] and rec["sha256"], (key, rec)
        else:
            assert rec["status"] == "error" and rec["error"] in HASH_REASONS, (key, rec)
            if key in ("zero", "html", "bomb", "huge_header", "truncated", "fifo"):
                assert rec["error"] in want, (key, rec)
    # a folder given whole: the symlink loop and the FIFO neither hang nor repeat files
    out = run_cli(["hash", str(hostile_corpus["root"]), "--json", "--processes", "1"], dict(os.environ),
                  timeout=100)
    assert out.returncode == 0 and b"Traceback" not in out.stderr
    walked = [rec["path"] for rec in json_lines(out.stdout)]
    assert len(walked) == len(set(walked)) and not any("/loop/" in p for p in walked)


@pytest.mark.timeout(120)
def test_capture_time_command_gives_every_file_an_answer(hostile_corpus):
    cases = hostile_corpus["files"]
    order = ["fifo", "oversized", "exif_loop", "exif_counts", "good", "tiff_loop", "non_utf8", "zero", "html"]
    paths = [os.fsdecode(cases[k].path) for k in order]
    out = run_cli(["capture-time", *paths, "--json", "--timeout", "3"], dict(os.environ), timeout=100)
    assert out.returncode == 0, out.stderr[-2000:]
    assert b"Traceback" not in out.stderr
    recs = json_lines(out.stdout)
    assert [r["path"] for r in recs] == paths  # one answer per file, in order
    by_key = dict(zip(order, recs))
    for key, rec in by_key.items():
        assert rec["status"] in ("ok", "error"), (key, rec)
    # a hanging file (the FIFO) or a slow one costs its own answer, never its neighbours'
    assert by_key["fifo"]["status"] == "error"
    assert by_key["good"]["local"] == "2004-07-14T16:20:00", by_key["good"]
    assert by_key["zero"]["status"] == "error" and by_key["zero"]["error"] == "empty", by_key["zero"]
    assert by_key["exif_counts"]["local"] is None  # "9999:99:99 99:99:99" is no date


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.timeout(180)
def test_escape_flow_records_every_hostile_file_and_writes_only_the_destination(hostile_corpus, tmp_path):
    from flows.escape import escape

    root = hostile_corpus["root"]
    before = _tree(root)
    job = escape_job(tmp_path, {"kind": "local", "path": str(root), "pattern": "*"}, name="rel-hostile",
                     max_bytes=32 << 20, batch_size=6)
    s = escape(job)
    regular = {k: c for k, c in hostile_corpus["files"].items() if c.image}
    assert s["listed"] == len(regular), s  # the FIFO and the symlink loop are not photos
    assert s["listed"] == s["done"] + s["skipped"] + s["failed"] + s["pending"] and s["pending"] == 0
    con = duckdb.connect(s["ledger"], read_only=True)
    try:
        rows = con.execute("SELECT i.detail, s.status, s.stage, s.reason FROM item_status s "
                           "JOIN items i USING (job, item_id)").fetchall()
    finally:
        con.close()
    import json

    got = {}
    for detail, status, stage, reason in rows:
        d = json.loads(detail)
        raw = bytes.fromhex(d["path_hex"]) if d.get("path_hex") else os.fsencode(d["path"])
        got[raw] = (status, stage, reason)
    for key, case in regular.items():
        want = FLOW_EXPECT[key]
        status, stage, reason = got[case.path]
        assert status == want[0], (key, got[case.path])
        if status == "failed":
            assert stage == want[1] and reason in want[2], (key, got[case.path])
    # the source folder is untouched; the destination holds only the good photos, safely named
    assert _tree(root) == before
    archive = tmp_path / "archive"
    delivered = photo_files(archive)
    assert len(delivered) == s["done"]
    for p in delivered:
        rel = p.relative_to(archive)
        assert p.resolve().is_relative_to(archive.resolve())
        assert not any(ch in str(rel) for ch in "\n\x01\\"), rel
    # nothing was written beside the ledger, work and report folders we gave the job
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive", "ledger.duckdb", "reports", "work"]
    assert not _no_escapes()
    # a rerun changes nothing and gives every file the same answer
    again = escape(job)
    assert (again["done"], again["failed"]) == (s["done"], s["failed"])
    assert len(photo_files(archive)) == len(delivered)


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.timeout(180)
def test_hostile_remote_names_stay_inside_their_folders(tmp_path):
    from flows.escape import escape

    site = hostile.HostileSite()
    server = serve(site)
    site.url = server.url
    try:
        s = escape(escape_job(tmp_path, site.job_source(), name="rel-names"))
    finally:
        server.stop()
    # every http(s) image URL was listed and ended done (file:// is no web image)
    assert s["listed"] == len(hostile.HOSTILE_SRCS) - 1 and s["done"] == s["listed"], s
    assert not _no_escapes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive", "ledger.duckdb", "reports", "work"]
    for folder in (tmp_path / "archive", tmp_path / "work"):
        for p in folder.rglob("*"):
            assert p.resolve().is_relative_to(folder.resolve()), p
            assert ".." not in p.relative_to(folder).parts
    names = [p.name for p in photo_files(tmp_path / "archive")]
    assert len(names) == s["done"] and not any(n.startswith(".") for n in names), names


HOSTILE_NAMES = ["../../etc/passwd", "/etc/passwd", "..", ".", "", "a/../../b.jpg", "..\\..\\win.jpg",
                 "C:\\Windows\\x.jpg", "nul\x00byte.jpg", "line\nbreak.jpg", ".hidden.jpg",
                 "caf\udce9.jpg", "x" * 500 + ".jpg"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
@pytest.mark.parametrize("layout", ["{name}", "{taken:%Y/%m}/{name}", "{relpath}", "{stem}/{sha8}.{ext}"])
def test_layouts_keep_any_name_inside(name, layout):
    item = {"name": name, "relpath": name, "sha256": "ab" * 32, "capture": {"local": "2006-10-04T09:30:00"}}
    rel = render(layout, item)
    parts = rel.split("/")
    assert rel and not rel.startswith("/") and "\\" not in rel
    assert not any(p in ("", ".", "..") for p in parts), rel
    assert not any(ord(ch) < 32 for ch in rel), rel
    assert all(len(p) <= 200 for p in parts)
    assert safe_relpath(rel) == rel  # already safe: stable


@pytest.mark.parametrize("src", hostile.HOSTILE_SRCS[:-1])
def test_remote_names_are_single_safe_components(src):
    url = "http://127.0.0.1:9/" + src.lstrip("/")
    for name in (safe_name(url), NameBook().name_for(url)):
        assert name and "/" not in name and "\\" not in name and not name.startswith(".")
        assert "\x00" not in name and os.path.basename(name) == name


S3_HOSTILE_KEYS = ["../../tmp/pe-escape-s3-dotdot.jpg", "/etc/pe-escape-s3-absolute.jpg", "a/../../pe-escape-s3-mid.jpg",
                   "photos/..", "photos/./.hidden.jpg", "back\\..\\..\\pe-escape-s3-backslash.jpg", "ok/plain.jpg"]


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.timeout(180)
def test_hostile_s3_keys_stay_inside_their_folders(tmp_path, s3_server, s3_credentials):
    """Object keys with traversal, absolute paths and dot names, fetched from S3 and laid out
    by their relative path ({relpath}): every file lands inside the work folder and the destination."""
    from flows.escape import escape

    bucket = s3_server.make_bucket(f"rel-hostile-{os.getpid()}-{len(os.listdir(tmp_path))}")
    client = s3_server.client()
    for k, key in enumerate(S3_HOSTILE_KEYS):
        client.put_object(Bucket=bucket, Key=key, Body=hostile._jpeg(20 + k))
    listed = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    job = escape_job(tmp_path, {"kind": "s3", "bucket": bucket, "endpoint_url": s3_server.url,
                                "credentials": {"env": s3_credentials}}, name="rel-s3-names")
    job["destination"]["layout"] = "{relpath}"
    s = escape(job)
    assert s["listed"] == len(listed) and s["pending"] == 0, s
    # "photos/.." lands as a file named "photos" (".." is dropped); "photos/./.hidden.jpg" then
    # wants a folder of that name: it cannot be placed, and says so, without overwriting anything
    con = duckdb.connect(s["ledger"], read_only=True)
    try:
        failed = con.execute("SELECT item_id, reason FROM item_status WHERE status = 'failed'").fetchall()
    finally:
        con.close()
    assert failed == [(f"s3://{bucket}/photos/./.hidden.jpg", "write_failed")], failed
    assert s["done"] == s["listed"] - 1
    assert not _no_escapes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive", "ledger.duckdb", "reports", "work"]
    for folder in (tmp_path / "archive", tmp_path / "work"):
        for p in folder.rglob("*"):
            assert p.resolve().is_relative_to(folder.resolve()), p
            assert ".." not in p.relative_to(folder).parts, p
    assert len(photo_files(tmp_path / "archive")) == s["done"]
