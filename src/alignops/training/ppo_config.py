"""PPO's configuration: ``conf/base/parameters_ppo.yml`` mirrors ``PPOConfig`` one to one.

Defaults follow Huang et al. 2024 ("The N+ implementation details of RLHF with PPO")
where they transfer, and were tuned on the embedded world for a short CPU run
(``bench/ppo_quality.py`` measures the result against the gold judge;
``docs/tuning.md`` keeps the measurements behind these defaults, dated).
"""

from __future__ import annotations

from dataclasses import dataclass

from alignops.core import KL_ESTIMATORS
from alignops.models.value_head import CRITICS
from alignops.training.accelerator import check_mixed_precision
from alignops.training.checkpoints import check_resume_setting
from alignops.training.launch import check_launch_settings
from alignops.training.lora import lora_config
from alignops.training.optim import SCHEDULES

KL_CONTROLLER_NAMES = ("fixed", "adaptive")


@dataclass(frozen=True)
class PPOConfig:
    """RLHF with PPO against a reward model, with a per-token KL penalty to the SFT policy."""

    steps: int = 40
    """PPO iterations: each samples ``rollout_batch_size`` episodes, scores them and
    optimises on them for ``ppo_epochs``. 40 x 64 = 2,560 episodes: each of the world's
    prompts is seen a few times, not once."""
    rollout_batch_size: int = 64
    """Prompts sampled (one response each) per iteration and process. Generation is
    batched, so up to about this size a larger batch costs little more wall time on CPU
    (docs/tuning.md)."""
    minibatch_size: int = 16
    """Episodes per optimiser step; must divide ``rollout_batch_size``."""
    ppo_epochs: int = 2
    """Passes over each rollout batch (Stiennon et al. 2020 use 4, Ouyang et al. 2022 1–4).
    The optimiser steps are most of an iteration's CPU time, and on the embedded world 2
    epochs at twice the rate reached the reward of 4 epochs (same KL) in less time
    (docs/tuning.md)."""
    learning_rate: float = 6e-5
    """Peak AdamW rate of the policy. At this rate ``policy/approxkl`` and ``policy/clipfrac``
    stay small (docs/tuning.md); much higher and the replies degrade before the KL
    penalty bites."""
    value_learning_rate: float = 1e-3
    """Peak rate of the value side: the value head, or the whole critic under ``critic:
    reward_model``. The head is a single linear layer that starts at zero: at the policy's
    rate it would need thousands of updates to reach the scores' scale, and until then GAE
    has no baseline (``val/explained_variance`` stays at 0). A separate critic starts at the
    reward's scale and may want less; OpenRLHF and veRL run theirs at about 10x the actor's."""
    schedule: str = "linear"
    """Decay to 0 over all optimiser steps (Huang et al. 2024 anneal linearly)."""
    warmup_steps: int = 0
    """Optimiser steps of linear warm-up; Adam's early noise matters less here than in
    SFT because the clipped ratio already bounds each update."""
    adam_eps: float = 1e-5
    """Adam's epsilon: 1e-5 as in lm-human-preferences (TensorFlow's default) rather than 1e-8."""
    weight_decay: float = 0.0
    """Decay would pull the policy towards 0, not towards the SFT model it must stay near."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global L2 norm."""

    cliprange: float = 0.2
    """ε of the clipped surrogate: the ratio π/π_old counts only within [1-ε, 1+ε]."""
    cliprange_value: float = 0.2
    """How far a value prediction may move from its rollout value before its loss is clipped."""
    vf_coef: float = 0.1
    """Weight of the value loss. The value head shares the policy's trunk, so a large
    weight lets value gradients reshape the features the policy writes with (a separate
    critic's gradients never reach the policy; there it only weighs in the shared
    ``max_grad_norm`` clip)."""
    gamma: float = 1.0
    """Discount. 1: the reward arrives once, at the end of the response, and every token shares it."""
    lam: float = 0.95
    """GAE λ: lower trusts the value head more (less variance, more bias)."""
    critic: str = "value_head"
    """Where the values come from (``alignops.models.value_head.CRITICS``). ``value_head``: a
    linear head on the policy's own trunk, starting at zero. It costs no second model, so it
    suits small models and CPU runs, where a second forward/backward per minibatch is most
    of the stage's time. ``reward_model``: a separate critic initialised from the reward model
    (as TRL, OpenRLHF and veRL do): its features already predict the reward, so GAE has a
    baseline from the first iteration, and value-loss gradients stay out of the policy; the
    price is a second model's memory and its forward/backward, and the reward model must
    share the policy's tokenizer. The better choice once the models are large enough that
    the value loss's pull on a shared trunk, not compute, is what limits the policy."""

    kl_controller: str = "fixed"
    """``fixed`` (β = ``kl_coef`` throughout) or ``adaptive`` (β steered towards ``kl_target``,
    Ziegler et al. 2019)."""
    kl_coef: float = 0.08
    """β, the per-token KL penalty's weight (the initial β when adaptive). It is what keeps
    the policy from hacking the reward model (e.g. padding replies the annotators, and so
    the reward model, like long). On the world 0.08 beat 0.05 over five PPO seeds with one
    reward model (gold win rate 0.667 against 0.648) and with the ensemble (0.692 against
    0.682; docs/tuning.md)."""
    kl_target: float = 6.0
    """Adaptive only: target KL per response, in nats."""
    kl_horizon: float = 10000.0
    """Adaptive only: episodes over which β moves by at most ~20%."""
    kl_estimator: str = "k1"
    """Per-token KL estimator in the reward: ``k1`` (log π - log π_ref, unbiased) or ``k3``
    (never negative, lower variance)."""

    max_new_tokens: int = 96
    """Longest rollout response, on purpose shorter than ``generation.max_new_tokens``:
    room above a typical world reply for the policy to grow (reply lengths are in
    docs/tuning.md), while generation time grows with the longest row of each batch.
    Temperature, top-k and top-p are the run's ``generation`` settings."""
    missing_eos_score: float | None = -3.0
    """Score given instead of the reward model's to a response that did not end with EOS
    (hit ``max_new_tokens``); null keeps the model's score. Huang et al. 2024: without it
    the policy can learn to ramble past the limit. ~3 standard deviations of a normalised RM."""
    generation_batch_size: int = 64
    """Prompts per ``generate`` call."""
    reward_batch_size: int = 64
    """Episodes per reward-model forward."""

    ptx_coef: float = 0.0
    """Weight of the SFT loss on the demonstrations, added to every PPO update (InstructGPT's
    "PPO-ptx", OpenRLHF's ``ptx_coef``): each minibatch also takes the per-token NLL of as many
    demonstration replies, so the policy keeps what SFT taught while it climbs the reward.
    0 turns it off. The stage then needs the demonstrations (``sft_demonstrations``)."""

    demonstration_prompts: bool = True
    """Also roll out on the SFT demonstrations' prompts, not only the preference data's:
    more distinct prompts, so the policy sees each less often."""
    sample_every: int = 10
    """Iterations between saved sample generations (and always the last one)."""
    num_samples: int = 4
    """Rollout episodes saved as samples each time (step, prompt, response, score)."""
    checkpoint_every: int = 5
    """Iterations between checkpoints (policy, value head, optimizer, scheduler,
    RNG); 0 saves none. A kill costs at most this many iterations of work, and a rerun
    resumes (``resume``); the stage also saves after its last step, so a killed DAG run again
    loads the finished stages instead of training them. The default model saves in tens of
    milliseconds (docs/tuning.md). The catalog's ``ppo_checkpoints`` says where."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep."""
    snapshot_every: int = 10
    """Iterations between snapshots of the policy alone (safetensors, kept for the run; never
    the last iteration, which is ``ppo_model``): the report stage evaluates each on the
    held-out prompts for the reward–KL frontier and the over-optimisation alarm, and the
    registry is offered the judge's peak when the alarm fires. Each costs the report a
    sampling of the evaluation prompts; 0 keeps none (and draws no PPO frontier)."""
    resume: str = "auto"
    """Where a rerun starts: ``auto`` continues from the newest checkpoint this
    configuration wrote (a killed run picks up where it stopped, and says so), ``never``
    starts afresh, a checkpoint folder's path continues from that one. Checkpoints of
    another configuration, data or starting model are never resumed
    (``alignops.training.checkpoints``)."""
    seed: int = 0
    """Seeds the value head, prompt order, sampling and minibatch order: same seed, same
    weights on CPU."""
    mixed_precision: str | None = None
    """None: whatever accelerate is configured with (``accelerate launch --mixed_precision``,
    the stage's ``accelerate_config``, ``ACCELERATE_MIXED_PRECISION``; ``no`` when nothing
    says otherwise, as on CPU). ``no``, ``bf16`` or ``fp16`` override it for this stage:
    under bf16 weights stay float32 and the forward runs under autocast (log-prob math
    upcasts to float32); fp16 adds a loss scaler."""
    num_processes: int = 1
    """Processes to train this stage in. Above 1 the node relaunches itself under
    ``torchrun`` (or ``accelerate launch`` with ``accelerate_config``) and returns rank 0's
    result (``alignops.training.launch``); batch sizes are per process."""
    accelerate_config: str | None = None
    """An accelerate config file (``conf/accelerate/``: one GPU, multi-GPU DDP): the stage
    runs under ``accelerate launch --config_file``. FSDP, DeepSpeed and several machines are
    refused for now (``alignops.training.accelerate_config.SUPPORTED_DISTRIBUTED_TYPES``)."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the update's backward pass instead of keeping
    them (transformers' non-reentrant checkpointing of the policy, and of the critic under
    ``critic: reward_model``): activation memory stops growing with depth for about a third
    more compute. transformers checkpoints in train mode only, so the update runs in train
    mode with every dropout probability set to 0 (the rollout stays in eval mode, with its
    KV cache): same losses and weights as without."""
    lora: dict | None = None
    """LoRA adapters on the policy instead of a full fine-tune, e.g. ``{r: 16, alpha: 32}``
    (fields of ``alignops.training.lora.LoRAConfig``); null trains every weight. The value
    head, or the critic, still trains fully. The KL reference is then the policy with its
    adapters disabled, so no second copy of the SFT model is held. The stage returns the
    merged model, saves the adapters to ``<checkpoints>/lora_adapter``, and writes its
    snapshots merged."""

    def __post_init__(self) -> None:
        sizes = (self.steps, self.rollout_batch_size, self.minibatch_size, self.ppo_epochs, self.max_new_tokens)
        if min(sizes) < 1 or min(self.generation_batch_size, self.reward_batch_size) < 1:
            raise ValueError("steps, batch sizes, ppo_epochs and max_new_tokens must be >= 1")
        if self.rollout_batch_size % self.minibatch_size:
            raise ValueError(
                f"minibatch_size ({self.minibatch_size}) must divide rollout_batch_size ({self.rollout_batch_size})"
            )
        rates = (self.learning_rate, self.value_learning_rate, self.adam_eps, self.max_grad_norm)
        if min(rates) <= 0 or self.weight_decay < 0:
            raise ValueError("learning rates, adam_eps and max_grad_norm must be positive, weight_decay >= 0")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {self.schedule!r}")
        if min(self.warmup_steps, self.checkpoint_every, self.snapshot_every) < 0 or self.keep_checkpoints < 1:
            raise ValueError("warmup_steps, checkpoint_every and snapshot_every must be >= 0, keep_checkpoints >= 1")
        if self.cliprange <= 0 or self.cliprange_value <= 0 or self.vf_coef < 0:
            raise ValueError("cliprange and cliprange_value must be positive, vf_coef >= 0")
        if not (0.0 <= self.gamma <= 1.0 and 0.0 <= self.lam <= 1.0):
            raise ValueError(f"gamma and lam must be in [0, 1], got {self.gamma} and {self.lam}")
        if self.critic not in CRITICS:
            raise ValueError(f"critic must be one of {sorted(CRITICS)}, got {self.critic!r}")
        if self.kl_controller not in KL_CONTROLLER_NAMES:
            raise ValueError(f"kl_controller must be one of {KL_CONTROLLER_NAMES}, got {self.kl_controller!r}")
        if not self.ptx_coef >= 0:
            raise ValueError(f"ptx_coef must be >= 0, got {self.ptx_coef}")
        if self.kl_coef < 0 or (self.kl_controller == "adaptive" and self.kl_coef == 0):
            raise ValueError("kl_coef must be >= 0 (and > 0 for the adaptive controller)")
        if self.kl_target <= 0 or self.kl_horizon <= 0:
            raise ValueError("kl_target and kl_horizon must be positive")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {sorted(KL_ESTIMATORS)}, got {self.kl_estimator!r}")
        if self.sample_every < 1 or self.num_samples < 0:
            raise ValueError("sample_every must be >= 1 and num_samples >= 0")
        check_mixed_precision(self)
        check_launch_settings(self)
        check_resume_setting(self)
        lora_config(self.lora)  # a misspelt or impossible adapter setting fails here
