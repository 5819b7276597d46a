"""Shared fixtures: tiny volumes, one generated federation and one trained tiny model per test run."""

import os
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning, module="monai")

# Tiny-federation run settings (about a second per round on 2 cores)
TINY = dict(synth_spacing=6.0, spacing=6.0, patch_size=16, filters="8,16,32", local_steps=2, batch_size=1, eval_every=1)


def tiny_overrides(root, run_dir, **extra) -> dict:
    return {**TINY, "data_root": str(root), "run_dir": str(run_dir), **extra}


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), path)
    return path


def tiny_label(shape=(16, 16, 16), values=(1, 2, 4)) -> np.ndarray:
    """Nested cubes: outer = values[1] (oedema), middle = values[2] (enhancing), core = values[0]."""
    lab = np.zeros(shape, np.uint8)
    lab[3:13, 3:13, 3:13] = values[1]
    lab[5:11, 5:11, 5:11] = values[2]
    lab[7:9, 7:9, 7:9] = values[0]
    return lab


def pytest_collection_modifyitems(config, items):
    """Under ``pytest -n 2 --dist loadgroup`` (scripts/test.sh) the tests of Flower's runtimes (group
    ``flower-runtimes``: the deployment tests with real processes, the join tests, the simulation-engine
    comparison) run in turn on one worker and every other test (group ``main``, sharing the session's
    fixtures) on the other; the split balances the two workers' time on 2 cores."""
    for item in items:
        if not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group("main"))


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Generated federations and preprocessed scans go to a folder of this test run, not ~/.cache."""
    path = tmp_path_factory.mktemp("uharmony-cache")
    old = os.environ.get("UHARMONY_CACHE")
    os.environ["UHARMONY_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("UHARMONY_CACHE", None)
    else:
        os.environ["UHARMONY_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_federation(tmp_path_factory) -> Path:
    """4 sites x 3 cases of the synthetic federation at a coarse 6 mm spacing (seconds)."""
    from simulation.synth import generate_federation

    root = tmp_path_factory.mktemp("synth") / "fed"
    generate_federation(root, sites=4, cases_per_site=3, seed=0, spacing=6.0, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_join_federation(tmp_path_factory) -> Path:
    """Sites 1-3 as in ``tiny_federation``; site 4 post-operative with ADC and BraTS 2024 labels (6 mm)."""
    from simulation.synth import generate_federation
    from simulation.synth.profiles import make_join_profile, make_site_profile

    root = tmp_path_factory.mktemp("synth-join") / "fed"
    profiles = [make_site_profile(0, i) for i in range(3)] + [make_join_profile(0, 3)]
    generate_federation(root, sites=4, cases_per_site=3, seed=0, spacing=6.0, progress=False, profiles=profiles)
    return root


@pytest.fixture(scope="session")
def trained_run(tiny_federation, tmp_path_factory) -> Path:
    """A 2-round U-Harmony run on the tiny federation (in-process transport); tests read, never write, it."""
    from simulation.runner import run

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    run(tiny_overrides(tiny_federation, run_dir, num_server_rounds=2))
    return run_dir


@pytest.fixture(scope="session")
def umsrep_runs(tiny_federation, tmp_path_factory) -> dict:
    """UMS-Rep on the tiny federation with one labelled site of four: phase P (2 rounds, every site) and phase F
    from its artifact (2 rounds, the independent-head plan with a presence head). Each node's replies are recorded
    (``replies``: node config, message type, content) for the what-leaves-a-site test; tests only read."""
    from client.client_app import make_app
    from server.rounds import run_server
    from simulation.inprocess import InProcessGrid
    from simulation.label_fraction import label_free_view
    from uharmony.data import load_federation
    from uharmony.federation.config import RunConfig

    base = tmp_path_factory.mktemp("umsrep")
    view = label_free_view(tiny_federation, base / "view", ["1"])
    replies = []

    class RecordingGrid(InProcessGrid):
        def pull_messages(self, message_ids):
            got = super().pull_messages(message_ids)
            for m in got:
                replies.append((self.contexts[m.metadata.src_node_id].node_config, m.metadata.message_type, m))
            return got

    sites = len(load_federation(view).sites)
    out = {"view": view, "replies": replies}
    for name, extra in (
        ("pretrain", {"phase": "pretrain", "local_steps": 3}),
        ("finetune", {"finetune": "independent-head", "tasks": "presence", "umsrep": str(base / "pretrain/umsrep.pt")}),
    ):
        cfg = RunConfig.from_flwr(
            {k.replace("_", "-"): v for k, v in tiny_overrides(view, base / name, num_server_rounds=2, **extra).items()}
        )
        grid = RecordingGrid(make_app(), [{"partition-id": i} for i in range(sites)], cfg.to_flwr())
        run_server(grid, cfg.to_flwr())
        out[name] = base / name
    return out


AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def brain(seed, shape=(16, 16, 16)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros(shape, np.float32)
    img[2:14, 2:14, 2:14] = rng.uniform(100, 200, (12, 12, 12))
    return img


def make_brats2021(root: Path, subjects_by_partition: dict, partition_csv: str = "partitioning_1.csv") -> Path:
    """A tiny BraTS 2021 tree (4 modalities + seg per subject) with a FeTS partition CSV."""
    rows = ["Partition_ID,Subject_ID"]
    for pid, subjects in subjects_by_partition.items():
        for s in subjects:
            for i, m in enumerate(("t1", "t1ce", "t2", "flair")):
                write_nifti(root / s / f"{s}_{m}.nii.gz", brain(i), AFFINE)
            write_nifti(root / s / f"{s}_seg.nii.gz", tiny_label(values=(1, 2, 4)), AFFINE)
            rows.append(f"{pid},{s}")
    (root / partition_csv).write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def saved_figures(monkeypatch) -> list:
    """Every matplotlib figure saved during the test (the real figure, after it was drawn), to read its axes,
    titles and legends instead of guessing from the PNG's bytes."""
    from matplotlib.figure import Figure

    figures, real = [], Figure.savefig

    def savefig(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        figures.append(self)
        return out

    monkeypatch.setattr(Figure, "savefig", savefig)
    return figures
