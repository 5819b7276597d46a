"""Which model a hospital runs: signed by the coordinator, self-contained (its inference settings inside the
signed file), not a checkpoint, not expired or revoked; a bundle under --trusted-key only when signed."""

import json

import torch
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from client.segment_cli import main_segment
from uharmony.federation.config import RunConfig
from uharmony.records.checkpoint import inference_settings, save_checkpoint


def _settings(model, spacing=6.0, patch=16):
    return inference_settings(model.spec, spacing, patch)


def _signed(tmp_path, signer, name="final_model.pt", folder="run", **kw):
    model = RunConfig.from_flwr({"strategy": "fedavg", "filters": "8,16,32"}).build_model()
    path = save_checkpoint(
        tmp_path / folder,
        1,
        model.spec,
        model.state_dict(),
        {"strategy": "fedavg", "run-id": "run-7", "inference": _settings(model)},
        name=name,
        signer=signer,
        **kw,
    )
    (tmp_path / folder / "config.json").write_text(json.dumps({"spacing": 6.0, "patch-size": 16}))
    return path


def _trusted_file(tmp_path, key, name="trusted-entities.yaml"):
    pub = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    (tmp_path / name).write_text(f"fpk_coordinator: '{pub}'\n")
    return tmp_path / name


def test_a_hospital_runs_only_a_model_the_coordinator_signed(tiny_federation, tmp_path, capsys):
    coordinator, stranger = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    model = _signed(tmp_path, coordinator)
    case = ["--input", str(tiny_federation / "SYN_001_000"), "--out", str(tmp_path / "seg.nii.gz")]
    assert main_segment(["--model", str(model), *case, "--trusted-key", str(_trusted_file(tmp_path, coordinator))]) == 0
    capsys.readouterr()
    other = _trusted_file(tmp_path, stranger, "other.yaml")
    assert main_segment(["--model", str(model), *case, "--trusted-key", str(other)]) == 2
    assert "not from a trusted key" in capsys.readouterr().err
    (tmp_path / "run" / "manifest.sig").unlink()
    assert main_segment(["--model", str(model), *case, "--trusted-key", str(other)]) == 2
    assert "not signed" in capsys.readouterr().err
    assert main_segment(["--model", str(model), *case]) == 0  # no key given: loads (safely), with a warning
    assert "signature is not checked" in capsys.readouterr().err


def _case_args(tiny_federation, tmp_path):
    return ["--input", str(tiny_federation / "SYN_001_000"), "--out", str(tmp_path / "seg.nii.gz")]


def test_a_bundle_is_refused_under_trusted_key_unless_signed(tiny_federation, tmp_path, capsys):
    """F8: a bundle folder under --trusted-key was loaded without any check; now its manifest must be signed by
    a trusted key and every file must match it (``uharmony-export --verify`` says the same before MONAI)."""
    from client.export_cli import main as main_export

    coordinator = ed25519.Ed25519PrivateKey.generate()
    model = _signed(tmp_path, coordinator)
    trusted = str(_trusted_file(tmp_path, coordinator))
    case = _case_args(tiny_federation, tmp_path)
    unsigned, bundle = tmp_path / "unsigned", tmp_path / "bundle"
    assert main_export(["--model", str(model), "--out", str(unsigned), "--trusted-key", trusted]) == 0
    capsys.readouterr()
    assert main_segment(["--model", str(unsigned), *case, "--trusted-key", trusted]) == 2
    assert "not signed" in capsys.readouterr().err
    assert main_segment(["--model", str(unsigned), *case]) == 0  # no key: runs, and says nothing was checked
    assert "signature is not checked" in capsys.readouterr().err
    key_file = tmp_path / "signing.key"
    key_file.write_bytes(coordinator.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()))
    signed = ["--model", str(model), "--out", str(bundle), "--trusted-key", trusted, "--signing-key", str(key_file)]
    assert main_export(signed) == 0
    assert main_export(["--verify", str(bundle), "--trusted-key", trusted]) == 0
    assert main_segment(["--model", str(bundle), *case, "--trusted-key", trusted]) == 0
    capsys.readouterr()
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)  # the red-team's tampering
    tampered = {k: torch.full_like(v, 0.123) if v.is_floating_point() else v for k, v in state.items()}
    torch.save(tampered, bundle / "models" / "model.pt")
    assert main_segment(["--model", str(bundle), *case, "--trusted-key", trusted]) == 2
    assert "model.pt: SHA-256 differs from manifest.json" in capsys.readouterr().err
    assert main_export(["--verify", str(bundle), "--trusted-key", trusted]) == 2
    assert "model.pt: SHA-256 differs" in capsys.readouterr().err


