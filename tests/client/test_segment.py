"""Hospital tools on a tiny synthetic case: calibration from unlabeled scans and segmentation."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from client.segment_cli import main_calibrate, main_segment
from uharmony import build_model
from uharmony.federation.config import RunConfig
from uharmony.federation.federated import ModelRoles, global_state_of, local_state_of
from uharmony.federation.site_state import load_local_state, save_local_state
from uharmony.model.inference import estimate_site_statistics, regions_to_brats
from uharmony.records.checkpoint import inference_settings, save_checkpoint


@pytest.fixture
def checkpoint(trained_run):
    """The federated model of the session's tiny trained run (U-Harmony, 2 rounds)."""
    return trained_run / "final_model.pt"


@pytest.mark.parametrize("strategy", ["fedavg", "fedbn", "local"])
def test_models_of_every_strategy_segment(tiny_federation, tmp_path, capsys, strategy):
    """The model file says which strategy made it; what stays at a site comes from that site's --state-dir."""
    cfg = RunConfig.from_flwr({"strategy": strategy, "filters": "8,16,32"})
    model = cfg.build_model()
    roles = ModelRoles(model, strategy)
    save_checkpoint(
        tmp_path / "run", 1, model.spec, global_state_of(model, roles), {"strategy": strategy}, name="final_model.pt"
    )
    (tmp_path / "run" / "config.json").write_text(json.dumps({"spacing": 6.0, "patch-size": 16}))
    args = [
        "--model",
        str(tmp_path / "run" / "final_model.pt"),
        "--input",
        str(tiny_federation / "SYN_001_000"),
        "--out",
        str(tmp_path / "seg.nii.gz"),
    ]
    if strategy == "local":  # the whole model lives at the site
        assert main_segment(args) == 2 and "--state-dir" in capsys.readouterr().err
    save_local_state(tmp_path / "state", local_state_of(model, roles), {"site": "1"})
    assert main_segment([*args, "--state-dir", str(tmp_path / "state")]) == 0
    assert set(json.loads(capsys.readouterr().out)["volumes_ml"]) == {"ET", "TC", "WT"}


