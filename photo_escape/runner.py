"""The warm runner: ``photo-escape run`` without its start-up, while ``photo-escape server start`` is up.

Most of a short run's time is start-up and wind-down, not photos: importing Prefect,
the job's plugins, boto3 and the report's libraries (matplotlib, pyarrow, jinja2) is
about 1.5-2 s of CPU in every ``photo-escape run``. ``photo-escape server start`` keeps,
beside its Prefect server, one more process: the runner. It imports all of that once
and then waits on a Unix socket. ``photo-escape run JOB`` (this module's client half,
which imports only the standard library) hands it the command and the run happens in
a **fork** of the runner: a new process that has everything imported already, gets the
command's arguments, working folder, environment (credentials included) and standard
input, output and error (passed as file descriptors, so the progress bar and the
summary go straight to the terminal), and ends with the command's exit status, which
the client then exits with. It is the same code as a run in the command's own process;
only the imports are done before the command started.

What the client does meanwhile: it forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT and
SIGWINCH to the run (Ctrl-C works as before; Ctrl-Z stops only the command, not the
run). A client killed by SIGKILL takes its run with it: the run watches the
connection and kills itself (SIGKILL, as the client was) when it closes.

The runner serves a command only when the run would be the same as in the command's
own process, and declines otherwise (the command then runs in its own process, as
without the runner):

* the same Python (``sys.executable``), the same photo-escape checkout, and the same
  environment where it is read at start-up: every ``PREFECT_*`` variable (after
  photo-escape's defaults; Prefect reads its settings when it is imported), every
  ``PYTHON*`` variable and ``HOME``;
* no ``prefect.toml``, ``.env`` or ``pyproject.toml`` with Prefect settings in the
  command's working folder (Prefect reads those at import too);
* photo-escape's code, the installed packages and the Prefect profile unchanged since
  the runner started: when one of them changed, the runner declines and starts itself
  again (re-executes), so it never runs stale code;
* ``PHOTO_ESCAPE_RUNNER=off`` in the command's environment turns it off for that command.

Only this user can use it: the socket is in a folder only this user can open, and both
ends check the other's user id (``SO_PEERCRED``); the client computes the socket's path
itself and checks the folder before it hands anything over. The environment it receives
is never logged.

What a run in the runner does not take from the command: its resource limits
(``ulimit``), niceness, CPU affinity and cgroup are the runner's (those of
``server start``), and Ctrl-Z stops only the command. Set ``PHOTO_ESCAPE_RUNNER=off``
for a run that needs its own. It reaps every process it forked (and, as Linux's child subreaper, whatever
those leave behind), so finished runs leave no defunct processes. Linux only; elsewhere
``server start`` starts no runner and every run imports for itself.

    python -m photo_escape.runner --home PHOTO_ESCAPE_HOME   # what `server start` runs
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

STATE_FILE = "runner.json"  # under $PHOTO_ESCAPE_HOME: {pid, socket, started}
MAX_REQUEST = 4 << 20
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGWINCH)

_in_runner = False  # True in a run the runner forked: it never hands itself on again
_client_told = False  # the run has sent its exit status: its client may go now


# ----------------------------------------------------------------------------------------
# both halves
# ----------------------------------------------------------------------------------------

def state_path(home: Path | None = None) -> Path:
    if home is None:
        from photo_escape import home as pe_home

        home = pe_home()
    return Path(home) / STATE_FILE


def socket_path(home: Path) -> Path:
    """A short path (a Unix socket's name is at most 107 bytes) in a folder of this user's
    only, one per ``PHOTO_ESCAPE_HOME``."""
    import hashlib
    import tempfile

    folder = Path(tempfile.gettempdir()) / f"photo-escape-{os.getuid()}"
    digest = hashlib.sha256(os.fsencode(Path(home).resolve())).hexdigest()[:16]
    return folder / f"runner-{digest}.sock"


def running_pid(home: Path | None = None) -> int | None:
    """The pid of the runner its state file names, when that process is a runner still."""
    try:
        pid = int(json.loads(state_path(home).read_text(encoding="utf-8"))["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if is_runner(pid) else None


def is_runner(pid: int) -> bool:
    try:
        return b"photo_escape.runner" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def prefect_environment(env: dict[str, str] | os._Environ) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("PREFECT_")}


def _read_at_start(env: dict[str, str] | os._Environ) -> dict[str, str]:
    """What Python and Prefect read from the environment when they start: ``PYTHON*``
    (the path, warnings, encodings...) and ``HOME`` (Prefect's default home)."""
    return {k: v for k, v in env.items() if k.startswith("PYTHON") or k == "HOME"}


def _send_line(sock: socket.socket, obj: dict[str, Any]) -> None:
    sock.sendall(json.dumps(obj).encode() + b"\n")


def _read_line(sock: socket.socket, first: bytes = b"") -> dict[str, Any] | None:
    """The request: one JSON line from ``sock`` (None when it closes first)."""
    buf = first
    while b"\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
        if len(buf) > MAX_REQUEST:
            raise ValueError("request too large")
    return json.loads(buf.split(b"\n", 1)[0])


# ----------------------------------------------------------------------------------------
# the client: `photo-escape run` (standard library only)
# ----------------------------------------------------------------------------------------

def run_in_runner(words: list[str]) -> int | None:
    """Run the command ``photo-escape WORDS`` in the warm runner and return its exit
    status; None when there is no runner or it declines (run it in this process then)."""
    if _in_runner or os.environ.get("PHOTO_ESCAPE_RUNNER", "").lower() in ("off", "0", "no", "false"):
        return None
    from photo_escape import home
    from photo_escape.prefect_api import prefect_defaults, prefect_files_here

    address = socket_path(home())
    if not _ours(address.parent) or prefect_files_here():
        return None

    prefect_defaults()  # as the run would have them when it imports Prefect
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(address))
        if _peer_uid(sock) != os.getuid():  # only ever hand the environment and terminal to our own runner
            raise PermissionError("the runner's socket belongs to another user")
    except OSError:
        sock.close()
        return None
    request = {"argv0": sys.argv[0], "words": words, "cwd": os.getcwd(), "env": dict(os.environ),
               "umask": _umask(), "executable": sys.executable, "code": _code_root()}
    reader = sock.makefile("rb")
    try:
        data = json.dumps(request).encode() + b"\n"
        sent = socket.send_fds(sock, [data], [0, 1, 2])
        sock.sendall(data[sent:])
        answer = _line(reader)
    except (OSError, ValueError):
        answer = None
    if not answer or "pid" not in answer:  # declined (answer["declined"] says why), or the runner went away
        reader.close()
        sock.close()
        return None
    return _wait_for_run(sock, reader, int(answer["pid"]))


def _ours(folder: Path) -> bool:
    """The runner's socket folder: a real folder of this user's that no one else may open."""
    import stat

    try:
        st = os.lstat(folder)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def _peer_uid(sock: socket.socket) -> int:
    return struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]


