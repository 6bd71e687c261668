"""kedro-mlflow's run lifecycle, plus what alignops records about every run.

kedro-mlflow opens one MLflow run per ``kedro run`` and logs every ``params:`` input,
flattened (``sft.learning_rate``). On top of that this hook:

- builds the config of every parameter block the run's nodes read before the first
  node runs (``alignops.parameters``), so a misspelt key fails in seconds, not hours;
  likewise an output folder the run could not write (read-only, no permission);
- names the run for a person: pipelines, environment and short commit
  (``sft+reward test 64b122e``), unless ``mlflow.yml`` sets ``tracking.run.name``;
- tags the run with the git commit and whether the tree was dirty, the Kedro
  environment and the pipelines;
- tags the md5 of every file behind the datasets named in ``tracking.hash_datasets``
  when a node loads them (the same digest DVC keeps in ``dvc.lock``), so a run says
  which preference data it saw even when the data was written earlier in that run;
- exports the run id for the run's length, so worker processes find it however they
  were started (see ``alignops.tracking.logger``);
- under ``dvc repro`` / ``dvc exp run`` (one ``kedro run`` per stage), nests the stage's run
  under one parent run per reproduction and tags it with the DVC stage, the experiment
  and the ``dvc.lock`` digests of its inputs (``alignops.tracking.repro``);
- keeps tokens and secrets out of logged parameters;
- logs only on the main process of a distributed launch;
- ends a killed run KILLED (SIGTERM, SIGHUP, Ctrl-C now; a SIGKILLed one when the next run
  starts), and continues it when the same command runs again, so a resumed training stage
  adds to the run it started in (``alignops.tracking.interruptions``).

It replaces kedro-mlflow's own hook (``DISABLE_HOOKS_FOR_PLUGINS`` in settings.py).
"""

from __future__ import annotations

import atexit
import gc
import os
import re
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import mlflow
from kedro.config import MissingConfigException
from kedro.framework.hooks import hook_impl
from kedro.io import DataCatalog
from kedro.pipeline import Pipeline
from kedro.pipeline.node import Node
from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook
from kedro_mlflow.framework.hooks.utils import _flatten_dict, _generate_kedro_command
from kedro_mlflow.io.catalog.switch_catalog_logging import switch_catalog_logging
from mlflow.tracking import MlflowClient

from alignops.parameters import check_parameters, parameter_blocks
from alignops.pipeline_registry import use_sources  # imports no stage: each is built when a run asks for it
from alignops.pipelines.threads import THREADS_ENV, planned_threads, thread_plan
from alignops.pipelines.threads import encode as encode_threads
from alignops.tracking import interruptions, lineage, repro
from alignops.tracking.logger import RUN_ID_ENV, is_main_process
from alignops.tracking.registry import DATA_TAG_PREFIX
from alignops.tracking.run_info import (
    DEFAULT_HASH_DATASETS,
    REDACTED,
    check_outputs_writable,
    dataset_files,
    file_md5,
    git_state,
    is_secret,
    project_sqlite_uri,
    run_name,
)
from alignops.tracking.store import store_lock

# Python's last garbage collection at exit walks every object torch, transformers and MLflow
# made: ~1.5 s of a `kedro run` process on 2 cores (measured 1.6 s -> 0.25 s), paid once per
# stage under `dvc repro`. Frozen objects are skipped; the OS reclaims the memory anyway.
atexit.register(gc.freeze)
# Registered after MLflow's own exit handler (imported above), so it runs first: a run that a
# Ctrl-C or an interrupted launch leaves open ends KILLED, not FINISHED.
kill_recorder = interruptions.KillRecorder()
atexit.register(kill_recorder.end_killed)


def _anchor_sqlite_uris(context) -> None:
    """Rewrite the tracking/registry URIs of ``mlflow.yml`` against the project root (the
    repository's, for a queued DVC experiment run in a copy), before kedro-mlflow reads
    them (a key set on the config loader takes priority over its files)."""
    loader = context.config_loader
    loader.config_patterns.setdefault("mlflow", ["mlflow*", "mlflow*/**", "**/mlflow*"])
    try:
        conf = loader["mlflow"]
    except MissingConfigException:
        return
    server = dict(conf.get("server") or {})
    for key in ("mlflow_tracking_uri", "mlflow_registry_uri"):
        server[key] = project_sqlite_uri(server.get(key), lineage.mlflow_root(Path(context.project_path)))
    loader["mlflow"] = {**conf, "server": server}


