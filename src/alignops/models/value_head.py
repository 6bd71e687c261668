"""PPO's critic, two ways, and the response-only forward they share.

``PPOConfig.critic`` picks one from ``CRITICS``; both wrap the policy, return
``(logits, values)`` over the response positions and expose ``.policy`` (the trained,
plain causal LM) and ``value_parameters()`` (the optimiser's value group).

``value_head`` (``PolicyWithValueHead``): a scalar head on the policy's own trunk.

- cost: the values come out of the forward the policy makes anyway, so each PPO
  minibatch is one forward/backward of one model. On a 2-core CPU that is most of the
  difference between fitting the stage's budget and not.
- the price is coupling: value gradients flow into the features the policy writes
  with. ``PPOConfig.vf_coef`` (0.1) keeps them small next to the policy gradient, and
  the head starts at zero so the first updates come from the policy loss alone.

``reward_model`` (``PolicyWithCritic``): a separate value model, a copy of the reward
model's classifier whose score head reads every position (TRL's value model and
``get_reward``; OpenRLHF and veRL initialise their critics the same way, Stiennon et
al. 2020 too).

- it starts with features that already predict the reward, so GAE has a baseline from
  the first iteration instead of after the head has learnt one;
- value-loss gradients never touch the policy's weights;
- the price is a second model's memory and a second forward/backward per minibatch;
- it must read the POLICY's token ids, so the reward model must share the policy's
  tokenizer (``RewardModel.score`` re-tokenises text and need not) and be a decoder with
  a ``score`` head over its last hidden states (a pooled encoder cannot value a prefix).

Either way the value side is training-only state: checkpoints hold it, the stage's
model is the policy alone.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignops.models.scoring import joined_inputs, keeps_logits


def response_forward(
    model: PreTrainedModel,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, R, V) predicting each response token and the last hidden state (B, R, H) there.

    One forward over prompt + response; positions come from the mask (prompts are LEFT
    padded). ``logits_to_keep`` runs the LM head on the response positions only, where the
    model takes it (the prompt's logits would be thrown away); a model without it returns
    every position's logits and the response's are sliced out the same way.
    """
    width = response_ids.shape[1]
    out = model(
        **joined_inputs(query_ids, query_mask, response_ids, response_mask),
        use_cache=False,
        output_hidden_states=True,
        **({"logits_to_keep": width + 1} if keeps_logits(type(model)) else {}),
    )
    logits = out.logits[:, -width - 1 : -1]  # (B, R, V): the state before token t predicts token t
    hidden = out.hidden_states[-1][:, -width - 1 : -1]  # (B, R, H), final-normed like the logits' input
    return logits, hidden


class PolicyWithValueHead(nn.Module):
    """A causal LM and ``value_head: Linear(H, 1)`` reading its last hidden state."""

    def __init__(self, policy: PreTrainedModel) -> None:
        super().__init__()
        self.policy = policy
        hidden_size = policy.config.get_text_config().hidden_size
        self.value_head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)  # V = 0 at first: no critic noise in the first advantages
        nn.init.zeros_(self.value_head.bias)

    def value_parameters(self) -> Iterator[nn.Parameter]:
        """What the value loss trains: the head (the trunk is the policy's)."""
        return self.value_head.parameters()

    def forward(
        self,
        query_ids: torch.Tensor,
        query_mask: torch.Tensor,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, R, V), values (B, R)): V_t is the value of the state before response token t."""
        logits, hidden = response_forward(self.policy, query_ids, query_mask, response_ids, response_mask)
        values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)  # (B, R)
        return logits, values


class CriticError(ValueError):
    """The reward model cannot serve as PPO's critic (``PPOConfig.critic: reward_model``)."""


