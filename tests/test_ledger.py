"""The ledger: schema, bulk appends, exact reconciliation per run and per job, reruns."""

import subprocess
import sys
import textwrap

import duckdb
import pytest

from photo_escape.outcomes import outcome
from tasks.ledger import SCHEMA_VERSION, Ledger, LedgerBusy, LedgerWriteFailed, LedgerWriter


def _items(n, prefix="p"):
    return [{"item_id": f"{prefix}{i}", "source_ref": f"/src/{prefix}{i}.jpg", "name": f"{prefix}{i}.jpg",
             "fingerprint": f"{i}:1"} for i in range(n)]


def test_schema_is_created_and_versioned(tmp_path):
    path = tmp_path / "l.duckdb"
    with Ledger(path) as led:
        assert led.schema_version() == SCHEMA_VERSION
        tables = {r["table_name"] for r in led.query("SELECT table_name FROM information_schema.tables")}
    assert {"runs", "items", "events", "assets", "capture_times", "matches", "meta",
            "item_status", "reconciliation_run", "reconciliation_job", "item_stage_latest"} <= tables
    cols = {r[0] for r in duckdb.connect(str(path)).execute("DESCRIBE events").fetchall()}
    assert {"run_id", "item_id", "stage", "outcome", "reason", "detail", "bytes", "duration_ms",
            "attempt", "tool_version", "at"} <= cols
    # opening again migrates nothing and keeps data
    with Ledger(path) as led:
        assert led.schema_version() == SCHEMA_VERSION


def test_outcome_must_be_known(tmp_path):
    with pytest.raises(ValueError):
        outcome("a", "fetch", "maybe")
    with Ledger(tmp_path / "l.duckdb") as led:
        led.start_run("r1", "job", flow="escape", settings="s")
        with pytest.raises(duckdb.ConstraintException):
            led.append_events("job", "r1", [{"item_id": "a", "stage": "fetch", "outcome": "maybe"}])


def _run(led, run_id, items, results, settings="s1"):
    """Record a run: list ``items``, then one final outcome per item from ``results``."""
    led.start_run(run_id, "job", flow="escape", settings=settings)
    led.add_items("job", run_id, items)
    evs = []
    for it in items:
        r = results.get(it["item_id"])
        if r is None:
            continue
        evs.append(outcome(it["item_id"], "fetch", "ok"))
        if r == "done":
            evs.append(outcome(it["item_id"], "deliver", "ok", "delivered", final=True))
        elif r == "dry":
            evs.append(outcome(it["item_id"], "deliver", "skipped", "dry_run"))
        elif r == "review":
            evs.append(outcome(it["item_id"], "match", "needs_review", "ambiguous"))
        else:
            evs.append(outcome(it["item_id"], "deliver", r, "because"))
    led.append_events("job", run_id, evs, settings=settings)


def test_reconciliation_is_exact_per_run_and_per_job(tmp_path):
    items = _items(10)
    with Ledger(tmp_path / "l.duckdb") as led:
        first = {"p0": "done", "p1": "done", "p2": "failed", "p3": "skipped", "p4": "review", "p5": "failed"}
        _run(led, "r1", items, first)
        r1 = led.reconciliation(run_id="r1")
        assert r1 == {"listed": 10, "done": 2, "skipped": 1, "failed": 2, "pending": 5, "needs_review": 1}
        # the rerun works only on what was not complete; completed items are carried as done
        done = led.completed("job", [i["item_id"] for i in items], "s1")
        assert set(done) == {"p0", "p1", "p3"}
        second = {i["item_id"]: "done" for i in items if i["item_id"] not in done}
        second["p5"] = "failed"
        _run(led, "r2", items, second)
        r2 = led.reconciliation(run_id="r2")
        assert r2["listed"] == 10 and r2["done"] == 8 and r2["skipped"] == 1 and r2["failed"] == 1
        assert r2["listed"] == r2["done"] + r2["skipped"] + r2["failed"] + r2["pending"]
        carried = led.query("SELECT count(*) AS n FROM run_item_status WHERE run_id = 'r2' AND carried")[0]["n"]
        assert carried == 3
        # the earlier run's figures do not change after a later run
        assert led.reconciliation(run_id="r1") == r1
        job = led.reconciliation(job="job")
        assert job["listed"] == 10 and job["done"] == 8 and job["failed"] == 1 and job["skipped"] == 1
        # failed items can be rebuilt for --only-failed
        failed = led.failed_items("job")
        assert [f["item_id"] for f in failed] == ["p5"] and failed[0]["fingerprint"] == "5:1"


