"""DPO's configuration. ``conf/base/parameters_dpo.yml`` mirrors ``DPOConfig`` one to one and
the node builds it with ``DPOConfig(**params)``, so a misspelt key fails loudly."""

from __future__ import annotations

from dataclasses import dataclass

from alignops.core.losses import DPO_LOSSES
from alignops.training.accelerator import check_mixed_precision
from alignops.training.checkpoints import check_resume_setting
from alignops.training.common import check_epoch_loop_settings
from alignops.training.launch import check_launch_settings
from alignops.training.lora import lora_config


@dataclass(frozen=True)
class DPOConfig:
    """Direct preference optimisation of the SFT policy on (prompt, chosen, rejected) pairs."""

    loss_type: str = "sigmoid"
    """``sigmoid``: DPO (Rafailov et al. 2023) on summed completion log-probs; ``ipo``: IPO
    (Azar et al. 2023) on length-averaged log-probs. Any key of ``alignops.core.DPO_LOSSES``."""
    beta: float = 0.1
    """Strength of the implicit KL leash to the SFT reference (IPO's τ). 0.1 is the paper's
    value and holds here too: lower (0.05) lets the margin grow by lengthening the chosen
    style and starts to trade gold score for length; higher (0.3) barely moves the policy
    within the budget. With ``ipo`` the log-probs are per-token, so β wants ~10x larger."""
    label_smoothing: float = 0.0
    """Conservative DPO (Mitchell 2023): the share of labels assumed flipped, in [0, 0.5).
    The panel's labels are noisy against the gold judge (docs/tuning.md), but smoothing
    slowed learning more than it protected against noise within this short run. Sigmoid
    loss only."""
    rpo_alpha: float = 0.0
    """Weight of the chosen responses' per-token NLL added to the loss (RPO, Pang et al.
    2024; TRL's ``rpo_alpha``). DPO alone lowers the likelihood of chosen and rejected
    alike and moves mass to replies neither contains."""

    learning_rate: float = 3e-4
    """Peak AdamW rate. DPO moves the tiny scratch policy with over an order of magnitude less
    than SFT trained it with (``SFTConfig.learning_rate``), enough to reach held-out
    accuracy's plateau in one pass over the world's pairs. A pretrained base wants ~5e-7
    to 5e-6 (the paper's 1e-6)."""
    batch_size: int = 32
    """Pairs per micro-batch and process; each forward runs the batch's distinct chosen and
    rejected sequences together (at most 2x this many). Step times are in docs/tuning.md."""
    grad_accum: int = 1
    """Micro-batches per optimiser step; effective batch = batch_size x grad_accum x processes."""
    epochs: float = 1.0
    """Passes over the training pairs; fractions allowed. Ignored when ``max_steps`` is set.
    One pass reaches held-out accuracy's plateau and keeps DPO a small share of the
    default run's time (docs/tuning.md)."""
    max_steps: int | None = None
    """Optimiser steps to take instead of ``epochs`` (tests and smoke runs)."""
    warmup_steps: int = 10
    """Linear warm-up steps: the first Adam updates are noisy, and a full-size one can undo
    SFT before the preference signal takes hold."""
    schedule: str = "linear"
    """Decay to 0 at the last step after warm-up: ``linear`` (the paper's), ``cosine`` or ``constant``."""
    weight_decay: float = 0.0
    """AdamW decay on weight matrices. 0: the β leash to the reference already regularises,
    and decay would pull the policy towards zero rather than towards SFT."""
    adam_beta2: float = 0.98
    """Adam's second-moment decay; 0.98 adapts within the run's first few dozen steps."""
    max_grad_norm: float = 1.0
    """Global L2 norm gradients are clipped to; ``dpo/grad_norm`` logs it before clipping."""

    ref_batch_size: int = 64
    """Pairs per no-grad forward when the reference log-probs are computed, once, before
    training (sorted by length, so batches carry little padding)."""
    eval_every: int = 60
    """Optimiser steps between held-out evaluations (and always after the last step)."""
    eval_batch_size: int = 64
    """Pairs per held-out forward (no gradients, so larger than ``batch_size``)."""
    log_every: int = 1
    """Optimiser steps between metric rows (means over the interval). Every step: a run is a
    few hundred steps and the host sync per row costs nothing next to the forward."""
    checkpoint_every: int = 50
    """Optimiser steps between checkpoints (accelerate state); 0 saves none. A kill costs at
    most this many steps of work, and a rerun resumes (``resume``); the stage also saves after
    its last step, so a killed DAG run again loads the finished stages instead of training
    them. The default model saves in tens of milliseconds (docs/tuning.md). The catalog's
    ``dpo_checkpoints`` says where."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep on disk."""
    resume: str = "auto"
    """Where a rerun starts: ``auto`` continues from the newest checkpoint this
    configuration wrote (a killed run picks up where it stopped, and says so), ``never``
    starts afresh, a checkpoint folder's path continues from that one. Checkpoints of
    another configuration, data or starting model are never resumed
    (``alignops.training.checkpoints``)."""
    seed: int = 0
    """Seeds the order of the pairs (and anything random in the model): same seed, same
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
    """Recompute each layer's activations in the backward pass instead of keeping them
    (transformers' non-reentrant checkpointing): activation memory stops growing with
    depth for about a third more compute. Same losses and weights as without."""
    lora: dict | None = None
    """LoRA adapters instead of a full fine-tune, e.g. ``{r: 16, alpha: 32}`` (fields of
    ``alignops.training.lora.LoRAConfig``); null trains every weight. The stage returns
    the merged model and saves the adapters to ``<checkpoints>/lora_adapter``."""

    def __post_init__(self) -> None:
        if self.loss_type not in DPO_LOSSES:
            raise ValueError(f"loss_type must be one of {sorted(DPO_LOSSES)}, got {self.loss_type!r}")
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ValueError(f"label_smoothing applies to the sigmoid loss only, not {self.loss_type!r}")
        if self.rpo_alpha < 0:
            raise ValueError(f"rpo_alpha must be >= 0, got {self.rpo_alpha}")
        check_epoch_loop_settings(self)
        sizes = (self.batch_size, self.grad_accum, self.ref_batch_size, self.eval_batch_size)
        if min(*sizes, self.eval_every, self.log_every) < 1:
            raise ValueError("batch sizes, grad_accum, eval_every and log_every must be >= 1")
        check_mixed_precision(self)
        check_launch_settings(self)
        check_resume_setting(self)
        lora_config(self.lora)  # a misspelt or impossible adapter setting fails here

    @property
    def average_logprobs(self) -> bool:
        """IPO compares length-averaged log-probs (Azar et al. 2023); DPO compares sums."""
        return self.loss_type == "ipo"
