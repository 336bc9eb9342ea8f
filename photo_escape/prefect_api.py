"""Which Prefect API a run talks to, and the temporary Prefect server when there is none.

Every run is a Prefect flow run. The API it reports to is, in this order:

1. the one Prefect's settings name (``PREFECT_API_URL`` in the environment, the active
   Prefect profile, ``prefect.toml``...): a server you run, or Prefect Cloud;
2. the local server of ``photo-escape server start``, when it is up (its state file
   ``$PHOTO_ESCAPE_HOME/prefect-server.json`` names it and it answers): runs then show in
   its UI and nothing is started per run;
3. else a **temporary** Prefect server for this run only, as Prefect itself would start
   (its server app on 127.0.0.1 and a random port, the same SQLite database under
   ``PREFECT_HOME``, the UI off), stopped when the run's process exits.

The temporary server is started at the very beginning of ``photo-escape run``, before the
job is read and the flow's modules are imported: the server comes up meanwhile, in its
own process (seconds of imports on both sides, overlapped on two cores). The run's
process then never imports Prefect's server code. What the server skips compared with
Prefect's own temporary server: registering the block types of installed collections at
each start (``PREFECT_SERVER_REGISTER_BLOCKS_ON_START``; a block type is registered when
a block of it is saved), a garbage collection it runs only to reclaim memory, the
garbage collector during its imports, Prefect's database migrations when this
Prefect's migrations already brought the database to the revision it is at (recorded in
``$PREFECT_HOME/photo-escape-migrated.json``), and the trimming of old events when a
temporary server trimmed them less than a day ago or the database is new
(``photo-escape-vacuumed.json``: the trim raced the run's first writes); the last two only for the default SQLite database.

The server dies with the process that started it (``PR_SET_PDEATHSIG``): a run killed
with SIGKILL leaves no server behind. Processes the run starts (Dask workers) inherit
``PREFECT_API_URL`` and report to the same server instead of starting their own.

Plain code: Prefect is imported only by :func:`connected` (and by the server process).
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent  # where photo_escape is, for the server process
STATE_FILE = "prefect-server.json"  # under $PHOTO_ESCAPE_HOME: the local server of `photo-escape server start`


class ServerUnavailable(RuntimeError):
    """The temporary Prefect server could not start."""


def _home() -> Path:
    from photo_escape import home

    return home()


_defaults_set = False


def prefect_defaults() -> None:
    """Quiet, offline-friendly Prefect settings unless the user set their own (once a process)."""
    global _defaults_set
    if _defaults_set:
        return
    _defaults_set = True
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # temporary Prefect servers of runs that were killed (SIGKILL) would otherwise pile up
    from photo_escape.orphans import stop_orphaned_prefect_servers

    stop_orphaned_prefect_servers()


# ----------------------------------------------------------------------------------------
# the temporary server
# ----------------------------------------------------------------------------------------

def answers(api_url: str, timeout: float = 2.0) -> bool:
    """Whether a Prefect API answers its health check."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as r:
            return r.status == 200
    except (OSError, ValueError):
        return False


def _default(env: dict[str, str], names: tuple[str, ...], value: str) -> None:
    """Set a Prefect setting in ``env`` unless the user set it under any of its names."""
    if not any(n in env for n in names):
        env[names[0]] = value


MIGRATED_FILE = "photo-escape-migrated.json"  # under PREFECT_HOME: the database a temporary server left at head


def _prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()


def profiles_path() -> Path:
    """The Prefect profiles file (``PREFECT_PROFILES_PATH``, else ``$PREFECT_HOME/profiles.toml``)."""
    return Path(os.environ.get("PREFECT_PROFILES_PATH") or _prefect_home() / "profiles.toml").expanduser()


