"""A process that dies with its parent (Linux ``PR_SET_PDEATHSIG``): the kernel signals it when
the thread that started it ends, however that ends, SIGKILL included.

Used by ParallelRunner's forked workers (``alignops.processes``), by the launcher of a
launched stage (``training.launch``'s shim) and by its ranks, which torchrun starts each in a
session of its own: without it, a SIGKILLed launcher left its ranks training for no one.
Standard library only.
"""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1
"""prctl option: the signal this process gets when its parent thread ends (linux/prctl.h)."""


def _load_prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # resolved now: no dlopen in a fresh fork
    except (OSError, AttributeError):  # not Linux
        return None


_prctl = _load_prctl()


def die_with_parent(parent: int, sig: int = signal.SIGKILL) -> bool:
    """Have the kernel send ``sig`` to this process when the thread that forked it ends, and
    send it now if its parent, pid ``parent``, is already gone. False where there is no prctl."""
    if _prctl is None:
        return False
    _prctl(PR_SET_PDEATHSIG, int(sig))
    if os.getppid() != parent:  # it died before the request was in place: adopted already
        os.kill(os.getpid(), sig)
    return True


def prctl_available() -> bool:
    """Whether this platform has prctl (Linux)."""
    return _prctl is not None
