"""The round engine on the tiny federation, through the in-process transport (the ClientApp called directly)."""

import csv
import io
import json
import re

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from client.client_app import make_app
from server.evaluation import dice_line
from server.rounds import run_server
from simulation.inprocess import InProcessGrid
from tests.conftest import tiny_overrides
from uharmony import protocol as P
from uharmony.federation import wire
from uharmony.federation.config import RunConfig
from uharmony.federation.federated import ModelRoles, global_state_of
from uharmony.model.networks import model_from_spec
from uharmony.model.roles import module_state_keys
from uharmony.records.checkpoint import load_checkpoint
from uharmony.records.runlog import RunLog


class RecordingGrid(InProcessGrid):
    """Keeps every (request, reply) pair; can make chosen nodes fail their train messages."""

    def __init__(self, *args, fail_train: tuple = (), bad_manifest: tuple = (), huge_header: tuple = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.log, self.fail_train, self.bad_manifest = [], set(fail_train), set(bad_manifest)
        self.huge_header = set(huge_header)
        app = self.client_app

        def client_app(msg, context):
            if msg.metadata.message_type == "train" and context.node_id in self.fail_train:
                raise OSError("the site's data folder disappeared")
            reply = app(msg, context)
            if msg.metadata.message_type == "train" and context.node_id in self.bad_manifest:
                reply.content[P.WIRE] = ConfigRecord({wire.MANIFEST: '[["x", "float32", [3]]]'})  # a lying manifest
            if context.node_id in self.huge_header:
                _declare_4_tib(reply, msg.metadata.message_type)
            self.log.append((msg, reply))
            return reply

        self.client_app = client_app


def _declare_4_tib(reply, kind: str) -> None:
    """Issue 29, F5's probe: a train reply answered plain with an array whose .npy header declares 2**40 floats,
    a prototype reply whose packed buffer's header declares 2**40 bytes (numpy.load: MemoryError)."""
    header = io.BytesIO()
    descr = "<f4" if kind == "train" else "|u1"
    np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False, "shape": (2**40,)})
    lying = Array(dtype=descr, shape=(1,), stype="numpy.ndarray", data=header.getvalue())
    if kind == "train":
        arrays = wire.unpack_message_records(reply.content.array_records, reply.content.config_records)
        record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
        record[next(iter(arrays))] = lying  # every entry it should send, one of them "4 TiB"
        reply.content[P.ARRAYS] = record
        del reply.content[P.WIRE]
    elif kind == "query.prototype":
        reply.content[P.ARRAYS] = ArrayRecord({wire.PACKED: lying})


def _run(root, run_dir, fail_train=(), nodes=4, bad_manifest=(), node_configs=None, huge_header=(), **extra):
    overrides = {k.replace("_", "-"): v for k, v in tiny_overrides(root, run_dir, **extra).items()}
    nodes = node_configs or [{"partition-id": i} for i in range(nodes)]
    grid = RecordingGrid(
        make_app(), nodes, overrides, fail_train=fail_train, bad_manifest=bad_manifest, huge_header=huge_header
    )
    return run_server(grid, overrides), grid


