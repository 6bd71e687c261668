"""A person overrides the promotion gate: move ``champion`` to a version, and say why.

    python -m alignops.tracking.promote 3 --reason "better on the support-desk audit"

Run from the project root (the registry is ``sqlite:///mlflow.db`` there), or pass
``--registry-uri``. The version keeps the gate's own tags; the override adds
``promotion.decision=overridden``, the reason, who did it, and the version it replaced.
"""

from __future__ import annotations

import argparse
import getpass

from mlflow.tracking import MlflowClient

from alignops.tracking.registry import CHAMPION, alias_version, tag_version


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("version", help="the model version to make champion")
    parser.add_argument("--reason", required=True, help="why the gate is overridden (kept as a version tag)")
    parser.add_argument("--model", default="alignops-policy", help="registered model name (default: %(default)s)")
    parser.add_argument("--registry-uri", default="sqlite:///mlflow.db", help="default: %(default)s")
    args = parser.parse_args(argv)
    client = MlflowClient(tracking_uri=args.registry_uri, registry_uri=args.registry_uri)
    previous = promote(client, args.model, args.version, args.reason)
    print(f"{args.model}: champion v{previous or '-'} -> v{args.version} ({args.reason})")


if __name__ == "__main__":
    main()
