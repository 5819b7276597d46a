"""What a hospital gives ``uharmony-segment`` and gets back: nnU-Net-named inputs, an output folder for one case,
``--device``, a labelled overlay PNG, and no tracer warnings from ``uharmony-export``."""

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from client.export_cli import main as main_export
from client.segment_cli import main_segment

MSD_ORDER = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}  # nnU-Net's Dataset001_BrainTumour names
OURS = {"FLAIR": "flair", "T1w": "t1", "t1gd": "t1ce", "T2w": "t2"}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def model(trained_run):
    return str(trained_run / "final_model.pt")


def _labels(path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def _nnunet(tiny_federation, folder, cases=("SYN_001_000", "SYN_002_000"), names=MSD_ORDER):
    """``folder/imagesTs/<case>_000X.nii.gz`` linked to the BraTS-named files, channels in ``names``'s order."""
    images = folder / "imagesTs"
    images.mkdir(parents=True)
    for case in cases:
        for idx, name in names.items():
            src = tiny_federation / case / f"{case}_{OURS[name]}.nii.gz"
            (images / f"{case}_{int(idx):04d}.nii.gz").symlink_to(src)
    (folder / "dataset.json").write_text(json.dumps({"channel_names": names, "file_ending": ".nii.gz"}))
    return images


def test_nnunet_named_cases_segment_as_their_brats_named_twins(tiny_federation, model, tmp_path, capsys):
    ref = tmp_path / "ref.nii.gz"
    assert main_segment(["--model", model, "--input", str(tiny_federation / "SYN_002_000"), "--out", str(ref)]) == 0
    images = _nnunet(tiny_federation, tmp_path / "Dataset001_BrainTumour")
    assert main_segment(["--model", model, "--input", str(images), "--out", str(tmp_path / "out")]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["cases"] == 2 and report["skipped"] == []
    assert np.array_equal(_labels(tmp_path / "out" / "SYN_002_000_seg.nii.gz"), _labels(ref))
    # without dataset.json the channels are unknown: refused, naming the way out; --channels gives them
    (tmp_path / "Dataset001_BrainTumour" / "dataset.json").unlink()
    args = ["--model", model, "--input", str(images), "--out", str(tmp_path / "out2")]
    assert main_segment(args) == 2 and "--channels" in capsys.readouterr().err
    assert main_segment([*args, "--channels", "flair,t1,t1ce,t2"]) == 0
    assert np.array_equal(_labels(tmp_path / "out2" / "SYN_002_000_seg.nii.gz"), _labels(ref))
    assert (
        main_segment([*args, "--channels", "flair,t1,ct,t2"]) == 2
        and "unknown channel names" in capsys.readouterr().err
    )


def test_one_nnunet_case_per_folder_in_a_batch(tiny_federation, model, tmp_path, capsys):
    images = _nnunet(tiny_federation, tmp_path / "ds", cases=("SYN_001_000",))
    batch = tmp_path / "batch"
    batch.mkdir()
    (batch / "SYN_001_000").symlink_to(images)  # a case folder holding one case's channel files
    (batch / "SYN_002_000").symlink_to(tiny_federation / "SYN_002_000")  # beside a BraTS-named one
    args = ["--model", model, "--input", str(batch), "--out", str(tmp_path / "out"), "--channels", "flair,t1,t1ce,t2"]
    assert main_segment(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["cases"] == 2


def test_one_case_into_an_existing_folder(tiny_federation, model, tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    assert main_segment(["--model", model, "--input", str(tiny_federation / "SYN_002_000"), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(out / "SYN_002_000_seg.nii.gz")
    assert [p.name for p in tmp_path.iterdir()] == ["results"]  # nothing written beside the folder
    assert [p.name for p in out.iterdir()] == ["SYN_002_000_seg.nii.gz"]


def test_device_option(tiny_federation, model, tmp_path, capsys):
    case = str(tiny_federation / "SYN_002_000")
    assert (
        main_segment(["--model", model, "--input", case, "--out", str(tmp_path / "cpu.nii.gz"), "--device", "cpu"]) == 0
    )
    assert (
        main_segment(["--model", model, "--input", case, "--out", str(tmp_path / "x.nii.gz"), "--device", "tpu"]) == 2
    )
    assert "expected cpu, cuda" in capsys.readouterr().err
    rc = main_segment(["--model", model, "--input", case, "--out", str(tmp_path / "gpu.nii.gz"), "--device", "cuda"])
    if torch.cuda.is_available():  # the same labels on the GPU (all but a few borderline voxels)
        assert rc == 0 and np.mean(_labels(tmp_path / "gpu.nii.gz") == _labels(tmp_path / "cpu.nii.gz")) > 0.999
    else:
        assert rc == 2 and "no CUDA device" in capsys.readouterr().err


def test_the_overlay_png_names_its_contrast_and_labels(tiny_federation, model, tmp_path, saved_figures):
    out = tmp_path / "seg.nii.gz"
    assert (
        main_segment(["--model", model, "--input", str(tiny_federation / "SYN_001_000"), "--out", str(out), "--png"])
        == 0
    )
    assert (tmp_path / "seg.png").is_file()
    fig = saved_figures[-1]
    texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert texts == ["1 necrotic core", "2 oedema", "4 enhancing"]
    assert fig.axes[0].get_title().startswith("FLAIR, axial slice")
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["A", "L", "P", "R"]  # the synthetic scans are RAS
    # the slice shown is in the head, with labels on it (a 2-round model labels the empty background too, and the
    # overlay used to show an all-black edge slice)
    shown = np.asarray(fig.axes[0].images[0].get_array())
    assert (shown != 0).mean() > 0.2 and np.asarray(fig.axes[1].images[1].get_array())[..., 3].any()


def _jit_noise(messages) -> list[str]:
    """Tracer warnings and PyTorch's TorchScript deprecation notices among warning texts."""
    return [
        m for m in messages if "TracerWarning" in m or re.search(r"torch\.jit\.\w+` is (deprecated|not supported)", m)
    ]


def test_export_shows_a_hospital_no_tracer_warning(model, tiny_federation, tmp_path):
    """Issue 31 item 11: the export traced model.ts with six TracerWarnings and PyTorch's "torch.jit.trace is
    deprecated" notices; a hospital must see none of them, even with every warning turned on."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main_export(["--model", model, "--out", str(tmp_path / "bundle")]) == 0
    assert _jit_noise([f"{w.category.__name__}: {w.message}" for w in caught]) == []
    # the commands as typed at a hospital: export, then segment with the bundle; stderr holds only their own lines
    script = (
        "import sys; from client.export_cli import main; from client.segment_cli import main_segment; "
        "sys.exit(main(sys.argv[1:5]) or main_segment(sys.argv[5:]))"
    )
    bundle, case = tmp_path / "bundle2", tiny_federation / "SYN_001_000"
    args = ["--model", model, "--out", str(bundle), "--model", str(bundle), "--input", str(case)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"} | {"OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-c", script, *args, "--out", str(tmp_path / "seg.nii.gz")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [x for x in run.stderr.splitlines() if x.strip()]
    assert (
        _jit_noise(lines) == []
        and [x for x in lines if not x.startswith(("uharmony-export:", "uharmony-segment:"))] == []
    )
