"""What alignops records about a run, apart from Kedro: git state, file digests, secret names.

Used by the Kedro hook (``alignops.hooks``) and the promotion CLI; nothing here imports Kedro.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import yaml

SECRET_NAMES = frozenset(
    {
        "token",
        "hf_token",
        "hub_token",
        "auth_token",
        "access_token",
        "api_token",
        "use_auth_token",
        "password",
        "passwd",
        "api_key",
        "apikey",
        "access_key",
        "secret_key",
        "private_key",
        "credential",
        "credentials",
    }
)
"""Last segments of parameter names whose values never reach the tracking server (with any
segment containing "secret" or "password"). Whole segments, so ``max_prompt_tokens`` or
``tokenizer_min_frequency`` are still logged."""
REDACTED = "***"
DEFAULT_HASH_DATASETS = (
    "raw_preferences", "raw_demonstrations", "raw_eval_prompts", "sft_demonstrations", "eval_prompts",
)
"""``tracking.hash_datasets`` when a project's parameters leave it out (conf/base/parameters_tracking.yml)."""


def git_state(path: Path) -> dict[str, str]:
    """Commit and dirtiness of the git tree at ``path`` (tracked files but ``dvc.lock``); empty outside git."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=path, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        # dvc.lock is DVC's record of the outputs, rewritten by the reproduction itself after
        # each stage: a change there does not make the code or configuration dirty
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude,glob)**/dvc.lock"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git.commit": commit, "git.dirty": str(dirty).lower(), "mlflow.source.git.commit": commit}


def run_name(pipelines: list[str], env: str, git: dict[str, str]) -> str:
    """What a person reads in the runs list: the pipelines, the Kedro environment and the
    short commit, e.g. ``sft+reward test 64b122e``; ``-dirty`` when tracked files had
    uncommitted changes (the commit alone does not say what ran); no commit outside git."""
    name = f"{'+'.join(pipelines)} {env}"
    commit = git.get("git.commit")
    if commit:
        name += f" {commit[:7]}" + ("-dirty" if git.get("git.dirty") == "true" else "")
    return name


def file_md5(path: Path, chunk: int = 1 << 20) -> str:
    """The md5 of a file's bytes, as DVC computes it."""
    digest = hashlib.md5()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def dataset_files(dataset: Any) -> list[Path]:
    """The local files behind a catalog dataset (several for a glob), or none it can name."""
    if hasattr(dataset, "source_files"):
        return list(dataset.source_files())
    filepath = getattr(dataset, "_filepath", None)
    if filepath is None:
        return []
    path = Path(str(filepath))
    return [path] if path.is_file() else []


def is_secret(name: str) -> bool:
    """Does a (flattened) parameter name look like it holds a token, key or password?"""
    segment = name.rsplit(".", 1)[-1].lower().replace("-", "_")
    return segment in SECRET_NAMES or "secret" in segment or "password" in segment


def project_sqlite_uri(uri: str | None, project_path: Path) -> str | None:
    """``sqlite:///mlflow.db`` (relative) as an absolute URI under the project root.

    MLflow resolves a relative sqlite path against the working directory and caches the
    store by URI, so a session started from elsewhere (a notebook, a test, a scheduler)
    would track into another folder's database. Other URIs are returned unchanged.
    """
    prefix = "sqlite:///"
    if not uri or not uri.startswith(prefix) or uri.startswith(prefix + "/") or uri == prefix + ":memory:":
        return uri
    return prefix + str((project_path / uri[len(prefix) :]).resolve())


def find_project_root(start: Path) -> Path | None:
    """The nearest folder at or above ``start`` whose ``pyproject.toml`` has a ``[tool.kedro]``
    section (Kedro's own test for a project root), or None outside any project."""
    for folder in (start.resolve(), *start.resolve().parents):
        try:
            if "kedro" in tomllib.loads((folder / "pyproject.toml").read_text()).get("tool", {}):
                return folder
        except (OSError, tomllib.TOMLDecodeError):
            continue
    return None


def project_mlflow_uris(root: Path, env: str = "local") -> tuple[str | None, str | None]:
    """The tracking and registry URIs a ``kedro run`` in ``env`` uses: ``server`` of
    ``conf/<env>/mlflow.yml`` if that file sets one, else of ``conf/base/mlflow.yml``
    (Kedro replaces a top-level key, it does not merge it), sqlite paths anchored at
    ``root`` as the hook anchors them. The registry URI is None where unset (MLflow
    then uses the tracking URI)."""
    server: dict = {}
    for folder in ("base", env):
        path = root / "conf" / folder / "mlflow.yml"
        if path.is_file():
            server = (yaml.safe_load(path.read_text()) or {}).get("server", server) or {}
    return tuple(project_sqlite_uri(server.get(key), root) for key in ("mlflow_tracking_uri", "mlflow_registry_uri"))


def unwritable(path: Path) -> str | None:
    """Why ``path`` (a file or folder to be written, which may not exist yet) cannot be
    written, or None when it can: checked on the nearest folder that exists, the one that
    would get the new entry. A read-only filesystem stops root too; permissions do not."""
    folder = next((p for p in (path.parent, *path.parents) if p.exists()), None)
    if folder is None:
        return None
    if path.exists() and path.is_dir():
        folder = path  # a model folder is replaced beside itself, but its checkpoints go inside
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return f"{folder} is on a read-only file system"
    except OSError as error:
        return f"{folder}: {error.strerror}"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{folder} is not writable by this user (permission denied)"
    return None


def check_outputs_writable(pipeline: Any, catalog: Any, project_path: Path) -> None:
    """Every local file or folder this run's nodes write must be writable, checked before the
    first node (and before an MLflow run is opened): a read-only or unwritable data folder
    otherwise surfaces when a stage saves its model, after it trained."""
    resolver = getattr(catalog, "config_resolver", None)
    if resolver is None:
        return
    problems = []
    for name in sorted(pipeline.all_outputs()):
        config = resolver.resolve_pattern(name)
        configs = [config, config.get("dataset") if isinstance(config.get("dataset"), dict) else {}]
        for entry in configs:
            for key in ("filepath", "path"):
                value = str(entry.get(key) or "")
                if not value or "://" in value and not value.startswith("file://"):
                    continue  # nothing local to write (an in-memory dataset, a remote store)
                path = Path(value.removeprefix("file://"))
                cause = unwritable(path if path.is_absolute() else project_path / path)
                if cause:
                    problems.append(f"{name} ({value}): {cause}")
    if problems:
        raise PermissionError("this run cannot write its outputs; nothing was run:\n  " + "\n  ".join(problems))
