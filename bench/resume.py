"""What a kill costs: one stage run through, the same stage SIGKILLed part-way and run again
(it resumes from its last checkpoint), and what its checkpoints cost per step.

``python -m bench.resume`` in a project whose data/ holds the stage's inputs (after a
``kedro run``, or the stages before it). Three ``kedro run --pipelines <stage>`` in a row, as
a user types them: the uninterrupted one, one SIGKILLed when its progress bar reaches
``--kill-at`` of its steps, and the same command again. Writes
``data/08_reporting/bench_resume.json``:

- ``uninterrupted_s``, ``killed_s``, ``resumed_s``: wall seconds of each ``kedro run``;
- ``lost_s`` = killed + resumed - uninterrupted: what the kill cost, with its parts:
  ``redone_steps`` (from the last checkpoint to the kill) and the second start-up;
- ``checkpoint_s``: mean seconds of one save (its files' modification times, first to last),
  ``checkpoint_mb``, and ``overhead_s_per_step``: saves x seconds / steps.

The stage's own checkpoint folder is emptied before the first run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

STAGES = ("sft", "reward", "dpo", "ppo")


def _run(project: Path, command: list[str], stage: str, kill_at: float | None = None,
         ) -> tuple[float, str, int | None]:
    """Run ``kedro <command>``; with ``kill_at``, SIGKILL it when the stage's progress bar
    reaches that share of its total. Wall seconds, the output, and the step it was killed at."""
    env = {**os.environ, "COLUMNS": "300"}
    started = time.perf_counter()
    process = subprocess.Popen([str(Path(sys.executable).parent / "kedro"), *command], cwd=project, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, killed_at = b"", None
    bar = re.compile(rb"%s:\s+\d+%%\|[^|]*\| (\d+)/(\d+) \[" % stage.encode())  # the stage's own tqdm bar
    while True:
        chunk = process.stdout.read1(65536)
        if not chunk:
            break
        output += chunk
        if kill_at is not None and killed_at is None:
            for done, total in bar.findall(output[-4096:]):
                if int(done) >= math.ceil(kill_at * int(total)):
                    process.send_signal(signal.SIGKILL)
                    killed_at = int(done)
                    break
    process.wait()
    seconds = time.perf_counter() - started
    text = output.decode(errors="replace")
    if kill_at is None and process.returncode != 0:
        raise SystemExit(f"kedro {' '.join(command)} failed:\n{text[-3000:]}")
    return seconds, text, killed_at


def _saves(folder: Path) -> list[tuple[float, float]]:
    """(seconds, MB) of each checkpoint in ``folder``: first to last modification of its files."""
    found = []
    for checkpoint in sorted(folder.glob("step_????????")):  # complete ones
        files = [p for p in checkpoint.rglob("*") if p.is_file()]
        times = [p.stat().st_mtime for p in files]
        found.append((max(times) - min(times), sum(p.stat().st_size for p in files) / 1e6))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=Path.cwd())
    parser.add_argument("--env", default="local")
    parser.add_argument("--stage", choices=STAGES, default="ppo")
    parser.add_argument("--kill-at", type=float, default=0.6, help="share of the stage's steps (default 0.6)")
    parser.add_argument("--params", default="", help="runtime parameters of all three runs (ppo.checkpoint_every=5)")
    args = parser.parse_args(argv)

    project, stage = args.project.resolve(), args.stage
    command = ["run", "--pipelines", stage, "--env", args.env] + (["--params", args.params] if args.params else [])
    checkpoints = project / "data" / "06_models" / "checkpoints" / stage
    shutil.rmtree(checkpoints, ignore_errors=True)

    uninterrupted_s, _, _ = _run(project, command, stage)
    saves = _saves(checkpoints)
    every = None
    for part in args.params.split(","):
        if part.startswith(f"{stage}.checkpoint_every="):
            every = int(part.split("=", 1)[1])
    if every is None:
        conf = yaml.safe_load((project / "conf" / "base" / f"parameters_{stage}.yml").read_text())
        every = conf[stage]["checkpoint_every"]
    total_steps = max(int(p.name.removeprefix("step_")) for p in checkpoints.glob("step_????????"))  # the last

    shutil.rmtree(checkpoints, ignore_errors=True)
    killed_s, _, killed_at = _run(project, command, stage, kill_at=args.kill_at)
    last_checkpoint = max((int(p.name.removeprefix("step_")) for p in checkpoints.glob("step_????????")), default=0)
    resumed_s, resumed_log, _ = _run(project, command, stage)
    resumed_log = " ".join(resumed_log.split())
    match = re.search(rf"{stage}: resuming from \S+ \(step (\d+)\)", resumed_log)

    mean_save = sum(s for s, _ in saves) / max(len(saves), 1)  # of the kept ones (keep_checkpoints)
    written = math.ceil(total_steps / every) if every else 0  # every checkpoint_every steps and the last
    report = {
        "stage": stage,
        "command": "kedro " + " ".join(command),
        "steps": total_steps,
        "checkpoint_every": every,
        "uninterrupted_s": round(uninterrupted_s, 2),
        "killed_at_step": killed_at,
        "killed_s": round(killed_s, 2),
        "resumed_from_step": int(match.group(1)) if match else None,
        "resumed_s": round(resumed_s, 2),
        "lost_s": round(killed_s + resumed_s - uninterrupted_s, 2),
        "redone_steps": None if killed_at is None else killed_at - last_checkpoint,
        "checkpoints_written": written,
        "checkpoint_s": round(mean_save, 4),
        "checkpoint_mb": round(sum(mb for _, mb in saves) / max(len(saves), 1), 2),
        "overhead_s_per_step": round(mean_save * written / max(total_steps, 1), 4),
    }
    out = project / "data" / "08_reporting" / "bench_resume.json"
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
