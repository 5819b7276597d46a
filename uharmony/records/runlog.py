"""Run folder outputs: ``metrics.jsonl`` (per round, per site, per region), ``metrics.csv`` and
``dice_per_round.png`` (training loss and each site's Dice per round, drawn by ``uharmony.records.plots``)."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

from uharmony.files import append_jsonl, atomic_write, read_jsonl

MODES = ("oracle", "gated")


# UMS-Rep's presence head: reply metric -> record key
PRESENCE_KEYS = (("presence", "presence-accuracy"), ("presence-auroc", "presence-auroc"))


def regions_in(metrics: dict) -> list[str]:
    """Region names (lower case) found in metric keys ``dice-<region>-<mode>``, in order of appearance."""
    found = []
    for key in metrics:
        parts = key.split("-")
        if len(parts) == 3 and parts[0] == "dice" and parts[2] in MODES and parts[1] not in found:
            found.append(parts[1])
    return found


class RunLog:
    """``metrics.jsonl`` of a run folder. Every record carries the run's id (``run-id``); a folder may hold
    several runs' records, and readers take one run's (by default the newest run's)."""

    def __init__(self, run_dir: str | Path, run_id: str | None = None) -> None:
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        self.run_id = run_id

    def write(self, record: dict) -> None:
        tag = {"run-id": self.run_id} if self.run_id else {}
        append_jsonl(self.path, {"time": round(time.time(), 3), **tag, **record})

    def count(self) -> int:
        """How many records this run has written (a checkpoint keeps it: see :meth:`supersede`)."""
        return sum(1 for r in read_jsonl(self.path) if r.get("run-id") == self.run_id)

    def supersede(self, keep: int) -> int:
        """On resume: this run's records after its first ``keep`` (what the checkpoint had seen) were written
        by the interrupted attempt, which the resumed one redoes; they move to ``metrics.interrupted.jsonl``
        so that nothing is recorded twice. Returns how many moved."""
        records, seen, kept, moved = read_jsonl(self.path), 0, [], []
        for r in records:
            if r.get("run-id") == self.run_id:
                seen += 1
                if seen > keep:
                    moved.append(r)
                    continue
            kept.append(r)
        if moved:
            for r in moved:
                append_jsonl(self.dir / "metrics.interrupted.jsonl", r)
            atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        return len(moved)

    def evaluation(self, server_round: int, strategy: str, per_site: dict[str, dict], **tags) -> dict:
        """One line per (site, mode, region); returns the mean Dice per mode over sites' annotated regions,
        and under ``"sites"`` each site's mean per mode.

        ``tags`` (e.g. ``phase="after-extension"``) are written into every line.
        """
        summary: dict[str, list[float]] = {}
        sites: dict[str, dict[str, float]] = {}
        gate_right, gate_scans = 0.0, 0
        type_right, type_scans = 0.0, 0
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
                        "gate-unseen": m.get("gate-unseen"),
                        "val_cases": n,
                        **tags,
                    }
                )
                gate_right, gate_scans = gate_right + m["gate-accuracy"] * n, gate_scans + n
            if m.get("type-cases"):  # UMS-Rep's second task: the type head on this site's typed scans
                n = int(m["type-cases"])
                accuracy = m.get("type-accuracy-gated")
                self.write({"round": server_round, "strategy": strategy, "site": site, "event": "type",
                            "type-accuracy": accuracy, "type_cases": n, **tags})  # fmt: skip
                if accuracy is not None:
                    type_right, type_scans = type_right + accuracy * n, type_scans + n
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
                            **{
                                name: m[f"{key}-{region}-{mode}"]
                                for key, name in PRESENCE_KEYS
                                if m.get(f"{key}-{region}-{mode}", -1) >= 0
                            },
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
        if type_scans:
            out["type-accuracy"] = type_right / type_scans  # over every site's typed validation scans
        return out

    def records(self, run_id: str | None = None) -> list[dict]:
        """The records of run ``run_id`` (default: the newest run in the folder; a folder written before
        records carried a run id: all of them)."""
        records = read_jsonl(self.path)
        run_id = run_id or self.run_id or next((r["run-id"] for r in reversed(records) if "run-id" in r), None)
        return records if run_id is None else [r for r in records if r.get("run-id") == run_id]

    def done(self, run_id: str | None = None) -> dict | None:
        """The completion record of run ``run_id`` (default: the newest run), else None."""
        done = [r for r in self.records(run_id) if r.get("event") == "done"]
        return done[-1] if done else None

    def write_csv(self, name: str = "metrics.csv") -> Path:
        """This run's evaluations as a table a spreadsheet opens: one row per round, phase, site, mode and
        region (rewritten whole after every evaluation, so a redone round appears once)."""
        fields = ("round", "phase", "site", "mode", "region", "dice", "hd95", "val_cases")
        rows = [r for r in self.records() if "dice" in r]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows({**r, "phase": r.get("phase", "")} for r in rows)
        return atomic_write(self.dir / name, buf.getvalue())

    def plot(self, png: str | Path | None = None) -> Path | None:
        """``dice_per_round.png`` (or ``png``) of this run: training loss and each site's Dice per round
        (``uharmony.records.plots.plot_run``); None when the run has recorded nothing to draw."""
        from uharmony.records.plots import plot_run

        return plot_run(self.records(), png or self.dir / "dice_per_round.png")


def no_training_reasons(records: list[dict]) -> str:
    """Why no round trained a site, from the train records: why each round kept the model (``kept``: too few
    usable replies, a privacy stop, no site online) and the replies' rejections (site names from the join
    records)."""
    names = {r["node"]: r.get("site") for r in records if r.get("event") == "join" and "node" in r}
    reasons: dict[str, str] = {}
    kept: list[str] = []
    trains = [r for r in records if r.get("event") == "train"]
    for r in trains:
        if r.get("kept") and r["kept"] not in kept:
            kept.append(str(r["kept"]))
        for rej in r.get("rejected") or []:
            site = names.get(rej.get("node")) or f"node {rej.get('node')}"
            reasons.setdefault(f"site {site}", str(rej.get("reason", "")))
    why = "; ".join([*kept, *(f"{k}: {v}" for k, v in sorted(reasons.items()))]) or "no site replied"
    return f"no site trained in any of its {len(trains)} rounds ({why})"
