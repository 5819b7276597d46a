"""``uharmony-denoise``: a hospital denoises its scans with the phase-P artifact (UMS-Rep)."""

import json

import nibabel as nib
import numpy as np

from client.denoise_cli import main


def test_the_phase_p_artifact_denoises_a_case_on_its_own_grid(umsrep_runs, tiny_federation, tmp_path, capsys):
    case = tiny_federation / "SYN_002_000"
    out = tmp_path / "den"
    assert main(["--model", str(umsrep_runs["pretrain"] / "umsrep.pt"), "--input", str(case), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cases"] == 1 and summary["skipped"] == []
    report = json.loads((out / "denoise.jsonl").read_text())
    assert report["case"] == "SYN_002_000" and set(report["out"]) == {"t1", "t1ce", "t2", "flair"}
    for modality, path in report["out"].items():
        src, den = nib.load(case / f"SYN_002_000_{modality}.nii.gz"), nib.load(path)
        raw, new = np.asarray(src.dataobj, np.float32), np.asarray(den.dataobj)
        assert den.shape == src.shape and np.allclose(den.affine, src.affine) and np.isfinite(new).all()
        assert np.array_equal(new[raw == 0], raw[raw == 0])  # outside the brain nothing changes
        assert report["rms-change-brain-sd"][modality] > 0 and not np.array_equal(new[raw != 0], raw[raw != 0])
        assert den.get_data_dtype() == np.float32


def test_a_model_without_a_reconstruction_head_is_refused(umsrep_runs, tiny_federation, tmp_path, capsys):
    model = umsrep_runs["finetune"] / "final_model.pt"
    assert main(["--model", str(model), "--input", str(tiny_federation / "SYN_002_000"), "--out", str(tmp_path)]) == 2
    assert "has no reconstruction head" in capsys.readouterr().err


def test_a_batch_skips_and_counts_a_bad_case(umsrep_runs, tiny_federation, tmp_path, capsys):
    batch = tmp_path / "batch"
    batch.mkdir()
    (batch / "SYN_002_000").symlink_to(tiny_federation / "SYN_002_000")
    bad = batch / "SYN_bad"
    bad.mkdir()
    (bad / "SYN_bad_flair.nii.gz").write_bytes(b"not a NIfTI file")
    out = tmp_path / "out"
    assert main(["--model", str(umsrep_runs["pretrain"] / "umsrep.pt"), "--input", str(batch), "--out", str(out)]) == 1
    lines = (out / "denoise.jsonl").read_text().splitlines()
    assert [json.loads(x)["case"] for x in lines] == ["SYN_002_000"]
    assert (out / "SYN_002_000" / "SYN_002_000_flair.nii.gz").exists()
    assert "SYN_bad" in capsys.readouterr().err


def test_an_integer_scan_is_denoised_in_float(umsrep_runs, tiny_federation, tmp_path):
    case = tmp_path / "SYN_int"
    case.mkdir()
    for m in ("t1", "t1ce", "t2", "flair"):
        src = nib.load(tiny_federation / "SYN_002_000" / f"SYN_002_000_{m}.nii.gz")
        img = nib.Nifti1Image(np.round(np.asarray(src.dataobj)).astype(np.int16), src.affine)
        nib.save(img, case / f"SYN_int_{m}.nii.gz")
    out = tmp_path / "den"
    assert main(["--model", str(umsrep_runs["pretrain"] / "umsrep.pt"), "--input", str(case), "--out", str(out)]) == 0
    den = nib.load(out / "SYN_int_flair.nii.gz")
    assert den.get_data_dtype() == np.float32
    values = np.asarray(den.dataobj)
    assert not np.allclose(values[values != 0], np.round(values[values != 0]))  # sub-integer changes kept
