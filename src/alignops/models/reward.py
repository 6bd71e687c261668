"""The reward model: a one-output sequence classifier, its own tokenizer, and its normalisation.

A reward model scores (prompt, response) TEXT. It re-tokenises with its own
tokenizer, so it never assumes the policy's token ids: PPO and evaluation hand it
strings, and a reward model built on another backbone works unchanged.

The reward is the classifier's output at each sequence's LAST real token (the EOS
that ends a reply). Hugging Face's ``*ForSequenceClassification`` pools at the
rightmost token that is not ``config.pad_token_id``, which is right for either
padding side provided (a) padding positions really hold the pad id and the pad id
is not EOS, and (b) positions count real tokens only (a left-padded row would
otherwise be read at shifted positions). ``sequence_rewards`` makes both hold.

Saved as one folder: the model (safetensors), the tokenizer (its chat template, if
any, with it), and ``reward_model.json`` with the plain prompt format and the
normalisation.

An ensemble (``RewardEnsemble``) is several such models trained alike from different
seeds and scored together: the members' mean, less a multiple of their spread where
they disagree (Coste et al. 2024, "Reward Model Ensembles Help Mitigate
Overoptimization": uncertainty-weighted optimisation). A policy that drifts to replies
the members were never shown meets disagreement instead of one model's confident error.
Saved as a folder of member folders (``member-0``, ...) and its own ``reward_model.json``;
``load_reward_model`` reads either kind.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from alignops.models.chat import Renderer
from alignops.models.collate import Batch, select_rows
from alignops.models.loading import load_model, save_model
from alignops.models.scoring import position_ids_from_mask
from alignops.models.tokenizer import ensure_pad_token, load_tokenizer, resize_for_tokenizer

#: The reward model's own facts, beside its weights and tokenizer.
REWARD_FILE = "reward_model.json"
#: ``RewardConfig.base`` value that starts the reward model from the SFT policy's weights.
FROM_SFT = "sft"


def _accepts_position_ids(model: torch.nn.Module) -> bool:
    model = getattr(model, "module", model)  # a DDP-wrapped model hides the signature
    if hasattr(model, "get_base_model"):  # peft's wrapper (LoRA) passes keyword arguments on to it
        model = model.get_base_model()
    return "position_ids" in inspect.signature(model.forward).parameters


def sequence_rewards(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) scalar reward of each row of ``input_ids`` (B, T), left- or right-padded; keeps the graph."""
    pad_id = getattr(model, "module", model).config.pad_token_id
    if pad_id is None:
        raise ValueError("the reward model needs config.pad_token_id to find each row's last token")
    input_ids = input_ids.masked_fill(attention_mask == 0, pad_id)  # HF pools at the last non-pad id
    extra = {"position_ids": position_ids_from_mask(attention_mask)} if _accepts_position_ids(model) else {}
    logits = model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits  # (B, 1)
    return logits[:, 0]


def reward_head_from_causal_lm(causal_lm: PreTrainedModel, trust_remote_code: bool = False) -> PreTrainedModel:
    """A one-output sequence classifier with ``causal_lm``'s body (copied) and a new score head.

    The head is initialised from the current torch RNG: seed first. ``causal_lm`` is
    left untouched.
    """
    config = copy.deepcopy(causal_lm.config)
    config.num_labels = 1
    config.use_cache = False  # a scorer never decodes; training would build caches for nothing
    model = AutoModelForSequenceClassification.from_config(config, trust_remote_code=trust_remote_code)
    model.base_model.load_state_dict(causal_lm.base_model.state_dict())
    return model.to(dtype=causal_lm.dtype)


