"""Secrets never leave the process: not in the ledger, logs, reports, artifacts or exception messages.

Two real ``photo-escape run`` processes against the session's Prefect API:

1. a run that fails at login: the gallery password comes from the environment and is
   wrong (a distinctive string, which is as secret as a right one);
2. a run that succeeds: the gallery password comes from a Prefect Secret block, and the
   photos go to the sandbox upload API with a basic-auth password and an API key, both
   from the environment.

Then everything the runs left behind is searched for every one of those values:
the CLI's stdout and stderr, every table of the ledger (as text) and its raw bytes
(WAL included), every report file (parquet read back too), every file in the work
folder (the upload journal...), and, through the Prefect client, the flow runs
(parameters, state messages), their task runs, their logs and their artifacts.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from tests.fixtures.reliability import escape_job, json_lines, run_cli, wait_for, write_job

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.timeout(300)]

TAG = uuid.uuid4().hex[:6]
GALLERY_PASSWORD = f"Gallery-Pw-{TAG}-zebra7741"
WRONG_PASSWORD = f"Wrong-Pw-{TAG}-okapi3303"
UPLOAD_PASSWORD = f"Upload-Pw-{TAG}-heron5150"
API_KEY = f"ak_{TAG}_narwhal9092"
S3_SECRET_KEY = f"S3sk/{TAG}+walrus4471"
S3_SESSION_TOKEN = f"FwoGZXIvYXdz{TAG}ibis8808"
IMMICH_KEY = f"imk{TAG}Quokka2024xyz"
WRONG_IMMICH_KEY = f"imk{TAG}Tapir1180abc"
FLICKR_KEY = f"fk{TAG}kestrel6612"
FLICKR_SECRET = f"fs{TAG}marten2087"
FLICKR_TOKEN = f"72157{TAG}-ft-gannet4410"
FLICKR_TOKEN_SECRET = f"fts{TAG}lemur9136"
FLICKR_REVOKED_TOKEN = f"72157{TAG}-revoked-tapir5520"
SECRETS = (GALLERY_PASSWORD, WRONG_PASSWORD, UPLOAD_PASSWORD, API_KEY, S3_SECRET_KEY, S3_SESSION_TOKEN,
           IMMICH_KEY, WRONG_IMMICH_KEY, FLICKR_KEY, FLICKR_SECRET, FLICKR_TOKEN, FLICKR_TOKEN_SECRET,
           FLICKR_REVOKED_TOKEN)


def _files_text(root: Path) -> dict[str, bytes]:
    """Every file under ``root``: raw bytes, and parquet files also as their rows."""
    out = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        out[str(p)] = p.read_bytes()
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq

            out[f"{p} (rows)"] = repr(pq.read_table(p).to_pylist()).encode()
    return out


def _ledger_text(path: Path) -> dict[str, bytes]:
    """Every table and view of the ledger as text, plus the raw bytes of the file and its WAL."""
    import duckdb

    out = {}
    for f in (path, Path(f"{path}.wal")):
        if f.exists():
            out[f"raw {f.name}"] = f.read_bytes()
    con = duckdb.connect(str(path), read_only=True)
    try:
        names = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
        assert {"runs", "items", "events", "assets", "capture_times"} <= set(names)
        for name in names:
            out[f"ledger {name}"] = repr(con.execute(f'SELECT * FROM "{name}"').fetchall()).encode()
    finally:
        con.close()
    return out


def _prefect_text(flow_run_ids: list[str]) -> dict[str, bytes]:
    """What the Prefect API holds about these flow runs: the runs, task runs, logs, artifacts."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter,
                                                FlowRunFilterId, LogFilter, LogFilterFlowRunId)

    ids = [uuid.UUID(i) for i in flow_run_ids]
    out = {}
    with get_client(sync_client=True) as client:
        for fid in ids:
            fr = client.read_flow_run(fid)
            out[f"flow run {fid}"] = fr.model_dump_json().encode()
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)), limit=200)
        out["logs"] = "\n".join(log.message for log in logs).encode()
        trs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=200)
        out["task runs"] = "\n".join(t.model_dump_json() for t in trs).encode()
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids)),
                                     limit=200)
        out["artifacts"] = "\n".join(a.model_dump_json() for a in arts).encode()
    return out


