"""Torch threads per node under ParallelRunner follow the DAG: a node alone gets every core."""

from __future__ import annotations

import pytest

from alignops.pipeline_registry import create_stage, journey
from alignops.pipelines.threads import COMPUTE_TAG, THREADS_ENV, encode, planned_threads, thread_plan


@pytest.fixture(scope="module")
def default_dag():
    pipeline = create_stage(journey()[0])
    for name in journey()[1:]:
        pipeline += create_stage(name)
    return pipeline


def test_the_training_and_sampling_nodes_are_tagged_compute(default_dag):
    tagged = {node.name for node in default_dag.nodes if COMPUTE_TAG in node.tags}
    assert tagged == {"train_sft", "train_reward", "train_audit_judge", "train_ppo", "train_dpo",
                      "evaluate_policies", "measure_frontier", "register_models"}


@pytest.mark.parametrize("cores", [2, 8, 16])
def test_a_node_alone_gets_every_core_and_the_parallel_branch_shares_them(default_dag, cores):
    plan = thread_plan(default_dag, cores)
    for alone in ("train_sft", "evaluate_policies", "measure_frontier", "register_models"):
        assert plan[alone] == cores, alone
    # DPO, the audit judge and reward -> PPO may all run at once: three share the cores
    for branch in ("train_dpo", "train_audit_judge", "train_reward", "train_ppo"):
        assert plan[branch] == max(1, cores // 3), branch
    assert all(threads >= 1 for threads in plan.values())


def test_the_plan_crosses_to_the_workers_through_the_environment(default_dag):
    plan = thread_plan(default_dag, 2)
    environ = {THREADS_ENV: encode(plan)}
    assert planned_threads("train_sft", environ) == 2
    assert planned_threads("train_dpo", environ) == 1
    assert planned_threads("not_a_node", environ) is None
    assert planned_threads("train_sft", {}) is None
