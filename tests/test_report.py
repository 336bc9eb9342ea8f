"""The stakeholder reports, made from ledgers written through the Ledger API."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from photo_escape import secrets
from reports.build import write_reports
from tasks.ledger import Ledger
from photo_escape.outcomes import outcome
from tests.fixtures.fresh import in_a_fresh_process
from tests.fixtures.reports import counts, ledger_view

KEYS = ("listed", "done", "skipped", "failed", "pending")


def test_run_report_reconciles_with_the_ledger(story_ledger, tmp_path):
    run1 = story_ledger.runs[0]
    result = write_reports(story_ledger.path, run_id=run1, out_dir=tmp_path / "r1")
    s = result["summary"]
    expected = counts(story_ledger.status[0])
    assert {k: s[k] for k in KEYS} == expected
    view = ledger_view(story_ledger.path, "SELECT * FROM reconciliation_run WHERE run_id = ?", [run1])
    assert {k: s[k] for k in KEYS} == {k: view[k] for k in KEYS}
    assert s["listed"] == s["done"] + s["skipped"] + s["failed"] + s["pending"] and s["reconciles"]
    assert s["needs_review"] == len(story_ledger.needs_review)
    for key in ("report_html", "report_md", "outcomes_csv", "outcomes_parquet"):
        assert Path(result[key]).is_file() and Path(result[key]).stat().st_size > 0
    md = Path(result["report_md"]).read_text()
    assert "✅" in md and f"{s['listed']} listed = {s['done']} done" in md


def test_job_report_reconciles_across_runs(story_ledger, tmp_path):
    result = write_reports(story_ledger.path, job=story_ledger.job, out_dir=tmp_path / "all")
    s = result["summary"]
    assert {k: s[k] for k in KEYS} == counts(story_ledger.status[-1])
    view = ledger_view(story_ledger.path, "SELECT * FROM reconciliation_job WHERE job = ?", [story_ledger.job])
    assert {k: s[k] for k in KEYS} == {k: view[k] for k in KEYS}
    assert s["runs"] == len(story_ledger.runs)


def test_rerun_report_counts_carried_items(story_ledger, tmp_path):
    run2 = story_ledger.runs[1]
    s = write_reports(story_ledger.path, run_id=run2, out_dir=tmp_path / "r2")["summary"]
    assert {k: s[k] for k in KEYS} == counts(story_ledger.status[1])
    view = ledger_view(story_ledger.path, "SELECT * FROM reconciliation_run WHERE run_id = ?", [run2])
    assert {k: s[k] for k in (*KEYS, "needs_review")} == {k: view[k] for k in (*KEYS, "needs_review")}
    # the rerun worked on one item; the others were left as earlier runs left them
    assert s["carried_from_earlier_runs"] == view["carried_from_earlier_runs"] == s["listed"] - 1


def test_every_failed_item_is_listed_with_its_reason(story_ledger, tmp_path):
    result = write_reports(story_ledger.path, job=story_ledger.job, out_dir=tmp_path / "all")
    md = Path(result["report_md"]).read_text()
    html = Path(result["report_html"]).read_text()
    with Ledger(story_ledger.path, read_only=True) as led:
        names = {r["item_id"]: r["name"] for r in led.query("SELECT item_id, name FROM items")}
    for item_id, reason in story_ledger.failed_reasons.items():
        row = next(line for line in md.splitlines() if line.startswith(f"| {names[item_id]} |"))
        assert f"| {reason} |" in row
        assert names[item_id] in html and reason in html


def test_outcomes_files_have_one_row_per_item_with_final_outcome_per_stage(story_ledger, tmp_path):
    result = write_reports(story_ledger.path, job=story_ledger.job, out_dir=tmp_path / "all")
    with open(result["outcomes_csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    table = pq.read_table(result["outcomes_parquet"]).to_pylist()
    final = story_ledger.status[-1]
    assert len(rows) == len(table) == len(final)
    by_id = {r["item_id"]: r for r in rows}
    assert {i: r["status"] for i, r in by_id.items()} == final
    # IMG_0001 failed to fetch in run 1 (timeout) and was fetched in run 2: the latest wins
    rescued = next(i for i in by_id if i.endswith("IMG_0001.JPG"))
    assert by_id[rescued]["fetch"] == "ok" and by_id[rescued]["fetch_reason"] == ""
    for item_id, reason in story_ledger.failed_reasons.items():
        assert by_id[item_id]["last_reason"] == reason
    assert {r["item_id"]: r["status"] for r in table} == final


def test_a_done_item_shows_no_stale_reason(story_ledger, tmp_path):
    """The ledger's status views pick a reason over NULLs; the report must not."""
    result = write_reports(story_ledger.path, run_id=story_ledger.runs[0], out_dir=tmp_path / "r1")
    with open(result["outcomes_csv"], newline="") as f:
        done = [r for r in csv.DictReader(f) if r["status"] == "done"]
    assert done and all(r["last_reason"] == "" for r in done)


