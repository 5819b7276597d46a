"""Run folder outputs: ``metrics.jsonl`` (per round, per site, per region) and a Dice-per-round PNG."""

from __future__ import annotations

import time
from pathlib import Path

from .files import append_jsonl, read_jsonl

MODES = ("oracle", "gated")


def regions_in(metrics: dict) -> list[str]:
    """Region names (lower case) found in metric keys ``dice-<region>-<mode>``, in order of appearance."""
    found = []
    for key in metrics:
        parts = key.split("-")
        if len(parts) == 3 and parts[0] == "dice" and parts[2] in MODES and parts[1] not in found:
            found.append(parts[1])
    return found


class RunLog:
    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"

    def write(self, record: dict) -> None:
        append_jsonl(self.path, {"time": round(time.time(), 3), **record})

    def evaluation(self, server_round: int, strategy: str, per_site: dict[str, dict], **tags) -> dict:
        """One line per (site, mode, region); returns the mean Dice per mode over sites' annotated regions,
        and under ``"sites"`` each site's mean per mode.

        ``tags`` (e.g. ``phase="after-extension"``) are written into every line.
        """
        summary: dict[str, list[float]] = {}
        sites: dict[str, dict[str, float]] = {}
        gate_right, gate_scans = 0.0, 0
        for site, m in sorted(per_site.items(), key=lambda kv: (len(kv[0]), kv[0])):
            if "gate-accuracy" in m:  # the scan gate's choice on this site's validation scans
                n = int(m.get("num-examples") or 0)
                self.write(
                    {
                        "round": server_round,
                        "strategy": strategy,
                        "site": site,
                        "event": "gate",
                        "gate-accuracy": m["gate-accuracy"],
                        "gate-weight": m.get("gate-weight"),
                        "val_cases": n,
                        **tags,
                    }
                )
                gate_right, gate_scans = gate_right + m["gate-accuracy"] * n, gate_scans + n
            for mode in MODES:
                values = []
                for region in regions_in(m):
                    dice = m.get(f"dice-{region}-{mode}")
                    if dice is None or dice < 0 or dice != dice:  # -1 / NaN: not annotated here
                        continue
                    hd = m.get(f"hd95-{region}-{mode}")
                    hd = hd if hd is not None and hd == hd and hd >= 0 else None
                    self.write(
                        {
                            "round": server_round,
                            "strategy": strategy,
                            "site": site,
                            "mode": mode,
                            "region": region.upper(),
                            "dice": dice,
                            "hd95": hd,
                            "val_cases": m.get("num-examples"),
                            **tags,
                        }
                    )
                    values.append(dice)
                if values:
                    summary.setdefault(mode, []).extend(values)
                    sites.setdefault(site, {})[mode] = sum(values) / len(values)
        out: dict = {mode: sum(v) / len(v) for mode, v in summary.items()}
        if sites:
            out["sites"] = sites
        if gate_scans:
            out["gate-accuracy"] = gate_right / gate_scans  # over all validation scans of all sites
        return out

    def records(self) -> list[dict]:
        return read_jsonl(self.path)

    def done(self, since: float = 0.0) -> dict | None:
        """The last completion record written at or after ``since`` (a Unix time), else None."""
        done = [r for r in self.records() if r.get("event") == "done" and r.get("time", 0) >= since]
        return done[-1] if done else None

    def plot(self, png: str | Path | None = None) -> Path | None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [r for r in self.records() if "dice" in r and "phase" not in r]
        if not rows:
            return None
        series: dict[tuple[str, str], dict[int, list[float]]] = {}
        for r in rows:
            series.setdefault((r["site"], r["mode"]), {}).setdefault(r["round"], []).append(r["dice"])
        fig, ax = plt.subplots(figsize=(7, 4))
        for (site, mode), by_round in sorted(series.items()):
            rounds = sorted(by_round)
            ax.plot(
                rounds,
                [sum(by_round[x]) / len(by_round[x]) for x in rounds],
                marker="o",
                linestyle="-" if mode == "gated" else "--",
                label=f"site {site} ({mode})",
            )
        ax.set_xlabel("round")
        ax.set_ylabel("mean Dice over annotated regions")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        png = Path(png or self.dir / "dice_per_round.png")
        fig.savefig(png, dpi=100)
        plt.close(fig)
        return png
