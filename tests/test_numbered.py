"""The numbered source against the sandbox numbered host (1..60, some missing, nothing
after 60), over real HTTP: 404 is skipped/not_found, stop_after_missing ends the
harvest early, and the escape flow records it all; a rerun finishes what failed."""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pytest

from photo_escape.jobspec import JobSpecError, parse_job
from photo_escape.plugins import make_source

from tests.fixtures.web import NUMBERED_COUNT, NUMBERED_MISSING

PRESENT = NUMBERED_COUNT - len(NUMBERED_MISSING)


def job(source: dict, tmp_path: Path, batch_size: int = 20) -> dict:
    return {
        "name": "numbered-test",
        "ledger": str(tmp_path / "ledger.duckdb"),
        "work_dir": str(tmp_path / "work"),
        "reports_dir": str(tmp_path / "reports"),
        "source": source,
        "destination": {"kind": "local", "path": str(tmp_path / "harvest"), "layout": "{name}"},
        "options": {"batch_size": batch_size, "concurrency": 4, "retries": 2, "backoff_seconds": 0.01},
    }


def source(host, tmp_path: Path, **kw):
    spec = parse_job(job(host.job_source(**kw), tmp_path))
    return make_source(spec.source, workdir=tmp_path / "work", options=spec.options), spec


def numbers_asked(host) -> list[int]:
    return [int(m.group(1)) for r in host.faults.requests if (m := re.search(r"/(\d+)\.jpg$", r["target"]))]


def harvest(host, tmp_path: Path, **kw) -> tuple[list[list[dict]], list[dict], object]:
    """List page by page and fetch each page before asking for the next, with a
    fresh source per batch, as the flow's fetch tasks do."""
    lister, spec = source(host, tmp_path, **kw)
    pages, outs = [], []
    for page in lister.list_pages():
        pages.append(page)
        fetcher = make_source(spec.source, workdir=tmp_path / "work", options=spec.options)
        outs.extend(fetcher.fetch(page))
        fetcher.close()
    return pages, outs, lister


def test_the_template_and_range_are_checked(numbered_host, tmp_path):
    bad = numbered_host.job_source(stop=10)
    for url, msg in ((f"{numbered_host.url}/gallery/full/x.jpg", r"\{n\}"),
                     (f"{numbered_host.url}/{{album}}/{{n}}.jpg", r"no other")):
        with pytest.raises(JobSpecError, match=msg):
            parse_job(job(dict(bad, url=url), tmp_path))
    with pytest.raises(JobSpecError, match="stop"):
        parse_job(job(dict(bad, start=20), tmp_path))


def test_every_number_is_listed_in_pages_with_safe_distinct_names(numbered_host, tmp_path):
    src, _ = source(numbered_host, tmp_path, start=5, stop=48, stop_after_missing=None)
    pages = list(src.list_pages())
    assert [len(p) for p in pages] == [20, 20, 4]
    items = [i for p in pages for i in p]
    assert [i["n"] for i in items] == list(range(5, 49))
    assert items[0]["url"] == f"{numbered_host.url}/gallery/full/5.jpg" == items[0]["item_id"]
    assert items[0]["name"] == "5.jpg"
    padded = parse_job(job(dict(numbered_host.job_source(stop=3), url="http://h/{n:05d}.jpg"), tmp_path))
    src = make_source(padded.source, workdir=tmp_path, options=padded.options)
    assert [i["name"] for i in next(src.list_pages())] == ["00001.jpg", "00002.jpg", "00003.jpg"]
    foldered = parse_job(job(dict(numbered_host.job_source(stop=2), url="http://h/{n}/full.jpg"), tmp_path))
    src = make_source(foldered.source, workdir=tmp_path, options=foldered.options)
    names = [i["name"] for i in next(src.list_pages())]
    assert len(set(names)) == 2 and all(n.endswith("full.jpg") for n in names)


