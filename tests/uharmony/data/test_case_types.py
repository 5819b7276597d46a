"""A case's tumour type (UMS-Rep's second task): a hospital's types.csv and a manifest's "type"."""

import json

import pytest

from tests.conftest import make_brats2021
from uharmony.data import DataError, load_federation, load_site_folder
from uharmony.data.case_types import MAX_TABLE_BYTES, read_types_table

CASES = [f"BraTS2021_0000{i}" for i in range(4)]


@pytest.fixture
def folder(tmp_path):
    return make_brats2021(tmp_path / "data", {"1": CASES})


def test_a_hospitals_table_types_its_cases_and_counts_rows_for_cases_it_does_not_have(folder):
    (folder / "types.csv").write_text(
        f"case,type\n{CASES[0]},glioma\n{CASES[1]}, metastasis\n\nBraTS2021_09999,meningioma\n"
        f"{CASES[3]},low-grade-glioma\n"
    )
    site = load_site_folder(folder, "a")
    types = {c.case_id: c.tumour_type for c in site.cases}
    assert types == {CASES[0]: "glioma", CASES[1]: "metastasis", CASES[2]: None, CASES[3]: "low-grade-glioma"}
    # the unknown row is counted at the site, never listed among its skipped cases (which leave with every reply)
    assert site.unmatched_types == 1 and site.skipped == []
    (folder / "types.csv").unlink()
    plain = load_site_folder(folder, "a")  # the table decides nothing about the split
    assert [c.case_id for c in site.train] == [c.case_id for c in plain.train] and plain.unmatched_types == 0


def test_without_a_table_no_case_has_a_type(folder):
    assert all(c.tumour_type is None for c in load_site_folder(folder, "a").cases)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("case;type\nA;glioma\n", "line 1: the header must be 'case,type'"),
        ("case,type\nA,Glioma\n", "line 2: a tumour type is lower-case"),
        ("case,type\nA,glioma\nB,glioma,extra\n", "line 3: expected 'case,type'"),
        ("case,type\nA,glioma\nA,metastasis\n", "line 3: case 'A' is listed twice"),
        ("case,type\nA,../../etc\n", "line 2: a tumour type"),
        ("case,type\n,glioma\n", "line 2: expected 'case,type'"),
    ],
)
def test_a_malformed_table_is_an_error_naming_the_file_and_line(folder, text, expected):
    (folder / "types.csv").write_text(text)
    with pytest.raises(DataError) as err:
        load_site_folder(folder, "a")
    assert str(folder / "types.csv") in str(err.value) and expected in str(err.value)


def test_old_mac_line_ends_parse_and_csv_errors_name_the_physical_line(tmp_path):
    mac = tmp_path / "mac.csv"
    mac.write_bytes(b"case,type\rA,glioma\rB,metastasis\r")
    assert read_types_table(mac) == {"A": "glioma", "B": "metastasis"}
    quoted = tmp_path / "quoted.csv"
    quoted.write_text('case,type\n"A\nB",glioma\nC,Bad\n')  # a line break inside a quoted case id
    with pytest.raises(DataError, match="line 4: a tumour type"):
        read_types_table(quoted)
    huge = tmp_path / "huge.csv"
    huge.write_text("case,type\n" + "x" * 200_000 + ",glioma\n")  # a field over csv's limit, under 1 MiB
    with pytest.raises(DataError, match="line .*not a CSV table"):
        read_types_table(huge)


def test_an_oversized_or_binary_table_is_refused_before_it_is_read(tmp_path):
    big = tmp_path / "types.csv"
    with big.open("wb") as fh:
        fh.truncate(MAX_TABLE_BYTES + 1)  # sparse: nothing to read, only its size
    with pytest.raises(DataError, match="at most 1048576 bytes .*1048577 bytes, more than"):
        read_types_table(big)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"case,type\n\xff\xfe,glioma\n")
    with pytest.raises(DataError, match="not UTF-8"):
        read_types_table(binary)


def _manifest(tmp_path, case_type):
    entry = {"id": "c1", "images": {"t1": "c1/c1_t1.nii.gz"}, "label": "c1/c1_seg.nii.gz"}
    if case_type is not None:
        entry["type"] = case_type
    site = {"name": "1", "domain": 0, "labels": "full", "modalities": ["t1"], "cases": [entry]}
    (tmp_path / "federation.json").write_text(json.dumps({"format": "uharmony-federation/1", "sites": [site]}))
    return tmp_path


@pytest.mark.parametrize("case_type", ["meningioma", None])
def test_a_manifest_case_carries_its_type(tmp_path, case_type):
    fed = load_federation(_manifest(tmp_path, case_type))
    assert fed.sites[0].cases[0].tumour_type == case_type


@pytest.mark.parametrize("bad", ["", "Glioma", 3, "a" * 65, "glioma--x"])
def test_a_bad_type_in_a_manifest_names_its_key(tmp_path, bad):
    with pytest.raises(DataError, match=r"sites\[0\]\.cases\[0\]\.type: a tumour type"):
        load_federation(_manifest(tmp_path, bad))
