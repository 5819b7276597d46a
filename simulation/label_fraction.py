"""A federation in which only some sites hold labels: the same scans, the others' labels withheld.

``label_free_view(root, out, labelled)`` writes ``out/federation.json`` pointing at ``root``'s files; every
site not in ``labelled`` declares ``"labels": "none"`` and lists no label file, as a hospital without
annotations would. Which sites keep labels is drawn from the seed (``pick_labelled``), so a label fraction
is the same for every method compared at that seed.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from uharmony.data.manifest import MANIFEST, write_manifest


def pick_labelled(names: list[str], fraction: float, seed: int) -> list[str]:
    """``ceil(fraction * sites)`` site names (at least 1), drawn from ``seed``; nested: a larger fraction at
    the same seed keeps the smaller one's sites."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    order = sorted(names)
    random.Random(f"labelled-{seed}").shuffle(order)
    return sorted(order[: max(1, math.ceil(fraction * len(order) - 1e-9))])


def label_free_view(root: str | Path, out: str | Path, labelled: list[str]) -> Path:
    """Write the view; returns its folder."""
    root, out = Path(root), Path(out)
    doc = json.loads((root / MANIFEST).read_text())
    base = Path(doc.get("root", root))
    base = base if base.is_absolute() else (root / base).resolve()
    names = [s["name"] for s in doc["sites"]]
    unknown = sorted(set(labelled) - set(names))
    if unknown:
        raise ValueError(f"label_free_view: no sites {unknown} in {root} (sites: {names})")
    sites = []
    for site in doc["sites"]:
        if site["name"] in labelled:
            sites.append(site)
        else:
            cases = [{k: v for k, v in c.items() if k != "label"} | {"label": None} for c in site["cases"]]
            sites.append({**site, "labels": "none", "cases": cases})
    extra = {k: v for k, v in doc.items() if k not in ("format", "kind", "root", "sites")}
    write_manifest(out, doc.get("kind", ""), sites, root=base, **extra, labelled=sorted(labelled))
    return out