def test_config_json_is_covered_by_the_signature(tmp_path):
    """F9: spacing and patch size come from the signed model file; a config.json edited after signing changes
    nothing (it used to turn 6 mm into 0.25 mm: 24^3 times the voxels)."""
    from client.segment_cli import load_model

    coordinator = ed25519.Ed25519PrivateKey.generate()
    path = _signed(tmp_path, coordinator)
    trusted = [coordinator.public_key()]
    assert load_model(path, None, trusted)[2:4] == (6.0, 16)
    (tmp_path / "run" / "config.json").write_text(json.dumps({"spacing": 0.25, "patch-size": 8}))
    assert load_model(path, None, trusted)[2:4] == (6.0, 16)
    assert load_model(path, None, None)[2:4] == (6.0, 16)


def test_final_model_alone_segments_with_its_own_settings(tiny_federation, tmp_path, capsys):
    """F9 / issue 31: final_model.pt copied alone runs at its trained spacing and patch (no "nothing to resume",
    no silent 3 mm / 32 default); under --trusted-key it needs its manifest and signature, and a signed model
    that does not record its settings is refused."""
    coordinator = ed25519.Ed25519PrivateKey.generate()
    path = _signed(tmp_path, coordinator)
    alone = tmp_path / "hospital" / "final_model.pt"
    alone.parent.mkdir()
    alone.write_bytes(path.read_bytes())
    assert main_segment(["--model", str(alone), *_case_args(tiny_federation, tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "resume" not in err and "no manifest.json beside it" in err
    from client.segment_cli import load_model

    assert sorted(p.name for p in alone.parent.iterdir()) == ["final_model.pt"]  # no config.json, no manifest
    assert load_model(alone, None, None)[2:4] == (6.0, 16)  # its trained settings, not the 3 mm / 24 defaults
    trusted = str(_trusted_file(tmp_path, coordinator))
    assert main_segment(["--model", str(alone), *_case_args(tiny_federation, tmp_path), "--trusted-key", trusted]) == 2
    err = capsys.readouterr().err
    assert "resume" not in err and "manifest.sig" in err
    model = RunConfig.from_flwr({"strategy": "fedavg", "filters": "8,16,32"}).build_model()
    save_checkpoint(
        tmp_path / "old",
        1,
        model.spec,
        model.state_dict(),
        {"strategy": "fedavg"},
        name="final_model.pt",
        signer=coordinator,
    )
    (tmp_path / "old" / "config.json").write_text(json.dumps({"spacing": 6.0, "patch-size": 16}))
    old = ["--model", str(tmp_path / "old" / "final_model.pt"), *_case_args(tiny_federation, tmp_path)]
    assert main_segment([*old, "--trusted-key", trusted]) == 2
    assert "records no inference settings" in capsys.readouterr().err
    assert main_segment(old) == 0  # unsigned use: from config.json, and says so
    assert "using spacing 6.0 mm and patch 16 from" in capsys.readouterr().err


def test_a_checkpoint_an_expired_or_a_revoked_model_is_refused(tiny_federation, tmp_path, capsys):
    """F19: the signature covers a release record (run, round, kind, expiry); a round checkpoint is not a
    release unless asked for, an expired release and a revoked file or run are refused."""
    coordinator = ed25519.Ed25519PrivateKey.generate()
    trusted = str(_trusted_file(tmp_path, coordinator))
    case = [*_case_args(tiny_federation, tmp_path), "--trusted-key", trusted]
    checkpoint = _signed(tmp_path, coordinator, name="round-001.pt", folder="run/checkpoints")
    assert main_segment(["--model", str(checkpoint), *case]) == 2
    assert "is a checkpoint of run run-7 (round 1), not its released final model" in capsys.readouterr().err
    assert main_segment(["--model", str(checkpoint), *case, "--allow-checkpoint"]) == 0
    capsys.readouterr()
    expired = _signed(tmp_path, coordinator, folder="expired", valid_days=-1)
    assert main_segment(["--model", str(expired), *case]) == 2
    assert "release expired on" in capsys.readouterr().err
    final = _signed(tmp_path, coordinator)
    assert main_segment(["--model", str(final), *case]) == 0
    capsys.readouterr()
    digest = json.loads((tmp_path / "run" / "manifest.json").read_text())["files"]["final_model.pt"]
    for entry in (digest, "run run-7"):
        (tmp_path / "revoked.txt").write_text(f"# revoked by the consortium\n{entry}\n")
        assert main_segment(["--model", str(final), *case, "--revoked", str(tmp_path / "revoked.txt")]) == 2
        assert "revoked" in capsys.readouterr().err
    record = json.loads((tmp_path / "run" / "manifest.json").read_text())["releases"]["final_model.pt"]
    assert {k: record[k] for k in ("file", "sha256", "run-id", "round", "kind")} == {
        "file": "final_model.pt",
        "sha256": digest,
        "run-id": "run-7",
        "round": 1,
        "kind": "final",
    }


def test_a_runs_final_model_is_self_contained_and_released(trained_run):
    """F9 / F19 through the round engine: a run's final_model.pt records its spacing, patch, modalities, regions
    and preprocessing, and its manifest a release of kind final; each round's checkpoint one of kind checkpoint."""
    from uharmony.records.checkpoint import load_checkpoint, settings_of

    final = load_checkpoint(trained_run, "final_model.pt")
    assert settings_of(final, "final_model.pt") == {"spacing-mm": 6.0, "patch-size": 16, "preprocessing": "uharmony-1"}
    assert final["extra"]["inference"]["regions"] == final["spec"]["regions"]
    run_id = final["extra"]["run-id"]
    assert (
        final["release"]["kind"] == "final" and final["release"]["run-id"] == run_id and final["release"]["round"] == 2
    )
    rounds = json.loads((trained_run / "checkpoints" / "manifest.json").read_text())["releases"]
    assert {r["kind"] for r in rounds.values()} == {"checkpoint"} and {r["round"] for r in rounds.values()} == {1, 2}


def test_the_key_a_hospital_is_told_to_trust_is_the_one_that_signs_models(tiny_federation, tmp_path, capsys):
    """Issue 31 item 4 (wording): the warning and --help used to send a hospital to its SuperNode's
    trusted-entities.yaml, which holds only the app-signing key, so a released model was refused as untrusted.
    With uharmony-pki's own keys: model-signing.pub accepts a released model and a bundle signed with
    model-signing.key, trusted-entities.yaml refuses both, and the warning names model-signing.pub."""
    from client.export_cli import main as main_export
    from server.operator.pki import init_ca
    from uharmony.records.signing import load_private_key

    pki = tmp_path / "pki"
    init_ca(pki, days=30, passphrase=b"correct horse battery")
    model = RunConfig.from_flwr({"strategy": "fedavg", "filters": "8,16,32"}).build_model()
    extra = {"strategy": "fedavg", "run-id": "run-9", "inference": _settings(model)}
    path = save_checkpoint(
        tmp_path / "run",
        1,
        model.spec,
        model.state_dict(),
        extra,
        name="final_model.pt",
        signer=load_private_key(pki / "model-signing.key"),
    )
    case = _case_args(tiny_federation, tmp_path)
    assert main_segment(["--model", str(path), *case]) == 0
    warning = capsys.readouterr().err
    assert "--trusted-key: the coordinator's model-signing.pub" in warning and "trusted-entities" not in warning
    assert main_segment(["--model", str(path), *case, "--trusted-key", str(pki / "model-signing.pub")]) == 0
    assert main_segment(["--model", str(path), *case, "--trusted-key", str(pki / "trusted-entities.yaml")]) == 2
    assert "not from a trusted key" in capsys.readouterr().err
    bundle = tmp_path / "bundle"
    signed = ["--signing-key", str(pki / "model-signing.key"), "--trusted-key", str(pki / "model-signing.pub")]
    assert main_export(["--model", str(path), "--out", str(bundle), *signed]) == 0
    assert main_export(["--verify", str(bundle), "--trusted-key", str(pki / "model-signing.pub")]) == 0
    assert main_segment(["--model", str(bundle), *case, "--trusted-key", str(pki / "model-signing.pub")]) == 0
    assert main_segment(["--model", str(bundle), *case, "--trusted-key", str(pki / "trusted-entities.yaml")]) == 2
