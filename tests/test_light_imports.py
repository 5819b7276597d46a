"""The import budget of the light modules: the run config, the strategy table, the data layer's cases and
manifests, a site's profile query and the light commands' ``--help`` never load torch or MONAI.

Each check runs in a fresh interpreter (the test process itself has long imported both). A module that needs
a name of the vocabulary imports ``uharmony.vocabulary``, never the module that builds the model.
"""

import ast
import subprocess
import sys
import tomllib

import pytest

from tests.test_architecture import ROOT

HEAVY = ("torch", "monai")
LIGHT_MODULES = (
    "uharmony.vocabulary",
    "uharmony.federation.strategies",
    "uharmony.federation.config",
    "uharmony.data",
    "uharmony.data.manifest",
    "client.site_profile",
)
# commands whose every use loads a model: their --help may pay for torch (the others' may not)
HEAVY_COMMANDS = {"uharmony-segment", "uharmony-calibrate", "uharmony-export", "uharmony-denoise"}
COMMANDS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
LIGHT_COMMANDS = sorted(set(COMMANDS) - HEAVY_COMMANDS)

REPORT = f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"


def loaded_heavy(code: str) -> list[str]:
    """The heavy packages ``code`` (run in a fresh interpreter, from the repository root) left loaded."""
    out = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}\n{REPORT}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return ast.literal_eval(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_light_module_loads_neither_torch_nor_monai(module):
    assert loaded_heavy(f"import {module}") == []


@pytest.mark.parametrize("command", LIGHT_COMMANDS)
def test_light_command_help_loads_neither_torch_nor_monai(command):
    module, func = COMMANDS[command].split(":")
    code = (
        "import contextlib, io\n"
        f"sys.argv = [{command!r}, '--help']\n"
        f"from {module} import {func} as main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as text, contextlib.suppress(SystemExit):\n"
        "    main()\n"
        "assert 'usage:' in text.getvalue(), text.getvalue()"
    )
    assert loaded_heavy(code) == []


def test_the_heavy_commands_are_declared():
    assert set(COMMANDS) >= HEAVY_COMMANDS


def test_a_hospital_profile_query_loads_neither_torch_nor_monai(tmp_path):
    """What the profile handler does (``client/client_app.py``): parse the run config, read the site's folder
    (names only: no scan is opened), answer with names and counts."""
    for case in ("c1", "c2", "c3"):
        for m in ("t1", "t1ce", "t2", "flair", "seg"):
            (tmp_path / "site" / case).mkdir(parents=True, exist_ok=True)
            (tmp_path / "site" / case / f"{case}_{m}.nii.gz").write_bytes(b"")
    node = {"data-path": str(tmp_path / "site"), "site-id": "h1", "state-dir": str(tmp_path / "state")}
    code = (
        "from client.site_profile import site_profile\n"
        "from uharmony.federation.config import RunConfig\n"
        f"profile = site_profile({node!r}, RunConfig.from_flwr({{}}), 1)\n"
        "assert profile['train-cases'] == 2 and profile['regions'] == 'ET,TC,WT', profile"
    )
    assert loaded_heavy(code) == []


def test_the_vocabulary_matches_the_modules_that_give_it_meaning():
    from uharmony import vocabulary
    from uharmony.model import networks, norm, roles
    from uharmony.umsrep.plans import FINETUNE, PLANS

    assert vocabulary.FINETUNE == FINETUNE and set(PLANS) == {"pretrain", *vocabulary.FINETUNE}
    assert (networks.DEFAULT_MODALITIES, networks.DEFAULT_REGIONS) == (vocabulary.MODALITIES, vocabulary.REGIONS)
    assert (networks.ARCHS, networks.NORMS, networks.HEADS) == (vocabulary.ARCHS, vocabulary.NORMS, vocabulary.HEADS)
    assert (norm.SITE_LOCAL_OPTIONS, norm.RESTORE_MODES) == (vocabulary.SITE_LOCAL_OPTIONS, vocabulary.RESTORE_MODES)
    assert roles.ROLES == vocabulary.ROLES
