"""The gallery source against the sandbox photo-frame site and its CDN, over real HTTP:
login and re-login, each stop rule, the rewrite, data-src and relative URLs, cookies
kept off the CDN, and the escape flow: faults recorded, a rerun completing the rest."""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from pathlib import Path

import duckdb
import pytest

from photo_escape.jobspec import JobSpecError, parse_job
from photo_escape.plugins import make_source
from photo_escape.secrets import SecretMissing
from tasks.sources.gallery import LoginFailed

from tests.fixtures.web import GALLERY_COUNT

FAST = {"batch_size": 50, "concurrency": 4, "retries": 2, "backoff_seconds": 0.01}


def job(source: dict, tmp_path: Path, name: str = "gallery-test", **extra) -> dict:
    return {
        "name": name,
        "ledger": str(tmp_path / "ledger.duckdb"),
        "work_dir": str(tmp_path / "work"),
        "reports_dir": str(tmp_path / "reports"),
        "source": source,
        "destination": {"kind": "local", "path": str(tmp_path / "archive"), "layout": "{name}"},
        "options": dict(FAST),
        **extra,
    }


def source_for(g, tmp_path: Path, **changes):
    src = g.job_source()
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            src[section][field] = value
        elif value is None:
            src.pop(section, None)
        else:
            src[section] = value
    spec = parse_job(job(src, tmp_path))
    return make_source(spec.source, workdir=tmp_path / "work", options=spec.options)


def listing(src) -> list[list[dict]]:
    try:
        return list(src.list_pages())
    finally:
        src.close()


def test_login_then_pages_of_48_until_the_short_one(gallery, tmp_path):
    src = source_for(gallery, tmp_path)
    pages = listing(src)
    assert [len(p) for p in pages] == [48, 48, 14]
    items = [i for p in pages for i in p]
    assert [i["url"] for i in items] == [gallery.original_url(k) for k in range(GALLERY_COUNT)]
    assert all("~a~" in i["url"] and "~t~" in i["thumbnail"] for i in items)
    assert all(i["item_id"] == i["url"] == i["source_ref"] for i in items)
    assert len({i["name"] for i in items}) == GALLERY_COUNT
    assert items[0]["name"] == gallery.original_key(0)
    facts = src.report_facts()
    assert facts["expected_count"] == GALLERY_COUNT
    assert facts["listing_ended"] == "fewer_than_48" and facts["pages"] == 3
    assert gallery.site_faults.count(r"AllPictures\?p=4") == 0  # never asked past the short page
    assert src.logins == 1


def test_a_wrong_password_is_a_clear_error_without_the_secret(gallery, tmp_path, monkeypatch):
    monkeypatch.setenv("KODAK_PASSWORD", "not-the-password")
    with pytest.raises(LoginFailed) as err:
        listing(source_for(gallery, tmp_path))
    assert err.value.reason == "login_failed"
    assert "not-the-password" not in str(err.value) and "login form" in str(err.value)
    monkeypatch.delenv("KODAK_PASSWORD")
    with pytest.raises(SecretMissing, match="KODAK_PASSWORD"):
        listing(source_for(gallery, tmp_path))


def test_a_password_in_the_job_file_is_refused(gallery, tmp_path):
    src = gallery.job_source()
    src["login"]["secret_fields"] = {"password": "hunter2"}
    with pytest.raises(JobSpecError, match="secret_fields"):
        parse_job(job(src, tmp_path))


def test_an_expired_session_logs_in_again_and_continues_where_it_was(gallery, tmp_path):
    gallery.site_faults.add("expire_session", match=r"AllPictures\?p=2$", times=1)
    src = source_for(gallery, tmp_path)
    pages = listing(src)
    assert [len(p) for p in pages] == [48, 48, 14]
    assert [p[0]["page"] for p in pages] == [1, 2, 3]
    assert src.logins == 2 and src.report_facts()["relogins"] == 1
    assert gallery.site_faults.count(r"AllPictures\?p=1$") == 1  # not started over
    assert gallery.site_faults.count(r"AllPictures\?p=2$") == 2


