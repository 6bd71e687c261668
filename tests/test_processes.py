"""No process outlives its run: ``kedro run --runner ParallelRunner`` stopped by SIGTERM or
SIGKILL while its workers train, or failing in them, leaves none of its processes alive
(``alignops.processes``; before it, both workers and the runner's manager lived on).

The run trains the reward model and DPO side by side, two ParallelRunner workers, from the
SFT model of the shared upstream snapshot, with steps enough to still be training when it is
stopped. The test process adopts orphans (``tests.processes``), so a process that outlived
the run is still found below it; a mark in the run's environment, which every process it
forks inherits, tells the run's processes from those that other tests of this worker start.
A plain forking script checks the rule itself in a second.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from tests import processes
from tests.helpers import KEDRO

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the kernel's parent-death signal is Linux's")

BRANCHES = ("train_reward", "train_dpo")
"""The two training nodes ParallelRunner runs at once, one per worker."""
ENDLESS = "reward.max_steps=100000,reward.checkpoint_every=0,dpo.max_steps=100000,dpo.checkpoint_every=0"
"""Training that outlasts the test by far: the run is stopped while both nodes are inside it."""
RUN_MARK = "ALIGNOPS_TEST_RUN"


class Run:
    """``kedro run --runner ParallelRunner --env test --pipelines reward,dpo <args>`` in
    ``project``, as a user types it, and the processes it starts."""

    def __init__(self, project: Path, log: Path, *args: str) -> None:
        self.mark, self.log = uuid.uuid4().hex, log
        env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false",
               "OMP_NUM_THREADS": "1", RUN_MARK: self.mark}
        with open(log, "w") as out:
            self.process = subprocess.Popen(
                [str(KEDRO), "run", "--runner", "ParallelRunner", "--env", "test", "--pipelines", "reward,dpo", *args],
                cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        self.seen: dict[int, psutil.Process] = {}

    def running_nodes(self) -> set[str]:
        return set(re.findall(r"Running node: (\w+)", self.log.read_text()))

    def children(self) -> list[psutil.Process]:
        """The run's processes alive now, below it or adopted by this process (the run's own excluded)."""
        found = []
        for process in processes.descendants():
            with contextlib.suppress(psutil.Error):
                if process.pid != self.process.pid and process.environ().get(RUN_MARK) == self.mark:
                    found.append(process)
        self.seen.update((p.pid, p) for p in found)
        return found

    def watch(self, until, timeout: float = 180) -> None:
        """Note the run's processes until ``until()`` holds or the run ends."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and not until() and time.monotonic() < deadline:
            self.children()
            time.sleep(0.1)

    def left_behind(self, timeout: float = 30) -> list[psutil.Process]:
        """The run's processes still alive once it has ended, after up to ``timeout`` seconds."""
        left = processes.wait_until_gone(self.seen.values(), timeout)
        return left + [p for p in self.children() if p not in left]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        processes.kill([*self.seen.values(), *self.children()])


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_parallel_run_killed_while_its_workers_train_leaves_no_process(sig, project_after, tmp_path):
    run = Run(project_after("sft"), tmp_path / "run.log", "--params", ENDLESS)
    try:
        run.watch(until=lambda: set(BRANCHES) <= run.running_nodes())
        assert set(BRANCHES) <= run.running_nodes(), run.log.read_text()[-3000:]
        # the runner's manager and its two workers, both inside a training node
        assert len(run.children()) >= 3, processes.describe(run.seen.values())
        os.kill(run.process.pid, sig)
        assert run.process.wait(timeout=60) == -sig
        left = run.left_behind()
        assert not left, f"alive after the run was killed by {sig.name}:\n{processes.describe(left)}"
    finally:
        run.stop()


@pytest.mark.slow
def test_a_parallel_run_that_fails_in_its_workers_leaves_no_process(project_copy, tmp_path):
    """No SFT model to start from: both workers' nodes fail to load their inputs."""
    run = Run(project_copy, tmp_path / "run.log")
    try:
        run.watch(until=lambda: False)
        assert run.process.wait(timeout=120) != 0
        assert "sft_model" in run.log.read_text(), run.log.read_text()[-3000:]
        # the manager at least: workers that fail at once can come and go between two looks (a busy machine)
        assert run.seen, run.log.read_text()[-3000:]
        left = run.left_behind()
        assert not left, processes.describe(left)
    finally:
        run.stop()


FORKS = """
import os, sys, threading, time
from alignops.processes import children_die_with_this_process

children_die_with_this_process()

def fork_a_sleeper():
    child = os.fork()
    if child == 0:
        time.sleep(600)
        os._exit(0)
    print(child, flush=True)

fork_a_sleeper()
thread = threading.Thread(target=fork_a_sleeper)
thread.start()
thread.join()
time.sleep(600)
"""


def test_a_main_thread_fork_dies_with_its_parent_a_thread_fork_lives_on():
    """The kernel ties a child to the thread that forked it: only the main thread's forks are tied
    (``alignops.processes``), so a child forked by a thread that has ended is not killed with it."""
    parent = subprocess.Popen([sys.executable, "-c", FORKS], stdout=subprocess.PIPE, text=True)
    children = []
    try:
        children = [psutil.Process(int(parent.stdout.readline())) for _ in range(2)]
        main_child, thread_child = children
        time.sleep(0.5)  # the forking thread has ended
        assert processes.alive(children) == children
        parent.kill()
        parent.wait()
        assert not processes.wait_until_gone([main_child], timeout=10)
        assert processes.alive([thread_child]) == [thread_child]  # the documented limit
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
        processes.kill(children)
