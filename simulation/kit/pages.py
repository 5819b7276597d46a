"""Each study's page re-rendered from the records kept beside it in docs/, in seconds (no job runs):

    python -m simulation.kit.pages            # rewrite the pages from their records
    python -m simulation.kit.pages --check    # exit 1 naming each page that differs from what its records say

- the S0/S2 study: docs/results-s2.md from docs/results/ (results.jsonl, meta.json and its PNGs);
- UMS-Rep: docs/umsrep.md from docs/umsrep/ (results.jsonl, meta.json; the PNG is re-plotted);
- the confirmatory comparison: docs/results.md from docs/evidence/results.jsonl (the PNG is re-plotted);
- the join demonstration: docs/join.md from docs/join/ (join.jsonl, meta.json), once a join run has kept its meta.

A page's date line ("Date of this page") is the day it was rendered and is not compared. (The join page's run
metadata is kept beside its records since 2026-12-07: until ``uharmony-join`` runs again, it is not rendered.)
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

from uharmony.files import read_jsonl

PAGES = {"bench": "results-s2.md", "umsrep": "umsrep.md", "evidence": "results.md", "join": "join.md"}
_DATE = re.compile(r"^- Date of this page: \d{4}-\d{2}-\d{2}", re.M)


def render(docs: Path, out: Path) -> dict[str, Path]:
    """Render every page from the records under ``docs`` into ``out`` (``out`` may be ``docs``: in place)."""
    from simulation.bench.results_md import write_results
    from simulation.evidence.design import DEFAULT
    from simulation.evidence.report import write_page
    from simulation.umsrep_bench.report import write_report

    out.mkdir(parents=True, exist_ok=True)
    if out.resolve() != docs.resolve():  # the bench page links its PNGs, which are not re-plotted
        shutil.copytree(docs / "results", out / "results", dirs_exist_ok=True)
    pages = {}
    art = out / "results"
    curves = {s: art / f"dice_per_round_{s}.png" for s in ("S0", "S2") if (art / f"dice_per_round_{s}.png").exists()}
    overlay = art / "overlays.png"
    meta = json.loads((docs / "results" / "meta.json").read_text())
    records = read_jsonl(docs / "results" / "results.jsonl")
    overlay_png = overlay if overlay.exists() else None
    pages["bench"] = write_results(records, meta, out / PAGES["bench"], curves, overlay_png, "results")
    meta = json.loads((docs / "umsrep" / "meta.json").read_text())
    results = read_jsonl(docs / "umsrep" / "results.jsonl")
    pages["umsrep"] = write_report(results, meta, out / PAGES["umsrep"])
    if out.resolve() != docs.resolve():
        shutil.copyfile(docs / "umsrep" / "results.jsonl", out / "umsrep" / "results.jsonl")
    records = read_jsonl(docs / "evidence" / "results.jsonl")
    pages["evidence"] = write_page(records, DEFAULT, out / PAGES["evidence"], out / "evidence")
    join = docs / "join"
    if (join / "meta.json").is_file():
        from simulation.join.report import markdown

        summaries = read_jsonl(join / "join.jsonl")
        meta = json.loads((join / "meta.json").read_text())
        (out / "join").mkdir(exist_ok=True)
        if out.resolve() != docs.resolve():
            shutil.copyfile(join / "join.png", out / "join" / "join.png")
        (out / PAGES["join"]).write_text(markdown(summaries, meta, "join/join.png"))
        pages["join"] = out / PAGES["join"]
    return pages


def normalized(text: str) -> str:
    return _DATE.sub("- Date of this page: (date)", text)


def differing(docs: Path, rendered: dict[str, Path]) -> list[str]:
    """The pages under ``docs`` whose text differs from the rendered ones (the date line aside)."""
    return [
        PAGES[k] for k, p in rendered.items() if normalized((docs / PAGES[k]).read_text()) != normalized(p.read_text())
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulation.kit.pages", description=__doc__.splitlines()[0])
    p.add_argument("--docs", type=Path, default=Path("docs"))
    p.add_argument("--check", action="store_true", help="compare only; exit 1 if a page differs from its records")
    a = p.parse_args(argv)
    if a.check:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            bad = differing(a.docs, render(a.docs, Path(tmp)))
        for page in bad:
            print(f"{a.docs / page}: differs from what its records say (python -m simulation.kit.pages)")
        return 1 if bad else 0
    for page in render(a.docs, a.docs).values():
        print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