def test_sessions_that_last_two_page_views(make_gallery, tmp_path):
    g = make_gallery(150, session_pages=2)
    pages = listing(source_for(g, tmp_path))
    items = [i["url"] for p in pages for i in p]
    assert len(items) == len(set(items)) == 150


@pytest.mark.parametrize("past_end, ended", [
    ("empty", "empty_page"), ("repeat", "repeated_page"), ("not_found", "page_not_found"),
])
def test_a_full_last_page_stops_on_an_empty_repeated_or_missing_page(make_gallery, tmp_path, past_end, ended):
    g = make_gallery(96, past_end=past_end)
    src = source_for(g, tmp_path)
    pages = listing(src)
    assert [len(p) for p in pages] == [48, 48]
    assert src.report_facts()["listing_ended"] == ended
    assert g.site_faults.count(r"AllPictures\?p=4") == 0


def test_without_the_count_rule_the_empty_page_ends_it(gallery, tmp_path):
    src = source_for(gallery, tmp_path, pages__last_when_fewer_than=None)
    assert sum(len(p) for p in listing(src)) == GALLERY_COUNT
    assert src.report_facts()["listing_ended"] == "empty_page"


def test_rewrites_apply_in_order_and_contains_filters(gallery, tmp_path):
    rules = [{"from": "~t~", "to": "~x~"}, {"from": "~x~", "to": "~a~"}, {"from": r"\.jpg$", "to": ".jpg", "regex": True}]
    items = [i for p in listing(source_for(gallery, tmp_path, images__rewrite=rules)) for i in p]
    assert items[5]["url"] == gallery.original_url(5)
    wrong_order = [{"from": "~x~", "to": "~a~"}, {"from": "~t~", "to": "~x~"}]
    items = [i for p in listing(source_for(gallery, tmp_path, images__rewrite=wrong_order)) for i in p]
    assert all("~x~" in i["url"] for i in items)
    # without "contains" the spacer and logo images of the page are listed too
    items = [i for p in listing(source_for(gallery, tmp_path, images__contains=None, pages__last_when_fewer_than=None))
             for i in p]
    assert any(i["url"].endswith("/Content/spacer.gif") for i in items)


def test_lazy_relative_thumbnails_resolve_against_the_page(make_gallery, tmp_path):
    g = make_gallery(60, thumbs="relative", lazy=True)
    src = source_for(g, tmp_path)
    assert src.config.images.attribute == "data-src"
    pages = listing(src)
    items = [i for p in pages for i in p]
    assert len(items) == 60
    assert items[0]["url"] == f"{g.site_url}/media/{g.original_key(0)}"
    src = source_for(g, tmp_path)
    outs = src.fetch(items[:6])
    src.close()
    assert [o["outcome"] for o in outs] == ["ok"] * 6
    # images on the gallery's own host are fetched with its login cookie
    assert all(r["cookies"] for r in g.site_faults.requests if "/media/" in r["target"])


def test_originals_come_from_the_cdn_without_cookies_and_match(gallery, tmp_path):
    src = source_for(gallery, tmp_path)
    items = listing(src)[0][:8]
    fetcher = source_for(gallery, tmp_path)
    outs = fetcher.fetch(items)
    fetcher.close()
    assert [o["outcome"] for o in outs] == ["ok"] * 8
    for k, o in enumerate(outs):
        data = gallery.picture_file(k, thumbnail=False).read_bytes()
        assert o["sha256"] == hashlib.sha256(data).hexdigest()
        assert Path(o["item"]["local_path"]).read_bytes() == data
    cdn = [r for r in gallery.cdn_faults.requests if "~a~" in r["target"]]
    assert len(cdn) == 8 and not any(r["cookies"] for r in cdn)


