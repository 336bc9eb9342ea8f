"""The Flickr stand-in, through flickrapi unmodified over real HTTP: shapes, OAuth,
errors, the replace endpoint's XML and its date-taken reset, injected faults."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
import requests

from sandbox import photos
from tasks.flickr import CallBudget, FlickrClient, FlickrProblem, classify


def test_listing_pages_cover_every_photo_once_with_flickrs_mixed_types(flickr_account):
    acct = flickr_account()
    api = acct.api()
    seen = []
    page, pages = 1, None
    while pages is None or page <= pages:
        rsp = api.people.getPhotos(user_id="me", page=page, per_page=7,
                                   extras="description,date_taken,o_dims,url_o,original_format")
        body = rsp["photos"]
        assert rsp["stat"] == "ok"
        assert isinstance(body["page"], int) and isinstance(body["total"], str)  # as Flickr mixes them
        pages = body["pages"]
        for p in body["photo"]:
            assert isinstance(p["o_width"], str) and isinstance(p["width_o"], int)
            assert int(p["o_width"]) == p["width_o"]
            assert p["url_o"].startswith(acct.server.url)
            assert "_content" in p["description"]
            assert p["datetakengranularity"] in ("0", "4", "6", "8")
            seen.append(p["id"])
        page += 1
    assert sorted(seen) == sorted(acct.state.photos)
    assert int(body["total"]) == len(acct.state.photos)


def test_extras_only_when_asked(flickr_account):
    acct = flickr_account()
    p = acct.api().people.getPhotos(user_id="me", per_page=1)["photos"]["photo"][0]
    assert "url_o" not in p and "description" not in p and "datetaken" not in p


def test_photoset_listing(flickr_account):
    acct = flickr_account()
    ids = sorted(acct.state.photos)[:5]
    acct.state.photosets["72157600000000001"] = ids
    client = acct.client()
    page = client.photos_page(1, per_page=3, photoset_id="72157600000000001")
    assert page["total"] == 5 and page["pages"] == 2
    assert [p["id"] for p in page["photos"]] == ids[:3]
    with pytest.raises(FlickrProblem) as err:
        client.photos_page(1, photoset_id="nope")
    assert err.value.code == 1 and err.value.attempts == 1  # not transient: asked once


def test_get_info_set_dates_and_limits(flickr_account):
    acct = flickr_account()
    client = acct.client()
    pid = sorted(acct.state.photos)[0]
    truth = acct.library.truth()[pid]
    info = acct.api().photos.getInfo(photo_id=pid)["photo"]
    assert info["dates"]["taken"] == truth["taken"]
    assert isinstance(info["dates"]["takengranularity"], int)
    assert client.date_taken(pid) == {"taken": truth["taken"], "granularity": truth["granularity"], "unknown": 0}
    client.set_date_taken(pid, "1901-02-03 00:00:00", 0)
    assert acct.state.photos[pid].taken == "1901-02-03 00:00:00"
    with pytest.raises(FlickrProblem) as err:
        client.set_date_taken(pid, "last tuesday", 0)
    assert err.value.code == 2 and not err.value.transient and err.value.attempts == 1
    assert client.upload_limit() == acct.state.max_upload
    assert client.original_size(pid) == (acct.state.photos[pid].width, acct.state.photos[pid].height)


def test_replace_answers_xml_and_resets_date_taken_from_exif(flickr_account, tmp_path):
    acct = flickr_account()
    pid = sorted(acct.state.photos)[0]
    before = acct.state.photos[pid]
    old_url = acct.client().photos_page(1, per_page=500)["photos"]
    old_url = next(p["url_o"] for p in old_url if p["id"] == pid)
    master = photos.write_jpeg(tmp_path / "a1.jpg", 7, size=(900, 700), taken=datetime(2014, 6, 2, 11, 30, 5))
    rsp = acct.api().replace(str(master), photo_id=pid, format="etree")  # XML, parsed by flickrapi
    assert rsp.attrib["stat"] == "ok" and rsp.find("photoid").text == pid
    p = acct.state.photos[pid]
    assert (p.width, p.height, p.replaced) == (900, 700, 1)
    assert p.taken == "2014-06-02 11:30:05" and p.granularity == 0  # the real service's surprise
    assert requests.get(old_url, timeout=10).status_code == 404  # the old secret no longer serves
    new = acct.client().photos_page(1, per_page=500)["photos"]
    new_url = next(x["url_o"] for x in new if x["id"] == pid)
    assert requests.get(new_url, timeout=10).content == master.read_bytes()
    assert before is p


def test_replace_errors_come_back_as_xml_errors(flickr_account, tmp_path):
    acct = flickr_account()
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    client = acct.client(retries=0)
    for path, code in ((empty, 4), (text, 5)):
        with pytest.raises(FlickrProblem) as err:
            client.replace(sorted(acct.state.photos)[0], path, timeout=10)
        assert err.value.code == code
    with pytest.raises(FlickrProblem) as err:
        client.replace("1", text, timeout=10)
    assert err.value.code == 7


def test_oauth_is_required_and_checked(flickr_account):
    acct = flickr_account()
    pid = sorted(acct.state.photos)[0]
    with pytest.raises(FlickrProblem) as err:
        FlickrClient(acct.api(api_key="someone-else"), retries=0).date_taken(pid)
    assert err.value.code == 100
    with pytest.raises(FlickrProblem) as err:
        FlickrClient(acct.api(token="stolen"), retries=0).set_date_taken(pid, "1900-01-01 00:00:00", 6)
    assert err.value.code == 98
    # an OAuth header without a signature, and a write with no token at all
    url = acct.urls["rest_url"]
    form = {"method": "flickr.photos.getInfo", "photo_id": pid, "format": "json", "nojsoncallback": "1"}
    unsigned = requests.post(url, data=form, timeout=10, headers={
        "Authorization": f'OAuth oauth_consumer_key="{acct.state.api_key}", oauth_signature_method="HMAC-SHA1"'})
    assert unsigned.json() == {"stat": "fail", "code": 97, "message": "Missing signature"}
    write = requests.post(url, timeout=10, data={**form, "method": "flickr.photos.setDates",
                                                 "api_key": acct.state.api_key, "date_taken": "1900-01-01"})
    assert write.json()["code"] == 99
    assert acct.state.photos[pid].taken != "1900-01-01 00:00:00"


def test_transient_errors_are_retried_and_others_are_not(flickr_account):
    acct = flickr_account()
    pid = sorted(acct.state.photos)[0]
    client = acct.client(retries=3)
    f105 = acct.state.inject("flickr.photos.getInfo", code=105, times=2)
    assert client.date_taken(pid)["taken"] == acct.state.photos[pid].taken
    assert f105.fired == 2 and client.stats.retried == ["flickr_105", "flickr_105"]
    f502 = acct.state.inject("flickr.photos.getSizes", status=502, times=1)
    assert client.original_size(pid) is not None and f502.fired == 1
    f106 = acct.state.inject("flickr.photos.setDates", code=106, times=1)
    client.set_date_taken(pid, "1911-01-01 00:00:00", 6)
    assert f106.fired == 1
    acct.state.inject("flickr.photos.getInfo", code=1, times=1)
    calls = acct.state.calls_to("flickr.photos.getInfo")
    with pytest.raises(FlickrProblem) as err:
        client.date_taken(pid)
    assert err.value.reason == "flickr_1" and acct.state.calls_to("flickr.photos.getInfo") == calls + 1
    acct.state.inject("flickr.photos.getInfo", code=105)  # for ever
    with pytest.raises(FlickrProblem) as err:
        client.date_taken(pid)
    assert err.value.transient and err.value.attempts == 4


def test_a_stalled_upload_times_out_and_is_not_sent_again_once_it_landed(flickr_account, tmp_path):
    acct = flickr_account(stall_uploads_over=10, stall_seconds=1.5)
    pid = sorted(acct.state.photos)[0]
    master = photos.write_jpeg(tmp_path / "m.jpg", 3, size=(800, 600), taken=datetime(2013, 1, 1))
    client = acct.client(retries=0)
    t = time.monotonic()
    with pytest.raises(FlickrProblem) as err:
        client.replace(pid, master, timeout=0.3)
    assert err.value.reason == "timeout" and err.value.transient
    assert time.monotonic() - t < 1.4  # the client gave up; it did not hang
    # a retry asks first whether the upload landed; when it did, nothing is resent
    acct.state.stall_uploads_over = None
    patient = acct.client(retries=2)
    acct.state.inject("replace", status=503, times=1)
    calls = {"n": 0}

    def landed() -> bool:
        calls["n"] += 1
        return True

    got = patient.replace(pid, master, timeout=10, landed=landed)
    assert got["landed_earlier"] and calls["n"] == 1
    assert acct.state.photos[pid].replaced == 0


def test_classify_covers_network_errors():
    assert classify(requests.exceptions.ConnectTimeout("slow")).transient
    assert classify(requests.exceptions.ConnectionError("reset")).reason == "connection_error"
    assert not classify(RuntimeError("bug")).transient


def test_call_budget_is_shared_across_batches_through_its_file(tmp_path):
    """Two budgets on one file (two batches) draw from one allowance: 3,600/hour, burst 3."""
    now = [1000.0]
    waits: list[float] = []

    def sleep(s: float) -> None:
        waits.append(s)
        now[0] += s

    state = tmp_path / "calls.json"
    first = CallBudget(3600, burst=3, state=state, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        assert first.take() == 0.0
    second = CallBudget(3600, burst=3, state=state, clock=lambda: now[0], sleep=sleep)
    waited = second.take()  # the first batch spent the burst: about one call per second now
    each = 3600 / 3597  # the burst plus an hour's refill is the hour's allowance, never more
    assert waited == pytest.approx(each)
    for _ in range(5):
        second.take()
    assert now[0] - 1000.0 == pytest.approx(6 * each)  # 6 calls past the burst
    third = CallBudget(3600, burst=3, state=state, clock=lambda: now[0], sleep=sleep)
    now[0] += 3600  # an hour later the bucket is full again, but never above its burst
    for _ in range(3):
        assert third.take() == 0.0
    assert third.take() == pytest.approx(each)


def test_no_hour_sees_more_calls_than_the_budget():
    """Spend the burst, then keep calling for an hour: the hour's calls are the budget, exactly."""
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    budget = CallBudget(600, burst=60, clock=lambda: now[0], sleep=sleep)
    calls = []
    while now[0] <= 3600:
        budget.take()
        calls.append(now[0])
    import bisect

    busiest = max(bisect.bisect_right(calls, t + 3600) - i for i, t in enumerate(calls))  # [t, t + 1 h]
    assert 599 <= busiest <= 600  # the allowance is used, and no hour-long window sees more
    assert 7200 > calls[-1] > 3600
    small = CallBudget(10, burst=60, clock=lambda: now[0], sleep=sleep)
    assert small.burst == 5  # at most half the hour's allowance at once


