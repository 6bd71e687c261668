"""``dvc.yaml`` from the Kedro project: one DVC stage per Kedro pipeline of the journey.

Kedro owns the DAG (which pipeline reads and writes which dataset) and the catalog owns
every path, so the DVC stages are derived from them rather than restated by hand:

- ``cmd``: ``alignops-run --pipelines <name>`` (``--env`` when the file is made for one):
  ``kedro run`` with the same arguments, forked from a warm interpreter that imported
  torch, MLflow and the rest once for all the stages (``alignops.warm``; ``ALIGNOPS_WARM=0``
  makes it a plain ``kedro run``);
- ``deps``: the files behind the pipeline's free inputs, then the project code the
  pipeline imports (its own folder, the library modules it reaches and the catalog's
  dataset classes it uses), found by following ``import`` statements;
- ``params``: the parameter blocks its nodes read (``params:ppo`` -> key ``ppo``), from the
  ``conf/base`` file that defines each, and from the environment's files that override it;
- ``outs``: the files behind every dataset it writes; a dataset whose catalog entry has
  ``metadata: {dvc: metrics}`` or ``{dvc: plots}`` is listed there instead.

Checkpoint folders (``CheckpointDirectory``) are scratch state for resuming a loop, not
results: the final state is the stage's model. MLflow's store is not a stage output.

``alignops-dvc`` writes the file (``--check`` fails when it is stale); ``tests/test_dvc.py``
checks that the committed ``dvc.yaml`` is the one the Kedro project gives.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DVC_FILE = "dvc.yaml"
PACKAGE = "alignops"
SCRATCH_TYPES = ("CheckpointDirectory",)
"""Dataset classes whose folders DVC does not track (see the module docstring)."""
KINDS = ("outs", "metrics", "plots")


@dataclass
class StageSpec:
    """One DVC stage, as Kedro sees it."""

    name: str
    cmd: str
    deps: list[str] = field(default_factory=list)
    params: dict[str, list[str]] = field(default_factory=dict)
    outs: dict[str, list[str]] = field(default_factory=lambda: {kind: [] for kind in KINDS})

    def as_dvc(self) -> dict[str, Any]:
        stage: dict[str, Any] = {"cmd": self.cmd, "deps": self.deps}
        if self.params:
            stage["params"] = [{path: keys} for path, keys in self.params.items()]
        for kind in KINDS:
            if self.outs[kind]:
                stage[kind] = self.outs[kind]
        return stage


# -- the code a pipeline imports ---------------------------------------------------------


def _module_file(root: Path, module: str) -> Path | None:
    """The source file of ``module`` (``alignops.x.y``) under ``root/src``, or None."""
    base = root / "src" / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, module: str) -> set[str]:
    """Project modules ``path`` (the file of ``module``) imports, absolute or relative."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {name for name in found if name == PACKAGE or name.startswith(PACKAGE + ".")}


def code_closure(root: Path, modules: Iterable[str]) -> set[Path]:
    """Every project source file ``modules`` reach through imports, with the ``__init__``
    of each package on the way (importing ``a.b.c`` runs ``a`` and ``a.b`` first) and the
    data files of those packages (a GE suite, vendored Data Docs assets)."""
    seen: set[str] = set()
    files: set[Path] = set()
    todo = list(modules)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(root, module)
        if path is None:
            continue  # a name imported from a module, not a module
        files.add(path)
        parents = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
        todo += [*parents, *_imports(path, module)]
    for path in list(files):
        if path.name == "__init__.py":
            files.update(_package_data(path.parent))
    return files


def _package_data(folder: Path) -> set[Path]:
    """Non-Python files of a package, with its sub-folders that are not packages."""
    data = {p for p in folder.iterdir() if p.is_file() and p.suffix not in (".py", ".pyc")}
    for sub in folder.iterdir():
        if sub.is_dir() and not (sub / "__init__.py").exists() and sub.name != "__pycache__":
            data.add(sub)
    return data


def collapse(root: Path, files: set[Path]) -> list[str]:
    """``files`` relative to ``root``, a folder standing in for its files when every file
    under it is listed (so ``src/alignops/pipelines/ppo`` rather than its three modules)."""

    def all_in(folder: Path) -> bool:
        for path in folder.iterdir():
            if path.name == "__pycache__" or path.suffix == ".pyc":
                continue
            if path not in files and not (path.is_dir() and all_in(path)):
                return False
        return True

    result: set[Path] = set()
    for path in files:
        top = path
        while top.parent != root / "src" and all_in(top.parent):
            top = top.parent
        result.add(top)
    # a folder already listed makes its files redundant
    kept = {p for p in result if not any(q != p and q in p.parents for q in result)}
    return sorted(p.relative_to(root).as_posix() for p in kept)


# -- datasets and parameters -------------------------------------------------------------


def dataset_paths(config: Mapping[str, Any], root: Path) -> list[str]:
    """The local paths a resolved catalog entry writes (``filepath``/``path``, also of a
    wrapped ``dataset``), relative to ``root``; none for a scratch folder or an in-memory
    dataset. A path outside the project is an error: DVC tracks files of its repository."""
    kind = str(config.get("type", ""))
    if kind.rsplit(".", 1)[-1] in SCRATCH_TYPES:
        return []
    paths = []
    for key in ("filepath", "path"):
        if key in config:
            path = Path(str(config[key]))
            path = path if path.is_absolute() else root / path
            try:
                paths.append(path.resolve().relative_to(root).as_posix())
            except ValueError:
                raise ValueError(f"{path} is outside the project {root}: DVC cannot track it") from None
    inner = config.get("dataset")
    if isinstance(inner, Mapping):
        paths += dataset_paths(inner, root)
    return paths


