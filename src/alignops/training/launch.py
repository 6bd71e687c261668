"""One Kedro node, several processes: a training node that asks for them launches itself.

Kedro's DAG and its MLflow run happen once, in the ``kedro run`` process. A training
node whose stage configuration sets ``num_processes`` above 1, or names an
``accelerate_config`` file, does not train in that process: ``distributable`` writes the
node's inputs to a hand-off folder, starts the node again under

- ``torchrun --standalone --nproc_per_node N`` (no config file: CPU ranks on the gloo
  backend, or one GPU per rank; accelerate's ``Accelerator`` joins the process group
  torchrun sets up. ``accelerate launch --cpu --num_processes N`` starts one process
  without ``RANK``, so it cannot be the CPU launcher), or
- ``accelerate launch --config_file F`` (multi-GPU DDP, DeepSpeed, FSDP, several nodes:
  what ``conf/accelerate/`` holds; the file's own ``num_processes`` applies unless the
  stage sets one),

waits, and returns what rank 0 wrote back, so the catalog saves it where it always does.
Every rank runs the same training loop; only rank 0 logs metrics (``tracking.logger``),
writes checkpoint metadata and hands back outputs. Before handing back, the ranks
compare a digest of every model they trained: a mismatch (ranks that drifted apart)
fails the stage instead of registering one rank's model.

The run id, tracking and registry URIs travel in the environment, so rank 0 logs into the
``kedro run``'s MLflow run. A launch that fails, or a ``kedro run`` that is interrupted,
takes its whole process group down with it.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from alignops.training.accelerate_config import (
    HANDOFF_DIR_ENV,
    check_accelerate_config,
    check_sharded_stage,
    launch_processes,
    machines_of,
    read_accelerate_config,
)
from alignops.training.deathsig import die_with_parent
from alignops.training.handoff import model_digest, read_value, write_value

LAUNCHED_ENV = "ALIGNOPS_LAUNCHED"
"""Set in every launched rank: the node runs its loop in place instead of launching again."""
SPEC_FILE, RANKS_FILE = "launch.json", "ranks.json"
RUN_ID_ENV = "MLFLOW_RUN_ID"
"""MLflow's own variable for the run to log to; rank 0's ``tracking.logger`` reads it."""

P = ParamSpec("P")
R = TypeVar("R")


def check_launch_settings(config: Any) -> None:
    """``config.num_processes`` >= 1 and ``config.accelerate_config`` a path or None."""
    if not isinstance(config.num_processes, int) or config.num_processes < 1:
        raise ValueError(f"num_processes must be an integer >= 1, got {config.num_processes!r}")
    if config.accelerate_config is not None and not str(config.accelerate_config).strip():
        raise ValueError("accelerate_config must be a path to an accelerate config file, or null")


def wants_launch(params: Mapping[str, Any]) -> bool:
    """Whether a stage's parameters ask for a launch (and this is not already a launched rank)."""
    if os.environ.get(LAUNCHED_ENV):
        return False
    return int(params.get("num_processes") or 1) > 1 or bool(params.get("accelerate_config"))


def distributable(params_argument: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a training node whose stage parameters arrive as ``params_argument``.

    In place when one process suffices; otherwise ``launch`` runs the node's body in
    ``num_processes`` ranks and returns rank 0's result.
    """

    def decorate(node: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(node)

        @functools.wraps(node)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            bound = signature.bind(*args, **kwargs)
            params = bound.arguments[params_argument]
            if not wants_launch(params):
                return node(*args, **kwargs)
            return launch(node, dict(bound.arguments), params)

        return run

    return decorate


def launch_command(
    folder: Path, num_processes: int, accelerate_config: str | None, settings: Mapping[str, Any] | None = None,
    machine_rank: int = 0,
) -> list[str]:
    """The launcher's command line: ``torchrun`` or ``accelerate launch`` (see the module doc);
    ``settings`` is the config file as read already (else it is read here). A config for
    several machines launches this machine's share, ``machine_rank``."""
    worker = ["-m", __name__, str(folder)]
    if accelerate_config:
        config = Path(accelerate_config)
        settings = read_accelerate_config(config) if settings is None else settings
        check_accelerate_config(config, settings)
        accelerate = Path(sys.executable).with_name("accelerate")
        processes = ["--num_processes", str(num_processes)] if num_processes > 1 else []
        if machines_of(settings) > 1:
            processes += ["--machine_rank", str(machine_rank)]
        return [str(accelerate), "launch", "--config_file", str(config), *processes, *worker]
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc_per_node", str(num_processes), *worker,
    ]


