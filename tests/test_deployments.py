"""The deployments for real: a `prefect server start` on 127.0.0.1 (SQLite), `prefect deploy
--all` from prefect.yaml and the automations of prefect-automations.yaml, a process
worker, runs triggered through the API as the UI does and retried as the UI's Retry
does: one failing part-way on a sandbox fault, one whose worker and flow-run processes
are killed mid-run (Prefect's heartbeat automation marks it Crashed). Each time the
ledger shows the work done once and reconciles."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import duckdb

from sandbox.numbered import NumberedHost
from tests.fixtures.prefect_server import ROOT, prefect_cli as _cli, start_worker, stop_worker, wait_for as _wait


def _api(env, ask) -> Any:
    """``await ask(client)`` with a Prefect client of the module's server, from sync code."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def run():
        async with get_client() as client:
            return await ask(client)

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        return asyncio.run(run())


def _flow_run_state(env, flow_run_id):
    async def ask(client):
        return (await client.read_flow_run(flow_run_id)).state

    return _api(env, ask)


def _harvest(tmp_path: Path, host: NumberedHost, name: str, **options) -> dict:
    """A job harvesting the host's 24 numbers into a folder, in batches of 8."""
    return {
        "name": name,
        "ledger": str(tmp_path / "ledger.duckdb"),
        "work_dir": str(tmp_path / "work"),
        "reports_dir": str(tmp_path / "reports"),
        "source": host.job_source(1, 24, stop_after_missing=None),
        "destination": {"kind": "local", "path": str(tmp_path / "found"), "layout": "{name}"},
        "options": {"batch_size": 8, **options},
    }


def _trigger(env, job: dict, job_variables: dict | None = None) -> Any:
    """Start a run of the find-my-photo deployment with this job, as the UI's Custom Run does."""
    async def ask(client):
        dep = await client.read_deployment_by_name("photo-escape-job/find-my-photo")
        fr = await client.create_flow_run_from_deployment(
            dep.id, parameters={"job": {"spec": job}, "dry_run": False, "only_failed": False},
            job_variables=job_variables)
        return fr.id

    return _api(env, ask)


def _retry(env, flow_run_id) -> None:
    """What the UI's Retry button does."""
    from prefect.states import AwaitingRetry

    async def ask(client):
        await client.set_flow_run_state(flow_run_id, AwaitingRetry(message="Retry from the UI"), force=True)

    _api(env, ask)


def test_deploy_trigger_fail_retry(tmp_path, deployed):
    env = deployed
    host = NumberedHost(count=24, missing={7, 19}, cache_dir=tmp_path / "host-cache").start()
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        # a sandbox fault: three pictures answer 503 however often they are asked
        host.faults.add("error", status=503, match=r"/(5|11|23)\.jpg$", times=None)
        job = _harvest(tmp_path, host, "deployed-harvest", retries=1, backoff_seconds=0.01)

        flow_run_id = _trigger(env, job)
        state = _wait(lambda: (s := _flow_run_state(env, flow_run_id)).is_final() and s, 240, "the first run")
        assert state.is_failed(), state
        con = duckdb.connect(job["ledger"], read_only=True)
        first = con.execute("SELECT listed, done, skipped, failed, pending FROM reconciliation_job").fetchall()
        reasons = con.execute("SELECT DISTINCT reason FROM item_status WHERE status = 'failed'").fetchall()
        con.close()
        assert first == [(24, 19, 2, 3, 0)] and reasons == [("http_503",)]

        host.faults.clear()  # the service recovers; the person presses Retry
        _retry(env, flow_run_id)
        state = _wait(lambda: (s := _flow_run_state(env, flow_run_id)).is_final() and s.name != "AwaitingRetry" and s,
                      240, "the retried run")
        assert state.is_completed(), state
    finally:
        stop_worker(worker)
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


def _processes_of(flow_run_id) -> list[int]:
    """The processes of one flow run (its engine and the engine's own worker processes):
    a process worker starts the engine with the flow run's id in its environment."""
    needle = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if needle in Path(f"/proc/{name}/environ").read_bytes().split(b"\0"):
                    pids.append(int(name))
            except OSError:  # gone meanwhile, or not ours to read
                pass
    return pids


