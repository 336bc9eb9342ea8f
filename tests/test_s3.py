"""The S3 destination and source against moto's S3 server (real HTTP on 127.0.0.1),
boto3 unmodified: keys, storage classes, metadata, sidecars, verification, skip and
conflict, multipart, a connection dropped mid-upload, listing and fetching."""

from __future__ import annotations

import hashlib
import io
import json
import os
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from sandbox import photos
from sandbox.s3 import FaultProxy, preview_of, write_raw
from tasks.destinations.s3 import _REFUSED, S3Destination, S3DestinationConfig, sampled
from tasks.files import sha256_file
from tasks.sources.s3 import S3Source, S3SourceConfig

FAST = SimpleNamespace(retries=2, backoff_seconds=0.01, concurrency=4, max_bytes=2_000_000_000)


def _item(path: Path, taken: str | None = "2006-10-04T09:30:00", **extra) -> dict:
    sha, n = sha256_file(str(path))
    capture = {"local": taken, "utc": None, "offset_minutes": None, "tz": None,
               "provenance": "exif" if taken else None, "conflicts": []}
    return {"item_id": f"local:{path.name}", "source_ref": str(path), "name": path.name, "local_path": str(path),
            "sha256": sha, "bytes": n, "capture": capture, "asset": {"width": 640, "height": 480, "format": "JPEG"},
            **extra}


def _dest(s3_server, bucket, creds, url=None, options=FAST, **cfg) -> S3Destination:
    config = S3DestinationConfig(kind="s3", bucket=bucket, endpoint_url=url or s3_server.url,
                                 credentials={"env": creds}, **cfg)
    return S3Destination(config, workdir=Path("."), options=options)


def _final(outcomes: list[dict]) -> dict[str, dict]:
    return {o["item_id"]: o for o in outcomes if o["stage"] == "deliver"}


def _keys(client, bucket) -> dict[str, dict]:
    resp = client.list_objects_v2(Bucket=bucket)
    return {o["Key"]: o for o in resp.get("Contents", [])}


@pytest.fixture
def camera(tmp_path):
    """Two dated JPEGs, an undated one and a NEF-style RAW."""
    a = photos.write_jpeg(tmp_path / "IMG_00001.JPG", 1, taken=datetime(2006, 10, 4, 9, 30))
    b = photos.write_jpeg(tmp_path / "IMG_00002.JPG", 2, taken=datetime(2006, 10, 5, 23, 59))
    c = photos.write_jpeg(tmp_path / "scan.jpg", 3)
    raw = write_raw(tmp_path / "IMG_00003.NEF", 4, taken=datetime(2006, 10, 4, 11, 0))
    return [_item(a), _item(b, "2006-10-05T23:59:00"), _item(c, None), _item(raw, "2006-10-04T11:00:00")]


def test_archive_layout_keys_classes_metadata_and_sidecar(s3_server, s3_bucket, s3_credentials, s3_client, camera):
    dest = _dest(s3_server, s3_bucket, s3_credentials, sidecar=True, storage_class="STANDARD_IA")
    out = dest.deliver(camera)
    final = _final(out)
    assert {o["outcome"] for o in final.values()} == {"ok"} and all(o["final"] for o in final.values())
    assert {o["reason"] for o in final.values()} == {"uploaded"}
    keys = _keys(s3_client, s3_bucket)
    assert set(keys) == {
        "originals/2006/10/04/IMG_00001.JPG", "originals/2006/10/04/IMG_00001.JPG.json",
        "thumbnails/2006/10/04/IMG_00001.JPG.jpg",
        "originals/2006/10/05/IMG_00002.JPG", "originals/2006/10/05/IMG_00002.JPG.json",
        "thumbnails/2006/10/05/IMG_00002.JPG.jpg",
        "originals/undated/scan.jpg", "originals/undated/scan.jpg.json", "thumbnails/undated/scan.jpg.jpg",
        "originals/2006/10/04/IMG_00003.NEF", "originals/2006/10/04/IMG_00003.NEF.json",
        "thumbnails/2006/10/04/IMG_00003.NEF.jpg",
    }
    for key, obj in keys.items():
        original = key.startswith("originals/") and not key.endswith(".json")
        assert obj["StorageClass"] == ("STANDARD_IA" if original else "STANDARD"), key
    # the sha256 and capture time ride in the object's metadata; the bytes are the file's
    head = s3_client.head_object(Bucket=s3_bucket, Key="originals/2006/10/04/IMG_00003.NEF")
    assert head["Metadata"]["sha256"] == camera[3]["sha256"]
    assert head["Metadata"]["taken"] == "2006-10-04T11:00:00"
    assert head["ContentType"] == "image/x-nikon-nef"
    body = s3_client.get_object(Bucket=s3_bucket, Key="originals/2006/10/04/IMG_00003.NEF")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == camera[3]["sha256"]
    side = json.loads(s3_client.get_object(Bucket=s3_bucket, Key="originals/undated/scan.jpg.json")["Body"].read())
    assert side["sha256"] == camera[2]["sha256"] and side["capture_time"]["local"] is None
    assert side["original"]["key"] == "originals/undated/scan.jpg"
    assert side["thumbnail"] == "thumbnails/undated/scan.jpg.jpg" and "local_path" not in side["source"]
    # one fixity event per original, before its deliver outcome: the PUT's answer (the ETag
    # moto computed of the bytes it kept) proved each one, no HEAD after
    fix = [o for o in out if o["stage"] == "fixity"]
    assert len(fix) == 4 and all(o["outcome"] == "ok" and o["detail"]["method"] == "put_md5" for o in fix)
    assert [o["stage"] for o in out if o["item_id"] == camera[0]["item_id"]] == ["fixity", "deliver"]


