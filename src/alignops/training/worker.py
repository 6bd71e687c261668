"""The other machines of a multi-machine launch.

A stage whose ``accelerate_config`` spans several machines (``num_machines`` > 1, e.g.
``conf/accelerate/two_nodes.yaml``) is launched by the ``kedro run`` on the main machine
(machine rank 0), which writes the stage's hand-off folder into ``$ALIGNOPS_HANDOFF_DIR``, a
folder every machine sees. On each other machine, from the project folder (the same code and
config files), run::

    ALIGNOPS_HANDOFF_DIR=/shared/handoff python -m alignops.training.worker --machine-rank 1

It waits for hand-off folders, claims each one for its machine rank (a marker file created
exclusively, so two workers never join as the same machine), and runs that machine's share
of the ranks with the same ``accelerate launch`` command, ``--machine_rank N`` added. The
ranks meet at the config's ``main_process_ip:main_process_port``; only global rank 0 (on the
main machine) writes outputs and logs. ``--once`` serves one launch and exits with its code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from alignops.training.accelerate_config import HANDOFF_DIR_ENV, read_accelerate_config
from alignops.training.launch import (
    HANDOFF_PREFIX,
    SPEC_FILE,
    _run_process_group,
    launch_command,
    launch_environment,
)


def claim(folder: Path, machine_rank: int) -> bool:
    """Whether this worker is the one to join ``folder``'s launch as ``machine_rank``."""
    spec_file = folder / SPEC_FILE
    if not spec_file.is_file():
        return False
    machines = int(json.loads(spec_file.read_text()).get("launch", {}).get("machines", 1))
    if machine_rank >= machines:
        return False
    try:
        os.close(os.open(folder / f"machine_{machine_rank}.claimed", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def join(folder: Path, machine_rank: int) -> int:
    """Run this machine's ranks of ``folder``'s launch; the launcher's exit code."""
    launch = json.loads((folder / SPEC_FILE).read_text())["launch"]
    config = launch["accelerate_config"]
    settings = read_accelerate_config(Path(config))
    command = launch_command(folder, int(launch["num_processes"]), config, settings, machine_rank)
    print(f"worker (machine {machine_rank}): joining {folder.name}: {' '.join(command)}", file=sys.stderr, flush=True)
    return _run_process_group(command, launch_environment(int(launch["num_processes"]), config, settings))


def serve(handoff_dir: Path, machine_rank: int, once: bool = False, poll_s: float = 0.5) -> int:
    """Join every launch that appears in ``handoff_dir`` (the last exit code, with ``once``)."""
    if machine_rank < 1:
        raise ValueError("the main machine (rank 0) is the kedro run's; a worker serves machine rank 1 and up")
    seen: set[Path] = set()
    while True:
        for folder in sorted(handoff_dir.glob(f"{HANDOFF_PREFIX}*")):
            if folder in seen or not (folder / SPEC_FILE).is_file():
                continue
            seen.add(folder)
            if not claim(folder, machine_rank):
                continue
            code = join(folder, machine_rank)
            if once:
                return code
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alignops.training.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--machine-rank", type=int, required=True, help="this machine's rank (1 and up)")
    parser.add_argument("--handoff-dir", default=os.environ.get(HANDOFF_DIR_ENV),
                        help=f"the shared hand-off folder (default: ${HANDOFF_DIR_ENV})")
    parser.add_argument("--once", action="store_true", help="serve one launch, then exit with its code")
    args = parser.parse_args(argv)
    if not args.handoff_dir:
        parser.error(f"--handoff-dir or ${HANDOFF_DIR_ENV} is required")
    folder = Path(args.handoff_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return serve(folder, args.machine_rank, args.once)


if __name__ == "__main__":
    sys.exit(main())
