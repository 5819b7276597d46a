"""UMS-Rep through the round engine: phase P on every site (labelled or not), its artifact, phase F from it,
and what leaves a label-free site over every message of both runs."""

import json

import pytest
import torch

from server.pretraining import ARTIFACT, MANIFEST
from simulation.runner import run
from uharmony import protocol as P
from uharmony.data import load_federation
from uharmony.federation.config import RunConfig
from uharmony.federation.federated import ModelRoles
from uharmony.files import read_jsonl
from uharmony.model.roles import LOCAL
from uharmony.records.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from uharmony.umsrep.plans import get_plan

from ..conftest import tiny_overrides


def test_phase_p_trains_on_every_site_and_writes_a_reusable_artifact(umsrep_runs):
    run_dir = umsrep_runs["pretrain"]
    records = read_jsonl(run_dir / "metrics.jsonl")
    trained = [r for r in records if r.get("event") == "train"]
    assert [sorted(r["sites"]) for r in trained] == [["1", "2", "3", "4"]] * 2  # 3 of them label-free
    denoise = [r for r in records if r.get("event") == "denoise"]
    assert {r["site"] for r in denoise} == {"1", "2", "3", "4"}
    final = [r for r in denoise if r["round"] == 2]
    assert all("ssim-denoised-0" in r and "psnr-noisy-2" in r for r in final)  # every level at the end
    assert any(r.get("event") == "calibrated" and r["sites"] == 4 for r in records)
    manifest = json.loads((run_dir / MANIFEST).read_text())
    assert manifest["artifact"] == ARTIFACT and [s["labelled"] for s in manifest["sites"]] == [
        True,
        False,
        False,
        False,
    ]
    art = load_checkpoint(run_dir, ARTIFACT)
    assert art["extra"]["kind"] == "umsrep"
    model = RunConfig.from_flwr({"phase": "pretrain", "filters": "8,16,32"}).build_model(4)
    roles = ModelRoles(model)
    assert set(art["state"]) == get_plan("pretrain").trained_keys(model) & set(roles.global_keys())
    assert not set(art["state"]) & set(roles.keys(LOCAL))  # no site's statistics in the artifact


def test_phase_f_starts_from_the_artifact_and_sends_only_the_heads(umsrep_runs):
    run_dir = umsrep_runs["finetune"]
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert any(r.get("event") == "umsrep-start" for r in records)
    trained = [r for r in records if r.get("event") == "train"]
    assert all(r["sites"] == ["1"] for r in trained)  # the labelled site only
    for r in trained:  # the heads only (2.4 % of this tiny model, the multi-scale presence head included)
        assert r["update-bytes"]["1"] <= 0.03 * r["full-model-bytes"]
    final = load_checkpoint(run_dir, "final_model.pt")
    art = load_checkpoint(umsrep_runs["pretrain"], ARTIFACT)
    trunk = [k for k in art["state"] if k in final["state"]]
    assert trunk and all(torch.equal(final["state"][k], art["state"][k]) for k in trunk)  # frozen trunk
    dice = [r for r in records if "dice" in r]
    assert dice and {r["site"] for r in dice} == {"1"}  # a label-free site is not scored
    assert any("presence-accuracy" in r for r in dice)
    assert any(r.get("event") == "calibrated" and r["asked"] == 3 for r in records)  # the label-free sites


def test_nothing_local_or_label_derived_leaves_a_label_free_site(umsrep_runs):
    fed = load_federation(umsrep_runs["view"])
    free = {i for i, s in enumerate(fed.sites) if not s.labelled}
    assert free == {1, 2, 3}
    model = RunConfig.from_flwr({"phase": "pretrain", "filters": "8,16,32", "tasks": "presence"}).build_model(4)
    local = set(ModelRoles(model).keys(LOCAL))
    seen = set()
    for node_config, kind, msg in umsrep_runs["replies"]:
        if node_config["partition-id"] not in free:
            continue
        seen.add(kind)
        assert not msg.has_error(), msg.error.reason
        content = msg.content
        for record in content.array_records.values():
            assert not set(record) & local, sorted(set(record) & local)[:3]
        for record in content.metric_records.values():
            assert not [k for k in record if k.startswith(("dice", "hd95", "presence", "gate"))], dict(record)
        if P.PROFILE in content.config_records:
            prof = content.config_records[P.PROFILE]
            assert prof[P.LABELLED] is False and prof[P.REGIONS] == ""
    assert {"train", "evaluate", "query.calibrate", "query.profile"} <= seen


def test_a_file_that_is_not_an_artifact_is_refused(tiny_federation, tmp_path):
    cfg = RunConfig.from_flwr({"filters": "8,16,32"})
    model = cfg.build_model()
    save_checkpoint(tmp_path, 1, model.spec, {}, {"strategy": "uharmony"}, name="model.pt")
    over = tiny_overrides(tiny_federation, tmp_path / "run", num_server_rounds=1, umsrep=str(tmp_path / "model.pt"))
    with pytest.raises(CheckpointError, match="not a UMS-Rep artifact"):
        run(over)
    with pytest.raises(CheckpointError, match="missing.pt"):
        run({**over, "umsrep": str(tmp_path / "missing.pt")})