def test_raw_thumbnail_in_the_bucket_is_the_embedded_preview(s3_server, s3_bucket, s3_credentials, s3_client, camera):
    dest = _dest(s3_server, s3_bucket, s3_credentials, thumbnail_size=320)
    out = _final(dest.deliver([camera[3]]))
    assert out[camera[3]["item_id"]]["detail"]["thumbnail"]["method"] == "raw_preview"
    data = s3_client.get_object(Bucket=s3_bucket, Key="thumbnails/2006/10/04/IMG_00003.NEF.jpg")["Body"].read()
    assert data[:3] == b"\xff\xd8\xff"
    thumb = Image.open(io.BytesIO(data))
    assert thumb.format == "JPEG" and thumb.size == (320, 240)
    expected = Image.open(io.BytesIO(preview_of(4))).convert("L").resize((320, 240))
    diff = np.abs(np.asarray(thumb.convert("L"), float) - np.asarray(expected, float)).mean()
    assert diff < 6, diff  # the same picture, not the tiny IFD0 thumbnail or noise


@pytest.mark.parametrize("storage_class", ["STANDARD", "GLACIER_IR", "DEEP_ARCHIVE"])
def test_storage_class_of_originals_and_full_verification(s3_server, s3_bucket, s3_credentials, s3_client, camera,
                                                          storage_class):
    dest = _dest(s3_server, s3_bucket, s3_credentials, storage_class=storage_class, verify="full")
    out = dest.deliver(camera[:1])
    fixity = _final(out)[camera[0]["item_id"]]["detail"]["fixity"]
    head = s3_client.head_object(Bucket=s3_bucket, Key="originals/2006/10/04/IMG_00001.JPG")
    assert head.get("StorageClass", "STANDARD") == storage_class
    thumb = s3_client.head_object(Bucket=s3_bucket, Key="thumbnails/2006/10/04/IMG_00001.JPG.jpg")
    assert thumb.get("StorageClass", "STANDARD") == "STANDARD"
    if storage_class == "DEEP_ARCHIVE":  # cannot be read back without a restore: said so
        assert fixity["method"] == "head" and "archived" in fixity["note"]
    else:
        assert fixity["method"] == "full" and fixity["downloaded_sha256"] == camera[0]["sha256"]


def test_rerun_adds_nothing_and_sends_no_upload(s3_server, s3_bucket, s3_credentials, s3_client, camera):
    _dest(s3_server, s3_bucket, s3_credentials, sidecar=True).deliver(camera)
    before = {k: (o["ETag"], o["LastModified"]) for k, o in _keys(s3_client, s3_bucket).items()}
    with FaultProxy(s3_server.port) as proxy:
        again = _dest(s3_server, s3_bucket, s3_credentials, url=proxy.url, sidecar=True).deliver(camera)
        assert proxy.uploads() == [] and proxy.requests  # only HEADs went out
    assert {o["reason"] for o in _final(again).values()} == {"already_present"}
    assert all(o["final"] and o["outcome"] == "ok" for o in _final(again).values())
    after = {k: (o["ETag"], o["LastModified"]) for k, o in _keys(s3_client, s3_bucket).items()}
    assert after == before


def test_a_crash_after_the_original_is_completed_by_the_rerun(s3_server, s3_bucket, s3_credentials, s3_client,
                                                              camera):
    dest = _dest(s3_server, s3_bucket, s3_credentials, sidecar=True)
    dest.deliver(camera[:1])
    s3_client.delete_object(Bucket=s3_bucket, Key="thumbnails/2006/10/04/IMG_00001.JPG.jpg")
    s3_client.delete_object(Bucket=s3_bucket, Key="originals/2006/10/04/IMG_00001.JPG.json")
    o = _final(dest.deliver(camera[:1]))[camera[0]["item_id"]]
    assert o["reason"] == "already_present"
    assert o["detail"]["thumbnail"]["result"] == "uploaded" and o["detail"]["sidecar"]["result"] == "uploaded"
    assert len(_keys(s3_client, s3_bucket)) == 3


