"""``uharmony-data partition`` as a user types it: FeTS 2022 subject names, a CSV in the current folder, relative
folders, and a summary that names every skipped subject."""

import json

import pytest

from simulation.partition import partition
from simulation.synth.cli import main as data_cli
from tests.conftest import make_brats2021
from uharmony.data import DataError, load_federation

FETS = {"1": ["FeTS2022_00000", "FeTS2022_00001"], "2": ["FeTS2022_00002"]}


def test_fets2022_tree_with_a_csv_in_the_current_folder(tmp_path, monkeypatch, capsys):
    make_brats2021(tmp_path / "MICCAI_FeTS2022_TrainingData", FETS)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    rows = [f"{p},{s}" for p, subjects in FETS.items() for s in subjects] + ["2,FeTS2022_00009"]
    (work / "my_partitioning.csv").write_text("Partition_ID,Subject_ID\n" + "\n".join(rows) + "\n")
    argv = ["--root", "../MICCAI_FeTS2022_TrainingData", "--csv", "my_partitioning.csv", "--out", "fed/fets"]
    assert data_cli(["partition", "fets2022", *argv]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == str(work / "fed" / "fets")  # stdout: the folder alone, as before
    assert "2 sites, 3 cases" in out.err and str(work / "my_partitioning.csv") in out.err
    assert "skipped 1 subject" in out.err and "FeTS2022_00009 (site 2)" in out.err
    fed = load_federation("fed/fets")
    assert [(s.name, len(s.cases)) for s in fed.sites] == [("1", 2), ("2", 1)]
    assert fed.kind == "fets2022" and fed.sites[0].label_map == "brats2021"
    assert json.loads((work / "fed/fets/federation.json").read_text())["source"]["partition"].endswith(
        "my_partitioning.csv"
    )
    # the brats2021 kind reads the same layout; a bare CSV name not in the current folder is found under --root
    (tmp_path / "MICCAI_FeTS2022_TrainingData" / "partitioning_2.csv").write_text(
        "Partition_ID,Subject_ID\n5,FeTS2022_00001\n"
    )
    assert data_cli(["partition", "brats2021", *argv[:2], "--csv", "partitioning_2.csv", "--out", "fed/p2"]) == 0
    assert [s.name for s in load_federation("fed/p2").sites] == ["5"]


def test_a_csv_that_names_none_of_the_trees_subjects_says_so(tmp_path):
    data = make_brats2021(tmp_path / "data", {"1": ["BraTS2021_00000"]})
    (tmp_path / "fets.csv").write_text("Partition_ID,Subject_ID\n1,FeTS2022_00000\n1,FeTS2022_00001\n")
    with pytest.raises(DataError, match=r"none of the 2 subjects it names .*'FeTS2022_00000'.*BraTS2021_00000"):
        partition("brats2021", data, tmp_path / "fed", tmp_path / "fets.csv")
    with pytest.raises(DataError, match="looked for"):
        partition("brats2021", data, tmp_path / "fed", "absent.csv")
