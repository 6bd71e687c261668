"""``alignops-run``: ``kedro run`` in a warm interpreter, for DVC's one process per stage.

``dvc repro`` starts one ``kedro run --pipelines <stage>`` per stage, and each pays the
interpreter's start-up before doing any work: torch and transformers (about 2.5-5 s on
a 2-core machine), MLflow (1.5-3.5 s), Great Expectations, Kedro's CLI and plugins. Over
the default DAG's twelve stages that was about 65 s, nearly a quarter of the DAG's own
work. ``alignops-run <kedro run's arguments>`` runs the same ``kedro run`` in a child
forked from a server that imported all of that once, so a stage starts in well under a
second (the *fork server* pattern of ``multiprocessing``'s ``forkserver`` with preloaded
modules, and of Ruby's Spring or Zeus).

What the child is, compared with a cold ``kedro run``:

- the same code: the server is keyed by a fingerprint of the project's package files,
  the interpreter and its installed packages, and every environment variable a module
  could have read at import (all but DVC's per-stage ones and shell bookkeeping), so a
  change to any of them starts a new server instead of running stale modules;
- the caller's standard input, output and error (passed over the socket, ``SCM_RIGHTS``),
  working directory, environment and ``sys.argv``: progress bars see the caller's
  terminal, DVC sees the stage's output, MLflow tags the run with the same command;
- a fresh process state: each stage is a new fork of a server that never ran one;
- the caller's signals: SIGINT, SIGTERM, SIGHUP reach the stage's whole process group,
  and a caller killed outright (SIGKILL) takes the stage with it;
- the caller exits with the stage's exit status.

The server (``alignops.warm_server``) listens on a Unix socket in a private (0700) folder
of the user's, never on a network port, and exits after ``ALIGNOPS_WARM_IDLE`` seconds (120)
with nothing to run, or when asked (``python -m alignops.warm stop``).
``ALIGNOPS_WARM=0`` runs a plain ``kedro run`` instead (as does any platform without
Unix sockets); a server that fails to start does too, after naming its log.

This module is imported by every call of ``alignops-run``: it imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from kedro.utils import find_kedro_project  # kedro/utils.py imports only the standard library

PACKAGE = __package__
CALLER_PID = "ALIGNOPS_CALLER_PID"
"""Set in a stage's environment to the pid of the ``alignops-run`` it runs for: its parent
as far as process ancestry goes (``tracking.lineage`` finds the DVC process from it)."""
VOLATILE = ("PWD", "OLDPWD", "SHLVL", "_", CALLER_PID, "ALIGNOPS_WARM_IDLE", "ALIGNOPS_WARM_DIR")
"""Environment variables left out of the server's key: shell bookkeeping, this module's own,
and what changes from stage to stage (``DVC_*`` too). Nothing reads them at import time."""
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
START_TIMEOUT_S = 180.0


# --- the key: which server may run this call --------------------------------------------


def _local_package(root: Path) -> Path | None:
    """The package in the project's ``src``, which Kedro puts first on ``sys.path``, if it is there."""
    local = root / "src" / PACKAGE
    return local if (local / "__init__.py").is_file() else None


def package_dir(root: Path) -> Path | None:
    """Where the stage's ``import alignops`` finds the package: the project's ``src`` or,
    failing that, the installed one."""
    local = _local_package(root)
    if local is not None:
        return local
    from importlib.util import find_spec

    spec = find_spec(PACKAGE)
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def _tree_stats(folder: Path) -> Iterable[str]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                stat = os.stat(path)
                yield f"{path}\0{stat.st_mtime_ns}\0{stat.st_size}"


