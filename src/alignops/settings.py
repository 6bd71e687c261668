"""Kedro project settings (see https://docs.kedro.org/en/stable/configure/configuration_basics/)."""

import os

# MLflow's sqlite store without a connection pool: a pooled connection inherited by a
# forked ParallelRunner worker is not safe to use (sqlite forbids it), a fresh one is.
os.environ.setdefault("MLFLOW_SQLALCHEMYSTORE_POOLCLASS", "NullPool")

# ParallelRunner's workers and its manager, forked when the runner is built (Kedro read this
# file before, bootstrapping the project), die with `kedro run` even when it is killed
# (alignops.processes).
from alignops.processes import children_die_with_this_process

children_die_with_this_process()

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # One catalog/parameters file per stage keeps stage owners out of each other's files.
    "config_patterns": {
        "catalog": ["catalog*", "catalog*/**", "**/catalog*"],
        "parameters": ["parameters*", "parameters*/**", "**/parameters*"],
    },
    # An environment overrides single keys (a size, a path) and inherits the rest from
    # base, instead of having to restate whole blocks.
    "merge_strategy": {"parameters": "soft", "catalog": "soft"},
}

# Tracking: kedro-mlflow's run lifecycle through alignops' subclass of its hook (tags,
# data hashes, secret redaction, main process only), which replaces the plugin's own.
from alignops.hooks import mlflow_hook  # noqa: E402

HOOKS = (mlflow_hook,)
DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow",)
