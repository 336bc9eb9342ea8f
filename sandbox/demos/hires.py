"""Demo, story 5: a library's Flickr Commons photos replaced by their hi-res masters.

Builds a library (catalogue website, master store with its ``find`` listing, and a
Flickr account of a few hundred copies, some tinted, darkened, cropped or flipped,
some linking to an album instead of the item, one to an album that lacks it, one
whose catalogue image is gone...), serves the catalogue and a Flickr stand-in on
127.0.0.1 with transient errors injected (105, 106, 502, 503), and runs the
``replace_hires`` flow. The 200 MB upload limit is simulated with a small one, so
the demo's few oversized masters are skipped as ``too_large_for_flickr``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import yaml

from sandbox.catalogue import CatalogueFaults, build_library, load_into_flickr, serve_catalogue
from sandbox.flickr import FlickrState, endpoints, serve_flickr

PHOTOS = 300

# the sandbox account's credentials, given to the flow the way real ones are: env vars
SANDBOX_SECRETS = {
    "FLICKR_API_KEY": "sandbox-key",
    "FLICKR_API_SECRET": "sandbox-secret",
    "FLICKR_OAUTH_TOKEN": "sandbox-token",
    "FLICKR_OAUTH_TOKEN_SECRET": "sandbox-token-secret",
}


def job(workdir: Path, flickr_url: str, listing: Path, upload_limit: int) -> dict:
    """The job as a user would write it (see jobs/hires.yaml), pointed at the sandbox."""
    return {
        "flow": "replace_hires",
        "name": "demo-hires",
        "ledger": str(workdir / "ledger.duckdb"),
        "work_dir": str(workdir / "work"),
        "reports_dir": str(workdir / "reports"),
        "flickr": {**endpoints(flickr_url), "calls_per_hour": 1_000_000, "burst": 1000, "per_page": 100,
                   "max_upload_bytes": upload_limit, "upload_base_seconds": 20},
        "masters": {"listing": str(listing), "index": str(workdir / "work" / "masters.duckdb")},
        "options": {"batch_size": 100, "concurrency": 8, "retries": 4, "backoff_seconds": 0.05},
    }


def inject_faults(state: FlickrState) -> None:
    """Flickr's bad moments: 105 and 106 errors, 502/503 pages, now and then."""
    state.inject("flickr.photos.getInfo", code=105, every=41)
    state.inject("flickr.photos.setDates", code=106, every=23)
    state.inject("flickr.photos.getSizes", status=503, every=53)
    state.inject("replace", status=502, every=31)
    state.inject("flickr.people.getPhotos", code=105, times=1)


def run(workdir: Path, as_json: bool, photos: int = PHOTOS) -> dict:
    from flows.replace_hires import replace_hires

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    logging.getLogger("flickrapi").setLevel(logging.CRITICAL)
    for k, v in SANDBOX_SECRETS.items():
        os.environ.setdefault(k, v)
    lib = build_library(workdir / "library", photos)
    state = FlickrState(**{"api_key": os.environ["FLICKR_API_KEY"], "api_secret": os.environ["FLICKR_API_SECRET"],
                           "token": os.environ["FLICKR_OAUTH_TOKEN"],
                           "token_secret": os.environ["FLICKR_OAUTH_TOKEN_SECRET"]},
                        store=workdir / "flickr-store")
    state.store.mkdir(parents=True, exist_ok=True)
    catalogue = serve_catalogue(lib, CatalogueFaults(every=97, status=503))
    flickr = serve_flickr(state)
    try:
        load_into_flickr(lib, state, catalogue.url)
        inject_faults(state)
        spec = job(workdir, flickr.url, lib.listing, lib.oversize_bytes)
        (workdir / "job.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        summary = replace_hires(spec)
    finally:
        flickr.stop()
        catalogue.stop()
    summary["flickr_errors_injected"] = sum(f.fired for f in state.faults)
    summary["wrong_matches"] = _wrong_matches(summary["ledger"], summary["run_id"], lib)
    summary["replaced_on_flickr"] = sum(1 for p in state.photos.values() if p.replaced)
    summary["replaced_twice"] = sum(1 for p in state.photos.values() if p.replaced > 1)
    return summary


def _wrong_matches(ledger_path: str, run_id: str, lib) -> int:
    """Chosen catalogue images that are not the Flickr photo's true picture (should be 0)."""
    from tasks.ledger import Ledger

    truth = {f"flickr:{c.photo_id}": c.digital_id for c in lib.flickr}
    with Ledger(ledger_path, read_only=True) as ledger:
        chosen = ledger.query("SELECT query, candidate FROM matches WHERE chosen AND run_id = ?", [run_id])
    return sum(1 for r in chosen if truth.get(r["query"]) != r["candidate"])
