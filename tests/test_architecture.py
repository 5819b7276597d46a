"""The package boundaries, checked on the source: who may import whom, and module size."""

import ast
import sys
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


# uharmony's layers, lowest first: a module imports from its own layer and those below only; records and
# federation are siblings on top of umsrep, and neither imports the other
LAYERS = ("base", "data", "model", "umsrep", "records", "federation")
BASE = {"vocabulary", "checks", "files", "protocol", "precision", "loopback_peers"}
ALLOWED = {
    "base": {"base"},
    "data": {"base", "data"},
    "model": {"base", "model"},
    "umsrep": {"base", "model", "umsrep"},
    "records": {"base", "data", "model", "umsrep", "records"},
    "federation": {"base", "data", "model", "umsrep", "federation"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_statements(path: Path, name: str | None = None):
    """(module, names) per import in ``path``, relative imports resolved: ``import a.b`` gives ("a.b", None),
    ``from a import x, y`` gives ("a", ["x", "y"])."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from ((a.name, None) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            yield base, [a.name for a in node.names]


def imported_modules(path: Path, top: str, name: str | None = None) -> set[str]:
    """Every module of package ``top`` that ``path`` imports (``from top import x`` or ``from . import x``: the
    module ``top.x``)."""
    out = set()
    for module, names in import_statements(path, name):
        if module.split(".")[0] != top:
            continue
        if names is None:  # import a.b
            out.add(module)
            continue
        for n in names:  # from a import n: the module a.n where there is one (or a is the top package), else a
            out.add(f"{module}.{n}" if module == top or module_file(f"{module}.{n}") else module)
    return out


def uharmony_imports(path: Path, name: str | None = None) -> set[str]:
    return imported_modules(path, "uharmony", name)


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in BASE:
        return "base"
    if parts[1] not in LAYERS:
        raise AssertionError(f"{module}: not in a layer of uharmony ({LAYERS}, base modules {sorted(BASE)})")
    return parts[1]


def test_uharmony_layers_import_only_downwards():
    bad = {}
    for path in modules("uharmony"):
        name = module_name(path)
        up = sorted(m for m in uharmony_imports(path) if layer_of(m) not in ALLOWED[layer_of(name)])
        if up:
            bad[name] = up
    assert bad == {}


def test_every_uharmony_module_is_in_a_layer():
    for path in modules("uharmony"):
        layer_of(module_name(path))
    assert {p.parent.name for p in modules("uharmony") if p.parent.name != "uharmony"} <= set(LAYERS)


def test_the_layer_checker_sees_an_upward_import(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)  # a tree of its own, not this repository's
    pkg = tmp_path / "uharmony" / "model"
    pkg.mkdir(parents=True)
    for module in ("__init__", "norm"):
        (pkg / f"{module}.py").write_text("")
    bad = pkg / "bad.py"
    bad.write_text(
        "from ..federation.config import RunConfig\nfrom uharmony import files\nfrom . import norm\n"
        "def f():\n    import uharmony.records.export\n"
    )
    found = uharmony_imports(bad, "uharmony.model.bad")
    assert found == {"uharmony.federation.config", "uharmony.files", "uharmony.model.norm", "uharmony.records.export"}
    assert sorted(m for m in found if layer_of(m) not in ALLOWED["model"]) == [
        "uharmony.federation.config",
        "uharmony.records.export",
    ]


def server_imports(path: Path) -> set[str]:
    return imported_modules(path, "server")


def test_the_round_engine_never_imports_the_operators_tools():
    """server/operator/ (PKI, coordinator, gateway, app registry) sits beside the round engine, not under it."""
    engine = [p for p in modules("server") if "operator" not in p.relative_to(ROOT).parts]
    bad = {module_name(p): sorted(m for m in server_imports(p) if m.startswith("server.operator")) for p in engine}
    assert {k: v for k, v in bad.items() if v} == {}
    assert any("operator" in p.parts for p in modules("server"))  # the corner exists (the rule checks something)


OURS = ("uharmony", "client", "server", "simulation", "tests")


def module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def defined_names(path: Path) -> set[str]:
    """Names a module defines at its top level (in ``if``/``try`` blocks too), and the lazy exports of a package
    ``__init__`` that lists them in ``_EXPORTS`` or ``__all__``."""
    names: set[str] = set()
    body = list(ast.parse(path.read_text(), filename=str(path)).body)
    while body:
        node = body.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
            declared = {getattr(t, "id", "") for t in targets}
            if "_EXPORTS" in declared:  # uharmony's lazy exports: module -> names
                names.update(n for group in ast.literal_eval(node.value).values() for n in group)
            if "__all__" in declared and isinstance(node.value, ast.List):  # names a package loads on first use
                names.update(ast.literal_eval(node.value))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.If | ast.Try):
            body += node.body + node.orelse + getattr(node, "finalbody", [])
            body += [s for h in getattr(node, "handlers", []) for s in h.body]
    return names


def unresolved_imports(path: Path) -> list[str]:
    """Imports of our packages in ``path`` that name no module or name of this tree (relative ones resolved)."""
    bad = []
    for module, names in import_statements(path):
        if module.split(".")[0] not in OURS:
            continue
        target = module_file(module)
        if target is None:
            bad.append(module)
        elif names is not None:
            known = defined_names(target)
            bad += [f"{module}.{n}" for n in names if n not in known and not module_file(f"{module}.{n}")]
    return bad


def test_every_import_of_ours_resolves_in_this_tree():
    """What an installed copy elsewhere (an editable install of another checkout) would otherwise hide."""
    found = {str(p.relative_to(ROOT)): unresolved_imports(p) for pkg in (*PACKAGES, "tests") for p in modules(pkg)}
    assert {k: v for k, v in found.items() if v} == {}


def test_the_resolver_sees_a_missing_module_and_name(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "uharmony" / "model").mkdir(parents=True)
    (tmp_path / "uharmony" / "__init__.py").write_text("_EXPORTS = {'model.norm': ('UHarmonyNorm',)}\n")
    (tmp_path / "uharmony" / "model" / "__init__.py").write_text("")
    (tmp_path / "uharmony" / "model" / "norm.py").write_text("class UHarmonyNorm: ...\n")
    bad = tmp_path / "uharmony" / "model" / "bad.py"
    bad.write_text(
        "from uharmony import wire, UHarmonyNorm\nfrom uharmony.model import norm, gone\nimport uharmony.records\n"
        "from .norm import UHarmonyNorm, Missing\n"
    )
    assert unresolved_imports(bad) == [
        "uharmony.wire",
        "uharmony.model.gone",
        "uharmony.records",
        "uharmony.model.norm.Missing",
    ]
