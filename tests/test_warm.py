"""alignops-run: `kedro run` forked from a warm server is the caller's `kedro run`.

A tiny real Kedro project (one node that records what it sees, then naps for as long as
``--params nap_s=`` says) is run through the real ``alignops-run`` console script, which
starts a real server over a real Unix socket; signals are real signals.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from alignops import warm, warm_server
from alignops.tracking import lineage

BIN = Path(sys.executable).parent
RUN = str(BIN / "alignops-run")

PIPELINE_REGISTRY = '''
import json, os, signal, sys, time
from pathlib import Path

from kedro.pipeline import Pipeline, node


def caught(signum, frame):
    Path(os.environ["NAP_RECORD"]).with_suffix(".signal").write_text(str(signum))
    sys.exit(3)


def nap(nap_s):
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, caught)
    seen = {"pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(), "argv": sys.argv,
            "stage": os.environ.get("DVC_STAGE"), "caller": os.environ.get("ALIGNOPS_CALLER_PID"),
            "torch_preloaded": "torch" in sys.modules}
    Path(os.environ["NAP_RECORD"]).write_text(json.dumps(seen))
    print("nap node says hello", flush=True)
    time.sleep(nap_s)


def register_pipelines():
    return {"__default__": Pipeline([node(nap, "params:nap_s", None, name="nap")])}
'''


@pytest.fixture(scope="module")
def sleepy(tmp_path_factory):
    """(project root, environment): a Kedro project of one napping node, with its own folder
    for warm servers; the servers it started are stopped afterwards."""
    root = tmp_path_factory.mktemp("sleepy")
    (root / "pyproject.toml").write_text(
        '[tool.kedro]\npackage_name = "sleepy"\nproject_name = "sleepy"\n'
        'kedro_init_version = "1.7.0"\nsource_dir = "src"\n'
    )
    package = root / "src" / "sleepy"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "settings.py").write_text('DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow",)\n')
    (package / "pipeline_registry.py").write_text(PIPELINE_REGISTRY)
    for env in ("base", "local"):
        (root / "conf" / env).mkdir(parents=True)
    (root / "conf" / "base" / "parameters.yml").write_text("nap_s: 0\n")
    (root / "conf" / "base" / "catalog.yml").write_text("{}\n")
    runtime = tmp_path_factory.mktemp("runtime") / "warm"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ALIGNOPS_", "DVC_"))},
        "ALIGNOPS_WARM_DIR": str(runtime),
        "ALIGNOPS_WARM_IDLE": "60",
        "KEDRO_DISABLE_TELEMETRY": "true",
        "NAP_RECORD": str(root / "record.json"),
    }
    yield root, env
    warm.stop_servers(runtime)
    for pid in _servers(env).values():
        assert _ends(pid, 30)


def _servers(env: dict[str, str]) -> dict[str, int]:
    """Socket name -> pid of each warm server started under ``env``'s runtime folder."""
    folder = Path(env["ALIGNOPS_WARM_DIR"])
    found = {}
    for log in folder.glob("*.log"):
        match = re.search(r"\(pid (\d+)\)", log.read_text(errors="replace"))
        if match:
            found[log.stem] = int(match.group(1))
    return found


def _record(root: Path) -> dict:
    return json.loads((root / "record.json").read_text())


