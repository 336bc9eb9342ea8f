"""The ledger: an append-only DuckDB record of every stage of every item.

PREMIS-style events (``run_id, item_id, stage, outcome, reason, detail, bytes,
duration_ms, attempt, tool_version, at``) around which sit ``runs``, ``items``,
``assets`` (content by sha256), ``capture_times`` and ``matches``. Views give the
latest state per item and stage and a reconciliation per run and per job in which
``listed = done + skipped + failed + pending`` holds exactly, because every listed
item has exactly one status:

* ``done``    its latest event is a final ``ok`` (the last stage succeeded);
* ``skipped`` its latest event is ``skipped`` (404, dry run, no larger version...);
* ``failed``  its latest event is ``failed``;
* ``pending`` anything else (not reached yet, interrupted, or ``needs_review``).

The flow process is the only writer: tasks return outcome records and the flow
appends them here, one INSERT per batch. Plain code, no Prefect.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import duckdb
import pyarrow as pa

from photo_escape import TOOL_VERSION
from photo_escape.crashpoints import crash_point
from photo_escape.secrets import redact

SCHEMA_VERSION = 4

# Each migration moves the schema from version n-1 to n. Append, never edit.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE runs (
                run_id VARCHAR PRIMARY KEY, job VARCHAR NOT NULL, flow VARCHAR,
                flow_run_id VARCHAR, started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ,
                status VARCHAR, dry_run BOOLEAN, only_failed BOOLEAN, settings VARCHAR,
                spec JSON, summary JSON, tool_version VARCHAR, host VARCHAR, pid INTEGER)""",
            """CREATE TABLE items (
                job VARCHAR NOT NULL, item_id VARCHAR NOT NULL, source_ref VARCHAR,
                name VARCHAR, detail JSON, first_run VARCHAR, first_seen TIMESTAMPTZ,
                PRIMARY KEY (job, item_id))""",
            "CREATE SEQUENCE event_seq",
            """CREATE TABLE events (
                seq BIGINT NOT NULL, job VARCHAR NOT NULL, run_id VARCHAR NOT NULL,
                item_id VARCHAR NOT NULL, stage VARCHAR NOT NULL,
                outcome VARCHAR NOT NULL CHECK (outcome IN ('ok','skipped','failed','needs_review')),
                reason VARCHAR, detail JSON, bytes BIGINT, duration_ms DOUBLE,
                attempt INTEGER, tool_version VARCHAR, "at" TIMESTAMPTZ NOT NULL,
                sha256 VARCHAR, settings VARCHAR, fingerprint VARCHAR, final BOOLEAN NOT NULL)""",
            """CREATE TABLE assets (
                sha256 VARCHAR PRIMARY KEY, bytes BIGINT, width INTEGER, height INTEGER,
                format VARCHAR, phash UBIGINT, dhash UBIGINT, phash_mirror UBIGINT,
                dhash_mirror UBIGINT, thumb BLOB, hash_version VARCHAR, detail JSON,
                hashed_at TIMESTAMPTZ)""",
            """CREATE TABLE capture_times (
                job VARCHAR, run_id VARCHAR, item_id VARCHAR, sha256 VARCHAR,
                local TIMESTAMP, utc TIMESTAMPTZ, offset_minutes INTEGER, tz VARCHAR,
                provenance VARCHAR, conflicts JSON, "at" TIMESTAMPTZ)""",
            """CREATE TABLE matches (
                job VARCHAR, run_id VARCHAR, query VARCHAR, candidate VARCHAR,
                distance DOUBLE, rank INTEGER, chosen BOOLEAN, method VARCHAR,
                detail JSON, "at" TIMESTAMPTZ)""",
            # latest event per item and stage
            """CREATE VIEW item_stage_latest AS
                SELECT * EXCLUDE (rn) FROM (
                    SELECT e.*, row_number() OVER (PARTITION BY job, item_id, stage ORDER BY seq DESC) AS rn
                    FROM events e) WHERE rn = 1""",
            # one row per item and run that did work on it: its last word in that run
            """CREATE VIEW item_run_last AS
                SELECT job, run_id, item_id, max(seq) AS seq,
                       arg_max(stage, seq) AS stage, arg_max(outcome, seq) AS outcome,
                       arg_max(reason, seq) AS reason, arg_max(final, seq) AS final,
                       arg_max(settings, seq) AS settings, arg_max(fingerprint, seq) AS fingerprint,
                       arg_max(sha256, seq) AS sha256
                FROM events WHERE stage <> 'list' GROUP BY ALL""",
            # the status of every item of a job now
            """CREATE VIEW item_status AS
                WITH last AS (
                    SELECT job, item_id, max(seq) AS seq, arg_max(stage, seq) AS stage,
                           arg_max(outcome, seq) AS outcome, arg_max(reason, seq) AS reason,
                           arg_max(final, seq) AS final, arg_max(settings, seq) AS settings,
                           arg_max(fingerprint, seq) AS fingerprint, arg_max(sha256, seq) AS sha256,
                           arg_max(run_id, seq) AS run_id
                    FROM events WHERE stage <> 'list' GROUP BY ALL)
                SELECT i.job, i.item_id, i.source_ref, i.name, l.run_id, l.stage, l.outcome,
                       l.reason, l.settings, l.fingerprint, l.sha256,
                       CASE WHEN l.outcome = 'failed' THEN 'failed'
                            WHEN l.outcome = 'skipped' THEN 'skipped'
                            WHEN l.outcome = 'ok' AND l.final THEN 'done'
                            ELSE 'pending' END AS status
                FROM items i LEFT JOIN last l USING (job, item_id)""",
            # the status of every item a run listed, as that run left it
            """CREATE VIEW run_item_status AS
                WITH listed AS (
                    SELECT job, run_id, item_id, min(seq) AS list_seq
                    FROM events WHERE stage = 'list' GROUP BY ALL),
                joined AS (
                    SELECT l.job, l.run_id, l.item_id,
                           coalesce(w.stage, p.stage) AS stage,
                           coalesce(w.outcome, p.outcome) AS outcome,
                           coalesce(w.reason, p.reason) AS reason,
                           coalesce(w.final, p.final) AS final,
                           w.seq IS NULL AND p.seq IS NOT NULL AS carried
                    FROM listed l
                    LEFT JOIN item_run_last w
                        ON w.job = l.job AND w.run_id = l.run_id AND w.item_id = l.item_id
                    ASOF LEFT JOIN item_run_last p
                        ON p.job = l.job AND p.item_id = l.item_id AND l.list_seq > p.seq)
                SELECT *, CASE WHEN outcome = 'failed' THEN 'failed'
                               WHEN outcome = 'skipped' THEN 'skipped'
                               WHEN outcome = 'ok' AND final THEN 'done'
                               ELSE 'pending' END AS status
                FROM joined""",
            """CREATE VIEW reconciliation_run AS
                SELECT job, run_id, count(*) AS listed,
                       count(*) FILTER (WHERE status = 'done') AS done,
                       count(*) FILTER (WHERE status = 'skipped') AS skipped,
                       count(*) FILTER (WHERE status = 'failed') AS failed,
                       count(*) FILTER (WHERE status = 'pending') AS pending,
                       count(*) FILTER (WHERE outcome = 'needs_review') AS needs_review,
                       count(*) FILTER (WHERE carried) AS carried_from_earlier_runs
                FROM run_item_status GROUP BY ALL""",
            """CREATE VIEW reconciliation_job AS
                SELECT job, count(*) AS listed,
                       count(*) FILTER (WHERE status = 'done') AS done,
                       count(*) FILTER (WHERE status = 'skipped') AS skipped,
                       count(*) FILTER (WHERE status = 'failed') AS failed,
                       count(*) FILTER (WHERE status = 'pending') AS pending,
                       count(*) FILTER (WHERE outcome = 'needs_review') AS needs_review
                FROM item_status GROUP BY ALL""",
        ],
    ),
    (
        2,
        [
            # arg_max skips NULLs, so a photo's latest reason/sha256/fingerprint could come
            # from an older event; arg_max_null takes the latest event's value as it is
            """CREATE OR REPLACE VIEW item_run_last AS
                SELECT job, run_id, item_id, max(seq) AS seq,
                       arg_max_null(stage, seq) AS stage, arg_max_null(outcome, seq) AS outcome,
                       arg_max_null(reason, seq) AS reason, arg_max_null(final, seq) AS final,
                       arg_max_null(settings, seq) AS settings, arg_max_null(fingerprint, seq) AS fingerprint,
                       arg_max_null(sha256, seq) AS sha256
                FROM events WHERE stage <> 'list' GROUP BY ALL""",
            """CREATE OR REPLACE VIEW item_status AS
                WITH last AS (
                    SELECT job, item_id, max(seq) AS seq, arg_max_null(stage, seq) AS stage,
                           arg_max_null(outcome, seq) AS outcome, arg_max_null(reason, seq) AS reason,
                           arg_max_null(final, seq) AS final, arg_max_null(settings, seq) AS settings,
                           arg_max_null(fingerprint, seq) AS fingerprint, arg_max_null(sha256, seq) AS sha256,
                           arg_max_null(run_id, seq) AS run_id
                    FROM events WHERE stage <> 'list' GROUP BY ALL)
                SELECT i.job, i.item_id, i.source_ref, i.name, l.run_id, l.stage, l.outcome,
                       l.reason, l.settings, l.fingerprint, l.sha256,
                       CASE WHEN l.outcome = 'failed' THEN 'failed'
                            WHEN l.outcome = 'skipped' THEN 'skipped'
                            WHEN l.outcome = 'ok' AND l.final THEN 'done'
                            ELSE 'pending' END AS status
                FROM items i LEFT JOIN last l USING (job, item_id)""",
            """CREATE OR REPLACE VIEW run_item_status AS
                WITH listed AS (
                    SELECT job, run_id, item_id, min(seq) AS list_seq
                    FROM events WHERE stage = 'list' GROUP BY ALL),
                joined AS (
                    SELECT l.job, l.run_id, l.item_id,
                           CASE WHEN w.seq IS NOT NULL THEN w.stage ELSE p.stage END AS stage,
                           CASE WHEN w.seq IS NOT NULL THEN w.outcome ELSE p.outcome END AS outcome,
                           CASE WHEN w.seq IS NOT NULL THEN w.reason ELSE p.reason END AS reason,
                           CASE WHEN w.seq IS NOT NULL THEN w.final ELSE p.final END AS final,
                           w.seq IS NULL AND p.seq IS NOT NULL AS carried
                    FROM listed l
                    LEFT JOIN item_run_last w
                        ON w.job = l.job AND w.run_id = l.run_id AND w.item_id = l.item_id
                    ASOF LEFT JOIN item_run_last p
                        ON p.job = l.job AND p.item_id = l.item_id AND l.list_seq > p.seq)
                SELECT *, CASE WHEN outcome = 'failed' THEN 'failed'
                               WHEN outcome = 'skipped' THEN 'skipped'
                               WHEN outcome = 'ok' AND final THEN 'done'
                               ELSE 'pending' END AS status
                FROM joined""",
        ],
    ),
    (
        3,
        [
            # the status views name the latest event (its seq), so a reader can take that
            # event's detail and time from ``events`` instead of working out the latest again
            """CREATE OR REPLACE VIEW item_status AS
                WITH last AS (
                    SELECT job, item_id, max(seq) AS seq, arg_max_null(stage, seq) AS stage,
                           arg_max_null(outcome, seq) AS outcome, arg_max_null(reason, seq) AS reason,
                           arg_max_null(final, seq) AS final, arg_max_null(settings, seq) AS settings,
                           arg_max_null(fingerprint, seq) AS fingerprint, arg_max_null(sha256, seq) AS sha256,
                           arg_max_null(run_id, seq) AS run_id
                    FROM events WHERE stage <> 'list' GROUP BY ALL)
                SELECT i.job, i.item_id, i.source_ref, i.name, l.run_id, l.stage, l.outcome,
                       l.reason, l.settings, l.fingerprint, l.sha256,
                       CASE WHEN l.outcome = 'failed' THEN 'failed'
                            WHEN l.outcome = 'skipped' THEN 'skipped'
                            WHEN l.outcome = 'ok' AND l.final THEN 'done'
                            ELSE 'pending' END AS status,
                       l.seq
                FROM items i LEFT JOIN last l USING (job, item_id)""",
            """CREATE OR REPLACE VIEW run_item_status AS
                WITH listed AS (
                    SELECT job, run_id, item_id, min(seq) AS list_seq
                    FROM events WHERE stage = 'list' GROUP BY ALL),
                joined AS (
                    SELECT l.job, l.run_id, l.item_id,
                           CASE WHEN w.seq IS NOT NULL THEN w.stage ELSE p.stage END AS stage,
                           CASE WHEN w.seq IS NOT NULL THEN w.outcome ELSE p.outcome END AS outcome,
                           CASE WHEN w.seq IS NOT NULL THEN w.reason ELSE p.reason END AS reason,
                           CASE WHEN w.seq IS NOT NULL THEN w.final ELSE p.final END AS final,
                           w.seq IS NULL AND p.seq IS NOT NULL AS carried,
                           CASE WHEN w.seq IS NOT NULL THEN w.seq ELSE p.seq END AS seq
                    FROM listed l
                    LEFT JOIN item_run_last w
                        ON w.job = l.job AND w.run_id = l.run_id AND w.item_id = l.item_id
                    ASOF LEFT JOIN item_run_last p
                        ON p.job = l.job AND p.item_id = l.item_id AND l.list_seq > p.seq)
                SELECT * EXCLUDE (seq), CASE WHEN outcome = 'failed' THEN 'failed'
                                             WHEN outcome = 'skipped' THEN 'skipped'
                                             WHEN outcome = 'ok' AND final THEN 'done'
                                             ELSE 'pending' END AS status, seq
                FROM joined""",
        ],
    ),
    (
        4,
        [
            # the albums a source says a photo is in (a Takeout album's title), one row each
            """CREATE TABLE albums (
                job VARCHAR NOT NULL, item_id VARCHAR NOT NULL, album VARCHAR NOT NULL,
                PRIMARY KEY (job, item_id, album))""",
        ],
    ),
]

