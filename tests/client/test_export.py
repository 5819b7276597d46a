"""uharmony-export: a MONAI bundle of the federated model, TorchScript beside it, segmentation from it."""

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from client.export_cli import main as main_export
from client.segment_cli import main_segment
from uharmony.federation.config import RunConfig
from uharmony.records.bundle_trust import BundleError, check_bundle
from uharmony.records.export import TracedForward, export_bundle, load_bundle, verify_bundle


def test_bundle_of_a_federated_model_verifies_and_segments_as_the_model_file(
    tiny_federation, trained_run, tmp_path, capsys
):
    state = trained_run / "site-state" / "site-1"
    bundle = tmp_path / "bundle"
    model_file = str(trained_run / "final_model.pt")
    assert main_export(["--model", model_file, "--out", str(bundle), "--state-dir", str(state)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verified"] and report["torchscript-max-abs-diff"] <= 1e-4
    for name in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "models/model.ts"):
        assert (bundle / name).stat().st_size > 0, name
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 4
    assert list(meta["network_data_format"]["outputs"]["pred"]["channel_def"].values()) == ["ET", "TC", "WT"]
    assert (
        meta["uharmony"]["spacing_mm"] == 6.0 and "harmonization statistics" in meta["uharmony"]["site_statistics_note"]
    )
    assert meta["uharmony"]["site_statistics"].startswith("state-dir")

    # the same scan segmented from the bundle and from the model file with the same site statistics
    case = tiny_federation / "SYN_001_000"
    outs = []
    for model in (str(bundle), model_file):
        out = tmp_path / f"seg-{len(outs)}.nii.gz"
        extra = [] if model == str(bundle) else ["--state-dir", str(state)]
        assert main_segment(["--model", model, "--input", str(case), "--out", str(out), *extra]) == 0
        outs.append(np.asarray(nib.load(out).dataobj))
    capsys.readouterr()
    assert np.array_equal(outs[0], outs[1])

    # the TorchScript gives the network's logits for a scan's patch and gate decision
    net, _, roi, _ = load_bundle(bundle)
    ts = torch.jit.load(str(bundle / "models" / "model.ts"))
    x = torch.randn(2, 4, roi, roi, roi)
    w = torch.softmax(torch.randn(2, net.head.num_domains), 1)
    with torch.no_grad():
        assert float((ts(x, w) - TracedForward(net)(x, w)).abs().max()) <= 1e-4


@pytest.mark.parametrize("strategy", ["fedavg", "fedbn"])
def test_plain_models_export_too(tmp_path, strategy):
    model = RunConfig.from_flwr({"strategy": strategy, "filters": "8,16,32"}).build_model()
    check = export_bundle(model, tmp_path / "b", spacing=3.0, roi=16, run={"strategy": strategy})
    verify_bundle(tmp_path / "b")  # MONAI's check of the network against the metadata
    assert check["max-abs-diff"] <= 1e-4


def test_a_damaged_bundle_is_refused_by_name(tmp_path, capsys):
    (tmp_path / "b" / "configs").mkdir(parents=True)
    (tmp_path / "b" / "configs" / "metadata.json").write_text("{not json")
    case = tmp_path / "case"
    case.mkdir()
    args = ["--model", str(tmp_path / "b"), "--input", str(case), "--out", str(tmp_path / "s.nii.gz")]
    assert main_segment(args) == 2
    assert "not a readable uharmony bundle" in capsys.readouterr().err


@pytest.mark.parametrize("with_site", [True, False])
def test_the_bundle_runs_the_monai_way_and_matches_uharmony_segment(tiny_federation, trained_run, tmp_path, with_site):
    """Issue 31 item 2: ``python -m monai.bundle run --config_file configs/inference.json`` (MONAI's CLI, its
    SupervisedEvaluator) on a folder of NIfTI case folders writes BraTS labels on each input's grid, the same
    labels ``uharmony-segment`` writes from the same bundle; with a site's statistics and with each scan's own.
    (Signing and ``--verify``: ``test_segment.py::test_a_bundle_is_refused_under_trusted_key_unless_signed``.)"""
    bundle = tmp_path / "bundle"
    args = ["--model", str(trained_run / "final_model.pt"), "--out", str(bundle)]
    if with_site:
        args += ["--state-dir", str(trained_run / "site-state" / "site-1")]
    assert main_export(args) == 0
    cases = tmp_path / "cases"
    for name in ("SYN_001_000", "SYN_003_001"):  # site 3 has no T1: a missing modality
        (cases / name).mkdir(parents=True)
        for f in (tiny_federation / name).glob("*.nii.gz"):
            if not f.name.endswith("_seg.nii.gz"):
                (cases / name / f.name).symlink_to(f)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json"]
    run = subprocess.run(
        [*cmd, "--dataset_dir", str(cases), "--output_dir", str(tmp_path / "monai")],
        cwd=bundle,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert main_segment(["--model", str(bundle), "--input", str(cases), "--out", str(tmp_path / "ours")]) == 0
    for name in ("SYN_001_000", "SYN_003_001"):
        theirs, ours = (
            nib.load(tmp_path / "monai" / f"{name}_seg.nii.gz"),
            nib.load(tmp_path / "ours" / f"{name}_seg.nii.gz"),
        )
        ref = nib.load(cases / name / f"{name}_flair.nii.gz")
        assert theirs.shape == ref.shape and np.allclose(theirs.affine, ref.affine, atol=1e-4)
        labels = np.asarray(theirs.dataobj)
        assert theirs.get_data_dtype() == np.uint8 and set(np.unique(labels).tolist()) <= {0, 1, 2, 4}
        assert np.array_equal(labels, np.asarray(ours.dataobj))


def test_a_bundle_config_that_would_run_code_is_refused_before_monai_parses_it(tmp_path, monkeypatch):
    """F8: MONAI's ConfigParser evals "$" strings and instantiates any "_target_"; the red-team's "$" in the
    spec ran code when the bundle was verified. Only what uharmony-export writes is ever parsed."""
    monkeypatch.chdir(tmp_path)
    model = RunConfig.from_flwr({"strategy": "fedavg", "filters": "8,16,32"}).build_model()
    export_bundle(model, tmp_path / "b", spacing=6.0, roi=16, run={"strategy": "fedavg"})
    path = tmp_path / "b" / "configs" / "inference.json"
    original = path.read_bytes()
    clean = json.loads(original)
    attacks = {
        "$ in the spec": (
            "network_def",
            "spec",
            "arch",
            "$__import__('pathlib').Path('MONAI-RAN-CODE').write_text('x') and 'dynunet'",
        ),
        "another target": ("network_def", "_target_", None, "os.system"),
        "a % macro": ("network_def", "spec", "arch", "%/etc/passwd"),
        "an unknown reference": ("checkpoint", None, None, "@_meta_#uharmony"),
    }
    for what, (top, key, sub, value) in attacks.items():
        cfg = json.loads(json.dumps(clean))
        if key is None:
            cfg[top] = value
        elif sub is None:
            cfg[top][key] = value
        else:
            cfg[top][key][sub] = value
        path.write_text(json.dumps(cfg))
        with pytest.raises(BundleError, match=top):
            verify_bundle(tmp_path / "b")
        assert not (tmp_path / "MONAI-RAN-CODE").exists(), what
    cfg = json.loads(json.dumps(clean))  # a bundle from before uharmony/ was layered: re-export, says the error
    cfg["network_def"]["_target_"] = "uharmony.networks.model_from_spec"
    path.write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match="earlier uharmony-export wrote.*export the model again"):
        verify_bundle(tmp_path / "b")
    path.write_bytes(original)
    check_bundle(tmp_path / "b")
    (tmp_path / "b" / "configs" / "logging.conf").write_text("[loggers]\nkeys=root\n")  # MONAI would read it
    with pytest.raises(BundleError, match="logging.conf: not listed"):
        check_bundle(tmp_path / "b")
