"""Flower ServerApp: builds the model, runs the rounds with the role-aware strategy, logs, checkpoints.

The loop mirrors ``Strategy.start`` but admits SuperNodes as they join (``server/admission.py``),
growing the model for a new site's modality, label class or domain and evaluating every site on the
grown model before training continues; it can resume from a checkpoint (continuing the round count),
writes per-site metrics every evaluation round and a checkpoint every round.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

from client.data import federation_root
from client.records import from_record, to_record
from simulation.datasets import SiteData, load_federation
from uharmony import build_model, model_from_spec
from uharmony import protocol as P
from uharmony.adaptation import spec_extends
from uharmony.config import RunConfig
from uharmony.federated import ModelRoles, extend_global_model, model_needs, to_numpy
from uharmony.training import train_steps

from .admission import Admission
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .run_log import RunLog
from .strategy import RoleAwareFedAvg

log = logging.getLogger("uharmony.server")


def _say(text: str) -> None:
    print(f"[uharmony] {text}", flush=True)


def initial_model(cfg: RunConfig) -> tuple[torch.nn.Module, int]:
    """Build the run's model; in simulation the federation is generated (if needed) and counted."""
    num_domains = cfg.num_domains
    if num_domains <= 0:  # one per site that is there from the start (joining sites add theirs)
        fed = load_federation(federation_root(cfg), cfg.data_kind, cfg.partition or None, seed=cfg.seed)
        num_domains = max(1, len([s for s in fed.sites if s.name not in cfg.join_rounds()]))
    torch.manual_seed(cfg.seed)
    kw = cfg.model_kwargs()
    return build_model(kw.pop("arch"), kw.pop("in_channels"), kw.pop("out_channels"), num_domains, kw.pop("norm"), **kw), num_domains


def _centralized_round(cfg: RunConfig, model, pooled: SiteData, server_round: int, num_sites: int) -> dict:
    """Pooled training with the same budget as a federated round (sites x local steps)."""
    steps = cfg.local_steps * num_sites
    seed = cfg.seed * 100_003 + server_round * 1009
    torch.manual_seed(seed)
    return train_steps(model, pooled.batches(cfg.batch_size, steps, seed, cfg.neg_ratio), None, cfg.lr,
                       optimizer=cfg.optimizer)


def _admit(grid: Grid, cfg: RunConfig, admission: Admission, rnd: int, srv: dict, strategy: RoleAwareFedAvg,
           runlog: RunLog) -> list[str]:
    """Admit the SuperNodes that joined since the last round, growing the model for what they bring.

    ``srv`` holds the server's current ``model``. Returns the names of the sites that grew the model.
    """
    if not admission.members:
        admission.wait_for_nodes(grid, cfg.min_sites, cfg.round_timeout)
    ready, events = admission.candidates(grid, rnd, cfg.round_timeout)
    for event in events:
        runlog.write({"round": rnd, **event})
    grew = []
    for node, prof in ready:
        model = srv["model"]
        domain = prof["domain"] if model.gated else None
        needs = model_needs(model, prof["modalities"], prof["regions"], domain)
        if any(needs.values()):
            why = ("extend-on-join is false" if not cfg.extend_on_join else
                   "strategy 'local' has no global model to extend" if cfg.strategy == "local" else None)
            if why:
                reason = admission.refuse(node, f"site {prof['site']} needs {needs} but {why}")
                runlog.write({"round": rnd, "event": "join-refused", "node": node, "site": prof["site"], "reason": reason})
                _say(f"round {rnd}: refused site {prof['site']}: {reason}")
                continue
            model, roles, state, needs = extend_global_model(model.spec, strategy.global_state, srv["roles-strategy"],
                                                             prof["modalities"], prof["regions"], domain)
            srv["model"] = model
            strategy.extend(roles, state)
            grew.append(prof["site"])
        admission.admit(node, prof)
        runlog.write({"round": rnd, "event": "join", "node": node, **{k: prof[k] for k in ("site", "domain", "modalities",
                      "regions", "train_cases")}, "added": needs, "model": {k: srv["model"].spec[k] for k in
                      ("modalities", "regions", "num_domains")}})
        added = ", ".join(f"{k} {v}" for k, v in needs.items() if v)
        _say(f"round {rnd}: site {prof['site']} joined (domain {prof['domain']})" + (f"; model extended: {added}" if added else ""))
    strategy.node_ids = admission.online_members(grid)
    return grew