def test_no_secret_values_in_any_report_file(story_ledger, tmp_path, monkeypatch):
    value = "hunter2-very-secret"
    monkeypatch.setenv("ARCHIVE_PASSWORD", value)
    assert secrets.resolve({"env": "ARCHIVE_PASSWORD"}) == value
    # a careless source put the value in an event's detail; the report must still hide it
    with Ledger(story_ledger.path) as led:
        led.con.execute("UPDATE events SET detail = ? WHERE reason = 'not_found'",
                        [json.dumps({"error": f"login failed with {value}"})])
        led.con.execute("UPDATE items SET source_ref = source_ref || '?pw=' || ? WHERE name = 'IMG_0000.JPG'",
                        [value])
    result = write_reports(story_ledger.path, job=story_ledger.job, out_dir=tmp_path / "all")
    for key in ("report_html", "report_md", "outcomes_csv"):
        text = Path(result[key]).read_text()
        assert value not in text
    assert "***" in Path(result["report_md"]).read_text()
    assert value not in str(pq.read_table(result["outcomes_parquet"]).to_pylist())
    html = Path(result["report_html"]).read_text()
    assert "env:ARCHIVE_PASSWORD" in html and "block:s3-secret" in html


def test_report_through_an_open_ledger_and_default_dir(story_ledger, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Ledger(story_ledger.path) as led:  # the flow's own writing connection
        result = write_reports(led, run_id=story_ledger.runs[0])
        # the report only read: the flow can go on writing
        led.append_events(story_ledger.job, story_ledger.runs[0], [])
        assert led.con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name LIKE '_rep%'"
                               ).fetchall()[0][0] == 0
    expected = Path("reports/out") / story_ledger.job / story_ledger.runs[0]
    assert Path(result["dir"]) == expected and (expected / "report.html").is_file()


def test_unknown_run_is_a_clear_error(story_ledger, tmp_path):
    with pytest.raises(LookupError, match="no run"):
        write_reports(story_ledger.path, run_id="nope", out_dir=tmp_path / "x")


