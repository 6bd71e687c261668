"""The run's models as MLflow models: the policy in the transformers flavour, the reward model as a pyfunc.

Both load with ``mlflow.pyfunc.load_model``: the policy answers a prompt, the reward
model returns raw scalar rewards for (prompt, response) rows.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import ModelSignature, infer_signature
from mlflow.models.model import ModelInfo
from mlflow.types import ColSpec, Schema
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignops.models.config import ModelConfig
from alignops.models.generation import GenerationConfig
from alignops.models.reward import RewardModel

RUNTIME_PACKAGES = ("torch", "transformers", "tokenizers", "accelerate", "safetensors")
"""What a served model needs. Pinned to this environment's versions: MLflow's own
inference of requirements imports torchvision, which is not installed."""

PACKAGE = Path(__file__).resolve().parents[1]
"""The alignops package directory: part of it is shipped with the reward model so it loads anywhere."""
SHIPPED_PACKAGES = ("core", "models", "tracking")
"""What the logged reward model imports (its pyfunc class lives in ``tracking``): nothing of
the pipeline, its data or its web assets travels with it."""

POLICY_METADATA = "alignops"
"""Key of the logged policy's MLflow metadata holding its ModelConfig and generation settings."""
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


def log_policy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    model_config: ModelConfig,
    generation: dict,
    name: str = "policy",
    example_prompt: str = EXAMPLE_PROMPT,
) -> ModelInfo:
    """The policy and its tokenizer as a ``text-generation`` transformers model in the active run.

    The prompt template is saved with it, so callers send canonical prompts (a bare
    question) and get the reply alone back; ``generation`` (max_new_tokens, temperature,
    ...) becomes the model's default inference configuration, and each of its keys an
    inference parameter a caller may override per call.
    """
    return mlflow.transformers.log_model(
        transformers_model={"model": model, "tokenizer": tokenizer},
        name=name,
        task="text-generation",
        prompt_template=model_config.prompt_template,
        model_config=dict(generation),
        # the generation settings are also inference params: predict(prompts, params={...}) overrides them
        signature=infer_signature([example_prompt], [EXAMPLE_RESPONSE], params=dict(generation)),
        input_example=[example_prompt],
        pip_requirements=pip_requirements(),
        # what load_policy needs to sample exactly as the pipeline did (prompt format, limits)
        metadata={POLICY_METADATA: {"model": dataclasses.asdict(model_config), "generation": dict(generation)}},
    )


def load_policy(model_uri: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, ModelConfig, GenerationConfig]:
    """A logged policy back as (model, tokenizer, model config, generation settings), ready for
    ``sample_responses``: the gate samples the champion exactly as evaluation sampled it."""
    info = mlflow.models.get_model_info(model_uri)
    facts = (info.metadata or {}).get(POLICY_METADATA)
    if facts is None:
        raise ValueError(f"{model_uri} was not logged by alignops (no {POLICY_METADATA!r} metadata)")
    components = mlflow.transformers.load_model(model_uri, return_type="components")
    sampling = {k: v for k, v in facts["generation"].items() if k in GenerationConfig.__dataclass_fields__}
    return components["model"], components["tokenizer"], ModelConfig(**facts["model"]), GenerationConfig(**sampling)


class RewardModelPyfunc(mlflow.pyfunc.PythonModel):
    """``predict(DataFrame[prompt, response]) -> DataFrame[reward]``: raw (unnormalised) rewards.

    The normalisation PPO uses (mean 0, std 1 on SFT samples) is a training detail; a
    served reward model reports what its head outputs, and the constants stay in
    ``reward_model.json`` beside the weights.
    """

    def load_context(self, context) -> None:
        self.reward_model = RewardModel.load(context.artifacts["reward_model"])

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


def log_reward_model(reward_model: RewardModel, name: str = "reward_model") -> ModelInfo:
    """The reward model (weights, tokenizer, prompt format) as a pyfunc in the active run.

    alignops' own ``models`` code travels with it (``code_paths``), so loading it needs
    the pinned runtime packages, not an alignops install.
    """
    with tempfile.TemporaryDirectory() as folder:
        weights, code = Path(folder) / "reward_model", Path(folder) / PACKAGE.name
        reward_model.save(weights)
        code.mkdir()
        shutil.copy2(PACKAGE / "__init__.py", code / "__init__.py")
        for package in SHIPPED_PACKAGES:
            shutil.copytree(PACKAGE / package, code / package, ignore=shutil.ignore_patterns("__pycache__"))
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=RewardModelPyfunc(),
            artifacts={"reward_model": str(weights)},
            code_paths=[str(code)],
            signature=REWARD_SIGNATURE,
            input_example=pd.DataFrame({"prompt": [EXAMPLE_PROMPT], "response": [EXAMPLE_RESPONSE]}),
            pip_requirements=pip_requirements(),
        )
