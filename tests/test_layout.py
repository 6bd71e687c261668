"""The package layout's import rules: layers import only downwards, and only the Kedro
layer (``pipelines/``, ``catalog/`` and the project's root modules) imports Kedro."""

from __future__ import annotations

from pathlib import Path

import pytest

import alignops
from tests.helpers import imported_modules

PACKAGE = Path(alignops.__file__).parent
TESTS = Path(__file__).parent

LAYERS: dict[str, set[str]] = {
    "core": set(),
    "world": set(),
    "preferences": {"core"},
    "models": {"core"},
    "evaluation": {"core", "models"},
    "training": {"core", "models", "preferences"},
    "tracking": {"core", "models"},
    "catalog": {"core", "models", "preferences", "tracking", "world"},
    "pipelines": {"core", "world", "preferences", "models", "evaluation", "training", "tracking", "catalog"},
}
"""Each package and the alignops packages it may import (besides itself)."""

KEDRO_LAYER = {"pipelines", "catalog"}
KEDRO_ROOTS = {"kedro", "kedro_datasets", "kedro_mlflow", "kedro_viz"}
CORE_ROOTS = {"__future__", "collections", "math", "typing", "torch"}
"""What ``core/`` may import: torch and the standard library modules its math needs."""




def package_files(package: str) -> list[Path]:
    files = sorted((PACKAGE / package).rglob("*.py"))
    assert files, f"alignops/{package} has no modules"
    return files


def test_every_package_is_in_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(LAYERS)


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_packages_import_only_the_layers_below_them(package):
    offenders = sorted(
        f"{path.relative_to(PACKAGE)}: {module}"
        for path in package_files(package)
        for module in imported_modules(path, package)
        if module.startswith("alignops.")
        and module.split(".")[1] not in LAYERS[package] | {package}
    )
    assert not offenders, f"alignops/{package} may import only {sorted(LAYERS[package])}; found {offenders}"


@pytest.mark.parametrize("package", sorted(set(LAYERS) - KEDRO_LAYER))
def test_nothing_below_the_kedro_layer_imports_kedro(package):
    offenders = sorted(
        f"{path.relative_to(PACKAGE)}: {module}"
        for path in package_files(package)
        for module in imported_modules(path, package)
        if module.split(".")[0] in KEDRO_ROOTS
    )
    assert not offenders, f"alignops/{package} must not import Kedro; found {offenders}"


def test_core_is_pure_torch_math():
    offenders = sorted(
        f"{path.relative_to(PACKAGE)}: {module}"
        for path in package_files("core")
        for module in imported_modules(path, "core")
        if module.split(".")[0] not in CORE_ROOTS and not module.startswith("alignops.core")
    )
    assert not offenders, f"core/ must stay pure torch math; found {offenders}"


def test_the_package_root_imports_nothing():
    # `import alignops.core` runs alignops/__init__.py first, so it must not pull anything in.
    assert [m for m in imported_modules(PACKAGE / "__init__.py", "") if m != "__future__"] == []


def test_no_test_module_imports_another():
    offenders = sorted(
        f"{path.relative_to(TESTS)}: {module}"
        for path in TESTS.rglob("test_*.py")
        for module in imported_modules(path, "tests")
        if module.startswith("tests.") and module.rsplit(".", 1)[-1].startswith("test_")
    )
    assert not offenders, f"shared test code belongs in conftest.py or a helper module; found {offenders}"