def prefect_files_here() -> bool:
    """Whether the working folder has Prefect settings of its own (a ``prefect.toml``,
    ``.env`` or ``pyproject.toml`` with ``[tool.prefect]``), which Prefect reads when it is
    imported."""
    if any(Path(name).exists() for name in ("prefect.toml", ".env")):
        return True
    try:
        return "tool.prefect" in Path("pyproject.toml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False


def _active_profile() -> dict[str, Any]:
    """The active Prefect profile's settings, read without importing Prefect."""
    import tomllib

    try:
        data = tomllib.loads(profiles_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    active = os.environ.get("PREFECT_PROFILE") or data.get("active") or "ephemeral"
    return (data.get("profiles") or {}).get(active) or {}


def _default_database() -> Path | None:
    """The SQLite file a Prefect server uses when nothing names another database, or None
    when something might (an environment variable, the profile, a prefect.toml, .env or
    pyproject.toml here): then the server decides everything itself."""
    if any(k.startswith("PREFECT_") and "DATABASE" in k for k in os.environ):
        return None
    if any("DATABASE" in str(k) for k in _active_profile()) or prefect_files_here():
        return None
    return _prefect_home() / "prefect.db"


def _schema_version(db: Path) -> str | None:
    """The Alembic revision a Prefect database is at (read-only; None if it has none)."""
    import sqlite3

    if not db.is_file():
        return None
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
        try:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def _migration_state(db: Path) -> dict[str, str] | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        prefect = version("prefect")
    except PackageNotFoundError:
        return None
    revision = _schema_version(db)
    return {"prefect": prefect, "database": str(db), "revision": revision} if revision else None


def _migrated_already(db: Path | None) -> bool:
    """Whether this Prefect's migrations already ran on ``db`` to the revision it is at now:
    a temporary server then skips them (Alembic loads every migration script of Prefect's
    to find that there is nothing to do). A database at another revision (new, dropped,
    touched by another Prefect version) is migrated as Prefect always does."""
    if db is None:
        return False
    try:
        recorded = json.loads((_prefect_home() / MIGRATED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return recorded == _migration_state(db)


def _record_migrated(db: Path | None) -> None:
    if db is None:
        return
    state = _migration_state(db)
    if state is not None:
        _record(MIGRATED_FILE, state)


def _record(name: str, state: dict[str, Any]) -> None:
    """Write a small record under PREFECT_HOME, whole or not at all."""
    path = _prefect_home() / name
    try:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass


VACUUMED_FILE = "photo-escape-vacuumed.json"  # under PREFECT_HOME: when a temporary server last trimmed old events
VACUUM_EVERY = 24 * 3600.0  # seconds: Prefect's own servers trim events hourly, and keep them for 7 days
VACUUM_SETTING = "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED"


def _vacuumed_lately(db: Path | None) -> bool:
    """Whether a temporary server trimmed ``db``'s old events less than a day ago.

    Prefect's server deletes events past their retention period as it starts (its
    ``db_vacuum`` service), every time. In a temporary server that is every run, and the
    deletes, while the run writes its flow run, made SQLite refuse that write ("database
    is locked"): the server answers 503, the client waits 2 s and tries again. That was
    one run in 10 to 15, two seconds longer. A day between trims keeps the database
    bounded just the same (events are kept 7 days)."""
    if db is None:
        return False
    try:
        recorded = json.loads((_prefect_home() / VACUUMED_FILE).read_text(encoding="utf-8"))
        return recorded["database"] == str(db) and 0 <= time.time() - float(recorded["at"]) < VACUUM_EVERY
    except (OSError, ValueError, KeyError, TypeError):
        return False


class TemporaryServer:
    """Prefect's server app for one run: a subprocess on a socket bound here, so its
    address is known at once and no other process can take the port meanwhile."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.proc: subprocess.Popen | None = None
        self._ready = False
        self._database: Path | None = None  # the default database, when this server migrates it
        self._vacuums: Path | None = None  # the default database, when this server trims its old events

    def start(self) -> "TemporaryServer":
        env = self.environment()
        fd = self.sock.fileno()
        # the death signal follows the thread that starts the server: only the main thread lasts
        parent = os.getpid() if threading.current_thread() is threading.main_thread() else 0
        code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from {__name__} import serve; "
                f"serve({fd}, {parent})")
        try:  # the server's output goes to our stderr: stdout carries --json lines
            out = sys.stderr.fileno()
        except (AttributeError, ValueError, OSError):  # a stderr with no file behind it (captured)
            out = None
        self.proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(fd,), env=env,
                                     stdin=subprocess.DEVNULL, stdout=out)
        self.sock.close()  # the server holds the listening socket now
        atexit.register(self.stop)  # after Prefect's own exit handlers have sent what they queued
        return self

    def environment(self) -> dict[str, str]:
        """The server process's environment: this one's, with the temporary server's
        settings (see the module's docstring); notes what to record once it answers."""
        env = dict(os.environ, PREFECT__SERVER_EPHEMERAL="1", PREFECT_UI_ENABLED="0")
        env.pop("PREFECT_API_URL", None)
        env.pop("PREFECT__SERVER_FINAL", None)  # its only effect here (FastAPI >= 0.137): a gc.collect()
        _default(env, ("PREFECT_SERVER_REGISTER_BLOCKS_ON_START", "PREFECT_API_BLOCKS_REGISTER_ON_START"), "false")
        _default(env, ("PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION", "PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION"),
                 "false")  # else the memo would say "registered" to a later `prefect server start`
        database = _default_database()
        if _migrated_already(database):
            env["PREFECT_SERVER_DATABASE_MIGRATE_ON_START"] = "false"
        else:
            self._database = database  # recorded as migrated once the server answers
        if VACUUM_SETTING not in env and not any("VACUUM" in str(k) for k in _active_profile()):
            lately = _vacuumed_lately(database)
            if lately or (database is not None and not database.exists()):
                env[VACUUM_SETTING] = "[]"  # trimmed less than a day ago, or a new database: nothing old in it
            if not lately:
                self._vacuums = database  # recorded as trimmed (a new one: as of now) once the server answers
        return env

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float | None = None) -> str:
        """Wait until the server answers; its API URL. Raises ServerUnavailable if it cannot start."""
        if self._ready and self.alive():
            return self.api_url
        if timeout is None:
            timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                code = self.proc.returncode if self.proc is not None else None
                raise ServerUnavailable(f"the temporary Prefect server exited at start (status {code}); see above")
            if answers(self.api_url, timeout=1.0):
                self._ready = True
                _record_migrated(self._database)  # it answers after its migrations: at head now
                if self._vacuums is not None:
                    _record(VACUUMED_FILE, {"database": str(self._vacuums), "at": time.time()})
                return self.api_url
            time.sleep(0.05)
        self.stop()
        raise ServerUnavailable(f"the temporary Prefect server did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        """Stop the server and reap it (no defunct process stays behind)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _die_with_parent(parent: int) -> None:
    """Ask Linux to send SIGTERM when the process that started us ends (even by SIGKILL)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the orphan sweep (photo_escape.orphans) remains
        return
    if os.getppid() != parent:  # it ended before we asked
        os._exit(0)


def serve(fd: int, parent: int = 0) -> None:
    """The server process: Prefect's server app, served by uvicorn on the inherited socket
    (and ended when the process ``parent`` ends, if given).

    The imports and the app build make hundreds of thousands of objects that live as
    long as the server: the garbage collector stays off meanwhile (it would walk them
    over and over, about a third of the start-up time), then they are frozen."""
    import gc

    if parent:
        _die_with_parent(parent)
    gc.disable()
    import uvicorn

    from prefect.server.api.server import create_app

    app = create_app()
    gc.freeze()
    gc.enable()
    config = uvicorn.Config(app, log_level="error", lifespan="on")
    uvicorn.Server(config).run(sockets=[served_socket(fd)])


def served_socket(fd: int) -> socket.socket:
    """The inherited listening socket as what it is, a TCP socket (its family, type and
    protocol read from the descriptor). Not uvicorn's ``fd=``: that labels it a Unix
    socket, and asyncio then leaves Nagle's algorithm on for every connection it accepts
    (it sets ``TCP_NODELAY`` only on TCP sockets). Each response uvicorn writes in two
    parts (headers, body) then waited for the client's delayed ACK, about 40 ms: every
    API call of a run, 0.4-0.5 s before its first photo."""
    return socket.socket(fileno=fd)


# ----------------------------------------------------------------------------------------
# the local server of `photo-escape server start`
# ----------------------------------------------------------------------------------------

def state_path() -> Path:
    return _home() / STATE_FILE


def is_server_process(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        try:  # no /proc: at least the process exists
            os.kill(pid, 0)
            return True
        except OSError:
            return False
    return b"prefect" in b" ".join(cmdline) and b"server" in cmdline


def local_server(check_health: bool = True) -> dict[str, Any] | None:
    """The state of the running local server (``pid``, ``url``, ``api_url``, ``ui_url``,
    ``log``...), or None when none is up (a stale state file is left for ``start`` to replace)."""
    try:
        state = json.loads(state_path().read_text(encoding="utf-8"))
        pid = int(state["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not is_server_process(pid):
        return None
    if check_health and not answers(state["api_url"]):
        return None
    return state


# ----------------------------------------------------------------------------------------
# the choice, for a process
# ----------------------------------------------------------------------------------------

@dataclass
class Api:
    """The API this process's runs report to: ``url`` None means Prefect's own settings decide."""

    source: str  # "Prefect settings", "photo-escape server" or "temporary server"
    url: str | None = None
    server: TemporaryServer | None = None

    def release(self) -> None:
        """Stop the temporary server now (a run that will not happen: a bad job, a busy ledger)."""
        if self.server is not None:
            self.server.stop()


_chosen: Api | None = None
_exported: str | None = None  # the PREFECT_API_URL this module set (not the user's setting)
_lock = threading.Lock()


def _profile_api_url() -> str | None:
    """The API URL of the active Prefect profile, read without importing Prefect (the common
    way to name a server: ``prefect config set PREFECT_API_URL=...``)."""
    return _active_profile().get("PREFECT_API_URL") or None


def choose() -> Api:
    """Decide which API this process's runs use; start the temporary server now if it is
    the one (it comes up while the caller goes on). Cheap; imports no Prefect."""
    global _chosen
    prefect_defaults()
    with _lock:
        if _chosen is not None and (_chosen.server is None or _chosen.server.alive()):
            return _chosen
        url = os.environ.get("PREFECT_API_URL")
        if (url and url != _exported) or _profile_api_url():
            _chosen = Api("Prefect settings")
        elif (state := local_server()) is not None:
            _chosen = Api("photo-escape server", state["api_url"])
        else:
            server = TemporaryServer().start()
            _chosen = Api("temporary server", server.api_url, server)
        return _chosen


@contextmanager
def connected(api: Api | None = None) -> Iterator[Api]:
    """Within the block, Prefect in this process (and the processes it starts) talks to the
    chosen API; a temporary server is waited for here, when it is needed at last.

    Flow runs started here send no heartbeats unless Prefect's settings ask for them
    (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``; the deployments in prefect.yaml do): Prefect
    sends one every 180 s by default, which a run of seconds never uses, but stopping
    the heartbeat thread at the end of each flow run waits for its one-second naps."""
    global _exported
    api = api or choose()
    from prefect.settings import (PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings,
                                  temporary_settings)

    settings = get_current_settings()
    updates: dict[Any, Any] = {}
    if "heartbeat_frequency" not in settings.flows.model_fields_set:
        updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
    configured = settings.api.url
    if api.url is None or (configured and configured not in (api.url, _exported)):
        # Prefect's settings name a server (a prefect.toml or .env seen only now, a test harness)
        api.release()
        api = Api("Prefect settings")
    else:
        if api.server is not None:
            api.server.wait_ready()
        if os.environ.get("PREFECT_API_URL") != api.url:
            os.environ["PREFECT_API_URL"] = _exported = api.url  # for threads and processes (Dask workers)
            from prefect.context import refresh_global_settings_context

            refresh_global_settings_context()
        updates[PREFECT_API_URL] = api.url
    with temporary_settings(updates=updates):
        yield api
