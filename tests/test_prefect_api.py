"""Which Prefect API a run reports to: Prefect's settings, `photo-escape server`, or a
temporary server that starts with the run and leaves nothing behind.

These run ``photo-escape`` in subprocesses WITHOUT the session's test harness: each test
has its own PREFECT_HOME (its own Prefect database) and PHOTO_ESCAPE_HOME.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from photo_escape import prefect_api
from sandbox import photos
from tests.fixtures.fresh import cli as _cli
from tests.fixtures.fresh import last_json as _last_json
from tests.fixtures.jobs import local_job
from tests.fixtures.procs import children

ROOT = Path(__file__).resolve().parent.parent


def _env(tmp_path: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PHOTO_ESCAPE_HOME=str(tmp_path / "pe-home"),
               PYTHONPATH=str(ROOT), PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    return env


def _job_file(tmp_path: Path, count: int = 3) -> Path:
    photos.make_collection(tmp_path / "camera", count=count, bad=False, size=(96, 72))
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(local_job(tmp_path, "api-test", {"batch_size": 2, "processes": 1})))
    return path


def _group(pgid: int) -> list[str]:
    """Every process of a process group, zombies included, as "pid state cmdline"."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[2]) == pgid:
            found.append(f"{d} {fields[0]} {cmd[:120]}")
    return found


