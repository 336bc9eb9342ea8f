"""Faults over the sandbox web services: every photo ends done or failed with a precise reason,
the counts reconcile, and a rerun finishes the rest.

The gallery's CDN (and the numbered host) inject, through :mod:`sandbox.faults`, each
kind of bad day: 5xx bursts, 429 storms with Retry-After, connection resets,
truncated bodies, answers slower than the read timeout, HTML instead of a photo;
plus a CDN that is not there at all (connection refused) and login sessions that
expire in the middle of the listing. In every scenario some photos get a fault a
couple of times and recover within the job's retries, and two get it for good and
fail with the fault's reason. Backoffs are tiny (job options) so the suite stays fast.
"""

from __future__ import annotations

import re

import duckdb
import pytest

from sandbox.numbered import NumberedHost
from sandbox.server import serve
from tests.fixtures.reliability import RELIABILITY_SIZE, escape_job, photo_files

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.timeout(180)]

COUNT = 8
RETRIES = 2  # attempts after the first

# fault -> (rule, the reason a photo that gets it on every attempt must fail with, transient?)
FAULTS = {
    "5xx_burst": ({"kind": "error", "status": 503}, "http_503", True),
    "429_storm": ({"kind": "rate_limit", "retry_after": 0.3}, "http_429", True),
    "reset": ({"kind": "reset"}, "connection_reset", True),
    "truncated_body": ({"kind": "truncate", "keep": 0.4}, "truncated", True),
    "slower_than_timeout": ({"kind": "slow", "delay": 1.2}, "timeout", True),
    "html_instead_of_photo": ({"kind": "html"}, "not_an_image", False),
}
BAD_DAY = 16  # pictures in the bad-day gallery: per fault one doomed, one that recovers; the rest clean


def _status(ledger: str) -> dict[str, tuple]:
    con = duckdb.connect(ledger, read_only=True)
    try:
        return {r[0]: r[1:] for r in con.execute("SELECT item_id, status, stage, reason FROM item_status").fetchall()}
    finally:
        con.close()


