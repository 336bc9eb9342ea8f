"""Story 5, the hi-res replacement: every step and every tricky case, through flickrapi
against the Flickr stand-in and the catalogue over real HTTP; then the flow, its rerun,
and its recovery from a run that stopped between the replace and the ledger."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tasks import hires
from tasks.flickr import catalogue_link, digital_id, upload_timeout
from tasks.ledger import Ledger

NEEDS_REVIEW = {"not_in_album", "catalogue_image_missing", "catalogue_not_found", "no_catalogue_link", "ambiguous"}
MASTER_SKIPS = {"no_master", "no_larger_version", "too_large_for_flickr"}


def worker_for(acct, tmp_path: Path, **overrides) -> hires.HiresWorker:
    job = hires.load_hires_job(acct.job(tmp_path, **overrides))
    hires.ensure_master_index(job)
    return hires.HiresWorker(job)


def listed(worker: hires.HiresWorker) -> list[dict]:
    first = worker.list_page(1)
    items = first["items"]
    for page in range(2, first["pages"] + 1):
        items += worker.list_page(page)["items"]
    return items


def by_stage(outcomes: list[dict]) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for o in outcomes:
        out.setdefault(o["item_id"], {})[o["stage"]] = o
    return out


# -- text helpers ---------------------------------------------------------------------------------
def test_catalogue_link_and_digital_id_extraction():
    desc = ('From the collection. <a href="http://acms.sl.nsw.gov.au/item/itemDetailPaged.aspx?itemID=442625&amp;x=1"'
            ' rel="nofollow">http://acms.sl.nsw.gov.au/item/itemDetailPaged.aspx?itemID=442625</a>')
    assert catalogue_link(desc) == "http://acms.sl.nsw.gov.au/item/itemDetailPaged.aspx?itemID=442625&x=1"
    assert catalogue_link("Digitised by the Library.") is None
    assert catalogue_link(desc, r"itemID=(\d+)") == "442625"
    assert digital_id("http://x/images/a1280001r.jpg") == "a1280001"
    assert digital_id("http://x/images/A1280001.JPG") == "a1280001"
    assert digital_id("Digital ID: bcp_0012345 (scan)") == "bcp_0012345"
    assert digital_id("http://x/images/logo.png") is None
    assert digital_id("http://x/FL1234567.jpg", r"(FL\d{7})") == "fl1234567"


def test_upload_timeout_grows_with_the_file():
    small, big = upload_timeout(2_000_000), upload_timeout(150_000_000)
    assert small < big
    assert big == pytest.approx(60 + 150_000_000 / 250_000)


# -- steps 1 and 2 -----------------------------------------------------------------------------------
def test_match_and_master_for_every_case(flickr_account, tmp_path):
    acct = flickr_account()
    worker = worker_for(acct, tmp_path)
    items = listed(worker)
    truth = acct.truth()
    assert {i["item_id"] for i in items} == set(truth)
    prepared = worker.prepare(items)
    worker.close()
    stages = by_stage(prepared["outcomes"])
    ready = {r["item_id"]: r for r in prepared["ready"]}
    for iid, t in truth.items():
        match = stages[iid]["match"]
        case = f"{iid} ({t['link']}, {t['transform']}, expect {t['expect']})"
        if t["expect"] in NEEDS_REVIEW:
            assert (match["outcome"], match["reason"]) == ("needs_review", t["expect"]), case
            assert "master" not in stages[iid] and iid not in ready
            continue
        # matched, and to the right picture, whatever the uploader did to it
        want = "matched_direct" if t["link"] == "item" else "matched_album"
        assert (match["outcome"], match["reason"]) == ("ok", want), case
        assert match["detail"]["digital_id"] == t["digital_id"], case
        master = stages[iid]["master"]
        if t["expect"] in MASTER_SKIPS:
            assert (master["outcome"], master["reason"]) == ("skipped", t["expect"]), case
            assert iid not in ready
        else:
            assert (master["outcome"], master["reason"]) == ("ok", "master_found"), case
            r = ready[iid]
            assert (r["date_taken"], r["date_granularity"]) == (t["taken"], t["granularity"])
            assert r["master_width"] > t["width"] and r["master_height"] > t["height"]
            assert Path(r["master_path"]).name.startswith(t["digital_id"])
    # the tricky cases are all in the library
    kinds = Counter((t["link"], t["transform"]) for t in truth.values())
    for case in [("item", "tint"), ("item", "dark"), ("item", "crop"), ("item", "flip"), ("album", "tint"),
                 ("album", "flip"), ("album", "crop"), ("album", "dark")]:
        assert kinds[case] >= 1, case
    # match rows: every album image ranked, the chosen one is the truth
    rows = [m for m in prepared["matches"] if m["method"] == "album" and m["chosen"]]
    for m in rows:
        assert m["candidate"] == truth[m["query"]]["digital_id"]
        album = [x for x in prepared["matches"] if x["query"] == m["query"]]
        assert sorted(x["rank"] for x in album) == list(range(1, len(album) + 1)) and len(album) > 3
    without = [iid for iid, t in truth.items() if t["expect"] == "not_in_album"]
    assert all(not m["chosen"] for m in prepared["matches"] if m["query"] in without)
    assert {a["sha256"] for a in prepared["assets"]} >= {stages[i]["match"]["detail"].get("flickr_sha256")
                                                          for i in ready}


def test_the_accounts_own_upload_limit_is_honoured(flickr_account, tmp_path, hires_library):
    acct = flickr_account(max_upload=hires_library.oversize_bytes)
    worker = worker_for(acct, tmp_path, flickr={"max_upload_bytes": 200 * 1024 * 1024})
    items = listed(worker)
    oversized = [i for i in items if acct.truth()[i["item_id"]]["master"] == "oversized"]
    prepared = worker.prepare(oversized)
    worker.close()
    got = [o["reason"] for o in prepared["outcomes"] if o["stage"] == "master"]
    assert got == ["too_large_for_flickr"] * len(oversized) and oversized
    assert all(o["detail"]["limit_bytes"] == hires_library.oversize_bytes
               for o in prepared["outcomes"] if o["stage"] == "master")


# -- steps 3 to 5 ------------------------------------------------------------------------------------
def test_replace_restore_verify(flickr_account, tmp_path):
    acct = flickr_account()
    worker = worker_for(acct, tmp_path)
    items = listed(worker)
    truth = acct.truth()
    prepared = worker.prepare(items)
    expected = {iid for iid, t in truth.items() if t["expect"] == "date_verified"}
    faults = [*acct.fail_some("flickr.photos.setDates", 3, among=expected, code=106),
              *acct.fail_some("replace", 4, among=expected, status=502, times=2)]
    done = worker.replace_batch(prepared["ready"])
    worker.close()
    stages = by_stage(done["outcomes"])
    assert faults and all(f.fired for f in faults)
    assert set(stages) == expected
    for iid in expected:
        s = stages[iid]
        assert [s[k]["reason"] for k in ("replace", "restore_date", "verify")] == \
            ["replaced", "date_restored", "date_verified"]
        assert s["verify"]["final"]
        photo = acct.state.photos[iid.split(":")[1]]
        assert photo.replaced == 1
        assert (photo.taken, photo.granularity) == (truth[iid]["taken"], truth[iid]["granularity"])
        assert s["replace"]["detail"]["timeout_s"] > 10
    # nothing else was touched, and the oversized masters were never sent
    untouched = [p for p in acct.state.photos.values() if f"flickr:{p.id}" not in expected]
    assert all(p.replaced == 0 for p in untouched)
    sent = {pid for m, pid, _ in acct.state.calls if m == "replace"}
    assert not sent & {iid.split(":")[1] for iid, t in truth.items() if t["master"] == "oversized"}
    assert done["retries"] > 0


def test_a_photo_replaced_by_a_run_that_died_is_not_replaced_again(flickr_account, tmp_path):
    """The upload landed but the run died before writing it down: the next run sees
    Flickr already holds the master, restores the date the ledger remembers, verifies."""
    acct = flickr_account()
    worker = worker_for(acct, tmp_path)
    truth = acct.truth()
    item = next(i for i in listed(worker) if truth[i["item_id"]]["expect"] == "date_verified")
    first = worker.prepare([item])["ready"][0]
    remembered = {item["item_id"]: {"date_taken": first["date_taken"], "granularity": first["date_granularity"]}}
    worker.flickr.replace(item["photo_id"], first["master_path"], timeout=30)  # ...and the run dies here
    photo = acct.state.photos[item["photo_id"]]
    assert photo.replaced == 1 and photo.taken != first["date_taken"]  # Flickr took the scan's EXIF date
    again = next(i for i in listed(worker) if i["item_id"] == item["item_id"])
    prepared = worker.prepare([again], remembered)
    master = by_stage(prepared["outcomes"])[item["item_id"]]["master"]
    assert (master["reason"], master["detail"]["date_from"]) == ("already_replaced", "ledger")
    done = by_stage(worker.replace_batch(prepared["ready"])["outcomes"])[item["item_id"]]
    worker.close()
    assert [done[k]["reason"] for k in ("replace", "restore_date", "verify")] == \
        ["already_replaced", "date_restored", "date_verified"]
    assert photo.replaced == 1
    assert (photo.taken, photo.granularity) == (truth[item["item_id"]]["taken"], truth[item["item_id"]]["granularity"])


def test_call_budget_lives_across_batches(flickr_account, tmp_path):
    acct = flickr_account()
    budget = {"calls_per_hour": 360, "burst": 5}  # the bucket refills 0.1 call a second: the counts below stay exact
    job = acct.job(tmp_path, flickr=budget)
    w1 = worker_for(acct, tmp_path, flickr=budget)
    w1.list_page(1)
    w1.close()
    state = hires.load_hires_job(job).budget_path
    assert state.exists()
    import json

    left = json.loads(state.read_text())["tokens"]
    assert left == pytest.approx(4, abs=0.2)  # one call spent from the burst of five, seen by the next batch
    w2 = worker_for(acct, tmp_path, flickr=budget)
    w2.list_page(1)
    w2.close()
    assert json.loads(state.read_text())["tokens"] == pytest.approx(3, abs=0.2)


# -- the flow ---------------------------------------------------------------------------------------
def expected_counts(truth: dict) -> dict:
    c = Counter(t["expect"] for t in truth.values())
    return {"listed": len(truth), "replaced": c["date_verified"], "dates_verified": c["date_verified"],
            "no_larger_version": c["no_larger_version"], "too_large_for_flickr": c["too_large_for_flickr"],
            "no_master": c["no_master"], "needs_review": sum(c[r] for r in NEEDS_REVIEW),
            "matched": sum(v for k, v in c.items() if k not in NEEDS_REVIEW)}


def test_flow_replaces_what_it_should_and_a_rerun_replaces_nothing(prefect_harness, flickr_account, tmp_path,
                                                                   flickr_test_secrets):
    from flows.replace_hires import replace_hires

    acct = flickr_account()
    truth = acct.truth()
    verified = [iid for iid, t in truth.items() if t["expect"] == "date_verified"]
    faults = [*acct.fail_some("flickr.photos.getInfo", 7, among=verified, code=105),
              *acct.fail_some("flickr.photos.setDates", 5, among=verified, code=106),
              *acct.fail_some("replace", 4, among=verified, status=502),
              acct.state.inject("flickr.people.getPhotos", code=105, times=1)]
    job = acct.job(tmp_path)
    want = expected_counts(truth)
    summary = replace_hires(job)
    assert {k: summary[k] for k in want} == want
    assert summary["failed"] == 0 and summary["status"] == "finished"
    assert summary["listed"] == summary["done"] + summary["skipped"] + summary["failed"] + summary["pending"]
    assert summary["done"] == want["dates_verified"]
    assert all(f.fired for f in faults)
    for iid, t in truth.items():
        photo = acct.state.photos[iid.split(":")[1]]
        assert photo.replaced == (1 if t["expect"] == "date_verified" else 0), iid
        assert (photo.taken, photo.granularity) == (t["taken"], t["granularity"]), iid
    with Ledger(job["ledger"], read_only=True) as ledger:
        text = " ".join(str(v) for row in ledger.con.execute(
            "SELECT detail FROM events UNION ALL SELECT spec::VARCHAR FROM runs "
            "UNION ALL SELECT detail FROM matches").fetchall() for v in row)
        chosen = ledger.query("SELECT query, candidate FROM matches WHERE chosen")
    assert all(value not in text for value in flickr_test_secrets.values())
    assert {r["query"]: r["candidate"] for r in chosen} == \
        {iid: t["digital_id"] for iid, t in truth.items() if t["expect"] not in NEEDS_REVIEW}

    uploads = acct.state.calls_to("replace")
    again = replace_hires(job)
    assert acct.state.calls_to("replace") == uploads
    assert again["replaced"] == 0 and again["listed"] == want["listed"]
    assert (again["done"], again["skipped"]) == (summary["done"], summary["skipped"])
    assert again["needs_review"] == want["needs_review"]  # still waiting for a person


def test_flow_recovers_from_runs_that_stopped_half_way(prefect_harness, flickr_account, tmp_path):
    """A dry run reads every date; an upload then lands with nothing recorded (a crash);
    a run whose setDates fails leaves a photo with the scan's date. The next run puts
    every date back, and no photo is ever uploaded twice."""
    from flows.replace_hires import replace_hires

    acct = flickr_account()
    job = acct.job(tmp_path)
    truth = acct.truth()
    planned = replace_hires(job, dry_run=True)
    assert planned["replaced"] == 0 and acct.state.calls_to("replace") == 0
    ready = sorted(iid for iid, t in truth.items() if t["expect"] == "date_verified")
    crashed, stuck = ready[0].split(":")[1], ready[1].split(":")[1]
    # the crash: a master uploaded with no ledger record of it
    master = acct.library.masters[truth[ready[0]]["digital_id"]][0]
    from tasks.flickr import make_api

    api = make_api(acct.state.api_key, acct.state.api_secret, acct.state.token, acct.state.token_secret, **acct.urls)
    api.replace(str(master), photo_id=crashed, format="etree")
    wrong = acct.state.photos[crashed].taken
    assert wrong != truth[ready[0]]["taken"]
    # a run in which one photo's setDates fails for good
    acct.state.inject("flickr.photos.setDates", code=99, photo_id=stuck)
    second = replace_hires(job)
    assert second["failed"] == 1
    with Ledger(job["ledger"], read_only=True) as ledger:
        rows = ledger.query("SELECT item_id, stage, reason FROM item_status WHERE status = 'failed'")
    assert rows == [{"item_id": f"flickr:{stuck}", "stage": "restore_date", "reason": "flickr_99"}]
    acct.state.faults.clear()
    third = replace_hires(job, only_failed=True)
    assert third["failed"] == 0 and third["replaced"] == 0 and third["dates_verified"] == 1
    for iid in ready:
        photo = acct.state.photos[iid.split(":")[1]]
        assert photo.replaced == 1, iid
        assert (photo.taken, photo.granularity) == (truth[iid]["taken"], truth[iid]["granularity"]), iid
    with Ledger(job["ledger"], read_only=True) as ledger:
        status = ledger.reconciliation(job=job["name"])
        already = ledger.query("SELECT item_id FROM events WHERE stage = 'replace' AND reason = 'already_replaced'")
    assert {r["item_id"] for r in already} >= {f"flickr:{crashed}", f"flickr:{stuck}"}
    assert status["failed"] == 0 and status["done"] == len(ready)


def test_demo_summary(prefect_harness, tmp_path):
    from sandbox.demos import hires as demo

    summary = demo.run(tmp_path, True, photos=24)
    for key in ("run_id", "ledger", "report", "listed", "done", "skipped", "failed", "pending",
                "matched", "no_larger_version", "replaced", "dates_verified", "needs_review"):
        assert key in summary, key
    assert summary["listed"] == 24 and summary["failed"] == 0
    assert summary["listed"] == summary["done"] + summary["skipped"] + summary["failed"] + summary["pending"]
    assert summary["replaced"] == summary["dates_verified"] == summary["replaced_on_flickr"]
    assert summary["replaced_twice"] == 0 and summary["wrong_matches"] == 0
    assert summary["flickr_errors_injected"] > 0


def test_a_prefect_concurrency_limit_can_pace_flickr_calls_across_machines(prefect_harness, flickr_account,
                                                                          tmp_path):
    """With ``flickr.prefect_rate_limit`` the budget is a Prefect global concurrency
    limit with slot decay (shared by every worker), not the local file."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from tasks.hires_tasks import PrefectRateLimit, _worker

    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name="flickr-test-key", limit=2, slot_decay_per_second=2.0))
    acct = flickr_account()
    job = acct.job(tmp_path, flickr={"prefect_rate_limit": "flickr-test-key"})
    hires.ensure_master_index(hires.load_hires_job(job))
    worker = _worker(job)
    assert isinstance(worker.flickr.budget, PrefectRateLimit)
    calls = acct.state.calls_to("flickr.people.getPhotos")
    for _ in range(4):
        worker.list_page(1)
    worker.close()
    assert acct.state.calls_to("flickr.people.getPhotos") == calls + 4
    assert worker.flickr.budget.waited > 0.2  # two calls at once, then one per half second
    assert not hires.load_hires_job(job).budget_path.exists()  # the file bucket was not used
    with pytest.raises(ValueError, match="no Prefect concurrency limit named .no-such-limit."):
        _worker(acct.job(tmp_path, flickr={"prefect_rate_limit": "no-such-limit"}))
