import pytest

from client.data import resolve_site
from uharmony.config import RunConfig


def test_missing_data_path_and_partition_is_a_clear_error():
    with pytest.raises(ValueError, match="'data-path' and 'site-id'.*'partition-id'"):
        resolve_site({}, RunConfig())


def test_data_path_without_site_id(tmp_path):
    with pytest.raises(ValueError, match="'site-id' is required"):
        resolve_site({"data-path": str(tmp_path)}, RunConfig())


def test_missing_data_folder_names_it(tmp_path):
    with pytest.raises(ValueError, match=str(tmp_path / "nope")):
        resolve_site({"data-path": str(tmp_path / "nope"), "site-id": "A"}, RunConfig())


def test_unknown_site_in_simulation(tiny_federation):
    cfg = RunConfig.from_flwr({"data-root": str(tiny_federation)})
    with pytest.raises(ValueError, match="partition-id 7 but the federation .* has 4 sites"):
        resolve_site({"partition-id": 7}, cfg)
    site, state_dir = resolve_site({"partition-id": 1}, cfg)
    assert site.name == "2" and state_dir.name == "site-2"


def test_bad_domain_id(tmp_path):
    with pytest.raises(ValueError, match="'domain-id' must be an integer"):
        resolve_site({"data-path": str(tmp_path), "site-id": "A", "domain-id": "x"}, RunConfig())
