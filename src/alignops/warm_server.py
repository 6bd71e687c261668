"""The warm server behind ``alignops-run`` (``alignops.warm``): it imports what stages import,
once, then forks a fresh child per request that becomes the caller's ``kedro run``.

Started by the first caller as ``python -P -m alignops.warm_server <socket> <project root>``
(with the project's ``src`` on ``PYTHONPATH`` when the package is there), its output going to
``<socket>.log``. It stays single-threaded (a fork copies only the forking thread), never
initialises CUDA, and reaps its stages itself, answering each caller with its stage's status.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from alignops.warm import CALLER_PID, PACKAGE, SIGNALS, receive_message, send_message

PRELOAD = (
    "torch",
    "transformers",
    "accelerate",
    "peft",
    "safetensors",
    "pandas",
    "pyarrow",
    "mlflow",
    "mlflow.store.tracking.sqlalchemy_store",  # sqlalchemy and alembic: imported when a run opens the store
    "mlflow.store.model_registry.sqlalchemy_store",
    "git",  # GitPython, for the runs' git tags
    "IPython",  # Kedro asks whether it runs in a notebook
    "great_expectations",
    "kedro.framework.cli.cli",
    "kedro.framework.session",
    "kedro.runner",
    "kedro_mlflow",
    "kedro_datasets.pandas",
    "kedro_datasets.json",
    "kedro_datasets.matplotlib",
    "pyarrow.parquet",
    "pyarrow.dataset",
    "datasets",
)
"""Imported by the server before it forks a stage, besides the project's settings, its catalog
classes and every stage's pipeline module (``pipeline_registry.STAGES``); one that fails to
import is skipped. What is left to a stage: ~0.1 s of imports (a run's ``sys.modules`` against
the server's). DeepSpeed is left out on purpose: it probes the accelerator when imported."""

KILL_GRACE_S = 10.0
"""How long a stage whose caller is gone has, after SIGTERM, before SIGKILL."""


def _preload(log) -> dict[str, str]:
    """Import what stages import; the environment variables those imports set (Kedro's
    settings set some), to be set again in each stage's fresh environment."""
    import importlib
    import pkgutil

    before = dict(os.environ)
    started = time.monotonic()
    names = [*PRELOAD, f"{PACKAGE}.settings", f"{PACKAGE}.pipeline_registry", f"{PACKAGE}.hooks", f"{PACKAGE}.catalog"]
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - a stage that needs it will say so itself
            print(f"preload: {name} skipped: {error!r}", file=log, flush=True)
    try:  # the plugins' CLI modules (kedro-viz, kedro-mlflow, ...), which Kedro's CLI loads first thing
        from kedro.framework.cli.utils import load_entry_points

        for group in ("global", "project"):
            load_entry_points(group)
    except Exception as error:  # noqa: BLE001
        print(f"preload: Kedro's plugin commands skipped: {error!r}", file=log, flush=True)
    registry = sys.modules.get(f"{PACKAGE}.pipeline_registry")
    catalog = sys.modules.get(f"{PACKAGE}.catalog")
    later = [f"{PACKAGE}.pipelines.{stage}" for stage in getattr(registry, "STAGES", ())]
    if catalog is not None:  # the dataset classes the catalog names by string
        later += [f"{catalog.__name__}.{info.name}" for info in pkgutil.iter_modules(catalog.__path__)]
    for name in later:
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001
            print(f"preload: {name} skipped: {error!r}", file=log, flush=True)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # a CUDA context does not survive fork()
        raise RuntimeError("a preloaded module initialised CUDA: stages cannot be forked from this server")
    print(f"preloaded in {time.monotonic() - started:.1f} s", file=log, flush=True)
    return {name: value for name, value in os.environ.items() if before.get(name) != value}


def _run_stage(request: Mapping, fds: list[int], set_by_preload: Mapping[str, str]) -> int:
    """In the forked child: become the caller's ``kedro run`` and run it to its exit code."""
    os.setpgid(0, 0)  # the stage and all it starts: one group the caller's signals reach
    for signum in (*SIGNALS, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in zip((0, 1, 2), fds, strict=True):
        os.dup2(fd, target)
        os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=stream.isatty() or stream is sys.stderr)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for name, value in set_by_preload.items():
        os.environ.setdefault(name, value)
    os.environ[CALLER_PID] = str(request["pid"])
    rich = sys.modules.get("rich")
    if rich is not None:  # rich's console, made in the server, saw its log file: no terminal, no colour
        rich._console = None
    if "numpy" in sys.modules:  # a fresh process would draw its own entropy
        sys.modules["numpy"].random.seed()
    sys.argv = list(request["argv"])
    from kedro.framework.cli.cli import main as kedro_main

    try:
        kedro_main()
    except SystemExit as done:
        code = done.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


def _read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    """One request from ``conn``: a stage to run (with the caller's three descriptors) or
    ``{"stop": true}``. ValueError for anything else (its descriptors closed)."""
    data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 20, 3)
    try:
        request = receive_message(conn, bytearray(data))
        if request is None:
            raise ValueError("the caller hung up before its request was whole")
        if not request.get("stop") and len(fds) != 3:
            raise ValueError(f"expected 3 file descriptors, got {len(fds)}")
    except (ValueError, AttributeError) as error:
        for fd in fds:
            os.close(fd)
        raise ValueError(str(error)) from error
    return request, fds


