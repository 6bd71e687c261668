"""Reward-model training configuration; ``conf/base/parameters_reward.yml`` mirrors it one to one.

Values are tuned for the embedded world on a small CPU budget, for held-out pairwise
accuracy against the gold judge (``bench/reward_quality.py`` measures it and the time;
``docs/tuning.md`` keeps the measurements behind these defaults, dated).
"""

from __future__ import annotations

from dataclasses import dataclass

from alignops.training.accelerator import check_mixed_precision
from alignops.training.checkpoints import check_resume_setting
from alignops.training.common import check_epoch_loop_settings
from alignops.training.launch import check_launch_settings
from alignops.training.lora import lora_config


@dataclass(frozen=True)
class RewardConfig:
    """Bradley–Terry reward model on preference pairs, then normalisation on SFT samples."""

    base: str = "sft"
    """``sft`` starts from the SFT policy's weights and tokenizer with a new one-output
    head (Ouyang et al. 2022: the RM knows what the policy knows). Anything else is a
    local folder or hub id loaded as a sequence classifier with ITS OWN tokenizer;
    texts are re-tokenised from strings either way."""
    train: bool = True
    """False uses ``base`` as it is: a trained Hugging Face sequence classifier with one
    output from elsewhere (no alignops normalisation file needed). Nothing is fitted;
    the model is only normalised on the SFT policy's samples, like a trained one."""
    learning_rate: float = 1e-3
    """Peak AdamW rate. The SFT body is tiny and gets a few hundred steps, so it takes a
    rate ~50x a pretrained RM's (1e-5 to 3e-5 there); half of it scored a little lower
    held-out gold accuracy (docs/tuning.md)."""
    batch_size: int = 16
    """Comparisons per micro-batch and process. A ranking's comparisons stay together, so
    a batch is a few whole rankings: each reply is scored once and feeds every pair it is
    in (Ouyang et al. 2022, sec. 3.5). An epoch therefore costs about the same at any
    batch size, and steps are what the small body needs: twice this batch scored worse,
    half of it no better and slower (docs/tuning.md)."""
    grad_accum: int = 1
    """Micro-batches per optimiser step; effective batch = batch_size x grad_accum x processes."""
    epochs: float = 1.0
    """Passes over the training comparisons; fractions allowed. Ignored when ``max_steps`` is
    set. One pass, as Ouyang et al. 2022 found: a second pass fits the panel's noise and
    doubles the time. What helped was more distinct rankings, not more passes
    (docs/tuning.md)."""
    max_steps: int | None = None
    """Optimiser steps to take instead of ``epochs`` (tests and smoke runs)."""
    warmup_steps: int = 10
    """Linear warm-up steps (a few percent of a one-epoch run) while Adam's moment estimates settle."""
    schedule: str = "cosine"
    """Decay after warm-up, to 0 at the last step: ``cosine``, ``linear`` or ``constant``."""
    weight_decay: float = 0.0
    """AdamW decay on weight matrices only. Off: one epoch does not overfit, and decay would
    pull the SFT body away from what it learned."""
    adam_beta2: float = 0.98
    """Adam's second-moment decay; adapts within a few dozen steps (beta1 stays at 0.9)."""
    max_grad_norm: float = 1.0
    """Global gradient L2 norm clip; ``reward/grad_norm`` logs the norm before clipping."""
    margin_scale: float = 0.0
    """Bradley–Terry margin m = margin_scale x the canonical ``margin`` column (the rank
    gap for K-wise rankings; <NA> counts as 0), as in Llama 2 (Touvron et al. 2023,
    eq. 2). 0 turns it off: the world's annotators are noisy enough that a rank gap of 3
    is not a surer preference than a gap of 1 by a fixed amount."""
    ensemble_size: int = 3
    """Reward models to train, seeds ``seed``, ``seed + 1``, ...; above 1 they are scored together
    as one (``alignops.models.reward.RewardEnsemble``, Coste et al. 2024). Each costs what one
    model costs. On the world three recovered what PPO lost when the audit split took a fifth
    of the prompts: with ``ppo.kl_coef`` 0.08, gold win rate 0.685 over five PPO seeds against
    one model's 0.648 at 0.05, and a steadier one (docs/tuning.md). The audit judge, trained
    with this recipe, is an ensemble too. Unused with ``train`` false: a model from elsewhere
    is one model."""
    uncertainty_penalty: float = 0.5
    """How many of the members' standard deviations are taken off their mean reward
    (uncertainty-weighted optimisation, Coste et al. 2024): where the members disagree, a
    reply is worth less, so PPO is pulled less towards what only some of them like. 0 is the
    plain mean. On the world 0.5 beat the plain mean (docs/tuning.md). Unused with one model."""
    eval_every: int = 100
    """Optimiser steps between held-out evaluations (and always after the last step): a few
    per run. Each scores every distinct held-out reply once, without gradients, so it is
    cheap next to training."""
    eval_batch_size: int = 128
    """Replies per scoring batch (held-out evaluation and normalisation); no gradients."""
    log_every: int = 10
    """Optimiser steps between training-metric rows (averaged over the interval)."""
    checkpoint_every: int = 50
    """Optimiser steps between checkpoints; 0 saves none. A kill costs at most this many steps of work, and a rerun
    resumes (``resume``); the stage also saves after its last step, so a killed DAG run again
    loads the finished stages instead of training them. The default model saves in tens of
    milliseconds (docs/tuning.md). The catalog's ``reward_checkpoints`` says where."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep on disk."""
    resume: str = "auto"
    """Where a rerun starts: ``auto`` continues from the newest checkpoint this
    configuration wrote (a killed run picks up where it stopped, and says so), ``never``
    starts afresh, a checkpoint folder's path continues from that one. Checkpoints of
    another configuration, data or starting model are never resumed
    (``alignops.training.checkpoints``)."""
    seed: int = 0
    """Seeds the new head and the batch order: same seed, same reward model on CPU."""
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
    """Recompute each layer's activations in the backward pass instead of keeping them
    (transformers' non-reentrant checkpointing): activation memory stops growing with
    depth for about a third more compute. Same losses and weights as without."""
    lora: dict | None = None
    """LoRA adapters on the trunk instead of a full fine-tune, e.g. ``{r: 16, alpha: 32}``
    (fields of ``alignops.training.lora.LoRAConfig``); the new score head trains whole;
    null trains every weight. The stage returns the merged reward model and saves the
    adapters (with the head) to ``<checkpoints>/lora_adapter``. The audit judge, trained
    with this recipe, takes it too; with ``train: false`` nothing is fitted and it is unused."""
    norm_samples: int = 128
    """SFT-policy samples (on training prompts) whose raw rewards set the normalisation to
    mean 0 / std 1 (Ziegler et al. 2019; lm-human-preferences). 128 pins the std to ~6%
    (a sample std's relative error is ~1/sqrt(2n)) in one generation batch; 0 turns
    normalisation off (mean 0, std 1)."""
    norm_max_new_tokens: int = 96
    """Longest sampled reply for normalisation, PPO's rollout length: the normalisation
    describes what PPO will see. The samples' temperature, top-k and top-p are the run's
    ``generation`` settings, which PPO samples with."""
    norm_batch_size: int = 128
    """Prompts per generation batch: one batch, so per-token decoding overhead is paid once."""

    def __post_init__(self) -> None:
        if not self.base:
            raise ValueError("reward.base must be 'sft', a local path or a hub id")
        if not self.train and self.base == "sft":
            raise ValueError("reward.train false uses a trained classifier as it is: set reward.base to its path")
        check_epoch_loop_settings(self)
        if min(self.batch_size, self.grad_accum, self.eval_batch_size, self.log_every, self.eval_every) < 1:
            raise ValueError("batch sizes, grad_accum, log_every and eval_every must be >= 1")
        if self.ensemble_size < 1:
            raise ValueError(f"ensemble_size must be >= 1, got {self.ensemble_size}")
        if not self.uncertainty_penalty >= 0:
            raise ValueError(f"uncertainty_penalty must be >= 0, got {self.uncertainty_penalty}")
        if self.margin_scale < 0:
            raise ValueError(f"margin_scale must be >= 0, got {self.margin_scale}")
        check_mixed_precision(self)
        check_launch_settings(self)
        check_resume_setting(self)
        lora_config(self.lora)  # a misspelt or impossible adapter setting fails here
        if not self.train and (self.num_processes > 1 or self.accelerate_config):
            raise ValueError("reward.train is false: a trained reward model is only normalised, in one process; "
                             "set num_processes: 1 and accelerate_config: null")
        if self.norm_samples < 0 or min(self.norm_max_new_tokens, self.norm_batch_size) < 1:
            raise ValueError("norm_samples must be >= 0, norm_max_new_tokens and norm_batch_size >= 1")
        if self.norm_samples == 1:
            raise ValueError("norm_samples must be 0 (off) or >= 2: one sample has no spread")