def test_a_stage_is_the_callers_kedro_run_and_the_server_is_reused(sleepy):
    root, env = sleepy
    subfolder = root / "conf"  # found from inside the project, as kedro finds it
    seen = []
    for stage in ("first", "second"):
        caller = subprocess.Popen([RUN], cwd=subfolder, env={**env, "DVC_STAGE": stage},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = caller.communicate(timeout=300)
        assert caller.returncode == 0, err[-3000:]
        assert "nap node says hello" in out  # the stage wrote to the caller's own stdout pipe
        record = _record(root)
        assert record["stage"] == stage  # the caller's environment, not the server's
        assert record["caller"] == str(caller.pid)
        assert record["cwd"] == str(subfolder)
        assert record["argv"] == [str(BIN / "kedro"), "run"]
        assert record["torch_preloaded"]  # what the server imported once
        assert record["pid"] != caller.pid
        seen.append(record)
    servers = _servers(env)
    assert len(servers) == 1, servers  # DVC_STAGE is not part of the key: one server for both
    assert seen[0]["ppid"] == seen[1]["ppid"] == next(iter(servers.values()))
    assert seen[0]["pid"] != seen[1]["pid"]  # a fresh fork per stage

    # a variable modules may read at import time is part of the key: a new server
    other = subprocess.run([RUN], cwd=root, env={**env, "HF_HUB_OFFLINE": "0"}, capture_output=True,
                           text=True, timeout=300)
    assert other.returncode == 0, other.stderr[-3000:]
    assert len(_servers(env)) == 2
    assert _record(root)["ppid"] not in {s["ppid"] for s in seen}


def test_exit_status_and_error_are_the_cold_runs(sleepy):
    root, env = sleepy
    cold = subprocess.run([RUN, "--pipelines", "no_such_stage"], cwd=root, env={**env, "ALIGNOPS_WARM": "0"},
                          capture_output=True, text=True, timeout=300)
    warm_run = subprocess.run([RUN, "--pipelines", "no_such_stage"], cwd=root, env=env, capture_output=True,
                              text=True, timeout=300)
    assert cold.returncode != 0
    assert warm_run.returncode == cold.returncode
    assert "no_such_stage" in warm_run.stdout + warm_run.stderr
    assert "no_such_stage" in cold.stdout + cold.stderr


def test_cold_when_switched_off(sleepy):
    root, env = sleepy
    caller = subprocess.run([RUN], cwd=root, env={**env, "ALIGNOPS_WARM": "0"}, capture_output=True, text=True,
                            timeout=300)
    assert caller.returncode == 0, caller.stderr[-3000:]
    record = _record(root)
    assert record["caller"] is None and not record["torch_preloaded"]  # kedro itself, exec'd in place


def _napping(root: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    """A caller whose stage naps for a minute, and the stage's pid once its node runs."""
    record = root / "record.json"
    record.unlink(missing_ok=True)
    (root / "record.signal").unlink(missing_ok=True)
    caller = subprocess.Popen([RUN, "--params", "nap_s=60"], cwd=root, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not record.exists():
        assert time.monotonic() < deadline and caller.poll() is None, "the stage never started"
        time.sleep(0.1)
    time.sleep(0.2)
    return caller, _record(root)["pid"]


def _ends(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP, signal.SIGTERM])
def test_the_callers_signals_reach_the_stage(sleepy, signum):
    root, env = sleepy
    caller, stage = _napping(root, env)
    caller.send_signal(signum)
    assert caller.wait(timeout=60) == 3  # the stage's own exit status, from its handler
    assert (root / "record.signal").read_text() == str(int(signum))  # this signal, forwarded
    assert _ends(stage, 30)


def test_a_killed_caller_takes_its_stage_with_it(sleepy):
    root, env = sleepy
    caller, stage = _napping(root, env)
    caller.kill()  # SIGKILL: nothing forwarded; the server sees the caller's socket close
    caller.wait(timeout=30)
    assert _ends(stage, warm_server.KILL_GRACE_S + 20)


def test_the_key_follows_code_and_import_time_environment(tmp_path):
    root = tmp_path / "project"
    package = root / "src" / warm.PACKAGE
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    module = package / "stage.py"
    module.write_text("X = 1\n")
    env = {"HF_HUB_OFFLINE": "1", "DVC_STAGE": "sft", "PWD": "/somewhere"}
    key = warm.server_key(root, env)
    assert warm.package_dir(root) == package
    assert warm.server_key(root, {**env, "DVC_STAGE": "ppo", "PWD": "/elsewhere"}) == key
    assert warm.server_key(root, {**env, "HF_HUB_OFFLINE": "0"}) != key
    module.write_text("X = 22\n")  # an edit (size and mtime) is a new server
    assert warm.server_key(root, env) != key


def test_lineage_reads_the_callers_variable():
    assert lineage.CALLER_PID == warm.CALLER_PID
