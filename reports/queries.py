"""What a report says, asked of the ledger with DuckDB aggregates.

Every function here takes a :class:`Scope` (one run, or a whole job optionally since
a date) and a DuckDB connection, and returns plain rows. The work is done by DuckDB
over the ``events`` table and the ledger's views, never by Python loops over events,
so a million events summarise in well under a second.

:func:`prepare` materialises the scope's items, with the status the ledger's views
give them (the report works out no status of its own), once into a temporary table
(``_rep_items``) that the other queries join; temporary tables
live in the connection's memory, so this works on a read-only ledger and on the
flow's own writing connection alike (the flow is the only writer; a report only
reads). Call :func:`release` when done.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb

# The order in which stages are shown; stages not named here follow, in order of appearance.
STAGE_ORDER = (
    "list", "fetch", "hash", "capture_time", "match", "resolve", "master", "deliver",
    "replace", "restore_date", "verify",
)
ATTENTION_LIMIT = 500  # items shown (with thumbnails) in the HTML; the CSV has them all


@dataclass
class Scope:
    """What a report covers: one run of a job, or the job across its runs (since a date)."""

    job: str
    run_id: str | None = None
    since: datetime | None = None
    runs: list[dict] = field(default_factory=list)

    @property
    def label(self) -> str:
        if self.run_id:
            return f"run {self.run_id}"
        return "all runs" + (f" since {self.since:%Y-%m-%d %H:%M}" if self.since else "")

    def events_filter(self, alias: str = "e") -> tuple[str, list]:
        """SQL condition (and parameters) selecting this scope's events."""
        if self.run_id:
            return f"{alias}.run_id = ?", [self.run_id]
        if self.since:
            return f"{alias}.job = ? AND {alias}.\"at\" >= ?", [self.job, self.since]
        return f"{alias}.job = ?", [self.job]