def _left_behind(tmp_path: Path, summary: dict, runs: int | None = None) -> dict[str, bytes]:
    """What in-process runs of a job under ``tmp_path`` left: the ledger, reports, work folder,
    the Prefect API's record of its flow runs (``runs`` of them, when given) and the summary."""
    import duckdb

    texts = _ledger_text(tmp_path / "ledger.duckdb")
    texts.update(_files_text(tmp_path / "reports"))
    texts.update(_files_text(tmp_path / "work"))
    con = duckdb.connect(summary["ledger"], read_only=True)
    try:
        ids = [r[0] for r in con.execute("SELECT flow_run_id FROM runs").fetchall() if r[0]]
    finally:
        con.close()
    assert runs is None or len(ids) == runs, ids
    texts.update(_prefect_text(ids))
    texts["summary"] = json.dumps(summary).encode()
    return texts


def _leaks(texts: dict[str, bytes]) -> list[tuple[str, str]]:
    found = []
    for where, data in texts.items():
        for secret in SECRETS:
            for form in (secret.encode(), secret.encode("utf-16-le")):
                if form in data:
                    found.append((where, secret))
    return found


def test_no_secret_is_left_anywhere_after_a_failed_and_a_successful_run(tmp_path, small_gallery, cli_env):
    from prefect.blocks.system import Secret

    from sandbox.upload_api import UploadAPI

    g = small_gallery(6, password=GALLERY_PASSWORD)
    block = f"rel-gallery-password-{TAG}"
    Secret(value=GALLERY_PASSWORD).save(block, overwrite=True)
    # INFO logs (the CLI's default is WARNING), so the API holds more to search
    env = dict(cli_env, PREFECT_LOGGING_LEVEL="INFO", KODAK_PASSWORD=WRONG_PASSWORD,
               REL_UPLOAD_PASSWORD=UPLOAD_PASSWORD, REL_API_KEY=API_KEY)

    # 1. the wrong password, from the environment: the run fails at login
    failing = escape_job(tmp_path, g.job_source("KODAK_PASSWORD"), name="rel-secrets")
    bad = run_cli(["run", str(write_job(tmp_path / "bad.yaml", failing)), "--json"], env)
    assert bad.returncode != 0
    assert b"login" in bad.stderr.lower(), bad.stderr[-2000:]  # it says why
    assert g.failed_logins >= 1

    # 2. the right password from a Prefect Secret block; upload with a password and an API key
    with UploadAPI({"anne": UPLOAD_PASSWORD}) as api:
        source = g.job_source()
        source["login"]["secret_fields"] = {"password": {"block": block}}
        ok_job = escape_job(tmp_path, source, name="rel-secrets")
        ok_job["destination"] = {"kind": "http_upload", "url": api.upload_url, "username": "anne",
                                 "secret_fields": {"password": {"env": "REL_UPLOAD_PASSWORD"},
                                                   "api_key": {"env": "REL_API_KEY"}}}
        ok_job["default_tz"] = "Europe/Paris"
        good = run_cli(["run", str(write_job(tmp_path / "good.yaml", ok_job)), "--json"], env)
        assert good.returncode == 0, good.stderr[-3000:]
        summary = json_lines(good.stdout)[-1]
        assert summary["done"] == summary["listed"] == 6, summary
        assert api.store.stats()["stored"] == 6

    texts: dict[str, bytes] = {"bad stdout": bad.stdout, "bad stderr": bad.stderr,
                               "good stdout": good.stdout, "good stderr": good.stderr}
    ledger = tmp_path / "ledger.duckdb"
    texts.update(_ledger_text(ledger))
    texts.update(_files_text(tmp_path / "reports"))
    texts.update(_files_text(tmp_path / "work"))
    texts.update(_files_text(Path(os.environ["PREFECT_HOME"])))  # local Prefect state, if any
    import duckdb

    con = duckdb.connect(str(ledger), read_only=True)
    try:
        runs = con.execute("SELECT status, flow_run_id FROM runs ORDER BY started_at").fetchall()
    finally:
        con.close()
    assert [r[0] for r in runs] == ["crashed", "finished"], runs
    texts.update(_prefect_text([r[1] for r in runs if r[1]]))
    assert texts["logs"], "the flow runs sent no logs to the API: nothing was searched there"
    assert len(texts) > 10
    assert not _leaks(texts), _leaks(texts)
    # the searches do find the values where they must be: the test would see a leak
    assert _leaks({"probe": f"x{GALLERY_PASSWORD}x".encode()}) == [("probe", GALLERY_PASSWORD)]