def test_a_missing_number_is_skipped_as_not_found(numbered_host, tmp_path):
    pages, outs, _ = harvest(numbered_host, tmp_path, start=1, stop=NUMBERED_COUNT, stop_after_missing=None)
    by_n = {o["item_id"].rsplit("/", 1)[1]: o for o in outs}
    for n in range(1, NUMBERED_COUNT + 1):
        o = by_n[f"{n}.jpg"]
        if n in NUMBERED_MISSING:
            assert (o["outcome"], o["reason"], o["attempt"]) == ("skipped", "not_found", 1)
        else:
            assert o["outcome"] == "ok"
            assert o["sha256"] == hashlib.sha256(numbered_host.picture_file(n).read_bytes()).hexdigest()
    assert sorted(numbers_asked(numbered_host)) == list(range(1, NUMBERED_COUNT + 1))


def test_stop_after_missing_ends_at_the_first_long_enough_run(numbered_host, tmp_path):
    # 9, 10 and 11 are missing: three in a row end the harvest there
    pages, outs, lister = harvest(numbered_host, tmp_path, start=1, stop=1000, stop_after_missing=3)
    assert lister.report_facts()["ended_at"] == 11
    asked = numbers_asked(numbered_host)
    # no further than the requests in flight (4) while the run's answers came in, not the page of 20
    assert max(asked) < 11 + 2 * 4
    assert len(pages) == 1  # no second page was made
    skipped = Counter(o["reason"] for o in outs if o["outcome"] == "skipped")
    assert skipped["not_found"] == 4 and skipped["stopped_after_missing"] == 20 - len(asked)


def test_stop_after_missing_past_the_end_of_the_collection(numbered_host, tmp_path):
    pages, outs, lister = harvest(numbered_host, tmp_path, start=1, stop=20000, stop_after_missing=5)
    assert lister.report_facts()["ended_at"] == NUMBERED_COUNT + 5
    assert sum(o["outcome"] == "ok" for o in outs) == PRESENT
    assert max(numbers_asked(numbered_host)) < NUMBERED_COUNT + 5 + 2 * 4  # about the 4 in flight past the end
    assert sum(len(p) for p in pages) <= 100  # not 20,000


def test_the_escape_flow_harvests_and_a_rerun_completes_what_failed(prefect_harness, numbered_host, tmp_path):
    from flows.escape import BATCHES_IN_FLIGHT, escape

    numbered_host.faults.add("error", match=r"/1[0-9]\.jpg$", times=1, per_path=True, status=503)
    numbered_host.faults.add("html", match=r"/2\.jpg$", times=None)
    numbered_host.faults.add("truncate", match=r"/3\.jpg$", times=None)
    spec = job(numbered_host.job_source(start=1, stop=20000, stop_after_missing=5), tmp_path)

    first = escape(spec)
    assert first["listed"] == first["done"] + first["skipped"] + first["failed"] + first["pending"]
    assert (first["done"], first["failed"], first["pending"]) == (PRESENT - 2, 2, 0)
    assert first["ended_at"] == NUMBERED_COUNT + 5
    # the flow lists a page each time one of its batches under way finishes, so when the
    # batches of 1..60 finish close together the next BATCHES_IN_FLIGHT pages (61..120) are
    # listed before any answer past 60 is in; no more: each of those finishes only after
    # seeing a run of 5 misses (its own, or 61..65)
    assert first["listed"] <= NUMBERED_COUNT + BATCHES_IN_FLIGHT * spec["options"]["batch_size"]  # not 20,000
    with duckdb.connect(first["ledger"], read_only=True) as con:
        reasons = dict(con.execute(
            "SELECT reason, count(*) FROM item_stage_latest WHERE stage='fetch' AND outcome <> 'ok' GROUP BY 1"
        ).fetchall())
        recovered = con.execute(
            "SELECT count(*) FROM item_stage_latest WHERE stage='fetch' AND reason='recovered'").fetchone()[0]
    assert reasons["not_found"] >= len(NUMBERED_MISSING) + 5
    assert reasons["not_an_image"] == 1 and reasons["truncated"] == 1
    assert recovered == 8  # 12..19 (10 and 11 are missing: 503, then 404)

    numbered_host.faults.clear()
    second = escape(spec)
    assert second["failed"] == 0 and second["done"] == PRESENT
    again = Counter(numbers_asked(numbered_host))
    assert again[2] == again[3] == 1 and max(again.values()) == 1
    assert not [n for n in again if n <= NUMBERED_COUNT and n not in (2, 3)]  # nothing else redone
    files = [p for p in (tmp_path / "harvest").rglob("*.jpg") if ".photo-escape-staging" not in p.parts]
    assert sorted(p.name for p in files) == sorted(f"{n}.jpg" for n in range(1, NUMBERED_COUNT + 1)
                                                   if n not in NUMBERED_MISSING)


