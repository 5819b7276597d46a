import numpy as np
import pytest

from server.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def test_roundtrip_and_latest(tmp_path):
    spec = {"arch": "dynunet"}
    for r in (1, 2):
        save_checkpoint(tmp_path, r, spec, {"w": np.full((2, 3), float(r), np.float32), "n": np.array(3)})
    blob = load_checkpoint(tmp_path, spec=spec)
    assert blob["round"] == 2
    np.testing.assert_array_equal(blob["state"]["w"], np.full((2, 3), 2.0, np.float32))
    assert blob["state"]["n"].shape == ()
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupted_checkpoint_is_refused(tmp_path):
    path = save_checkpoint(tmp_path, 1, {}, {"w": np.zeros(100, np.float32)})
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256 .* does not match"):
        load_checkpoint(tmp_path)


def test_mismatched_spec_and_missing_manifest(tmp_path):
    save_checkpoint(tmp_path, 1, {"arch": "dynunet"}, {"w": np.zeros(1, np.float32)})
    with pytest.raises(CheckpointError, match="model spec differs"):
        load_checkpoint(tmp_path, spec={"arch": "swinunetr"})
    with pytest.raises(CheckpointError, match="nothing to resume"):
        load_checkpoint(tmp_path / "empty")
