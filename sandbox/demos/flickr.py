"""Demo: a Flickr account escaped to S3. A Pro account on the Flickr stand-in (photos
dated exactly, to the month, the year and "circa"; public and private; in several albums;
two videos) goes through Flickr's API to a bucket on moto's S3 server (a real HTTP
endpoint on 127.0.0.1), each original with its sidecar of what Flickr knew; then the
run is repeated (nothing is fetched again) and the summary printed: photos, originals,
size-limited copies, albums, dates by granularity.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sandbox.flickr import FlickrState, endpoints, serve_flickr
from sandbox.flickr_account import fill_account
from sandbox.s3 import MotoS3, sandbox_credentials_env

BUCKET = "flickr-escape"
SECRET_VARS = {"api_key": "FLICKR_DEMO_API_KEY", "api_secret": "FLICKR_DEMO_API_SECRET",
               "token": "FLICKR_DEMO_OAUTH_TOKEN", "token_secret": "FLICKR_DEMO_OAUTH_TOKEN_SECRET"}


def job(workdir: Path, rest_url: str, endpoint_url: str, credentials_env: str) -> dict:
    return {
        "name": "demo-flickr",
        "ledger": str(workdir / "ledger.duckdb"),
        "work_dir": str(workdir / "work"),
        "reports_dir": str(workdir / "reports"),
        "source": {
            "kind": "flickr",
            "api_key": {"env": SECRET_VARS["api_key"]}, "api_secret": {"env": SECRET_VARS["api_secret"]},
            "oauth_token": {"env": SECRET_VARS["token"]}, "oauth_token_secret": {"env": SECRET_VARS["token_secret"]},
            "rest_url": rest_url, "user_id": "me", "size": "original", "per_page": 10,
        },
        "destination": {
            "kind": "s3", "bucket": BUCKET, "endpoint_url": endpoint_url, "region": "us-east-1",
            "credentials": {"env": credentials_env}, "originals": "originals/{taken:%Y/%m/%d}/{name}",
            "sidecars": ["xmp", "json"],
        },
        "default_tz": "Europe/Paris",
        "options": {"batch_size": 10, "concurrency": 4, "processes": 1},
    }


def run(workdir: Path, as_json: bool) -> dict:
    from flows.escape import escape

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    logging.getLogger("flickrapi").setLevel(logging.CRITICAL)
    state = FlickrState(store=workdir / "flickr-store", username="family-archive")
    state.store.mkdir(parents=True, exist_ok=True)
    truth = fill_account(state, workdir / "flickr-files", copies=3)
    for field, var in SECRET_VARS.items():
        os.environ[var] = getattr(state, field)
    flickr = serve_flickr(state)
    try:
        with MotoS3() as s3:
            s3.make_bucket(BUCKET)
            spec = job(workdir, endpoints(flickr.url)["rest_url"], s3.url, sandbox_credentials_env())
            summary = escape(spec)
            keys = [o["Key"] for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
                    for o in page.get("Contents", [])]
            again = escape(spec)
    finally:
        flickr.stop()
    f = summary.get("flickr") or {}
    from tasks.ledger import Ledger

    with Ledger(summary["ledger"], read_only=True) as ledger:
        fetched = {r["reason"]: r["n"] for r in ledger.query(
            "SELECT reason, count(*) AS n FROM events WHERE run_id = ? AND stage = 'fetch' AND outcome = 'ok' "
            "GROUP BY reason", [summary["run_id"]])}
        refetched = ledger.query("SELECT count(*) AS n FROM events WHERE run_id = ? AND stage = 'fetch'",
                                 [again["run_id"]])[0]["n"]
    summary.update(
        bucket=BUCKET,
        originals=fetched.get("original", 0),
        size_limited=fetched.get("size_limited", 0),
        objects=len(keys),
        rerun={"run_id": again["run_id"], "fetched_again": refetched, "done": again["done"]},
        account={"photos": sum(t.media == "photo" for t in truth.values()),
                 "videos": sum(t.media == "video" for t in truth.values())},
    )
    if not as_json:
        print(f"Flickr account {state.username}: {f.get('photos')} photos and {f.get('videos')} videos "
              f"({f.get('private')} private), {f.get('albums')} albums, "
              f"listed with {f.get('listing_api_calls')} API calls")
        print(f"  originals: {summary['originals']}   size-limited: {summary['size_limited']}")
        print("  dates by granularity: " + ", ".join(f"{k} {v}" for k, v in (f.get("dates_by_granularity") or {}).items()))
        print(f"s3://{BUCKET}: {len(keys)} objects (originals, thumbnails and sidecars)")
        for k in keys[:6]:
            print(f"  {k}")
        print(f"rerun {again['run_id']}: {refetched} photos fetched again")
    return summary