EVENT_COLUMNS = [
    "seq", "job", "run_id", "item_id", "stage", "outcome", "reason", "detail", "bytes",
    "duration_ms", "attempt", "tool_version", "at", "sha256", "settings", "fingerprint", "final",
]


# skips that a rerun reconsiders: a dry run plans only; a photo with no capture time
# may get one from a time-zone rule or default added to the job since
RETRIED_SKIPS = ("dry_run", "no_capture_time")

_QUOTED_EVENT_COLUMNS = ", ".join(f'"{c}"' for c in EVENT_COLUMNS)
_ASSET_COLUMNS = ("sha256", "bytes", "width", "height", "format", "phash", "dhash", "phash_mirror",
                  "dhash_mirror", "thumb", "hash_version", "detail", "hashed_at")

# How each kind of row is inserted: the statement (``{rows}`` is the registered Arrow
# table), the columns whose values must be unique within one statement, and which of
# several rows with the same values is kept (DuckDB refuses to upsert the same row twice
# in one statement; keeping the last listing, or the first asset, gives the same result
# as inserting the rows one write after another).
_INSERTS: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "items": ("INSERT INTO items SELECT * FROM {rows} ON CONFLICT (job, item_id) DO UPDATE SET"
              " source_ref = excluded.source_ref, name = excluded.name, detail = excluded.detail",
              ("job", "item_id"), "last"),
    "events": (f"INSERT INTO events ({_QUOTED_EVENT_COLUMNS}) SELECT * FROM {{rows}}", (), None),
    "assets": (f"INSERT INTO assets ({', '.join(_ASSET_COLUMNS)}) SELECT * FROM {{rows}} ON CONFLICT DO NOTHING",
               ("sha256",), "first"),
    "capture_times": ("INSERT INTO capture_times SELECT * FROM {rows}", (), None),
    "matches": ("INSERT INTO matches SELECT * FROM {rows}", (), None),
    "albums": ("INSERT INTO albums SELECT * FROM {rows} ON CONFLICT DO NOTHING", ("job", "item_id", "album"), "first"),
}


