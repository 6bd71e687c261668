"""``core/`` is pure torch math: no import of kedro, mlflow, accelerate or anything else heavy."""

from __future__ import annotations

import ast
from pathlib import Path

import alignops
import alignops.core

CORE_DIR = Path(alignops.core.__file__).parent
# torch plus the standard library modules the math needs; anything else is a design change.
ALLOWED_ROOTS = {"__future__", "collections", "math", "typing", "torch"}
FORBIDDEN_ROOTS = {"kedro", "kedro_datasets", "kedro_mlflow", "mlflow", "accelerate"}


def imported_modules(path: Path) -> list[str]:
    modules = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # a relative import stays inside alignops.core
                modules.append("alignops.core")
            else:
                modules.append(node.module or "")
    return modules


def test_core_imports_only_torch_the_standard_library_and_itself():
    files = sorted(CORE_DIR.rglob("*.py"))
    assert len(files) >= 5
    offenders = {
        f"{path.relative_to(CORE_DIR)}: {module}"
        for path in files
        for module in imported_modules(path)
        if module.split(".")[0] not in ALLOWED_ROOTS
        and not (module == "alignops.core" or module.startswith("alignops.core."))
    }
    assert not offenders, f"core/ must stay pure torch math; found {sorted(offenders)}"


def test_importing_core_does_not_pull_in_kedro_mlflow_or_accelerate_through_its_parent():
    # `import alignops.core` runs alignops/__init__.py first, so it must stay import-free too.
    parent_imports = imported_modules(Path(alignops.__file__))
    assert not [m for m in parent_imports if m.split(".")[0] in FORBIDDEN_ROOTS]