def _code_root() -> str:
    """Where this photo-escape's code is (a runner serves only its own checkout)."""
    return str(Path(__file__).resolve().parent.parent)


def _line(reader) -> dict[str, Any] | None:
    raw = reader.readline(MAX_REQUEST)
    return json.loads(raw) if raw.endswith(b"\n") else None


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def _wait_for_run(sock: socket.socket, reader, pid: int) -> int:
    """Forward signals to the run until its exit status arrives; mirror how it ended."""
    def forward(signum: int, _frame: Any) -> None:
        try:  # what a terminal sends goes to the run's whole group (its workers too), as it would
            if signum in (signal.SIGINT, signal.SIGHUP):
                os.killpg(pid, signum)
            else:
                os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    for signum in FORWARDED:
        signal.signal(signum, forward)
    try:
        result = _line(reader)  # a forwarded signal does not interrupt this (PEP 475)
    except (OSError, ValueError):
        result = None
    reader.close()
    sock.close()
    if result is None:
        print("photo-escape: lost the warm runner (photo-escape server) during the run; "
              "see the ledger and the report for what was done", file=sys.stderr)
        return 1
    if "signal" in result:  # the run was killed: end as it did
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        signum = int(result["signal"])
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return 128 + signum
    return int(result.get("exit", 1))


# ----------------------------------------------------------------------------------------
# the runner
# ----------------------------------------------------------------------------------------