class LedgerBusy(Exception):
    """Another process holds the ledger (DuckDB allows one writer per file)."""


def now() -> datetime:
    return datetime.now(timezone.utc)


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def _json(value: Any) -> str | None:
    if value is None:
        return None
    return redact(json.dumps(value, default=str, sort_keys=True))


def _listed_item(item_id: str, source_ref: str | None, name: str | None, detail: str | None) -> dict:
    """An item as its listing recorded it (the ``items`` row), ready to be fetched again."""
    item = json.loads(detail) if detail else {}
    item.update(item_id=item_id, source_ref=source_ref, name=name)
    return item


class Ledger:
    """One DuckDB file. Open it with ``Ledger(path)``; the schema is created or migrated.

    DuckDB's memory is capped (``PHOTO_ESCAPE_LEDGER_MEMORY``, default 768MB; it spills
    to disk beyond that), so a flow's memory stays flat as the ledger grows."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not self.path.exists():
            raise FileNotFoundError(f"no ledger at {self.path}")
        try:
            self.con = duckdb.connect(str(self.path), read_only=read_only,
                                      config={"memory_limit": os.environ.get("PHOTO_ESCAPE_LEDGER_MEMORY", "768MB")})
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise LedgerBusy(
                    f"the ledger {self.path} is in use by another photo-escape run "
                    "(one run at a time per ledger); wait for it to finish or use another ledger"
                ) from None
            raise
        self._merging: dict[str, tuple[list[pa.Table], str | None]] | None = None  # see merged_inserts()
        if not read_only:
            self.migrate()
        else:
            self._current_views()

    # -- schema -------------------------------------------------------------------------
    def schema_version(self) -> int:
        exists = self.con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'meta'"
        ).fetchall()[0][0]
        if not exists:
            return 0
        rows = self.con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
        row = rows[0] if rows else None
        return int(row[0]) if row else 0

    def migrate(self) -> None:
        current = self.schema_version()
        if current > SCHEMA_VERSION:
            raise RuntimeError(
                f"ledger {self.path} has schema version {current}, newer than this photo-escape ({SCHEMA_VERSION})"
            )
        if current == SCHEMA_VERSION:
            return
        self.con.execute("BEGIN")
        try:
            self.con.execute("CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
            for version, statements in MIGRATIONS:
                if version <= current:
                    continue
                for sql in statements:
                    self.con.execute(sql)
                self.con.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(version)]
                )
            self.con.execute("COMMIT")
        except Exception:
            self.con.execute("ROLLBACK")
            raise

    def _current_views(self) -> None:
        """On a read-only handle of a ledger an older photo-escape wrote, make the views of the
        migrations it lacks as temporary views of this connection (they come before the file's
        own), and the tables it lacks as empty temporary tables, so a report reads it as it
        reads a current one. Nothing is written to the file. (Only when what it lacks is
        views and new tables: new columns need the ledger opened to write.)"""
        current = self.schema_version()
        missing = [sql.lstrip() for version, statements in MIGRATIONS if version > current for sql in statements]
        view, table = "CREATE OR REPLACE VIEW ", "CREATE TABLE "
        if current == 0 or not all(sql.startswith((view, table)) for sql in missing):
            return
        for sql in missing:
            if sql.startswith(view):
                self.con.execute("CREATE OR REPLACE TEMP VIEW " + sql[len(view):])
            else:  # a table of what that older version never recorded: empty, so queries of it still run
                self.con.execute("CREATE TEMP TABLE " + sql[len(table):])

    def close(self) -> None:
        self.con.close()

    def reader(self) -> "Ledger":
        """Another handle on this open ledger for reading from another thread while a
        :class:`LedgerWriter` writes through this one (a DuckDB cursor is its own
        connection to the same database: it sees what has been committed)."""
        other = object.__new__(Ledger)
        other.path, other.read_only, other.con = self.path, True, self.con.cursor()
        other._merging = None
        return other

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing. Nested uses join the outermost, so several writes (a batch's
        assets, capture times and events) can commit together."""
        if getattr(self, "_in_transaction", False):
            yield
            return
        self.con.execute("BEGIN")
        self._in_transaction = True
        try:
            yield
        except BaseException:
            self._in_transaction = False
            self.con.execute("ROLLBACK")
            raise
        self._in_transaction = False
        self.con.execute("COMMIT")

    @contextmanager
    def merged_inserts(self) -> Iterator[None]:
        """Inside, :meth:`add_items`, :meth:`append_events`, :meth:`add_assets`,
        :meth:`add_capture_times` and :meth:`add_matches` collect their rows; at the end
        each table gets one insert of all of them, in a transaction (the caller's, if any).

        DuckDB's cost is per statement far more than per row at a batch's few hundred
        rows (and each call from a busy process waits for the interpreter lock), so the
        escape flow's writer thread merges the writes of a second or so into one
        statement per table. The rows are exactly those the calls one by one would have
        written; the calls' own crash points still fire before anything is committed.
        """
        if self._merging is not None:
            yield
            return
        self._merging = {}
        try:
            with self.transaction():
                yield
                merged, self._merging = self._merging, None
                for kind, (tables, replace) in merged.items():
                    self._insert_now(kind, pa.concat_tables(tables, promote_options="default"), replace)
                if merged:
                    crash_point("ledger_write")  # tests only: die with the rows inserted, not committed
        finally:
            self._merging = None

    def _insert(self, kind: str, table: pa.Table, replace_other_versions: str | None = None) -> None:
        if self._merging is None:
            with self.transaction():
                self._insert_now(kind, table, replace_other_versions)
            return
        tables, replace = self._merging.setdefault(kind, ([], replace_other_versions))
        if replace != replace_other_versions:  # not the same statement: insert what is collected first
            self._insert_now(kind, pa.concat_tables(tables, promote_options="default"), replace)
            tables, _ = self._merging[kind] = ([], replace_other_versions)
        tables.append(table)

    def _insert_now(self, kind: str, table: pa.Table, replace_other_versions: str | None) -> None:
        sql, unique, keep = _INSERTS[kind]
        if unique and table.num_rows > 1:
            rows: dict[tuple, int] = {}
            for i, key in enumerate(zip(*(table.column(k).to_pylist() for k in unique))):
                if keep == "last" or key not in rows:
                    rows[key] = i
            if len(rows) < table.num_rows:
                table = table.take(sorted(rows.values()))
        name = f"_new_{kind}"
        self.con.register(name, table)
        try:
            if replace_other_versions is not None:
                # an asset hashed by another version of the algorithm is replaced, not kept beside
                self.con.execute(f"DELETE FROM assets WHERE sha256 IN (SELECT sha256 FROM {name}) "
                                 "AND coalesce(hash_version, '') <> ?", [replace_other_versions])
            self.con.execute(sql.format(rows=name))
        except BaseException:
            try:  # an aborted transaction refuses even this; the name is registered over next time
                self.con.unregister(name)
            except duckdb.Error:
                pass
            raise
        self.con.unregister(name)

    # -- runs ---------------------------------------------------------------------------
    def start_run(self, run_id: str, job: str, *, flow: str, settings: str, spec: dict | None = None,
                  dry_run: bool = False, only_failed: bool = False, flow_run_id: str | None = None) -> None:
        self.abandon_stale_runs()
        self.con.execute(
            "INSERT INTO runs (run_id, job, flow, flow_run_id, started_at, status, dry_run, only_failed,"
            " settings, spec, tool_version, host, pid) VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?)",
            [run_id, job, flow, flow_run_id, now(), dry_run, only_failed, settings, _json(spec),
             TOOL_VERSION, os.uname().nodename, os.getpid()],
        )

    def abandon_stale_runs(self) -> int:
        """Mark runs still ``running`` as ``abandoned``: their process died (SIGKILL, power cut).

        Called when a run starts. We hold the ledger's write lock, so no run of another
        process can be alive; a ``running`` row of another process is what a killed run
        left behind (runs of this very process, which share the lock, are left alone).
        Its photos keep the status their last recorded event gave them; this run redoes them.
        """
        n = self.con.execute(
            "UPDATE runs SET status = 'abandoned', finished_at = ? WHERE status = 'running'"
            " AND NOT (coalesce(host, '') = ? AND coalesce(pid, -1) = ?) RETURNING run_id",
            [now(), os.uname().nodename, os.getpid()],
        ).fetchall()
        return len(n)

    def ended_runs(self, job: str) -> list[str]:
        """Run ids of the job's runs that are over (finished, crashed, abandoned)."""
        rows = self.con.execute("SELECT run_id FROM runs WHERE job = ? AND status <> 'running'", [job]).fetchall()
        return [r[0] for r in rows]

    def finish_run(self, run_id: str, status: str, summary: dict) -> None:
        self.con.execute(
            "UPDATE runs SET finished_at = ?, status = ?, summary = ? WHERE run_id = ?",
            [now(), status, _json(summary), run_id],
        )

    def run(self, run_id: str) -> dict | None:
        rows = self.query("SELECT * FROM runs WHERE run_id = ?", [run_id])
        return rows[0] if rows else None

    def last_run(self, job: str | None = None) -> dict | None:
        where, params = ("WHERE job = ?", [job]) if job else ("", [])
        rows = self.query(f"SELECT * FROM runs {where} ORDER BY started_at DESC LIMIT 1", params)
        return rows[0] if rows else None

    # -- items and events ---------------------------------------------------------------
    def add_items(self, job: str, run_id: str, items: list[dict]) -> None:
        """Record listed items (new ones are inserted; known ones kept) and a ``list`` event
        each, and the albums their source says each is in (``meta.albums``: the ``albums``
        table, one row per item and album title)."""
        if not items:
            return
        at = now()
        table = pa.table({
            "job": [job] * len(items),
            "item_id": [i["item_id"] for i in items],
            "source_ref": [redact(str(i.get("source_ref", i["item_id"]))) for i in items],
            "name": [i.get("name") for i in items],
            "detail": [_json({k: v for k, v in i.items() if k not in ("item_id", "source_ref", "name")})
                       for i in items],
            "first_run": [run_id] * len(items),
            "first_seen": pa.array([at] * len(items), pa.timestamp("us", tz="UTC")),
        })
        memberships = [(i["item_id"], album) for i in items for album in (i.get("meta") or {}).get("albums") or ()]
        with self.transaction():
            self._insert("items", table)
            if memberships:
                self._insert("albums", pa.table({"job": [job] * len(memberships),
                                                 "item_id": [m[0] for m in memberships],
                                                 "album": [str(m[1]) for m in memberships]}))
            self._append(job, run_id, [
                {"item_id": i["item_id"], "stage": "list", "outcome": "ok", "reason": None,
                 "detail": None, "fingerprint": i.get("fingerprint")}
                for i in items
            ], settings=None, at=at)

    def append_events(self, job: str, run_id: str, outcomes: Iterable[dict], *, settings: str | None = None) -> int:
        """Append outcome records (see :func:`photo_escape.outcomes.outcome`) in one insert."""
        rows = list(outcomes)
        if rows:
            with self.transaction():
                self._append(job, run_id, rows, settings=settings, at=now())
                if self._merging is None:  # (merged, the point is after the merged inserts)
                    crash_point("ledger_write")  # tests only: die with the rows inserted, not committed
        return len(rows)

    def _append(self, job: str, run_id: str, rows: list[dict], *, settings: str | None, at: datetime) -> None:
        n = len(rows)
        start = self._reserve_seqs(n)
        seqs = range(start, start + n)

        def col(key: str, default: Any = None) -> list:
            return [r.get(key, default) for r in rows]

        items = [r.get("item") or {} for r in rows]
        table = pa.table({
            "seq": pa.array(seqs, pa.int64()),
            "job": [job] * n,
            "run_id": [run_id] * n,
            "item_id": col("item_id"),
            "stage": col("stage"),
            "outcome": col("outcome"),
            "reason": col("reason"),
            "detail": [_json(d) if d else None for d in col("detail")],
            "bytes": pa.array(col("bytes"), pa.int64()),
            "duration_ms": pa.array(col("duration_ms"), pa.float64()),
            "attempt": pa.array([r.get("attempt") or 1 for r in rows], pa.int32()),
            "tool_version": [TOOL_VERSION] * n,
            "at": pa.array([at] * n, pa.timestamp("us", tz="UTC")),
            "sha256": [r.get("sha256") or it.get("sha256") for r, it in zip(rows, items)],
            "settings": [r.get("settings", settings) for r in rows],
            "fingerprint": [r.get("fingerprint") or it.get("fingerprint") for r, it in zip(rows, items)],
            "final": [bool(r.get("final")) for r in rows],
        })
        self._insert("events", table)

    def _reserve_seqs(self, n: int) -> int:
        """The first of ``n`` new event sequence numbers. This process is the ledger's
        only writer (DuckDB's file lock), so a counter read once at open is exact."""
        if getattr(self, "_next_seq", None) is None:
            self._next_seq = int(self.con.execute("SELECT coalesce(max(seq), 0) + 1 FROM events").fetchall()[0][0])
        start = self._next_seq
        self._next_seq += n
        return start

    # -- planning a rerun ---------------------------------------------------------------
    def completed(self, job: str, item_ids: list[str], settings: str) -> dict[str, str]:
        """Which of these items need no more work with these settings: ``{item_id: fingerprint}``.

        An item is complete when its latest event is a final ``ok``, or a ``skipped``
        recorded under the same settings for a reason a rerun cannot change
        (not one of :data:`RETRIED_SKIPS`).
        """
        if not item_ids:
            return {}
        self.con.register("_ask", pa.table({"item_id": item_ids}))
        try:
            rows = self.con.execute(
                """SELECT s.item_id, s.fingerprint FROM item_status s JOIN _ask USING (item_id)
                   WHERE s.job = ? AND s.settings = ?
                     AND (s.status = 'done' OR (s.status = 'skipped' AND coalesce(s.reason, '') NOT IN (SELECT unnest(?))))""",
                [job, settings, list(RETRIED_SKIPS)],
            ).fetchall()
        finally:
            self.con.unregister("_ask")
        return {r[0]: r[1] for r in rows}

    def delivered(self, job: str, *, settings: str | None = None) -> list[dict]:
        """What the ledger says is at the destination: every item of ``job`` whose latest
        ``deliver`` event is ``ok`` (with ``settings``: recorded under those settings,
        i.e. to this destination), for fixity checks (:mod:`tasks.fixity`). One dict each:

        ``item_id``, ``target`` (where it went: ``detail.target``, or
        ``s3://bucket/key`` from ``detail.bucket``/``detail.key``; None when the
        destination records no place, an upload API), ``version`` (what a listing
        showed of it then: a file's mtime, an object's ETag; None if not recorded),
        ``sha256``, ``bytes``,
        ``source_ref``, ``name``, ``run_id``, ``settings`` and ``fingerprint`` of that
        deliver event, ``detail`` (its detail), ``capture`` (the item's latest
        capture-time record, or None) and ``item`` (the item as its listing recorded it,
        enough for the source to fetch it again). Ordered by ``item_id``.
        """
        from tasks.s3util import s3_uri

        rows = self.con.execute(
            """WITH d AS (SELECT * FROM item_stage_latest WHERE job = ? AND stage = 'deliver' AND outcome = 'ok'),
                    c AS (SELECT item_id, detail FROM item_stage_latest WHERE job = ? AND stage = 'capture_time')
               SELECT d.item_id, d.detail, d.sha256, coalesce(d.bytes, a.bytes), d.run_id, d.settings,
                      d.fingerprint, i.source_ref, i.name, i.detail, c.detail
               FROM d JOIN items i ON i.job = d.job AND i.item_id = d.item_id
               LEFT JOIN c ON c.item_id = d.item_id
               LEFT JOIN assets a ON a.sha256 = d.sha256
               WHERE ? IS NULL OR d.settings = ?
               ORDER BY d.item_id""",
            [job, job, settings, settings],
        ).fetchall()
        out = []
        for item_id, detail, sha, size, run_id, sets, fingerprint, ref, name, listing, capture in rows:
            detail = json.loads(detail) if detail else {}
            target = detail.get("target") or (s3_uri(detail["bucket"], detail["key"])
                                              if detail.get("bucket") and detail.get("key") else None)
            version = detail.get("version") or (detail.get("fixity") or {}).get("etag")
            out.append({"item_id": item_id, "target": target, "sha256": sha, "version": version,
                        "bytes": int(size) if size is not None else None, "source_ref": ref, "name": name,
                        "run_id": run_id, "settings": sets, "fingerprint": fingerprint, "detail": detail,
                        "capture": json.loads(capture) if capture else None,
                        "item": _listed_item(item_id, ref, name, listing)})
        return out

    def fixity_problems(self, job: str, reason: str) -> set[str]:
        """The items of ``job`` whose latest event is a failed ``fixity`` check for ``reason``
        (``changed``, ``missing``): what a ``verify`` found and nothing has mended since."""
        rows = self.con.execute(
            "SELECT item_id FROM item_status WHERE job = ? AND stage = 'fixity' AND outcome = 'failed' AND reason = ?",
            [job, reason]).fetchall()
        return {r[0] for r in rows}

    def has_history(self, job: str) -> bool:
        """Whether any earlier run did work for this job (else no item can be complete)."""
        row = self.con.execute(
            "SELECT 1 FROM events WHERE job = ? AND stage <> 'list' LIMIT 1", [job]
        ).fetchall()
        return bool(row)

    def failed_items(self, job: str) -> list[dict]:
        """Items whose latest outcome is ``failed``, rebuilt from what their listing recorded."""
        rows = self.con.execute(
            """SELECT i.item_id, i.source_ref, i.name, i.detail FROM item_status s
               JOIN items i USING (job, item_id) WHERE s.job = ? AND s.status = 'failed'
               ORDER BY i.item_id""",
            [job],
        ).fetchall()
        return [_listed_item(*row) for row in rows]

    def first_ok_details(self, job: str, stage: str, item_ids: list[str]) -> dict[str, dict]:
        """What each item's first ``ok`` event of ``stage`` recorded, in any run of the job:
        ``{item_id: detail}`` (the earliest such event that has a detail; items with none
        are left out).

        What a stage read before later stages changed it stays readable here: the hi-res
        story restores the date taken its ``master`` stage first read, never the date Flickr
        shows after a replace."""
        if not item_ids:
            return {}
        rows = self.con.execute(
            """SELECT item_id, arg_min(detail, seq) FROM events
               WHERE job = ? AND stage = ? AND outcome = 'ok' AND item_id IN (SELECT unnest(?::VARCHAR[]))
               GROUP BY item_id""", [job, stage, list(item_ids)]).fetchall()
        return {item_id: json.loads(detail) for item_id, detail in rows if detail}

    def run_stage_counts(self, run_id: str, stages: Iterable[str]) -> dict[tuple[str, str, str | None], int]:
        """How many items a run's events of these stages recorded with each outcome and reason:
        ``{(stage, outcome, reason): items}``. An item counts once for each combination it
        has, however many times it was tried."""
        rows = self.con.execute(
            """SELECT stage, outcome, reason, count(DISTINCT item_id) FROM events
               WHERE run_id = ? AND stage IN (SELECT unnest(?::VARCHAR[])) GROUP BY ALL""",
            [run_id, list(stages)]).fetchall()
        return {(stage, outcome, reason): int(n) for stage, outcome, reason, n in rows}

    # -- assets and capture times -------------------------------------------------------
    def hashed_assets(self, shas: Iterable[str | None], hash_version: str) -> dict[str, dict]:
        """The ``assets`` rows of these contents hashed by ``hash_version`` (perceptual hashes
        included): ``{sha256: row}``. Contents with no such row, and empty values, are left out."""
        wanted = sorted({s for s in shas if s})
        if not wanted:
            return {}
        con = self.con.cursor()  # its own cursor: the ledger's may hold an unfinished result
        try:  # one statement: each call into DuckDB waits for the interpreter lock in a busy flow
            rows = _dicts(con.execute(
                "SELECT * FROM assets WHERE sha256 IN (SELECT unnest(?::VARCHAR[])) "
                "AND hash_version = ? AND phash IS NOT NULL", [wanted, hash_version]))
        finally:
            con.close()
        return {r["sha256"]: r for r in rows}

    def known_assets(self, shas: list[str]) -> set[str]:
        if not shas:
            return set()
        self.con.register("_ask", pa.table({"sha256": shas}))
        try:
            rows = self.con.execute("SELECT sha256 FROM assets JOIN _ask USING (sha256)").fetchall()
        finally:
            self.con.unregister("_ask")
        return {r[0] for r in rows}

    def asset(self, sha: str) -> dict | None:
        rows = self.query("SELECT * EXCLUDE (thumb) FROM assets WHERE sha256 = ?", [sha])
        return rows[0] if rows else None

    def add_assets(self, assets: list[dict], *, replace_other_versions: str | None = None) -> None:
        """Insert hash records by sha256 (existing ones are left as they are, except, with
        ``replace_other_versions``, rows hashed by a hash version other than that one,
        which are replaced)."""
        assets = [a for a in assets if a.get("sha256")]
        if not assets:
            return

        def hexint(v: Any) -> int | None:
            if v is None:
                return None
            return int(v, 16) if isinstance(v, str) else int(v)

        at = now()
        table = pa.table({
            "sha256": [a["sha256"] for a in assets],
            "bytes": pa.array([a.get("bytes") for a in assets], pa.int64()),
            "width": pa.array([a.get("width") for a in assets], pa.int32()),
            "height": pa.array([a.get("height") for a in assets], pa.int32()),
            "format": [a.get("format") for a in assets],
            **{k: pa.array([hexint(a.get(k)) for a in assets], pa.uint64())
               for k in ("phash", "dhash", "phash_mirror", "dhash_mirror")},
            "thumb": pa.array([a.get("thumb") for a in assets], pa.binary()),
            "hash_version": [a.get("hash_version") for a in assets],
            "detail": [_json(a.get("detail")) for a in assets],
            "hashed_at": pa.array([at] * len(assets), pa.timestamp("us", tz="UTC")),
        })
        self._insert("assets", table, replace_other_versions)

    def add_capture_times(self, job: str, run_id: str, records: list[dict]) -> None:
        """Insert capture-time records (``item_id, sha256, local, utc, offset_minutes, tz, provenance, conflicts``)."""
        if not records:
            return
        at = now()

        def ts(v: Any) -> datetime | None:
            if v is None or isinstance(v, datetime):
                return v
            return datetime.fromisoformat(str(v))

        def naive(v: Any) -> datetime | None:
            d = ts(v)
            return d.replace(tzinfo=None) if d is not None else None

        def aware(v: Any) -> datetime | None:
            d = ts(v)
            if d is None:
                return None
            return d if d.tzinfo else d.replace(tzinfo=timezone.utc)

        table = pa.table({
            "job": [job] * len(records),
            "run_id": [run_id] * len(records),
            "item_id": [r.get("item_id") for r in records],
            "sha256": [r.get("sha256") for r in records],
            "local": pa.array([naive(r.get("local")) for r in records], pa.timestamp("us")),
            "utc": pa.array([aware(r.get("utc")) for r in records], pa.timestamp("us", tz="UTC")),
            "offset_minutes": pa.array([r.get("offset_minutes") for r in records], pa.int32()),
            "tz": [r.get("tz") for r in records],
            "provenance": [r.get("provenance") for r in records],
            "conflicts": [_json(r.get("conflicts") or []) for r in records],
            "at": pa.array([at] * len(records), pa.timestamp("us", tz="UTC")),
        })
        self._insert("capture_times", table)

    def add_matches(self, job: str, run_id: str, records: list[dict]) -> None:
        """Insert match records (``query, candidate, distance, rank, chosen, method, detail``)."""
        if not records:
            return
        at = now()
        table = pa.table({
            "job": [job] * len(records),
            "run_id": [run_id] * len(records),
            "query": [r.get("query") for r in records],
            "candidate": [r.get("candidate") for r in records],
            "distance": pa.array([r.get("distance") for r in records], pa.float64()),
            "rank": pa.array([r.get("rank") for r in records], pa.int32()),
            "chosen": pa.array([bool(r.get("chosen")) for r in records], pa.bool_()),
            "method": [r.get("method") for r in records],
            "detail": [_json(r.get("detail")) for r in records],
            "at": pa.array([at] * len(records), pa.timestamp("us", tz="UTC")),
        })
        self._insert("matches", table)

    # -- reading ------------------------------------------------------------------------
    def query(self, sql: str, params: list | None = None) -> list[dict]:
        return _dicts(self.con.execute(sql, params or []))

    def reconciliation(self, *, run_id: str | None = None, job: str | None = None) -> dict:
        """``{listed, done, skipped, failed, pending, needs_review}`` for a run or a whole job."""
        if run_id:
            rows = self.query("SELECT * FROM reconciliation_run WHERE run_id = ?", [run_id])
        else:
            rows = self.query("SELECT * FROM reconciliation_job WHERE job = ?", [job])
        keys = ("listed", "done", "skipped", "failed", "pending", "needs_review")
        if not rows:
            return {k: 0 for k in keys}
        return {k: int(rows[0][k]) for k in keys}


