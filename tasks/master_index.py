"""The master index: which master files a Digital ID has, answered in milliseconds.

The library's master store is a huge nested folder tree; ``find`` on it took half an
hour per search, while a grep of a saved listing took under a second. This module
goes one step further: it loads the listing (the output of ``find STORE``, one path a
line, millions of lines) into a DuckDB table once, extracting each file's Digital ID
with a configurable regular expression, sorted by ID so a lookup touches one row
group (and an ART index takes a random lookup straight to its row). A small store
can be indexed by walking it instead.

    build_from_listing("masters.txt", "masters.duckdb")
    with MasterIndex("masters.duckdb") as index:
        index.lookup(["a1280001"])   # {"a1280001": [".../a1280001u.tif"]}

The regex is RE2 syntax (DuckDB's), applied to the whole path; its first group is
the Digital ID. IDs are compared in lower case. Plain code, no Prefect.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path
from typing import Iterable

import duckdb
import pyarrow as pa

#: A Digital ID is a few letters, an optional underscore and 5-8 digits, at the start
#: of a master's file name, followed by an optional one-letter version (u: uncompressed
#: TIFF, h: high-quality JPEG, r: reference) and an image extension.
DEFAULT_ID_REGEX = r"(?i)([a-z]{1,4}_?\d{5,8})[a-z]?\.(?:tiff?|jpe?g|png|jp2)$"

#: A byte that never occurs in a path line, so the listing is read as one column.
_NO_DELIMITER = "\x01"


class MasterIndexError(Exception):
    """A listing or index that cannot be used (missing file, bad regex)."""


def check_regex(id_regex: str) -> str:
    """The regex if it is usable (valid, with a group for the ID), else a clear error."""
    try:
        compiled = re.compile(id_regex)
    except re.error as exc:
        raise MasterIndexError(f"the Digital ID regex {id_regex!r} is not valid: {exc}") from None
    if compiled.groups < 1:
        raise MasterIndexError(f"the Digital ID regex {id_regex!r} needs a group ( ) around the ID")
    return id_regex


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def build_from_listing(listing: str | Path, index_path: str | Path, *, id_regex: str = DEFAULT_ID_REGEX,
                       threads: int | None = None) -> dict:
    """Load a ``find`` listing into a fresh index file; returns ``{lines, masters, ids, seconds}``.

    The listing is read by DuckDB's CSV reader as a single column (no quoting, no
    delimiter), so paths with commas, quotes or spaces survive; lines whose path
    holds no Digital ID (folders, Thumbs.db, notes) are dropped.
    """
    listing = Path(listing)
    if not listing.is_file():
        raise MasterIndexError(f"no listing file at {listing}")
    check_regex(id_regex)
    started = time.perf_counter()
    tmp = _fresh(index_path)
    con = duckdb.connect(str(tmp))
    try:
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        con.execute(
            f"""CREATE TABLE listing AS SELECT path FROM read_csv({_sql_literal(str(listing))},
                    columns = {{'path': 'VARCHAR'}}, header = false, delim = {_sql_literal(_NO_DELIMITER)},
                    quote = '', escape = '', auto_detect = false, null_padding = false,
                    strict_mode = false, parallel = true)"""
        )
        lines = con.execute("SELECT count(*) FROM listing").fetchone()[0]
        _index_paths(con, "listing", id_regex)
        con.execute("DROP TABLE listing")
        stats = _finish(con, id_regex, lines, source=str(listing))
    finally:
        con.close()
    os.replace(tmp, index_path)
    stats["seconds"] = round(time.perf_counter() - started, 3)
    return stats


def build_from_folder(store: str | Path, index_path: str | Path, *, id_regex: str = DEFAULT_ID_REGEX) -> dict:
    """Index a (small) store by walking it, for when there is no listing."""
    store = Path(store)
    if not store.is_dir():
        raise MasterIndexError(f"no folder at {store}")
    check_regex(id_regex)
    started = time.perf_counter()
    paths = [os.path.join(d, f) for d, _, files in os.walk(store) for f in files]
    tmp = _fresh(index_path)
    con = duckdb.connect(str(tmp))
    try:
        con.register("_walked", pa.table({"path": pa.array(paths, pa.string())}))
        con.execute("CREATE TABLE listing AS SELECT path FROM _walked")
        con.unregister("_walked")
        _index_paths(con, "listing", id_regex)
        con.execute("DROP TABLE listing")
        stats = _finish(con, id_regex, len(paths), source=str(store))
    finally:
        con.close()
    os.replace(tmp, index_path)
    stats["seconds"] = round(time.perf_counter() - started, 3)
    return stats


def _fresh(index_path: str | Path) -> Path:
    """A temporary file beside the index, so a half-built index never replaces a good one."""
    index_path = Path(index_path)
    index_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = index_path.with_name(index_path.name + ".building")
    for p in (tmp, Path(str(tmp) + ".wal")):
        if p.exists():
            p.unlink()
    return tmp


def _index_paths(con: duckdb.DuckDBPyConnection, table: str, id_regex: str) -> None:
    """``masters(digital_id, path)`` from a one-column table of paths, sorted by ID."""
    rx = _sql_literal(id_regex)
    try:
        _create_masters(con, table, rx)
    except duckdb.Error as exc:
        raise MasterIndexError(
            f"the Digital ID regex {id_regex!r} cannot be used (DuckDB speaks RE2: no look-arounds): "
            f"{str(exc).splitlines()[0]}") from None


def _create_masters(con: duckdb.DuckDBPyConnection, table: str, rx: str) -> None:
    con.execute(
        f"""CREATE TABLE masters AS
            SELECT lower(regexp_extract(path, {rx}, 1)) AS digital_id, path
            FROM {table}
            WHERE regexp_matches(path, {rx})
            ORDER BY digital_id, path"""
    )


def _finish(con: duckdb.DuckDBPyConnection, id_regex: str, lines: int, *, source: str) -> dict:
    masters, ids = con.execute("SELECT count(*), count(DISTINCT digital_id) FROM masters").fetchone()
    # an ART index makes a random lookup ~2.5x faster than the sorted table's zone maps
    # alone (bench/master_index.py); it costs about a third more load time
    con.execute("CREATE INDEX masters_by_id ON masters (digital_id)")
    con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.executemany("INSERT INTO meta VALUES (?, ?)", [
        ["id_regex", id_regex], ["source", source], ["lines", str(lines)],
        ["built_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())],
    ])
    con.execute("CHECKPOINT")
    return {"lines": int(lines), "masters": int(masters), "ids": int(ids)}


class MasterIndex:
    """A built index, opened read-only (many readers may share it).

    Safe to share between threads: each thread queries through its own cursor
    (a DuckDB connection serves one call at a time)."""

    def __init__(self, index_path: str | Path) -> None:
        self.path = Path(index_path)
        if not self.path.is_file():
            raise MasterIndexError(f"no master index at {self.path}; build it with `photo-escape master-index build`")
        self.con = duckdb.connect(str(self.path), read_only=True)
        self.con.execute("SET threads = 1")  # point lookups: no use for a thread pool
        self._local = threading.local()

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._local.cursor = self.con.cursor()
        return cur

    def lookup_one(self, digital_id: str) -> list[str]:
        """The master paths of one Digital ID (empty when the store has none)."""
        rows = self._cursor().execute(
            "SELECT path FROM masters WHERE digital_id = ?", [digital_id.lower()]
        ).fetchall()
        return sorted(r[0] for r in rows)  # sorted here: an ORDER BY costs more than the lookup

    def lookup(self, digital_ids: Iterable[str]) -> dict[str, list[str]]:
        """``{id: [paths]}`` for many IDs in one query (IDs with no master map to ``[]``)."""
        wanted = sorted({d.lower() for d in digital_ids if d})
        out: dict[str, list[str]] = {d: [] for d in wanted}
        if not wanted:
            return out
        cur = self._cursor()
        cur.register("_wanted", pa.table({"digital_id": pa.array(wanted, pa.string())}))
        try:
            rows = cur.execute(
                "SELECT m.digital_id, m.path FROM masters m JOIN _wanted USING (digital_id) ORDER BY 1, 2"
            ).fetchall()
        finally:
            cur.unregister("_wanted")
        for did, path in rows:
            out[did].append(path)
        return out

    def stats(self) -> dict:
        meta = dict(self.con.execute("SELECT key, value FROM meta").fetchall())
        masters, ids = self.con.execute("SELECT count(*), count(DISTINCT digital_id) FROM masters").fetchone()
        return {"index": str(self.path), "masters": int(masters), "ids": int(ids), **meta}

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "MasterIndex":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
