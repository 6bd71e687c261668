"""The process table, for tests that check no process outlives what started it.

A process whose parent dies is adopted by init and is nobody's descendant any more, so a
search of this process's children would miss exactly the processes that outlived their
parent. ``adopt_orphans`` makes this process their adopter instead (Linux's child
subreaper): they stay among ``psutil.Process().children(recursive=True)`` until they exit,
and end as zombies of this process until ``reap_zombies`` collects them. Nothing here reaps
on its own: a test's own ``Popen`` whose child was reaped behind its back reads exit code 0.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Iterable

import psutil

PR_SET_CHILD_SUBREAPER = 36
"""prctl option (linux/prctl.h): orphaned descendants are re-parented to this process."""


def adopt_orphans() -> bool:
    """Make this process the child subreaper of its descendants; False where it cannot (not Linux)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    return prctl(PR_SET_CHILD_SUBREAPER, 1) == 0


def reap_zombies() -> None:
    """Collect this process's children that have exited (adopted ones included): only when no
    ``Popen`` of this process still waits for its child."""
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.NoSuchProcess, ChildProcessError):
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)


def alive(processes: Iterable[psutil.Process]) -> list[psutil.Process]:
    """Those of ``processes`` still running: a zombie has exited and only waits to be reaped, a
    pid reused by a newer process is not the one recorded (psutil compares start times), and a
    process this user may not read is none of its own."""
    running = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                running.append(process)
    return running


def descendants() -> list[psutil.Process]:
    """This process's living descendants."""
    return alive(psutil.Process().children(recursive=True))


def wait_until_gone(processes: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Those of ``processes`` still alive after up to ``timeout`` seconds."""
    processes = list(processes)
    deadline = time.monotonic() + timeout
    while True:
        left = alive(processes)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def kill(processes: Iterable[psutil.Process]) -> None:
    """SIGKILL each of ``processes`` that is still alive, and wait until it has died."""
    processes = alive(processes)
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    wait_until_gone(processes, timeout=10)


def describe(processes: Iterable[psutil.Process]) -> str:
    """One line per process: pid, parent, resident memory, age and command."""
    lines = []
    for process in processes:
        try:
            with process.oneshot():
                age = time.time() - process.create_time()
                lines.append(f"pid {process.pid} (parent {process.ppid()}), {process.memory_info().rss >> 20} MiB "
                             f"resident, {age:.0f} s old: {' '.join(process.cmdline())[:200]}")
        except psutil.NoSuchProcess:
            lines.append(f"pid {process.pid}: exited")
    return "\n".join(lines)


def stop_process_group(process: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM to the process group that ``process`` leads (started with ``start_new_session``),
    SIGKILL to what is left of it after ``grace`` seconds. A server's own children (kedro-viz
    serves from a process it spawns) are in the group; stopping only its first process left
    them running."""
    for sig, wait_s in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait_s)
        members = [p for p in alive(psutil.process_iter()) if _group(p) == process.pid]
        if process.poll() is not None and not wait_until_gone(members, timeout=wait_s):
            return


def _group(process: psutil.Process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except (ProcessLookupError, PermissionError):
        return None
