"""Checkpoints and site state: round trip, digests, and files that would run code when unpickled."""

import json
import pickle

import pytest
import torch

from uharmony.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from uharmony.files import sha256_file
from uharmony.site_state import load_local_state, save_local_state


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
