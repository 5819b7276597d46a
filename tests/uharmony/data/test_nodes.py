"""Which data a node holds: a hospital's folder, a simulated site of a manifest, or a manifest's pooled data."""

import json

import pytest

from tests.conftest import make_brats2021
from uharmony.data import DataError, load_federation, load_site_folder, resolve_site, write_manifest
from uharmony.federation.config import RunConfig


def test_missing_data_path_and_partition_is_a_clear_error():
    with pytest.raises(ValueError, match="'data-path' and 'site-id'.*'partition-id'"):
        resolve_site({}, RunConfig())


def test_data_path_without_site_id(tmp_path):
    with pytest.raises(ValueError, match="'site-id' is required"):
        resolve_site({"data-path": str(tmp_path)}, RunConfig())


def test_missing_data_folder_names_it(tmp_path):
    with pytest.raises(ValueError, match=str(tmp_path / "nope")):
        resolve_site({"data-path": str(tmp_path / "nope"), "site-id": "A"}, RunConfig())


@pytest.mark.parametrize("domain", ["x", -1])
def test_bad_domain_id(tmp_path, domain):
    with pytest.raises(ValueError, match="'domain-id' must be"):
        resolve_site({"data-path": str(tmp_path), "site-id": "A", "domain-id": domain}, RunConfig())


def test_simulated_sites_and_the_pooled_site(tiny_federation):
    cfg = RunConfig.from_flwr({"data-root": str(tiny_federation), "run-dir": "/tmp/r"})
    with pytest.raises(ValueError, match="partition-id 7 but the federation .* has 4 sites"):
        resolve_site({"partition-id": 7}, cfg)
    site, state_dir, cache = resolve_site({"partition-id": 1}, cfg)
    assert site.name == "2" and state_dir.name == "site-2" and cache.name == "preprocessed"
    pooled = resolve_site({"partition-id": 1}, cfg, pooled=True)[0]
    assert pooled.name == "pooled" and len(pooled.train) == sum(
        len(s.train) for s in load_federation(tiny_federation).sites
    )
    assert {c.domain for c in pooled.train} == {0, 1, 2, 3} and set(pooled.region_names) == {"ET", "TC", "WT"}
    with pytest.raises(ValueError, match="cannot train on pooled data"):
        resolve_site({"data-path": str(tiny_federation), "site-id": "A"}, cfg, pooled=True)


def test_the_embedded_federation_must_be_generated_first():
    with pytest.raises(DataError, match="uharmony-data embedded"):
        resolve_site({"partition-id": 0}, RunConfig.from_flwr({"seed": 12345}))


def test_site_folder_for_deployment(tmp_path):
    make_brats2021(tmp_path, {"1": ["CASE_A", "CASE_B", "CASE_C"]})
    (tmp_path / "site.json").write_text(json.dumps({"modalities": ["t1ce", "t2", "flair"], "labels": "full"}))
    site = load_site_folder(tmp_path, "hospital-a", domain=2)
    assert site.name == "hospital-a" and site.domain == 2 and len(site.cases) == 3
    assert site.modalities == ("t1ce", "t2", "flair") and {c.domain for c in site.cases} == {2}
    with pytest.raises(ValueError, match="site-id"):
        load_site_folder(tmp_path, "")
    (tmp_path / "site.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="site.json: expected a JSON object"):
        load_site_folder(tmp_path, "hospital-a")


@pytest.mark.parametrize(
    "change, key",
    [
        (lambda d: d.update(format="v0"), "format"),
        (lambda d: d.update(sites=[]), "sites"),
        (lambda d: d["sites"][0].update(domain=-1), r"sites\[0\].domain"),
        (lambda d: d["sites"][0].update(name=""), r"sites\[0\].name"),
        (lambda d: d["sites"][1].update(name="1"), "distinct"),
        (lambda d: d["sites"][0].update(labels="brats1999"), "brats1999"),
        (lambda d: d["sites"][0]["cases"][0].update(images={"swi": "x.nii.gz"}), r"sites\[0\].cases\[0\].images"),
        (lambda d: d["sites"][0]["cases"][0].pop("id"), r"sites\[0\].cases\[0\]"),
        (lambda d: d["sites"][0]["cases"][0].update(split="test"), r"sites\[0\].cases\[0\].split"),
        (lambda d: d["sites"][0]["cases"][0].update(split=["val"]), r"sites\[0\].cases\[0\].split"),
    ],
)
def test_a_malformed_manifest_names_the_key(tiny_federation, tmp_path, change, key):
    doc = json.loads((tiny_federation / "federation.json").read_text())
    change(doc)
    (tmp_path / "federation.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=key) as info:
        load_federation(tmp_path)
    assert "federation.json" in str(info.value)
    if key != "format":
        with pytest.raises(DataError, match=key):
            write_manifest(tmp_path / "w", doc.get("kind", ""), doc["sites"])  # writing checks it too


def test_cases_fixed_to_a_split_leave_the_seeded_split_of_the_others_as_it_was(tiny_federation, tmp_path):
    doc = json.loads((tiny_federation / "federation.json").read_text())
    before = {
        s.name: ([c.case_id for c in s.train], [c.case_id for c in s.val])
        for s in load_federation(tiny_federation).sites
    }
    site = doc["sites"][0]
    extra = [dict(c, id=f"{c['id']}_held", split="val") for c in site["cases"]]
    site["cases"] = site["cases"] + extra + [dict(site["cases"][0], id="forced_train", split="train")]
    write_manifest(tmp_path, doc.get("kind", ""), doc["sites"], root=tiny_federation)
    after = {s.name: s for s in load_federation(tmp_path).sites}
    first = after[site["name"]]
    train, val = before[site["name"]]
    assert [c.case_id for c in first.train] == [*train, "forced_train"]
    assert [c.case_id for c in first.val] == [*val, *sorted(c["id"] for c in extra)]
    for name, (train, val) in before.items():  # the other sites: untouched
        if name != site["name"]:
            assert ([c.case_id for c in after[name].train], [c.case_id for c in after[name].val]) == (train, val)