def test_different_content_under_the_key_is_never_overwritten(s3_server, s3_bucket, s3_credentials, s3_client,
                                                             camera):
    key = "originals/2006/10/04/IMG_00001.JPG"
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=b"someone else's picture", Metadata={"sha256": "0" * 64})
    o = _final(_dest(s3_server, s3_bucket, s3_credentials).deliver(camera[:1]))[camera[0]["item_id"]]
    assert (o["outcome"], o["reason"]) == ("failed", "key_conflict")
    assert o["detail"]["existing_sha256"] == "0" * 64
    assert s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == b"someone else's picture"
    assert set(_keys(s3_client, s3_bucket)) == {key}  # no thumbnail for a photo not stored
    # with on_conflict: suffix the photo gets its own key, stable across reruns
    dest = _dest(s3_server, s3_bucket, s3_credentials, on_conflict="suffix")
    o = _final(dest.deliver(camera[:1]))[camera[0]["item_id"]]
    sha8 = camera[0]["sha256"][:8]
    assert o["outcome"] == "ok" and o["detail"]["key"] == f"originals/2006/10/04/IMG_00001~{sha8}.JPG"
    assert f"thumbnails/2006/10/04/IMG_00001~{sha8}.JPG.jpg" in _keys(s3_client, s3_bucket)
    o = _final(dest.deliver(camera[:1]))[camera[0]["item_id"]]
    assert o["reason"] == "already_present" and len(_keys(s3_client, s3_bucket)) == 3
    assert s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == b"someone else's picture"


def test_full_verification_catches_a_rotten_copy(s3_server, s3_bucket, s3_credentials, s3_client, camera):
    """An object whose metadata claims our sha256 but whose bytes differ (bit rot, a
    bad copy): HEAD cannot see it, a full verification does, and nothing is overwritten."""
    item = camera[0]
    good = Path(item["local_path"]).read_bytes()
    rotten = bytearray(good)
    rotten[len(rotten) // 2] ^= 0xFF
    key = "originals/2006/10/04/IMG_00001.JPG"
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=bytes(rotten), Metadata={"sha256": item["sha256"]})
    head_only = _final(_dest(s3_server, s3_bucket, s3_credentials, thumbnails=None).deliver([item]))
    assert head_only[item["item_id"]]["reason"] == "already_present"
    out = _dest(s3_server, s3_bucket, s3_credentials, thumbnails=None, verify="full").deliver([item])
    fix = [o for o in out if o["stage"] == "fixity"]
    assert fix and fix[0]["outcome"] == "failed" and fix[0]["reason"] == "content_mismatch"
    assert _final(out)[item["item_id"]]["outcome"] == "failed"
    assert s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == bytes(rotten)


def test_verify_sample_is_stable_and_about_the_share():
    shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(2000)]
    picked = [s for s in shas if sampled(s, 0.1)]
    assert 140 < len(picked) < 260
    assert picked == [s for s in shas if sampled(s, 0.1)]
    assert not any(sampled(s, 0.0) for s in shas) and all(sampled(s, 1.0) for s in shas)


def test_dry_run_writes_nothing(s3_server, s3_bucket, s3_credentials, s3_client, camera):
    out = _final(_dest(s3_server, s3_bucket, s3_credentials).deliver(camera, dry_run=True))
    assert {(o["outcome"], o["reason"]) for o in out.values()} == {("skipped", "dry_run")}
    assert out[camera[2]["item_id"]]["detail"]["planned"]["original"] == "originals/undated/scan.jpg"
    assert _keys(s3_client, s3_bucket) == {}


def test_multipart_upload_of_a_large_original(s3_server, s3_bucket, s3_credentials, s3_client, tmp_path):
    big = tmp_path / "PANORAMA.TIF"
    big.write_bytes(os.urandom(20 * 1024 * 1024))
    item = _item(big)
    dest = _dest(s3_server, s3_bucket, s3_credentials, thumbnails=None, verify="full",
                 multipart_threshold_mb=5, multipart_chunk_mb=5)
    o = _final(dest.deliver([item]))[item["item_id"]]
    assert o["outcome"] == "ok" and o["detail"]["fixity"]["method"] == "full"
    assert o["detail"]["upload_requests"] == 4  # four 5 MB parts
    head = s3_client.head_object(Bucket=s3_bucket, Key="originals/2006/10/04/PANORAMA.TIF")
    assert head["ETag"].strip('"').endswith("-4") and head["ContentLength"] == 20 * 1024 * 1024
    assert head["Metadata"]["sha256"] == item["sha256"]
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads") is None


def test_connection_dropped_mid_upload_ends_in_a_retried_verified_upload(s3_server, s3_bucket, s3_credentials,
                                                                         s3_client, camera):
    with FaultProxy(s3_server.port) as proxy:
        dest = _dest(s3_server, s3_bucket, s3_credentials, url=proxy.url, thumbnails=None, verify="full")
        proxy.drop_uploads(1, min_body=10_000)
        out = dest.deliver(camera[:1])
    assert len(proxy.resets) == 1 and 0 < proxy.resets[0]["sent"] < proxy.resets[0]["length"]
    assert proxy.resets[0]["path"].endswith("/originals/2006/10/04/IMG_00001.JPG")
    o = _final(out)[camera[0]["item_id"]]
    assert o["outcome"] == "ok" and o["detail"]["upload_requests"] == 2  # the reset one, then the retry
    assert o["detail"]["fixity"]["method"] == "full" and o["detail"]["fixity"]["ok"]
    body = s3_client.get_object(Bucket=s3_bucket, Key="originals/2006/10/04/IMG_00001.JPG")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == camera[0]["sha256"]