def test_dry_runs_and_other_settings_do_not_count_as_complete(tmp_path):
    items = _items(3)
    with Ledger(tmp_path / "l.duckdb") as led:
        _run(led, "r1", items, {"p0": "dry", "p1": "done", "p2": "done"})
        assert set(led.completed("job", ["p0", "p1", "p2"], "s1")) == {"p1", "p2"}
        led.append_events("job", "r1", [outcome("p2", "deliver", "skipped", "no_capture_time")], settings="s1")
        assert set(led.completed("job", ["p0", "p1", "p2"], "s1")) == {"p1"}  # a rule added later may date it
        assert led.completed("job", ["p0", "p1", "p2"], "another-destination") == {}


def test_bulk_append_is_one_statement_per_batch(tmp_path):
    with Ledger(tmp_path / "l.duckdb") as led:
        led.start_run("r1", "job", flow="escape", settings="s")
        items = _items(5000)
        led.add_items("job", "r1", items)
        n = led.append_events("job", "r1", [outcome(i["item_id"], "fetch", "ok") for i in items])
        assert n == 5000
        assert led.query("SELECT count(*) AS n FROM events")[0]["n"] == 10000
        seqs = led.query("SELECT count(DISTINCT seq) AS n FROM events")[0]["n"]
        assert seqs == 10000


def test_the_writer_thread_records_in_order_while_a_reader_sees_what_is_committed(tmp_path):
    with Ledger(tmp_path / "l.duckdb") as led:
        led.start_run("r1", "job", flow="escape", settings="s")
        reads = led.reader()
        writer = LedgerWriter(led, max_pending=2)  # a small queue: put() waits for the writer
        items = _items(300)
        for k in range(0, 300, 100):
            writer.put(led.add_items, "job", "r1", items[k:k + 100])
            for stage in ("fetch", "deliver"):
                writer.put(led.append_events, "job", "r1",
                           [outcome(i["item_id"], stage, "ok", final=stage == "deliver") for i in items[k:k + 100]],
                           settings="s")
        writer.flush()
        # the order they were put in is the order of the sequence numbers
        rows = reads.query("SELECT stage, min(seq) AS lo, max(seq) AS hi FROM events GROUP BY stage, "
                           "(seq - 1) // 100 ORDER BY lo")
        assert [r["stage"] for r in rows] == ["list", "fetch", "deliver"] * 3
        assert all(a["hi"] < b["lo"] for a, b in zip(rows, rows[1:]))
        assert reads.reconciliation(run_id="r1")["done"] == 300
        writer.close()
        reads.close()


def test_a_failed_write_stops_the_writer_and_is_raised_in_the_flow(tmp_path):
    with Ledger(tmp_path / "l.duckdb") as led:
        led.start_run("r1", "job", flow="escape", settings="s")
        writer = LedgerWriter(led)
        writer.put(led.append_events, "job", "r1", [outcome("a", "fetch", "ok")])
        writer.flush()  # committed: a later failure does not take it back
        writer.put(led.append_events, "job", "r1", [outcome("b", "fetch", "ok")])  # gathered with the failure
        writer.put(led.append_events, "job", "r1", [{"item_id": "c", "stage": "fetch", "outcome": "exploded"}])
        with pytest.raises(LedgerWriteFailed, match="recording to the ledger .* failed"):
            writer.flush()
        with pytest.raises(LedgerWriteFailed):
            writer.put(led.append_events, "job", "r1", [outcome("d", "fetch", "ok")])
        writer.close()
        # all or nothing per gathering, and nothing after the failure
        assert [r["item_id"] for r in led.query("SELECT item_id FROM events ORDER BY seq")] == ["a"]


def _table(led, sql):
    return [tuple(r.values()) for r in led.query(sql)]


