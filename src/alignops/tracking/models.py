"""The run's models as MLflow pyfuncs: the policy answers prompts, the reward model scores replies.

Both ship alignops' own ``core``, ``models`` and ``tracking`` code (``code_paths``) and
load with ``mlflow.pyfunc.load_model`` wherever the pinned runtime packages are
installed. The served policy samples through ``sample_responses``, the function every
stage samples with, with the ModelConfig and generation settings it was evaluated
with: its prompts are rendered (chat template or plain template), truncated and
decoded exactly as in the pipeline.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import ModelSignature, infer_signature
from mlflow.models.model import ModelInfo
from mlflow.types import ColSpec, Schema
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignops.models.config import ModelConfig
from alignops.models.generation import GenerationConfig, sample_responses
from alignops.models.loading import load_model, save_model
from alignops.models.reward import RewardEnsemble, RewardModel, load_reward_model
from alignops.models.tokenizer import load_tokenizer

RUNTIME_PACKAGES = ("torch", "transformers", "tokenizers", "accelerate", "safetensors")
"""What a served model needs. Pinned to this environment's versions: MLflow's own
inference of requirements imports torchvision, which is not installed."""

PACKAGE = Path(__file__).resolve().parents[1]
"""The alignops package directory: part of it is shipped with each logged model so it loads anywhere."""
SHIPPED_PACKAGES = ("core", "models", "tracking")
"""What the logged models import (their pyfunc classes live in ``tracking``): nothing of
the pipeline, its data or its web assets travels with them."""

POLICY_ARTIFACT = "policy"
"""The logged policy's artifact: its weights and tokenizer (chat template included), as
``save_pretrained`` writes them, and ``POLICY_FILE``."""
POLICY_FILE = "policy.json"
"""How the logged policy samples: its ModelConfig, GenerationConfig and default decode mode.
A file beside the weights rather than the pyfunc's ``model_config``, which MLflow would also
log as run parameters next to the pipeline's own."""
POLICY_PARAMS = ("temperature", "top_k", "top_p", "max_new_tokens", "do_sample", "seed", "batch_size")
"""What a caller may set per ``predict`` call; each defaults to the logged value."""
EXAMPLE_PROMPT = "Where is my order? It was due last Friday."
EXAMPLE_RESPONSE = "Sorry about the delay. Your order shipped on Monday and should arrive within two days."


def pip_requirements(packages: tuple[str, ...] = RUNTIME_PACKAGES) -> list[str]:
    """``name==version`` for each installed package, local labels (``+cpu``) dropped so the pin
    resolves from PyPI as well as from this machine."""
    pins = []
    for package in packages:
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return pins


def _shipped_code(folder: Path) -> Path:
    """A copy of the alignops packages a logged model imports, under ``folder``."""
    code = folder / PACKAGE.name
    code.mkdir()
    shutil.copy2(PACKAGE / "__init__.py", code / "__init__.py")
    for package in SHIPPED_PACKAGES:
        shutil.copytree(PACKAGE / package, code / package, ignore=shutil.ignore_patterns("__pycache__"))
    return code


