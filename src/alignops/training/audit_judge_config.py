"""The audit judge: ``conf/base/parameters_audit_judge.yml`` mirrors it one to one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AuditJudgeConfig:
    """A judge for the policies that no training stage shares a blind spot with.

    Trained, it is a reward model fit with the reward stage's recipe (``params:reward``)
    on ``preferences_audit``, prompts that the training reward model, PPO and DPO never
    saw; pretrained, it is any one-output Hugging Face sequence classifier. Either way
    it is normalised on the SFT policy's samples, so its scores read in SFT spreads.
    """

    base: str = "sft"
    """Trained: what it starts from (``sft`` or a local folder / hub id, as
    ``reward.base``). Not trained: the classifier's folder or hub id."""
    train: bool = True
    """False uses ``base`` as it is (nothing is fitted, ``preferences_audit`` may be empty)."""

    def __post_init__(self) -> None:
        if not self.base:
            raise ValueError("audit_judge.base must be 'sft', a local path or a hub id")
        if not self.train and self.base == "sft":
            raise ValueError("audit_judge.train false judges with a trained classifier: set audit_judge.base to it")
