"""Benchmark: listing and downloading a Flickr account, photo-escape's ``flickr`` source
against the plain flickrapi loop the common scripts use, in the same run.

    .venv/bin/python bench/flickr.py                  # quick check: 40 photos
    .venv/bin/python bench/flickr.py --photos 2000    # the recorded figure

Both sides talk to the sandbox's Flickr stand-in (:mod:`sandbox.flickr`) on 127.0.0.1,
which waits ``--latency-ms`` (50) before every answer, REST calls and image downloads
alike: a real service's round trip. Both use flickrapi unmodified and fetch every
photo's original; the downloads are checked to be the stand-in's originals, byte for byte.

* peer: ``for photo in flickr.walk(user_id="me", per_page=500)``, then one
  ``photos.getSizes`` per photo for the original's URL, then ``requests.get`` of it,
  one after the other (what the scripts found on the web do);
* photo-escape: ``FlickrSource.list_pages()`` (pages of 500 with ``extras``, the albums
  read once), then ``fetch`` in batches of 200, ``--concurrency`` downloads at a time,
  with Flickr's real call budget (3,600 calls an hour, bursts of 60).

Reported: API calls per photo (listing and metadata together) and photos per second.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH = 200


def make_account(work: Path, photos: int, latency: float):
    """A Pro account of ``photos`` small distinct JPEGs in three albums, served with latency."""
    from sandbox import photos as pics
    from sandbox.flickr import FlickrState, serve_flickr

    state = FlickrState(store=work / "store", username="bench")
    state.store.mkdir(parents=True)
    for i in range(photos):
        path = pics.write_jpeg(work / "files" / f"{i}.jpg", i, size=(320, 240))
        pid = str(52_000_000_001 + i)
        state.add_photo(pid, path, title=f"photo {i}", taken="2011-07-18 16:42:05", granularity=0)
        state.add_to_album(f"7215770000000000{i % 3}", pid, f"album {i % 3}")
    state.latency = latency
    return state, serve_flickr(state)


def rest_calls(state) -> int:
    with state.lock:
        return len(state.calls)


def peer(state, rest_url: str, out: Path) -> dict:
    """The plain loop: walk, one getSizes per photo, download."""
    import flickrapi
    import requests

    token = flickrapi.auth.FlickrAccessToken(state.token, state.token_secret, "read")
    api = flickrapi.FlickrAPI(state.api_key, state.api_secret, token=token, format="etree", store_token=False)
    api.REST_URL = rest_url
    out.mkdir(parents=True)
    before = rest_calls(state)
    start = time.perf_counter()
    shas = set()
    for photo in api.walk(user_id="me", per_page=500):
        sizes = api.photos.getSizes(photo_id=photo.get("id"))
        source = next(s.get("source") for s in sizes.iter("size") if s.get("label") == "Original")
        data = requests.get(source, timeout=60).content
        (out / f"{photo.get('id')}.jpg").write_bytes(data)
        shas.add(hashlib.sha256(data).hexdigest())
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "api_calls": rest_calls(state) - before, "shas": shas}


def ours(state, rest_url: str, work: Path, concurrency: int) -> dict:
    """photo-escape's source: the listing with extras, then batched concurrent downloads."""
    from tasks.sources.flickr import FlickrSource, FlickrSourceConfig

    os.environ.update(BENCH_FLICKR_KEY=state.api_key, BENCH_FLICKR_SECRET=state.api_secret,
                      BENCH_FLICKR_TOKEN=state.token, BENCH_FLICKR_TOKEN_SECRET=state.token_secret)
    cfg = FlickrSourceConfig.model_validate({
        "kind": "flickr", "api_key": {"env": "BENCH_FLICKR_KEY"}, "api_secret": {"env": "BENCH_FLICKR_SECRET"},
        "oauth_token": {"env": "BENCH_FLICKR_TOKEN"}, "oauth_token_secret": {"env": "BENCH_FLICKR_TOKEN_SECRET"},
        "rest_url": rest_url, "calls_per_hour": 3600, "burst": 60, "http": {"per_host": concurrency}})
    options = SimpleNamespace(concurrency=concurrency, retries=3, backoff_seconds=0.5, max_bytes=10**9)
    before = rest_calls(state)
    start = time.perf_counter()
    lister = FlickrSource(cfg, workdir=work / "run", options=options)
    items = [i for page in lister.list_pages() for i in page]
    listed = time.perf_counter() - start
    shas, failed = set(), 0
    for n in range(0, len(items), BATCH):
        fetcher = FlickrSource(cfg, workdir=work / "run", options=options)  # a batch task builds its own
        for o in fetcher.fetch(items[n:n + BATCH]):
            if o["outcome"] == "ok":
                shas.add(o["sha256"])
                os.unlink(o["item"]["local_path"])
            else:
                failed += 1
        fetcher.close()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "listing_seconds": listed, "api_calls": rest_calls(state) - before,
            "shas": shas, "failed": failed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=int, default=40, help="photos in the account (2000 for the recorded figure)")
    ap.add_argument("--latency-ms", type=float, default=50.0, help="before every answer of the stand-in")
    ap.add_argument("--concurrency", type=int, default=8, help="photo-escape's downloads at a time")
    args = ap.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    logging.getLogger("flickrapi").setLevel(logging.ERROR)

    from sandbox.flickr import endpoints

    work = Path(tempfile.mkdtemp(prefix="bench-flickr-"))
    state, server = make_account(work, args.photos, args.latency_ms / 1000)
    try:
        rest_url = endpoints(server.url)["rest_url"]
        truth = {hashlib.sha256(p.path.read_bytes()).hexdigest() for p in state.photos.values()}
        a = ours(state, rest_url, work / "ours", args.concurrency)
        b = peer(state, rest_url, work / "peer")
    finally:
        server.stop()
    assert a["shas"] == truth and not a["failed"], "photo-escape did not bring every original"
    assert b["shas"] == truth, "the peer did not bring every original"
    n = args.photos
    result = {
        "photos": n, "latency_ms": args.latency_ms, "concurrency": args.concurrency,
        "photo_escape": {"seconds": round(a["seconds"], 2), "listing_seconds": round(a["listing_seconds"], 2),
                         "api_calls": a["api_calls"], "calls_per_photo": round(a["api_calls"] / n, 4),
                         "photos_per_second": round(n / a["seconds"], 1)},
        "flickrapi_loop": {"seconds": round(b["seconds"], 2), "api_calls": b["api_calls"],
                           "calls_per_photo": round(b["api_calls"] / n, 4),
                           "photos_per_second": round(n / b["seconds"], 1),
                           "hours_of_budget_at_3600_an_hour": round(b["api_calls"] / 3600, 2)},
        "speedup": round(b["seconds"] / a["seconds"], 1),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
