"""Evaluations of the global model, whatever message carried them, and the run's cross-site table.

A site evaluates the model it receives either in an evaluate message (the final round, after a join
extended the model, the centralized baseline) or at the start of the next round's train message
(``evaluate-first``): both replies go through the same check (``server/replies.check_evaluation``) and
are filed under the round whose model was evaluated; whatever goes wrong with one reply is that reply's
rejection, never the round's end. The final evaluation of a gated model also scores
every domain expert on every site's data: ``cross_site.csv``.
"""

from __future__ import annotations

import csv
import io
import logging
import re

from server.replies import RejectedUpdate, check_evaluation, rejection
from uharmony import protocol as P
from uharmony.files import atomic_write

log = logging.getLogger("uharmony.server")
CROSS_KEY = re.compile(r"dice-([a-z][a-z0-9]{0,15})-(oracle|gated|expert\d{1,3})")


def collect(
    replies, members: dict[int, dict], regions: list[str], record: str = P.METRICS, server_round: int = 0
) -> tuple[dict[str, dict], list[dict]]:
    """({site: checked metrics}, rejections) of the evaluation records (``record``) among ``replies``;
    replies without that record (a train reply that was not asked to evaluate) are passed over."""
    per_site, rejected = {}, []
    for msg in replies:
        try:
            node = msg.metadata.src_node_id
            if record != P.METRICS and (msg.has_error() or record not in msg.content.metric_records):
                continue  # a train reply's failure is the train check's business
            if node not in members:
                raise RejectedUpdate(f"node {node} is not a member of this run")
            site, metrics = check_evaluation(msg, members[node], regions, record)
            per_site[site] = metrics
        except Exception as exc:  # noqa: BLE001 - whatever one reply carries is that reply's rejection
            rejected.append(rejection(msg, exc))
            log.warning("round %d: evaluation from node %s rejected: %s", server_round, *rejected[-1].values())
    return per_site, rejected


def write_cross_site(run_dir, per_site: dict[str, dict], members: dict[str, int | None]) -> str | None:
    """``cross_site.csv``: one row per (site, model, region) with its Dice, where model is ``global``
    (dataset-free: the gate), ``own-expert`` and, for a gated model, ``expert<d>`` of every domain.
    ``members``: site -> its domain. Returns the file name, or None when no site reported."""
    rows = []
    for site, metrics in sorted(per_site.items()):
        for key, value in metrics.items():
            match = CROSS_KEY.fullmatch(key)
            if not match or value is None or value < 0 or value != value:
                continue
            region, mode = match.group(1).upper(), match.group(2)
            if mode == "oracle" and members.get(site) is None:  # one head: its own expert is the global model
                continue
            model = {"gated": "global", "oracle": "own-expert"}.get(mode, mode)
            rows.append({"site": site, "domain": members.get(site), "model": model, "region": region, "dice": value})
            if mode == "oracle" and members.get(site) is not None:  # the own expert is expert<domain> too
                rows.append({**rows[-1], "model": P.expert_mode(members[site])})
    if not rows:
        return None
    buf = io.StringIO()
    writer = csv.DictWriter(buf, ("site", "domain", "model", "region", "dice"), lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: (r["site"], r["model"], r["region"])))
    atomic_write(f"{run_dir}/cross_site.csv", buf.getvalue())
    return "cross_site.csv"


def dice_line(summary: dict, gated: bool = True) -> str:
    """A gated model's two modes (oracle: own expert; gated: the scan gate picks); a plain head's one value."""
    keep = ("oracle", "gated") if gated else [k for k in ("oracle", "gated") if k in summary][:1]
    modes = ", ".join(f"{k} {v:.3f}" if gated else f"{v:.3f}" for k, v in summary.items() if k in keep)
    sites = "; ".join(
        f"site {s} " + "/".join(f"{v:.2f}" for k, v in per.items() if k in keep)
        for s, per in summary.get("sites", {}).items()
    )
    gate = f", gate right on {summary['gate-accuracy']:.0%} of scans" if "gate-accuracy" in summary else ""
    gate += f", tumour type right on {summary['type-accuracy']:.0%}" if "type-accuracy" in summary else ""
    return f"mean Dice {modes}{gate}" + (f" [{sites}]" if sites else "")