def test_phase_p_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="phase 'pretrain'"):
        RunConfig.from_flwr({"phase": "pretrain", "strategy": "centralized"})
    with pytest.raises(ValueError, match="finetune"):
        RunConfig.from_flwr({"finetune": "sideways"})


def test_phase_p_under_differential_privacy_reports_its_epsilon(tiny_federation, tmp_path):
    """Issue 34, item 7: phase P sends the trunk and its reconstruction head only; the server clips and noises
    those entries (server/aggregation.py's KeyedFixedClipping) and reports epsilon as for segmentation."""
    from server.privacy import PrivacyLedger

    over = tiny_overrides(tiny_federation, tmp_path / "p", num_server_rounds=2, phase="pretrain", local_steps=2,
                          strategy="fedavg", dp_noise_multiplier=1.0, dp_clipping_norm=5.0)  # fmt: skip
    run(over)
    records = read_jsonl(tmp_path / "p" / "metrics.jsonl")
    eps = [r["privacy"]["epsilon"] for r in records if r.get("event") == "train"]
    ledger = PrivacyLedger(1.0, 1e-5)
    assert eps == [ledger.spend(4)["epsilon"], ledger.spend(4)["epsilon"]]
    assert json.loads((tmp_path / "p" / MANIFEST).read_text())["privacy"]["epsilon"] == eps[-1]
    # phase F under DP from it: phase P's releases count in its epsilon (they compose); from a phase P without
    # DP it is refused (the trunk would not be private)
    dp = dict(strategy="fedavg", dp_noise_multiplier=1.0, dp_clipping_norm=5.0)
    fine = tiny_overrides(
        tiny_federation, tmp_path / "f", num_server_rounds=1, umsrep=str(tmp_path / "p" / ARTIFACT), **dp
    )
    run(fine)
    records = read_jsonl(tmp_path / "f" / "metrics.jsonl")
    start = next(r for r in records if r.get("event") == "umsrep-start")
    assert start["privacy-before"]["epsilon"] == eps[-1]
    assert next(r for r in records if r.get("event") == "train")["privacy"]["epsilon"] == ledger.spend(4)["epsilon"]
    plain = tiny_overrides(tiny_federation, tmp_path / "p0", num_server_rounds=1, phase="pretrain", local_steps=1,
                           strategy="fedavg")  # fmt: skip
    run(plain)
    with pytest.raises(CheckpointError, match="phase P ran without differential privacy"):
        run({**fine, "run-dir": str(tmp_path / "f0"), "umsrep": str(tmp_path / "p0" / ARTIFACT)})


def test_phase_p_halves_the_rate_on_a_plateau_and_stops_early(monkeypatch):
    """The server's rule on the sites' case-weighted validation loss: progress is a 1 % gain."""
    from server import pretraining

    losses = iter([1.0, 0.9, 0.895, 0.894, 0.85, 0.849, 0.848, 0.847, 0.846])
    monkeypatch.setattr(pretraining, "evaluate_denoising", lambda engine, rnd, final=False: {P.VAL_LOSS: next(losses)})

    class Engine:
        stop_reason = ""

        class runlog:
            written = []

            @classmethod
            def write(cls, record):
                cls.written.append(record)

    engine = Engine()
    phase = pretraining.Pretraining(
        RunConfig.from_flwr({"phase": "pretrain", "plateau-patience": 2, "stop-patience": 3, "lr": 0.004})
    )
    rates = []
    for rnd in range(1, 10):
        phase.at_evaluation(engine, rnd, last=False)
        rates.append(phase.learning_rate(engine, rnd, scheduled=1.0))
        if engine.stop_reason:
            break
    # 1.0, 0.9: progress; 0.895, 0.894: two stale evaluations -> halved; 0.85: progress; then 3 stale -> stop
    assert rates == [0.004, 0.004, 0.004, 0.002, 0.002, 0.002, 0.001, 0.001]
    assert "has not improved by 1 % in 3 evaluations" in engine.stop_reason
    assert [r["lr"] for r in Engine.runlog.written if r["event"] == "lr-plateau"] == [0.002, 0.001]
    again = pretraining.Pretraining(RunConfig.from_flwr({"phase": "pretrain"}))
    again.load_state_dict(phase.state_dict())  # what a checkpoint keeps, a resumed run continues from
    assert (again.lr, again.best, again.stale) == (phase.lr, phase.best, phase.stale)


def test_a_resume_across_a_change_of_the_plans_is_refused(tiny_federation, tmp_path):
    """What 'independent' and 'alternating' train changed (plans version 2): a run checkpointed under another
    version is not continued under this one."""
    over = tiny_overrides(tiny_federation, tmp_path / "p", num_server_rounds=1, phase="pretrain", local_steps=1)
    run(over)
    ckpt = load_checkpoint(tmp_path / "p" / "checkpoints")
    assert ckpt["extra"]["plans-version"] == 2
    older = {**ckpt["extra"], "plans-version": 1}
    save_checkpoint(tmp_path / "p" / "checkpoints", ckpt["round"] + 1, ckpt["spec"], ckpt["state"], older)
    with pytest.raises(CheckpointError, match="plans version 1, this code has version 2"):
        run({**over, "num_server_rounds": 3, "resume": True})
