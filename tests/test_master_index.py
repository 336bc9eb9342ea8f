"""The master index: a `find` listing into DuckDB, Digital IDs by regex, lookups; the CLI."""

from __future__ import annotations

import json
import os

import pytest

from photo_escape.cli import main as cli
from tasks.master_index import MasterIndex, MasterIndexError, build_from_folder, build_from_listing


def test_listing_of_the_store_indexes_every_master(hires_library, tmp_path):
    stats = build_from_listing(hires_library.listing, tmp_path / "m.duckdb")
    lines = hires_library.listing.read_text().splitlines()
    masters = {did: sorted(map(str, paths)) for did, paths in hires_library.masters.items()}
    assert stats["lines"] == len(lines)
    assert stats["masters"] == sum(len(p) for p in masters.values())
    assert stats["ids"] == len(masters)
    with MasterIndex(tmp_path / "m.duckdb") as index:
        for did, paths in masters.items():
            assert index.lookup_one(did) == paths
        assert index.lookup_one(did.upper()) == paths  # IDs compare in lower case
        some = list(masters)[:5] + ["a9999999"]
        got = index.lookup(some)
        assert got["a9999999"] == [] and all(got[d] == masters[d] for d in some[:5])


def test_walking_the_folder_gives_the_same_index(hires_library, tmp_path):
    build_from_listing(hires_library.listing, tmp_path / "a.duckdb")
    build_from_folder(hires_library.store, tmp_path / "b.duckdb")
    with MasterIndex(tmp_path / "a.duckdb") as a, MasterIndex(tmp_path / "b.duckdb") as b:
        rows_a = a.con.execute("SELECT digital_id, path FROM masters ORDER BY ALL").fetchall()
        rows_b = b.con.execute("SELECT digital_id, path FROM masters ORDER BY ALL").fetchall()
    assert rows_a == rows_b and rows_a


def test_awkward_paths_and_noise(tmp_path):
    listing = tmp_path / "find.txt"
    paths = [
        "/mnt/store",
        "/mnt/store/a/a12/a1234567",  # a folder: no file name, no ID
        '/mnt/store/a/a12/a1234567/a1234567u.tif',
        '/mnt/store/odd, "quoted" dir/b\tx/bcp_0012345h.JPG',  # comma, quotes, tab, upper case
        "/mnt/store/a/a12/a1234567/Thumbs.db",
        "/mnt/store/a/a12/a1234567/a1234567_notes.txt",
        "/mnt/store/ü/ä/c7654321r.jpeg",
    ]
    listing.write_text("\n".join(paths) + "\n", encoding="utf-8")
    stats = build_from_listing(listing, tmp_path / "i.duckdb")
    assert stats == {"lines": 7, "masters": 3, "ids": 3, "seconds": stats["seconds"]}
    with MasterIndex(tmp_path / "i.duckdb") as index:
        assert index.lookup_one("a1234567") == [paths[2]]
        assert index.lookup_one("bcp_0012345") == [paths[3]]
        assert index.lookup_one("c7654321") == [paths[6]]


def test_configurable_regex_and_clear_errors(tmp_path):
    listing = tmp_path / "find.txt"
    listing.write_text("/s/FL1234567.tif\n/s/FL1234568_v2.tif\n/s/readme.txt\n")
    build_from_listing(listing, tmp_path / "i.duckdb", id_regex=r"(FL\d{7})(?:_v\d)?\.tif$")
    with MasterIndex(tmp_path / "i.duckdb") as index:
        assert index.lookup(["FL1234567", "fl1234568"]) == {"fl1234567": ["/s/FL1234567.tif"],
                                                            "fl1234568": ["/s/FL1234568_v2.tif"]}
    with pytest.raises(MasterIndexError, match="needs a group"):
        build_from_listing(listing, tmp_path / "j.duckdb", id_regex=r"FL\d+")
    with pytest.raises(MasterIndexError, match="not valid"):
        build_from_listing(listing, tmp_path / "j.duckdb", id_regex=r"(FL\d+")
    with pytest.raises(MasterIndexError, match="RE2"):
        build_from_listing(listing, tmp_path / "j.duckdb", id_regex=r"(?<=F)(L\d+)")
    with pytest.raises(MasterIndexError, match="no listing"):
        build_from_listing(tmp_path / "missing.txt", tmp_path / "j.duckdb")
    with pytest.raises(MasterIndexError, match="no master index"):
        MasterIndex(tmp_path / "nothing.duckdb")


def test_a_failed_rebuild_keeps_the_previous_index(tmp_path):
    listing = tmp_path / "find.txt"
    listing.write_text("/s/a1234567u.tif\n")
    build_from_listing(listing, tmp_path / "i.duckdb")
    with pytest.raises(MasterIndexError):
        build_from_listing(listing, tmp_path / "i.duckdb", id_regex=r"(?<=a)(\d+)")
    with MasterIndex(tmp_path / "i.duckdb") as index:
        assert index.lookup_one("a1234567") == ["/s/a1234567u.tif"]


def test_lookups_from_many_threads(hires_library, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    build_from_listing(hires_library.listing, tmp_path / "m.duckdb")
    ids = sorted(hires_library.masters)
    with MasterIndex(tmp_path / "m.duckdb") as index, ThreadPoolExecutor(8) as pool:
        got = list(pool.map(index.lookup_one, ids * 3))
    assert got == [sorted(map(str, hires_library.masters[d])) for d in ids * 3]


def test_command_line_build_and_lookup(hires_library, tmp_path, capsys):
    index = tmp_path / "cli.duckdb"
    assert cli(["master-index", "--json", "build", str(hires_library.listing), "--index", str(index)]) == 0
    built = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert built["status"] == "ok" and built["masters"] == sum(len(p) for p in hires_library.masters.values())
    did = sorted(hires_library.masters)[0]
    assert cli(["master-index", "lookup", did, "zz9999999", "--index", str(index), "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert lines[0] == {"id": did, "status": "ok", "paths": sorted(map(str, hires_library.masters[did]))}
    assert lines[1] == {"id": "zz9999999", "status": "not_found", "paths": []}
    assert cli(["master-index", "lookup", "x", "--index", str(tmp_path / "none.duckdb"), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["status"] == "error"
    # a folder is walked
    assert cli(["master-index", "build", str(hires_library.store), "--index", str(tmp_path / "w.duckdb")]) == 0
    assert "indexed" in capsys.readouterr().out
    assert os.path.exists(tmp_path / "w.duckdb")
