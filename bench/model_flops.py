"""Model FLOPs of a benchmark's steps, counted the same way on both sides: ``bench/ours.py``
(our loops) and ``bench/trl_baseline.py`` (TRL's trainers, in TRL's own virtual environment,
which is why this module imports nothing but torch). Every forward's tokens are read off its
token-embedding call; a forward costs 2 N per token (N: the ``nn.Linear`` parameters) plus
4 L d T^2 per row of T tokens, 3x with gradients (forward + backward)."""

from __future__ import annotations

import time

import torch


class TokenCounter:
    """Every model forward's tokens, read off its token-embedding call (a global forward pre-hook).

    Each entry: (when, grad enabled, non-pad tokens, sum of squared row lengths, rows). A
    decoder's embedding runs once per forward, on the (rows, length) ids.
    """

    def __init__(self, pad_id: int | None) -> None:
        self.pad_id = pad_id
        self.calls: list[tuple[float, bool, int, int, int]] = []

    def __enter__(self) -> TokenCounter:
        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()

    def _hook(self, module: torch.nn.Module, args: tuple) -> None:
        if isinstance(module, torch.nn.Embedding) and args and torch.is_tensor(args[0]) and args[0].dim() == 2:
            ids = args[0]
            lengths = (ids != self.pad_id).sum(1) if self.pad_id is not None else torch.full((len(ids),), ids.shape[1])
            self.calls.append(
                (time.perf_counter(), torch.is_grad_enabled(), int(lengths.sum()), int((lengths**2).sum()), len(ids))
            )

    def between(self, start: float, end: float) -> list[tuple[float, bool, int, int, int]]:
        return [call for call in self.calls if start < call[0] <= end]


def model_shape(model: torch.nn.Module) -> dict[str, int]:
    """What a token costs ``model``: its matmul parameters (every ``nn.Linear``: attention, MLP,
    the LM head even when tied to the embedding, a score head; not the embedding lookup or the
    norms), and the layers and attention width for the attention term."""
    config = model.config
    heads, hidden = config.num_attention_heads, config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    linear = sum(
        m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
        for m in model.modules()
        if isinstance(m, torch.nn.Linear)
    )
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "matmul_parameters": linear,
        "layers": config.num_hidden_layers,
        "attention_width": heads * head_dim,
    }


def forward_flops(shape: dict[str, int], calls: list[tuple[float, bool, int, int, int]]) -> tuple[float, int]:
    """(FLOPs, tokens) of some forwards: a forward is 2 N per token plus 4 L d T^2 per row of T
    tokens (scores and mixing, every head, no causal discount); one with grad enabled (trained)
    counts 3x that, forward + backward (6 N per token). Returns the FLOPs and the tokens."""
    n, attention = shape["matmul_parameters"], 4 * shape["layers"] * shape["attention_width"]
    flops = sum((3 if grad else 1) * (2 * n * tokens + attention * squares) for _, grad, tokens, squares, _ in calls)
    return float(flops), sum(call[2] for call in calls)


def flops_figures(shape: dict[str, int], calls: list, seconds: float, cpu_seconds: float, steps: int) -> dict:
    """A stage's model FLOPs over its timed steps: per step, per second and per CPU second."""
    flops, tokens = forward_flops(shape, calls)
    return {
        "model_flops_per_step": flops / steps,
        "model_flops_per_s": flops / seconds,
        "model_flops_per_cpu_s": flops / cpu_seconds,
        "tokens_per_step": tokens / steps,
        "trained_rows_per_step": sum(call[4] for call in calls if call[1]) / steps,
        "trained_row_tokens": sum(c[2] for c in calls if c[1]) / max(1, sum(c[4] for c in calls if c[1])),
        "model": shape,
    }