def rows(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[dict]:
    """Run a query and return its rows as dicts."""
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def progress_bar(con, on: bool) -> bool:
    """Turn DuckDB's terminal progress bar on or off; returns the previous setting."""
    before = str(con.execute("SELECT current_setting('enable_progress_bar')").fetchall()[0][0]).lower() == "true"
    con.execute(f"SET enable_progress_bar = {'true' if on else 'false'}")
    return before


def resolve_scope(con, *, run_id: str | None, job: str | None, since: datetime | None) -> Scope:
    """Which job and runs a report covers; the job of the latest run when none is named."""
    if run_id:
        found = rows(con, "SELECT * FROM runs WHERE run_id = ?", [run_id])
        if not found:
            raise LookupError(f"the ledger has no run {run_id!r}")
        return Scope(job=found[0]["job"], run_id=run_id, runs=found)
    if not job:
        last = rows(con, "SELECT job FROM runs ORDER BY started_at DESC LIMIT 1")
        if not last:
            raise LookupError("the ledger has no runs yet")
        job = last[0]["job"]
    params: list = [job]
    where = "job = ?"
    if since:
        where += " AND coalesce(finished_at, started_at) >= ?"
        params.append(since)
    runs = rows(con, f"SELECT * FROM runs WHERE {where} ORDER BY started_at", params)
    known = con.execute("SELECT count(*) FROM items WHERE job = ?", [job]).fetchall()[0][0]
    if not runs and not known:
        raise LookupError(f"the ledger has no job {job!r}")
    return Scope(job=job, since=since, runs=runs)


def prepare(con, scope: Scope) -> None:
    """Materialise the scope's items with their status into ``_rep_items``.

    Statuses are the ledger's own (:mod:`tasks.ledger`): for a job, ``item_status``
    (every item of the job; with ``since``, those listed since then); for a run,
    ``run_item_status`` (every item the run listed, as the run left it, items an earlier
    run finished counting as *carried*). ``last_seq`` is the event that gave the status
    (its detail and time are in ``events``). ``cutoff`` is, for a run, each item's last
    event in that run: the report shows the items' stages up to there.
    """
    if scope.run_id:
        con.execute(
            """CREATE OR REPLACE TEMP TABLE _rep_items AS
               WITH cut AS (
                   SELECT item_id, max(seq) AS cutoff FROM events WHERE run_id = ? AND job = ? GROUP BY item_id)
               SELECT s.job, s.item_id, i.name, i.source_ref, c.cutoff, s.seq AS last_seq,
                      s.stage, s.outcome, s.reason, s.status, s.carried
               FROM run_item_status s JOIN cut c USING (item_id)
               LEFT JOIN items i ON i.job = s.job AND i.item_id = s.item_id
               WHERE s.run_id = ? AND s.job = ?""",
            [scope.run_id, scope.job, scope.run_id, scope.job])
        return
    listed_since = ""
    params: list = [scope.job]
    if scope.since:
        listed_since = """ AND s.item_id IN (
            SELECT item_id FROM events WHERE job = ? AND stage = 'list' AND "at" >= ?)"""
        params += [scope.job, scope.since]
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _rep_items AS
            SELECT s.job, s.item_id, s.name, s.source_ref, NULL::BIGINT AS cutoff, s.seq AS last_seq,
                   s.stage, s.outcome, s.reason, s.status, false AS carried
            FROM item_status s WHERE s.job = ?{listed_since}""",
        params)


def release(con) -> None:
    """Drop the temporary tables :func:`prepare` made."""
    con.execute("DROP TABLE IF EXISTS _rep_items")
    con.execute("DROP TABLE IF EXISTS _rep_stage_latest")


def reconciliation(con) -> dict[str, int]:
    """``listed, done, skipped, failed, pending, needs_review, carried`` over the scope."""
    r = rows(con, """SELECT count(*) AS listed,
                  count(*) FILTER (WHERE status = 'done') AS done,
                  count(*) FILTER (WHERE status = 'skipped') AS skipped,
                  count(*) FILTER (WHERE status = 'failed') AS failed,
                  count(*) FILTER (WHERE status = 'pending') AS pending,
                  count(*) FILTER (WHERE outcome = 'needs_review') AS needs_review,
                  count(*) FILTER (WHERE carried) AS carried
           FROM _rep_items""")[0]
    return {k: int(v or 0) for k, v in r.items()}


def stage_latest(con, scope: Scope) -> None:
    """Materialise ``_rep_stage_latest``: each scope item's latest event per stage.

    For a run, "latest" means as the run left it (no event after the item's last
    one in that run), so a report regenerated later still shows that run. The
    ``detail`` JSON stays in ``events`` (joined by ``seq`` where a few rows need it).
    """
    con.execute(
        """CREATE OR REPLACE TEMP TABLE _rep_stage_latest AS
           WITH latest AS (
               SELECT max(e.seq) AS seq FROM events e JOIN _rep_items i USING (item_id)
               WHERE e.job = ? AND (i.cutoff IS NULL OR e.seq <= i.cutoff)
               GROUP BY e.item_id, e.stage)
           SELECT e.item_id, e.stage, e.seq, e.outcome, e.reason, e.sha256, e.run_id, e."at", e.bytes
           FROM events e SEMI JOIN latest USING (seq) WHERE e.job = ?""",
        [scope.job, scope.job],
    )


def stages(con) -> list[str]:
    """The stages present in the scope, in pipeline order."""
    present = [r[0] for r in con.execute(
        "SELECT stage FROM _rep_stage_latest GROUP BY stage ORDER BY min(seq)").fetchall()]
    known = [s for s in STAGE_ORDER if s in present]
    return known + [s for s in present if s not in known]


def stage_outcomes(con) -> list[dict]:
    """Per stage: how many items ended that stage ok, skipped, failed or needing review."""
    return rows(con, """SELECT stage,
                  count(*) FILTER (WHERE outcome = 'ok') AS ok,
                  count(*) FILTER (WHERE outcome = 'skipped') AS skipped,
                  count(*) FILTER (WHERE outcome = 'failed') AS failed,
                  count(*) FILTER (WHERE outcome = 'needs_review') AS needs_review,
                  count(*) AS total
           FROM _rep_stage_latest GROUP BY stage""")


def reasons(con) -> list[dict]:
    """Per stage, outcome and reason code: how many items (latest event per stage)."""
    return rows(con, """SELECT stage, outcome, coalesce(reason, '') AS reason, count(*) AS count
           FROM _rep_stage_latest WHERE reason IS NOT NULL OR outcome <> 'ok'
           GROUP BY ALL ORDER BY count DESC, stage, reason, outcome""")


def final_reasons(con) -> list[dict]:
    """Why items ended where they did: status and reason of each item's last word."""
    return rows(con, """SELECT status, coalesce(stage, '') AS stage, coalesce(reason, '') AS reason,
                  count(*) AS count
           FROM _rep_items GROUP BY ALL ORDER BY count DESC, status, reason, stage""")


def activity(con, scope: Scope) -> dict:
    """Events, attempts, bytes and the time span of the scope's work."""
    cond, params = scope.events_filter()
    r = rows(con, f"""SELECT count(*) AS events, min("at") AS first_at, max("at") AS last_at,
                   coalesce(sum(bytes) FILTER (WHERE outcome = 'ok'), 0) AS bytes,
                   count(*) FILTER (WHERE attempt > 1) AS retried_events,
                   coalesce(sum(duration_ms), 0) AS busy_ms
            FROM events e WHERE {cond}""", params)[0]
    return r


def throughput(con, scope: Scope, bucket_seconds: int) -> list[dict]:
    """Items finishing per time bucket (done, skipped, failed), from event timestamps."""
    cond, params = scope.events_filter()
    return rows(con, f"""SELECT time_bucket(INTERVAL '{int(bucket_seconds)} seconds', "at") AS bucket,
                   count(*) FILTER (WHERE final AND outcome = 'ok') AS done,
                   count(*) FILTER (WHERE outcome = 'skipped') AS skipped,
                   count(*) FILTER (WHERE outcome = 'failed') AS failed,
                   coalesce(sum(bytes) FILTER (WHERE final AND outcome = 'ok'), 0) AS bytes
            FROM events e WHERE {cond} AND stage <> 'list'
            GROUP BY bucket ORDER BY bucket""", params)


def attention(con, limit: int = ATTENTION_LIMIT) -> tuple[int, list[dict]]:
    """Items a person should look at (failed or needing review), with the last event's detail."""
    total = con.execute(
        "SELECT count(*) FROM _rep_items WHERE status = 'failed' OR outcome = 'needs_review'"
    ).fetchall()[0][0]
    found = rows(con, """WITH a AS (
               SELECT * FROM _rep_items WHERE status = 'failed' OR outcome = 'needs_review'
               ORDER BY status, stage, reason, item_id LIMIT ?)
           SELECT a.item_id, a.name, a.source_ref, a.status, a.outcome, a.stage, a.reason,
                  e.detail, e.run_id, e."at",
                  (SELECT arg_max(sha256, seq) FROM _rep_stage_latest s
                   WHERE s.item_id = a.item_id AND s.sha256 IS NOT NULL) AS sha256
           FROM a LEFT JOIN events e ON e.seq = a.last_seq
           ORDER BY a.status, a.stage, a.reason, a.item_id""", [limit])
    for r in found:
        r["detail"] = _loads(r["detail"])
    return int(total), found


def outcomes_table(con, stage_names: list[str]):
    """One row per item: its status and final word, then outcome and reason per stage (Arrow)."""
    per_stage = []
    for st in stage_names:
        lit = st.replace("'", "''")
        col = _column(st)
        per_stage.append(f"any_value(outcome) FILTER (WHERE stage = '{lit}') AS \"{col}\"")
        per_stage.append(f"any_value(reason) FILTER (WHERE stage = '{lit}') AS \"{col}_reason\"")
    extra = (",\n" + ",\n".join(per_stage)) if per_stage else ""
    sql = f"""WITH piv AS (
                  SELECT item_id, arg_max(sha256, seq) FILTER (WHERE sha256 IS NOT NULL) AS sha256{extra}
                  FROM _rep_stage_latest GROUP BY item_id)
              SELECT i.job, i.item_id, i.name, i.source_ref, i.status, i.stage AS last_stage,
                     i.outcome AS last_outcome, i.reason AS last_reason, piv.* EXCLUDE (item_id)
              FROM _rep_items i LEFT JOIN piv USING (item_id) ORDER BY i.item_id"""
    return con.sql(sql).to_arrow_table()


def _column(stage: str) -> str:
    """A stage name safe to use as a column name."""
    return "".join(c if c.isalnum() or c == "_" else "_" for c in stage)


def _loads(text: Any) -> Any:
    if text is None or not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def best_matches(con, query_ids: list[str], per_query: int = 2) -> dict[str, list[dict]]:
    """The best ``per_query`` candidates of each query (latest run's matches), best first."""
    if not query_ids:
        return {}
    return _grouped_by_query(con, query_ids, f"""WITH latest AS (
                SELECT m.*, dense_rank() OVER (PARTITION BY m.query ORDER BY m."at" DESC) AS r
                FROM matches m SEMI JOIN _rep_q USING (query))
            SELECT query, candidate, distance, rank, chosen, method, detail FROM latest
            WHERE r = 1 QUALIFY row_number() OVER (PARTITION BY query ORDER BY chosen DESC, rank, distance, candidate) <= {int(per_query)}
            ORDER BY query, chosen DESC, rank, distance, candidate""")


def _grouped_by_query(con, queries: list[str], sql: str) -> dict[str, list[dict]]:
    """The rows of ``sql``, which reads the wanted queries from the table ``_rep_q``
    (``query``), grouped by their ``query`` in the order ``sql`` gives them."""
    import pyarrow as pa

    con.register("_rep_q", pa.table({"query": queries}))
    try:
        found = rows(con, sql)
    finally:
        con.unregister("_rep_q")
    out: dict[str, list[dict]] = {}
    for r in found:
        out.setdefault(r["query"], []).append(r)
    return out


def asset_thumbs(con, shas: list[str]) -> dict[str, dict]:
    """``{sha256: {thumb, width, height, detail}}`` for the assets that have a thumbnail."""
    shas = [s for s in shas if s]
    if not shas:
        return {}
    import pyarrow as pa

    con.register("_rep_sha", pa.table({"sha256": shas}))
    try:
        found = rows(con, """SELECT sha256, thumb, width, height, detail FROM assets
                             SEMI JOIN _rep_sha USING (sha256) WHERE thumb IS NOT NULL""")
    finally:
        con.unregister("_rep_sha")
    return {r["sha256"]: r for r in found}


def shas_of(con, keys: list[str]) -> dict[str, str]:
    """``{key: sha256}`` for match candidates named by item id (their latest content hash)
    or by the hash itself; one query for all of them."""
    out = {k: k for k in keys if k and len(k) == 64 and all(c in "0123456789abcdef" for c in k)}
    ask = sorted({k for k in keys if k and k not in out})
    if ask:
        import pyarrow as pa

        con.register("_rep_keys", pa.table({"item_id": ask}))
        try:
            out.update({r[0]: r[1] for r in con.execute(
                """SELECT item_id, arg_max(sha256, seq) FROM events SEMI JOIN _rep_keys USING (item_id)
                   WHERE sha256 IS NOT NULL GROUP BY item_id""").fetchall()})
        finally:
            con.unregister("_rep_keys")
    return out


# -- story queries ------------------------------------------------------------------------
def _table_filter(scope: Scope, alias: str) -> tuple[str, list]:
    """Condition selecting a side table's rows (capture_times, matches) for the scope."""
    if scope.run_id:
        return f"{alias}.run_id = ?", [scope.run_id]
    if scope.since:
        return f"{alias}.job = ? AND {alias}.\"at\" >= ?", [scope.job, scope.since]
    return f"{alias}.job = ?", [scope.job]


def prepare_stories(con, scope: Scope) -> None:
    """Materialise the scope's capture times (latest per item), matches (latest per query)
    and checks of the archive (:func:`prepare_fixity`).

    For a run, as the run left them: records up to the run's end, so the photos
    an earlier run finished (carried) keep the capture times and matches it recorded.
    """
    cutoff, params = "", [scope.job]
    if scope.run_id:
        cutoff = """ AND x."at" <= (SELECT coalesce(max(finished_at), now()) FROM runs WHERE run_id = ?)"""
        params = [scope.job, scope.run_id]
    elif scope.since:
        cutoff = ' AND x."at" >= ?'
        params = [scope.job, scope.since]
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _rep_ct AS
            SELECT x.* FROM capture_times x SEMI JOIN _rep_items i USING (item_id)
            WHERE x.job = ? {cutoff}
            QUALIFY row_number() OVER (PARTITION BY x.item_id ORDER BY x."at" DESC) = 1""", params)
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _rep_matches AS
            SELECT x.* FROM matches x WHERE x.job = ? {cutoff}
            QUALIFY dense_rank() OVER (PARTITION BY x.query ORDER BY x."at" DESC) = 1""", params)
    prepare_fixity(con, scope)