def _run_id() -> str | None:
    """The ``kedro run``'s MLflow run: the active one, or the one its hook exported."""
    import mlflow

    active = mlflow.active_run()
    return active.info.run_id if active is not None else os.environ.get(RUN_ID_ENV) or None


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def launch_environment(
    num_processes: int, accelerate_config: str | None = None, settings: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """This process's environment plus what the ranks need: the MLflow run and stores, the
    package on the path, and a fair share of the cores per rank (unless OMP_NUM_THREADS is set).
    ``settings`` is the accelerate config file as read (FSDP without a GPU: CPU ranks)."""
    import mlflow

    package_root = str(Path(__file__).resolve().parents[2])  # the folder that holds `alignops`
    env = {
        **os.environ,
        LAUNCHED_ENV: "1",
        "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
        "MLFLOW_REGISTRY_URI": mlflow.get_registry_uri(),
        "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
    }
    kind = str((settings or {}).get("distributed_type"))
    if kind != "DEEPSPEED" and not _has_gpu():
        env.setdefault("ACCELERATE_USE_CPU", "true")  # else Accelerator ignores the launcher's CPU ranks
    if kind == "DEEPSPEED" and not _has_gpu():
        env.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed's CPU accelerator, on gloo (a CPU rank must not be `cpu`)
    run_id = _run_id()
    if run_id:
        env[RUN_ID_ENV] = run_id
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
    return env


HANDOFF_PREFIX = "alignops-launch-"
"""Hand-off folders are ``<temp>/alignops-launch-<pid of the kedro run>-<stage>-<random>``
(``$ALIGNOPS_HANDOFF_DIR/...`` when set)."""


def launch(node: Callable[..., R], arguments: dict[str, Any], params: Mapping[str, Any]) -> R:
    """Run ``node(**arguments)`` in the processes ``params`` asks for; rank 0's result."""
    accelerate_config = params.get("accelerate_config")
    settings = read_accelerate_config(Path(accelerate_config)) if accelerate_config else {}
    num_processes = launch_processes(int(params.get("num_processes") or 1), settings)
    stage = node.__module__.split(".")[-2] if node.__module__.count(".") >= 2 else node.__name__
    check_sharded_stage(stage, params, settings, str(accelerate_config))
    machines = machines_of(settings)
    shared = os.environ.get(HANDOFF_DIR_ENV)
    if shared:
        Path(shared).mkdir(parents=True, exist_ok=True)
    else:
        clear_abandoned_handoffs(Path(tempfile.gettempdir()))  # on a shared folder the pids are other hosts'
    folder = Path(tempfile.mkdtemp(prefix=f"{HANDOFF_PREFIX}{os.getpid()}-{stage}-", dir=shared or None))
    try:
        spec = {
            "function": f"{node.__module__}:{node.__qualname__}",
            "arguments": {name: write_value(folder / "inputs" / name, value) for name, value in arguments.items()},
            # what another machine's worker needs to join: the config (from the project folder) and sizes
            "launch": {"accelerate_config": accelerate_config, "num_processes": num_processes, "machines": machines},
        }
        partial = folder / f"{SPEC_FILE}.partial"
        partial.write_text(json.dumps(spec, indent=2))
        partial.rename(folder / SPEC_FILE)  # a worker never reads half a spec
        command = launch_command(folder, num_processes, accelerate_config, settings)
        print(f"{stage}: launching {num_processes} process(es): {' '.join(command)}", file=sys.stderr, flush=True)
        code = _run_process_group(command, launch_environment(num_processes, accelerate_config, settings))
        if code != 0:
            raise RuntimeError(
                f"{stage}: the {num_processes}-process launch failed with exit code {code}: {' '.join(command)}"
            )
        ranks = json.loads((folder / RANKS_FILE).read_text())
        check_ranks_agree(stage, ranks)
        on = f", {machines} machines" if machines > 1 else ""
        _tag_run(stage, f"{num_processes} ({'accelerate launch' if accelerate_config else 'torchrun'}{on})", ranks)
        outputs = tuple(read_value(folder / "outputs" / str(i), meta) for i, meta in enumerate(ranks["outputs"]))
        return outputs if ranks["tuple"] else outputs[0]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def clear_abandoned_handoffs(temp: Path) -> list[Path]:
    """Remove the hand-off folders (inputs and outputs, models among them) that a ``kedro run``
    killed by SIGKILL left in ``temp``: those whose owner, the pid in their name, is gone.
    The folders removed."""
    removed = []
    for folder in temp.glob(f"{HANDOFF_PREFIX}*"):
        pid = folder.name.removeprefix(HANDOFF_PREFIX).split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        except PermissionError:
            pass  # alive, another user's
    return removed


class LaunchInterrupted(KeyboardInterrupt):
    """This process got SIGTERM or SIGHUP while its ranks ran."""


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise LaunchInterrupted(f"stopped by {signal.Signals(signum).name}")


DIE_WITH_PARENT = (
    "import os, signal, sys\n"
    "from alignops.training.deathsig import die_with_parent\n"
    "die_with_parent(int(sys.argv[1]), signal.SIGTERM)  # SIGTERM now if the kedro run is already gone\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)
"""Run before the launcher, in its own process: SIGTERM when the ``kedro run`` dies, even by
SIGKILL (Linux; kept across exec); torchrun and accelerate pass a SIGTERM on to their ranks.
A shim rather than ``preexec_fn``, which is unsafe in a process with threads."""


def _run_process_group(command: list[str], env: dict[str, str]) -> int:
    """Run ``command`` in a process group of its own. Ctrl-C, SIGTERM or SIGHUP to this
    process, or an error while waiting, stops the whole group first; a SIGKILL of this
    process reaches the launcher as SIGTERM. Whatever is left of the group once the
    launcher has exited is killed."""
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = {}
    if on_main_thread:
        previous = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGTERM, signal.SIGHUP)}
    shim = [sys.executable, "-c", DIE_WITH_PARENT, str(os.getpid())]
    process = subprocess.Popen([*shim, *command], env=env, start_new_session=True)
    try:
        return process.wait()
    except BaseException:
        _stop_group(process)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        try:
            os.killpg(process.pid, signal.SIGKILL)  # stragglers of a launcher that has exited
        except (ProcessLookupError, PermissionError):
            pass