def test_multipart_part_dropped_is_retried_and_nothing_partial_is_left(s3_server, s3_bucket, s3_credentials,
                                                                      s3_client, tmp_path):
    big = tmp_path / "BIG.NEF"
    big.write_bytes(os.urandom(12 * 1024 * 1024))
    item = _item(big)
    key = "originals/2006/10/04/BIG.NEF"
    # botocore retries nothing (max_attempts 1): every reset fails the transfer, which
    # s3transfer aborts; our own loop starts the upload again
    with FaultProxy(s3_server.port) as proxy:
        dest = _dest(s3_server, s3_bucket, s3_credentials, url=proxy.url, thumbnails=None, verify="full",
                     multipart_threshold_mb=5, multipart_chunk_mb=5, max_attempts=1,
                     options=SimpleNamespace(retries=1, backoff_seconds=0.01, concurrency=2))
        proxy.drop_uploads(1000, min_body=1_000_000)
        failed = _final(dest.deliver([item]))[item["item_id"]]
        assert failed["outcome"] == "failed" and failed["reason"] == "connection" and failed["attempt"] == 2
        assert key not in _keys(s3_client, s3_bucket)
        assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads") is None
        assert any(m == "DELETE" and "uploadId=" in p for m, p in proxy.requests)  # aborted, not abandoned
        resets = len(proxy.resets)
        proxy.drop_uploads(1, skip=1, min_body=1_000_000)  # now one part of the next try is reset
        dest = _dest(s3_server, s3_bucket, s3_credentials, url=proxy.url, thumbnails=None, verify="full",
                     multipart_threshold_mb=5, multipart_chunk_mb=5, max_attempts=1,
                     options=SimpleNamespace(retries=1, backoff_seconds=0.01, concurrency=2))
        ok = _final(dest.deliver([item]))[item["item_id"]]
    assert len(proxy.resets) == resets + 1
    assert ok["outcome"] == "ok" and ok["detail"]["fixity"]["method"] == "full"
    assert ok["detail"]["upload_requests"] >= 3 + 1  # three parts and the one that was reset
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads") is None
    assert s3_client.head_object(Bucket=s3_bucket, Key=key)["Metadata"]["sha256"] == item["sha256"]


def test_credentials_problems_are_clear_outcomes(s3_server, s3_bucket, camera, monkeypatch):
    monkeypatch.setenv("PE_TEST_BAD_KEYS", "not json at all")
    out = _final(_dest(s3_server, s3_bucket, "PE_TEST_NO_SUCH_VARIABLE").deliver(camera[:1]))
    assert out[camera[0]["item_id"]]["reason"] == "secret_missing"
    out = _final(_dest(s3_server, s3_bucket, "PE_TEST_BAD_KEYS").deliver(camera[:1]))
    o = out[camera[0]["item_id"]]
    assert o["reason"] == "bad_credentials" and "not json" not in json.dumps(o, default=str)


def test_missing_bucket_is_a_clear_failure(s3_server, s3_credentials, camera):
    o = _final(_dest(s3_server, "no-such-bucket-here", s3_credentials).deliver(camera[:1]))[camera[0]["item_id"]]
    assert o["outcome"] == "failed" and o["reason"] in ("no_such_bucket", "not_found")


# --- the source -------------------------------------------------------------------------------


def _source(s3_server, bucket, creds, workdir, **cfg) -> S3Source:
    config = S3SourceConfig(kind="s3", bucket=bucket, endpoint_url=s3_server.url, credentials={"env": creds}, **cfg)
    return S3Source(config, workdir=workdir, options=FAST)


def _fill(client, bucket, keys: dict[str, bytes]) -> None:
    for k, body in keys.items():
        client.put_object(Bucket=bucket, Key=k, Body=body)


