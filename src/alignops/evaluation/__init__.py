"""Evaluation: sample every policy on held-out prompts, score it with the run's judges and the RM,
and summarise every figure with its paired bootstrap interval."""

from alignops.evaluation.judges import AUDIT, GOLD, Judge, reward_model_judge
from alignops.evaluation.policies import EvaluationConfig, PolicySamples, evaluate_policies, sample_policy
from alignops.evaluation.reward import reward_model_accuracy
from alignops.evaluation.summary import evaluate, summarise

__all__ = [
    "AUDIT",
    "GOLD",
    "EvaluationConfig",
    "Judge",
    "PolicySamples",
    "evaluate",
    "evaluate_policies",
    "reward_model_accuracy",
    "reward_model_judge",
    "sample_policy",
    "summarise",
]
