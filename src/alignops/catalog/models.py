"""Kedro datasets for models, tokenizers and checkpoint folders: the catalog owns every path.

Example::

    sft_model:
      type: alignops.catalog.models.HFModelDataset
      filepath: data/06_models/sft
      model_class: causal_lm            # or sequence_classification
    tokenizer:
      type: alignops.catalog.models.HFTokenizerDataset
      filepath: data/06_models/tokenizer
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignops.models.io_errors import write_failure
from alignops.models.loading import MODEL_CLASSES, load_model, save_model
from alignops.models.tokenizer import load_tokenizer


def _replace_folder(target: Path, write: Callable[[Path], None]) -> None:
    """``write`` into a staging folder beside ``target``, then swap it in.

    A crash, a full disk or a folder without write permission leaves the previous model in
    place instead of half of a new one; the error names the folder and the cause.
    """
    staging = None
    previous = target.with_name(f".{target.name}.previous")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if previous.exists() and not target.exists():  # a save killed between its two renames
            previous.rename(target)
        for leftover in target.parent.glob(f".{target.name}.*"):  # staging folders of killed saves
            shutil.rmtree(leftover, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        write(staging)
        staging.chmod(0o755)  # mkdtemp makes 0700; give the folder a plain mkdir's mode
        if target.exists():  # moved aside, not deleted, until the new one is in place
            shutil.rmtree(previous, ignore_errors=True)
            target.rename(previous)
        try:
            staging.rename(target)
        except OSError:
            if previous.exists() and not target.exists():
                previous.rename(target)
            raise
        shutil.rmtree(previous, ignore_errors=True)
    except Exception as error:
        cause = write_failure(error, staging or target.parent)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        kept = "; the previous one is untouched" if target.exists() else ""
        raise DatasetError(f"could not write {target}: {cause}{kept}") from error
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise


class HFModelDataset(AbstractDataset[PreTrainedModel, PreTrainedModel]):
    """A transformers model folder (config.json + safetensors), saved and loaded whole."""

    def __init__(
        self,
        *,
        filepath: str,
        model_class: str = "causal_lm",
        trust_remote_code: bool = False,
        dtype: str = "float32",
        load_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if model_class not in MODEL_CLASSES:
            raise DatasetError(f"unknown model_class {model_class!r}; expected one of {sorted(MODEL_CLASSES)}")
        self._filepath = Path(filepath)
        self._model_class = model_class
        self._trust_remote_code = trust_remote_code
        self._dtype = dtype
        self._load_args = dict(load_args or {})
        self.metadata = metadata

    def load(self) -> PreTrainedModel:
        return load_model(
            self._filepath, self._model_class, self._trust_remote_code, self._dtype, **self._load_args
        )

    def save(self, data: PreTrainedModel) -> None:
        _replace_folder(self._filepath, lambda folder: save_model(data, folder))

    def _exists(self) -> bool:
        return (self._filepath / "config.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {
            "filepath": str(self._filepath),
            "model_class": self._model_class,
            "trust_remote_code": self._trust_remote_code,
            "dtype": self._dtype,
        }


class HFModelSnapshots(AbstractDataset[dict[str, Any], dict[str, Callable[[], PreTrainedModel]]]):
    """Several model folders under ``path`` by name (a policy's snapshots along training).

    Saved whole: each value is a model, or the folder a training loop already wrote one to
    (copied, so a large model is never held in memory for this); names not given are
    removed. Loaded lazily, as Kedro's ``PartitionedDataset`` does: ``{name: load}``, each
    ``load()`` reading its model, so a reader holds one snapshot at a time.
    """

    def __init__(
        self, *, path: str, model_class: str = "causal_lm", dtype: str = "float32", metadata: dict | None = None
    ) -> None:
        if model_class not in MODEL_CLASSES:
            raise DatasetError(f"unknown model_class {model_class!r}; expected one of {sorted(MODEL_CLASSES)}")
        self._path, self._model_class, self._dtype = Path(path), model_class, dtype
        self.metadata = metadata

    def load(self) -> dict[str, Callable[[], PreTrainedModel]]:
        folders = sorted(p for p in self._path.glob("*") if (p / "config.json").is_file())
        return {
            folder.name: functools.partial(load_model, folder, self._model_class, False, self._dtype)
            for folder in folders
        }

    def save(self, data: dict[str, Any]) -> None:
        for name, value in data.items():
            if isinstance(value, (str, Path)):
                source = Path(value)
                write = functools.partial(_copy_folder, source)
            else:
                write = functools.partial(save_model, value)
            _replace_folder(self._path / name, write)
        for stale in self._path.glob("*"):  # snapshots of an earlier run that this one did not take
            if stale.is_dir() and stale.name not in data and not stale.name.startswith("."):
                shutil.rmtree(stale, ignore_errors=True)
        self._path.mkdir(parents=True, exist_ok=True)  # an empty run still leaves the folder DVC tracks

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "model_class": self._model_class, "dtype": self._dtype}


def _copy_folder(source: Path, target: Path) -> None:
    shutil.copytree(source, target, dirs_exist_ok=True)


class HFTokenizerDataset(AbstractDataset[PreTrainedTokenizerBase, PreTrainedTokenizerBase]):
    """A tokenizer folder written by ``save_pretrained``; loads through ``AutoTokenizer``."""

    def __init__(
        self, *, filepath: str, trust_remote_code: bool = False, metadata: dict[str, Any] | None = None
    ) -> None:
        self._filepath = Path(filepath)
        self._trust_remote_code = trust_remote_code
        self.metadata = metadata

    def load(self) -> PreTrainedTokenizerBase:
        return load_tokenizer(str(self._filepath), trust_remote_code=self._trust_remote_code)

    def save(self, data: PreTrainedTokenizerBase) -> None:
        _replace_folder(self._filepath, lambda folder: data.save_pretrained(str(folder)))

    def _exists(self) -> bool:
        return (self._filepath / "tokenizer_config.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "trust_remote_code": self._trust_remote_code}


class CheckpointDirectory(AbstractDataset[None, str]):
    """A folder a training loop writes checkpoints into; loads as its absolute path.

    Checkpoints are the loop's own state (accelerate ``save_state``), not a node
    output, but where they go is still the catalog's call, not the node's.
    """

    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> str:
        return str(self._path.resolve())  # created by the first checkpoint, if any

    def save(self, data: None) -> None:
        raise DatasetError(f"{self._path} is written by the training loop's checkpoints, not saved as a dataset")

    def _exists(self) -> bool:
        return True

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