def _dicts(cur: Any) -> list[dict]:
    """A query's whole result as dicts by column name."""
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


class LedgerWriter:
    """The flow's ledger writes, done in order on one thread of the flow process.

    The flow's loop hands each write here and goes straight on to submitting the next
    stage, instead of waiting for DuckDB (and, on a busy machine, for the interpreter
    lock after every call into it). The process is still the ledger's only writer and
    the writes happen exactly in the order they were put.

    The writer gathers the writes put within ``gather_seconds`` of the first one and
    commits them together, one insert per table (:meth:`Ledger.merged_inserts`):
    DuckDB's cost is per statement, so this is a fraction of writing each batch's
    stage on its own. A crash loses at most the writes of the gathering under way
    (a rerun redoes that work, finding delivered photos in place), and whatever it
    leaves is a prefix of what the loop recorded. The queue is bounded: a writer that
    falls behind slows the loop down rather than holding every outcome in memory.

    A write that fails stops the writer (later writes would describe work whose
    earlier stages are not recorded); the error is raised in the flow by the next
    :meth:`put`, :meth:`check` or :meth:`flush`.
    """

    _FLUSH = object()  # commit what is gathered now
    _STOP = None  # commit what is gathered and end

    def __init__(self, ledger: Ledger, *, max_pending: int = 8, gather_seconds: float = 1.0) -> None:
        self.ledger = ledger
        self.gather_seconds = gather_seconds
        self._jobs: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="ledger-writer", daemon=True)
        self._thread.start()

    def _gather(self) -> list:
        """The next writes to commit together (the last may be a flush or stop marker)."""
        jobs = [self._jobs.get()]
        deadline = time.monotonic() + self.gather_seconds
        while jobs[-1] is not self._STOP and jobs[-1] is not self._FLUSH:
            try:
                jobs.append(self._jobs.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return jobs

    def _loop(self) -> None:
        while True:
            jobs = self._gather()
            writes = [job for job in jobs if job is not self._STOP and job is not self._FLUSH]
            try:
                if writes and self._error is None:
                    with self.ledger.merged_inserts():
                        for fn, args, kwargs in writes:
                            fn(*args, **kwargs)
            except BaseException as exc:  # kept for the flow's thread to raise
                self._error = exc
            finally:
                for _ in jobs:
                    self._jobs.task_done()
            if jobs[-1] is self._STOP:
                return

    def check(self) -> None:
        """Raise the error a write ended with, if one did."""
        if self._error is not None:
            raise LedgerWriteFailed(f"recording to the ledger {self.ledger.path} failed: "
                                    f"{type(self._error).__name__}: {self._error}") from self._error

    def put(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        """Call ``fn(*args, **kwargs)`` on the writer thread, after every write put before it."""
        self.check()
        self._jobs.put((fn, args, kwargs))

    def flush(self) -> None:
        """Commit every write put so far and wait for it; raise if one failed."""
        if self._thread.is_alive():
            self._jobs.put(self._FLUSH)
        self._jobs.join()
        self.check()

    def close(self) -> None:
        """Commit the pending writes and stop the thread (errors are left to :meth:`check`)."""
        if self._thread.is_alive():
            self._jobs.put(self._STOP)
            self._thread.join()


class LedgerWriteFailed(RuntimeError):
    """A write on the :class:`LedgerWriter` thread failed; the run cannot be recorded further."""
