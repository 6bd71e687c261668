"""Evaluation: sample every policy on held-out prompts and score it with the gold judge and the RM."""

from alignops.evaluation.policies import EvaluationConfig, PolicySamples, evaluate_policies, sample_policy
from alignops.evaluation.reward import reward_model_accuracy

__all__ = ["EvaluationConfig", "PolicySamples", "evaluate_policies", "reward_model_accuracy", "sample_policy"]