def test_merged_inserts_write_exactly_what_the_writes_one_by_one_would(tmp_path):
    """The writer thread merges a gathering's writes into one insert per table: the same
    rows as writing each on its own, including an item listed twice (the later listing
    wins), an asset hashed twice (the first stays) and an asset of an older hash version
    (replaced)."""
    old = {"sha256": "ab" * 32, "bytes": 10, "width": 4, "height": 3, "format": "JPEG",
           "phash": "ffffffffffffffff", "dhash": "0000000000000001", "hash_version": "v1"}
    new = dict(old, width=8, hash_version="v2")
    other = dict(new, sha256="cd" * 32)
    items = _items(4)

    def writes(led):
        led.add_items("job", "r1", items[:3])
        led.append_events("job", "r1", [outcome(i["item_id"], "fetch", "ok") for i in items[:3]])
        led.add_items("job", "r1", [dict(items[1], name="renamed.jpg"), items[3]])
        led.add_assets([new, other], replace_other_versions="v2")
        led.add_assets([dict(other, width=99)], replace_other_versions="v2")
        led.add_capture_times("job", "r1", [{"item_id": "p0", "sha256": "ab" * 32, "local": "2020-01-02T03:04:05",
                                             "utc": "2020-01-02T02:04:05+00:00", "offset_minutes": 60,
                                             "tz": "Europe/Berlin", "provenance": "exif"}])
        led.append_events("job", "r1", [outcome("p0", "deliver", "ok", "delivered", final=True),
                                        outcome("p1", "deliver", "failed", "write_failed", detail={"x": 1})])

    tables = {"items": "SELECT job, item_id, source_ref, name, detail, first_run FROM items ORDER BY item_id",
              "events": "SELECT seq, item_id, stage, outcome, reason, detail, final FROM events ORDER BY seq",
              "assets": "SELECT sha256, width, hash_version FROM assets ORDER BY sha256",
              "capture_times": "SELECT item_id, local, utc, offset_minutes, tz FROM capture_times"}
    got = {}
    for way in ("one_by_one", "merged"):
        with Ledger(tmp_path / f"{way}.duckdb") as led:
            led.start_run("r1", "job", flow="escape", settings="s")
            led.add_assets([old])
            if way == "merged":
                with led.merged_inserts():
                    writes(led)
                    # nothing is in the tables until the end of the gathering
                    assert led.query("SELECT count(*) AS n FROM events")[0]["n"] == 0
            else:
                writes(led)
            got[way] = {name: _table(led, sql) for name, sql in tables.items()}
    assert got["merged"] == got["one_by_one"]
    assert [r[3] for r in got["merged"]["items"]] == ["p0.jpg", "renamed.jpg", "p2.jpg", "p3.jpg"]
    assert got["merged"]["assets"] == [("ab" * 32, 8, "v2"), ("cd" * 32, 8, "v2")]
    assert len(got["merged"]["events"]) == 3 + 3 + 2 + 2  # listed, fetched, listed, delivered


def test_a_gathering_that_fails_leaves_nothing(tmp_path):
    with Ledger(tmp_path / "l.duckdb") as led:
        led.start_run("r1", "job", flow="escape", settings="s")
        with pytest.raises(duckdb.ConstraintException):
            with led.merged_inserts():
                led.add_items("job", "r1", _items(3))
                led.append_events("job", "r1", [{"item_id": "p0", "stage": "fetch", "outcome": "exploded"}])
        assert led.query("SELECT count(*) AS n FROM items")[0]["n"] == 0
        assert led.query("SELECT count(*) AS n FROM events")[0]["n"] == 0
        led.add_items("job", "r1", _items(2))  # the ledger goes on working
        assert led.reconciliation(run_id="r1")["listed"] == 2


def test_assets_are_kept_by_sha256(tmp_path):
    with Ledger(tmp_path / "l.duckdb") as led:
        rec = {"sha256": "ab" * 32, "bytes": 10, "width": 4, "height": 3, "format": "JPEG",
               "phash": "ffffffffffffffff", "dhash": "0000000000000001"}
        led.add_assets([rec])
        led.add_assets([dict(rec, width=99)])  # a second time changes nothing
        assert led.known_assets(["ab" * 32, "cd" * 32]) == {"ab" * 32}
        got = led.asset("ab" * 32)
        assert got["width"] == 4 and got["phash"] == 2**64 - 1


