"""The warm runner of ``photo-escape server start``: ``photo-escape run`` handed to a
process that has imported everything already (:mod:`photo_escape.runner`).

One real ``photo-escape server start`` for the module (its own PREFECT_HOME and
PHOTO_ESCAPE_HOME, no session harness), real commands in subprocesses, real signals.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from sandbox import photos
from sandbox.numbered import NumberedHost
from tests.fixtures.fresh import cli as _cli
from tests.fixtures.fresh import last_json as _last_json
from tests.fixtures.jobs import local_job
from tests.fixtures.procs import children, state
from tests.fixtures.upload import UPLOAD_PASSWORD

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not Path("/proc").is_dir() or sys.platform != "linux", reason="Linux only")


def _until(what, timeout: float = 120.0, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while not (found := what()):
        assert time.monotonic() < deadline, f"waited {timeout} s"
        time.sleep(step)
    return found


class Warm:
    def __init__(self, home: Path, env: dict) -> None:
        self.home, self.env = home, env

    @property
    def log(self) -> str:
        return (self.home / "pe-home" / "runner.log").read_text(encoding="utf-8")

    def runner_pid(self) -> int | None:
        try:
            return int(json.loads((self.home / "pe-home" / "runner.json").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None

    def ready(self) -> bool:
        status = _cli(["server", "status", "--json"], self.env)
        return status.returncode == 0 and _last_json(status.stdout).get("runner") is True

    def served(self) -> list[str]:
        """The runner's log lines of the runs it forked ("run PID: run JOB")."""
        return [line for line in self.log.splitlines() if ": run " in line and "ended" not in line]


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    home = tmp_path_factory.mktemp("warm")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_") and k != "UPLOAD_PASSWORD"}
    env.update(PREFECT_HOME=str(home / "prefect-home"), PHOTO_ESCAPE_HOME=str(home / "pe-home"),
               PYTHONPATH=str(ROOT), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    started = _cli(["server", "start", "--port", "0", "--json"], env)
    assert started.returncode == 0, started.stderr[-3000:]
    w = Warm(home, env)
    try:
        _until(w.ready, step=0.5)
        yield w
    finally:
        pid = w.runner_pid()
        stopped = _cli(["server", "stop", "--json"], env)
        assert stopped.returncode == 0
    assert pid is not None
    _until(lambda: not Path(f"/proc/{pid}").exists(), timeout=20)  # the runner went with the server


def test_a_run_is_served_with_the_commands_folder_environment_and_streams(warm, tmp_path, upload_api):
    """The command's working folder (a relative job path), its environment (the upload
    password is only in the command's, not the runner's) and its stdout/stderr (the
    summary arrives on the command's own pipe) all reach the run the runner forks."""
    photos.make_collection(tmp_path / "camera", count=3, bad=False, size=(96, 72))
    job = local_job(tmp_path, "warm-upload", {"batch_size": 2, "processes": 1, "backoff_seconds": 0.01},
                    destination={"kind": "http_upload", "url": upload_api.upload_url, "username": "anne",
                                 "secret_fields": {"password": {"env": "UPLOAD_PASSWORD"}}}, default_tz="UTC")
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    before = len(warm.served())
    run = _cli(["run", "job.yaml", "--json"], dict(warm.env, UPLOAD_PASSWORD=UPLOAD_PASSWORD), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = _last_json(run.stdout)
    assert summary["done"] == 3 and summary["failed"] == 0
    assert len(warm.served()) == before + 1  # the runner ran it
    assert "job.yaml" in warm.served()[-1]
    assert UPLOAD_PASSWORD not in warm.log  # the environment it was handed is not logged
    # the run's last events reached Prefect (they are sent while the run ends): no task run left running
    api = _last_json(_cli(["server", "status", "--json"], warm.env).stdout)["api_url"]
    flow_run = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"{api}/flow_runs/filter", data=json.dumps({"sort": "START_TIME_DESC", "limit": 1}).encode(),
        method="POST", headers={"Content-Type": "application/json"}), timeout=30).read())[0]
    assert flow_run["state_type"] == "COMPLETED"

    def task_states() -> list[str]:
        body = {"flow_runs": {"id": {"any_": [flow_run["id"]]}}}
        with urllib.request.urlopen(urllib.request.Request(
                f"{api}/task_runs/filter", data=json.dumps(body).encode(), method="POST",
                headers={"Content-Type": "application/json"}), timeout=30) as r:
            return [t["state_type"] for t in json.loads(r.read())]

    states = _until(lambda: (found := task_states()) and all(t == "COMPLETED" for t in found) and found,
                    timeout=30, step=0.5)
    assert len(states) >= 2  # fetch, examine-and-deliver
    pid = warm.runner_pid()
    _until(lambda: not [c for c in children(pid) if state(c) == "Z"], timeout=20)  # the run was reaped

    bad = tmp_path / "bad.yaml"  # a bad job spec: the same message and status as in the command's own process
    bad.write_text("name: x\nsource: {kind: nowhere}\n")
    out = _cli(["run", str(bad)], warm.env)
    assert out.returncode == 2 and "nowhere" in out.stderr
    assert len(warm.served()) == before + 2


