"""No process outlives its run: what a ``kedro run`` forks dies with it, however it ends.

Kedro's ParallelRunner forks its workers and a ``multiprocessing`` manager (the ``fork``
start method, Linux's default before Python 3.14). A forked process is not told when its
parent dies: after ``kedro run --runner ParallelRunner`` was stopped by SIGTERM or SIGKILL,
its workers and manager were adopted by init and lived on: a worker finished the node it was
training, for no one, then waited for a task on a queue that never closes (every worker holds
its write end). ``children_die_with_this_process`` has every child that this process forks
ask the kernel, first thing, for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``, Linux).

SIGKILL, not SIGTERM: a worker that turns SIGTERM into an exception (a node's handler, as
``training.launch`` installs while its ranks run) hands that exception to the dead parent
and goes back to waiting for work. A launch inside a worker still stops: its launcher dies
with the worker (``training.launch``'s shim) and takes the ranks with it.

Two limits. The kernel ties a child to the *thread* that forked it, so only forks from the
main thread are tied (ParallelRunner forks from it); a child forked by a short-lived thread
would otherwise die with that thread. And processes started by exec (the ``spawn`` and
``forkserver`` start methods, ``subprocess`` without a ``preexec_fn``) run no fork handler
and are not covered.
"""

from __future__ import annotations

import os
import threading

from alignops.training.deathsig import die_with_parent, prctl_available

_forker: tuple[int, bool] = (0, False)
"""(pid, forking on its main thread) of the process forking now, as the child finds it."""
_registered = False


def _before_fork() -> None:
    global _forker
    _forker = (os.getpid(), threading.current_thread() is threading.main_thread())


def _after_fork_in_child() -> None:
    parent, from_main_thread = _forker
    if from_main_thread:
        die_with_parent(parent)


def children_die_with_this_process() -> bool:
    """From now on every child this process forks on its main thread (and, the handlers being
    inherited, every child those children fork) dies by SIGKILL when its parent dies. Once per
    process however often it is called; False where there is no prctl (not Linux)."""
    global _registered
    if not prctl_available():
        return False
    if not _registered:
        os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
        _registered = True
    return True
