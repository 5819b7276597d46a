import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from simulation.synth import generate_federation, make_site_profile
from simulation.synth.cli import main as synth_cli


def _case_dirs(root):
    return sorted(p for p in root.iterdir() if p.is_dir())


def test_layout_affines_and_labels(tiny_federation):
    root = tiny_federation
    sites = {s["name"]: s for s in json.loads((root / "federation.json").read_text())["sites"]}
    assert sorted(sites) == ["1", "2", "3", "4"] and sum(len(s["cases"]) for s in sites.values()) == 12
    for case_dir in _case_dirs(root):
        pid = str(int(case_dir.name.split("_")[1]))
        profile = sites[pid]["profile"]
        seg = nib.load(case_dir / f"{case_dir.name}_seg.nii.gz")
        assert np.allclose(np.diag(seg.affine)[:3], 6.0)
        values = set(np.unique(np.asarray(seg.dataobj)).tolist())
        assert values <= ({0, 1, 2, 4} if profile["labels"] == "full" else {0, 2})
        assert len(values) > 1, "every case has a lesion"
        for m in ("t1", "t1ce", "t2", "flair"):
            path = case_dir / f"{case_dir.name}_{m}.nii.gz"
            assert path.exists() == (m in profile["modalities"])
            if path.exists():
                img = nib.load(path)
                assert img.shape == seg.shape and np.allclose(img.affine, seg.affine)
                assert np.isfinite(np.asarray(img.dataobj)).all()


def test_sites_differ_measurably(tiny_federation):
    """Per-site FLAIR brain intensity distributions differ far more between sites than within a site."""
    root = tiny_federation
    by_site = {}
    for case_dir in _case_dirs(root):
        data = np.asarray(nib.load(case_dir / f"{case_dir.name}_flair.nii.gz").dataobj)
        brain = data[data > 0]
        by_site.setdefault(case_dir.name.split("_")[1], []).append(
            (np.median(brain), np.percentile(brain, 90) / np.median(brain))
        )
    medians = {s: np.mean([v[0] for v in vals]) for s, vals in by_site.items()}
    within = max(np.std([v[0] for v in vals]) / np.mean([v[0] for v in vals]) for vals in by_site.values())
    between = np.std(list(medians.values())) / np.mean(list(medians.values()))
    assert between > 3 * within, (medians, within, between)


def test_profiles_are_deterministic_and_varied():
    assert make_site_profile(0, 1) == make_site_profile(0, 1)
    profiles = [make_site_profile(0, i) for i in range(4)]
    assert {p.labels for p in profiles} == {"full", "wt"}
    assert {p.lesion for p in profiles} == {"glioma", "metastasis"}
    assert any(len(p.modalities) < 4 for p in profiles)
    assert make_site_profile(0, 4).scale != profiles[0].scale  # an unseen site has its own scanner


def test_generation_is_deterministic_in_one_process_or_two(tmp_path):
    kw = dict(sites=1, cases_per_site=2, seed=3, spacing=6.0, progress=False)
    a = generate_federation(tmp_path / "a", **kw, workers=1)
    b = generate_federation(tmp_path / "b", **kw, workers=2)  # cases made side by side, out of order
    assert a["sites"] == b["sites"]
    for case in ("SYN_001_000", "SYN_001_001"):
        for name in (f"{case}_flair.nii.gz", f"{case}_seg.nii.gz"):
            x = np.asarray(nib.load(tmp_path / "a" / case / name).dataobj)
            y = np.asarray(nib.load(tmp_path / "b" / case / name).dataobj)
            np.testing.assert_array_equal(x, y)


def test_held_out_validation_cases_change_no_other_case_nor_the_split(tmp_path):
    from uharmony.data import load_federation

    kw = dict(sites=1, cases_per_site=3, seed=4, spacing=6.0, progress=False, workers=1)
    generate_federation(tmp_path / "a", **kw)
    generate_federation(tmp_path / "b", **kw, val_cases=2)
    a, b = load_federation(tmp_path / "a").sites[0], load_federation(tmp_path / "b").sites[0]
    assert [c.case_id for c in b.train] == [c.case_id for c in a.train]  # the same training cases
    assert [c.case_id for c in b.val] == [c.case_id for c in a.val] + ["SYN_001_003", "SYN_001_004"]
    for case in ("SYN_001_000", "SYN_001_002"):
        for path in sorted((tmp_path / "a" / case).iterdir()):  # every contrast and the labels
            x = np.asarray(nib.load(path).dataobj)
            np.testing.assert_array_equal(x, np.asarray(nib.load(tmp_path / "b" / case / path.name).dataobj))
    held = np.asarray(nib.load(tmp_path / "b" / "SYN_001_003" / "SYN_001_003_seg.nii.gz").dataobj)
    assert held.any() and not np.array_equal(
        held, np.asarray(nib.load(tmp_path / "b" / "SYN_001_000" / "SYN_001_000_seg.nii.gz").dataobj)
    )
    with pytest.raises(ValueError, match="val_cases"):
        generate_federation(tmp_path / "c", **kw, val_cases=-1)


def test_cli_writes_federation_and_montage(tmp_path, capsys):
    out = tmp_path / "cli"
    assert synth_cli(["synth", "--out", str(out), "--sites", "2", "--cases-per-site", "1", "--spacing", "6"]) == 0
    assert (out / "montage.png").stat().st_size > 1000
    assert len(_case_dirs(out)) == 2
    assert synth_cli(["stats", "--root", str(out)]) == 0
    rows = [json.loads(x) for x in (out / "site_stats.jsonl").read_text().splitlines()]
    assert [r["site"] for r in rows] == ["1", "2"] and all(r["lesion_ml_mean"] > 0 for r in rows)
    assert synth_cli(["synth", "--out", str(tmp_path / "bad"), "--sites", "0"]) == 2
    assert "at least one site" in capsys.readouterr().err
    assert synth_cli(["synth", "--out", str(tmp_path / "bad"), "--val-cases", "-2"]) == 2
    assert "val_cases" in capsys.readouterr().err


