"""Fixity through the flows (issue 23): a rerun sees the destination, ``photo-escape verify``
counts what is wrong, ``--repair`` mends it, in a folder and in S3 (moto's server).

5 delivered photos deleted, one byte flipped in 3 others, 1 truncated: the rerun delivers
exactly the 5 again (reason ``missing_at_destination``) and reports the 4 changed without
touching them; ``verify`` then finds 4 changed and 0 missing; ``verify --repair`` keeps
the changed copies and restores the originals; a second ``verify`` is all ok."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from tests.test_fixity import CHANGED, _delivered, _escaped, _tamper

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "photo_escape.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _story(tmp_path: Path, spec, destination, read, write, delete, files) -> None:
    """Tamper, rerun, verify, repair, verify: the issue's test, whole commands where it matters."""
    from flows.escape import escape
    from flows.verify import verify

    rows = _delivered(spec, destination)
    done = _tamper(rows, read, write, delete)
    changed = done["flipped"] | done["truncated"]
    by_id = {r["item_id"]: r for r in rows}
    tampered = {i: read(by_id[i]["target"]) for i in changed}

    rerun = escape(spec.dump())
    assert (rerun["missing_at_destination"], rerun["changed_at_destination"]) == (5, 4)
    assert rerun["listed"] == 12 and rerun["done"] == 8 and rerun["failed"] == 4
    for i in done["missing"]:  # delivered again, exactly where they were
        assert hashlib.sha256(read(by_id[i]["target"])).hexdigest() == by_id[i]["sha256"]
    for i in changed:  # reported, never overwritten
        assert read(by_id[i]["target"]) == tampered[i]
    assert len(files()) == 12 and not any("~" in f for f in files())
    con = duckdb.connect(rerun["ledger"], read_only=True)
    events = con.execute("SELECT item_id, stage, reason FROM events WHERE run_id = ? AND stage IN ('fixity', 'deliver')",
                         [rerun["run_id"]]).fetchall()
    con.close()
    assert {i for i, st, r in events if st == "fixity" and r == "missing_at_destination"} == done["missing"]
    assert {i for i, st, r in events if st == "fixity" and r == "changed"} == changed
    assert {i for i, st, r in events if st == "deliver"} == done["missing"]  # nothing else redone

    job = tmp_path / "job.json"  # a YAML file is also JSON
    job.write_text(json.dumps(spec.dump()))
    checked = _cli("verify", str(job), "--json", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr[-3000:]
    last = json.loads(checked.stdout.strip().splitlines()[-1])
    assert {k: last[k] for k in ("checked", "ok", "missing", "changed")} == {
        "checked": 12, "ok": 8, "missing": 0, "changed": 4}

    again = escape(spec.dump())  # a rerun after the verify still leaves the changed ones alone
    assert again["changed_at_destination"] == 4 and again["missing_at_destination"] == 0
    assert len(files()) == 12

    mended = verify(spec.dump(), repair=True)
    assert (mended["changed"], mended["repaired"], mended["left_alone"]) == (4, 4, 0)
    for i in changed:
        assert hashlib.sha256(read(by_id[i]["target"])).hexdigest() == by_id[i]["sha256"]
    kept = [f for f in files() if CHANGED.split("-")[0] in f]
    assert len(kept) == 4 and sorted(read_kept for read_kept in map(lambda f: hashlib.sha256(
        read(f)).hexdigest(), kept)) == sorted(hashlib.sha256(b).hexdigest() for b in tampered.values())
    final = verify(spec.dump())
    assert (final["checked"], final["ok"], final["missing"], final["changed"]) == (12, 12, 0, 0)
    assert escape(spec.dump())["done"] == 12  # and the job is whole again


def test_folder_destination_rerun_verify_repair(tmp_path):
    spec, destination, _ = _escaped(tmp_path, "fixity-flow-folder")
    root = Path(spec.destination.path)
    _story(tmp_path, spec, destination,
           read=lambda t: (root / t).read_bytes(), write=lambda t, b: (root / t).write_bytes(b),
           delete=lambda t: (root / t).unlink(),
           files=lambda: sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()))


def test_s3_destination_rerun_verify_repair(tmp_path, s3_server, s3_bucket, s3_credentials, s3_client):
    from tasks.s3util import s3_uri, split_uri

    spec, destination, _ = _escaped(tmp_path, "fixity-flow-s3", {
        "kind": "s3", "bucket": s3_bucket, "endpoint_url": s3_server.url, "credentials": {"env": s3_credentials}})

    def key(target: str) -> str:
        return split_uri(target, s3_bucket)

    def originals() -> list[str]:
        return sorted(s3_uri(s3_bucket, o["Key"]) for page in s3_client.get_paginator("list_objects_v2").paginate(
            Bucket=s3_bucket, Prefix="originals/") for o in page.get("Contents", []))

    _story(tmp_path, spec, destination,
           read=lambda t: s3_client.get_object(Bucket=s3_bucket, Key=key(t))["Body"].read(),
           write=lambda t, b: s3_client.put_object(Bucket=s3_bucket, Key=key(t), Body=b),
           delete=lambda t: s3_client.delete_object(Bucket=s3_bucket, Key=key(t)), files=originals)


def test_a_destination_that_cannot_be_listed_stops_the_rerun_with_one_line(tmp_path, s3_server, s3_bucket,
                                                                           s3_credentials, s3_client):
    spec, destination, _ = _escaped(tmp_path, "fixity-unlistable", count=3)
    root = Path(spec.destination.path)
    moved = root.with_name("archive-elsewhere")
    root.rename(moved)
    root.write_bytes(b"a file where the archive folder was")
    job = tmp_path / "job.json"
    job.write_text(json.dumps(spec.dump()))
    run = _cli("run", str(job), cwd=tmp_path)
    assert run.returncode == 1 and "is not a folder" in run.stderr and "Traceback" not in run.stderr
    assert not list(moved.parent.glob("archive*/**/*~*"))  # nothing delivered anywhere

    s3 = {"kind": "s3", "bucket": s3_bucket + "-gone", "endpoint_url": s3_server.url,
          "credentials": {"env": s3_credentials}}
    s3_client.create_bucket(Bucket=s3_bucket + "-gone")
    spec, _, _ = _escaped(tmp_path / "s3", "fixity-unlistable-s3", s3, count=3)
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket + "-gone"):
        for o in page.get("Contents", []):
            s3_client.delete_object(Bucket=s3_bucket + "-gone", Key=o["Key"])
    s3_client.delete_bucket(Bucket=s3_bucket + "-gone")
    job.write_text(json.dumps(spec.dump()))
    run = _cli("run", str(job), cwd=tmp_path)
    assert run.returncode == 1 and "cannot list" in run.stderr and "Traceback" not in run.stderr