def test_command_line_report(story_ledger, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "photo_escape.cli", "report", "--ledger", str(story_ledger.path),
         "--job", story_ledger.job, "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {k: record[k] for k in KEYS} == counts(story_ledger.status[-1])
    assert Path(record["report"]).is_file() and record["reconciles"] is True
    # a job file whose source is gone (an unplugged disk) still names its ledger and job
    job_file = tmp_path / "job.yaml"
    job_file.write_text(f"name: {story_ledger.job}\nledger: {story_ledger.path}\n"
                        "source: {kind: local, path: /gone}\ndestination: {kind: local, path: /gone2}\n")
    by_file = subprocess.run(
        [sys.executable, "-m", "photo_escape.cli", "report", "--job-file", str(job_file), "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert by_file.returncode == 0, by_file.stderr
    assert json.loads(by_file.stdout.strip().splitlines()[-1])["listed"] == record["listed"]
    bad = subprocess.run([sys.executable, "-m", "photo_escape.cli", "report", "--ledger", str(tmp_path / "none.duckdb")],
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert bad.returncode == 2 and "no ledger" in bad.stderr and "Traceback" not in bad.stderr


# -- on real flow runs (Prefect harness) ---------------------------------------------------
def _escape_job(tmp_path: Path, name: str = "report-flow") -> dict:
    from sandbox import photos

    photos.make_collection(tmp_path / "camera", count=6, bad=True)
    return {
        "name": name, "ledger": str(tmp_path / "ledger.duckdb"), "work_dir": str(tmp_path / "work"),
        "reports_dir": str(tmp_path / "reports"),
        "source": {"kind": "local", "path": str(tmp_path / "camera"), "pattern": "*.jpg"},
        "destination": {"kind": "local", "path": str(tmp_path / "archive")},
        "options": {"batch_size": 4, "processes": 1},
    }


@pytest.mark.usefixtures("prefect_harness")
def test_the_escape_flow_writes_and_publishes_its_report(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.escape import escape

    job = _escape_job(tmp_path)
    s = escape(job)
    html = Path(s["report"])
    assert html.is_file() and html.parent == tmp_path / "reports" / job["name"] / s["run_id"]
    md = (html.parent / "report.md").read_text()
    assert f"{s['listed']} listed = {s['done']} done + {s['skipped']} skipped + {s['failed']} failed" in md
    with open(html.parent / "outcomes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == s["listed"]
    assert sum(r["status"] == "failed" for r in rows) == s["failed"] > 0
    assert all(r["last_reason"] for r in rows if r["status"] == "failed")
    # regenerated later from the ledger file: the same numbers
    again = write_reports(s["ledger"], run_id=s["run_id"], out_dir=tmp_path / "again")["summary"]
    assert {k: again[k] for k in KEYS} == {k: s[k] for k in KEYS}
    # the Prefect artifacts: markdown, table of counts, link to the HTML
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(like_=job["name"])))
    kinds = {a.key: a for a in arts}
    assert {"report-flow-report", "report-flow-counts", "report-flow-report-html", "report-flow-progress"} <= set(kinds)
    table = kinds["report-flow-counts"].data
    table = json.loads(table) if isinstance(table, str) else table
    assert table[0]["listed"] == s["listed"] and table[0]["failed"] == s["failed"]
    assert "file://" in kinds["report-flow-report-html"].data


@pytest.mark.usefixtures("prefect_harness")
def test_a_dry_run_report_shows_the_plan_of_every_photo(tmp_path):
    from flows.escape import escape

    s = escape(_escape_job(tmp_path, name="report-dry"), dry_run=True)
    out = Path(s["report"]).parent
    html = (out / "report.html").read_text()
    assert "Upload plan (dry run)" in html
    with open(out / "plan.csv", newline="") as f:
        plan = list(csv.DictReader(f))
    with Ledger(s["ledger"], read_only=True) as led:
        timed = led.query("SELECT item_id, utc, provenance FROM capture_times WHERE run_id = ?", [s["run_id"]])
    assert sorted(p["item_id"] for p in plan) == sorted(t["item_id"] for t in timed) and plan
    for p in plan:
        assert p["name"] in html and p["provenance"]


def test_warming_up_compiles_the_report_templates():
    """What ``photo-escape run`` does while a temporary Prefect server starts, so that the
    run's report does not do it at the end: compile the report's templates (kept in the
    process's one environment) and lay out a first chart (matplotlib's font list)."""
    got = in_a_fresh_process(
        "import json, sys\n"
        "from reports.build import environment, warm_up\n"
        "before = sorted(key[1] for key in environment().cache)\n"
        "warm_up()\n"
        "print(json.dumps({'before': before, 'after': sorted(key[1] for key in environment().cache)}))\n")
    assert got["before"] == []
    assert {"report.md.j2", "report.html.j2"} <= set(got["after"])


def test_artifacts_publish_is_a_no_op_outside_a_flow_run(story_ledger, tmp_path):
    from reports.artifacts import publish

    result = write_reports(story_ledger.path, job=story_ledger.job, out_dir=tmp_path / "all")
    assert publish(result, key_prefix="family-archive-report") == []


@pytest.mark.usefixtures("prefect_harness")
def test_the_hires_report_shows_the_storys_numbers(tmp_path):
    """A real replace_hires run on the Flickr stand-in: the report's hi-res section equals the run's counts."""
    from sandbox.demos import hires as demo

    s = demo.run(tmp_path, True, photos=16)
    result = write_reports(s["ledger"], run_id=s["run_id"], out_dir=tmp_path / "again")
    hires = result["summary"]["stories"]["hires"]
    for key, theirs in (("hires-listed", "listed"), ("hires-matched", "matched"),
                        ("hires-matched_direct", "matched_direct"), ("hires-matched_album", "matched_album"),
                        ("hires-not_matched", "not_matched"), ("hires-no_larger_version", "no_larger_version"),
                        ("hires-too_large", "too_large_for_flickr"), ("hires-no_master", "no_master"),
                        ("hires-date_verified", "dates_verified"), ("hires-failed", "failed")):
        assert hires[key] == s[theirs], key
    assert hires["hires-replaced"] == s["replaced"] + s["already_replaced"]
    html = Path(result["report_html"]).read_text()
    assert 'id="story-hires" ' in html or 'id="story-hires"' in html
    # the person's list: every photo not matched, with the Flickr image beside its best candidates
    assert html.count('alt="Flickr image"') >= s["not_matched"]
    assert 'id="story-matching"' in html and "threshold" in html
    for name in demo.SANDBOX_SECRETS:  # the values the run used, never in a report
        value = os.environ[name]
        for key in ("report_html", "report_md", "outcomes_csv"):
            assert value not in Path(result[key]).read_text(), (name, key)
    assert "env:FLICKR_API_KEY" in html


# -- story sections on ledgers written through the Ledger API ------------------------------
def _set_summary(path: Path, run_id: str, summary: dict) -> None:
    """Record the source's report facts as the flow does at the end of a run."""
    with Ledger(path) as led:
        led.finish_run(run_id, "finished", summary)


@pytest.mark.parametrize("short_by", [0, 2])
def test_gallery_section_says_whether_the_expected_count_arrived(story_ledger, tmp_path, short_by):
    run2 = story_ledger.runs[-1]
    expected = len(story_ledger.status[-1]) + short_by
    _set_summary(story_ledger.path, run2, {"expected_count": expected, "pages": 1, "listing_ended": "fewer_than_48"})
    result = write_reports(story_ledger.path, run_id=run2, out_dir=tmp_path / "g")
    gallery = result["summary"]["stories"]["gallery"]
    arrived = counts(story_ledger.status[-1])["done"]
    assert gallery["gallery-expected"] == expected and gallery["gallery-arrived"] == arrived
    assert gallery["gallery-met"] is (short_by == 0 and arrived >= expected)
    html = Path(result["report_html"]).read_text()
    assert f'id="story-gallery-expected" data-value="{expected}"' in html
    assert ("⚠ no" in html) is not gallery["gallery-met"]


def test_find_my_photo_section_shows_the_margin(tmp_path):
    """Similarity scores (higher is closer): the two true matches stand above everything else."""
    with Ledger(tmp_path / "l.duckdb") as led:
        led.start_run("r1", "find", flow="escape", settings="s",
                      spec={"name": "find", "source": {"kind": "numbered", "url": "http://x/{n}.jpg"},
                            "destination": {"kind": "local", "path": "/tmp/x"}})
        items = [{"item_id": f"n:{i}", "name": f"{i}.jpg"} for i in range(1, 41)]
        led.add_items("find", "r1", items)
        led.append_events("find", "r1", [outcome(i["item_id"], "fetch", "ok" if n % 3 else "skipped",
                                                 None if n % 3 else "not_found")
                                         for n, i in enumerate(items)])
        scores = {"crop-a": {"n:7": 0.63}, "crop-b": {"n:19": 0.69}}
        rows = []
        for ref, true in scores.items():
            others = [(f"n:{k}", 0.10 + 0.009 * k) for k in range(1, 41) if f"n:{k}" not in true]
            ranked = sorted([*true.items(), *others], key=lambda x: -x[1])
            rows += [{"query": ref, "candidate": c, "distance": d, "rank": r, "chosen": c in true, "method": "ssim"}
                     for r, (c, d) in enumerate(ranked, start=1)]
        led.add_matches("find", "r1", rows)
        led.finish_run("r1", "finished", {})
    result = write_reports(tmp_path / "l.duckdb", run_id="r1", out_dir=tmp_path / "out")
    find = result["summary"]["stories"]["find"]
    best_other = max(r["distance"] for r in rows if not r["chosen"])
    assert find["find-queries"] == 2
    assert find["find-margin"] == pytest.approx(min(0.63, 0.69) - best_other, abs=1e-4)
    md = Path(result["report_md"]).read_text()
    assert "0.63 to 0.69" in md and f"{best_other:.2f}" in md


def test_since_limits_a_job_report_to_recent_listings(story_ledger, tmp_path):
    with Ledger(story_ledger.path) as led:
        led.con.execute("""UPDATE events SET "at" = TIMESTAMPTZ '2020-01-01 00:00:00+00'
                           WHERE run_id = ?""", [story_ledger.runs[0]])
    s = write_reports(story_ledger.path, job=story_ledger.job, since="2021-01-01", out_dir=tmp_path / "s")["summary"]
    # run 2 listed every item again, so all are in; their status is the job's latest
    assert {k: s[k] for k in KEYS} == counts(story_ledger.status[-1])
    s = write_reports(story_ledger.path, job=story_ledger.job, since="2999-01-01", out_dir=tmp_path / "t")["summary"]
    assert s["listed"] == 0 and s["reconciles"]


def test_a_run_that_listed_nothing_still_gets_a_report(tmp_path):
    with Ledger(tmp_path / "l.duckdb") as led:
        led.start_run("empty-run", "nothing", flow="escape", settings="s",
                      spec={"name": "nothing", "source": {"kind": "local", "path": "/nowhere"},
                            "destination": {"kind": "local", "path": "/tmp/x"}})
        led.finish_run("empty-run", "finished", {})
    result = write_reports(tmp_path / "l.duckdb", run_id="empty-run", out_dir=tmp_path / "out")
    s = result["summary"]
    assert (s["listed"], s["reconciles"]) == (0, True)
    assert "Nothing was listed" in Path(result["report_html"]).read_text()
    with open(result["outcomes_csv"]) as f:
        assert len(f.read().splitlines()) == 1  # the header alone


def test_a_ledger_an_older_photo_escape_wrote_gets_the_same_report(story_ledger, tmp_path):
    """Read-only, a report reads the ledger's current status views even from a file whose
    schema is older (they are made for the connection alone; nothing is written)."""
    import shutil

    import duckdb

    import tasks.ledger as ledger_mod

    old = tmp_path / "old.duckdb"
    shutil.copy(story_ledger.path, old)
    con = duckdb.connect(str(old))
    for sql in ledger_mod.MIGRATIONS[1][1]:  # schema version 2's views
        con.execute(sql)
    con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    con.close()
    for scope in ({"run_id": story_ledger.runs[0]}, {"run_id": story_ledger.runs[1]}, {"job": story_ledger.job}):
        now, then = (write_reports(p, **scope, out_dir=tmp_path / name)
                     for p, name in ((story_ledger.path, "now"), (old, "then")))
        assert then["summary"] == now["summary"]
        for key in ("report_md", "outcomes_csv"):
            assert _without_time(then[key]) == _without_time(now[key])
    with Ledger(old, read_only=True) as led:
        assert led.schema_version() == 2


def _without_time(path) -> list[str]:
    """A report file's lines but the one saying when it was generated."""
    return [line for line in Path(path).read_text().splitlines() if not line.startswith("_Generated ")]


# -- fixity: the archive as it is (issue 23) -------------------------------------------------
def _fixity_section(html: str) -> str:
    start = html.index('<section id="story-fixity"')
    return html[start:html.index("</section>", start)]


def _gallery_images(section: str) -> dict[str, list[tuple[str, "object"]]]:
    """{photo name: [(caption, PIL image)]} of the section's side-by-side rows."""
    import base64
    import html
    import io
    import re

    from PIL import Image

    gallery = section[section.index('<table class="grid thumbs">'):]
    out = {}
    for name, row in re.findall(r"<td><b>([^<]+)</b>(.*?)</tr>", gallery, re.S):
        out[html.unescape(name)] = [(html.unescape(alt), Image.open(io.BytesIO(base64.b64decode(data))).convert("L"))
                     for alt, data in re.findall(r'<img alt="([^"]*)" src="data:image/[a-z]+;base64,([^"]+)"', row)]
    return out


def _run_checks(ledger: str, run_id: str) -> dict[str, int]:
    """What the run's checks of the archive recorded, counted straight from its events."""
    with Ledger(ledger, read_only=True) as led:
        rows = led.query("""SELECT item_id, outcome, reason FROM events WHERE run_id = ? AND stage = 'fixity'
                            AND json_extract_string(detail, '$.expected_sha256') IS NOT NULL""", [run_id])
        again = led.query("SELECT item_id, outcome, reason, detail FROM events WHERE run_id = ? AND stage = 'deliver'",
                          [run_id])
        alone = led.query("SELECT item_id, reason FROM events WHERE run_id = ? AND stage = 'repair'", [run_id])
    verdicts = [("ok" if r["outcome"] == "ok" else "missing" if r["reason"].startswith("missing") else r["reason"])
                for r in rows]
    return {"checked": len(rows), **{v: verdicts.count(v) for v in ("ok", "missing", "changed", "unreadable")},
            "delivered_again": sum(r["outcome"] == "ok" for r in again), "left_alone": len(alone),
            "kept": sorted(json.loads(r["detail"])["repair"]["changed_copy"] for r in again
                           if json.loads(r["detail"]).get("repair"))}


@pytest.mark.usefixtures("prefect_harness")
def test_the_fixity_section_says_what_was_checked_how_and_what_is_wrong(tmp_path):
    """A real tamper (5 deleted, 3 bytes flipped, 1 truncated), rerun, verify, verify --repair
    with one source photo edited meanwhile, and a sampled verify: each report's fixity
    section counts what the ledger recorded, lists every problem photo with what was done,
    and shows each changed photo at the destination beside its original."""
    import hashlib

    from flows.escape import escape
    from flows.verify import verify
    from tests.test_fixity import _delivered, _escaped, _tamper

    spec, destination, _ = _escaped(tmp_path, "report-fixity")
    root = Path(spec.destination.path)
    rows = _delivered(spec, destination)
    by_id = {r["item_id"]: r for r in rows}
    done = _tamper(rows, lambda t: (root / t).read_bytes(), lambda t, b: (root / t).write_bytes(b),
                   lambda t: (root / t).unlink())
    changed = done["flipped"] | done["truncated"]
    names = {i: by_id[i]["name"] for i in by_id}

    # the rerun: 5 missing (delivered again), 4 changed (left alone)
    rerun = escape(spec.dump())
    out = Path(rerun["report"]).parent
    fx = write_reports(rerun["ledger"], run_id=rerun["run_id"], out_dir=tmp_path / "r")["summary"]["stories"]["fixity"]
    seen = _run_checks(rerun["ledger"], rerun["run_id"])
    assert fx["fixity-missing"] == rerun["missing_at_destination"] == seen["missing"] == 5
    assert fx["fixity-delivered_again"] == seen["delivered_again"] == 5
    assert fx["fixity-changed"] == rerun["changed_at_destination"] == seen["changed"] == 4
    html = (out / "report.html").read_text()
    section = _fixity_section(html)
    md = (out / "report.md").read_text()
    for i in done["missing"]:
        assert f"| {names[i]} | {by_id[i]['target']} | missing |" in md and "delivered again" in md
    for i in changed:
        line = next(x for x in md.splitlines() if x.startswith(f"| {names[i]} | {by_id[i]['target']} | changed"))
        assert by_id[i]["sha256"][:12] in line and "left alone" in line and "verify --repair" in line
    assert ("changed (size)" in md) and ("changed (sha256)" in md)
    images = _gallery_images(section)
    assert set(images) == {names[i] for i in changed}  # every changed photo, and only those
    for i in changed:  # the source's file beside what the destination holds now
        (orig_caption, orig), (now_caption, now) = images[names[i]]
        assert orig_caption == "original: the source's file" and now_caption.startswith("at the destination now")
    (_, orig), (_, now) = images[names[next(iter(done["truncated"]))]]
    half = orig.size[1] // 2  # the truncated copy shows its top half, grey below
    assert _mean_difference(orig.crop((0, half, orig.size[0], orig.size[1])),
                            now.crop((0, half, now.size[0], now.size[1]))) > 10
    assert 'id="story-s3"' not in html  # the archive's checks are not S3's upload checks

    # verify: 12 checked by full reads, 4 changed, nothing repaired
    checked = verify(spec.dump())
    result = write_reports(checked["ledger"], run_id=checked["run_id"], out_dir=tmp_path / "v")
    fx = result["summary"]["stories"]["fixity"]
    seen = _run_checks(checked["ledger"], checked["run_id"])
    for key in ("checked", "ok", "missing", "changed", "unreadable"):
        assert fx[f"fixity-{key}"] == checked[key] == seen[key], key
    assert fx["fixity-method"] == "full read of every photo"
    md = Path(result["report_md"]).read_text()
    assert "a full read of every photo" in md and "| repair | not asked" in md

    # verify --repair after one changed photo's source was edited: 3 mended, 1 left alone
    edited = sorted(done["flipped"])[0]
    source_file = Path(by_id[edited]["source_ref"])
    source_file.write_bytes(source_file.read_bytes() + b"edited")
    mended = verify(spec.dump(), repair=True)
    assert (mended["repaired"], mended["left_alone"]) == (3, 1)
    result = write_reports(mended["ledger"], run_id=mended["run_id"], out_dir=tmp_path / "m")
    fx = result["summary"]["stories"]["fixity"]
    seen = _run_checks(mended["ledger"], mended["run_id"])
    assert fx["fixity-repaired"] == mended["repaired"] == seen["delivered_again"]
    assert fx["fixity-left_alone"] == mended["left_alone"] == seen["left_alone"]
    md = Path(result["report_md"]).read_text()
    for kept in seen["kept"]:
        assert f"the changed copy kept at {kept}" in md and (root / kept).is_file()
    assert "left alone because the source no longer holds the content the ledger recorded (source_changed)" in md
    images = _gallery_images(_fixity_section(Path(result["report_html"]).read_text()))
    assert set(images) == {names[i] for i in changed}
    for i in changed - {edited}:  # the changed copy kept, beside the source's file
        assert [c for c, _ in images[names[i]]] == [
            "original: the source's file", f"the changed copy kept: {Path(next(k for k in seen['kept'] if names[i].split('.')[0] in k)).name}"]
    # the edited source is not shown as the original: the ledger's own thumbnail is
    assert images[names[edited]][0][0] == "original, as hashed at delivery"
    assert hashlib.sha256(source_file.read_bytes()).hexdigest() != by_id[edited]["sha256"]

    # a sampled verify says so; the job's report counts each photo by its latest check
    sampled = verify(spec.dump(), sample_percent=50)
    fx = write_reports(sampled["ledger"], run_id=sampled["run_id"],
                       out_dir=tmp_path / "s")["summary"]["stories"]["fixity"]
    assert fx["fixity-method"] == "sizes of all, full read of a random 50%"
    assert (fx["fixity-checked"], fx["fixity-ok"], fx["fixity-changed"]) == (12, 11, 1) \
        == (sampled["checked"], sampled["ok"], sampled["changed"])
    job = write_reports(sampled["ledger"], job=spec.name, out_dir=tmp_path / "j")
    fx = job["summary"]["stories"]["fixity"]
    assert (fx["fixity-checked"], fx["fixity-ok"], fx["fixity-changed"], fx["fixity-missing"]) == (12, 11, 1, 0)
    assert names[edited] in Path(job["report_md"]).read_text()


def _mean_difference(a, b) -> float:
    """Mean absolute difference of two grayscale images' pixels (the second resized to the first)."""
    import numpy as np

    return float(np.abs(np.asarray(a, dtype=float) - np.asarray(b.resize(a.size), dtype=float)).mean())
