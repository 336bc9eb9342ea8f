"""The deployments for real: a `prefect server start` on 127.0.0.1 (SQLite), `prefect deploy
--all` from prefect.yaml, a process worker, a run triggered through the API as the UI
does, failing part-way on a sandbox fault, retried as the UI's Retry does, and a
ledger that shows the work done once and reconciles."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from sandbox.numbered import NumberedHost

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def prefect_server(tmp_path):
    """A real Prefect server on 127.0.0.1 with its own SQLite database."""
    import requests

    port = _free_port()
    home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home}/prefect.db",
        PREFECT_LOGGING_LEVEL="WARNING",
        PREFECT_WORKER_QUERY_SECONDS="1",
        PHOTO_ESCAPE_DIR=str(ROOT),
        PHOTO_ESCAPE_HOME=str(tmp_path / "pe-home"),
    )
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def healthy():
        try:
            return requests.get(f"http://127.0.0.1:{port}/api/health", timeout=2).ok
        except requests.RequestException:
            return server.poll() is not None and pytest.fail((tmp_path / "server.log").read_text()[-3000:])

    try:
        _wait(healthy, 120, "the Prefect server")
        yield env
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _flow_run_state(env, flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def read():
        async with get_client() as client:
            return (await client.read_flow_run(flow_run_id)).state

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        return asyncio.run(read())


def test_deploy_trigger_fail_retry(tmp_path, prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import AwaitingRetry

    env = prefect_server
    run = lambda *cmd: subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)  # noqa: E731
    out = run(str(BIN / "prefect"), "work-pool", "create", "photo-escape", "--type", "process")
    assert out.returncode == 0, out.stdout + out.stderr
    out = run(str(BIN / "prefect"), "--no-prompt", "deploy", "--all")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    host = NumberedHost(count=24, missing={7, 19}, cache_dir=tmp_path / "host-cache").start()
    worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "photo-escape"], env=env, cwd=ROOT,
                              stdout=open(tmp_path / "worker.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # a sandbox fault: three pictures answer 503 however often they are asked
        host.faults.add("error", status=503, match=r"/(5|11|23)\.jpg$", times=None)
        job = {
            "name": "deployed-harvest",
            "ledger": str(tmp_path / "ledger.duckdb"),
            "work_dir": str(tmp_path / "work"),
            "reports_dir": str(tmp_path / "reports"),
            "source": host.job_source(1, 24, stop_after_missing=None),
            "destination": {"kind": "local", "path": str(tmp_path / "found"), "layout": "{name}"},
            "options": {"batch_size": 8, "retries": 1, "backoff_seconds": 0.01},
        }

        async def trigger():
            async with get_client() as client:
                dep = await client.read_deployment_by_name("photo-escape-job/find-my-photo")
                fr = await client.create_flow_run_from_deployment(
                    dep.id, parameters={"job": {"spec": job}, "dry_run": False, "only_failed": False})
                return fr.id

        async def retry(flow_run_id):
            async with get_client() as client:  # what the UI's Retry button does
                await client.set_flow_run_state(flow_run_id, AwaitingRetry(message="Retry from the UI"), force=True)

        with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
            flow_run_id = asyncio.run(trigger())
        state = _wait(lambda: (s := _flow_run_state(env, flow_run_id)).is_final() and s, 240, "the first run")
        assert state.is_failed(), state
        con = duckdb.connect(job["ledger"], read_only=True)
        first = con.execute("SELECT listed, done, skipped, failed, pending FROM reconciliation_job").fetchall()
        reasons = con.execute("SELECT DISTINCT reason FROM item_status WHERE status = 'failed'").fetchall()
        con.close()
        assert first == [(24, 19, 2, 3, 0)] and reasons == [("http_503",)]

        host.faults.clear()  # the service recovers; the person presses Retry
        with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
            asyncio.run(retry(flow_run_id))
        state = _wait(lambda: (s := _flow_run_state(env, flow_run_id)).is_final() and s.name != "AwaitingRetry" and s,
                      240, "the retried run")
        assert state.is_completed(), state
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(timeout=30)
        host.stop()

    con = duckdb.connect(job["ledger"], read_only=True)
    try:
        assert con.execute("SELECT listed, done, skipped, failed, pending FROM reconciliation_job").fetchall() == [(24, 22, 2, 0, 0)]
        # the work was done once: one successful delivery per picture, over both runs
        per_item = con.execute("SELECT item_id, count(*) FROM events WHERE stage = 'deliver' AND outcome = 'ok' GROUP BY ALL").fetchall()
        runs = con.execute("SELECT count(*), count(*) FILTER (WHERE status = 'finished') FROM runs").fetchone()
        last = con.execute("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()[0]
        second = con.execute(f"SELECT listed, done, skipped, failed, pending FROM reconciliation_run WHERE run_id = '{last}'").fetchall()
    finally:
        con.close()
    assert len(per_item) == 22 and all(n == 1 for _, n in per_item)
    assert runs == (2, 2) and second == [(24, 22, 2, 0, 0)]
    assert len([p for p in (tmp_path / "found").iterdir() if p.is_file()]) == 22
    assert list((tmp_path / "reports" / "deployed-harvest").glob("*/report.html"))