@dataclasses.dataclass(frozen=True)
class ServedPolicy:
    """The policy as it is served: weights, tokenizer and how it samples (what ``log_policy`` logs)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    model_config: ModelConfig
    generation: GenerationConfig
    do_sample: bool
    """Whether ``predict`` samples (True) or decodes greedily by default."""

    @classmethod
    def load(cls, folder: str | Path) -> ServedPolicy:
        """What ``save`` wrote into ``folder``."""
        facts_file = Path(folder) / POLICY_FILE
        if not facts_file.exists():
            raise ValueError(f"{folder} holds no {POLICY_FILE}: not a policy logged by alignops")
        facts = json.loads(facts_file.read_text())
        model_config = ModelConfig(**facts["model"])
        model = load_model(folder, "causal_lm", model_config.trust_remote_code, model_config.dtype).eval()
        tokenizer = load_tokenizer(str(folder), trust_remote_code=model_config.trust_remote_code)
        return cls(model, tokenizer, model_config, GenerationConfig(**facts["generation"]), facts["do_sample"])

    def save(self, folder: str | Path) -> None:
        """Weights (safetensors), tokenizer and ``POLICY_FILE`` into ``folder``."""
        save_model(self.model, folder)
        self.tokenizer.save_pretrained(str(folder))
        facts = {
            "model": dataclasses.asdict(self.model_config),
            "generation": dataclasses.asdict(self.generation),
            "do_sample": self.do_sample,
        }
        (Path(folder) / POLICY_FILE).write_text(json.dumps(facts, indent=2) + "\n")

    def respond(self, prompts: list[str], params: dict[str, Any] | None = None) -> list[str]:
        """Replies to canonical ``prompts``, sampled as the pipeline samples (``sample_responses``).

        ``params`` override the logged settings per call; ``seed`` -1 draws from torch's
        global generator, any other value fixes the samples.
        """
        params = {k: v for k, v in (params or {}).items() if v is not None}
        unknown = set(params) - set(POLICY_PARAMS)
        if unknown:
            raise ValueError(f"unknown policy params {sorted(unknown)}; expected some of {list(POLICY_PARAMS)}")
        settings = dataclasses.replace(
            self.generation, **{k: params[k] for k in GenerationConfig.__dataclass_fields__ if k in params}
        )
        seed = int(params.get("seed", -1))
        return sample_responses(
            self.model,
            self.tokenizer,
            list(prompts),
            self.model_config,
            settings,
            seed=None if seed < 0 else seed,
            batch_size=int(params.get("batch_size", 64)),
            do_sample=bool(params.get("do_sample", self.do_sample)),
        ).texts


class PolicyPyfunc(mlflow.pyfunc.PythonModel):
    """``predict(prompts) -> replies``: canonical prompts answered as ``sample_responses`` answers them.

    A list of strings reaches ``predict`` as a one-column DataFrame; a DataFrame with a
    ``prompt`` column is read from that column.
    """

    def load_context(self, context) -> None:
        self.policy = ServedPolicy.load(context.artifacts[POLICY_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[str]:
        column = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
        return self.policy.respond(model_input[column].astype(str).tolist(), params)


def log_policy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    model_config: ModelConfig,
    generation: dict,
    name: str = "policy",
    example_prompt: str = EXAMPLE_PROMPT,
) -> ModelInfo:
    """The policy, its tokenizer and how it samples as a pyfunc in the active run.

    ``generation`` holds the settings it was evaluated with (``GenerationConfig``'s fields
    and ``do_sample``); they are saved with ``model_config`` (``POLICY_FILE``), and each of
    ``POLICY_PARAMS`` is an inference parameter a caller may override per call.
    """
    settings = GenerationConfig(**{k: v for k, v in generation.items() if k in GenerationConfig.__dataclass_fields__})
    policy = ServedPolicy(model, tokenizer, model_config, settings, bool(generation.get("do_sample", True)))
    defaults = {**dataclasses.asdict(settings), "do_sample": policy.do_sample, "seed": -1, "batch_size": 64}
    with tempfile.TemporaryDirectory() as folder:
        weights = Path(folder) / POLICY_ARTIFACT
        policy.save(weights)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=PolicyPyfunc(),
            artifacts={POLICY_ARTIFACT: str(weights)},
            code_paths=[str(_shipped_code(Path(folder)))],
            signature=infer_signature([example_prompt], [EXAMPLE_RESPONSE], params=defaults),
            input_example=[example_prompt],
            pip_requirements=pip_requirements(),
        )


def load_policy(model_uri: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, ModelConfig, GenerationConfig]:
    """A logged policy back as (model, tokenizer, model config, generation settings), ready for
    ``sample_responses``: the gate samples the champion exactly as evaluation sampled it,
    and as the served model does. Reads the weights without unpickling the pyfunc."""
    with tempfile.TemporaryDirectory() as folder:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=folder))
        policy = ServedPolicy.load(local / "artifacts" / POLICY_ARTIFACT)
    return policy.model, policy.tokenizer, policy.model_config, policy.generation


class RewardModelPyfunc(mlflow.pyfunc.PythonModel):
    """``predict(DataFrame[prompt, response]) -> DataFrame[reward]``: raw (unnormalised) rewards.

    The normalisation PPO uses (mean 0, std 1 on SFT samples) is a training detail; a
    served reward model reports what its head outputs, and the constants stay in
    ``reward_model.json`` beside the weights.
    """

    def load_context(self, context) -> None:
        self.reward_model = load_reward_model(context.artifacts["reward_model"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        missing = {"prompt", "response"} - set(model_input.columns)
        if missing:
            raise ValueError(f"reward model input needs columns prompt and response; missing {sorted(missing)}")
        batch_size = int((params or {}).get("batch_size", 64))
        rewards = self.reward_model.score(
            model_input["prompt"].astype(str).tolist(),
            model_input["response"].astype(str).tolist(),
            batch_size=batch_size,
            normalise=False,
        )
        return pd.DataFrame({"reward": rewards.numpy().astype("float64")}, index=model_input.index)


REWARD_SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "prompt"), ColSpec("string", "response")]),
    outputs=Schema([ColSpec("double", "reward")]),
)


def log_reward_model(reward_model: RewardModel | RewardEnsemble, name: str = "reward_model") -> ModelInfo:
    """The reward model (weights, tokenizer, prompt format) as a pyfunc in the active run.

    alignops' own ``models`` code travels with it (``code_paths``), so loading it needs
    the pinned runtime packages, not an alignops install.
    """
    with tempfile.TemporaryDirectory() as folder:
        weights = Path(folder) / "reward_model"
        reward_model.save(weights)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=RewardModelPyfunc(),
            artifacts={"reward_model": str(weights)},
            code_paths=[str(_shipped_code(Path(folder)))],
            signature=REWARD_SIGNATURE,
            input_example=pd.DataFrame({"prompt": [EXAMPLE_PROMPT], "response": [EXAMPLE_RESPONSE]}),
            pip_requirements=pip_requirements(),
        )