def test_s3_keys_never_leave_the_process(tmp_path, small_gallery, s3_server, monkeypatch):
    """The S3 destination's secret access key and session token (JSON in an env var)."""
    from flows.escape import escape

    g = small_gallery(4, password=GALLERY_PASSWORD)
    monkeypatch.setenv("REL_S3_KEYS", json.dumps({"aws_access_key_id": f"AKIA{TAG.upper()}",
                                                  "aws_secret_access_key": S3_SECRET_KEY,
                                                  "aws_session_token": S3_SESSION_TOKEN}))
    job = escape_job(tmp_path, g.job_source(), name="rel-secrets-s3")
    job["destination"] = {"kind": "s3", "bucket": s3_server.make_bucket(f"rel-secrets-{TAG}"),
                          "endpoint_url": s3_server.url, "credentials": {"env": "REL_S3_KEYS"}}
    s = escape(job)
    assert s["done"] == s["listed"] == 4, s
    texts = _left_behind(tmp_path, s)
    assert not _leaks(texts), _leaks(texts)


def test_the_immich_api_key_never_leaves_the_process(tmp_path, small_gallery, monkeypatch):
    """Immich's API key (x-api-key): a run stopped by a refused key, then a run that uploads."""
    from flows.escape import escape
    from sandbox.immich import ImmichServer

    g = small_gallery(4, password=GALLERY_PASSWORD)
    with ImmichServer({IMMICH_KEY: {"email": "anne@example.org"}}) as immich:
        job = escape_job(tmp_path, g.job_source(), name="rel-secrets-immich")
        job["destination"] = {"kind": "immich", "url": immich.url, "api_key": {"env": "REL_IMMICH_KEY"},
                              "albums": "Gallery"}
        monkeypatch.setenv("REL_IMMICH_KEY", WRONG_IMMICH_KEY)
        refused = escape(job, return_state=True)
        assert refused.is_failed() and "refused the API key" in refused.message
        monkeypatch.setenv("REL_IMMICH_KEY", IMMICH_KEY)
        s = escape(job)
        assert s["done"] == s["listed"] == 4, s
        assert immich.store.stats()["assets"] == 4
    texts = _left_behind(tmp_path, s, runs=2)
    texts["refused state"] = (refused.message or "").encode()
    assert not _leaks(texts), _leaks(texts)


