"""Each study's page in docs/ is what its records say: re-rendered from the records kept beside it, in seconds."""

import json
import shutil
from pathlib import Path

from simulation.kit.pages import PAGES, differing, normalized, render

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_page_equals_what_its_records_say(tmp_path):
    rendered = render(DOCS, tmp_path / "docs")
    assert set(rendered) == set(PAGES) - ({"join"} if not (DOCS / "join" / "meta.json").exists() else set())
    assert differing(DOCS, rendered) == []  # else: python -m simulation.kit.pages (and commit the pages)


def test_a_changed_record_changes_its_page(tmp_path):
    """The comparison can fail: one job's Dice moved in a copy of the records shows on the rendered page."""
    docs = tmp_path / "docs"
    for sub in ("results", "umsrep", "evidence"):
        shutil.copytree(DOCS / sub, docs / sub)
    for page in PAGES.values():
        shutil.copyfile(DOCS / page, docs / page)
    path = docs / "evidence" / "results.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    job = next(r for r in recs if r.get("stage") == "confirm" and r.get("method") == "fedavg")
    for case in job["cases"]:
        for key, value in case.items():
            if key.startswith("dice-") and isinstance(value, float):
                case[key] = max(0.0, value - 0.3)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert differing(docs, render(docs, tmp_path / "out")) == ["results.md"]


def test_the_date_line_is_not_compared():
    assert normalized("- Date of this page: 2026-12-07; raw") == normalized("- Date of this page: 2027-01-01; raw")