def test_calibration_from_unlabeled_scans(tiny_federation, checkpoint, tmp_path, capsys):
    unlabeled = tmp_path / "unlabeled"
    unlabeled.mkdir()
    for case in ("SYN_003_000", "SYN_003_001"):  # the site without T1
        (unlabeled / case).mkdir()
        for f in (tiny_federation / case).glob("*.nii.gz"):
            if not f.name.endswith("_seg.nii.gz"):
                (unlabeled / case / f.name).symlink_to(f)
    assert (
        main_calibrate(["--model", str(checkpoint), "--input", str(unlabeled), "--state-dir", str(tmp_path / "state")])
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["scans"] == 2 and report["updates"] > 0
    state, info = load_local_state(tmp_path / "state")
    assert info["calibrated_on"] == 2
    means = [v for k, v in state.items() if k.endswith("site_mean")]
    assert means and any(float(m.abs().sum()) > 0 for m in means)  # statistics moved off their init


def test_segment_writes_labels_on_the_input_grid(tiny_federation, checkpoint, tmp_path, capsys):
    case = tiny_federation / "SYN_002_000"
    out = tmp_path / "seg.nii.gz"
    assert main_segment(["--model", str(checkpoint), "--input", str(case), "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    ref = nib.load(case / "SYN_002_000_flair.nii.gz")
    seg = nib.load(out)
    assert seg.shape == ref.shape and np.allclose(seg.affine, ref.affine)
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2, 4}
    assert set(report["volumes_ml"]) == {"ET", "TC", "WT"}


def test_batch_mode_skips_and_counts_bad_cases(tiny_federation, checkpoint, tmp_path, capsys):
    batch = tmp_path / "batch"
    batch.mkdir()
    for case in ("SYN_001_000", "SYN_004_001"):
        (batch / case).symlink_to(tiny_federation / case)
    (batch / "BROKEN").mkdir()
    (batch / "BROKEN" / "BROKEN_flair.nii.gz").write_bytes(b"not nifti")
    assert (
        main_segment(["--model", str(checkpoint), "--input", str(batch), "--out", str(tmp_path / "out"), "--png"]) == 1
    )  # a batch that skipped a case says so and exits 1
    out = capsys.readouterr()
    assert "1 of 3 cases skipped" in out.err
    report = json.loads(out.out.strip().splitlines()[-1])
    assert report["cases"] == 2 and len(report["skipped"]) == 1 and "BROKEN_flair.nii.gz" in report["skipped"][0]
    assert (tmp_path / "out" / "SYN_004_001_seg.nii.gz").exists() and (
        tmp_path / "out" / "SYN_004_001_seg.png"
    ).exists()
    assert len((tmp_path / "out" / "volumes.jsonl").read_text().splitlines()) == 2


def test_segment_bad_input(checkpoint, tmp_path, capsys):
    (tmp_path / "empty_case").mkdir()
    assert (
        main_segment(
            ["--model", str(checkpoint), "--input", str(tmp_path / "empty_case"), "--out", str(tmp_path / "o.nii.gz")]
        )
        == 2
    )
    assert "no modality file" in capsys.readouterr().err


def test_regions_to_brats_nesting():
    r = torch.zeros(3, 2, 1, 1)
    r[0, 0] = 1  # ET only -> also TC and WT -> label 4
    r[2, 1] = 1  # WT only -> oedema
    assert regions_to_brats(r).flatten().tolist() == [4, 2]


def test_calibrate_needs_uharmony():
    with pytest.raises(ValueError, match="no UHarmonyNorm"):
        estimate_site_statistics(
            build_model("dynunet", 4, 3, 1, "instance", filters=(8, 16, 32)),
            [(torch.zeros(4, 8, 8, 8), torch.ones(4))],
            8,
        )


def test_segment_with_a_model_grown_by_a_join(tiny_join_federation, tmp_path, capsys):
    """A model that learnt ADC and the resection cavity reads the ADC file and reports the cavity."""
    from uharmony import extend_model

    torch.manual_seed(0)
    model = build_model("dynunet", 4, 3, 3, "uharmony", filters=(8, 16, 32))
    extend_model(model, ["adc"], ["RC"], 3)
    with torch.no_grad():  # tumour outputs off, the cavity output on: label 3 must fill the brain
        model.head.shared.weight.zero_()  # the common answer; the residual experts stay at zero
        model.head.shared.bias.copy_(torch.tensor([-10.0, -10.0, -10.0, 10.0]))
    roles = ModelRoles(model, "uharmony")
    save_checkpoint(
        tmp_path / "run", 1, model.spec, global_state_of(model, roles), {"strategy": "uharmony"}, name="final_model.pt"
    )
    (tmp_path / "run" / "config.json").write_text(json.dumps({"spacing": 6.0, "patch-size": 16}))
    case = tiny_join_federation / "SYN_004_000"
    out = tmp_path / "seg.nii.gz"
    assert (
        main_segment(["--model", str(tmp_path / "run" / "final_model.pt"), "--input", str(case), "--out", str(out)])
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["modalities"] == ["t1", "t1ce", "t2", "flair", "adc"]
    assert set(report["volumes_ml"]) == {"ET", "TC", "WT", "RC"} and report["volumes_ml"]["RC"] > 0
    assert report["volumes_ml"]["WT"] == 0
    assert 3 in set(np.unique(np.asarray(nib.load(out).dataobj)).tolist()) <= {0, 3}


def test_regions_to_brats_with_a_cavity_output():
    r = torch.zeros(4, 3, 1, 1)
    r[3, 0] = 1  # cavity only -> 3
    r[3, 1] = r[2, 1] = 1  # cavity and whole tumour: tumour wins -> 2
    assert regions_to_brats(r, ["ET", "TC", "WT", "RC"]).flatten().tolist() == [3, 2, 0]
    with pytest.raises(ValueError, match="ET, TC and WT"):
        regions_to_brats(r[:2], ["ET", "RC"])


def _settings(model, spacing=6.0, patch=16):
    return inference_settings(model.spec, spacing, patch)


def test_a_model_file_that_does_not_name_its_strategy_is_refused(tiny_federation, tmp_path, capsys):
    model = RunConfig.from_flwr({"strategy": "fedavg", "filters": "8,16,32"}).build_model()
    save_checkpoint(tmp_path, 1, model.spec, model.state_dict(), {"inference": _settings(model)}, name="final_model.pt")
    args = ["--model", str(tmp_path / "final_model.pt"), "--input", str(tiny_federation / "SYN_001_000")]
    assert main_segment([*args, "--out", str(tmp_path / "seg.nii.gz")]) == 2
    assert "strategy" in capsys.readouterr().err


def test_batch_mode_survives_any_case_and_writes_as_it_goes(tiny_federation, checkpoint, tmp_path, monkeypatch):
    import client.segment_cli as cli

    batch = tmp_path / "batch"
    for case in ("SYN_001_000", "SYN_002_000", "SYN_004_001"):
        (batch / case).mkdir(parents=True)
        for f in (tiny_federation / case).glob("*.nii.gz"):
            (batch / case / f.name).symlink_to(f)
    (batch / "notes.nii.gz").write_bytes(b"a stray file beside the case folders")
    real, seen = cli.segment_case, []

    def flaky(model, spacing, roi, calibrated, folder, out, png=None, derive=False):
        seen.append(len((tmp_path / "out" / "volumes.jsonl").read_text().splitlines()))
        if folder.name == "SYN_002_000":
            raise RuntimeError("an error no one planned for")
        return real(model, spacing, roi, calibrated, folder, out, png, derive)

    monkeypatch.setattr(cli, "segment_case", flaky)
    assert main_segment(["--model", str(checkpoint), "--input", str(batch), "--out", str(tmp_path / "out")]) == 1
    assert seen == [0, 1, 1]  # the first case's line was on disk before the second began
    lines = (tmp_path / "out" / "volumes.jsonl").read_text().splitlines()
    assert [json.loads(x)["case"] for x in lines] == ["SYN_001_000", "SYN_004_001"]


def test_derivable_outputs_need_no_training(umsrep_runs, tiny_federation, tmp_path, capsys):
    """UMS-Rep's third step at the hospital: TTA uncertainty, presence + Grad-CAM, a review flag, from the trained
    heads; the labels are those of the plain call."""
    case = tiny_federation / "SYN_002_000"
    model = umsrep_runs["finetune"] / "final_model.pt"
    plain, derived = tmp_path / "plain.nii.gz", tmp_path / "derived.nii.gz"
    assert main_segment(["--model", str(model), "--input", str(case), "--out", str(plain)]) == 0
    capsys.readouterr()
    assert main_segment(["--model", str(model), "--input", str(case), "--out", str(derived), "--derive"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert np.array_equal(np.asarray(nib.load(plain).dataobj), np.asarray(nib.load(derived).dataobj))
    assert 0 <= report["uncertainty"]["wt_agreement"] <= 1 and report["uncertainty"]["lesion_std"] >= 0
    assert set(report["presence"]) == {"ET", "TC", "WT"} and all(0 <= p <= 1 for p in report["presence"].values())
    assert isinstance(report["review_recommended"], bool)
    assert report["review_recommended"] == bool(report["review_reasons"])
    ref = nib.load(case / "SYN_002_000_flair.nii.gz")
    for name in ("uncertainty", "gradcam"):
        img = nib.load(report["maps"][name])
        data = np.asarray(img.dataobj)
        assert img.shape == ref.shape and np.allclose(img.affine, ref.affine) and np.isfinite(data).all()
    cam = np.asarray(nib.load(report["maps"]["gradcam"]).dataobj)
    assert cam.min() >= -1e-3 and cam.max() <= 1 + 1e-3


def test_review_flag_reasons():
    from uharmony.umsrep.derive import review

    model = build_model("dynunet", 4, 3, 1, "instance", head="plain", filters=(8, 16, 32))
    prob = torch.zeros(3, 4, 4, 4)
    calm = {"agreement": 1.0, "lesion_std": 0.0, "probability": prob}
    assert review(calm, None, model) == (False, [])
    flag, reasons = review({**calm, "agreement": 0.5}, torch.tensor([0.0, 0.0, 0.9]), model)
    assert flag and len(reasons) == 2 and "disagree" in reasons[0] and "is empty" in reasons[1]
