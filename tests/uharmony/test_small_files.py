"""Small files from elsewhere (a bundle's manifest, signature and configs, a site's site.json) are size-checked
before a byte is read, and a FIFO in their place is refused without blocking."""

import os

import pytest

from tests.conftest import make_brats2021
from uharmony.data import DataError, load_site_folder
from uharmony.files import SMALL_FILE, read_small
from uharmony.records.bundle_trust import BundleError, check_bundle
from uharmony.records.signing import SIGNATURE, SIGNATURE_BYTES, SignatureError, verify_manifest


def _sparse(path, size):
    with open(path, "wb") as fh:
        fh.truncate(size)  # nothing to read: only its size
    return path


def test_read_small_reads_small_files_and_refuses_large_ones_and_fifos(tmp_path):
    (tmp_path / "ok.json").write_text('{"a": 1}')
    assert read_small(tmp_path / "ok.json") == b'{"a": 1}'
    with pytest.raises(ValueError, match="more than the 1048576"):
        read_small(_sparse(tmp_path / "big.json", SMALL_FILE + 1))
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(ValueError, match="not a plain file"):
        read_small(tmp_path / "fifo.json")  # returns at once: no writer is waited for
    with pytest.raises(FileNotFoundError):
        read_small(tmp_path / "missing.json")


def test_an_oversized_signature_or_manifest_is_refused_as_such(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    _sparse(tmp_path / SIGNATURE, SIGNATURE_BYTES + 1)
    with pytest.raises(SignatureError, match="not a signature file .*more than"):
        verify_manifest(tmp_path, [])
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    _sparse(bundle / "manifest.json", SMALL_FILE + 1)
    with pytest.raises(BundleError, match="manifest.json: not readable JSON .*more than"):
        check_bundle(bundle)


def test_a_site_json_that_is_a_fifo_or_too_large_names_the_file(tmp_path):
    folder = make_brats2021(tmp_path / "data", {"1": ["BraTS2021_00000", "BraTS2021_00001"]})
    os.mkfifo(folder / "site.json")
    with pytest.raises(DataError, match=r"site\.json: invalid \(.*not a plain file"):
        load_site_folder(folder, "a")
    os.unlink(folder / "site.json")
    _sparse(folder / "site.json", (64 << 10) + 1)
    with pytest.raises(DataError, match=r"site\.json: invalid \(.*more than"):
        load_site_folder(folder, "a")
