"""Demo: a camera roll into Immich (the sandbox's Immich stand-in on 127.0.0.1), times right.

The same trip as the upload demo (a phone that writes its offset, airplane-mode shots, GPS
times, an old camera whose zone a folder rule gives, a scan, broken files) goes into an
Immich server that already holds two of the photos (uploaded earlier from the phone app):

1. a dry run: only Immich's read-only checks are sent; the plan says what would be
   uploaded, what Immich has already, which albums would be created;
2. the run: Immich's bulk check first, then one upload per missing photo with its
   restored capture time **and offset** as ``fileCreatedAt``, then the album, filled in
   one request per batch;
3. a rerun, which uploads nothing.

HOOK (for the lead): when the Takeout export generator of issue 16 is in this build, the
collection here should be its demo export (``source.kind: takeout``, ``albums: from_source``,
``sidecars: xmp``) so the albums and sidecars come from the export itself.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from sandbox.demos.upload import deliveries, make_camera_roll
from sandbox.immich import ImmichServer

KEY_ENV = "PHOTO_ESCAPE_DEMO_IMMICH_KEY"
ALBUM = "Kathmandu 2016 (photo-escape)"


def job(workdir: Path, immich_url: str) -> dict:
    return {
        "name": "demo-immich",
        "ledger": str(workdir / "ledger.duckdb"),
        "work_dir": str(workdir / "work"),
        "reports_dir": str(workdir / "reports"),
        "source": {"kind": "local", "path": str(workdir / "camera-roll"), "pattern": ["*.jpg", "*.jpeg"]},
        "destination": {"kind": "immich", "url": immich_url, "api_key": {"env": KEY_ENV},
                        "albums": ALBUM, "sidecars": "xmp"},
        "time_zones": [{"folder": "2013-12 christmas", "tz": "America/Chicago"}],
        "default_tz": "Asia/Kathmandu",
        "options": {"batch_size": 50, "concurrency": 4, "processes": 1},
    }


def counts(rows: list[tuple[str, str, dict]]) -> dict:
    """uploaded, already present, albums created (by this run), as the ledger recorded them."""
    rows = [{"reason": r, "detail": d} for _, r, d in rows]
    reasons = Counter(r["reason"] for r in rows)
    plans = Counter(r["detail"].get("plan") for r in rows if r["reason"] == "dry_run")
    created = {m["name"] for r in rows for m in r["detail"].get("albums") or [] if m.get("created")}
    to_create = {n for r in rows for n in r["detail"].get("albums_to_create") or []}
    return {"uploaded": reasons["uploaded"], "already_present": reasons["already_present"],
            "albums_created": sorted(created), "would_upload": plans["upload"],
            "would_find_present": plans["already_present"], "albums_to_create": sorted(to_create)}


def run(workdir: Path, as_json: bool) -> dict:
    from flows.escape import escape

    roll = workdir / "camera-roll"
    make_camera_roll(roll)
    with ImmichServer() as immich:
        os.environ[KEY_ENV] = immich.key  # the stand-in's key, for this process only
        # two photos the phone app had uploaded already
        client = immich.app.test_client()
        for name in ("IMG_100.JPG", "IMG_101.JPG"):
            with open(roll / "2016-04 trip" / name, "rb") as fh:
                client.post("/api/assets", headers={"x-api-key": immich.key},
                            data={"assetData": (fh, name), "fileCreatedAt": "2016-04-01T03:45:00Z",
                                  "fileModifiedAt": "2016-04-01T03:45:00Z", "deviceAssetId": name,
                                  "deviceId": "phone"})
        spec = job(workdir, immich.url)
        before = immich.store.stats()
        dry = escape(spec, dry_run=True)
        after_dry = immich.store.stats()
        summary = escape(spec)
        after_run = immich.store.stats()
        again = escape(spec)
        after_rerun = immich.store.stats()
        assets = immich.assets()
        albums = immich.albums()
    planned, done = counts(deliveries(dry["ledger"], dry["run_id"])), counts(deliveries(summary["ledger"],
                                                                                         summary["run_id"]))
    if not as_json:
        print(f"dry run {dry['run_id']}: would upload {planned['would_upload']}, already in Immich "
              f"{planned['would_find_present']}, albums to create {planned['albums_to_create']} "
              f"(uploads sent: {after_dry['uploads_received'] - before['uploads_received']})")
        print(f"run {summary['run_id']}: uploaded {done['uploaded']}, already present {done['already_present']}, "
              f"albums created {done['albums_created']}")
        print(f"rerun {again['run_id']}: uploads sent {after_rerun['uploads_received'] - after_run['uploads_received']}")
        print("in Immich, fileCreatedAt as sent (the restored time with its offset):")
        for a in sorted(assets, key=lambda a: a["originalFileName"])[:8]:
            print(f"  {a['originalFileName']:22} {a['fileCreatedAtSent'] or '-':28} -> {a['fileCreatedAt']}")
    summary.update(
        immich={"uploaded": done["uploaded"], "already_present": done["already_present"],
                "albums_created": done["albums_created"], "assets": len(assets),
                "album_members": {k: len(v) for k, v in albums.items()}},
        dry_run_plan={"run_id": dry["run_id"], "would_upload": planned["would_upload"],
                      "already_present": planned["would_find_present"],
                      "albums_to_create": planned["albums_to_create"],
                      "uploads_sent": after_dry["uploads_received"] - before["uploads_received"]},
        rerun={"run_id": again["run_id"], "done": again["done"], "failed": again["failed"],
               "uploads_sent": after_rerun["uploads_received"] - after_run["uploads_received"]},
    )
    return summary
