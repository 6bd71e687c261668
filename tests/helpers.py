"""Code the test modules share: throwaway Kedro projects, and the tiny Llama most loop tests train.

Plain functions and constants; the fixtures built on them live in ``tests/conftest.py``.
No test module imports another (``tests/test_layout.py`` checks it).
"""

from __future__ import annotations

import ast
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from alignops.models.config import ModelConfig
from alignops.models.loading import build_causal_lm
from alignops.models.tokenizer import train_bpe_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
KEDRO = Path(sys.executable).parent / "kedro"
DATA_LAYERS = (
    "01_raw",
    "02_intermediate",
    "03_primary",
    "04_feature",
    "05_model_input",
    "06_models",
    "07_model_output",
    "08_reporting",
)


# --- Kedro projects -----------------------------------------------------------------------------------


_EMPTY_STORE: Path | None = None


def empty_mlflow_store() -> Path:
    """An empty MLflow sqlite store (schema migrated, the Default experiment), made once per
    process. A new store runs every schema migration, ~2 s of CPU; tests that only need a
    store of their own take a copy of this one instead (the tracked project makes its own,
    as a user's first run does)."""
    global _EMPTY_STORE
    if _EMPTY_STORE is None:
        from mlflow.tracking import MlflowClient

        folder = Path(tempfile.mkdtemp(prefix="alignops-mlflow-store-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
        _EMPTY_STORE = folder / "mlflow.db"
    return _EMPTY_STORE


def copy_empty_mlflow_store(destination: Path) -> Path:
    """``destination`` (a ``.db`` path) as a fresh copy of ``empty_mlflow_store()``."""
    shutil.copyfile(empty_mlflow_store(), destination)
    return destination


def environment_without_mlflow_run() -> dict[str, str]:
    """This process's environment without the ``MLFLOW_*`` variables a run or a test exported
    (run id, tracking and registry URIs), telemetry still off: what a fresh shell would give
    a ``kedro run`` or a new Python process."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") or k == "MLFLOW_DISABLE_TELEMETRY"}


def make_project_copy(destination: Path, tracking_store: bool = True) -> Path:
    """A runnable copy of this Kedro project (config + metadata, empty data layers).

    Pipelines then write into ``destination/data`` instead of the working tree, so
    tests never clobber a developer's outputs and can run in parallel. With
    ``tracking_store`` the project starts with an empty MLflow store (``mlflow.db``, a copy
    of ``empty_mlflow_store()``); without, its first tracked run creates one.
    """
    destination.mkdir(parents=True, exist_ok=True)
    if tracking_store:
        copy_empty_mlflow_store(destination / "mlflow.db")
    shutil.copytree(REPO_ROOT / "conf", destination / "conf", dirs_exist_ok=True)
    (destination / "conf" / "local").mkdir(exist_ok=True)
    shutil.copy2(REPO_ROOT / "pyproject.toml", destination / "pyproject.toml")
    # The package is installed (editable); Kedro only checks that the source dir exists.
    (destination / "src").mkdir(exist_ok=True)
    for layer in DATA_LAYERS:
        (destination / "data" / layer).mkdir(parents=True, exist_ok=True)
    return destination


def base_catalog(root: Path, *stages: str):
    """A ``DataCatalog`` of ``conf/base/catalog_<stage>.yml`` for each of ``stages`` (dataset
    factories too), every path under ``root`` instead of the working tree."""
    import yaml
    from kedro.io import DataCatalog

    config = {}
    for stage in stages:
        config.update(yaml.safe_load((REPO_ROOT / "conf" / "base" / f"catalog_{stage}.yml").read_text()))
    for entry in config.values():
        entry = entry.get("dataset", entry)  # the MLflow artifact wrapper's inner dataset
        for key in ("filepath", "path"):
            if key in entry:
                entry[key] = str(root / entry[key])
    return DataCatalog.from_config(config)


def run_kedro(
    project_path: Path,
    env: str = "test",
    pipeline_names: list[str] | None = None,
    runtime_params: dict | None = None,
    **run_kwargs,
) -> dict:
    """Run pipelines in-process with a real ``KedroSession`` rooted at ``project_path``."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project_path)
    # No chdir: the tracking hook anchors conf/base/mlflow.yml's sqlite:///mlflow.db at
    # project_path, so the run is tracked inside the copy wherever pytest runs from.
    with KedroSession.create(
        project_path=project_path, env=env, runtime_params=runtime_params or {}
    ) as session:
        return session.run(pipeline_names=pipeline_names, **run_kwargs)


def last_run(project: Path):
    """(client, the newest run) of the project copy's own sqlite store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(experiments, order_by=["attributes.start_time DESC"], max_results=1)[0]


def stage_history(project: Path, stage: str) -> list[dict]:
    """The rows of a stage's ``<stage>_history.json`` in the project copy."""
    return json.loads((project / "data" / "08_reporting" / f"{stage}_history.json").read_text())


def kedro_cli(project: Path, *args: str, timeout: int = 600, env: dict[str, str] | None = None,
              ) -> subprocess.CompletedProcess:
    """``kedro <args>`` in ``project``, as a user types it (offline, one torch thread).

    ``env`` is the environment to start from (default: this process's, as it is now).
    """
    return subprocess.run(
        [str(KEDRO), *args],
        cwd=project,
        env={**(os.environ if env is None else env), "KEDRO_DISABLE_TELEMETRY": "true",
             "GX_ANALYTICS_ENABLED": "false", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


HH_SAMPLE = REPO_ROOT / "examples" / "hh_rlhf" / "harmless-base-sample.jsonl.gz"
USER_ENV = "user"


def make_user_env(project: Path, model: dict | None = None) -> None:
    """``conf/user``: the ``test`` environment's tiny sizes plus a user's setup — their HH-RLHF
    file as ``raw_preferences`` and ``sources.kind: files`` (Kedro reads one environment on
    top of base, so the test sizes are copied in)."""
    target = project / "conf" / USER_ENV
    shutil.copytree(project / "conf" / "test", target)
    (target / "catalog.yml").write_text(yaml.safe_dump({"raw_preferences": {
        "type": "alignops.catalog.preferences.PreferenceSourceDataset",
        "filepath": str(HH_SAMPLE),
        "format": "hh_rlhf",
        "read_only": True,
    }}))
    blocks = {
        "sources": {"kind": "files", "sft": "chosen", "eval_prompts": "heldout"},
        "data_split": {"heldout_fraction": 0.2, "audit_fraction": 0.25},
        "model": {"prompt_template": "{prompt}", **(model or {})},
        # tiny models make a chance-level audit judge, which the gate would not let decide: the
        # head-to-head is what these tests watch (tests/tracking covers the refusal)
        "registry": {"min_judge_accuracy": 0.0},
    }
    for block, values in blocks.items():
        path = target / f"parameters_{block}.yml"
        current = yaml.safe_load(path.read_text())[block] if path.exists() else {}
        path.write_text(yaml.safe_dump({block: {**current, **values}}))



TRACKED_FIRST_RUN_DATA = "first_run_data"
"""The tracked project's copy of data/ as its first ``kedro run`` (from an empty data/) left it."""
TRACKED_OVERRIDE_REASON = "read the first run's evidence: the project's first policy, served until a better one"
"""Why the tracked project's person made v1 champion over the gate (``alignops-promote``)."""


# --- the tiny Llama -----------------------------------------------------------------------------------

SUPPORT_WORDS = "yes no please thanks order refund account password reset help the where is my close charge".split()
"""The tiny tokenizer's world: a support desk in sixteen words."""


TINY_LLAMA = ModelConfig(
    vocab_size=300,
    tokenizer_min_frequency=1,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    max_prompt_tokens=16,
    max_response_tokens=16,
)
"""A 2-layer, 32-wide Llama: a training step takes milliseconds on one CPU thread."""


def make_tiny_tokenizer(texts: list[str] | None = None):
    """A byte-level BPE (vocabulary ~300) trained on ``texts``, by default sentences of ``SUPPORT_WORDS``."""
    if texts is None:
        words = SUPPORT_WORDS
        texts = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(10)) for i in range(100)]
    return train_bpe_tokenizer(texts, TINY_LLAMA.vocab_size, min_frequency=1,
                               model_max_length=TINY_LLAMA.max_position_embeddings)


CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
"""A Llama-3-style chat template: BOS once, a role header per message, EOS ending each turn."""


def make_chat_tokenizer(texts: list[str] | None = None):
    """``make_tiny_tokenizer(texts)`` with a BOS token, role markers and ``CHAT_TEMPLATE``."""
    tokenizer = make_tiny_tokenizer(texts)
    tokenizer.add_special_tokens(
        {"bos_token": "<|begin|>", "additional_special_tokens": ["<|system|>", "<|user|>", "<|assistant|>"]}
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tiny_chat_llama(folder: Path, texts: list[str] | None = None, seed: int = 0) -> Path:
    """A local base model for ``ModelConfig(base=str(folder))``: a random ``TINY_LLAMA`` and
    ``make_chat_tokenizer(texts)``, saved as ``from_pretrained`` reads them."""
    tokenizer = make_chat_tokenizer(texts)
    make_tiny_policy(tokenizer, seed).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def make_tiny_policy(tokenizer, seed: int = 0):
    """A randomly initialised ``TINY_LLAMA`` standing in for the SFT model, in eval mode."""
    torch.manual_seed(seed)
    return build_causal_lm(TINY_LLAMA, tokenizer).eval()


class CountingScorer:
    """A reward model stand-in: how often ``text`` occurs in each response."""

    def __init__(self, text: str = "e") -> None:
        self.text = text
        self.calls = 0

    def score(self, prompts, responses, batch_size=64, normalise=True) -> torch.Tensor:
        self.calls += 1
        return torch.tensor([float(r.count(self.text)) for r in responses])


PPO_LOGGED_EVERY_STEP = {
    "objective/scores",
    "objective/kl",
    "objective/entropy",
    "objective/kl_coef",
    "objective/rlhf_reward",
    "policy/approxkl",
    "policy/clipfrac",
    "loss/policy",
    "loss/value",
    "val/clipfrac",
    "val/explained_variance",
    "ppo/lr",
    "ppo/mean_response_length",
    "ppo/eos_rate",
    "ppo/episodes_per_s",
    "ppo/generation_tokens_per_s",
}
"""What the PPO loop writes to its history (and MLflow) at every step."""


def mount_tmpfs(folder: Path, options: str) -> bool:
    """Mount a tmpfs with ``options`` (``size=600k``, ``ro,size=1m``) on ``folder``; False where
    this machine does not let the tests mount one (it takes root with CAP_SYS_ADMIN)."""
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def unmount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


CHROMIUM = Path("/usr/bin/chromium")
"""Debian's Chromium, which Playwright drives headless where a person would look at a page."""
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOTS = Path(os.environ.get("ALIGNOPS_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts")) / "screenshots"


def imported_modules(path: Path, package: str) -> list[str]:
    """Every module a file imports, anywhere in it (function-level imports included)."""
    modules = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # a relative import stays inside the package
                modules.append(f"alignops.{package}")
            elif node.module == "alignops":  # `from alignops import training` imports alignops.training
                modules.extend(f"alignops.{alias.name}" for alias in node.names)
            else:
                modules.append(node.module or "")
    return modules
