"""What a hospital's site keeps and sends about its cases: private files, no paths, no case ids."""

import os
import stat
from types import SimpleNamespace

import pytest

from tests.conftest import make_brats2021
from uharmony.data import SiteData, load_site_folder
from uharmony.data.redaction import case_token, redact_paths, skipped_report
from uharmony.federation.config import RunConfig
from uharmony.federation.federated import ModelRoles, global_state_of

BAD = "Smith_John_MRN4711"  # a case folder named as PACS exports often name them


@pytest.fixture
def tree(tmp_path):
    make_brats2021(tmp_path / "data", {"1": [f"BraTS2021_0000{i}" for i in range(6)] + [BAD]})
    (tmp_path / "data" / BAD / f"{BAD}_t2.nii.gz").write_bytes(b"not a nifti file" * 20)
    return tmp_path / "data"


@pytest.fixture
def umask_022():
    old = os.umask(0o022)  # the usual default: without care, files come out 0644 and folders 0755
    yield
    os.umask(old)


def test_every_file_the_site_writes_under_its_state_folder_is_private(tree, tmp_path, umask_022):
    """F10: preprocessed scans and labels, cases.jsonl, local_state.pt and optimizer.pt: 0600 files in 0700
    folders, whatever the umask; a folder left readable by an older version is narrowed (the case-id key:
    ``test_skipped_cases_leave_as_a_category_and_a_keyed_hash``)."""
    from uharmony.federation.site_round import SiteRound

    state = tmp_path / "state"
    (state / "preprocessed").mkdir(parents=True)
    os.chmod(state, 0o755)
    (state / "old.json").write_text("{}")  # written by an older version: 0644
    cfg = RunConfig.from_flwr({"spacing": 6.0, "patch-size": 16, "filters": "8,16,32", "batch-size": 1})
    spec = cfg.build_model(1).spec
    job = SiteRound(
        {"data-path": str(tree), "site-id": "h1", "state-dir": str(state)}, cfg, spec, "uharmony", run_id="r"
    )
    model = cfg.build_model(1)
    job.load(global_state_of(model, ModelRoles(model, "uharmony")))
    job.train(1, 0.01, 1, 0.0, seed=0)
    job.evaluate(1)
    names = {p.name for p in state.rglob("*")}
    assert {"local_state.pt", "cases.jsonl", "preprocessed"} <= names
    assert any(p.suffix == ".pt" for p in (state / "preprocessed").iterdir())
    if cfg.keep_optimizer_state:
        assert "optimizer.pt" in names
    loose = [
        f"{p.relative_to(state)} {stat.filemode(p.stat().st_mode)}"
        for p in [state, *state.rglob("*")]
        if stat.S_IMODE(p.stat().st_mode) & 0o077
    ]
    assert not loose, loose
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in [state, *state.rglob("*")] if p.is_dir())


def test_redaction_cuts_paths_with_spaces_colons_and_relative_parts():
    """F16: the red-team's three strings kept a patient's name, an MRN and a trial id."""
    texts = [
        "DataError: /mnt/pacs/Smith John 1970-01-01/MRN 4711/case_t1.nii.gz: empty file",
        "OSError: /srv/hospital:radiology/MRN4711/x.nii.gz: unreadable",
        "ValueError: data/ClinicalTrial-ONC-22/patient_0042/x.nii.gz: bad",
    ]
    out = [redact_paths(t) for t in texts]
    assert out == [
        "DataError: case_t1.nii.gz: empty file",
        "OSError: x.nii.gz: unreadable",
        "ValueError: x.nii.gz: bad",
    ]
    for word in ("Smith", "4711", "ClinicalTrial", "patient_0042", "radiology", "1970"):
        assert not any(word in o for o in out), word
    assert (
        redact_paths("shape (4, 8) of /a/b c/x.nii.gz differs from (3,)")
        == "shape (4, 8) of x.nii.gz differs from (3,)"
    )


def test_skipped_cases_leave_as_a_category_and_a_keyed_hash(tree, tmp_path, tmp_path_factory):
    """F16: what a train reply says about skipped cases names no case, file or reason text: a category and an
    HMAC of the case id under the site's own key (0600, made once)."""
    from client.client_app import _identity

    data = SiteData(load_site_folder(tree, "h1"), spacing=6.0, patch=16, cache_dir=tmp_path_factory.mktemp("c"))
    assert [s["case"] for s in data.skipped] == [BAD]
    state = tmp_path / "state"
    job = SimpleNamespace(site=data.site, data=data, state_dir=state)
    sent = list(_identity(job)["skipped"])
    assert not any(w in s for s in sent for w in ("Smith", "4711", BAD, "nii")), sent
    key = (state / "case-id.key").read_bytes()
    assert sent == [f"bad-header case {case_token(BAD, key)}"]
    assert stat.S_IMODE((state / "case-id.key").stat().st_mode) == 0o600 and len(key) == 32
    assert list(_identity(job)["skipped"]) == sent  # the same key next round: the same token
    assert skipped_report(data.skipped, b"another site's key 0123456789") != sent
