"""The accelerator a stage trains under: precision, seeds, and what DeepSpeed and FSDP need
on top of accelerate's defaults (a CPU DeepSpeed without its compiled op, FSDP on CPU ranks,
the whole model back from the shards)."""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, set_seed

MIXED_PRECISION = ("no", "bf16", "fp16")
"""What a stage's ``mixed_precision`` may be (accelerate's names)."""


def check_mixed_precision(config: Any) -> None:
    """``config.mixed_precision`` is None (accelerate's own setting: ``accelerate launch
    --mixed_precision``, the launch's config file or ``ACCELERATE_MIXED_PRECISION``, else
    ``no``) or one of ``MIXED_PRECISION``, which then overrides accelerate's. A boolean
    false is read as ``"no"``, which is what YAML 1.1 (Kedro's parser) makes of an unquoted
    ``no``; YAML 1.2 writers drop the quotes around "no" (``dvc exp run -S`` rewrites the
    file with one)."""
    if config.mixed_precision is False:
        object.__setattr__(config, "mixed_precision", "no")  # frozen dataclasses too
    if config.mixed_precision is not None and config.mixed_precision not in MIXED_PRECISION:
        raise ValueError(
            f"mixed_precision must be null (accelerate's setting) or one of {MIXED_PRECISION}, "
            f"got {config.mixed_precision!r}"
        )


def make_accelerator(
    mixed_precision: str | None = None, grad_accum: int = 1, seed: int = 0, cpu: bool = False,
    batch_size: int | None = None, max_grad_norm: float | None = None,
) -> Accelerator:
    """An ``Accelerator`` for one stage, with python, numpy and torch seeded from ``seed``;
    ``mixed_precision`` None leaves the precision to accelerate's configuration. Under a
    DeepSpeed config, its ``auto`` micro-batch and clipping become the stage's
    ``batch_size`` (per process) and ``max_grad_norm``, and its ``auto`` accumulation ``grad_accum``.

    Accelerate keeps its state process-wide, and one Kedro run trains several stages in
    one process; a stage asking for a different precision than the previous one starts
    from a fresh state instead of failing (the process group, if any, is kept).
    """
    # None is accelerate's setting, resolved here as accelerate would, so that a stage left
    # unset does not inherit the precision an earlier stage of this process asked for
    mixed_precision = mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    state = AcceleratorState._shared_state
    if state and (state.get("_mixed_precision") != mixed_precision or state.get("_cpu") != cpu):
        AcceleratorState._reset_state()
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    handlers = []
    if deepspeed and not torch.cuda.is_available():
        # without a GPU accelerate picks no backend and each rank believes it is alone, while
        # DeepSpeed's own group spans them all: name gloo so both see the same group
        from accelerate.utils import InitProcessGroupKwargs

        handlers.append(InitProcessGroupKwargs(backend="gloo"))
        _without_cpu_shm_op()
    accelerator = Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum, cpu=cpu,
                              kwargs_handlers=handlers)
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        _shard_cpu_ranks(accelerator)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        _fill_deepspeed_config(accelerator, batch_size, max_grad_norm)
    set_seed(seed)
    return accelerator


CPU_SHM_SWITCH = "ALIGNOPS_DEEPSPEED_CPU_SHM"
"""Set to 1 to let DeepSpeed on CPU build and use its shared-memory allreduce (see ``_without_cpu_shm_op``)."""


def _without_cpu_shm_op() -> None:
    """DeepSpeed without a GPU reduces over gloo instead of its shared-memory op, unless
    ``ALIGNOPS_DEEPSPEED_CPU_SHM=1``.

    The op is a C++ extension DeepSpeed compiles on first use (about a minute of g++, and it
    needs Python's headers) before the first collective. On CPU, DeepSpeed is here to try a
    configuration before a GPU, where the op is not used (NCCL reduces); the results are the
    same either way, gloo is only slower at sizes this path never reaches. DeepSpeed skips the
    op when its table of compatible ops says so, and keeps that table for the process.
    """
    if os.environ.get(CPU_SHM_SWITCH, "0") == "1":
        return
    import deepspeed.ops
    from deepspeed.ops.op_builder.cpu.comm import ShareMemCommBuilder

    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False