def test_a_page_that_fails_for_a_while_is_retried(gallery, tmp_path):
    gallery.site_faults.add("error", match=r"AllPictures\?p=2$", times=2, status=502)
    gallery.site_faults.add("reset", match=r"AllPictures\?p=3$", times=1)
    src = source_for(gallery, tmp_path)
    assert [len(p) for p in listing(src)] == [48, 48, 14]


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and ".photo-escape-staging" not in p.parts]


def test_the_escape_flow_records_faults_and_a_rerun_completes_without_duplicates(
        prefect_harness, gallery, tmp_path):
    from flows.escape import escape

    key = gallery.original_key
    gallery.cdn_faults.add("html", match=key(5), times=None)  # an error page served with 200
    gallery.cdn_faults.add("error", match=key(17), times=None, status=500)
    gallery.cdn_faults.add("reset", match=key(30), times=1)  # recovers on retry
    gallery.cdn_faults.add("truncate", match=key(31), times=1)
    gallery.cdn_faults.add("rate_limit", match=key(32), times=1, retry_after=0.1)
    gallery.site_faults.add("expire_session", match=r"p=2$", times=1)
    spec = job(gallery.job_source(), tmp_path)

    first = escape(spec)
    assert first["listed"] == GALLERY_COUNT
    assert (first["done"], first["failed"], first["pending"]) == (GALLERY_COUNT - 2, 2, 0)
    assert first["expected_count"] == GALLERY_COUNT and first["expected_count_met"] is False
    with duckdb.connect(first["ledger"], read_only=True) as con:
        failed = dict(con.execute(
            "SELECT item_id, reason FROM item_stage_latest WHERE stage='fetch' AND outcome='failed'").fetchall())
        recovered = con.execute(
            "SELECT count(*) FROM item_stage_latest WHERE stage='fetch' AND reason='recovered'").fetchone()[0]
    assert failed == {gallery.original_url(5): "not_an_image", gallery.original_url(17): "http_500"}
    assert recovered == 3
    assert len(_files(tmp_path / "archive")) == GALLERY_COUNT - 2

    gallery.cdn_faults.clear()
    second = escape(spec)
    assert (second["listed"], second["done"], second["failed"]) == (GALLERY_COUNT, GALLERY_COUNT, 0)
    assert second["expected_count_met"] is True
    fetched_again = Counter(r["target"] for r in gallery.cdn_faults.requests)
    assert sorted(fetched_again) == sorted(f"/{key(k)}" for k in (5, 17))  # only what had failed
    files = _files(tmp_path / "archive")
    assert len(files) == GALLERY_COUNT
    assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in files}) == GALLERY_COUNT


def test_a_wrong_page_url_or_selector_says_so(gallery, tmp_path):
    from photo_escape.outcomes import PermanentError

    src = source_for(gallery, tmp_path, pages__url=f"{gallery.site_url}/Frame/NoSuchAlbum?p={{page}}")
    with pytest.raises(PermanentError, match="first page .* answered 404"):
        listing(src)
    src = source_for(gallery, tmp_path, images__css="img.no-such-class")
    assert listing(src) == []
    assert "images.css" in src.report_facts()["warning"]


def test_a_login_form_with_a_csrf_token_is_read_before_posting(make_gallery, tmp_path):
    g = make_gallery(60, csrf=True)
    src = source_for(g, tmp_path)
    assert sum(len(p) for p in listing(src)) == 60
    assert g.logins == 1
    src = source_for(g, tmp_path, login={**g.job_source()["login"], "hidden_fields": False})
    with pytest.raises(LoginFailed):
        listing(src)


def test_a_page_answered_401_logs_in_again(gallery, tmp_path):
    gallery.site_faults.add("error", match=r"AllPictures\?p=2$", times=1, status=401)
    src = source_for(gallery, tmp_path)
    assert [len(p) for p in listing(src)] == [48, 48, 14]
    assert src.logins == 2