def test_source_lists_in_pages_with_pattern_and_exclusions(s3_server, s3_bucket, s3_credentials, s3_client, tmp_path):
    _fill(s3_client, s3_bucket, {
        "inbox/a.jpg": b"a", "inbox/b.JPG": b"bb", "inbox/c.nef": b"ccc", "inbox/notes.txt": b"x",
        "inbox/sub/": b"", "inbox/sub/d.jpg": b"dddd", "inbox/tmp/e.jpg": b"e",
        "originals/2006/10/04/a.jpg": b"a", "thumbnails/2006/10/04/a.jpg.jpg": b"t", "other/f.jpg": b"f",
    })
    src = _source(s3_server, s3_bucket, s3_credentials, tmp_path, prefix="inbox/", pattern=["*.jpg", "*.nef"],
                  exclude=["inbox/tmp/"], page_size=2)
    pages = list(src.list_pages())
    assert len(pages) >= 3  # paginated: two keys per request
    items = [i for p in pages for i in p]
    assert [i["key"] for i in items] == ["inbox/a.jpg", "inbox/b.JPG", "inbox/c.nef", "inbox/sub/d.jpg"]
    d = items[-1]
    assert d["item_id"] == d["source_ref"] == f"s3://{s3_bucket}/inbox/sub/d.jpg"
    assert d["name"] == "d.jpg" and d["relpath"] == "sub/d.jpg" and d["size"] == 4
    assert d["fingerprint"] == f"{hashlib.md5(b'dddd').hexdigest()}:4"


def test_source_never_lists_the_destinations_own_output(s3_server, s3_bucket, s3_credentials, s3_client, tmp_path):
    _fill(s3_client, s3_bucket, {"a.jpg": b"a", "originals/2006/a.jpg": b"a", "thumbnails/2006/a.jpg.jpg": b"t"})
    dest = _dest(s3_server, s3_bucket, s3_credentials)
    src = _source(s3_server, s3_bucket, s3_credentials, tmp_path)
    src.protect(dest.protected_prefixes() + ["s3://some-other-bucket/a", str(tmp_path)])
    assert dest.protected_prefixes() == [f"s3://{s3_bucket}/originals/", f"s3://{s3_bucket}/thumbnails/"]
    assert [i["key"] for p in src.list_pages() for i in p] == ["a.jpg"]


def test_source_fetch_streams_hashes_and_reports_problems(s3_server, s3_bucket, s3_credentials, s3_client, tmp_path):
    body = os.urandom(300_000)
    _fill(s3_client, s3_bucket, {"p/one.jpg": body, "q/one.jpg": b"other", "gone.jpg": b"g"})
    s3_client.put_object(Bucket=s3_bucket, Key="cold.jpg", Body=b"c", StorageClass="DEEP_ARCHIVE")
    src = _source(s3_server, s3_bucket, s3_credentials, tmp_path)
    items = {i["key"]: i for p in src.list_pages() for i in p}
    s3_client.delete_object(Bucket=s3_bucket, Key="gone.jpg")
    out = {o["item_id"]: o for o in src.fetch(list(items.values()))}
    one = out[f"s3://{s3_bucket}/p/one.jpg"]
    assert one["outcome"] == "ok" and one["sha256"] == hashlib.sha256(body).hexdigest()
    assert Path(one["item"]["local_path"]).read_bytes() == body
    other = out[f"s3://{s3_bucket}/q/one.jpg"]["item"]["local_path"]
    assert other != one["item"]["local_path"] and Path(other).read_bytes() == b"other"  # same name, own folder
    assert out[f"s3://{s3_bucket}/gone.jpg"]["reason"] == "not_found"
    assert out[f"s3://{s3_bucket}/cold.jpg"]["reason"] == "archived_not_readable"
    assert not list(tmp_path.rglob("*.part"))  # no temporary file left behind


def test_create_bucket_when_asked(s3_server, s3_credentials, s3_client, camera):
    import uuid

    bucket = f"made-{uuid.uuid4().hex[:10]}"
    o = _final(_dest(s3_server, bucket, s3_credentials, create_bucket=True).deliver(camera[:1]))[camera[0]["item_id"]]
    assert o["outcome"] == "ok" and "originals/2006/10/04/IMG_00001.JPG" in _keys(s3_client, bucket)


def test_keys_from_a_prefect_secret_block_sign_the_requests(prefect_harness, s3_server, s3_bucket, s3_client,
                                                            camera):
    """``credentials: {block: NAME}``: the JSON keys in a Prefect Secret block are the
    ones boto3 signs with (the proxy reads the access key id from each signature)."""
    from prefect.blocks.system import Secret

    keys = {"aws_access_key_id": "BLOCKKEYID0001", "aws_secret_access_key": "block-secret-value-123"}
    Secret(value=json.dumps(keys)).save("pe-test-s3-keys", overwrite=True)
    with FaultProxy(s3_server.port) as proxy:
        config = S3DestinationConfig(kind="s3", bucket=s3_bucket, endpoint_url=proxy.url,
                                     credentials={"block": "pe-test-s3-keys"})
        out = S3Destination(config, workdir=Path("."), options=FAST).deliver(camera[:1])
    assert _final(out)[camera[0]["item_id"]]["outcome"] == "ok", out
    assert proxy.access_keys == {"BLOCKKEYID0001"}
    assert "block-secret-value-123" not in json.dumps(out, default=str)
    assert "block-secret-value-123" not in json.dumps(config.model_dump(mode="json"))


