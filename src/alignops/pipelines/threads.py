"""Torch threads per node under ParallelRunner: every core busy, none oversubscribed.

``make run`` runs the DAG with Kedro's ParallelRunner, one worker process per core. With
one torch thread per worker (what it did before), a stage that runs alone (SFT,
evaluation, the gate: about half of the default run) kept one core of two busy. Here
each node gets the cores shared among the compute-heavy nodes (tagged ``compute``) that
the DAG lets run beside it: SFT and evaluation get every core, reward model, audit judge,
PPO and DPO share them. The plan follows from the DAG alone, not from which node happens
to be running when, so a run stays deterministic (CPU results depend on the thread count).
An ``OMP_NUM_THREADS`` set by the user wins over it; a sequential ``kedro run`` gives
every node every core already.
"""

from __future__ import annotations

import os

from kedro.pipeline import Pipeline

COMPUTE_TAG = "compute"
"""Nodes that keep a core busy for more than a few seconds (training, sampling)."""
THREADS_ENV = "ALIGNOPS_NODE_THREADS"
"""The plan, ``node=threads`` comma-separated, exported for ParallelRunner's workers."""


def thread_plan(pipeline: Pipeline, cores: int) -> dict[str, int]:
    """Node name -> torch threads: ``cores`` divided by the largest number of compute nodes
    that may run at the same time as it (itself included), at least 1."""
    parents = {node: set(deps) for node, deps in pipeline.node_dependencies.items()}
    ancestors: dict = {}
    for node in pipeline.nodes:  # topologically sorted: parents come first
        ancestors[node] = set().union(*(ancestors[p] | {p} for p in parents.get(node, ())))
    compute = [node for node in pipeline.nodes if COMPUTE_TAG in node.tags]

    def apart(a, b) -> bool:  # neither waits for the other: they may run at the same time
        return a is not b and a not in ancestors[b] and b not in ancestors[a]

    plan = {}
    for node in pipeline.nodes:
        beside = [c for c in compute if apart(c, node)]
        plan[node.name] = max(1, cores // (1 + _most_at_once(beside, apart)))
    return plan


def _most_at_once(nodes: list, apart) -> int:
    """The largest number of ``nodes`` that may all run at once (pairwise ``apart``): the
    widest antichain, by brute force over a DAG's handful of compute nodes."""
    if len(nodes) > 16:  # not a DAG of stages; assume they all may
        return len(nodes)
    best = 0
    for mask in range(1 << len(nodes)):
        chosen = [n for i, n in enumerate(nodes) if mask >> i & 1]
        if len(chosen) > best and all(apart(a, b) for i, a in enumerate(chosen) for b in chosen[i + 1 :]):
            best = len(chosen)
    return best


def encode(plan: dict[str, int]) -> str:
    return ",".join(f"{name}={threads}" for name, threads in plan.items())


def planned_threads(node_name: str, environ: dict[str, str] | None = None) -> int | None:
    """This node's threads from the exported plan, or None without one."""
    value = (os.environ if environ is None else environ).get(THREADS_ENV)
    if not value:
        return None
    plan = dict(item.rsplit("=", 1) for item in value.split(","))
    return int(plan[node_name]) if node_name in plan else None
