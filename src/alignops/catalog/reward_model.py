"""Kedro dataset for a reward model folder (``alignops.models.reward.RewardModel``).

Example::

    reward_model:
      type: alignops.catalog.reward_model.RewardModelDataset
      filepath: data/06_models/reward
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset

from alignops.catalog.models import _replace_folder
from alignops.models.reward import REWARD_FILE, RewardEnsemble, RewardModel, load_reward_model

Scorer = RewardModel | RewardEnsemble


class RewardModelDataset(AbstractDataset[Scorer, Scorer]):
    """Model (safetensors) + tokenizer + ``reward_model.json`` in one folder (an ensemble: a
    folder per member beside its ``reward_model.json``), replaced whole on save."""

    def __init__(
        self,
        *,
        filepath: str,
        trust_remote_code: bool = False,
        dtype: str = "float32",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._filepath = Path(filepath)
        self._trust_remote_code = trust_remote_code
        self._dtype = dtype
        self.metadata = metadata

    def load(self) -> Scorer:
        return load_reward_model(self._filepath, trust_remote_code=self._trust_remote_code, dtype=self._dtype)

    def save(self, data: Scorer) -> None:
        _replace_folder(self._filepath, data.save)

    def _exists(self) -> bool:
        return (self._filepath / REWARD_FILE).is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "trust_remote_code": self._trust_remote_code, "dtype": self._dtype}
