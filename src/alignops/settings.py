"""Kedro project settings (see https://docs.kedro.org/en/stable/configure/configuration_basics/)."""

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