def test_the_accounts_people_escape_from(escape_account):
    """flickrapi's etree ``walk`` reads the stand-in's XML; private photos only with the
    owner's token; a free account offers no original and nothing above 1024 pixels."""
    import flickrapi

    from sandbox.flickr import endpoints

    pro, free = escape_account("pro"), escape_account("free")
    token = flickrapi.auth.FlickrAccessToken(pro.state.token, pro.state.token_secret, "read")
    api = flickrapi.FlickrAPI(pro.state.api_key, pro.state.api_secret, token=token, format="etree",
                              store_token=False)
    api.REST_URL = endpoints(pro.server.url)["rest_url"]
    walked = [p.get("id") for p in api.walk(user_id="me", per_page=3)]
    assert sorted(walked) == sorted(pro.truth)
    video = sorted(pro.ids("video"))[0]
    labels = [s.get("label") for s in api.photos.getSizes(photo_id=video).iter("size")]
    assert "Video Original" in labels and "Site MP4" in labels
    anonymous = flickrapi.FlickrAPI(pro.state.api_key, pro.state.api_secret, format="parsed-json", store_token=False)
    anonymous.REST_URL = api.REST_URL
    public = anonymous.people.getPhotos(user_id=pro.state.nsid, per_page=100)["photos"]["photo"]
    assert sorted(p["id"] for p in public) == sorted(i for i, t in pro.truth.items() if t.visibility == "public")

    free_api = flickrapi.FlickrAPI(free.state.api_key, free.state.api_secret, format="parsed-json", store_token=False,
                                   token=flickrapi.auth.FlickrAccessToken(free.state.token, free.state.token_secret,
                                                                          "read"))
    free_api.REST_URL = endpoints(free.server.url)["rest_url"]
    photo = sorted(free.ids("photo"))[0]
    sizes = free_api.photos.getSizes(photo_id=photo)["sizes"]["size"]
    assert "Original" not in [s["label"] for s in sizes]
    assert max(max(int(s["width"]), int(s["height"])) for s in sizes) == 1024
    listed = free_api.people.getPhotos(user_id="me", extras="url_o,url_l,url_h,original_format",
                                       per_page=100)["photos"]["photo"]
    assert all("url_o" not in p and "url_h" not in p and "originalsecret" not in p for p in listed)
    assert all("url_l" in p for p in listed if p["id"] in free.ids("photo"))
    original = requests.get(f"{free.server.url}/65535/{photo}_{free.state.photos[photo].originalsecret}_o.jpg",
                            timeout=10)
    assert original.status_code == 404  # not offered, not even by guessing its URL