def release_stories(con) -> None:
    con.execute("DROP TABLE IF EXISTS _rep_ct")
    con.execute("DROP TABLE IF EXISTS _rep_matches")
    con.execute("DROP TABLE IF EXISTS _rep_fixity")


#: a ``fixity`` event that checked the archive (a rerun's look, a ``verify``), not an upload's own check
ARCHIVE_CHECK = "json_extract_string({a}.detail, '$.expected_sha256') IS NOT NULL"


def prepare_fixity(con, scope: Scope) -> None:
    """Materialise ``_rep_fixity``: each photo's latest check of the archive in the scope
    (a ``verify`` run's, or a rerun's look at the destination), with what it found
    (``verdict``: ok, missing, changed, unreadable; the detail's sizes and hashes) and
    what was done about it next in the scope (``then_*``: the photo's first ``deliver``
    or ``repair`` event after the check: delivered again, or left alone and why).

    Upload checks (the S3 destination's ``fixity`` of each object it stores) carry no
    ``expected_sha256`` and are not in it."""
    cond, params = scope.events_filter("e")
    then_cond, then_params = scope.events_filter("x")
    field = "json_extract_string(f.detail, '$.{}')".format
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _rep_fixity AS
            WITH f AS (
                SELECT e.seq, e.run_id, e.item_id, e.outcome, e.reason, e.detail
                FROM events e SEMI JOIN _rep_items i USING (item_id)
                WHERE {cond} AND e.stage = 'fixity' AND {ARCHIVE_CHECK.format(a='e')}
                QUALIFY row_number() OVER (PARTITION BY e.item_id ORDER BY e.seq DESC) = 1),
            nxt AS (
                SELECT f.item_id, min(x.seq) AS seq FROM f JOIN events x ON x.item_id = f.item_id AND x.seq > f.seq
                WHERE {then_cond} AND x.stage IN ('deliver', 'repair') GROUP BY f.item_id)
            SELECT f.item_id, coalesce(i.name, f.item_id) AS name, i.source_ref, f.seq, f.run_id, r.flow,
                   f.outcome, f.reason,
                   CASE WHEN f.outcome = 'ok' THEN 'ok'
                        WHEN f.reason IN ('missing', 'missing_at_destination') THEN 'missing'
                        ELSE f.reason END AS verdict,
                   {field('method')} AS method, {field('target')} AS target,
                   {field('expected_sha256')} AS expected_sha256,
                   TRY_CAST({field('expected_bytes')} AS BIGINT) AS expected_bytes,
                   {field('found_sha256')} AS found_sha256,
                   TRY_CAST({field('found_bytes')} AS BIGINT) AS found_bytes,
                   {field('changed_by')} AS changed_by, {field('found_by')} AS found_by,
                   {field('message')} AS message,
                   x.stage AS then_stage, x.outcome AS then_outcome, x.reason AS then_reason,
                   x.detail AS then_detail
            FROM f LEFT JOIN nxt USING (item_id) LEFT JOIN events x ON x.seq = nxt.seq
            LEFT JOIN _rep_items i USING (item_id) LEFT JOIN runs r ON r.run_id = f.run_id""",
        params + then_params)


def fixity_counts(con) -> dict[str, Any]:
    """What the scope's checks of the archive found and did, from ``_rep_fixity``:
    ``checked``, ``ok``, ``missing``, ``changed``, ``unreadable`` (photos, by their latest
    check), ``by_method`` and ``changed_by`` ({name: photos}), and of the problems:
    ``delivered_again`` (``changed_copies_kept`` of them after setting the changed copy
    aside), ``delivery_failed`` and ``left_alone`` ({reason: photos})."""
    r = rows(con, """SELECT count(*) AS checked,
                  count(*) FILTER (WHERE verdict = 'ok') AS ok,
                  count(*) FILTER (WHERE verdict = 'missing') AS missing,
                  count(*) FILTER (WHERE verdict = 'changed') AS changed,
                  count(*) FILTER (WHERE verdict = 'unreadable') AS unreadable,
                  count(*) FILTER (WHERE verdict <> 'ok' AND then_stage = 'deliver' AND then_outcome = 'ok')
                      AS delivered_again,
                  count(*) FILTER (WHERE verdict <> 'ok' AND then_stage = 'deliver' AND then_outcome <> 'ok')
                      AS delivery_failed,
                  count(*) FILTER (WHERE verdict <> 'ok' AND then_stage = 'deliver' AND then_outcome = 'ok'
                                   AND json_extract_string(then_detail, '$.repair.changed_copy') IS NOT NULL)
                      AS changed_copies_kept
           FROM _rep_fixity""")[0]
    out: dict[str, Any] = {k: int(v or 0) for k, v in r.items()}

    def by(column: str, where: str = "true") -> dict[str, int]:
        return {str(k): int(n) for k, n in con.execute(
            f"SELECT {column}, count(*) FROM _rep_fixity WHERE {where} AND {column} IS NOT NULL "
            "GROUP BY ALL ORDER BY count(*) DESC, 1").fetchall()}

    out["by_method"] = by("method")
    out["changed_by"] = by("changed_by", "verdict = 'changed'")
    out["left_alone"] = by("then_reason", "verdict <> 'ok' AND then_stage = 'repair'")
    return out


def fixity_problems(con, limit: int) -> list[dict]:
    """The photos whose latest check found them missing, changed or unreadable, with
    what was done about them (``then_detail`` as a value), by kind of problem and name."""
    found = rows(con, f"""SELECT * EXCLUDE (seq) FROM _rep_fixity WHERE verdict <> 'ok'
                          ORDER BY list_position(['missing', 'changed', 'unreadable'], verdict) NULLS LAST,
                                   name, item_id LIMIT {int(limit)}""")
    for r in found:
        r["then_detail"] = _loads(r["then_detail"])
    return found


def upload_checks(con, scope: Scope) -> dict[tuple[str, str], int]:
    """``{(outcome, reason): objects}`` of the upload checks in the scope (the S3
    destination's ``fixity`` of each object it stored, not the archive's checks), the
    latest per photo."""
    cond, params = scope.events_filter("e")
    return {(r[0], r[1] or ""): int(r[2]) for r in con.execute(
        f"""WITH u AS (SELECT e.outcome, e.reason FROM events e SEMI JOIN _rep_items i USING (item_id)
                       WHERE {cond} AND e.stage = 'fixity' AND NOT ({ARCHIVE_CHECK.format(a='e')})
                       QUALIFY row_number() OVER (PARTITION BY e.item_id ORDER BY e.seq DESC) = 1)
            SELECT outcome, reason, count(*) FROM u GROUP BY ALL ORDER BY count(*) DESC, 2""", params).fetchall()}


def count(con, table: str) -> int:
    return int(con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])


def provenance(con) -> list[dict]:
    """Capture times by provenance: how many, how many with conflicting clues, how many zones."""
    return rows(con, """SELECT coalesce(provenance, 'unknown') AS provenance, count(*) AS count,
                  count(*) FILTER (WHERE conflicts IS NOT NULL AND conflicts NOT IN ('[]', 'null')) AS conflicts,
                  count(*) FILTER (WHERE utc IS NULL) AS no_time,
                  count(DISTINCT tz) AS zones
           FROM _rep_ct GROUP BY ALL ORDER BY list_position(
               ['sidecar:utc', 'source:flickr', 'exif:offset', 'xmp:offset', 'iptc:offset', 'gps:time',
                'gps:position', 'gps:utc', 'makernote', 'exif:datetime', 'filename', 'rule', 'previous',
                'default', 'unknown', 'none'], any_value(provenance)) NULLS LAST, count DESC, provenance""")


PLAN_SQL = """SELECT coalesce(i.name, c.item_id) AS name, c.item_id, c."local", c.utc,
                     c.offset_minutes, c.tz, c.provenance, c.conflicts,
                     json_extract_string(e.detail, '$.plan') AS would
              FROM _rep_ct c LEFT JOIN _rep_items i USING (item_id)
              LEFT JOIN _rep_stage_latest l ON l.item_id = c.item_id AND l.stage = 'deliver'
              LEFT JOIN events e ON e.seq = l.seq
              ORDER BY c.utc NULLS LAST, name, c.item_id"""


def capture_plan(con, limit: int | None) -> list[dict]:
    """Every photo with its local and UTC capture time, provenance and, on a dry run, what
    the destination would do with it (``would``: upload, hold_for_review...), in capture order."""
    return rows(con, PLAN_SQL + (f" LIMIT {int(limit)}" if limit else ""))


def capture_plan_table(con):
    """The whole plan as an Arrow table (for plan.csv)."""
    return con.sql(PLAN_SQL).to_arrow_table()


def plan_counts(con) -> list[dict]:
    """How many photos the dry run would upload, hold, skip... (the deliver events' ``plan``)."""
    return rows(con, """SELECT json_extract_string(e.detail, '$.plan') AS would, count(*) AS count
           FROM events e SEMI JOIN _rep_stage_latest l USING (seq)
           WHERE e.stage = 'deliver' AND json_extract_string(e.detail, '$.plan') IS NOT NULL
           GROUP BY ALL ORDER BY count DESC, would""")


def distance_histogram(con) -> list[dict]:
    """Counts of match distances (rounded to 2 decimals) for best candidates and the rest."""
    return rows(con, """SELECT (rank = 1 OR chosen) AS best, round(distance, 2) AS distance, count(*) AS count
           FROM _rep_matches WHERE distance IS NOT NULL GROUP BY ALL ORDER BY distance, best""")


def match_methods(con) -> list[str]:
    return [r[0] for r in con.execute(
        "SELECT coalesce(method, '') FROM _rep_matches GROUP BY 1 ORDER BY count(*) DESC, 1").fetchall()]


def match_threshold(con) -> float | None:
    """The threshold the matching ran with, if the ledger recorded it."""
    r = con.execute("""SELECT max(TRY_CAST(json_extract_string(detail, '$.threshold') AS DOUBLE))
                       FROM _rep_matches""").fetchall()
    if r and r[0][0] is not None:
        return float(r[0][0])
    r = con.execute("""SELECT max(TRY_CAST(json_extract_string(e.detail, '$.threshold') AS DOUBLE))
                       FROM events e SEMI JOIN _rep_stage_latest l USING (seq)
                       WHERE e.stage IN ('match', 'resolve')""").fetchall()
    return float(r[0][0]) if r and r[0][0] is not None else None


def query_margins(con, higher_is_closer: bool, limit: int = 200) -> tuple[dict, list[dict]]:
    """Per query: best candidate, its distance, the runner-up's and the margin between them.

    Returns (totals, rows): totals has the number of queries and the smallest margin
    between a chosen candidate and the best of the rest.
    """
    order = "DESC" if higher_is_closer else "ASC"
    sign = "" if higher_is_closer else "-"
    sql = f"""WITH ranked AS (
                SELECT query, candidate, distance, chosen,
                       row_number() OVER (PARTITION BY query ORDER BY chosen DESC, distance {order}, candidate) AS r
                FROM _rep_matches WHERE distance IS NOT NULL),
              per AS (
                SELECT query,
                       any_value(candidate) FILTER (WHERE r = 1) AS best,
                       any_value(distance) FILTER (WHERE r = 1) AS best_distance,
                       bool_or(chosen) AS chosen,
                       any_value(candidate) FILTER (WHERE r = 2) AS runner_up,
                       any_value(distance) FILTER (WHERE r = 2) AS runner_up_distance
                FROM ranked GROUP BY query)
              SELECT p.*, {sign}(p.best_distance - p.runner_up_distance) AS margin,
                     coalesce(i.name, p.query) AS name
              FROM per p LEFT JOIN items i ON i.item_id = p.query AND i.job = (SELECT any_value(job) FROM _rep_items)"""
    totals = rows(con, f"""SELECT count(*) AS queries, count(*) FILTER (WHERE chosen) AS chosen,
                         min(margin) FILTER (WHERE chosen) AS min_margin,
                         min(best_distance) FILTER (WHERE chosen) AS chosen_min,
                         max(best_distance) FILTER (WHERE chosen) AS chosen_max
                  FROM ({sql})""")[0]
    others = rows(con, f"""SELECT {'max' if higher_is_closer else 'min'}(distance) AS best_other
                  FROM _rep_matches WHERE NOT chosen AND distance IS NOT NULL""")[0]
    totals["best_other"] = others["best_other"]
    found = rows(con, f"SELECT * FROM ({sql}) ORDER BY chosen DESC, margin NULLS FIRST, query LIMIT {int(limit)}")
    return totals, found


def detail_counts(con, stage: str, key: str) -> list[dict]:
    """Counts of one detail field's values over a stage's latest events (e.g. deliver.storage_class)."""
    return rows(con, f"""SELECT coalesce(json_extract_string(e.detail, '$.{key}'), '(none)') AS value,
                   count(*) AS count FROM events e SEMI JOIN _rep_stage_latest l USING (seq)
            WHERE e.stage = ? GROUP BY ALL ORDER BY count DESC, value""", [stage])


def reason_counts(con) -> dict[tuple[str, str, str], int]:
    """``{(stage, outcome, reason): items}`` over the scope's latest event per stage."""
    return {(r[0], r[1], r[2] or ""): int(r[3]) for r in con.execute(
        "SELECT stage, outcome, reason, count(*) FROM _rep_stage_latest GROUP BY ALL").fetchall()}


def gone_from_source(con, scope: Scope, limit: int = 200) -> tuple[int, list[dict]]:
    """Photos earlier runs of the job listed that this run's listing did not: gone from the
    source since (deleted there). Nothing is done about them (the destination keeps its
    copies); the report names them. Meaningful only when the run listed the source to its
    end (the source's ``listing_complete`` fact). Returns (how many, the first ``limit``)."""
    if not scope.run_id:
        return 0, []
    con.execute(
        """CREATE OR REPLACE TEMP TABLE _rep_gone AS
           SELECT e.item_id, max(e."at") AS last_listed, arg_max(e.run_id, e."at") AS last_run
           FROM events e
           WHERE e.job = ? AND e.stage = 'list' AND e.run_id <> ?
             AND e."at" < (SELECT started_at FROM runs WHERE run_id = ?)
             AND e.item_id NOT IN (SELECT item_id FROM events WHERE run_id = ? AND stage = 'list')
           GROUP BY e.item_id""", [scope.job, scope.run_id, scope.run_id, scope.run_id])
    try:
        total = count(con, "_rep_gone")
        found = rows(con, f"""SELECT g.item_id, i.name, i.source_ref, g.last_listed, g.last_run FROM _rep_gone g
                              LEFT JOIN items i ON i.job = ? AND i.item_id = g.item_id
                              ORDER BY g.item_id LIMIT {int(limit)}""", [scope.job])
    finally:
        con.execute("DROP TABLE IF EXISTS _rep_gone")
    return total, found


def fetch_details(con, reasons: tuple[str, ...], limit: int = 200) -> list[dict]:
    """The scope's latest ``fetch`` events with these reasons, with their detail (e.g. the
    size a size-limited photo came in)."""
    if not reasons:
        return []
    marks = ", ".join("?" for _ in reasons)
    return rows(con, f"""SELECT l.item_id, i.name, l.reason, e.detail FROM _rep_stage_latest l
                         JOIN events e ON e.seq = l.seq LEFT JOIN _rep_items i ON i.item_id = l.item_id
                         WHERE l.stage = 'fetch' AND l.reason IN ({marks})
                         ORDER BY l.item_id LIMIT {int(limit)}""", list(reasons))


def arrived_sample(con, size: int) -> tuple[int, list[dict]]:
    """A sample of what arrived, for the report's contact sheet: ``size`` of the scope's
    delivered items (status done), spread evenly over them in the order they were
    delivered (the first, the last, and evenly between; all of them when there are no
    more), each with its name, content hash, where it was delivered (the deliver event's
    ``target``, the run that delivered it), the path a fetch left it at, and its capture
    time (``_rep_ct``). Returns (how many arrived, the sample)."""
    con.execute("""CREATE OR REPLACE TEMP TABLE _rep_arrived AS
        SELECT i.item_id, i.name, i.source_ref, d.seq, d.sha256, d.run_id,
               row_number() OVER (ORDER BY d.seq, i.item_id) - 1 AS n
        FROM _rep_items i JOIN _rep_stage_latest d ON d.item_id = i.item_id AND d.stage = 'deliver'
        WHERE i.status = 'done' AND d.outcome = 'ok'""")
    try:
        total = int(con.execute("SELECT count(*) FROM _rep_arrived").fetchall()[0][0])
        if not total or size <= 0:
            return total, []
        picks = sorted({round(k * (total - 1) / (size - 1)) for k in range(size)} if total > size and size > 1
                       else set(range(min(total, size))))
        found = rows(con, f"""
            SELECT a.item_id, a.name, a.source_ref, a.sha256, a.run_id, a.n,
                   json_extract_string(e.detail, '$.target') AS target,
                   (SELECT json_extract_string(f.detail, '$.local_path') FROM events f
                    WHERE f.seq = (SELECT max(s.seq) FROM _rep_stage_latest s
                                   WHERE s.item_id = a.item_id AND s.stage = 'fetch')) AS local_path,
                   c.local, c.utc, c.offset_minutes, c.tz
            FROM _rep_arrived a JOIN events e ON e.seq = a.seq
            LEFT JOIN _rep_ct c ON c.item_id = a.item_id
            WHERE a.n IN ({', '.join(str(int(p)) for p in picks)})
            ORDER BY a.n""")
        return total, found
    finally:
        con.execute("DROP TABLE IF EXISTS _rep_arrived")


def top_candidates(con, queries: list[str], higher_is_closer: bool, k: int = 3) -> dict[str, list[dict]]:
    """``{query: [{candidate, distance, rank, chosen}]}``: each query's ``k`` best candidates
    in the scope's matches (``_rep_matches``), best first (the chosen one leading, as
    :func:`query_margins` ranks them), each with the query's ``source_ref`` (``query_ref``)."""
    if not queries:
        return {}
    order = "DESC" if higher_is_closer else "ASC"
    return _grouped_by_query(con, queries, f"""SELECT m.query, m.candidate, m.distance, m.rank, m.chosen, m.detail,
                   (SELECT any_value(i.source_ref) FROM _rep_items i WHERE i.item_id = m.query) AS query_ref
            FROM _rep_matches m SEMI JOIN _rep_q USING (query) WHERE m.distance IS NOT NULL
            QUALIFY row_number() OVER (PARTITION BY m.query ORDER BY m.chosen DESC, m.distance {order}, m.candidate) <= {int(k)}
            ORDER BY m.query, m.chosen DESC, m.distance {order}, m.candidate""")