def test_a_soft_404_page_can_count_as_missing(numbered_host, tmp_path):
    numbered_host.faults.add("html", match=r"/(2[4-9])\.jpg$", times=None)  # 24..29: "not found" pages with 200
    pages, outs, lister = harvest(numbered_host, tmp_path, start=20, stop=60, stop_after_missing=5)
    by_n = {int(o["item_id"].rsplit("/", 1)[1][:-4]): o for o in outs}
    assert (by_n[24]["outcome"], by_n[24]["reason"]) == ("failed", "not_an_image")
    assert lister.report_facts()["ended_at"] is None
    numbered_host.faults.requests.clear()
    src = dict(numbered_host.job_source(start=20, stop=60, stop_after_missing=5), soft_404=True)
    spec = parse_job(job(src, tmp_path / "soft"))
    lister = make_source(spec.source, workdir=tmp_path / "soft", options=spec.options)
    outs = [o for page in lister.list_pages() for o in lister.fetch(page)]
    by_n = {int(o["item_id"].rsplit("/", 1)[1][:-4]): o for o in outs}
    assert (by_n[24]["outcome"], by_n[24]["reason"]) == ("skipped", "not_found")
    assert by_n[24]["detail"]["soft_404"] is True
    assert lister.report_facts()["ended_at"] == 27  # 23 (a real 404) and 24..27: five in a row


def test_a_batch_keeps_every_allowed_request_in_flight(numbered_host, tmp_path):
    """With the host 60 ms away and a few answers slower still, a batch keeps the job's
    concurrency (8: no per_host set) in flight at the host, the next number starting as
    soon as any answer is in, rather than rounds of 8 that wait for their slowest."""
    spec = parse_job(dict(job(numbered_host.job_source(stop_after_missing=5), tmp_path),
                          options={"concurrency": 8, "retries": 1, "backoff_seconds": 0.01}))
    src = make_source(spec.source, workdir=tmp_path / "work", options=spec.options)
    items = [src.item(n) for n in range(1, NUMBERED_COUNT + 1)]
    numbered_host.latency_ms = 60
    numbered_host.faults.add("slow", match=r"/(5|15|25|35|45|55)\.jpg$", delay=0.4, times=None)
    try:
        started = time.monotonic()
        out = src.fetch(items)
        seconds = time.monotonic() - started
    finally:
        numbered_host.latency_ms = 0
        src.close()
    assert Counter(o["outcome"] for o in out) == {"ok": PRESENT, "skipped": len(NUMBERED_MISSING)}
    plan = numbered_host.faults
    assert plan.peak_in_flight >= 7
    # the mean over the batch: more than the 4 the old per_host default allowed, and far more
    # than rounds that wait for a slow answer (about 2.5 here); about 5.7 on a quiet machine,
    # the slow answers' tail at the end keeps it from reaching 8 (and load from 5.7)
    assert plan.busy_seconds / seconds >= 4.5, (plan.busy_seconds, seconds)


def test_batches_fetched_at_once_keep_per_host_together(numbered_host, tmp_path):
    """The flow fetches several batches at once, each with its own source: the host still
    sees at most per_host requests in flight, not per_host per batch."""
    spec = parse_job(dict(job(dict(numbered_host.job_source(), http={"per_host": 3}), tmp_path),
                          options={"concurrency": 8, "retries": 1, "backoff_seconds": 0.01}))
    sources = [make_source(spec.source, workdir=tmp_path / "work", options=spec.options) for _ in range(2)]
    halves = [[sources[0].item(n) for n in range(1, 31)], [sources[1].item(n) for n in range(31, 61)]]
    numbered_host.latency_ms = 50
    try:
        with ThreadPoolExecutor(2) as pool:
            outs = list(pool.map(lambda k: sources[k].fetch(halves[k]), [0, 1]))
    finally:
        numbered_host.latency_ms = 0
    assert sum(o["outcome"] == "ok" for out in outs for o in out) == PRESENT
    assert numbered_host.faults.peak_in_flight == 3
