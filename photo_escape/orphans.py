"""Stop the temporary Prefect servers that killed runs left behind.

With no ``PREFECT_API_URL``, a temporary API server runs in a subprocess for the
run and stops at exit. A run killed with SIGKILL (the OOM killer, a power-cut test,
``kill -9``) cannot stop it. The temporary server of ``photo-escape run`` stops by
itself when its run is gone (:mod:`photo_escape.prefect_api`); one that Prefect
started itself (for a flow called from Python) lives on, idle, holding memory, and
every further killed run adds one. Before ``photo-escape run`` starts a new
temporary server it stops those orphans: processes of this user whose parent is gone
(re-parented to PID 1), whose environment marks them as a temporary Prefect server
(``PREFECT__SERVER_EPHEMERAL=1``) and which share our ``PREFECT_HOME``.
A temporary server whose run is alive always has that run as its parent, so it is
never touched. Linux only (``/proc``); elsewhere this does nothing.

Plain code, no Prefect import.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

MARK = b"PREFECT__SERVER_EPHEMERAL=1"


def _environ(pid: int) -> dict[bytes, bytes]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(kv.split(b"=", 1) for kv in raw.split(b"\0") if b"=" in kv)


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def orphaned_prefect_servers(prefect_home: str | None = None) -> list[int]:
    """PIDs of temporary Prefect servers whose run is gone (see the module docstring)."""
    home = os.fsencode(prefect_home if prefect_home is not None else os.environ.get("PREFECT_HOME", ""))
    me = os.getuid()
    found = []
    try:
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return []
    for pid in pids:
        try:
            if os.stat(f"/proc/{pid}").st_uid != me or _parent(pid) != 1:
                continue
            env = _environ(pid)
        except (OSError, ValueError, IndexError):
            continue
        if env.get(b"PREFECT__SERVER_EPHEMERAL") == b"1" and env.get(b"PREFECT_HOME", b"") == home:
            found.append(pid)
    return found


def stop_orphaned_prefect_servers(prefect_home: str | None = None) -> list[int]:
    """SIGTERM each orphaned temporary Prefect server (SIGKILL if it lingers); their PIDs."""
    import time

    pids = orphaned_prefect_servers(prefect_home)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + 5
    for pid in pids:
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists() and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