def test_the_runner_declines_other_prefect_settings_and_changed_code(warm, tmp_path):
    """A command with other Prefect settings runs in its own process; a changed Prefect
    profile (like changed code) makes the runner decline and start again, after which
    it serves again."""
    photos.make_collection(tmp_path / "camera", count=2, bad=False, size=(96, 72))
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(local_job(tmp_path, "warm-decline", {"processes": 1})))
    before = len(warm.served())
    run = _cli(["run", str(tmp_path / "job.yaml"), "--json"], dict(warm.env, PREFECT_LOGGING_LEVEL="ERROR"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert _last_json(run.stdout)["done"] == 2
    assert len(warm.served()) == before and "other Prefect settings" in warm.log

    old_pid = warm.runner_pid()
    profiles = Path(warm.env["PREFECT_HOME"]) / "profiles.toml"
    profiles.parent.mkdir(parents=True, exist_ok=True)
    profiles.write_text('active = "ephemeral"\n[profiles.ephemeral]\n')
    again = _cli(["run", str(tmp_path / "job.yaml"), "--json"], warm.env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _last_json(again.stdout)["done"] == 2  # ran in its own process
    assert "changed since the runner started" in warm.log and len(warm.served()) == before
    _until(warm.ready, step=0.5)
    assert warm.runner_pid() == old_pid  # the same process, its code loaded again (exec)
    third = _cli(["run", str(tmp_path / "job.yaml"), "--json"], warm.env)
    assert third.returncode == 0 and _last_json(third.stdout)["done"] == 2
    assert len(warm.served()) == before + 1


def test_a_killed_command_takes_its_run_with_it_and_a_rerun_finishes(warm, tmp_path):
    """SIGKILL of the command ends its run too (as when the run was the command's own
    process); the runner reaps it (no defunct process) and a rerun, again through the
    runner, finishes the job without duplicates. Ctrl-C (SIGINT) reaches the run as well."""
    with NumberedHost(count=120, missing=set(), size=(64, 48), cache_dir=tmp_path / "host", latency_ms=150) as host:
        job = local_job(tmp_path, "warm-kill", {"batch_size": 20, "concurrency": 2, "processes": 1},
                        source=host.job_source(1, 120, stop_after_missing=None))
        (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
        before = len(warm.served())

        def start() -> tuple[subprocess.Popen, int]:
            proc = subprocess.Popen([sys.executable, "-m", "photo_escape.cli", "run", str(tmp_path / "job.yaml"),
                                     "--json"], env=warm.env, cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            line = _until(lambda: len(warm.served()) > before and warm.served()[-1], timeout=60, step=0.02)
            return proc, int(re.search(r": run (\d+): ", line).group(1))

        proc, run_pid = start()
        _until(lambda: any((tmp_path / "archive").rglob("*.jpg")), timeout=60, step=0.05)  # under way
        proc.kill()
        proc.wait()
        _until(lambda: not Path(f"/proc/{run_pid}").exists(), timeout=30)  # gone, and reaped
        assert f"run {run_pid} ended: {{'signal': 9}}" in warm.log
        delivered = len(list((tmp_path / "archive").rglob("*.jpg")))
        assert delivered < 120

        before = len(warm.served())
        proc, run_pid = start()
        # under way: delivering again (a Ctrl-C earlier, in a ledger query, ends the run with 1 instead)
        _until(lambda: len(list((tmp_path / "archive").rglob("*.jpg"))) > delivered, timeout=60, step=0.02)
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the run is interrupted, as in the command's own process
        out, err = proc.communicate(timeout=120)
        # the run ended by itself, interrupted (130; 1 when the interrupt landed in a ledger query:
        # "the run did not finish"), and the command ended with the run's own status
        assert proc.returncode in (130, 1) and "interrupted" in err, err[-3000:]
        _until(lambda: not Path(f"/proc/{run_pid}").exists(), timeout=30)
        assert f"run {run_pid} ended: {{'exit': {proc.returncode}}}" in warm.log

        # the rerun, through the runner; while it runs the runner starts again on a changed
        # profile (a second command on the same job is declined, then refused: the ledger is busy)
        before = len(warm.served())
        delivered = len(list((tmp_path / "archive").rglob("*.jpg")))
        rerun, run_pid = start()
        _until(lambda: len(list((tmp_path / "archive").rglob("*.jpg"))) > delivered, timeout=60, step=0.02)
        profiles = Path(warm.env["PREFECT_HOME"]) / "profiles.toml"
        profiles.parent.mkdir(parents=True, exist_ok=True)
        profiles.write_text(f'active = "ephemeral"\n[profiles.ephemeral]\n# {time.time()}\n')
        busy = _cli(["run", str(tmp_path / "job.yaml"), "--json"], warm.env)
        assert busy.returncode == 3, busy.stderr[-3000:]
        assert Path(f"/proc/{run_pid}").exists()  # the restart happened with the rerun under way
        out, err = rerun.communicate(timeout=180)
        assert rerun.returncode == 0, err[-3000:]
        assert _last_json(out)["pending"] == 0  # its status and summary reached it across the restart
        assert len(list((tmp_path / "archive").rglob("*.jpg"))) == 120  # every photo once
        _until(warm.ready, step=0.5)
    pid = warm.runner_pid()
    _until(lambda: not [c for c in children(pid) if state(c) == "Z"], timeout=20)  # nothing left defunct
