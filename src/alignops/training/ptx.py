"""PPO-ptx (Ouyang et al. 2022, InstructGPT): the SFT loss on the demonstrations, mixed into PPO.

Each PPO minibatch update also takes the per-token negative log-likelihood of
``minibatch_size`` demonstration replies, drawn at random, weighted by ``PPOConfig.ptx_coef``.
The demonstrations are laid out as rollouts are (prompt left-padded, reply right-padded), so
they go through the same ``policy(query, reply)`` forward as the PPO loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from alignops.core import selective_log_softmax
from alignops.models.chat import Renderer
from alignops.models.collate import Batch
from alignops.models.config import ModelConfig
from alignops.models.generation import trim_rows


def prompt_reply_split(rows: Batch, pad_id: int) -> Batch:
    """Training rows (``Renderer.tokenize``: prompt, then completion, then right padding) as
    rollouts hold them: ``query_ids``/``query_mask`` (N, P) left-padded, ``response_ids``/
    ``response_mask`` (N, R) right-padded, R covering each completion with its end token."""
    attention, completion, ids = rows["attention_mask"].bool(), rows["completion_mask"].bool(), rows["input_ids"]
    prompt_len, reply_len = (attention & ~completion).sum(1), completion.sum(1)  # (N,), (N,)
    width, reply_width, total = int(prompt_len.max()), int(reply_len.max()), ids.shape[1]
    source = prompt_len[:, None] - width + torch.arange(width)  # (N, P): -k for the k-th pad on the left
    query_mask = source >= 0
    reply_positions = torch.arange(reply_width)
    response_mask = reply_positions < reply_len[:, None]  # (N, R)
    reply_source = (prompt_len[:, None] + reply_positions).clamp_max(total - 1)
    return {
        "query_ids": torch.where(query_mask, ids.gather(1, source.clamp_min(0)), pad_id),
        "query_mask": query_mask.long(),
        "response_ids": torch.where(response_mask, ids.gather(1, reply_source), pad_id),
        "response_mask": response_mask.long(),
    }


class Demonstrations:
    """The demonstrations, tokenised once, and the random draw of each update's batch."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompts: Sequence[str],
        responses: Sequence[str],
        model_config: ModelConfig,
        seed: int,
    ) -> None:
        if not len(prompts):
            raise ValueError("ppo: ptx_coef > 0 needs demonstrations, and none were given")
        rows = Renderer.for_model(model_config, tokenizer).tokenize(
            list(prompts), list(responses), model_config.max_prompt_tokens, model_config.max_response_tokens
        )
        self.rows = prompt_reply_split(rows, tokenizer.pad_token_id)
        self.widths = torch.stack([self.rows["query_mask"].sum(1), self.rows["response_mask"].sum(1)], dim=1)  # (N, 2)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.rows["query_ids"])

    def draw(self, n: int, device: torch.device) -> Batch:
        """``n`` demonstrations drawn with replacement, cut to their own widths, on ``device``."""
        pick = torch.randint(len(self), (n,), generator=self.generator)
        batch, _ = trim_rows(self.rows, pick, self.widths)
        return {name: tensor.to(device) for name, tensor in batch.items()}


def ptx_loss(policy: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """The policy's mean per-token NLL of the demonstrations' replies (temperature 1, as SFT
    trained it). The values of the same forward enter with weight 0, so that every parameter
    takes part in the backward (DistributedDataParallel expects it)."""
    logits, values = policy(**batch)  # (b, R, V), (b, R)
    mask = batch["response_mask"].float()
    logprobs = selective_log_softmax(logits.float(), batch["response_ids"])  # (b, R)
    return -(logprobs * mask).sum() / mask.sum() + 0.0 * values.sum()