def test_flickr_credentials_never_leave_the_process(tmp_path, escape_account, monkeypatch):
    """``source.kind: flickr``: the API key and secret, the OAuth token and its secret (and a
    revoked token that stops a run), through a failed and a successful run."""
    import traceback

    import duckdb

    from flows.escape import escape

    acct = escape_account("pro")
    s = acct.state
    s.api_key, s.api_secret, s.token, s.token_secret = FLICKR_KEY, FLICKR_SECRET, FLICKR_TOKEN, FLICKR_TOKEN_SECRET
    for var, value in (("PE_TEST_FLICKR_KEY", FLICKR_KEY), ("PE_TEST_FLICKR_SECRET", FLICKR_SECRET),
                       ("PE_TEST_FLICKR_TOKEN", FLICKR_REVOKED_TOKEN),
                       ("PE_TEST_FLICKR_TOKEN_SECRET", FLICKR_TOKEN_SECRET)):
        monkeypatch.setenv(var, value)
    job = acct.job(tmp_path, name="rel-secrets-flickr")
    with pytest.raises(Exception) as info:  # a revoked token: the run stops, in one line
        escape(job)
    text = "".join(traceback.format_exception(info.value))
    assert "error 98" in str(info.value) and not _leaks({"exception": text.encode()}), text
    monkeypatch.setenv("PE_TEST_FLICKR_TOKEN", FLICKR_TOKEN)
    good = escape(job)
    assert good["done"] == good["listed"] == len(acct.truth), good
    texts = _ledger_text(tmp_path / "ledger.duckdb")
    texts.update(_files_text(tmp_path / "reports"))
    texts.update(_files_text(tmp_path / "work"))
    texts.update(_files_text(tmp_path / "archive"))
    con = duckdb.connect(good["ledger"], read_only=True)
    try:
        ids = [r[0] for r in con.execute("SELECT flow_run_id FROM runs").fetchall() if r[0]]
        assert [r[0] for r in con.execute("SELECT status FROM runs ORDER BY started_at").fetchall()] == \
            ["crashed", "finished"]
    finally:
        con.close()
    texts.update(_prefect_text(ids))
    texts["summary"] = json.dumps(good).encode()
    assert len(texts) > 10
    assert not _leaks(texts), _leaks(texts)
    # the stand-in did see them: they were sent (in the OAuth header), just never kept
    assert any(m == "flickr.people.getPhotos" for m, _, _ in s.calls)


def test_a_failed_login_exception_carries_no_secret(tmp_path, small_gallery, monkeypatch):
    """In process: the exception the flow raises, its chain and its traceback."""
    import traceback

    from flows.escape import escape

    g = small_gallery(3, password=GALLERY_PASSWORD)
    monkeypatch.setenv("KODAK_PASSWORD", WRONG_PASSWORD)
    with pytest.raises(Exception) as info:
        escape(escape_job(tmp_path, g.job_source(), name="rel-secrets-exc"))
    text = "".join(traceback.format_exception(info.value))
    assert "login" in text.lower()
    assert not _leaks({"exception": text.encode()}), text


def test_a_secret_in_an_exception_or_a_log_line_is_masked_where_it_leaves_the_process(tmp_path):
    """Defence in depth, for a library that puts a secret in its message: log lines of any
    logger (the API's too), tracebacks, and the escape flow's state message are redacted."""
    import logging
    import os

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from photo_escape.secrets import resolve, scrubbed_exceptions

    token = f"tok-{uuid.uuid4().hex[:10]}"
    os.environ["REL_LEAKY_TOKEN"] = token

    @flow(name="rel-leaky")
    def leaky() -> None:
        with scrubbed_exceptions():
            resolve({"env": "REL_LEAKY_TOKEN"})
            logging.getLogger("prefect.flow_runs.rel").warning("a careless library logs %s", token)
            try:
                raise KeyError(token)
            except KeyError:
                logging.getLogger("rel.leaky").exception("and its traceback")
            raise RuntimeError(f"GET https://api.example/v1?token={token} failed")

    state = leaky(return_state=True)
    assert state.is_failed() and token not in (state.message or "") and "***" in state.message
    with get_client(sync_client=True) as client:
        fr = client.read_flow_run(state.state_details.flow_run_id)

        def shipped() -> str:  # the API log handler ships in the background: wait for our lines
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[fr.id])))
            text = "\n".join(log.message for log in logs)
            return text if "a careless library logs" in text and "Traceback" in text else ""

        text = wait_for(shipped, timeout=30, interval=0.5)
    assert token not in fr.model_dump_json()
    assert "a careless library logs ***" in text, text
    assert token not in text, text
    with pytest.raises(RuntimeError) as info:
        with scrubbed_exceptions():
            raise RuntimeError(f"token={token}") from ValueError(token)
    assert token not in str(info.value) and token not in str(info.value.__cause__)
