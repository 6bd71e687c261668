"""Supervised fine-tuning configuration; ``conf/base/parameters_sft.yml`` mirrors it one to one
and the node builds it with ``SFTConfig(**params)``, so a misspelt key fails loudly."""

from __future__ import annotations

from dataclasses import dataclass

from alignops.training.accelerator import check_mixed_precision
from alignops.training.checkpoints import check_resume_setting
from alignops.training.common import check_epoch_loop_settings
from alignops.training.launch import check_launch_settings
from alignops.training.lora import lora_config


@dataclass(frozen=True)
class SFTConfig:
    """Supervised fine-tuning on demonstrations: next-token loss on the responses only."""

    learning_rate: float = 7e-3
    """Peak AdamW learning rate. A scratch model of a few hundred thousand parameters,
    trained from nothing in a few hundred steps, needs a rate ~100x a pretrained model's;
    7e-3 is where a sweep on the world stopped buying much held-out loss (docs/tuning.md).
    Fine-tuning a pretrained base wants ~1e-5 to 5e-5."""
    batch_size: int = 4
    """Rows per micro-batch and process (with ``packing``, rows of up to
    ``ModelConfig.max_length`` tokens holding several demonstrations each). Small batches
    buy optimiser steps: what the scratch model must learn late (which action answers
    which prompt) comes with steps, not tokens, so at the same CPU time more and smaller
    steps gave better samples than fewer, larger ones (docs/tuning.md)."""
    grad_accum: int = 1
    """Micro-batches per optimiser step; effective batch = batch_size x grad_accum x processes."""
    epochs: float = 9.0
    """Passes over the training split; fractions allowed. Ignored when ``max_steps`` is set.
    Held-out loss is no guide to the policy here: the prompt-to-action lookup is learnt
    late, so for several epochs after the loss looks settled sampled replies are still
    generic or another intent's action; 9 is where they matched the demonstrations
    (docs/tuning.md)."""
    max_steps: int | None = None
    """Optimiser steps to take instead of ``epochs`` (tests and smoke runs)."""
    warmup_steps: int = 40
    """Steps of linear warm-up from ~0 to ``learning_rate``: Adam's second-moment estimates
    are noise for the first few dozen steps, and a full-size step then can blow up."""
    schedule: str = "cosine"
    """Decay after warm-up, to 0 at the last step: ``cosine``, ``linear`` or ``constant``."""
    weight_decay: float = 0.1
    """AdamW decay on weight matrices only (not on norms or biases); nanoGPT's value."""
    adam_beta2: float = 0.98
    """Adam's second-moment decay. 0.98 rather than 0.999 adapts within a few dozen steps,
    which a run of a few hundred steps needs (beta1 stays at 0.9)."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global L2 norm; spikes early in training otherwise
    undo the warm-up. ``sft/grad_norm`` logs the norm before clipping."""
    packing: bool = True
    """Pack several demonstrations per row (position ids restart per example, attention
    never crosses a boundary; ``alignops.models.packing``). Demonstrations differ in
    length, so an unpacked batch is padded to its longest row and much of it is padding
    (docs/tuning.md)."""
    eval_fraction: float = 0.05
    """Share of demonstrations held out to report ``eval/sft/loss`` and ``eval/sft/perplexity``; 0 turns it off."""
    eval_every: int = 100
    """Optimiser steps between held-out evaluations (and always after the last step)."""
    eval_batch_size: int = 64
    """Rows per held-out batch (no gradients, so larger than ``batch_size``)."""
    log_every: int = 10
    """Optimiser steps between training-metric rows (loss averaged over the interval)."""
    checkpoint_every: int = 100
    """Optimiser steps between checkpoints (accelerate state: weights, optimizer,
    scheduler, RNG); 0 saves none. A kill costs at most this many steps of work, and a rerun
    resumes (``resume``); the stage also saves after its last step, so a killed DAG run again
    loads the finished stages instead of training them. The default model saves in tens of
    milliseconds (docs/tuning.md). The catalog's ``sft_checkpoints`` says where."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep on disk."""
    resume: str = "auto"
    """Where a rerun starts: ``auto`` continues from the newest checkpoint this
    configuration wrote (a killed run picks up where it stopped, and says so), ``never``
    starts afresh, a checkpoint folder's path continues from that one. Checkpoints of
    another configuration, data or starting model are never resumed
    (``alignops.training.checkpoints``)."""
    seed: int = 0
    """Seeds weight initialisation, the held-out split and batch order: same seed, same
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
        check_epoch_loop_settings(self)
        if min(self.batch_size, self.grad_accum, self.eval_batch_size, self.log_every, self.eval_every) < 1:
            raise ValueError("batch sizes, grad_accum, log_every and eval_every must be >= 1")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        check_mixed_precision(self)
        check_launch_settings(self)
        check_resume_setting(self)
        lora_config(self.lora)  # a misspelt or impossible adapter setting fails here