def test_download_cut_mid_body_is_retried_and_complete(s3_server, s3_bucket, s3_credentials, s3_client, tmp_path):
    body = os.urandom(400_000)
    s3_client.put_object(Bucket=s3_bucket, Key="dcim/IMG_0001.JPG", Body=body)
    with FaultProxy(s3_server.port) as proxy:
        config = S3SourceConfig(kind="s3", bucket=s3_bucket, endpoint_url=proxy.url, credentials={"env": s3_credentials})
        src = S3Source(config, workdir=tmp_path, options=FAST)
        items = [i for p in src.list_pages() for i in p]
        proxy.cut_downloads(1, after_bytes=100_000)
        (o,) = src.fetch(items)
    assert len(proxy.resets) == 1 and proxy.resets[0]["path"].endswith("/dcim/IMG_0001.JPG")
    assert o["outcome"] == "ok" and o["attempt"] == 2 and o["bytes"] == len(body)
    assert o["sha256"] == hashlib.sha256(body).hexdigest()
    assert Path(o["item"]["local_path"]).read_bytes() == body
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["IMG_0001.JPG"]  # no partial file left


def test_hostile_keys_become_safe_names(s3_server, s3_bucket, s3_credentials, s3_client, tmp_path):
    _fill(s3_client, s3_bucket, {"in/../../etc/passwd.jpg": b"x", "in/a\x01b<c>.jpg": b"y", "in/ .jpg": b"z"})
    src = _source(s3_server, s3_bucket, s3_credentials, tmp_path)
    names = sorted(i["name"] for p in src.list_pages() for i in p)
    assert names == ["a_b_c_.jpg", "jpg", "passwd.jpg"]
    (o,) = [o for o in src.fetch([i for p in src.list_pages() for i in p]) if o["item"]["name"] == "passwd.jpg"]
    assert Path(o["item"]["local_path"]).resolve().is_relative_to(tmp_path.resolve())


def test_an_earlier_sync_of_the_same_bytes_counts_as_present(s3_server, s3_bucket, s3_credentials, s3_client,
                                                             camera, tmp_path):
    """Objects another tool put there (no sha256 metadata) holding the same bytes are
    ``already_present``: by their MD5 ETag, or read back and hashed when the ETag is a
    multipart one; other bytes of the same size are a conflict."""
    s3_client.upload_file(camera[0]["local_path"], s3_bucket, "originals/2006/10/04/IMG_00001.JPG")
    big = tmp_path / "IMG_00009.JPG"
    big.write_bytes(os.urandom(11 * 1024 * 1024))
    from boto3.s3.transfer import TransferConfig

    s3_client.upload_file(str(big), s3_bucket, "originals/2006/10/04/IMG_00009.JPG",
                          Config=TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024))
    same_size = bytearray(Path(camera[1]["local_path"]).read_bytes())
    same_size[-10] ^= 0x55
    s3_client.put_object(Bucket=s3_bucket, Key="originals/2006/10/05/IMG_00002.JPG", Body=bytes(same_size))
    out = _final(_dest(s3_server, s3_bucket, s3_credentials, thumbnails=None).deliver([camera[0], _item(big), camera[1]]))
    assert out[camera[0]["item_id"]]["reason"] == "already_present"
    assert out[camera[0]["item_id"]]["detail"]["fixity"]["method"] == "etag_md5"
    assert out["local:IMG_00009.JPG"]["reason"] == "already_present"
    assert out["local:IMG_00009.JPG"]["detail"]["fixity"]["method"] == "download"
    assert out[camera[1]["item_id"]]["reason"] == "key_conflict"


def test_bytes_damaged_on_the_way_are_caught_by_full_verification_and_sent_again(
        s3_server, s3_bucket, s3_credentials, s3_client, camera):
    """A byte flipped in transit keeps the size and our sha256 metadata: HEAD would pass.
    With verify: full the read-back hash differs, the bad copy is deleted and sent again."""
    with FaultProxy(s3_server.port) as proxy:
        dest = _dest(s3_server, s3_bucket, s3_credentials, url=proxy.url, thumbnails=None, verify="full")
        proxy.corrupt_uploads(1)
        out = dest.deliver(camera[:1])
    assert len(proxy.corrupted) == 1
    o = _final(out)[camera[0]["item_id"]]
    assert o["outcome"] == "ok" and o["attempt"] == 2 and o["detail"]["fixity"]["method"] == "full"
    body = s3_client.get_object(Bucket=s3_bucket, Key="originals/2006/10/04/IMG_00001.JPG")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == camera[0]["sha256"]


# --- requests per photo: conditional writes, the PUT's answer as proof, one listing -----------


def _per_object(requests: list[tuple[str, str]], bucket: str) -> dict[str, list[str]]:
    """The requests the proxy saw, by object key (listing requests under '')."""
    out: dict[str, list[str]] = {}
    for method, path in requests:
        key = path.split("?", 1)[0].removeprefix(f"/{bucket}").lstrip("/") if "?list-type" not in path else ""
        out.setdefault(key, []).append(method)
    return out