def test_rounds_logs_and_every_message_keeps_site_data_at_home(tiny_federation, tmp_path):
    run_dir = tmp_path / "run"
    result, grid = _run(tiny_federation, run_dir, num_server_rounds=2)
    recs = RunLog(run_dir).records()
    assert [r["round"] for r in recs if r.get("event") == "train"] == [1, 2]
    evals = [r for r in recs if "dice" in r]
    assert {r["site"] for r in evals} == {"1", "2", "3", "4"} and {r["round"] for r in evals} == {1, 2}
    assert {r["mode"] for r in evals} == {"oracle", "gated"}
    assert {r["region"] for r in evals if r["site"] == "4"} == {"WT"}  # whole-tumour-only site
    assert all(0.0 <= r["dice"] <= 1.0 for r in evals)
    assert (run_dir / "dice_per_round.png").stat().st_size > 1000
    assert set(result["summary"]) == {"oracle", "gated"}
    with open(run_dir / "metrics.csv") as f:  # the per-round, per-site, per-region table
        table = list(csv.DictReader(f))
    assert [(int(r["round"]), r["site"], r["mode"], r["region"]) for r in table] == [
        (r["round"], r["site"], r["mode"], r["region"]) for r in evals
    ]
    with open(run_dir / "cross_site.csv") as f:  # every site's data against the global model and each expert
        cross = list(csv.DictReader(f))
    for site, regions in (("1", 3), ("4", 1)):
        models = {r["model"] for r in cross if r["site"] == site}
        assert models == {"global", "own-expert", "expert0", "expert1", "expert2", "expert3"}
        assert len([r for r in cross if r["site"] == site]) == 6 * regions
    own = {(r["site"], r["region"]): r["dice"] for r in cross if r["model"] == "own-expert"}
    assert all(own[(r["site"], r["region"])] == r["dice"] for r in cross if r["model"] == f"expert{r['domain']}")

    spec = load_checkpoint(run_dir, "final_model.pt")["spec"]
    roles = ModelRoles(model_from_spec(spec), "uharmony")
    local = set(roles.keys("local"))
    assert local, "the U-Harmony model has site-local harmonization statistics"
    kinds = {}
    for request, reply in grid.log:  # every reply of the run: profile, train and evaluate
        kind = request.metadata.message_type
        kinds[kind] = kinds.get(kind, 0) + 1
        content = reply.content
        assert not (set(content.array_records) - {P.ARRAYS})
        if kind == "train":
            domain = int(content.config_records[P.SITE][P.DOMAIN_ID])
            assert set(content.array_records[P.ARRAYS].keys()) == set(roles.outgoing_keys(domain))
            assert content.metric_records[P.METRICS][P.NUM_EXAMPLES] == 2  # training cases (3 cases - 1 val)
        elif kind == "query.prototype":  # the domain's descriptor statistics: mean, variance, count
            domain = int(content.config_records[P.SITE][P.DOMAIN_ID])
            arrays = content.array_records[P.ARRAYS].to_torch_state_dict()
            assert set(arrays) == set(roles.prototypes[domain])
            assert float(arrays[roles.prototypes[domain][2]]) == 2  # the site's training scans
        else:
            assert not content.array_records  # evaluation and profiles send numbers and names only
        for record in (*content.config_records.values(), *content.metric_records.values()):
            for value in record.values():
                assert isinstance(value, (str, int, float, bool, list)) and len(str(value)) < 200
    # round 1's model is scored inside round 2's train messages: one evaluate message per site, at the end
    assert kinds == {"query.profile": 4, "train": 8, "query.prototype": 8, "evaluate": 4}
    gate = [r for r in recs if r.get("event") == "gate"]  # the gate's choice on each site's validation scans
    assert len(gate) == 8 and all(0 <= r["gate-accuracy"] <= 1 for r in gate)
    assert len(list((run_dir / "site-state").glob("site-*/local_state.pt"))) == 4  # kept on each site's disk


class Crash(Exception):
    pass


class CrashingGrid(InProcessGrid):
    """The server process dies when it sends the messages of type ``kind`` for round ``at`` (after the sites
    trained that round and saved their state, before the server checkpointed it)."""

    def __init__(self, *args, kind="evaluate", at=2, **kwargs):
        super().__init__(*args, **kwargs)
        self.kind, self.at = kind, at

    def push_messages(self, messages):
        messages = list(messages)
        for m in messages:
            if m.metadata.message_type == self.kind and m.content[P.CONFIG].get(P.SERVER_ROUND) == self.at:
                raise Crash(f"server killed in round {self.at}")
        return super().push_messages(messages)


