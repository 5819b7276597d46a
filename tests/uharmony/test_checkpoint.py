"""Checkpoints and site state: round trip, digests, and files that would run code when unpickled."""

import json
import pickle

import pytest
import torch

from uharmony.federation.site_state import load_local_state, save_local_state
from uharmony.files import sha256_file
from uharmony.records.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def test_roundtrip_and_latest(tmp_path):
    spec = {"arch": "dynunet", "filters": [8, 16, 32]}
    for r in (1, 2):
        save_checkpoint(
            tmp_path, r, spec, {"w": torch.full((2, 3), float(r)), "n": torch.tensor(3)}, {"strategy": "fedbn"}
        )
    blob = load_checkpoint(tmp_path, spec=spec)
    assert blob["round"] == 2 and blob["extra"] == {"strategy": "fedbn"} and blob["spec"] == spec
    torch.testing.assert_close(blob["state"]["w"], torch.full((2, 3), 2.0))
    assert blob["state"]["n"].shape == ()
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupted_checkpoint_is_refused(tmp_path):
    path = save_checkpoint(tmp_path, 1, {}, {"w": torch.zeros(100)})
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256 .* does not match"):
        load_checkpoint(tmp_path)


def test_mismatched_spec_and_missing_manifest(tmp_path):
    save_checkpoint(tmp_path, 1, {"arch": "dynunet"}, {"w": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="model spec differs"):
        load_checkpoint(tmp_path, spec={"arch": "swinunetr"})
    with pytest.raises(CheckpointError, match="nothing to resume"):
        load_checkpoint(tmp_path / "empty")


class _RunsCode:
    def __reduce__(self):  # unpickling this calls print(...): any callable could run instead
        return (print, ("code ran",))


def test_a_crafted_file_with_a_matching_manifest_runs_no_code(tmp_path, capsys):
    path = tmp_path / "final_model.pt"
    torch.save({"round": 1, "spec": "{}", "state": {"w": torch.zeros(1)}, "extra": "{}", "payload": _RunsCode()}, path)
    (tmp_path / "manifest.json").write_text(json.dumps({"files": {path.name: sha256_file(path)}}))
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        load_checkpoint(tmp_path, path.name)
    assert "code ran" not in capsys.readouterr().out


def test_site_state_roundtrip_digest_and_crafted_file(tmp_path, capsys):
    save_local_state(tmp_path, {"a.site_mean": torch.ones(4)}, {"round": 3, "site": "2"})
    state, info = load_local_state(tmp_path)
    assert info == {"round": 3, "site": "2"} and torch.equal(state["a.site_mean"], torch.ones(4))
    (tmp_path / "local_state.pt").write_bytes(pickle.dumps(_RunsCode()))
    with pytest.raises(ValueError, match="SHA-256 differs"):
        load_local_state(tmp_path)
    (tmp_path / "local_state.json").unlink()  # no digest to compare: still never unpickled
    with pytest.raises(ValueError, match="unreadable site state"):
        load_local_state(tmp_path)
    assert "code ran" not in capsys.readouterr().out


def test_release_records_bind_file_run_round_kind_and_expiry(tmp_path):
    """F19: the manifest (what the coordinator signs) carries a release record per file; a checkpoint is not a
    release unless asked for, an expired one or one for other bytes is refused, a revocation list is checked."""
    import datetime as dt

    from uharmony.records.release import ReleaseError, Revocations, check_release, load_revocations

    extra = {"run-id": "r9"}
    save_checkpoint(tmp_path / "checkpoints", 3, {}, {"w": torch.zeros(1)}, extra)
    save_checkpoint(tmp_path, 3, {}, {"w": torch.zeros(1)}, extra, name="final_model.pt", valid_days=10)
    ckpt = load_checkpoint(tmp_path / "checkpoints")
    final = load_checkpoint(tmp_path, "final_model.pt")
    assert ckpt["release"]["kind"] == "checkpoint" and final["release"]["kind"] == "final"
    assert final["release"]["run-id"] == "r9" and final["release"]["round"] == 3
    check_release(final["release"], "final_model.pt", final["sha256"])
    with pytest.raises(ReleaseError, match="not its released final model"):
        check_release(ckpt["release"], "round-003.pt", ckpt["sha256"])
    check_release(ckpt["release"], "round-003.pt", ckpt["sha256"], allow_checkpoint=True)
    with pytest.raises(ReleaseError, match="not this file"):
        check_release(final["release"], "final_model.pt", "0" * 64)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=11)
    with pytest.raises(ReleaseError, match="expired"):
        check_release(final["release"], "final_model.pt", final["sha256"], now=later)
    with pytest.raises(ReleaseError, match="run r9 is revoked"):
        check_release(final["release"], "final_model.pt", final["sha256"], revoked=Revocations(runs={"r9"}))
    (tmp_path / "revoked.txt").write_text("run r9\nnot-a-digest\n")
    with pytest.raises(ReleaseError, match="line 2"):
        load_revocations(tmp_path / "revoked.txt")
    with pytest.raises(ReleaseError, match="no release record"):
        check_release(None, "final_model.pt", final["sha256"])
    # a phase-P artifact is its own kind: what uharmony-denoise accepts, and not a final model
    save_checkpoint(tmp_path / "p", 5, {}, {"w": torch.zeros(1)}, extra, name="umsrep.pt")
    art = load_checkpoint(tmp_path / "p", "umsrep.pt")
    assert art["release"]["kind"] == "umsrep"
    check_release(art["release"], "umsrep.pt", art["sha256"], accept=("umsrep",))
    with pytest.raises(ReleaseError, match="is a umsrep of run r9 .* not its released final model"):
        check_release(art["release"], "umsrep.pt", art["sha256"])


def test_inference_settings_a_model_file_carries_are_checked(tmp_path):
    """F9: the settings inside the file are the ones used, and ones this version cannot honour are refused."""
    from uharmony.records.checkpoint import inference_settings, settings_of

    spec = {"modalities": ["t1", "flair"], "regions": ["ET", "TC", "WT"]}
    good = inference_settings(spec, 4.0, 24)
    assert settings_of({"extra": {"inference": good}, "spec": spec}, "m")["spacing-mm"] == 4.0
    assert settings_of({"extra": {}, "spec": spec}, "m") is None  # an older file: the caller decides
    for bad, words in (
        ({**good, "spacing-mm": 0.05}, "spacing"),
        ({**good, "patch-size": 20}, "patch size"),
        ({**good, "preprocessing": "uharmony-9"}, "preprocessing"),
        ({**good, "regions": ["WT"]}, "regions"),
        ({**good, "spacing-mm": "x"}, "malformed"),
    ):
        with pytest.raises(CheckpointError, match=words):
            settings_of({"extra": {"inference": bad}, "spec": spec}, "m")
