"""What went wrong when a file could not be written, said so that a person can act on it.

Shared by the checkpoints (``alignops.training.checkpoints``) and the catalog's model folders
(``alignops.catalog.models``); nothing here imports torch.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

FULL_DISK_BYTES = 16 << 20
"""Free space below which a failed write is put down to a full disk: torch.save reports one
as "unexpected pos ..." and safetensors as an IoError, neither as ENOSPC."""


def write_failure(error: BaseException | None, path: Path) -> str:
    """The cause of a failed write under ``path`` in a person's words: the OS's reason and
    errno, and whether the disk is full (read from the disk itself, before the partial write
    is cleared away)."""
    if error is None:
        return "another process of this launch failed to write its part"
    text = f"{error.strerror} (errno {error.errno})" if isinstance(error, OSError) and error.strerror else str(error)
    try:
        usage = os.statvfs(next(p for p in (path, *path.parents) if p.exists()))
        free = usage.f_bavail * usage.f_frsize
    except (OSError, StopIteration):
        free = None
    if (isinstance(error, OSError) and error.errno == errno.ENOSPC) or (free is not None and free < FULL_DISK_BYTES):
        text += f"; the disk is full ({free if free is not None else 0:,} bytes free): free space or write elsewhere"
    return text

