"""Benchmark: archiving photos to S3, photo-escape's destination against boto3 used
the way a sync tool uses it (same concurrency), in the same run.

    .venv/bin/python bench/s3_deliver.py               # quick check: 40 photos
    .venv/bin/python bench/s3_deliver.py --photos 200  # the recorded figure

The S3 endpoint is moto's server in its own process (``moto_server`` on 127.0.0.1),
so the benchmark's threads do not share a GIL with it, behind the sandbox's TCP proxy
adding ``--latency-ms`` before each request (a round trip to a real region; 0 for
bare localhost). Both sides upload the same JPEGs to their own bucket:

* peer: a sync: one listing of the bucket, then ``put_object`` with Content-MD5 of each
  file not there with the same size, ``--concurrency`` at a time (the threads photo-escape
  uses), no thumbnails; on the rerun the listing shows everything there and nothing is sent;
* photo-escape: ``S3Destination.deliver`` on the batch (a bounded thread pool) after one
  listing of the bucket (``use_listing``, as a run does): each new photo stored by a
  conditional PUT with its sha256 in the metadata, the PUT's answer checked (MD5 ETag)
  and recorded; once without thumbnails (the same work as the peer plus the integrity
  record) and once with thumbnails (the full story);
* and the rerun: both again on the same bucket (photo-escape: everything ``already_present``).

Both sides make their client inside the timer; the requests each sent (counted at the
proxy) are printed per photo.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    """moto_server in a child process on a free port; returns (process, url)."""
    port = _free_port()
    exe = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("moto_server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=int, default=40, help="photos per side (200 for the recorded figure)")
    ap.add_argument("--concurrency", type=int, default=8, help="photo-escape's threads per batch")
    ap.add_argument("--latency-ms", type=float, default=30.0, help="added per request (0: bare localhost)")
    args = ap.parse_args()

    import boto3
    from botocore.config import Config

    from sandbox import photos
    from sandbox.s3 import SANDBOX_KEYS, FaultProxy, sandbox_credentials_env
    from tasks.destinations.s3 import S3Destination, S3DestinationConfig
    from tasks.files import sha256_file

    work = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    files = sorted(photos.make_collection(work / "camera", count=args.photos, bad=False).values())
    items = []
    for p in files:
        sha, n = sha256_file(str(p))
        items.append({"item_id": f"local:{p.name}", "source_ref": str(p), "name": p.name, "local_path": str(p),
                      "sha256": sha, "bytes": n, "capture": {"local": "2006-10-04T09:30:00"}})
    total_mb = sum(i["bytes"] for i in items) / 1e6
    proc, moto_url = start_moto()
    proxy = FaultProxy(int(moto_url.rsplit(":", 1)[1]), latency=args.latency_ms / 1000).start()
    url = proxy.url
    try:
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                              config=Config(s3={"addressing_style": "path"}), **SANDBOX_KEYS)
        for b in ("peer", "ours-plain", "ours-thumbs"):
            client.create_bucket(Bucket=f"bench-{b}")
        creds = sandbox_credentials_env()
        opts = SimpleNamespace(concurrency=args.concurrency, retries=3, backoff_seconds=0.2)

        def ours(bucket: str, **cfg) -> float:
            before = len(proxy.requests)
            t = time.perf_counter()
            dest = S3Destination(S3DestinationConfig(kind="s3", bucket=bucket, endpoint_url=url,
                                                     credentials={"env": creds}, **cfg),
                                 workdir=work, options=opts)
            dest.use_listing(dest.listing())
            out = dest.deliver(items)
            dt = time.perf_counter() - t
            bad = [o for o in out if o["outcome"] != "ok"]
            assert not bad, bad[:3]
            sent[bucket] = len(proxy.requests) - before
            return dt

        def peer() -> float:
            before = len(proxy.requests)
            t = time.perf_counter()
            s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                              config=Config(s3={"addressing_style": "path"}, max_pool_connections=args.concurrency),
                              **SANDBOX_KEYS)
            there = {o["Key"]: o["Size"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="bench-peer")
                     for o in page.get("Contents", [])}

            def put(p: Path) -> None:
                key = f"originals/2006/10/04/{p.name}"
                if there.get(key) == p.stat().st_size:
                    return
                data = p.read_bytes()
                s3.put_object(Bucket="bench-peer", Key=key, Body=data,
                              ContentMD5=base64.b64encode(hashlib.md5(data).digest()).decode())

            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(put, files))
            dt = time.perf_counter() - t
            sent["bench-peer"] = len(proxy.requests) - before
            return dt

        sent: dict[str, int] = {}
        results = {
            "photos": len(items), "megabytes": round(total_mb, 1), "concurrency": args.concurrency,
            "latency_ms": args.latency_ms,
            "peer_sync_s": peer(),
            "peer_requests_per_photo": sent["bench-peer"] / len(items),
            "ours_no_thumbnails_s": ours("bench-ours-plain", thumbnails=None),
            "ours_no_thumbnails_requests_per_photo": sent["bench-ours-plain"] / len(items),
            "ours_with_thumbnails_s": ours("bench-ours-thumbs"),
            "ours_with_thumbnails_requests_per_photo": sent["bench-ours-thumbs"] / len(items),
            "peer_rerun_s": peer(),
            "peer_rerun_requests_per_photo": sent["bench-peer"] / len(items),
            "ours_rerun_s": ours("bench-ours-plain", thumbnails=None),
            "ours_rerun_requests_per_photo": sent["bench-ours-plain"] / len(items),
        }
    finally:
        proxy.stop()
        proc.terminate()
        proc.wait(timeout=10)
    r = results
    r = {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
    # photo-escape's time / the peer's: above 1, photo-escape is slower
    r["ratio_ours_no_thumbnails_over_peer"] = round(r["ours_no_thumbnails_s"] / r["peer_sync_s"], 2)
    r["ratio_ours_with_thumbnails_over_peer"] = round(r["ours_with_thumbnails_s"] / r["peer_sync_s"], 2)
    r["ratio_ours_rerun_over_peer_rerun"] = round(r["ours_rerun_s"] / r["peer_rerun_s"], 2)
    print(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