def test_a_second_writer_fails_fast_with_a_clear_message(tmp_path):
    path = tmp_path / "l.duckdb"
    Ledger(path).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, duckdb
            con = duckdb.connect({str(path)!r})
            print("ready", flush=True)
            sys.stdin.read()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(LedgerBusy, match="in use by another photo-escape run"):
            Ledger(path)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    Ledger(path).close()  # free again once the other run ends


def test_the_latest_event_gives_the_reason_even_when_it_has_none(tmp_path):
    with Ledger(tmp_path / "l.duckdb") as led:
        led.start_run("r1", "job", flow="escape", settings="s")
        led.add_items("job", "r1", _items(1))
        led.append_events("job", "r1", [outcome("p0", "deliver", "failed", "http_503")], settings="s")
        led.append_events("job", "r1", [outcome("p0", "deliver", "ok", None, final=True)], settings="s")
        row = led.query("SELECT status, reason FROM item_status")[0]
        assert row == {"status": "done", "reason": None}
        assert led.query("SELECT reason FROM run_item_status")[0]["reason"] is None


def test_an_older_ledger_is_migrated_forward(tmp_path):
    path = tmp_path / "old.duckdb"
    import tasks.ledger as ledger_mod

    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    for sql in ledger_mod.MIGRATIONS[0][1]:
        con.execute(sql)
    con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    con.close()
    with Ledger(path) as led:
        assert led.schema_version() == SCHEMA_VERSION
        assert "arg_max_null" in led.query("SELECT sql FROM duckdb_views() WHERE view_name = 'item_status'")[0]["sql"]


def _as_written_by_schema_2(path):
    """Turn a current ledger file back into what photo-escape with schema version 2 left."""
    import tasks.ledger as ledger_mod

    con = duckdb.connect(str(path))
    for sql in ledger_mod.MIGRATIONS[1][1]:  # version 2's views
        con.execute(sql)
    con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    con.close()


def _latest_events(led, job, *, run_id=None):
    """{item_id: (seq, run_id)} of each item's last event other than its listing, worked
    out in Python from every event (for a run: up to the item's last event in that run)."""
    events = led.query("SELECT seq, run_id, item_id, stage FROM events WHERE job = ? ORDER BY seq", [job])
    cutoff = {}
    if run_id:
        cutoff = {e["item_id"]: e["seq"] for e in events if e["run_id"] == run_id}
    latest = {}
    for e in events:
        if e["stage"] != "list" and (not run_id or e["seq"] <= cutoff.get(e["item_id"], -1)):
            latest[e["item_id"]] = (e["seq"], e["run_id"])
    return latest


def test_status_views_name_the_event_that_gave_the_status(tmp_path):
    items = _items(6)
    with Ledger(tmp_path / "l.duckdb") as led:
        _run(led, "r1", items, {"p0": "done", "p1": "failed", "p2": "review", "p3": "skipped"})
        led.append_events("job", "r1", [outcome("p1", "deliver", "failed", "http_503", attempt=2)], settings="s1")
        _run(led, "r2", items, {"p1": "done", "p4": "failed"})
        job = {r["item_id"]: r["seq"] for r in led.query("SELECT item_id, seq FROM item_status")}
        assert job == {**{i["item_id"]: None for i in items},
                       **{k: seq for k, (seq, _) in _latest_events(led, "job").items()}}
        for run_id in ("r1", "r2"):
            rows = led.query("SELECT item_id, seq, carried FROM run_item_status WHERE run_id = ?", [run_id])
            latest = _latest_events(led, "job", run_id=run_id)
            assert {r["item_id"]: r["seq"] for r in rows} == {i["item_id"]: latest.get(i["item_id"], (None,))[0]
                                                               for i in items}
            # carried: the event that gave the status is an earlier run's
            assert {r["item_id"] for r in rows if r["carried"]} == \
                {i for i, (_, by) in latest.items() if by != run_id}