def preload() -> None:
    """Import everything a run imports (Prefect, every flow, source and destination, boto3,
    the report's libraries) and warm the report's templates and chart fonts."""
    import importlib

    from photo_escape import cli, plugins
    from photo_escape.commands import run as run_command

    cli.build_parser()  # every command's module
    for what in ("source", "destination"):
        try:
            plugins.all_kinds(what)  # imports every source's and destination's module
        except ImportError:  # a kind whose library is not installed: its runs say so
            pass
    for name in ("flows.escape", "flows.run_job", "flows.verify", "photo_escape.stories", "tasks.stages",
                 "boto3", "botocore.client", "requests"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    run_command._import_what_the_run_needs_later()
    try:  # S3's models, read once here rather than by every run's first client
        from tasks.s3util import warm_up

        warm_up()
    except Exception:  # noqa: BLE001 - a run's own client reads them, as without the runner
        pass


def code_stamp() -> tuple:
    """What must not change under a runner: our modules and their folders, the installed
    packages (their folder changes when one is added, removed or upgraded), the Prefect
    profile. Cheap (a few hundred stats)."""
    import site
    import sysconfig

    from photo_escape.prefect_api import profiles_path

    root = _code_root()
    paths: set[str] = set()
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if f and f.startswith(root):
            paths.add(f)
            paths.add(os.path.dirname(f))
    for d in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}:
        paths.add(d)
    paths.add(str(profiles_path()))
    stamp = []
    for p in sorted(paths):
        try:
            stamp.append((p, os.stat(p).st_mtime_ns))
        except OSError:
            stamp.append((p, None))
    return tuple(stamp)


class Runner:
    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.children: dict[int, socket.socket] = {}  # run pid -> its client's connection
        self.stopping = False

    # -- start-up --------------------------------------------------------------------------
    def start(self) -> None:
        import gc

        from photo_escape.prefect_api import prefect_defaults

        gc.disable()
        prefect_defaults()
        self.prefect_env = prefect_environment(os.environ)
        self.start_env = _read_at_start(os.environ)
        preload()
        self.stamp = code_stamp()
        gc.freeze()
        gc.enable()
        _become_subreaper()
        path = socket_path(self.home)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path.parent, 0o700)
        if not _ours(path.parent):  # the check its clients make
            raise SystemExit(f"{path.parent} is not a folder of this user's alone")
        path.unlink(missing_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        os.chmod(path, 0o600)
        self.listener.listen(16)
        self.path = path
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        state = {"pid": os.getpid(), "socket": str(path), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        tmp = state_path(self.home).with_suffix(".tmp")
        tmp.write_text(json.dumps(state), encoding="utf-8")
        tmp.replace(state_path(self.home))
        _log(f"ready: {path}")

    def _stop(self, *_: Any) -> None:
        self.stopping = True

    # -- the loop --------------------------------------------------------------------------
    def serve(self) -> None:
        import selectors

        self._reap()  # runs that ended while this image started (a restart): nothing woke us for them
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ, "accept")
        sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self.stopping:
                for key, _ in sel.select():
                    if key.data == "wake":
                        try:
                            os.read(self.wake_r, 4096)
                        except BlockingIOError:
                            pass
                        self._reap()
                    elif not self.stopping:
                        try:
                            conn, _ = self.listener.accept()
                        except OSError as exc:  # out of descriptors, say: the next command may do better
                            _log(f"could not take a command: {exc}")
                            continue
                        self._handle(conn)
        finally:
            self._leave()

    def _leave(self) -> None:
        """Stop taking commands; runs under way go on (their clients wait for them)."""
        try:
            if json.loads(state_path(self.home).read_text())["pid"] == os.getpid():
                state_path(self.home).unlink()
        except (OSError, ValueError, KeyError):
            pass
        self.path.unlink(missing_ok=True)
        self.listener.close()
        _log("stopped")

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is None:  # an orphan of a run (this is its subreaper), now reaped
                continue
            ended = {"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"exit": os.waitstatus_to_exitcode(status)}
            _log(f"run {pid} ended: {ended}")
            try:
                _send_line(conn, ended)
            except OSError:
                pass
            conn.close()

    def _handle(self, conn: socket.socket) -> None:
        fds: list[int] = []
        try:
            conn.settimeout(10)
            if _peer_uid(conn) != os.getuid():
                raise PermissionError("another user")
            data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 20, 3)
            for fd in fds:  # the command's streams: never into a process this one executes
                os.set_inheritable(fd, False)
            request = _read_line(conn, data)
            if request is None or len(fds) != 3:
                raise ValueError("incomplete request")
            why = self._declines(request)
            if why:
                _log(f"declined a command: {why}")
                _send_line(conn, {"declined": why})
                conn.close()
                if why.startswith("the code"):
                    for fd in fds:  # the command's output ends only when every copy is closed
                        os.close(fd)
                    fds = []
                    self._restart()
                return
            conn.settimeout(None)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                self._child(conn, fds, request)  # never returns
            try:
                os.setpgid(pid, pid)  # (the child does it too): its own group before anyone signals it
            except OSError:
                pass
            self.children[pid] = conn  # the run tells its client its pid when it is ready for signals
            _log(f"run {pid}: {' '.join(request['words'][:2])}")
        except Exception as exc:  # noqa: BLE001 - a bad request never ends the runner
            _log(f"a command went unserved: {type(exc).__name__}: {exc}")
            conn.close()
        finally:
            for fd in fds:
                os.close(fd)

    def _declines(self, request: dict[str, Any]) -> str:
        if request.get("executable") != sys.executable:
            return f"another Python ({request.get('executable')})"
        if request.get("code") != _code_root():
            return f"another photo-escape ({request.get('code')})"
        if prefect_environment(request.get("env") or {}) != self.prefect_env:
            return "other Prefect settings in the environment"
        if _read_at_start(request.get("env") or {}) != self.start_env:
            return "other Python settings or HOME in the environment"
        import threading

        if threading.active_count() != 1:
            return "the runner has threads (a fork would not be safe)"
        if code_stamp() != self.stamp:
            return "the code, the installed packages or the Prefect profile changed since the runner started"
        return ""

    def _restart(self) -> None:
        """Start again on the code as it is now (the socket is bound again by the new image)."""
        _log("starting again on the changed code")
        self._leave()
        os.execv(sys.executable, [sys.executable, "-m", "photo_escape.runner", "--home", str(self.home)])

    # -- a run -----------------------------------------------------------------------------
    def _child(self, conn: socket.socket, fds: list[int], request: dict[str, Any]) -> None:
        """In the fork: become the command (its process group, descriptors, folder,
        environment, arguments), run it, and end with its status."""
        global _in_runner
        code = 1
        try:
            _in_runner = True
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGCHLD, signal.SIGTERM):
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self.listener.close()
            os.close(self.wake_r)
            os.close(self.wake_w)
            for other in self.children.values():
                other.close()
            os.setpgid(0, 0)
            for target, fd in zip((0, 1, 2), fds):
                os.dup2(fd, target)
            for fd in fds:
                if fd > 2:
                    os.close(fd)
            os.chdir(request["cwd"])
            os.umask(int(request["umask"]))
            os.environ.clear()
            os.environ.update(request["env"])
            time.tzset()
            tempfile_reset()
            sys.argv = [request["argv0"], *request["words"]]
            sys.stdout.reconfigure(line_buffering=os.isatty(1))
            _send_line(conn, {"pid": os.getpid()})  # ready: the client forwards signals from now on
            _watch_client(conn)
            from photo_escape import cli

            code = cli.main()
        except SystemExit as exc:
            if isinstance(exc.code, int) or exc.code is None:
                code = exc.code or 0
            else:  # as Python itself ends on SystemExit("message")
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:  # noqa: BLE001 - as an uncaught exception ends a command
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            _end_child(conn, code)


