"""Small files from elsewhere (a bundle's manifest, signature and configs, a released model's manifest, a site's
site.json and types.csv) are size-checked before a byte is read; a folder, FIFO or socket in their place is
refused by name, without blocking."""

import os
import signal
import socket
from contextlib import contextmanager

import pytest

from tests.conftest import make_brats2021
from uharmony.data import DataError, load_site_folder
from uharmony.files import SMALL_FILE, read_small
from uharmony.records.bundle_trust import BundleError, check_bundle
from uharmony.records.checkpoint import CheckpointError, load_checkpoint
from uharmony.records.signing import SIGNATURE, SIGNATURE_BYTES, SignatureError, verify_manifest


@contextmanager
def no_hang(seconds=10):
    """A read that would block on a FIFO fails the test instead of hanging it."""

    def fail(*_):
        raise AssertionError("blocked: a FIFO was opened for a blocking read")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _sparse(path, size):
    with open(path, "wb") as fh:
        fh.truncate(size)  # nothing to read: only its size
    return path


def _unix_socket(path):
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    return s


def test_read_small_checks_the_size_before_reading_and_never_reads_past_its_limit(tmp_path):
    (tmp_path / "ok.json").write_text('{"a": 1}')
    assert read_small(tmp_path / "ok.json") == b'{"a": 1}'
    with pytest.raises(ValueError, match=f"{SMALL_FILE + 1} bytes, more than the {SMALL_FILE}"):  # from its size
        read_small(_sparse(tmp_path / "big.json", SMALL_FILE + 1))
    with pytest.raises(ValueError, match="grew past the 10 bytes"):  # a file whose size says 0 and streams
        read_small("/proc/self/status", 10)
    with pytest.raises(FileNotFoundError):
        read_small(tmp_path / "missing.json")


def test_a_folder_fifo_or_socket_in_a_small_files_place_is_refused_by_name(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    sock = _unix_socket(tmp_path / "sock")
    before = len(os.listdir("/proc/self/fd"))
    with no_hang():
        for name, reason in (("fifo", "not a plain file"), ("folder", "not a plain file"), ("sock", "cannot be")):
            with pytest.raises(ValueError, match=f"{tmp_path / name}: {reason}"):
                read_small(tmp_path / name)
    assert len(os.listdir("/proc/self/fd")) == before  # no descriptor left open
    sock.close()


def test_an_oversized_signature_or_manifest_is_refused_as_such(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    _sparse(tmp_path / SIGNATURE, SIGNATURE_BYTES + 1)
    with pytest.raises(SignatureError, match="not a signature file .*more than"):
        verify_manifest(tmp_path, [])
    os.unlink(tmp_path / SIGNATURE)
    (tmp_path / SIGNATURE).mkdir()
    with pytest.raises(SignatureError, match="not a signature file .*not a plain file"):
        verify_manifest(tmp_path, [])
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    _sparse(bundle / "manifest.json", SMALL_FILE + 1)
    with pytest.raises(BundleError, match="manifest.json: not readable JSON .*more than"):
        check_bundle(bundle)


def test_a_released_models_manifest_that_is_a_fifo_or_folder_is_a_checkpoint_error(tmp_path):
    os.mkfifo(tmp_path / "manifest.json")
    with no_hang(), pytest.raises(CheckpointError, match="not a checkpoint manifest .*not a plain file"):
        load_checkpoint(tmp_path, "final_model.pt")
    os.unlink(tmp_path / "manifest.json")
    (tmp_path / "manifest.json").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint manifest"):
        load_checkpoint(tmp_path, "final_model.pt")


@pytest.mark.parametrize("kind", ["fifo", "folder", "socket", "large"])
@pytest.mark.parametrize("name", ["site.json", "types.csv"])
def test_a_sites_own_files_in_the_wrong_shape_name_the_file(tmp_path, kind, name):
    folder = make_brats2021(tmp_path / "data", {"1": ["BraTS2021_00000", "BraTS2021_00001"]})
    path, keep = folder / name, None
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "socket":
        keep = _unix_socket(path)
    else:
        _sparse(path, (2 << 20) + 1)
    with no_hang(), pytest.raises(DataError) as err:
        load_site_folder(folder, "a")
    assert str(path) in str(err.value)
    if keep:
        keep.close()


def test_a_bundle_whose_manifest_is_a_link_is_refused(tmp_path):
    import json

    from uharmony.records.bundle_trust import FORMAT

    (tmp_path / "real.json").write_text(json.dumps({"format": FORMAT, "files": {}}))
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").symlink_to(tmp_path / "real.json")
    with pytest.raises(BundleError, match="manifest.json: a symbolic link"):
        check_bundle(bundle)
