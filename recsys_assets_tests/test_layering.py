"""The package's layers, as its imports show them: what a newcomer may rely on."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "recsys_assets"
# What each part may not import: canonical data knows nothing of what is built from it.
FORBIDDEN = {
    "events": ("aggregates", "artifacts", "signals", "quality", "publish"),
    "aggregates": ("artifacts", "signals", "quality", "publish"),
    "artifacts": ("signals",),
}


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of each `import` and `from ... import` in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
    return found


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_layers_import_downwards_only():
    broken = []
    for path in modules():
        part = path.relative_to(PACKAGE).parts[0]
        for module, _ in imports(path):
            for other in FORBIDDEN.get(part, ()):
                if module == f"recsys_assets.{other}" or module.startswith(
                    f"recsys_assets.{other}."
                ):
                    broken.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert broken == []


def test_no_module_reaches_into_another_ones_private_names():
    reached = [
        f"{path.relative_to(PACKAGE)}: {module}.{name}"
        for path in modules()
        for module, names in imports(path)
        if module.startswith("recsys_assets")
        for name in names
        if name.startswith("_") and name != "__version__"
    ]
    assert reached == []
