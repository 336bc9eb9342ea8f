"""``photo-escape server start|stop|status [--port N] [--json]``: a local Prefect server, with its UI.

Without a Prefect server, every ``photo-escape run`` starts a temporary one and stops
it at the end (a few seconds of each run, and no UI to look at afterwards). ``server
start`` starts one Prefect server (``prefect server start`` on 127.0.0.1, its UI
included) that keeps running in the background; while it is up, runs report to it (unless
``PREFECT_API_URL`` names another) and start faster. It keeps its flow runs in the same
database as the temporary servers (under ``PREFECT_HOME``), so earlier runs show in its
UI too. Its address is kept in ``$PHOTO_ESCAPE_HOME/prefect-server.json``, its output in
``prefect-server.log`` beside it.

* ``start``: start it (``--port``, default 4200; 0 picks a free port) and print its UI's
  address; if it is already up, just say where.
* ``stop``: stop it.
* ``status``: say whether it is up and where; exit status 0 when it is up, 3 when not.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from photo_escape.output import emit

NOT_RUNNING = 3  # exit status of `status` when no server is up (as `systemctl status` says it)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--port", type=int, default=4200, help="port on 127.0.0.1 for `start` (0: any free one)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds `start` waits for the server to answer")


def run(args: argparse.Namespace) -> int:
    from photo_escape.prefect_api import prefect_defaults

    prefect_defaults()
    return {"start": start, "stop": stop, "status": status}[args.action](args)


def _report(state: dict | None, as_json: bool, text: str) -> None:
    record = {"running": state is not None, **(state or {})}
    emit(record, as_json, text)


def status(args: argparse.Namespace) -> int:
    from photo_escape.prefect_api import local_server

    state = local_server()
    if state is None:
        _report(None, args.json, "no photo-escape Prefect server is running (start one: photo-escape server start)")
        return NOT_RUNNING
    from photo_escape.runner import running_pid

    state["runner"] = running_pid() is not None  # up and taking commands
    _report(state, args.json, f"Prefect server running: UI at {state['ui_url']}, API at {state['api_url']} "
                              f"(pid {state['pid']}); warm runner "
                              f"{'ready' if state['runner'] else 'not ready (runs import for themselves)'}")
    return 0


def _free(port: int) -> int | None:
    """``port`` if nothing listens on it on 127.0.0.1 (any free port for 0), else None."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return None
        return s.getsockname()[1]


def start(args: argparse.Namespace) -> int:
    from photo_escape.prefect_api import answers, local_server, state_path

    state = local_server()
    if state is not None:
        _report(state, args.json, f"already running: UI at {state['ui_url']}, API at {state['api_url']}")
        return 0
    port = _free(args.port)
    if port is None:
        print(f"photo-escape server: port {args.port} on 127.0.0.1 is taken; choose another with --port",
              file=sys.stderr)
        return 1
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    log = path.with_suffix(".log")
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)  # the server is the API; a client setting means nothing to it
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port)], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)  # its own session: it outlives this command
    url = f"http://127.0.0.1:{port}"
    state = {"pid": proc.pid, "url": url, "api_url": f"{url}/api", "ui_url": url, "log": str(log.resolve()),
             "prefect_home": os.environ.get("PREFECT_HOME") or str(Path.home() / ".prefect"),
             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    deadline = time.monotonic() + args.timeout
    while not answers(state["api_url"], timeout=1.0):
        if proc.poll() is not None or time.monotonic() > deadline:
            _end(proc.pid)
            proc.wait()
            tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
            print(f"photo-escape server: the Prefect server did not start; its output ({log}):\n{tail}",
                  file=sys.stderr)
            return 1
        time.sleep(0.2)
    state["runner_pid"] = _start_runner(env, log)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state), encoding="utf-8")
    tmp.replace(path)
    _report(state, args.json, f"Prefect server started: UI at {state['ui_url']}; runs report to it until "
                              f"`photo-escape server stop`")
    return 0


def _start_runner(env: dict[str, str], log: Path) -> int | None:
    """The warm runner (:mod:`photo_escape.runner`) beside the server: it imports what a
    run needs once, and ``photo-escape run`` hands it its command while it is up. It is
    ready a few seconds later; until then runs import for themselves."""
    if not Path("/proc").is_dir() or not hasattr(socket, "send_fds"):
        return None  # Linux only
    from photo_escape import home

    _stop_runner({})  # one left by a server that ended without `stop` (it would hold on to nothing)
    runner_home = home().resolve()
    with open(log.with_name("runner.log"), "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "photo_escape.runner", "--home", str(runner_home)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=runner_home, start_new_session=True)
    return proc.pid


def _stop_runner(state: dict) -> None:
    """Stop the warm runner (the one in ``state``, and the one its own state file names)."""
    from photo_escape.runner import is_runner, running_pid, state_path

    for pid in {state.get("runner_pid"), running_pid()} - {None}:
        if is_runner(int(pid)):
            _end(int(pid))
    state_path().unlink(missing_ok=True)


def _end(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM (a clean shutdown), then SIGKILL if it lingers."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie (our own child, not yet reaped) has ended too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def stop(args: argparse.Namespace) -> int:
    from photo_escape.prefect_api import is_server_process, state_path

    path = state_path()
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        pid = int(state["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        _report(None, args.json, "no photo-escape Prefect server is running")
        return 0
    _stop_runner(state)
    if is_server_process(pid):
        _end(pid)
    path.unlink(missing_ok=True)
    _report(None, args.json, f"Prefect server stopped (was at {state.get('ui_url')})")
    return 0
