"""The package boundaries, checked on the source: who may import whom, and module size."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("uharmony", "client", "server", "simulation")
# package -> the top-level packages of ours and the third-party packages it must never import
FORBIDDEN = {
    "uharmony": {"client", "server", "simulation", "flwr"},
    "client": {"server", "simulation"},
    "server": {"client", "simulation"},
    "simulation": set(),
}


def imports_of(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (absolute imports; relative ones stay inside)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_respect_the_layering(package):
    crossings = {str(p.relative_to(ROOT)): sorted(imports_of(p) & FORBIDDEN[package]) for p in modules(package)}
    assert {k: v for k, v in crossings.items() if v} == {}


def test_the_checker_sees_a_crossing(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import os\nfrom server.rounds import run_server\ndef f():\n    import flwr.app\n    from . import x\n"
    )
    assert imports_of(bad) == {"os", "server", "flwr"}


@pytest.mark.parametrize("package", PACKAGES)
def test_modules_stay_small(package):
    big = {str(p.relative_to(ROOT)): n for p in modules(package) if (n := len(p.read_text().splitlines())) > 400}
    assert big == {}