def _fork_stage(
    conn: socket.socket, request: Mapping, fds: list[int], closing: Iterable[socket.socket],
    set_by_preload: Mapping[str, str],
) -> int:
    """Fork the stage ``request`` asks for; its pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for other in closing:
                other.close()
            conn.close()
            code = _run_stage(request, fds, set_by_preload)
        except BaseException:  # noqa: BLE001 - report it, then end this child like a process
            import traceback

            traceback.print_exc()
        finally:
            import atexit

            atexit._run_exitfuncs()
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(code)
    for fd in fds:
        os.close(fd)
    return pid


def serve(sock_path: Path, root: Path, idle_s: float) -> None:
    """Preload, listen on ``sock_path``, fork a stage per request; exit after ``idle_s`` with
    no stage running and none asked for, or once the project's folder is gone."""
    log = sys.stderr
    set_by_preload = _preload(log)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = sock_path.with_name(f"{sock_path.name}.{os.getpid()}")
    listener.bind(str(staging))
    listener.listen(16)
    os.rename(staging, sock_path)  # callers connect only once it is listening
    identity = os.stat(sock_path).st_ino
    stages: dict[int, socket.socket] = {}
    stoppers: list[socket.socket] = []  # callers of stop_servers, answered by closing at exit
    doomed: dict[int, float] = {}  # stage pid -> when it is SIGKILLed if SIGTERM did not end it
    last_busy = time.monotonic()
    print(f"listening on {sock_path} (pid {os.getpid()})", file=log, flush=True)
    try:
        # root goes with a finished `dvc exp run --queue` workspace
        while stages or (not stoppers and time.monotonic() - last_busy < idle_s and root.is_dir()):
            if stoppers and listener.fileno() != -1:  # no new stage once asked to stop
                _unlink_if(sock_path, identity)
                listener.close()
            watched = [conn for pid, conn in stages.items() if pid not in doomed]
            listening = [listener] if listener.fileno() != -1 else []
            ready, _, _ = select.select([*listening, *watched], [], [], 0.2)
            for item in ready:
                if item is listener:
                    conn, _ = listener.accept()
                    last_busy = time.monotonic()
                    try:
                        request, fds = _read_request(conn)
                    except (ValueError, OSError) as error:
                        with contextlib.suppress(OSError):
                            send_message(conn, {"error": str(error)})
                        conn.close()
                        continue
                    if request.get("stop"):
                        stoppers.append(conn)
                        continue
                    pid = _fork_stage(conn, request, fds, [listener, *stages.values(), *stoppers], set_by_preload)
                    stages[pid] = conn
                    send_message(conn, {"pid": pid})
                    print(f"stage {pid}: started", file=log, flush=True)
                else:  # a caller's end of stream: it is gone, and so must its stage be
                    pid = next(p for p, c in stages.items() if c is item)
                    if not item.recv(1):
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(pid, signal.SIGTERM)
                        doomed[pid] = time.monotonic() + KILL_GRACE_S
            for pid, when in list(doomed.items()):
                if time.monotonic() > when:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
            while stages:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                conn = stages.pop(pid, None)
                doomed.pop(pid, None)
                if conn is not None:
                    code = os.waitstatus_to_exitcode(status)
                    with contextlib.suppress(OSError):
                        send_message(conn, {"status": code})
                    conn.close()
                    print(f"stage {pid}: exit {code}", file=log, flush=True)
                last_busy = time.monotonic()
    finally:
        _unlink_if(sock_path, identity)
        listener.close()
        for conn in stoppers:
            conn.close()
        print("exiting", file=log, flush=True)


def _unlink_if(path: Path, inode: int) -> None:
    """Remove this server's socket file, not one a newer server has put in its place."""
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == inode:
            path.unlink()


if __name__ == "__main__":
    if len(sys.argv) == 3:
        serve(Path(sys.argv[1]), Path(sys.argv[2]), float(os.environ.get("ALIGNOPS_WARM_IDLE", "120")))
    else:
        sys.exit(f"usage: python -m {PACKAGE}.warm_server <socket> <project root>  (started by alignops-run)")