def _events(ledger: str, sql: str, params=None) -> list[tuple]:
    con = duckdb.connect(ledger, read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def _reconciles(s: dict) -> None:
    assert s["listed"] == s["done"] + s["skipped"] + s["failed"] + s["pending"], s
    assert s["pending"] == 0, s  # every photo ended done, skipped or failed


def _gallery_job(tmp_path, g, **http):
    src = g.job_source()
    src["http"] = {"connect_timeout": 2.0, "read_timeout": 5.0, "backoff_max": 0.05, **http}
    return escape_job(tmp_path, src, name="rel-faults", retries=RETRIES, backoff_seconds=0.01)


def test_gallery_downloads_survive_a_bad_day(tmp_path, small_gallery):
    """Every fault at once, each on its own photos: picture 2k gets fault k on every
    attempt, picture 2k+1 gets it twice and recovers on its last attempt."""
    from flows.escape import escape

    g = small_gallery(BAD_DAY, per_page=6)
    urls = {i: g.original_url(i) for i in range(BAD_DAY)}
    doomed: dict[int, tuple[str, str]] = {}
    recovering: dict[int, tuple[str, str]] = {}
    for k, (name, (rule, reason, transient)) in enumerate(FAULTS.items()):
        g.cdn_faults.add(match=re.escape(g.original_key(2 * k)), times=None, **rule)
        doomed[2 * k] = (name, reason)
        if transient:
            g.cdn_faults.add(match=re.escape(g.original_key(2 * k + 1)), times=RETRIES, **rule)
            recovering[2 * k + 1] = (name, reason)
    job = _gallery_job(tmp_path, g, read_timeout=0.4)  # the slow fault's 1.2 s is past it

    first = escape(job)
    _reconciles(first)
    assert (first["listed"], first["done"], first["failed"]) == (BAD_DAY, BAD_DAY - len(doomed), len(doomed)), first
    status = _status(first["ledger"])
    for i, url in urls.items():
        if i in doomed:
            assert status[url] == ("failed", "fetch", doomed[i][1]), (doomed[i], status[url])
        else:
            assert status[url][0] == "done", (i, status[url])
    # the attempts are recorded: doomed photos tried 1 + RETRIES times (a permanent fault once),
    # recovered ones say which faults they got through
    fetches = {r[0]: r[1:] for r in _events(first["ledger"], "SELECT item_id, attempt, reason, detail "
                                            "FROM events WHERE stage = 'fetch'")}
    for i, (name, reason) in doomed.items():
        assert fetches[urls[i]][0] == (1 + RETRIES if FAULTS[name][2] else 1), (name, fetches[urls[i]])
    for i, (name, reason) in recovering.items():
        attempt, why, detail = fetches[urls[i]]
        assert attempt == 1 + RETRIES and why == "recovered", (name, fetches[urls[i]])
        assert f'"retried": ["{reason}", "{reason}"]' in detail, (name, detail)
    # Retry-After honoured between the attempts of the photo in the 429 storm
    storm = next(i for i, (name, _) in doomed.items() if name == "429_storm")
    times = [r["at"] for r in g.cdn_faults.requests if g.original_key(storm) in r["target"]]
    assert len(times) == 1 + RETRIES
    assert min(b - a for a, b in zip(times, times[1:])) >= 0.25, times
    assert len(photo_files(tmp_path / "archive")) == BAD_DAY - len(doomed)

    # the bad day is over: a rerun fetches just the failures and finishes
    g.cdn_faults.clear()
    second = escape(job)
    _reconciles(second)
    assert (second["done"], second["failed"]) == (BAD_DAY, 0), second
    assert g.cdn_faults.count("~a~") == len(doomed)
    assert len(photo_files(tmp_path / "archive")) == BAD_DAY


def test_refused_connections_fail_precisely_and_a_rerun_finishes(tmp_path, small_gallery):
    from flows.escape import escape

    g = small_gallery(COUNT, per_page=5)
    port = g.cdn_server.port
    g.cdn_server.stop()  # nothing listens on the CDN's port now
    job = _gallery_job(tmp_path, g)
    first = escape(job)
    _reconciles(first)
    assert (first["listed"], first["failed"]) == (COUNT, COUNT), first
    assert {v for v in _status(first["ledger"]).values()} == {("failed", "fetch", "connection_refused")}
    g.cdn_server = serve(g.cdn_app, port=port)  # back on the same address
    second = escape(job)
    _reconciles(second)
    assert (second["done"], second["failed"]) == (COUNT, 0), second
    assert len(photo_files(tmp_path / "archive")) == COUNT


def test_expiring_logins_are_renewed_and_nothing_is_lost(tmp_path, small_gallery):
    from flows.escape import escape

    # a session lasts two page views (the login's redirect and one album page), so every
    # album page after the first needs a new login
    g = small_gallery(12, per_page=5, session_pages=2)
    g.site_faults.add("expire_session", match=r"p=3")  # and page 3's session is dropped on the spot
    s = escape(_gallery_job(tmp_path, g))
    _reconciles(s)
    assert (s["listed"], s["done"]) == (12, 12), s
    assert s.get("relogins", 0) >= 2 and g.logins >= 3, (s, g.logins)


def test_a_revoked_login_ends_the_run_clearly_and_a_rerun_finishes(tmp_path, small_gallery, monkeypatch):
    """The password stops working: the run fails with the login reason; what was listed is
    recorded and reconciles (pending); the rerun with a working password does the rest."""
    from flows.escape import escape

    g = small_gallery(COUNT, per_page=5)
    monkeypatch.setenv("KODAK_PASSWORD", "no-longer-valid")
    with pytest.raises(Exception, match="login"):
        escape(_gallery_job(tmp_path, g))
    con = duckdb.connect(str(tmp_path / "ledger.duckdb"), read_only=True)
    try:
        runs = con.execute("SELECT status, summary FROM runs").fetchall()
        rec = con.execute("SELECT listed, done, skipped, failed, pending FROM reconciliation_job").fetchall()
    finally:
        con.close()
    assert runs[0][0] == "crashed"
    assert not rec or rec[0][0] == sum(rec[0][1:])
    monkeypatch.setenv("KODAK_PASSWORD", g.password)
    s = escape(_gallery_job(tmp_path, g))
    _reconciles(s)
    assert (s["listed"], s["done"]) == (COUNT, COUNT)


def test_numbered_host_faults_and_gaps(tmp_path, rel_cache):
    """Missing numbers are skipped (not failures); faults recover or fail precisely; a rerun finishes."""
    from flows.escape import escape

    with NumberedHost(20, missing={4, 9}, size=RELIABILITY_SIZE, cache_dir=rel_cache / "numbered") as host:
        f = host.faults
        f.add("error", status=502, match=r"/3\.jpg$", times=None)
        f.add("rate_limit", retry_after=0.05, match=r"/(7|8)\.jpg$", times=RETRIES, per_path=True)
        f.add("truncate", keep=0.5, match=r"/12\.jpg$", times=None)
        f.add("html", match=r"/15\.jpg$", times=None)
        f.add("reset", match=r"/1[6-9]\.jpg$", times=1, per_path=True)
        src = host.job_source(stop=20, stop_after_missing=None)
        src["http"] = {"backoff_max": 0.05, "read_timeout": 5.0}
        job = escape_job(tmp_path, src, name="rel-numbered", retries=RETRIES, backoff_seconds=0.01)
        first = escape(job)
        _reconciles(first)
        status = _status(first["ledger"])
        by_n = {int(re.search(r"/(\d+)\.jpg$", k).group(1)): v for k, v in status.items()}
        assert by_n[4] == ("skipped", "fetch", "not_found") and by_n[9] == ("skipped", "fetch", "not_found")
        assert by_n[3] == ("failed", "fetch", "http_502")
        assert by_n[12] == ("failed", "fetch", "truncated")
        assert by_n[15] == ("failed", "fetch", "not_an_image")
        assert all(by_n[n][0] == "done" for n in (7, 8, 16, 17, 18, 19)), by_n
        assert (first["listed"], first["done"], first["skipped"], first["failed"]) == (20, 15, 2, 3), first
        f.clear()
        second = escape(job)
        _reconciles(second)
        assert (second["done"], second["skipped"], second["failed"]) == (18, 2, 0), second
        assert f.count(r"\.jpg$") == 3  # only the three failures were asked for again
    assert len(photo_files(tmp_path / "archive")) == 18
