"""PPO's critic as a scalar head on the policy's own trunk, and the response-only forward both use.

Why a head on the policy rather than a separate value model (TRL initialises one
from the reward model, Stiennon et al. 2020 from the RM too):

- cost: the critic's values come out of the forward the policy makes anyway, so each
  PPO minibatch is one forward/backward instead of two. On a 2-core CPU that is most
  of the difference between fitting the stage's budget and not.
- alignment: the critic values the POLICY's tokens one by one. The reward model may
  use another tokenizer (``RewardModel.score`` re-tokenises text), so a critic built
  from it could not be read position by position on the policy's tokens.
- the price is coupling: value gradients flow into the features the policy writes
  with. ``PPOConfig.vf_coef`` (0.1) keeps them small next to the policy gradient, and
  the head starts at zero so the first updates come from the policy loss alone.

The head is training-only state: the trained policy is ``PolicyWithValueHead.policy``,
a plain causal LM that ``from_pretrained`` loads (checkpoints hold the head as well).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from alignops.models.scoring import keeps_logits, position_ids_from_mask


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
    input_ids = torch.cat([query_ids, response_ids], dim=1)  # (B, P + R)
    attention_mask = torch.cat([query_mask, response_mask], dim=1)  # (B, P + R)
    width = response_ids.shape[1]
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
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
