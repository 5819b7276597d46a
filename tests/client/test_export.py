"""uharmony-export: a MONAI bundle of the federated model, TorchScript beside it, segmentation from it."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from client.export_cli import main as main_export
from client.segment_cli import main_segment
from uharmony.config import RunConfig
from uharmony.export import TracedForward, export_bundle, load_bundle, verify_bundle


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