def test_image_cookies_can_be_withheld_even_on_the_site_itself(make_gallery, tmp_path):
    g = make_gallery(12, thumbs="relative")
    src = source_for(g, tmp_path, images__cookies="never")
    items = listing(src)[0]
    fetcher = source_for(g, tmp_path, images__cookies="never")
    outs = fetcher.fetch(items)
    fetcher.close()
    assert [o["outcome"] for o in outs] == ["ok"] * 12
    media = [r for r in g.site_faults.requests if "/media/" in r["target"]]
    assert len(media) == 12 and not any(r["cookies"] for r in media)


def test_the_password_can_come_from_a_prefect_secret_block(prefect_harness, gallery, tmp_path, monkeypatch):
    from prefect.blocks.system import Secret

    Secret(value=gallery.password).save("sandbox-gallery-password", overwrite=True)
    monkeypatch.delenv("KODAK_PASSWORD")
    src = source_for(gallery, tmp_path, login={**gallery.job_source()["login"],
                                               "secret_fields": {"password": {"block": "sandbox-gallery-password"}}})
    assert sum(len(p) for p in listing(src)) == GALLERY_COUNT


def test_an_error_page_served_with_200_does_not_end_the_listing(gallery, tmp_path):
    gallery.site_faults.add("html", match=r"AllPictures\?p=2$", times=1)
    src = source_for(gallery, tmp_path)
    assert [len(p) for p in listing(src)] == [48, 48, 14]
    assert src.report_facts()["empty_pages_retried"] == 1


def test_the_gallery_demo_meets_its_expected_count_on_the_rerun(prefect_harness, tmp_path):
    from sandbox.demos import gallery as demo

    summary = demo.run(tmp_path, as_json=True, count=100)
    assert summary["first_run"]["expected_count_met"] is False
    assert summary["first_run"]["failures"] == {"http_503": 2, "not_an_image": 1}
    assert (summary["listed"], summary["done"], summary["failed"]) == (100, 100, 0)
    assert summary["expected_count"] == 100 and summary["expected_count_met"] is True
    assert Path(summary["job_file"]).read_text().count("KODAK_PASSWORD") == 1  # a reference, not the value


def test_urls_are_read_from_srcset_and_style_attributes_too():
    from tasks.sources.gallery import url_from_attribute

    assert url_from_attribute(" /t/1.jpg ", "src") == "/t/1.jpg"
    assert url_from_attribute("/s/1.jpg 320w, /m/1.jpg 800w, /l/1.jpg 1600w", "srcset") == "/l/1.jpg"
    assert url_from_attribute("/a.jpg, /b.jpg 2x", "data-srcset") == "/b.jpg"
    assert url_from_attribute("width: 90px; background-image: url('/thumbs/7~t~x.jpg')", "style") == \
        "/thumbs/7~t~x.jpg"


def test_faults_given_to_the_constructor_apply_from_the_first_request(make_gallery, tmp_path):
    g = make_gallery(20, cdn_faults=[{"kind": "error", "match": "~a~", "times": None, "status": 500}])
    src = source_for(g, tmp_path)
    items = listing(src)[0]
    outs = source_for(g, tmp_path).fetch(items[:2])
    assert [(o["outcome"], o["reason"]) for o in outs] == [("failed", "http_500")] * 2


def test_originals_keep_every_allowed_request_in_flight(gallery, tmp_path):
    """With the CDN answering after 80 ms, a batch of originals keeps the job's
    concurrency (8: no per_host set) in flight there."""
    items = listing(source_for(gallery, tmp_path))[0]
    spec = parse_job(job(gallery.job_source(), tmp_path, options=dict(FAST, concurrency=8)))
    fetcher = make_source(spec.source, workdir=tmp_path / "work", options=spec.options)
    gallery.cdn_faults.add("slow", match="~a~", delay=0.08, times=None)
    started = time.monotonic()
    outs = fetcher.fetch(items)
    seconds = time.monotonic() - started
    fetcher.close()
    assert [o["outcome"] for o in outs] == ["ok"] * 48
    assert gallery.cdn_faults.peak_in_flight >= 7
    assert gallery.cdn_faults.busy_seconds / seconds >= 5, (gallery.cdn_faults.busy_seconds, seconds)