def build_reward_backbone(
    base: str,
    sft_model: PreTrainedModel,
    sft_tokenizer: PreTrainedTokenizerBase,
    trust_remote_code: bool = False,
    dtype: str = "float32",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(untrained reward model, its tokenizer): from the SFT policy (``base="sft"``) or from ``base``.

    Any other ``base`` is a local folder or hub id loaded with ITS OWN tokenizer;
    a causal-LM checkpoint gets a fresh score head (seed first).
    """
    if base == FROM_SFT:
        model, tokenizer = reward_head_from_causal_lm(sft_model, trust_remote_code), sft_tokenizer
    else:
        tokenizer = load_tokenizer(base, trust_remote_code=trust_remote_code)
        model = load_model(base, "sequence_classification", trust_remote_code, dtype, num_labels=1)
        model.config.use_cache = False
    ensure_pad_token(tokenizer)
    return resize_for_tokenizer(model, tokenizer), tokenizer


@dataclass(frozen=True, eq=False)
class RewardModel:
    """A reward model ready to score texts: ``rm.score(prompts, responses)``.

    ``prompts`` are canonical and ``responses`` bare replies; they are rendered as the
    policy's training renders them (``renderer``): with the reward tokenizer's chat
    template when it has one, else ``prompt_template`` and ``response_prefix`` + reply + EOS.
    """

    model: PreTrainedModel = field(repr=False)
    """A ``*ForSequenceClassification`` with ``num_labels=1``."""
    tokenizer: PreTrainedTokenizerBase = field(repr=False)
    """The reward model's own tokenizer (pad distinct from EOS)."""
    prompt_template: str = "{prompt}"
    """How a canonical prompt is shown to the model without a chat template (``ModelConfig.prompt_template``)."""
    response_prefix: str = ""
    """Put in front of every response without a chat template (``ModelConfig.response_prefix``)."""
    max_prompt_tokens: int = 64
    """Prompts keep their last this-many tokens."""
    max_response_tokens: int = 160
    """Responses keep their first this-many tokens, EOS included."""
    mean: float = 0.0
    """Raw reward mean on the SFT policy's samples; subtracted by ``score(normalise=True)``."""
    std: float = 1.0
    """Raw reward standard deviation on those samples; divides by it."""

    def __post_init__(self) -> None:
        if "{prompt}" not in self.prompt_template:
            raise ValueError(f"prompt_template needs a '{{prompt}}' field: {self.prompt_template!r}")
        if not self.std > 0:
            raise ValueError(f"normalisation std must be positive, got {self.std}")
        if self.model.config.num_labels != 1:
            raise ValueError(f"a reward model has one output, this one has {self.model.config.num_labels}")

    @property
    def renderer(self) -> Renderer:
        """How this reward model's tokenizer reads (prompt, response) text."""
        return Renderer(self.tokenizer, self.prompt_template, self.response_prefix)

    def tokenize(self, prompts: list[str], responses: list[str]) -> Batch:
        """Right-padded ``input_ids``/``attention_mask`` (N, T) of the rendered pairs."""
        return self.renderer.tokenize(list(prompts), list(responses), self.max_prompt_tokens, self.max_response_tokens)

    @torch.no_grad()
    def score(
        self, prompts: list[str], responses: list[str], batch_size: int = 64, normalise: bool = True
    ) -> torch.Tensor:
        """(N,) float32 rewards on the CPU; ``normalise`` maps SFT samples to mean 0, std 1.

        Rows are batched by length (less padding); the result is in input order and
        does not depend on ``batch_size``.
        """
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not prompts:
            return torch.zeros(0)
        rows = self.tokenize(list(prompts), list(responses))
        order = rows["attention_mask"].sum(1).argsort(descending=True)  # (N,) longest first
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        chunks = []
        for start in range(0, len(order), batch_size):
            batch = select_rows(rows, order[start : start + batch_size])
            chunks.append(
                sequence_rewards(self.model, batch["input_ids"].to(device), batch["attention_mask"].to(device))
                .float()
                .cpu()
            )
        self.model.train(was_training)
        rewards = torch.empty(len(order))
        rewards[order] = torch.cat(chunks)
        return self.normalised(rewards) if normalise else rewards

    def normalised(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw scores mapped by this model's constants (SFT samples to mean 0, std 1)."""
        return (raw - self.mean) / self.std

    def with_normalisation(self, mean: float, std: float) -> RewardModel:
        """The same model with new normalisation constants."""
        return dataclasses.replace(self, mean=float(mean), std=float(std))

    def facts(self) -> dict[str, Any]:
        """Everything but the weights and the tokenizer, JSON-ready (what ``reward_model.json`` holds)."""
        return {
            "prompt_template": self.prompt_template,
            "response_prefix": self.response_prefix,
            "max_prompt_tokens": self.max_prompt_tokens,
            "max_response_tokens": self.max_response_tokens,
            "mean": self.mean,
            "std": self.std,
        }

    def save(self, directory: str | Path) -> None:
        """Model (safetensors), tokenizer and ``reward_model.json`` into ``directory``."""
        directory = Path(directory)
        save_model(self.model, directory)
        self.tokenizer.save_pretrained(str(directory))
        (directory / REWARD_FILE).write_text(json.dumps(self.facts(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path, trust_remote_code: bool = False, dtype: str = "float32") -> RewardModel:
        """What ``save`` wrote."""
        directory = Path(directory)
        facts = json.loads((directory / REWARD_FILE).read_text())
        model = load_model(directory, "sequence_classification", trust_remote_code, dtype)
        tokenizer = load_tokenizer(str(directory), trust_remote_code=trust_remote_code)
        return cls(model=model, tokenizer=tokenizer, **facts)


#: ``reward_model.json`` key that marks a folder as an ensemble of member folders.
ENSEMBLE_KEY = "ensemble"


def member_folder(directory: str | Path, index: int) -> Path:
    """Where member ``index`` of an ensemble saved in ``directory`` lives."""
    return Path(directory) / f"member-{index}"


@dataclass(frozen=True, eq=False)
class RewardEnsemble:
    """Reward models scored together: ``mean_i s_i - uncertainty_penalty * std_i s_i`` of the
    members' normalised scores, then normalised itself (``mean``/``std``, set on the SFT
    policy's samples like a single model's). Scores like a ``RewardModel`` (``score``,
    ``with_normalisation``, ``save``); ``model`` and ``tokenizer`` are the first member's
    (what a critic copied from the reward model starts from)."""

    members: tuple[RewardModel, ...]
    """Each normalised on its own (mean 0, std 1 on SFT samples), so their spread is in one unit."""
    uncertainty_penalty: float = 0.0
    """How many of the members' standard deviations (population, over members) are taken off
    their mean. 0 is the plain mean (Coste et al.'s "mean optimisation")."""
    mean: float = 0.0
    """The combined score's mean on the SFT policy's samples; subtracted by ``score(normalise=True)``."""
    std: float = 1.0
    """The combined score's standard deviation on those samples; divides by it."""

    def __post_init__(self) -> None:
        if len(self.members) < 2:
            raise ValueError(f"an ensemble needs at least two reward models, got {len(self.members)}")
        if not self.uncertainty_penalty >= 0:
            raise ValueError(f"uncertainty_penalty must be >= 0, got {self.uncertainty_penalty}")
        if not self.std > 0:
            raise ValueError(f"normalisation std must be positive, got {self.std}")

    @property
    def model(self) -> PreTrainedModel:
        return self.members[0].model

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.members[0].tokenizer

    def member_scores(self, prompts: list[str], responses: list[str], batch_size: int = 64) -> torch.Tensor:
        """(M, N) normalised scores of each member."""
        return torch.stack([m.score(prompts, responses, batch_size=batch_size, normalise=True) for m in self.members])

    def disagreement(self, prompts: list[str], responses: list[str], batch_size: int = 64) -> torch.Tensor:
        """(N,) the members' standard deviation (population) on each reply, in their normalised
        unit: what ``uncertainty_penalty`` takes off. It grows where a policy's replies leave
        what the members learnt alike, a sign of a reward model being exploited (Coste et al. 2024)."""
        return self.spread(self.member_scores(prompts, responses, batch_size))

    def score(
        self, prompts: list[str], responses: list[str], batch_size: int = 64, normalise: bool = True
    ) -> torch.Tensor:
        """(N,) float32 rewards on the CPU, as ``RewardModel.score``: ``normalise`` maps the SFT
        policy's samples to mean 0, std 1; without it, the members' penalised mean."""
        combined = self.combine(self.member_scores(prompts, responses, batch_size))  # (N,)
        return self.normalised(combined) if normalise else combined

    def normalised(self, raw: torch.Tensor) -> torch.Tensor:
        """Combined scores mapped by the ensemble's own constants (SFT samples to mean 0, std 1)."""
        return (raw - self.mean) / self.std

    def combine(self, member_scores: torch.Tensor) -> torch.Tensor:
        """(N,) the members' mean less ``uncertainty_penalty`` times their spread, from their (M, N)
        normalised scores: the ensemble's score before its own normalisation."""
        return member_scores.mean(0) - self.uncertainty_penalty * self.spread(member_scores)

    @staticmethod
    def spread(member_scores: torch.Tensor) -> torch.Tensor:
        """(N,) the members' population standard deviation on each reply, from their (M, N) scores."""
        return member_scores.std(0, correction=0)

    def with_normalisation(self, mean: float, std: float) -> RewardEnsemble:
        """The same members with new normalisation constants for the combined score."""
        return dataclasses.replace(self, mean=float(mean), std=float(std))

    def facts(self) -> dict[str, Any]:
        """What ``reward_model.json`` holds beside the member folders."""
        return {
            ENSEMBLE_KEY: {"members": len(self.members), "uncertainty_penalty": self.uncertainty_penalty},
            "mean": self.mean,
            "std": self.std,
        }

    def save(self, directory: str | Path) -> None:
        """Each member into ``member-<i>/``, and ``reward_model.json`` into ``directory``."""
        directory = Path(directory)
        for index, member in enumerate(self.members):
            member.save(member_folder(directory, index))
        (directory / REWARD_FILE).write_text(json.dumps(self.facts(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path, trust_remote_code: bool = False, dtype: str = "float32") -> RewardEnsemble:
        """What ``save`` wrote."""
        directory = Path(directory)
        facts = json.loads((directory / REWARD_FILE).read_text())
        ensemble = facts.pop(ENSEMBLE_KEY)
        members = tuple(
            RewardModel.load(member_folder(directory, index), trust_remote_code, dtype)
            for index in range(int(ensemble["members"]))
        )
        return cls(members=members, uncertainty_penalty=float(ensemble["uncertainty_penalty"]), **facts)


def load_reward_model(
    directory: str | Path, trust_remote_code: bool = False, dtype: str = "float32"
) -> RewardModel | RewardEnsemble:
    """A reward model or an ensemble, whichever ``directory`` holds."""
    facts = json.loads((Path(directory) / REWARD_FILE).read_text())
    kind = RewardEnsemble if ENSEMBLE_KEY in facts else RewardModel
    return kind.load(directory, trust_remote_code=trust_remote_code, dtype=dtype)
