"""A deployed run's progress for the coordinator: the ServerApp's round log (``metrics.jsonl``) as lines.

``uharmony-coordinator run`` follows the run folder's round log while Flower runs the ServerApp and prints
one line per round (sites that trained, each site's and the aggregated train loss, rejections with their
reason, late sites), one per evaluation (each site's Dice per region), joins and refusals, and the end.
"""

from __future__ import annotations

import json
from pathlib import Path

MODE = "gated"  # the Dice a hospital gets (no site label at inference); a plain head logs the same under both


def _num(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _rejected(items: list[dict]) -> str:
    return "; ".join(f"{r.get('site') or 'node ' + str(r.get('node'))} ({r.get('reason', '?')})" for r in items)


def train_line(r: dict) -> str:
    losses = r.get("site-loss") or {}
    sites = ", ".join(f"{s} loss {_num(losses.get(s))}" if losses else s for s in r.get("sites", []))
    line = f"round {r['round']}: trained {sites or 'no site'}; train loss {_num(r.get('train-loss'))}"
    if r.get("rejected"):
        line += f"; rejected {_rejected(r['rejected'])}"
    if r.get("late"):
        line += f"; late {', '.join(r['late'])}"
    if "privacy" in r:
        line += f"; epsilon {r['privacy'].get('epsilon')}"
    return line + (f" ({r['seconds']:.0f} s)" if isinstance(r.get("seconds"), int | float) else "")


def dice_lines(records: list[dict]) -> list[str]:
    """One line per (round, phase) of evaluation records: each site's Dice per region."""
    groups: dict[tuple, dict[str, list[str]]] = {}
    for r in records:
        if r.get("mode", MODE) != MODE and any(x.get("mode") == MODE for x in records):
            continue
        key = (r.get("round"), r.get("phase", ""))
        groups.setdefault(key, {}).setdefault(r["site"], []).append(f"{r['region']} {_num(r['dice'], 2)}")
    return [
        f"round {rnd}{' (' + phase + ')' if phase else ''} Dice: "
        + "; ".join(f"{site} {' '.join(v)}" for site, v in sites.items())
        for (rnd, phase), sites in groups.items()
    ]


def event_line(r: dict) -> str | None:
    """A round-log record that is not a Dice row, as a line (None: not worth a line)."""
    event, rnd = r.get("event"), r.get("round")
    if event == "train":
        return train_line(r)
    if event in ("gate", None):
        return None
    if event == "done":
        dice = ", ".join(f"{k} {_num(v)}" for k, v in (r.get("final-mean-dice") or {}).items())
        stopped = f"; stopped: {r['stopped']}" if r.get("stopped") else ""
        return f"done after round {r.get('rounds')}: final mean Dice {dice or '-'}{stopped}"
    if event == "failed":
        return f"failed after round {r.get('rounds')}: {r.get('reason')}"
    if event == "join":
        return f"round {rnd}: {r.get('site')} joined (domain {r.get('domain')}; added {r.get('added')})"
    if event.endswith("-rejected") and "rejected" in r:
        return f"round {rnd}: {event.replace('-', ' ')}: {_rejected(r['rejected'])}"
    if "reason" in r:
        return f"round {rnd}: {event} {r.get('site') or 'node ' + str(r.get('node'))}: {r['reason']}"
    rest = {k: v for k, v in r.items() if k not in ("time", "run-id", "round", "event", "strategy")}
    return f"round {rnd}: {event} {json.dumps(rest, separators=(',', ':'))[:300]}"


class RoundLogFollower:
    """The lines of a round log that appeared since the last :meth:`poll` (those written before the follower
    started are not repeated). A Dice row is held until its evaluation's rows are all in (the next record,
    or a poll that found nothing new)."""

    def __init__(self, path: Path, run_id: str | None = None) -> None:
        self.path, self.run_id = Path(path), run_id
        self.seen = len(self._records())
        self.dice: list[dict] = []

    def _records(self) -> list[dict]:
        try:
            lines = self.path.read_text().splitlines()
        except OSError:
            return []
        out = []
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line being written
                break
            if self.run_id is None or rec.get("run-id") == self.run_id:
                out.append(rec)
        return out

    def poll(self) -> list[str]:
        records = self._records()
        self.seen = min(self.seen, len(records))  # a resumed run moved the interrupted attempt's records away
        new, self.seen = records[self.seen :], len(records)
        lines = []
        for r in new:
            if "dice" in r and "site" in r:
                self.dice.append(r)
                continue
            lines += self.flush()
            line = event_line(r)
            if line:
                lines.append(line)
        if not new:
            lines += self.flush()
        return lines

    def flush(self) -> list[str]:
        lines, self.dice = dice_lines(self.dice), []
        return lines