def test_a_read_only_handle_on_an_older_ledger_sees_the_current_views(tmp_path):
    path = tmp_path / "old.duckdb"
    items = _items(4)
    with Ledger(path) as led:
        _run(led, "r1", items, {"p0": "done", "p1": "failed"})
        _run(led, "r2", items, {"p1": "done"})
        current = {v: led.query(f"SELECT * FROM {v} ORDER BY ALL") for v in ("item_status", "run_item_status")}
    _as_written_by_schema_2(path)
    with Ledger(path, read_only=True) as led:
        assert led.schema_version() == 2
        assert {v: led.query(f"SELECT * FROM {v} ORDER BY ALL") for v in current} == current
        assert led.reconciliation(run_id="r2")["done"] == 2
    con = duckdb.connect(str(path), read_only=True)  # the file itself was not changed
    assert "seq" not in {r[0] for r in con.execute("DESCRIBE item_status").fetchall()}
    con.close()


def test_hashed_assets_are_those_of_the_asked_hash_version(tmp_path):
    shas = [f"{i:064x}" for i in range(4)]
    with Ledger(tmp_path / "l.duckdb") as led:
        led.add_assets([{"sha256": shas[0], "phash": "00ff00ff00ff00ff", "hash_version": "v2", "width": 3},
                        {"sha256": shas[1], "phash": "0f0f0f0f0f0f0f0f", "hash_version": "v1"},
                        {"sha256": shas[2], "phash": None, "hash_version": "v2"}])  # not hashed perceptually
        found = led.hashed_assets([shas[0], shas[1], shas[2], shas[3], None, "", shas[0]], "v2")
        assert set(found) == {shas[0]}
        assert found[shas[0]]["width"] == 3 and found[shas[0]]["phash"] == 0x00ff00ff00ff00ff
        assert set(led.hashed_assets(shas, "v1")) == {shas[1]}
        assert led.hashed_assets([None, ""], "v2") == {}


def _listed_twice(led):
    """Runs r1 and r2 of the hi-res story, each listing p0, p1 and p2."""
    for run_id in ("r1", "r2"):
        led.start_run(run_id, "job", flow="replace_hires", settings="s")
        led.add_items("job", run_id, _items(3))


def test_first_ok_details_are_what_a_stage_first_read(tmp_path):
    with Ledger(tmp_path / "l.duckdb") as led:
        _listed_twice(led)
        led.append_events("job", "r1", [
            outcome("p0", "master", "failed", "timeout", detail={"date_taken": "never used"}),
            outcome("p0", "master", "ok", detail={"date_taken": "2001-02-03 04:05:06"}),
            outcome("p1", "master", "ok"),  # no detail: the next one that has one counts
            outcome("p2", "replace", "ok", detail={"date_taken": "another stage"})])
        led.append_events("job", "r2", [
            outcome("p0", "master", "ok", detail={"date_taken": "what Flickr shows after the replace"}),
            outcome("p1", "master", "ok", detail={"date_taken": "1999-12-31 23:59:59"})])
        led.append_events("other", "r2", [outcome("p2", "master", "ok", detail={"date_taken": "another job"})])
        assert led.first_ok_details("job", "master", ["p0", "p1", "p2", "p9"]) == {
            "p0": {"date_taken": "2001-02-03 04:05:06"}, "p1": {"date_taken": "1999-12-31 23:59:59"}}
        assert led.first_ok_details("job", "master", []) == {}


def test_run_stage_counts_count_each_item_once_per_outcome_and_reason(tmp_path):
    with Ledger(tmp_path / "l.duckdb") as led:
        _listed_twice(led)
        led.append_events("job", "r1", [
            outcome("p0", "match", "failed", "timeout"), outcome("p0", "match", "failed", "timeout", attempt=2),
            outcome("p0", "match", "ok", "matched_direct"), outcome("p1", "match", "ok", "matched_direct"),
            outcome("p2", "match", "needs_review", "not_in_album"), outcome("p1", "replace", "ok", "replaced")])
        led.append_events("job", "r2", [outcome("p2", "match", "ok", "matched_album")])
        assert led.run_stage_counts("r1", ("match",)) == {
            ("match", "failed", "timeout"): 1, ("match", "ok", "matched_direct"): 2,
            ("match", "needs_review", "not_in_album"): 1}
        assert led.run_stage_counts("r2", ("match", "replace")) == {("match", "ok", "matched_album"): 1}