def test_a_round_interrupted_by_a_crash_is_redone_once(tiny_federation, trained_run, tmp_path):
    """Killed after round 2's training, resumed from round 1's checkpoint: the same weights as a run that was
    never interrupted (site statistics and optimizer moments are not updated twice by round 2), every
    evaluation recorded once, and the interrupted attempt's records set aside."""
    run_dir = tmp_path / "crashed"
    over = {k.replace("_", "-"): v for k, v in tiny_overrides(tiny_federation, run_dir, num_server_rounds=2).items()}
    over["tensorboard"] = True
    nodes = [{"partition-id": i} for i in range(4)]
    with pytest.raises(Crash):
        run_server(CrashingGrid(make_app(), nodes, over), over)
    assert [r["round"] for r in RunLog(run_dir).records() if r.get("event") == "train"] == [1, 2]
    run_server(InProcessGrid(make_app(), nodes, {**over, "resume": True}), {**over, "resume": True})
    a = load_checkpoint(trained_run, "final_model.pt")["state"]
    b = load_checkpoint(run_dir, "final_model.pt")["state"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    recs = RunLog(run_dir).records()
    assert [r["round"] for r in recs if r.get("event") == "train"] == [1, 2]
    keys = [(r["round"], r["site"], r["mode"], r["region"]) for r in recs if "dice" in r]
    assert len(keys) == len(set(keys)) and {k[0] for k in keys} == {1, 2}
    assert [r["dice"] for r in recs if "dice" in r] == [r["dice"] for r in RunLog(trained_run).records() if "dice" in r]
    interrupted = RunLog(run_dir).records() and (run_dir / "metrics.interrupted.jsonl").read_text()
    assert '"event": "train"' in interrupted and '"round": 2' in interrupted
    cases = [json.loads(x) for x in (run_dir / "site-state" / "site-1" / "cases.jsonl").read_text().splitlines()]
    assert len(cases) == len({(c["round"], c["mode"], c["case"]) for c in cases})  # per-case records once too
    info = json.loads((run_dir / "run.json").read_text())
    assert [a["resumed-after-round"] for a in info["attempts"]] == [None, 1]
    assert info["software"]["torch"] and info["machine"]["cpu-count"] >= 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert {"dice/gated", "dice/oracle", "train/loss"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("dice/gated")][-2:] == [1, 2]


@pytest.mark.parametrize(
    "strategy, extra",
    [
        ("fedavg", {}),
        ("fedprox", {}),
        ("fedbn", {}),
        ("local", {}),
        ("centralized", {}),
        ("fedavg", {"dp_noise_multiplier": 0.1, "dp_clipping_norm": 5.0}),  # Flower's DP wrapper
    ],
)
def test_each_strategy_runs_a_round(tiny_federation, tmp_path, strategy, extra, capsys):
    run_dir = tmp_path / strategy
    _, grid = _run(tiny_federation, run_dir, strategy=strategy, num_server_rounds=1, **extra)
    line = next(x for x in capsys.readouterr().out.splitlines() if "round 1/1" in x)
    assert re.search(r"mean Dice \d\.\d{3} \[site 1 \d\.\d\d; site 2 ", line), line  # a plain head: one Dice
    assert "oracle" not in line and "gated" not in line  # (issue 31 item 10: FedAvg's log spoke of both)
    recs = RunLog(run_dir).records()
    train = next(r for r in recs if r.get("event") == "train")
    assert train["rejected"] == []
    assert len({r["site"] for r in recs if "dice" in r}) == 4
    sent = train.get("update-bytes", {})
    trained = [m for m, _ in grid.log if m.metadata.message_type == "train"]
    if strategy == "local":
        assert set(sent.values()) == {0}  # nothing leaves the site
    if strategy == "centralized":  # one member trains on every site's data with every site's budget
        assert train["sites"] == ["pooled"] and len(trained) == 1
        assert trained[0].content[P.CONFIG][P.LOCAL_STEPS] == 4 * 2 and trained[0].content[P.CONFIG][P.POOLED]
    else:
        assert len(trained) == 4
    if strategy == "fedprox":
        assert all(m.content[P.CONFIG][P.PROXIMAL_MU] == 0.01 for m in trained)
    if strategy == "fedbn":  # no normalization layer leaves a site
        model = model_from_spec(load_checkpoint(run_dir, "final_model.pt")["spec"])
        norm_keys = module_state_keys(model, lambda m: isinstance(m, torch.nn.InstanceNorm3d))
        sent_keys = [set(r.content[P.ARRAYS].keys()) for m, r in grid.log if m.metadata.message_type == "train"]
        assert norm_keys and len(sent_keys) == 4 and not any(k & norm_keys for k in sent_keys)


def test_a_node_failing_mid_round_a_lying_manifest_and_a_node_that_never_joins(tiny_federation, tmp_path):
    run_dir = tmp_path / "faults"
    _, grid = _run(tiny_federation, run_dir, fail_train=(1001,), bad_manifest=(1002,), nodes=5, num_server_rounds=1)
    recs = RunLog(run_dir).records()
    train = next(r for r in recs if r.get("event") == "train")
    assert sorted(train["sites"]) == ["1", "4"]  # the round went on without sites 2 and 3
    reasons = sorted(r["reason"] for r in train["rejected"])
    assert len(reasons) == 2 and "data folder disappeared" in reasons[0]
    assert "packed arrays: packed buffer: the manifest describes 12 bytes" in reasons[1]
    # the model travelled packed: one array per message (the replies are unpacked by now)
    trains = [m for m, _ in grid.log if m.metadata.message_type == "train"]
    assert len(trains) == 3 and all(list(m.content.array_records[P.ARRAYS]) == [wire.PACKED] for m in trains)
    errors = [r for r in recs if r.get("event") == "join-error"]  # node 5 has no site: never admitted
    assert len(errors) == 1 and "partition-id 4" in errors[0]["reason"]
    assert RunLog(run_dir).done() is not None


def test_too_few_usable_replies_keep_the_model_and_a_run_that_trained_nothing_fails(tiny_federation, tmp_path):
    run_dir = tmp_path / "min-sites"
    why = (
        r"no round changed the model: no site trained in any of its 1 rounds \(3 usable replies < min-sites 4; site 2: "
    )
    with pytest.raises(RuntimeError, match=why):
        _run(tiny_federation, run_dir, fail_train=(1001,), num_server_rounds=1, min_sites=4)
    assert not (run_dir / "final_model.pt").exists()  # no model that looks trained
    failed = [r for r in RunLog(run_dir).records() if r.get("event") == "failed"]
    assert len(failed) == 1 and RunLog(run_dir).done() is None
    final = load_checkpoint(run_dir / "checkpoints")  # round 1's checkpoint: the model as it was
    initial = RunConfig.from_flwr(tiny_overrides(tiny_federation, run_dir)).build_model(4)  # seed 0, 4 domains
    roles = ModelRoles(initial, "uharmony")
    expected = global_state_of(initial, roles)
    assert final["state"].keys() == expected.keys()
    prototypes = {k for keys in roles.prototypes.values() for k in keys}  # refreshed for the evaluation
    assert all(torch.equal(final["state"][k], v) for k, v in expected.items() if k not in prototypes)  # 3 < 4


def test_a_federation_with_no_usable_site_stops_with_the_reasons(tmp_path, tiny_federation):
    overrides = {k.replace("_", "-"): v for k, v in tiny_overrides(tiny_federation, tmp_path / "none").items()}
    grid = InProcessGrid(make_app(), [{"partition-id": 9}], overrides)
    with pytest.raises(RuntimeError, match="no site could be admitted.*partition-id 9"):
        run_server(grid, overrides)


def test_what_leaves_a_site_names_no_folder_and_no_single_patient(tiny_federation, tmp_path):
    doc = json.loads((tiny_federation / "federation.json").read_text())
    doc["root"] = str(tiny_federation)
    secret = "/srv/hospital-secret/patients/SYN_001_000/SYN_001_000_t1.nii.gz"
    doc["sites"][0]["cases"][0]["images"]["t1"] = secret  # a case whose file is missing at site 1
    fed = tmp_path / "fed"
    fed.mkdir()
    (fed / "federation.json").write_text(json.dumps(doc))
    _, grid = _run(fed, tmp_path / "run", num_server_rounds=1, min_report_cases=2)
    sent = [str(v) for _, r in grid.log for rec in r.content.config_records.values() for v in rec.values()]
    assert any(" case " in v for v in sent)  # the site says a case was skipped: a category and a keyed hash (F16)
    assert not any("SYN_001_000" in v or "hospital-secret" in v or "/srv/" in v for v in sent)  # no id, file, folder
    # one validation case per site < min-report-cases: no site reports a Dice of one patient
    assert not [r for r in RunLog(tmp_path / "run").records() if "dice" in r]


def test_replies_that_declare_4_tib_are_rejected_and_the_run_finishes(tiny_federation, tmp_path):
    """Issue 29, F5: such a reply ended the run (``finished:failed``, and a resume replayed it). Now it is
    rejected with its reason, the round goes on, and the resumed run goes on from its checkpoint."""
    run_dir = tmp_path / "run"
    _run(tiny_federation, run_dir, huge_header=(1001,), num_server_rounds=1)
    _run(tiny_federation, run_dir, huge_header=(1001,), num_server_rounds=2, resume=True)
    recs = RunLog(run_dir).records()
    trains = [r for r in recs if r.get("event") == "train"]
    assert [r["round"] for r in trains] == [1, 2] and all(sorted(r["sites"]) == ["1", "3", "4"] for r in trains)
    for r in trains:  # the entry named, its declared size, the bytes that follow
        assert (
            len(r["rejected"]) == 1 and ": the header declares (1099511627776,) float32" in r["rejected"][0]["reason"]
        )
    protos = [r for r in recs if r.get("event") == "prototypes-rejected"]
    assert len(protos) == 2 and all(
        "packed buffer: the header declares (1099511627776,) uint8" in p["rejected"][0]["reason"] for p in protos
    )
    assert RunLog(run_dir).done() is not None


def test_a_sites_own_privacy_floor_keeps_its_dice_and_train_loss_home(tiny_federation, tmp_path):
    """Issue 29, F14: site 1's node config says ``min-report-cases = 5`` (it has 1 validation and 2 training
    cases), the run says 1: site 1 sends no Dice and no train loss; the other sites report as before."""
    nodes = [{"partition-id": 0, "min-report-cases": 5}] + [{"partition-id": i} for i in range(1, 4)]
    _, grid = _run(tiny_federation, tmp_path / "run", node_configs=nodes, num_server_rounds=1)
    recs = RunLog(tmp_path / "run").records()
    assert {r["site"] for r in recs if "dice" in r} == {"2", "3", "4"}
    train = next(r for r in recs if r.get("event") == "train")
    assert sorted(train["sites"]) == ["1", "2", "3", "4"] and train["train-loss"] is not None
    for request, reply in grid.log:
        if request.metadata.message_type in ("train", "evaluate") and request.metadata.dst_node_id == 1000:
            sent = {k for rec in reply.content.metric_records.values() for k in rec}
            assert P.TRAIN_LOSS not in sent and not any(k.startswith(("dice", "hd95", "gate")) for k in sent)


def test_the_dice_line_names_modes_only_for_a_gated_head():
    summary = {"oracle": 0.5, "gated": 0.6, "gate-accuracy": 0.75, "sites": {"1": {"oracle": 0.4, "gated": 0.45}}}
    assert dice_line(summary) == "mean Dice oracle 0.500, gated 0.600, gate right on 75% of scans [site 1 0.40/0.45]"
    plain = {"oracle": 0.5, "gated": 0.5, "sites": {"1": {"oracle": 0.4, "gated": 0.4}}}
    assert dice_line(plain, gated=False) == "mean Dice 0.500 [site 1 0.40]"


def test_uharmony_sim_exits_non_zero_when_no_update_was_accepted(tiny_federation, tmp_path, capsys):
    from simulation.runner import main

    overrides = tiny_overrides(tiny_federation, tmp_path / "run", num_server_rounds=1, max_relative_update=1e-9)
    sets = [f"{k.replace('_', '-')}={v}" for k, v in overrides.items() if k != "run_dir"]
    assert main(["--rounds", "1", "--run-dir", str(tmp_path / "run"), "--set", *sets]) == 2
    assert "no round changed the model" in capsys.readouterr().err