def server_key(root: Path, environ: Mapping[str, str]) -> str:
    """A digest of everything a server's preloaded modules depend on: the interpreter, its
    installed packages (a ``pip install`` touches site-packages), the project's package files,
    and the environment at import time."""
    digest = hashlib.sha256()
    site = {sysconfig.get_path(name) for name in ("purelib", "platlib")}
    parts = [sys.executable, str(root), *(f"{p}\0{os.stat(p).st_mtime_ns}" for p in sorted(site) if os.path.isdir(p))]
    package = package_dir(root)
    parts += [str(package), *(_tree_stats(package) if package else ())]
    parts += sorted(
        f"{name}={value}" for name, value in environ.items() if name not in VOLATILE and not name.startswith("DVC_")
    )
    for part in parts:
        digest.update(part.encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()[:20]


def runtime_dir() -> Path:
    """A folder only this user can enter, for the servers' sockets, locks and logs:
    ``ALIGNOPS_WARM_DIR``, or ``alignops-warm-<uid>`` in ``XDG_RUNTIME_DIR`` or /tmp."""
    chosen = os.environ.get("ALIGNOPS_WARM_DIR")
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp")
    folder = Path(chosen) if chosen else base / f"alignops-warm-{os.getuid()}"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.stat().st_uid != os.getuid() or folder.stat().st_mode & 0o077:
        raise PermissionError(f"{folder} must belong to this user alone (mode 0700)")
    return folder


# --- the wire: newline-delimited JSON, the caller's descriptors with the request ---------


def send_message(conn: socket.socket, message: Mapping, fds: list[int] | None = None) -> None:
    """``message`` as one JSON line; ``fds`` go with it (the other end takes them with ``recv_fds``)."""
    line = json.dumps(message).encode() + b"\n"
    if fds:
        sent = socket.send_fds(conn, [line], fds)
        conn.sendall(line[sent:])
    else:
        conn.sendall(line)


def receive_message(conn: socket.socket, buffer: bytearray) -> dict | None:
    """The next message on ``conn`` (None at end of stream)."""
    while b"\n" not in buffer:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return json.loads(line)


# --- the caller -------------------------------------------------------------------------


def kedro_executable() -> str:
    """The ``kedro`` installed beside this interpreter (the one a cold run would start)."""
    beside = Path(sys.executable).parent / "kedro"
    return str(beside) if beside.exists() else "kedro"


def run_cold(args: list[str]) -> None:
    """Replace this process with a plain ``kedro run``."""
    kedro = kedro_executable()
    os.execvp(kedro, [kedro, "run", *args])


def _connect(path: Path) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError:
        conn.close()
        return None
    return conn


def _start_server(folder: Path, key: str, root: Path, environ: Mapping[str, str]) -> socket.socket | None:
    """Connect to the server for ``key``, starting it first if there is none (one caller starts
    it; the others wait on the lock). None when it could not be started."""
    sock_path, log_path = folder / f"{key}.sock", folder / f"{key}.log"
    conn = _connect(sock_path)
    if conn is not None:
        return conn
    with open(folder / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        conn = _connect(sock_path)
        if conn is not None:
            return conn
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()  # a server that died without cleaning up
        env = dict(environ)
        local = _local_package(root)
        if local is not None:  # the server imports the package a cold kedro run would import
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(local.parent), env.get("PYTHONPATH")]))
        with open(log_path, "wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-P", "-m", f"{PACKAGE}.warm_server", str(sock_path), str(root)],
                cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            conn = _connect(sock_path)
            if conn is not None:
                return conn
            if server.poll() is not None:
                break
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            server.kill()
        print(f"alignops-run: the warm server did not start (see {log_path}); running kedro run cold", file=sys.stderr)
        return None


def _forward_signals(stage_pid: int) -> None:
    def forward(signum, _frame):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(stage_pid, signum)

    for signum in SIGNALS:
        signal.signal(signum, forward)


def _exit_like(status: int) -> None:
    """Exit as the stage did: with its code, or killed by its signal."""
    if status < 0:
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        status = 128 - status
    sys.exit(status)


def run(args: list[str]) -> None:
    """``kedro run <args>`` in a warm child; this process waits for it and exits with its status."""
    root = find_kedro_project(Path.cwd())
    if os.environ.get("ALIGNOPS_WARM", "1") == "0" or root is None or not hasattr(socket, "AF_UNIX"):
        run_cold(args)
    environ = dict(os.environ)
    folder = runtime_dir()
    conn = _start_server(folder, server_key(root, environ), root, environ)
    if conn is None:
        run_cold(args)
    for fd in (0, 1, 2):  # one the caller was started without is /dev/null for the stage (a closed one cannot be sent)
        try:
            os.fstat(fd)
        except OSError:
            os.dup2(os.open(os.devnull, os.O_RDWR), fd)
    with conn:
        request = {"argv": [kedro_executable(), "run", *args], "cwd": os.getcwd(), "env": environ, "pid": os.getpid()}
        send_message(conn, request, [0, 1, 2])
        buffer = bytearray()
        started = receive_message(conn, buffer)
        if started is None or "pid" not in started:
            print(f"alignops-run: the warm server refused the run: {started}", file=sys.stderr)
            sys.exit(1)
        _forward_signals(started["pid"])
        ended = receive_message(conn, buffer)  # signals forwarded meanwhile do not interrupt it (PEP 475)
        if ended is None:
            print("alignops-run: the warm server went away before the stage ended", file=sys.stderr)
            sys.exit(1)
    _exit_like(int(ended["status"]))


def main() -> None:
    run(sys.argv[1:])


def stop_servers(folder: Path | None = None, timeout_s: float = 60.0) -> int:
    """Ask every warm server in ``folder`` (this user's) to stop: each stops listening at once
    and exits when its running stages have ended. How many were asked (``python -m
    alignops.warm stop``; e.g. after upgrading packages, though a new server starts anyway)."""
    folder = runtime_dir() if folder is None else folder
    asked = 0
    for path in sorted(folder.glob("*.sock")):
        conn = _connect(path)
        if conn is None:
            continue
        with conn:
            conn.settimeout(timeout_s)
            send_message(conn, {"stop": True})
            with contextlib.suppress(OSError):
                while conn.recv(4096):  # the server closes it once it has exited its loop
                    pass
        asked += 1
    return asked


if __name__ == "__main__":
    if sys.argv[1:] == ["stop"]:
        print(f"asked {stop_servers()} warm server(s) to stop")
    else:
        sys.exit(f"usage: python -m {PACKAGE}.warm stop  (stages run alignops-run)")
