"""Pure torch math for RLHF: masked reductions, log-probs, losses, GAE, KL estimators and controllers.

Nothing here imports kedro, mlflow or accelerate (``tests/test_layout.py``
checks it). Functions take tensors and an explicit mask and return tensors;
losses return ``(loss, stats)`` with detached stats. The two KL controllers are
the only state.
"""

from alignops.core.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_penalty,
)
from alignops.core.logprobs import (
    entropy_from_logits,
    logprobs_from_logits,
    selective_log_softmax,
    sequence_logprobs,
    shifted_token_logprobs,
)
from alignops.core.losses import DPO_LOSSES, bradley_terry_loss, dpo_loss, sft_loss
from alignops.core.masked import masked_mean, masked_var, masked_whiten
from alignops.core.ppo import explained_variance, gae, per_token_rewards, ppo_clip_loss, value_loss_clipped

__all__ = [
    "DPO_LOSSES",
    "KL_ESTIMATORS",
    "AdaptiveKLController",
    "FixedKLController",
    "bradley_terry_loss",
    "dpo_loss",
    "entropy_from_logits",
    "explained_variance",
    "gae",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_penalty",
    "logprobs_from_logits",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "per_token_rewards",
    "ppo_clip_loss",
    "selective_log_softmax",
    "sequence_logprobs",
    "sft_loss",
    "shifted_token_logprobs",
    "value_loss_clipped",
]