def _stop_group(process: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _tag_run(stage: str, processes: str, ranks: Mapping[str, Any]) -> None:
    """On the ``kedro run``'s MLflow run: how the stage was launched, and the digest every
    rank agreed on for each model it returned (``model_digest`` of the saved model matches)."""
    from mlflow.tracking import MlflowClient

    run_id = _run_id()
    if run_id is None:
        return
    client = MlflowClient()
    client.set_tag(run_id, f"launch.{stage}.processes", processes)
    client.set_tag(run_id, f"launch.{stage}.model_sha256", ",".join(d for d in ranks["digests"][0] if d))


def check_ranks_agree(stage: str, ranks: Mapping[str, Any]) -> None:
    """Every rank trained the same parameters (one digest per model output, per rank)."""
    digests = ranks["digests"]
    if any(rank != digests[0] for rank in digests[1:]):
        raise RuntimeError(f"{stage}: the ranks' models differ after training ({digests}); not handing any back")


# --- the rank side ------------------------------------------------------------------------------


def run_rank(folder: Path) -> None:
    """One rank: read the node's inputs, run it in place, then rank 0 writes the outputs
    and every rank's model digests (gathered over the process group the loop joined)."""
    import importlib

    import torch.distributed as dist

    spec = json.loads((folder / SPEC_FILE).read_text())
    module_name, qualname = spec["function"].split(":")
    node = importlib.import_module(module_name)
    for part in qualname.split("."):
        node = getattr(node, part)
    arguments = {name: read_value(folder / "inputs" / name, meta) for name, meta in spec["arguments"].items()}
    result = node(**arguments)

    outputs = result if isinstance(result, tuple) else (result,)
    digests = [model_digest(value) for value in outputs]
    joined = dist.is_available() and dist.is_initialized()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not (joined and dist.get_world_size() == world_size):
        raise RuntimeError(f"{spec['function']}: this rank trained alone instead of in a group of {world_size}")
    rank = dist.get_rank() if joined else 0
    every_rank = [digests]
    if joined:
        every_rank = [None] * dist.get_world_size()
        dist.all_gather_object(every_rank, digests)
    if rank == 0:
        metas = [write_value(folder / "outputs" / str(i), value) for i, value in enumerate(outputs)]
        ranks = {"tuple": isinstance(result, tuple), "outputs": metas, "digests": every_rank}
        (folder / RANKS_FILE).write_text(json.dumps(ranks, indent=2))
    if joined:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    if not os.environ.get(LAUNCHED_ENV):
        sys.exit(f"{__name__} runs a node's ranks for alignops' launcher; run `kedro run` instead")
    # torchrun starts each rank in a session of its own: a rank dies with its launcher (a
    # SIGKILLed one included) instead of training on for no one
    die_with_parent(os.getppid())
    run_rank(Path(sys.argv[1]))
    # Everything is written, flushed and the group destroyed. Skip the interpreter's teardown:
    # DeepSpeed's ZeRO-3 leaves a C++ thread that aborts it now and then ("terminate called
    # without an active exception", 1 of 7 two-rank DPO runs here), failing a finished launch.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