def _watch_client(conn: socket.socket) -> None:
    """End this run as its client ended when the client goes away (killed by SIGKILL)."""
    import threading

    def watch() -> None:
        try:
            while conn.recv(4096):
                pass
        except OSError:
            pass
        if not _client_told:
            os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="runner-client", daemon=True).start()


def tempfile_reset() -> None:
    """Let ``tempfile`` find the command's TMPDIR (it keeps the first one it found)."""
    import tempfile

    tempfile.tempdir = None


def _end_child(conn: socket.socket, code: int) -> None:
    """End as the command's own process would, then tell the client: first what Python's
    own exit does (wait for the threads and run what they registered: Prefect's events
    are drained there; then the exit handlers: Prefect's logs, the hashing workers), the
    output flushed, then the status to the client (the run says it itself: the runner may
    have started again on changed code meanwhile), then the end."""
    global _client_told
    import atexit
    import threading

    from photo_escape import cli

    status = cli._exit_status if cli._exit_status is not None else code
    try:
        atexit.unregister(cli._end_without_finalization)  # this ends the process below, after telling
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001 - the status still goes to the client
        pass
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        _client_told = True
        try:
            _send_line(conn, {"exit": int(status)})
        except (OSError, ValueError, TypeError):
            pass
        os._exit(int(status) if isinstance(status, int) else 1)


def _become_subreaper() -> None:
    """Orphans of a run (a worker whose run was killed) are reaped here, not left defunct."""
    try:
        import ctypes

        PR_SET_CHILD_SUBREAPER = 36
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} runner {os.getpid()}: {msg}", file=sys.stderr, flush=True)


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description="photo-escape's warm runner (started by `photo-escape server start`)")
    ap.add_argument("--home", required=True, help="PHOTO_ESCAPE_HOME")
    args = ap.parse_args()
    runner = Runner(Path(args.home))
    runner.start()
    runner.serve()
    sys.stderr.flush()
    os._exit(0)  # nothing to clean up that the kernel does not


if __name__ == "__main__":  # run as the imported module, whose state the commands it forks see
    from photo_escape import runner as _module

    _module.main()