@pytest.mark.parametrize("thumbnails", [False, True])
def test_a_new_photo_costs_at_most_two_requests(s3_server, s3_bucket, s3_credentials, s3_client, camera, tmp_path,
                                                thumbnails):
    """A new original is looked at once (HEAD) and stored once (a conditional PUT whose
    answer proves the bytes): no HEAD after. Its thumbnail, whose original was not there
    either, goes up with a conditional PUT at once. With a listing taken once, no HEAD."""
    cfg = {} if thumbnails else {"thumbnails": None}
    with FaultProxy(s3_server.port) as proxy:
        out = _dest(s3_server, s3_bucket, s3_credentials, url=proxy.url, **cfg).deliver(camera[:2])
        seen = _per_object(proxy.requests, s3_bucket)
    assert {o["reason"] for o in _final(out).values()} == {"uploaded"}
    for item in camera[:2]:
        original = _final(out)[item["item_id"]]["detail"]["key"]
        assert seen[original] == ["HEAD", "PUT"]
        if thumbnails:
            assert seen["thumbnails/" + original.removeprefix("originals/") + ".jpg"] == ["PUT"]
    assert len(proxy.requests) == (3 if thumbnails else 2) * 2
    # with a listing of the bucket (one request per prefix) the photos go up without a look
    with FaultProxy(s3_server.port) as proxy:
        dest = _dest(s3_server, s3_bucket, s3_credentials, url=proxy.url, **cfg)
        dest.use_listing(dest.listing())
        listed = len(proxy.requests)
        out = dest.deliver(camera[2:])
        seen = _per_object(proxy.requests[listed:], s3_bucket)
    assert listed == (2 if thumbnails else 1) and {o["reason"] for o in _final(out).values()} == {"uploaded"}
    assert all(methods == ["PUT"] for methods in seen.values()) and len(seen) == (4 if thumbnails else 2)
    for key in seen:
        assert key in _keys(s3_client, s3_bucket)
    fix = [o for o in out if o["stage"] == "fixity"]
    assert {o["detail"]["method"] for o in fix} == {"put_md5"}


def test_a_listing_in_the_work_folder_spares_the_heads_of_a_rerun(s3_server, s3_bucket, s3_credentials, s3_client,
                                                                  camera, tmp_path):
    """take_listing() leaves the bucket's listing in the run's work folder; a destination
    made later with that folder (a batch's task) decides by it: what is there with our
    bytes is already_present without a request, what is missing goes up at once."""
    first = S3Destination(S3DestinationConfig(kind="s3", bucket=s3_bucket, endpoint_url=s3_server.url,
                                              credentials={"env": s3_credentials}, thumbnails=None),
                          workdir=tmp_path, options=FAST)
    first.deliver(camera[:2])
    assert first.take_listing().name == "s3-destination-listing.json"
    with FaultProxy(s3_server.port) as proxy:
        config = S3DestinationConfig(kind="s3", bucket=s3_bucket, endpoint_url=proxy.url,
                                     credentials={"env": s3_credentials}, thumbnails=None)
        out = S3Destination(config, workdir=tmp_path, options=FAST).deliver(camera)
    final = _final(out)
    assert [final[i["item_id"]]["reason"] for i in camera] == ["already_present"] * 2 + ["uploaded"] * 2
    assert [m for m, _ in proxy.requests] == ["PUT", "PUT"]
    fix = {o["item_id"]: o["detail"] for o in out if o["stage"] == "fixity"}
    assert fix[camera[0]["item_id"]]["method"] == "etag_md5" and fix[camera[2]["item_id"]]["method"] == "put_md5"


def test_a_listing_taken_early_is_the_runs_survey_once(s3_server, s3_bucket, s3_credentials, s3_client, camera,
                                                       tmp_path):
    """``photo-escape run`` lets the destination list the bucket while the temporary Prefect
    server starts (survey_early); the run's survey then takes that listing instead of
    listing again, once: a later survey lists the bucket anew. Credentials in a Prefect
    Secret block (which needs the API) are not read early."""
    def dest(url: str, workdir: Path, **kw) -> S3Destination:
        config = S3DestinationConfig(kind="s3", bucket=s3_bucket, endpoint_url=url, thumbnails=None,
                                     **({"credentials": {"env": s3_credentials}} | kw))
        return S3Destination(config, workdir=workdir, options=FAST)

    dest(s3_server.url, tmp_path / "a").deliver(camera[:2])
    with FaultProxy(s3_server.port) as proxy:
        dest(proxy.url, tmp_path / "early").survey_early()
        early = len(proxy.requests)
        s3_client.put_object(Bucket=s3_bucket, Key="originals/late.jpg", Body=b"stored after the early look")
        run = dest(proxy.url, tmp_path / "run")
        run.survey()
        after_survey = len(proxy.requests)
        listing = json.loads((tmp_path / "run" / "s3-destination-listing.json").read_text())
        dest(proxy.url, tmp_path / "later").survey()
    assert early == 1 and after_survey == 1  # the run's survey made no request of its own
    assert sorted(listing["objects"]) == sorted(set(_keys(s3_client, s3_bucket)) - {"originals/late.jpg"})
    assert len(proxy.requests) == 2  # taken once: the next survey lists again
    later = json.loads((tmp_path / "later" / "s3-destination-listing.json").read_text())
    assert "originals/late.jpg" in later["objects"]

    with FaultProxy(s3_server.port) as proxy:
        dest(proxy.url, tmp_path / "block", credentials={"block": "no-such-block"}).survey_early()
    assert proxy.requests == []


