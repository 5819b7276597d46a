"""Page helpers shared by the studies' Markdown pages."""

from __future__ import annotations

import statistics
from pathlib import Path


def ms(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    vals = [v for v in values if v is not None and v == v]
    if not vals:
        return "–"
    m = statistics.fmean(vals) * scale
    if len(vals) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {statistics.stdev(vals) * scale:.{digits}f}"


def publish(text: str, path: Path | None) -> int:
    """A probe's page: printed, and written to ``path`` when one is given; 0 (the CLI's exit status)."""
    print(text)
    if path:
        Path(path).write_text(text)
    return 0