def _store_setup_lock(context) -> AbstractContextManager:
    """kedro-mlflow opens the tracking store (creating and migrating a new one) and creates the
    experiment if it finds none: one process at a time (``alignops.tracking.store``)."""
    try:
        server = context.config_loader["mlflow"].get("server") or {}
    except MissingConfigException:
        server = {}
    return store_lock(server.get("mlflow_tracking_uri"))


def _check_parameters(pipeline: Pipeline, catalog: DataCatalog) -> None:
    """Build the config of every parameter block this run's nodes read, runtime ``--params``
    included, so a misspelt key or an impossible value fails before the first node (and
    before an MLflow run is opened) instead of when its stage starts. Only those blocks:
    ``--pipelines data`` must not fail on a training block it never reads."""
    check_parameters(catalog.load("parameters"), parameter_blocks(pipeline.datasets()))


def _tag_safe(name: str) -> str:
    return re.sub(r"[^\w./\- ]", "_", name)


class AlignopsMlflowHook(MlflowHook):
    """kedro-mlflow's ``MlflowHook`` with alignops' tags, data hashes and secret redaction."""

    def __init__(self) -> None:
        super().__init__()
        self._env = "local"
        self._project_path = Path.cwd()
        self._hash_datasets: tuple[str, ...] = DEFAULT_HASH_DATASETS
        self._catalog: DataCatalog | None = None
        self._exported: dict[str, str | None] = {}
        self._hashed: dict[tuple[str, int, int], str] = {}
        self._configured_run_name: str | None = None
        self._parent_id: str | None = None
        self._continued: str | None = None

    @hook_impl
    def after_context_created(self, context) -> None:
        # The configuration as written (runtime --params merged in), not `context.params`:
        # Kedro validates that against every registered pipeline, importing each stage's
        # libraries, which a one-stage run (each DVC stage) would pay seconds for.
        try:
            params = context.config_loader["parameters"]
        except MissingConfigException:
            params = {}
        # __default__ follows the run's data source; a bad `sources` block fails here, named
        check_parameters(params, ["sources"])
        use_sources(params.get("sources"))
        _anchor_sqlite_uris(context)
        with _store_setup_lock(context):
            super().after_context_created(context)
        self._configured_run_name = self.mlflow_config.tracking.run.name
        self._env = context.env or "local"
        self._project_path = Path(context.project_path)
        tracking = params.get("tracking") or {}
        self._hash_datasets = tuple(tracking.get("hash_datasets", DEFAULT_HASH_DATASETS))

    @hook_impl
    def after_catalog_created(
        self,
        catalog: DataCatalog,
        conf_catalog: dict[str, Any],
        conf_creds: dict[str, Any],
        parameters: dict[str, Any],
        save_version: str,
        load_versions: dict[str, str],
    ) -> None:
        """kedro-mlflow names its metric datasets after their catalog entries here, and to find
        them it builds every dataset of the catalog, importing each one's libraries
        (transformers, Great Expectations): seconds that a one-stage run does not need. Only
        when the catalog has such a dataset."""
        types = (str((entry or {}).get("type", "")) for entry in conf_catalog.values() if isinstance(entry, dict))
        if any("MlflowMetric" in kind for kind in types):
            super().after_catalog_created(catalog, conf_catalog, conf_creds, parameters, save_version, load_versions)

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline, catalog: DataCatalog) -> None:
        if kill_recorder.run_id is not None:  # an earlier session in this process was interrupted
            kill_recorder.end_killed()  # (no hook runs for a KeyboardInterrupt): its run, its exports
            self._restore_environment()
            if self._continued is not None:
                self.mlflow_config.tracking.run.id = self._continued = None
        _check_parameters(pipeline, catalog)
        check_outputs_writable(pipeline, catalog, self._project_path)
        runner = re.sub(r"^<([\w.]+) object at 0x[0-9a-f]+>$", r"\1", str(run_params.get("runner") or ""))
        if runner.endswith("ParallelRunner") and "OMP_NUM_THREADS" not in os.environ:
            # each worker's torch threads follow the DAG (alignops.pipelines.threads)
            self._export({THREADS_ENV: encode_threads(thread_plan(pipeline, os.cpu_count() or 1))})
        if not is_main_process():
            # Under a distributed launch every rank runs Kedro; only rank 0 opens a run.
            self._is_mlflow_enabled = False
            self.run_id = None
            switch_catalog_logging(catalog, False)
            return
        names = run_params.get("pipeline_names") or ["__default__"]
        names = [names] if isinstance(names, str) else list(names)
        git = git_state(self._project_path)
        # kedro-mlflow names the run tracking.run.name, or else after the pipelines alone
        self.mlflow_config.tracking.run.name = self._configured_run_name or run_name(names, self._env, git)
        dvc = lineage.current()
        repro_stage = dvc is not None and dvc.repro is not None and not self._already_active_mlflow
        if self._is_tracked(names):
            experiment_id = self.mlflow_config.tracking.experiment._experiment.experiment_id
            interruptions.close_abandoned(MlflowClient(), experiment_id)
            if not repro_stage:  # a reproduction's stage runs are its parent's, never continued
                self._continue_killed_run(run_params, pipeline, catalog, git)
        if repro_stage:
            self._open_repro_parent(dvc, git, catalog)
        super().before_pipeline_run(run_params, pipeline, catalog)
        if self.run_id is None:
            return
        continued = {}
        if self._continued is not None:
            times = MlflowClient().get_run(self.run_id).data.tags.get(interruptions.CONTINUED_TAG, "0")
            continued = {interruptions.CONTINUED_TAG: str(int(times) + 1)}
            self._export({interruptions.CONTINUED_ENV: "1"})
        mlflow.set_tags(
            {
                **continued,
                interruptions.PROCESS_TAG: interruptions.this_process(),
                "runner": runner,  # kedro-mlflow tags the object's repr, with its address
                "kedro_command": self._kedro_command(run_params),
                "kedro.env": self._env,
                "kedro.pipelines": ",".join(names),
                **git,
                **(dvc.tags() if dvc else {}),
                **(lineage.input_digests(self._project_path, dvc.stage) if dvc else {}),
            }
        )
        self._catalog = catalog
        kill_recorder.install(self.run_id)
        self._export({
            RUN_ID_ENV: self.run_id,
            "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
            "MLFLOW_REGISTRY_URI": mlflow.get_registry_uri(),
        })

    @hook_impl
    def before_node_run(self, node: Node, catalog: DataCatalog, inputs: dict[str, Any], is_async: bool) -> None:
        """kedro-mlflow's (re-enter the run), then a ParallelRunner worker takes the torch
        threads the DAG gives this node."""
        super().before_node_run(node, catalog, inputs, is_async)
        threads = planned_threads(node.name)
        if threads is not None:
            import torch

            torch.set_num_threads(threads)

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str, data: Any, node: Node) -> None:
        if self.run_id is None or self._catalog is None or dataset_name not in self._hash_datasets:
            return
        tags = {}
        for path in dataset_files(self._catalog.get(dataset_name)):
            stat = path.stat()
            key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
            if key not in self._hashed:
                self._hashed[key] = file_md5(path)
            tags[_tag_safe(f"{DATA_TAG_PREFIX}{dataset_name}/{path.name}")] = self._hashed[key]
        client = MlflowClient()
        for name, value in tags.items():
            client.set_tag(self.run_id, name, value)

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline, catalog: DataCatalog) -> None:
        try:
            stage_run = self.run_id
            super().after_pipeline_run(run_params, pipeline, catalog)
            if self._parent_id is not None and stage_run is not None:
                repro.copy_final_metrics(MlflowClient(), stage_run, self._parent_id)
        finally:
            self._restore()

    def _open_repro_parent(self, dvc: lineage.DvcRun, git: dict[str, str], catalog: DataCatalog) -> None:
        """Make the reproduction's parent run (created by its first stage) the active run,
        so kedro-mlflow opens this stage's run nested under it."""

        def journey_params() -> dict[str, Any]:
            everything = catalog.load("parameters")
            blocks = lineage.parameter_blocks(self._project_path) or set(everything)
            used = {block: everything[block] for block in sorted(blocks) if block in everything}
            return _flatten_dict(used, recursive=True, sep=self.mlflow_config.tracking.params.dict_params.sep)

        tags = {"kedro.env": self._env, **git, **{k: v for k, v in dvc.tags().items() if k != "dvc.stage"}}
        self._parent_id = repro.open_parent(
            MlflowClient(),
            self.mlflow_config.tracking.experiment._experiment.experiment_id,
            dvc,
            tags,
            repro.parent_run_name(dvc, self._env, git),
            journey_params,
        )
        mlflow.start_run(run_id=self._parent_id)
        self.mlflow_config.tracking.run.nested = True

    @hook_impl
    def on_pipeline_error(self, error: Exception, run_params: dict[str, Any], pipeline: Pipeline, catalog) -> None:
        try:
            if self.run_id is not None:
                super().on_pipeline_error(error, run_params, pipeline, catalog)
        finally:
            self._restore()

    def _kedro_command(self, run_params: dict[str, Any]) -> str:
        """kedro-mlflow's command (which writes the deprecated ``--pipeline``) with the
        environment and the runtime ``--params`` added, so the tag reruns the same run."""
        names = run_params.get("pipeline_name") or run_params.get("pipeline_names") or ["__default__"]
        command = _generate_kedro_command(  # what kedro-mlflow tags, from the same arguments
            tags=run_params.get("tags"),
            node_names=run_params.get("node_names"),
            from_nodes=run_params.get("from_nodes"),
            to_nodes=run_params.get("to_nodes"),
            from_inputs=run_params.get("from_inputs"),
            load_versions=run_params.get("load_versions"),
            pipeline_names=[names] if isinstance(names, str) else list(names),
        )
        command = command.replace("--pipeline=", "--pipelines=")
        if self._env != "local":
            command += f" --env={self._env}"
        # flattened as kedro-mlflow flattens parameters, and redacted as they are
        runtime = _flatten_dict(run_params.get("runtime_params") or {}, recursive=True, sep=".")
        if runtime:
            command += " --params=" + ",".join(
                f"{k}={REDACTED if is_secret(k) else v}" for k, v in runtime.items()
            )
        return command

    def _is_tracked(self, names: list[str]) -> bool:
        disabled = set(self.mlflow_config.tracking.disable_tracking.pipelines or [])
        return not self._already_active_mlflow and not disabled.intersection(names)

    def _continue_killed_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: DataCatalog, git: dict[str, str]
    ) -> None:
        """If this command's newest run was killed (same commit, same parameter values), have
        kedro-mlflow open it again."""
        if self.mlflow_config.tracking.run.id is not None:  # mlflow.yml names a run: that one
            return
        client = MlflowClient()
        experiment_id = self.mlflow_config.tracking.experiment._experiment.experiment_id
        command = self._kedro_command(run_params)
        # the parameters kedro-mlflow will log, as it logs them (flattened, redacted)
        params = {name.removeprefix("params:"): catalog.load(name)
                  for name in pipeline.inputs() | pipeline.datasets() if name.startswith("params:")}
        dict_params = self.mlflow_config.tracking.params.dict_params
        if dict_params.flatten:
            params = _flatten_dict(params, recursive=dict_params.recursive, sep=dict_params.sep)
        params = {name: REDACTED if is_secret(name) else str(value) for name, value in params.items()}
        project = str(run_params.get("project_path") or self._project_path)  # as kedro-mlflow tags it
        run_id = interruptions.run_to_continue(client, experiment_id, command, project, git, params)
        if run_id is not None:
            self._logger.warning(f"continuing MLflow run {run_id}: the last `{command}` was killed")
            self.mlflow_config.tracking.run.id = self._continued = run_id

    def _log_param(self, name: str, value: Any) -> None:
        if is_secret(name):
            value = REDACTED
        return super()._log_param(name, value)

    def _export(self, variables: dict[str, str]) -> None:
        for name, value in variables.items():
            self._exported.setdefault(name, os.environ.get(name))
            os.environ[name] = value

    def _restore(self) -> None:
        """Put back the environment as it was, so the next session in this process opens its own run."""
        kill_recorder.uninstall()
        if self._continued is not None:
            self.mlflow_config.tracking.run.id = self._continued = None
        # kedro-mlflow re-enters the run before each node; with `nested: true` MLflow stacks it
        # once per node and a single end_run leaves it active for the next session.
        while (active := mlflow.active_run()) is not None and active.info.run_id == self.run_id:
            mlflow.end_run()
        if self._parent_id is not None:
            # a failed stage's parent was ended FAILED with it (kedro-mlflow ends every active run)
            if (active := mlflow.active_run()) is not None and active.info.run_id == self._parent_id:
                mlflow.end_run()
            self.mlflow_config.tracking.run.nested = False
            self._parent_id = None
        self._restore_environment()
        self._catalog = None
        self.run_id = None
        use_sources(None)  # the next session in this process wires its own sources, or the default

    def _restore_environment(self) -> None:
        for name, value in self._exported.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._exported = {}


mlflow_hook = AlignopsMlflowHook()
