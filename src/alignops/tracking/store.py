"""Several processes on one sqlite MLflow store: two ``kedro run``s in two terminals,
``dvc exp run --run-all --jobs 2``, two registrations at once.

sqlite lets one writer in at a time and MLflow makes every other wait for it, up to 20 s
(``PRAGMA busy_timeout`` on each of its sessions): runs that log side by side need nothing
more, and the journal mode stays sqlite's default (WAL would leave ``-wal``/``-shm`` files
that a plain copy of ``mlflow.db`` misses). Two steps are read-then-write across several
sessions, which sqlite cannot make atomic for MLflow; each is done under ``store_lock``, a
file lock beside the database, one process at a time:

- opening the store: on a new ``mlflow.db`` MLflow's tracking store creates the tables and
  runs every migration on first connection (mlflow 3.17, ``SqlAlchemyStore.__init__``,
  unguarded), then kedro-mlflow creates the experiment if it finds none. Two processes
  doing it at once both migrate, and one fails ("duplicate column name: step", "table
  registered_model_tags already exists", alembic's "Online migration expected to match one
  row"). The project hook opens the store under the lock (``alignops.hooks``).
- the promotion gate: it reads ``champion``, then moves it. Two gates at once both read the
  old champion and both promote, the policy's alias ending on one run's version and the
  reward model's possibly on the other's (``alignops.tracking.registration.register_run``,
  and a person's override, ``alignops.tracking.promote``).

For any other store (a tracking server) the lock is a no-op: the server creates its schema
once, but two gates on two machines could still both promote.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

LOCK_SUFFIX = ".lock"
"""The lock file is the database's name plus this (``mlflow.db.lock``; git-ignored)."""
LOCK_TIMEOUT_S = 300.0
"""What the lock guards takes seconds at most (a new store's migrations, ~2 s on two busy
cores; the gate's alias moves, milliseconds): a process kept waiting this long is waiting on
one that hangs, and says so."""


def sqlite_file(uri: str | None) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores and in-memory sqlite)."""
    prefix = "sqlite:///"
    if not uri or not uri.startswith(prefix) or uri == prefix + ":memory:":
        return None
    return Path(uri[len(prefix) :])


@contextmanager
def store_lock(uri: str | None, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Held by one process at a time, on this machine, for the sqlite store at ``uri``;
    re-entrant within a process. A no-op for other stores."""
    database = sqlite_file(uri)
    if database is None:
        yield
        return
    database = database.resolve()
    database.parent.mkdir(parents=True, exist_ok=True)  # as MLflow does before creating it
    # one lock object per file in this process (is_singleton): a second one on the same file
    # would wait for the first, in the same process, for ever
    lock = FileLock(f"{database}{LOCK_SUFFIX}", is_singleton=True)
    try:
        lock.acquire(timeout=timeout_s)
    except Timeout as error:
        raise TimeoutError(
            f"another process has held {lock.lock_file} for over {timeout_s:.0f} s "
            "(a hung `kedro run` or `alignops-promote` on the same MLflow store?)"
        ) from error
    try:
        yield
    finally:
        lock.release()