def test_embedded_command_generates_the_run_configs_federation_once(capsys):
    from uharmony.data import federation_root, load_federation
    from uharmony.federation.config import RunConfig

    config = "seed=5 synth-scenario='' synth-sites=2 synth-cases-per-site=1 synth-spacing=6.0"
    assert synth_cli(["embedded", "--run-config", config]) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    cfg = RunConfig.from_flwr(
        {"seed": 5, "synth-scenario": "", "synth-sites": 2, "synth-cases-per-site": 1, "synth-spacing": 6.0}
    )
    assert str(federation_root(cfg)) == path and len(load_federation(path).sites) == 2
    stamp = (federation_root(cfg) / "federation.json").stat().st_mtime_ns
    assert synth_cli(["embedded", "-c", config]) == 0  # already there: kept as is
    assert (federation_root(cfg) / "federation.json").stat().st_mtime_ns == stamp
    assert synth_cli(["embedded", "-c", "seed=x"]) == 2


def test_bad_spacing():
    with pytest.raises(ValueError, match="spacing"):
        generate_federation("/tmp/never", sites=1, cases_per_site=1, spacing=0.2, progress=False)


def test_a_script_without_a_main_guard_can_generate_in_parallel(tmp_path):
    """Workers must not re-run the caller's script (a spawned worker would, hanging a script with no guard)."""
    import subprocess
    import sys

    script = tmp_path / "make.py"
    script.write_text(
        "from simulation.synth import generate_federation\n"
        f"generate_federation({str(tmp_path / 'fed')!r}, sites=2, cases_per_site=8, seed=1, spacing=6.0, "
        "progress=False, workers=2)\n"
        "print('done')\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(script)], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "done", out.stderr[-2000:]
    assert len(list((tmp_path / "fed").glob("SYN_*"))) == 16


def test_reference_copies_are_the_scans_without_their_noise_and_change_nothing_else(tmp_path):
    """``reference``: a noise-free copy of each scan beside it (UMS-Rep scores denoising against it); the scans,
    labels and manifest otherwise as without it. Read through the data layer: the reference is z-scored with
    the scan's own statistics, and ``floor`` is where a raw 0 lands."""
    import torch

    from uharmony.data import SiteData, load_federation

    kw = dict(sites=1, cases_per_site=2, seed=5, spacing=6.0, progress=False, workers=1)
    generate_federation(tmp_path / "a", **kw)
    generate_federation(tmp_path / "b", **kw, reference=True)
    case = "SYN_001_000"
    for path in sorted(p for p in (tmp_path / "a" / case).iterdir() if p.is_file()):
        np.testing.assert_array_equal(
            np.asarray(nib.load(path).dataobj), np.asarray(nib.load(tmp_path / "b" / case / path.name).dataobj)
        )
    scan = np.asarray(nib.load(tmp_path / "b" / case / f"{case}_t1.nii.gz").dataobj)
    clean = np.asarray(nib.load(tmp_path / "b" / case / "reference" / f"{case}_t1.nii.gz").dataobj)
    brain = scan != 0
    noise = scan[brain] - clean[brain]
    # the scanner noise of these sites is 0.16-0.6 brain SD (docs/umsrep.md): noise, not anatomy
    assert np.array_equal(brain, clean != 0) and 0 < noise.std() < 0.7 * scan[brain].std()
    assert abs(noise.mean()) < 0.5 * noise.std()
    site = load_federation(tmp_path / "b").sites[0]
    assert site.cases[0].reference == {
        m: str(tmp_path / "b" / case / "reference" / f"{case}_{m}.nii.gz") for m in site.modalities
    }
    assert load_federation(tmp_path / "a").sites[0].cases[0].reference is None
    item = SiteData(site, 6.0, 16).train[0]
    x, ref = torch.as_tensor(item["image"]), torch.as_tensor(item["reference"])
    assert bool(item["has-reference"].all()) and ref.shape == x.shape
    inside = x[0] != 0
    assert float((x[0][inside] - ref[0][inside]).std()) < 0.7  # the same units: the scan's z-score
    assert (item["floor"] < 0).all()  # raw 0 lies below every brain voxel's z-score
    assert float(x[0][inside].min()) >= float(item["floor"][0]) - 1e-4


def test_a_bad_reference_costs_its_scores_not_the_case(tmp_path):
    from uharmony.data import SiteData, load_federation
    from uharmony.data.cases import DataError
    from uharmony.data.manifest import load_federation as load

    generate_federation(tmp_path / "f", sites=1, cases_per_site=2, seed=6, spacing=6.0, progress=False,
                        workers=1, reference=True)  # fmt: skip
    (tmp_path / "f" / "SYN_001_000" / "reference" / "SYN_001_000_t1.nii.gz").write_bytes(b"not a NIfTI file")
    site = load_federation(tmp_path / "f").sites[0]
    data = SiteData(site, 6.0, 16)
    assert len(data.train) + len(data.val) == 2 and not data.skipped  # both cases kept
    item = next(it for it in data.train + data.val if it["case_id"] == "SYN_001_000")
    assert item["has-reference"].tolist() == [m != "t1" for m in data.modalities]
    doc = json.loads((tmp_path / "f" / "federation.json").read_text())
    doc["sites"][0]["cases"][0]["image4d"] = "x.nii.gz"
    (tmp_path / "f" / "federation.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"cases\[0\].reference: not for a 4-D case"):
        load(tmp_path / "f")