def _flow_runs(prefect_home: Path) -> int:
    con = sqlite3.connect(prefect_home / "prefect.db")
    try:
        return con.execute("SELECT count(*) FROM flow_run").fetchone()[0]
    finally:
        con.close()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_the_temporary_servers_connections_send_without_delay():
    """Every connection the temporary server accepts has Nagle's algorithm off. Left on
    (uvicorn's ``fd=`` makes asyncio take the socket for a Unix one), each two-part
    response waited for the client's delayed ACK: ~40 ms on every API call of a run."""
    import asyncio
    import socket

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # as TemporaryServer binds it
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    address = listener.getsockname()
    sock = prefect_api.served_socket(os.dup(listener.fileno()))  # what the server process inherits
    listener.close()
    nodelay: list[int] = []

    async def accept_one() -> None:
        accepted = asyncio.Event()

        class Note(asyncio.Protocol):
            def connection_made(self, transport):
                nodelay.append(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                accepted.set()

        server = await asyncio.get_running_loop().create_server(Note, sock=sock)
        _, writer = await asyncio.open_connection(*address)
        await asyncio.wait_for(accepted.wait(), 30)
        writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(accept_one())
    assert sock.family == socket.AF_INET and sock.proto == socket.IPPROTO_TCP
    assert len(nodelay) == 1 and nodelay[0] != 0


def test_a_run_without_a_server_reports_to_a_temporary_one_and_leaves_no_process(tmp_path):
    """No PREFECT_API_URL: the run starts one temporary server, records its flow run in
    PREFECT_HOME's database, and once the command has returned nothing of its process
    group is left (no server, no worker, not even a zombie)."""
    job = _job_file(tmp_path)
    env = _env(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "photo_escape.cli", "run", str(job), "--json"], env=env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    servers: set[int] = set()
    while proc.poll() is None:  # watch the run's children while it runs
        for child in children(proc.pid):
            try:
                if b"PREFECT__SERVER_EPHEMERAL=1" in Path(f"/proc/{child}/environ").read_bytes():
                    servers.add(child)
            except OSError:
                pass
        time.sleep(0.05)
    out, err = proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    summary = _last_json(out)
    assert summary["listed"] == summary["done"] == 3
    assert len(servers) == 1, servers
    assert _flow_runs(tmp_path / "prefect-home") == 1
    time.sleep(0.2)
    assert _group(proc.pid) == []


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_a_killed_run_takes_its_temporary_server_with_it(tmp_path):
    """SIGKILL the run (the OOM killer, kill -9) while its temporary server is up: the
    server notices that its run is gone and stops by itself."""
    job = _job_file(tmp_path, count=2)
    env = _env(tmp_path, PHOTO_ESCAPE_CRASH_AT="deliver:1")  # dies itself, just before recording a delivery
    proc = subprocess.Popen([sys.executable, "-m", "photo_escape.cli", "run", str(job), "--json"], env=env,
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err[-3000:]
    deadline = time.monotonic() + 20
    while _group(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _group(proc.pid)
    if left:
        os.killpg(proc.pid, signal.SIGKILL)
    assert left == []


def test_a_temporary_server_that_cannot_start_ends_the_run_with_a_message(tmp_path):
    """A temporary server that cannot open its database: exit status 1, a one-line reason
    after the server's own output, nothing on stdout, and no flow run attempted."""
    job = _job_file(tmp_path, count=1)
    env = _env(tmp_path, PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{tmp_path}/no/such/dir/x.db")
    out = _cli(["run", str(job), "--json"], env)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip().splitlines()[-1].startswith("the run did not start: the temporary Prefect server")
    assert not (tmp_path / "archive").exists()


def test_prefect_settings_come_first(tmp_path, monkeypatch):
    """PREFECT_API_URL, in the environment or in the active Prefect profile, names the API:
    nothing is started."""
    monkeypatch.setattr(prefect_api, "_chosen", None)
    monkeypatch.setenv("PHOTO_ESCAPE_HOME", str(tmp_path / "pe-home"))
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    api = prefect_api.choose()
    assert api.source == "Prefect settings" and api.server is None and api.url is None

    monkeypatch.setattr(prefect_api, "_chosen", None)
    monkeypatch.delenv("PREFECT_API_URL")
    home = tmp_path / "prefect-home"
    home.mkdir()
    (home / "profiles.toml").write_text('active = "team"\n[profiles.team]\n'
                                        'PREFECT_API_URL = "http://prefect.example:4200/api"\n')
    monkeypatch.setenv("PREFECT_HOME", str(home))
    monkeypatch.delenv("PREFECT_PROFILES_PATH", raising=False)
    monkeypatch.delenv("PREFECT_PROFILE", raising=False)
    api = prefect_api.choose()
    assert api.source == "Prefect settings" and api.server is None
    monkeypatch.setattr(prefect_api, "_chosen", None)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_the_server_command_starts_a_server_that_runs_report_to_and_stops_it(tmp_path):
    """`photo-escape server start` starts a Prefect server with its UI; `status` says where;
    a run without PREFECT_API_URL reports to it and starts no temporary server; `stop` ends it."""
    env = _env(tmp_path)
    status = _cli(["server", "status", "--json"], env)
    assert status.returncode == 3 and _last_json(status.stdout)["running"] is False

    started = _cli(["server", "start", "--port", "0", "--json"], env)
    assert started.returncode == 0, started.stderr[-3000:]
    state = _last_json(started.stdout)
    try:
        assert state["running"] is True and state["ui_url"].startswith("http://127.0.0.1:")
        with urllib.request.urlopen(state["ui_url"], timeout=30) as r:  # the UI is served
            assert r.status == 200 and b"<html" in r.read().lower()
        again = _cli(["server", "start", "--port", "0", "--json"], env)
        assert again.returncode == 0 and _last_json(again.stdout)["pid"] == state["pid"]
        status = _cli(["server", "status", "--json"], env)
        assert status.returncode == 0 and _last_json(status.stdout)["api_url"] == state["api_url"]

        job = _job_file(tmp_path, count=2)
        # in this process, not the warm runner's (tests/test_runner.py): its children are watched here
        run = subprocess.Popen([sys.executable, "-m", "photo_escape.cli", "run", str(job), "--json"],
                               env=dict(env, PHOTO_ESCAPE_RUNNER="off"), cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        temporary: set[int] = set()
        while run.poll() is None:
            temporary.update(c for c in children(run.pid) if b"PREFECT__SERVER_EPHEMERAL=1" in _environ(c))
            time.sleep(0.05)
        out, err = run.communicate()
        assert run.returncode == 0, err[-3000:]
        assert not temporary  # no temporary server
        req = urllib.request.Request(f"{state['api_url']}/flow_runs/filter", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            runs = json.loads(r.read())
        assert [fr["state_type"] for fr in runs] == ["COMPLETED"]
        assert _last_json(out)["done"] == 2
    finally:
        stopped = _cli(["server", "stop", "--json"], env)
    assert stopped.returncode == 0 and _last_json(stopped.stdout)["running"] is False
    deadline = time.monotonic() + 20
    while Path(f"/proc/{state['pid']}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{state['pid']}").exists()
    status = _cli(["server", "status", "--json"], env)
    assert status.returncode == 3


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_a_temporary_server_migrates_the_database_once_per_prefect_version(tmp_path, monkeypatch):
    """The first temporary server on a PREFECT_HOME runs Prefect's migrations and records the
    revision they left; the next skips them (the database is at that revision) and still
    records its flow run. A database at another revision is migrated again. Old events
    are trimmed at most once a day, and not in a new database (a trim as the run writes
    its flow run made SQLite refuse the write, and the run wait 2 s)."""
    job = _job_file(tmp_path, count=1)
    env = _env(tmp_path)
    home = tmp_path / "prefect-home"
    skipped, trims = [], []
    for _ in range(2):
        run = subprocess.Popen([sys.executable, "-m", "photo_escape.cli", "run", str(job), "--json"], env=env,
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen: set[bool] = set()
        trimmed: set[bool] = set()
        while run.poll() is None:
            for child in children(run.pid):
                environ = _environ(child)
                if b"PREFECT__SERVER_EPHEMERAL=1" in environ:
                    seen.add(b"PREFECT_SERVER_DATABASE_MIGRATE_ON_START=false" in environ)
                    trimmed.add(f"{prefect_api.VACUUM_SETTING}=[]".encode() not in environ)
            time.sleep(0.02)
        out, err = run.communicate()
        assert run.returncode == 0, err[-3000:]
        skipped.append(seen)
        trims.append(trimmed)
        marker = json.loads((home / prefect_api.MIGRATED_FILE).read_text())
    assert skipped == [{False}, {True}]
    assert trims == [{False}, {False}]  # a new database, then one trimmed (as new) less than a day ago
    assert _flow_runs(home) == 2
    con = sqlite3.connect(home / "prefect.db")
    try:
        assert marker["revision"] == con.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    finally:
        con.close()

    monkeypatch.setenv("PREFECT_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    for k in [k for k in os.environ if k.startswith("PREFECT_") and "DATABASE" in k]:
        monkeypatch.delenv(k)
    assert prefect_api._migrated_already(home / "prefect.db")
    (home / prefect_api.MIGRATED_FILE).write_text(json.dumps(dict(marker, revision="an-older-one")))
    assert not prefect_api._migrated_already(home / "prefect.db")
    assert prefect_api._default_database() == home / "prefect.db"
    assert prefect_api._vacuumed_lately(home / "prefect.db")
    trim = json.loads((home / prefect_api.VACUUMED_FILE).read_text())
    (home / prefect_api.VACUUMED_FILE).write_text(json.dumps(dict(trim, at=time.time() - prefect_api.VACUUM_EVERY - 1)))
    assert not prefect_api._vacuumed_lately(home / "prefect.db")

    def trims_old_events() -> bool:
        server = prefect_api.TemporaryServer()
        try:
            return prefect_api.VACUUM_SETTING not in server.environment()
        finally:
            server.sock.close()

    assert trims_old_events()  # a day later, in a database with a past: trimmed again
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "another-home"))
    assert not trims_old_events()  # a new database has nothing old in it
    monkeypatch.setenv("PREFECT_HOME", str(home))
    from prefect.settings.models.root import Settings

    monkeypatch.setenv(prefect_api.VACUUM_SETTING, "[]")
    assert Settings().server.services.db_vacuum.enabled_vacuum_types == set()  # how Prefect reads "no trim"
    monkeypatch.setenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{tmp_path}/other.db")
    assert prefect_api._default_database() is None  # another database: the server decides
