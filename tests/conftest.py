import os
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning, module="monai")


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


@pytest.fixture(scope="session")
def tiny_federation(tmp_path_factory) -> Path:
    """3 sites x 3 cases of the synthetic federation at a coarse 6 mm spacing (seconds)."""
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