def _score_backbone(classifier: PreTrainedModel) -> tuple[nn.Module, nn.Linear]:
    """(backbone, score head) of a decoder sequence classifier, or ``CriticError``.

    Hugging Face's decoder classifiers (Llama, Mistral, Qwen, GPT-2, ...) apply a
    ``score`` Linear to every position's last hidden state and pool the last real token's;
    applied at every position it values each prefix. Encoders pool through a ``classifier``
    that reads the whole sequence at once, so they have no per-prefix value.
    """
    backbone = getattr(classifier, getattr(classifier, "base_model_prefix", ""), None)
    score = getattr(classifier, "score", None)
    if not isinstance(backbone, nn.Module) or not isinstance(score, nn.Linear) or score.out_features != 1:
        raise CriticError(
            f"critic 'reward_model' needs a decoder classifier with a one-output `score` head over its "
            f"backbone's last hidden states (as LlamaForSequenceClassification has); "
            f"{type(classifier).__name__} has none, so it cannot value each response token: use critic 'value_head'"
        )
    return backbone, score


def check_same_tokenizer(policy_tokenizer: PreTrainedTokenizerBase, reward_tokenizer: PreTrainedTokenizerBase) -> None:
    """``CriticError`` unless both tokenizers map every token to the same id: the critic reads
    the policy's token ids as they are."""
    if policy_tokenizer.get_vocab() != reward_tokenizer.get_vocab():
        raise CriticError(
            f"critic 'reward_model' reads the policy's token ids, but the reward model's tokenizer "
            f"({reward_tokenizer.name_or_path!r}, {len(reward_tokenizer)} tokens) is not the policy's "
            f"({policy_tokenizer.name_or_path!r}, {len(policy_tokenizer)} tokens): use critic 'value_head'"
        )


class PolicyWithCritic(nn.Module):
    """A causal LM and ``critic``, a separate sequence classifier valued at every response position."""

    def __init__(self, policy: PreTrainedModel, critic: PreTrainedModel, mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        _score_backbone(critic)
        self.policy = policy
        self.critic = critic
        # PPO's scores are the reward model's normalised ones (``RewardModel.score``): the values
        # start on that scale too, so the first returns are already what the critic predicts.
        self.mean, self.std = float(mean), float(std)

    @classmethod
    def from_reward_model(
        cls, policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, reward_model: Any
    ) -> PolicyWithCritic:
        """``policy`` and a trainable deep copy of ``reward_model.model``; the reward model itself
        (which goes on scoring the rollouts) is left as it is, frozen or not. Of an ensemble,
        the first member is copied, with that member's normalisation."""
        reward_model = getattr(reward_model, "members", (reward_model,))[0]
        classifier, reward_tokenizer = getattr(reward_model, "model", None), getattr(reward_model, "tokenizer", None)
        if classifier is None or reward_tokenizer is None:
            raise CriticError(
                f"critic 'reward_model' needs a RewardModel (a classifier `.model` and its `.tokenizer`), "
                f"got {type(reward_model).__name__}"
            )
        _score_backbone(classifier)
        check_same_tokenizer(tokenizer, reward_tokenizer)
        critic = copy.deepcopy(classifier).requires_grad_(True)
        critic.config.use_cache = False
        return cls(policy, critic, getattr(reward_model, "mean", 0.0), getattr(reward_model, "std", 1.0))

    def value_parameters(self) -> Iterator[nn.Parameter]:
        """What the value loss trains: the whole critic."""
        return self.critic.parameters()

    def forward(
        self,
        query_ids: torch.Tensor,
        query_mask: torch.Tensor,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, R, V), values (B, R)): V_t is the critic's normalised score of the prefix
        that ends just before response token t, the reward model's reading of that state at first."""
        logits, _ = response_forward(self.policy, query_ids, query_mask, response_ids, response_mask)
        backbone, score = _score_backbone(self.critic)
        hidden = backbone(
            **joined_inputs(query_ids, query_mask, response_ids, response_mask), use_cache=False
        ).last_hidden_state  # (B, P + R, H), final-normed as the classifier's score reads it
        width = response_ids.shape[1]
        values = (score(hidden[:, -width - 1 : -1]).squeeze(-1) - self.mean) / self.std  # (B, R)
        return logits, values


CRITICS: dict[str, Callable[[PreTrainedModel, PreTrainedTokenizerBase, Any], nn.Module]] = {
    "value_head": lambda policy, tokenizer, reward_model: PolicyWithValueHead(policy),
    "reward_model": PolicyWithCritic.from_reward_model,
}
"""``PPOConfig.critic``: the policy wrapped with its critic, from (policy, its tokenizer, the reward model)."""