def test_what_arrived_after_the_listing_is_never_overwritten(s3_server, s3_bucket, s3_credentials, s3_client, camera):
    """The listing is old news: another writer stored something under two of the keys
    since. The conditional PUT (If-None-Match: *, which moto honours) is refused, and
    the photo is decided again by HEAD: its own bytes are already_present, someone
    else's are a key_conflict, left as they are."""
    dest = _dest(s3_server, s3_bucket, s3_credentials, thumbnails=None)
    dest.use_listing(dest.listing())  # an empty bucket
    ours, theirs = "originals/2006/10/04/IMG_00001.JPG", "originals/2006/10/05/IMG_00002.JPG"
    s3_client.upload_file(camera[0]["local_path"], s3_bucket, ours, ExtraArgs={"Metadata": {"sha256": camera[0]["sha256"]}})
    s3_client.put_object(Bucket=s3_bucket, Key=theirs, Body=b"another writer's picture")
    out = _final(dest.deliver(camera[:2]))
    assert out[camera[0]["item_id"]]["reason"] == "already_present"
    assert (out[camera[1]["item_id"]]["outcome"], out[camera[1]["item_id"]]["reason"]) == ("failed", "key_conflict")
    assert s3_client.get_object(Bucket=s3_bucket, Key=theirs)["Body"].read() == b"another writer's picture"


def test_bytes_damaged_on_the_way_are_caught_by_the_puts_etag(s3_server, s3_bucket, s3_credentials, s3_client, camera):
    """moto checks neither Content-MD5 nor x-amz-checksum-sha256, but its ETag is the MD5
    of what it kept: a byte flipped in transit shows there, with no read-back (verify: head)."""
    with FaultProxy(s3_server.port) as proxy:
        dest = _dest(s3_server, s3_bucket, s3_credentials, url=proxy.url, thumbnails=None)
        proxy.corrupt_uploads(1)
        out = dest.deliver(camera[:1])
        assert [m for m, _ in proxy.requests] == ["HEAD", "PUT", "DELETE", "PUT"]  # no GET, no HEAD after
    assert len(proxy.corrupted) == 1
    o = _final(out)[camera[0]["item_id"]]
    assert o["outcome"] == "ok" and o["attempt"] == 2 and o["detail"]["fixity"]["method"] == "put_md5"
    body = s3_client.get_object(Bucket=s3_bucket, Key="originals/2006/10/04/IMG_00001.JPG")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == camera[0]["sha256"]


@pytest.mark.parametrize("header", ["If-None-Match", "x-amz-checksum-sha256"])
def test_a_store_refusing_a_header_gets_requests_without_it(s3_server, s3_bucket, s3_credentials, s3_client, camera,
                                                            header):
    """A store that predates conditional writes or checksums answers 501 NotImplemented:
    the header is dropped for that store (once), the photos still arrive, and without
    the condition every write is looked at first, so nothing is ever overwritten."""
    key = "originals/2006/10/05/IMG_00002.JPG"
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=b"another writer's picture")
    with FaultProxy(s3_server.port) as proxy:
        proxy.refuse_header(header)
        one_at_a_time = SimpleNamespace(retries=2, backoff_seconds=0.01, concurrency=1)
        dest = _dest(s3_server, s3_bucket, s3_credentials, url=proxy.url, options=one_at_a_time)
        dest.use_listing({})  # a stale listing: the bucket looked empty
        out = _final(dest.deliver(camera[:3]))
        refused = proxy.refused()
        again = _final(_dest(s3_server, s3_bucket, s3_credentials, url=proxy.url).deliver(camera[3:]))
        assert len(proxy.refused()) == len(refused) == 1  # refused once, then never sent again
    _REFUSED.pop(proxy.url)  # the process remembers it by URL: a later proxy on this port is another store
    assert {i: (o["outcome"], o["reason"]) for i, o in out.items()} == {
        camera[0]["item_id"]: ("ok", "uploaded"), camera[1]["item_id"]: ("failed", "key_conflict"),
        camera[2]["item_id"]: ("ok", "uploaded")}
    assert again[camera[3]["item_id"]]["reason"] == "uploaded"
    assert s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == b"another writer's picture"
    for item in (camera[0], camera[2], camera[3]):
        body = s3_client.get_object(Bucket=s3_bucket, Key=out.get(item["item_id"], again.get(item["item_id"]))["detail"]["key"])["Body"].read()
        assert hashlib.sha256(body).hexdigest() == item["sha256"]