def run_server(grid: Grid, run_config: dict, overrides: dict | None = None) -> dict:
    cfg = RunConfig.from_flwr({**run_config, **(overrides or {})})
    run_dir = Path(cfg.run_dir)
    ckpt_dir = run_dir / "checkpoints"
    model, num_domains = initial_model(cfg)
    roles_strategy = cfg.strategy if cfg.strategy != "centralized" else "fedavg"
    state, start = None, 1
    if cfg.resume:
        blob = load_checkpoint(ckpt_dir)
        if not spec_extends(model.spec, blob["spec"]):
            raise CheckpointError(f"{ckpt_dir}: model spec differs from this run's configuration; refusing to resume")
        model = model_from_spec(blob["spec"])  # the configured model, grown by the joins before the checkpoint
        state, start = blob["state"], int(blob["round"]) + 1
        _say(f"resuming from {ckpt_dir} after round {blob['round']}")
    roles = ModelRoles(model, roles_strategy)
    state = state if state is not None else to_numpy(model.state_dict(), roles.global_keys())
    runlog = RunLog(run_dir)
    (run_dir / "config.json").write_text(json.dumps({**run_config, **(overrides or {})}, indent=2, default=str))
    strategy = RoleAwareFedAvg(roles, state, min_sites=cfg.min_sites, update_norm_factor=cfg.update_norm_factor,
                               proximal_mu=cfg.proximal_mu if cfg.strategy == "fedprox" else 0.0,
                               min_train_nodes=cfg.min_sites, min_evaluate_nodes=cfg.min_sites,
                               min_available_nodes=cfg.min_sites)
    outer = strategy
    if cfg.dp_noise_multiplier > 0:
        outer = DifferentialPrivacyServerSideFixedClipping(
            strategy, cfg.dp_noise_multiplier, cfg.dp_clipping_norm,
            num_sampled_clients=cfg.min_sites if cfg.min_sites > 1 else num_domains)
    pooled, admission = None, Admission()
    if cfg.strategy == "centralized":
        fed = load_federation(federation_root(cfg), cfg.data_kind, cfg.partition or None, seed=cfg.seed)
        pooled = SiteData(fed.pooled(), cfg.spacing, cfg.patch_size)
        num_sites = len(fed.sites)
    _say(f"strategy={cfg.strategy} arch={cfg.arch} norm={cfg.model_norm} head={cfg.head} domains={num_domains} "
         f"rounds {start}..{cfg.num_server_rounds}; run folder {run_dir}")
    srv = {"model": model, "roles-strategy": roles_strategy}
    summary = {}
    for rnd in range(start, cfg.num_server_rounds + 1):
        t0 = time.time()
        base = {P.MODEL_SPEC: json.dumps(srv["model"].spec), P.STRATEGY: cfg.strategy}
        if pooled is not None:
            model = srv["model"]
            model.load_state_dict({**model.state_dict(), **{k: torch.as_tensor(v) for k, v in strategy.global_state.items()}})
            stats = _centralized_round(cfg, model, pooled, rnd, num_sites)
            strategy.global_state = to_numpy(model.state_dict(), strategy.roles.global_keys())
            train_info = {"train-loss": stats["loss"], "sites": ["pooled"], "rejected": []}
        else:
            grew = _admit(grid, cfg, admission, rnd, srv, strategy, runlog)
            base[P.MODEL_SPEC] = json.dumps(srv["model"].spec)
            if grew and rnd > 1:  # a trained model grew: check every site on it before anyone trains
                _evaluate(grid, cfg, strategy, runlog, rnd - 1, base, phase="after-extension", joined=grew)
            train_cfg = ConfigRecord({**base, P.LR: cfg.lr, P.LOCAL_STEPS: cfg.local_steps, P.SEED: cfg.seed})
            replies = grid.send_and_receive(outer.configure_train(rnd, to_record(strategy.global_state), train_cfg, grid),
                                            timeout=cfg.round_timeout)
            arrays, metrics = outer.aggregate_train(rnd, replies)
            if arrays is not None:  # the DP wrapper adds its noise to what the inner strategy returned
                strategy.global_state = {k: v.astype(strategy.global_state[k].dtype) for k, v in from_record(arrays).items()}
            rep = strategy.last_report
            train_info = {"train-loss": metrics.get("train-loss") if metrics else None, "sites": rep["accepted"],
                          "rejected": rep["rejected"],
                          "update-bytes": {s: m.get(P.UPDATE_BYTES) for s, m in rep["sites"].items()},
                          "skipped-cases": {s: m.get(P.SKIPPED) for s, m in rep["sites"].items()}}
        full_bytes = sum(v.numel() * v.element_size() for v in srv["model"].state_dict().values())
        runlog.write({"round": rnd, "event": "train", "strategy": cfg.strategy, "full-model-bytes": full_bytes,
                      "seconds": round(time.time() - t0, 2), **train_info})
        line = f"round {rnd}/{cfg.num_server_rounds}: train loss {train_info['train-loss'] if train_info['train-loss'] is None else round(train_info['train-loss'], 4)}"
        line += f", {len(train_info['sites'])} sites, {len(train_info['rejected'])} rejected"
        if rnd % cfg.eval_every == 0 or rnd == cfg.num_server_rounds:
            summary = _evaluate(grid, cfg, strategy, runlog, rnd, base)
            line += " | mean Dice " + ", ".join(f"{k} {v:.3f}" for k, v in summary.items())
        save_checkpoint(ckpt_dir, rnd, srv["model"].spec, strategy.global_state, {"strategy": cfg.strategy})
        _say(f"{line} ({time.time() - t0:.1f} s)")
    final = save_checkpoint(run_dir, cfg.num_server_rounds, srv["model"].spec, strategy.global_state,
                            {"strategy": cfg.strategy}, name="final_model.pt")
    png = runlog.plot()
    runlog.write({"event": "done", "rounds": cfg.num_server_rounds, "final-mean-dice": summary})
    _say(f"done: {final}, metrics {runlog.path}, plot {png}")
    return {"run_dir": str(run_dir), "summary": summary}


def _evaluate(grid: Grid, cfg: RunConfig, strategy: RoleAwareFedAvg, runlog: RunLog, rnd: int, base: dict,
              **tags) -> dict:
    """Federated evaluation of the current global model at every admitted site; logs and returns the summary."""
    eval_cfg = ConfigRecord({**base, P.SEED: cfg.seed})
    replies = grid.send_and_receive(strategy.configure_evaluate(rnd, to_record(strategy.global_state), eval_cfg, grid),
                                    timeout=cfg.round_timeout)
    strategy.aggregate_evaluate(rnd, replies)
    summary = runlog.evaluation(rnd, cfg.strategy, strategy.last_report["sites"], **tags)
    if tags:
        _say(f"evaluation ({', '.join(f'{k} {v}' for k, v in tags.items())}): mean Dice "
             + ", ".join(f"{k} {v:.3f}" for k, v in summary.items()))
    return summary


def make_app(overrides: dict | None = None) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, dict(context.run_config), overrides)

    return app


app = make_app()
