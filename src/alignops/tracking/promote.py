"""A person overrides the promotion gate: move ``champion`` to a version, and say why.

    alignops-promote                 # the versions, their aliases and the gate's decisions
    alignops-promote 3 --reason "better on the support-desk audit"

(or ``python -m alignops.tracking.promote``). From any folder inside the project, the
store is the one ``kedro run`` tracks into: ``conf/base/mlflow.yml``'s URIs (or
``conf/local``'s), a relative sqlite path taken from the project root. ``--tracking-uri``
/ ``--registry-uri``, then ``MLFLOW_TRACKING_URI`` / ``MLFLOW_REGISTRY_URI``, win over it.
The version keeps the gate's own tags; the override adds ``promotion.decision=overridden``,
the reason, who did it, and the version it replaced.
"""

from __future__ import annotations

import argparse
import getpass
import os
from pathlib import Path

from mlflow.tracking import MlflowClient

from alignops.tracking.registry import CHAMPION, alias_version, tag_version
from alignops.tracking.run_info import find_project_root, project_mlflow_uris
from alignops.tracking.store import sqlite_file, store_lock


def promote(client: MlflowClient, name: str, version: str, reason: str, by: str | None = None) -> str | None:
    """Make ``version`` of ``name`` the champion; returns the version that held the alias (or None)."""
    client.get_model_version(name, version)  # fails clearly on a version that does not exist
    previous = alias_version(client, name, CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, version)
    tag_version(
        client,
        name,
        version,
        {
            "promotion.decision": "overridden",
            "promotion.override_reason": reason,
            "promotion.override_by": by or getpass.getuser(),
            "promotion.replaced": f"v{previous}" if previous else "none",
        },
    )
    return previous


def version_lines(client: MlflowClient, name: str) -> list[str]:
    """One line per version of ``name``, newest first: its aliases, the gate's decision, and
    why (an override's reason where a person overrode it)."""
    # a search's versions carry no aliases: the registered model has them, alias -> version
    aliases_of: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(name).aliases.items():
        aliases_of.setdefault(str(version), []).append(alias)
    versions = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: -int(v.version))
    lines = []
    for v in versions:
        tags = v.tags or {}
        reason = tags.get("promotion.override_reason") or tags.get("promotion.reason", "")
        aliases = ",".join(sorted(aliases_of.get(str(v.version), []))) or "-"
        lines.append(f"v{v.version:<4} {aliases:<20} {tags.get('promotion.decision', '-'):<10} {reason}".rstrip())
    return lines


def store_uris(tracking_uri: str | None, registry_uri: str | None, cwd: Path) -> tuple[str, str]:
    """The (tracking, registry) URIs to use: the flags, else the ``MLFLOW_*`` variables, else
    the URIs of the project's ``mlflow.yml`` found from ``cwd`` upwards. As in MLflow, the
    registry is the tracking store unless named. ``LookupError`` when nothing names a store."""
    tracking = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    registry = registry_uri or os.environ.get("MLFLOW_REGISTRY_URI")
    if tracking is None and registry is None:
        root = find_project_root(cwd)
        if root is None:
            raise LookupError(
                f"no Kedro project (a pyproject.toml with [tool.kedro]) at or above {cwd}: "
                "pass --tracking-uri or set MLFLOW_TRACKING_URI"
            )
        tracking, registry = project_mlflow_uris(root)
        if tracking is None and registry is None:
            raise LookupError(f"{root}/conf/base/mlflow.yml names no tracking URI: pass --tracking-uri")
    registry = registry or tracking
    return tracking or registry, registry


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("version", nargs="?", help="the model version to make champion (none: list the versions)")
    parser.add_argument("--reason", help="why the gate is overridden (kept as a version tag); required with a version")
    parser.add_argument("--model", default="alignops-policy", help="registered model name (default: %(default)s)")
    parser.add_argument("--reward-model", default="alignops-reward-model",
                        help="where a promoted policy's reward model is registered (default: %(default)s)")
    parser.add_argument("--policy-only", action="store_true",
                        help="leave the reward model's champion where it is (by default it follows the policy, "
                             "as when the gate promotes)")
    parser.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else the project's mlflow.yml")
    parser.add_argument("--registry-uri", help="default: MLFLOW_REGISTRY_URI, else the tracking URI's store")
    args = parser.parse_args(argv)
    if args.version is not None and not args.reason:
        parser.error("--reason is required to move champion: it is kept on the version")
    try:
        tracking, registry = store_uris(args.tracking_uri, args.registry_uri, Path.cwd())
    except LookupError as error:
        parser.error(str(error))
    store = sqlite_file(registry)
    if store is not None and not store.is_file():
        # MLflow would create an empty store there and then find no such model
        parser.error(f"no MLflow store at {store}: has a run been tracked in this project yet?")
    client = MlflowClient(tracking_uri=tracking, registry_uri=registry)
    if args.version is None:
        print(f"{args.model} in {registry}")
        print("\n".join(version_lines(client, args.model)) or "(no versions)")
        return
    # a gate acting meanwhile reads the champion and moves it under the same lock: never half of each
    with store_lock(registry):
        previous = promote(client, args.model, args.version, args.reason)
        print(f"{args.model}: champion v{previous or '-'} -> v{args.version} ({args.reason})")
        # a policy's reward model (the one it was trained and judged with) becomes champion with it
        reward_version = (client.get_model_version(args.model, args.version).tags or {}).get("reward_model_version")
        if reward_version and not args.policy_only:
            reason = f"with {args.model} v{args.version}: {args.reason}"
            held = promote(client, args.reward_model, reward_version, reason)
            print(f"{args.reward_model}: champion v{held or '-'} -> v{reward_version} ({reason})")


if __name__ == "__main__":
    main()