def _fill_deepspeed_config(accelerator: Accelerator, batch_size: int | None, max_grad_norm: float | None) -> None:
    """The DeepSpeed config's ``auto`` entries that accelerate cannot fill from a data loader:
    a loop that prepares its model before its loader (DPO), or whose loader has no fixed batch
    size (packed SFT), still tells DeepSpeed its micro-batch; clipping is the stage's, not 1.0."""
    plugin = accelerator.state.deepspeed_plugin
    config = plugin.deepspeed_config
    if batch_size is not None and plugin.is_auto("train_micro_batch_size_per_gpu"):
        config["train_micro_batch_size_per_gpu"] = batch_size
    if max_grad_norm is not None and plugin.is_auto("gradient_clipping"):
        config["gradient_clipping"] = max_grad_norm


def _shard_cpu_ranks(accelerator: Accelerator) -> None:
    """FSDP on CPU ranks, as an FSDP config file asks (``ACCELERATE_USE_FSDP``).

    accelerate 1.15 builds FSDP only for accelerator ranks (GPU, XPU, ...): on CPU ranks it
    drops the FSDP plugin and trains plain data parallel, each rank holding everything.
    torch's FSDP2 (``fully_shard``) shards CPU ranks on the gloo backend, so here the state
    is switched to FSDP with the plugin the config file describes. On GPU ranks accelerate
    has done this already and nothing changes.
    """
    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    from accelerate import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables accelerate launch exports
    if plugin.fsdp_version != 2:
        raise ValueError(f"FSDP on CPU ranks needs fsdp_version: 2 in the accelerate config, got {plugin.fsdp_version}")
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    # every AcceleratorState() copies PartialState's fields again: both must say FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP


def is_sharded(accelerator: Accelerator) -> bool:
    """Whether the prepared model may be split between the ranks (FSDP, DeepSpeed): every
    rank must then make the same forward passes (ZeRO-3 gathers weights in each), and the
    whole model is gathered before it is handed back."""
    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def full_model(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The trained model as a plain module on the CPU: ``model`` itself unless FSDP or
    DeepSpeed holds it, else a new module of its class holding the full weights (every rank
    gets the same copy, so their digests still compare). Under DeepSpeed these are the
    optimiser's fp32 master weights, not a bf16 module's."""
    if not is_sharded(accelerator):
        return model
    from transformers.initialization import no_init_weights

    if accelerator.distributed_type == DistributedType.FSDP:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        from torch.distributed.fsdp import FSDPModule

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        # fully_shard gives the module a class of its own, FSDP<class>; the model's class is its base
        base = next(cls for cls in type(model).__mro__ if not issubclass(cls, FSDPModule))
    else:
        from deepspeed.utils import safe_get_full_fp32_param

        # every rank gathers every parameter (collective under ZeRO-3), in the same order
        state = {name: safe_get_full_fp32_param(p) for name, p in model.named_parameters(remove_duplicate=False)}
        state.update((name, b) for name, b in model.state_dict().items() if name not in state)  # buffers
        base = type(model)
    state = {name: tensor.detach().cpu() for name, tensor in state.items()}
    dtype = next(iter(state.values())).dtype
    with no_init_weights():
        plain = base(model.config)
    plain.load_state_dict(state)
    plain.generation_config = model.generation_config
    return plain.to(dtype).eval()


def enable_gradient_checkpointing(model: torch.nn.Module, enabled: bool) -> None:
    """transformers' gradient checkpointing (non-reentrant), when ``enabled``: each layer's
    activations are recomputed in the backward pass instead of kept. It engages in train
    mode only (sampling and evaluation are unaffected) and is not saved with the model."""
    if enabled:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