def dvc_kind(config: Mapping[str, Any]) -> str:
    """``outs``, or ``metrics``/``plots`` as the entry's ``metadata.dvc`` says."""
    kind = ((config.get("metadata") or {}).get("dvc")) or "outs"
    if kind not in KINDS:
        raise ValueError(f"metadata.dvc must be one of {KINDS}, got {kind!r}")
    return kind


def parameter_files(conf: Path, env: str | None, base_env: str = "base") -> dict[str, dict[str, Path]]:
    """For each configuration folder (base, then ``env``): top-level parameter key -> file."""
    folders = [base_env] + ([env] if env and env != base_env else [])
    found: dict[str, dict[str, Path]] = {}
    for folder in folders:
        keys: dict[str, Path] = {}
        for path in sorted((conf / folder).rglob("*.yml")):
            if "parameters" not in path.name:
                continue
            for key in yaml.safe_load(path.read_text()) or {}:
                keys[str(key)] = path
        found[folder] = keys
    return found


# -- the stages ----------------------------------------------------------------------------


RUN_COMMAND = "alignops-run"
"""Each stage's command: ``kedro run``'s arguments follow it (pyproject's console script)."""


def kedro_stages(root: Path, env: str | None = None) -> list[StageSpec]:
    """The DVC stages of the journey Kedro runs in ``env`` (its ``__default__``)."""
    from kedro.framework.project import pipelines
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from alignops.pipeline_registry import journey

    bootstrap_project(root)
    with KedroSession.create(project_path=root, env=env) as session:
        context = session.load_context()  # the project hook wires __default__ for the env's sources
        resolver = context.catalog.config_resolver
        names = journey()
        params = parameter_files(root / "conf", env)
        base_params = params["base"]
        stages = []
        for name in names:
            pipeline = pipelines[name]
            spec = StageSpec(name=name, cmd=f"{RUN_COMMAND} --pipelines {name}" + (f" --env {env}" if env else ""))
            data_deps: set[str] = set()
            for dataset in sorted(pipeline.inputs()):
                if dataset.startswith("params:"):
                    block = dataset.split(":", 1)[1].split(".", 1)[0]
                    for keys in params.values():
                        if block in keys:
                            spec.params.setdefault(keys[block].relative_to(root).as_posix(), []).append(block)
                    if block not in base_params:
                        raise ValueError(f"{name}: params:{block} is in no conf/base parameters file")
                    continue
                if dataset == "parameters":
                    raise ValueError(f"{name}: reads the whole `parameters`; DVC needs the blocks it uses")
                data_deps.update(dataset_paths(resolver.resolve_pattern(dataset), root))
            for dataset in sorted(pipeline.all_outputs()):
                config = resolver.resolve_pattern(dataset)
                spec.outs[dvc_kind(config)].extend(dataset_paths(config, root))
            modules = {f"{PACKAGE}.pipelines.{name}"}
            for dataset in pipeline.datasets():  # the project's dataset classes write the outputs
                config = resolver.resolve_pattern(dataset)
                for kind in (config.get("type"), (config.get("dataset") or {}).get("type")):
                    if str(kind).startswith(PACKAGE + "."):
                        modules.add(str(kind).rpartition(".")[0])
            spec.deps = sorted(data_deps) + collapse(root, code_closure(root, modules))
            for kind in KINDS:
                spec.outs[kind] = sorted(set(spec.outs[kind]))
            spec.params = {path: sorted(set(keys)) for path, keys in sorted(spec.params.items())}
            stages.append(spec)
    return stages


def render(stages: list[StageSpec], env: str | None = None) -> str:
    """The text of ``dvc.yaml``."""
    header = (
        "# Made by `alignops-dvc" + (f" --env {env}" if env else "") + "` from the Kedro project "
        "(pipelines, catalog, parameters); do not edit.\n"
        "# One stage per Kedro pipeline: `dvc repro` reruns what changed, `dvc exp show` lists the metrics.\n"
    )
    body = {"stages": {spec.name: spec.as_dvc() for spec in stages}}
    return header + yaml.safe_dump(body, sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alignops-dvc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default=None, help="Kedro environment the stages run in (default: the project's)")
    parser.add_argument("--check", action="store_true", help="fail if dvc.yaml is not what the project gives")
    parser.add_argument("--project", type=Path, default=Path.cwd(), help="project root (default: here)")
    args = parser.parse_args(argv)
    root = args.project.resolve()
    text = render(kedro_stages(root, args.env), args.env)
    target = root / DVC_FILE
    current = target.read_text() if target.is_file() else ""
    if args.check:
        if current != text:
            diff = difflib.unified_diff(current.splitlines(True), text.splitlines(True), DVC_FILE, "from Kedro")
            sys.stdout.writelines(diff)
            print(f"\n{DVC_FILE} is stale: run `alignops-dvc" + (f" --env {args.env}" if args.env else "") + "`")
            return 1
        return 0
    target.write_text(text)
    print(f"wrote {target}: {len(text.splitlines())} lines")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