def _subflow_states(env, flow_run_id) -> list:
    """The states of the flow runs started inside this one (the story's flow)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    async def ask(client):
        runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
        return [r.state for r in runs]

    return _api(env, ask)


def _slots_taken(env, deployment: str) -> int:
    """The active slots of a deployment's concurrency limit (a global limit named
    ``deployment:<id>``, as *Concurrency* in the UI lists it)."""
    async def ask(client):
        dep = await client.read_deployment_by_name(f"photo-escape-job/{deployment}")
        return (await client.read_global_concurrency_limit_by_name(f"deployment:{dep.id}")).active_slots

    return _api(env, ask)


def _heartbeat_recorded(env, flow_run_id) -> bool:
    import requests

    answer = requests.post(f"{env['PREFECT_API_URL']}/events/filter", timeout=10, json={
        "filter": {"event": {"name": ["prefect.flow-run.heartbeat"]},
                   "resource": {"id": [f"prefect.flow-run.{flow_run_id}"]}},
        "limit": 1})
    answer.raise_for_status()
    return bool(answer.json()["events"])


def test_a_killed_run_is_marked_crashed_and_its_retry_finishes_the_job(tmp_path, deployed):
    """The machine running a deployed run is lost: worker and flow-run processes die by
    SIGKILL, so nothing can report. The heartbeat automation marks the run Crashed; the
    UI's Retry runs it again, and the ledger shows every picture delivered once."""
    import yaml

    env = deployed
    # prefect-automations.yaml's automation, with 45 s of silence instead of 3 minutes
    # (and heartbeats every 30 s instead of 60), so this test waits less
    (spec,) = yaml.safe_load((ROOT / "prefect-automations.yaml").read_text())["automations"]
    quick = dict(spec, name="photo-escape-crashed-runs-quick", trigger=dict(spec["trigger"], within=45))
    out = _cli(env, "automation", "create", "--from-json", json.dumps(quick))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    host = NumberedHost(count=24, missing=set(), cache_dir=tmp_path / "host-cache").start()
    slow = host.faults.add("slow", delay=1.5, match=r"\.jpg$", times=None)  # a run of about 20 s
    job = _harvest(tmp_path, host, "deployed-lost-machine", concurrency=2)
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        flow_run_id = _trigger(env, job, {"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}})
        # under way: downloading, and its first heartbeat is on the server
        _wait(lambda: slow.hits >= 1 and _heartbeat_recorded(env, flow_run_id), 120, "the run's first heartbeat")
        assert _flow_run_state(env, flow_run_id).is_running()
        victims = _processes_of(flow_run_id)
        assert victims, "the flow run's process was not found"
        os.killpg(worker.pid, signal.SIGKILL)  # the worker first, so it cannot report the run's end
        worker.wait(timeout=30)
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _wait(lambda: not _processes_of(flow_run_id), 30, "the flow run's processes to die")
        assert _flow_run_state(env, flow_run_id).is_running()  # nobody left to say otherwise
        assert _slots_taken(env, "find-my-photo") == 1  # and it still holds the deployment's one slot

        state = _wait(lambda: (s := _flow_run_state(env, flow_run_id)).is_crashed() and s, 150,
                      "the automation to mark the run Crashed")
        assert "No heartbeat" in (state.message or ""), state
        # and so is the escape flow's own run inside it (it carries the deployment's tags)
        subflows = _wait(lambda: (s := _subflow_states(env, flow_run_id)) and all(x.is_crashed() for x in s) and s,
                         150, "the automation to mark the escape flow's run Crashed")
        assert all("No heartbeat" in (s.message or "") for s in subflows), subflows
        assert _slots_taken(env, "find-my-photo") == 0  # Crashed, it has left its slot

        host.faults.clear()
        worker = start_worker(env, tmp_path / "worker-2.log")  # another machine, same ledger folder
        _retry(env, flow_run_id)
        state = _wait(lambda: (s := _flow_run_state(env, flow_run_id)).is_final() and not s.is_crashed() and s,
                      240, "the retried run")
        assert state.is_completed(), state
    finally:
        stop_worker(worker)
        host.stop()
        _cli(env, "--no-prompt", "automation", "delete", quick["name"])

    con = duckdb.connect(job["ledger"], read_only=True)
    try:
        counts = con.execute("SELECT listed, done, skipped, failed, pending FROM reconciliation_job").fetchall()
        per_item = con.execute("SELECT item_id, count(*) FROM events WHERE stage = 'deliver' AND outcome = 'ok' "
                               "GROUP BY ALL").fetchall()
        runs = con.execute("SELECT count(*), count(*) FILTER (WHERE status = 'finished') FROM runs").fetchone()
    finally:
        con.close()
    assert counts == [(24, 24, 0, 0, 0)]
    assert len(per_item) == 24 and all(n == 1 for _, n in per_item)  # nothing delivered twice
    assert runs == (2, 1)  # the killed run never finished; its retry did
    assert len([p for p in (tmp_path / "found").iterdir() if p.is_file()]) == 24
