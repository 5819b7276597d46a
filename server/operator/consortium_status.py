"""``uharmony-coordinator status``: the registered sites (online or not) and the runs with their last round.

Sites come from the coordinator's registry (``registry.json``) matched by key to the SuperLink's nodes
(Flower's Control API, as ``flwr supernode list``); runs from the SuperLink (as ``flwr ls``), each with the
last round its ServerApp logged in the run's folder (``metrics.jsonl``).
"""

from __future__ import annotations

import json
from pathlib import Path

from server.operator.control_api import list_nodes, list_runs
from server.registry import SiteRegistry

NEVER = "never connected"  # registered with the SuperLink, no SuperNode has activated with the key yet


def site_rows(registry: SiteRegistry, nodes: list) -> tuple[list[dict], list[dict]]:
    """(one row per registered site, the SuperLink's live nodes whose key the registry does not hold)."""
    rows, matched = [], set()
    for e in sorted(registry.sites.values(), key=lambda e: e.site):
        row = {"site": e.site, "domain": e.domain, "status": "revoked" if e.revoked else "not on the SuperLink"}
        if not e.revoked:
            mine = [n for n in nodes if n.status != "unregistered" and registry.lookup(n.public_key) == e]
            best = next((n for n in mine if n.status == "online"), mine[0] if mine else None)
            if best is not None:
                matched.update(n.node_id for n in mine)
                status = {"registered": NEVER}.get(best.status, best.status)
                row.update(status=status, node=best.node_id)
                if best.status == "offline" and best.last_deactivated_at:
                    row["since"] = best.last_deactivated_at
        rows.append(row)
    strangers = [
        {"node": n.node_id, "name": n.name, "status": n.status}
        for n in nodes
        if n.node_id not in matched and n.status != "unregistered"
    ]
    return rows, strangers


def last_round(run_dir: Path, run_id: str | None) -> dict:
    """The last trained round in a run folder's round log, and whether the run logged its end."""
    out: dict = {}
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if run_id and r.get("run-id") != run_id:
            continue
        if r.get("event") == "train":
            out["last-round"] = r["round"]
        elif r.get("event") == "done":
            out["done"] = True
    return out


def run_rows(runs: list) -> list[dict]:
    rows = []
    for run in sorted(runs, key=lambda r: r.pending_at or "", reverse=True):
        cfg = dict(run.override_config)
        status = run.status.status + (f":{run.status.sub_status}" if run.status.sub_status else "")
        row = {"flower-run-id": str(run.run_id), "status": status, "submitted": run.pending_at}
        if run.status.details:
            row["details"] = run.status.details
        if "num-server-rounds" in cfg:
            row["rounds"] = cfg["num-server-rounds"]
        if cfg.get("run-dir"):
            run_id = str(cfg["run-id"]) if cfg.get("run-id") else None
            row.update({"run-id": run_id, "run-dir": str(cfg["run-dir"])})
            row.update(last_round(Path(str(cfg["run-dir"])), run_id))
        rows.append(row)
    return rows


def status(state: Path) -> dict:
    registry = SiteRegistry(state / "registry.json")
    try:
        nodes, runs = list_nodes(state), list_runs(state)
    except Exception as exc:  # noqa: BLE001 - Flower's client raises its own errors, httpx's and SystemExit's kin
        raise RuntimeError(
            f"the SuperLink of {state} does not answer ({type(exc).__name__}: {exc}); is `uharmony-coordinator "
            "start` running with this --state?"
        ) from None
    sites, strangers = site_rows(registry, nodes)
    return {"sites": sites, "unknown-nodes": strangers, "runs": run_rows(runs)}


def render(doc: dict) -> str:
    lines = [f"sites ({len(doc['sites'])} in the registry):"]
    for s in doc["sites"]:
        node = f"  node {s['node']}" if "node" in s else ""
        since = f" since {s['since']}" if "since" in s else ""
        lines.append(f"  {s['site']:<20} domain {s['domain']:<3} {s['status']}{since}{node}")
    for n in doc["unknown-nodes"]:
        lines.append(f"  node {n['node']} ({n['name'] or 'no name'}, {n['status']}): its key is not in the registry")
    lines.append(f"runs ({len(doc['runs'])}, newest first):")
    for r in doc["runs"]:
        rnd = f"round {r.get('last-round', 0)}" + (f"/{r['rounds']}" if "rounds" in r else "")
        where = f"  {r['run-dir']}" if "run-dir" in r else ""
        details = f" ({r['details']})" if r.get("details") else ""
        lines.append(
            f"  {r['flower-run-id']:<20} {r['status']:<20} {rnd:<12} submitted {r['submitted']}{where}{details}"
        )
    return "\n".join(lines)
