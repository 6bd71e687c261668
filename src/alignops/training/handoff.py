"""Values across the launcher's process boundary: a training node's inputs and rank 0's
outputs, written to and read from the hand-off folder as parquet, JSON and safetensors
folders (no pickle), and the digest by which ranks show they trained the same model."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_value(path: Path, value: Any) -> dict[str, str]:
    """Write ``value`` under ``path`` (a folder or a file beside it); what ``read_value`` needs."""
    import pandas as pd
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from alignops.models.loading import save_model
    from alignops.models.reward import RewardEnsemble, RewardModel

    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(value, (RewardModel, RewardEnsemble)):
        value.save(path)
        return {"kind": "reward_model", "dtype": _dtype_name(value.model)}
    if isinstance(value, PreTrainedModel):
        save_model(value, path)
        kind = "sequence_classification" if type(value).__name__.endswith("ForSequenceClassification") else "causal_lm"
        # a model the run loaded with trust_remote_code (it has an auto_map) is saved with that
        # code; the other side runs the code this process already ran, nothing new
        remote = bool(getattr(value.config, "auto_map", None))
        return {"kind": kind, "dtype": _dtype_name(value), "trust_remote_code": remote}
    if isinstance(value, PreTrainedTokenizerBase):
        value.save_pretrained(str(path))
        return {"kind": "tokenizer"}
    if isinstance(value, pd.DataFrame):
        value.to_parquet(path.with_suffix(".parquet"))
        return {"kind": "dataframe"}
    try:
        path.with_suffix(".json").write_text(json.dumps(value))
    except TypeError as error:
        raise TypeError(f"cannot hand {type(value).__name__} to a launched process: {error}") from error
    return {"kind": "json"}


def read_value(path: Path, meta: Mapping[str, str]) -> Any:
    """What ``write_value`` wrote under ``path``."""
    kind = meta["kind"]
    if kind == "reward_model":
        from alignops.models.reward import load_reward_model

        return load_reward_model(path, dtype=meta["dtype"])
    if kind in ("causal_lm", "sequence_classification"):
        from alignops.models.loading import load_model

        return load_model(path, kind, trust_remote_code=bool(meta.get("trust_remote_code")), dtype=meta["dtype"])
    if kind == "tokenizer":
        from alignops.models.tokenizer import load_tokenizer

        return load_tokenizer(str(path))
    if kind == "dataframe":
        import pandas as pd

        return pd.read_parquet(path.with_suffix(".parquet"))
    return json.loads(path.with_suffix(".json").read_text())


def _dtype_name(model: Any) -> str:
    return str(model.dtype).removeprefix("torch.")


def model_digest(value: Any) -> str | None:
    """sha256 of a model's state (names, shapes, bytes), or None when ``value`` is no model."""
    import torch

    members = getattr(value, "members", None)  # a RewardEnsemble: every member, in order
    parts = {"": value} if members is None else {f"{index}.": member for index, member in enumerate(members)}
    modules = {prefix: getattr(part, "model", part) for prefix, part in parts.items()}  # a RewardModel's classifier
    if not all(isinstance(module, torch.nn.Module) for module in modules.values()):
        return None
    digest = hashlib.sha256()
    for prefix, module in modules.items():
        for name, tensor in sorted(module.state_dict().items()):
            flat = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{prefix}{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
