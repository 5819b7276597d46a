"""The profile a joining SuperNode declares: accepted when well formed, else refused with the key named."""

import secrets
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_ssh_public_key
from flwr.proto.node_pb2 import NodeInfo

from client.client_app import make_app
from client.keys import generate_node_key
from server.admission import BadProfile, check_regions, parse_profile
from server.registry import SiteRegistry
from server.rounds import run_server
from simulation.inprocess import InProcessGrid
from tests.conftest import tiny_overrides
from uharmony import protocol as P
from uharmony.federation.config import RunConfig
from uharmony.records.runlog import RunLog

GOOD = {
    P.SITE_ID: "hospital-d",
    P.DOMAIN_ID: 3,
    P.MODALITIES: "t1,t1ce,t2,flair,adc",
    P.REGIONS: "ET,TC,WT,RC",
    P.TRAIN_CASES: 12,
    P.READY: True,
}


def test_a_good_profile_becomes_plain_python():
    assert parse_profile(GOOD) == {
        "site": "hospital-d",
        "domain": 3,
        "train_cases": 12,
        "ready": True,
        "labelled": True,
        "modalities": ["t1", "t1ce", "t2", "flair", "adc"],
        "regions": ["ET", "TC", "WT", "RC"],
    }
    assert parse_profile({**GOOD, P.READY: False})["ready"] is False


def test_a_label_free_profile_declares_no_regions():
    """A hospital without annotations says so; it may not claim regions (nothing label-derived in its profile)."""
    free = parse_profile({**GOOD, P.LABELLED: False, P.REGIONS: ""})
    assert free["labelled"] is False and free["regions"] == []
    with pytest.raises(BadProfile, match="must be empty for a label-free site"):
        parse_profile({**GOOD, P.LABELLED: False})
    with pytest.raises(BadProfile, match="labelled"):
        parse_profile({**GOOD, P.LABELLED: "no"})


@pytest.mark.parametrize(
    "change, key",
    [
        ({P.SITE_ID: ""}, P.SITE_ID),
        ({P.DOMAIN_ID: -1}, P.DOMAIN_ID),
        ({P.DOMAIN_ID: 10_000}, P.DOMAIN_ID),  # one site may not make the head grow without bound
        ({P.DOMAIN_ID: "3"}, P.DOMAIN_ID),
        ({P.TRAIN_CASES: -2}, P.TRAIN_CASES),
        ({P.MODALITIES: ""}, P.MODALITIES),
        ({P.MODALITIES: "t1,t1"}, P.MODALITIES),
        ({P.MODALITIES: "T1,../x"}, P.MODALITIES),
        ({P.MODALITIES: ",".join(f"m{i}" for i in range(40))}, P.MODALITIES),
        ({P.REGIONS: "ET,dice-wt"}, P.REGIONS),  # would break the metric keys
        ({P.REGIONS: None}, P.REGIONS),
    ],
)
def test_bad_profiles_are_refused_naming_the_key(change, key):
    with pytest.raises(BadProfile, match=key):
        parse_profile({**GOOD, **change})


@pytest.mark.parametrize("site", ["x" * 100_000, "evil\nsite", "\x1b[31mred", "../etc", ""])
def test_a_site_id_is_a_short_plain_name(site):
    with pytest.raises(BadProfile, match=P.SITE_ID):
        parse_profile({**GOOD, P.SITE_ID: site})


def test_a_region_that_differs_only_by_case_is_refused():
    with pytest.raises(BadProfile, match="differ only by case"):
        check_regions({"regions": ["et", "RC"]}, ["ET", "TC", "WT"])  # would overwrite the real ET's Dice
    check_regions({"regions": ["ET", "RC"]}, ["ET", "TC", "WT"])


def test_the_declared_case_count_is_bounded():
    with pytest.raises(BadProfile, match=P.TRAIN_CASES):
        parse_profile({**GOOD, P.TRAIN_CASES: 10**12})


class KeyedGrid(InProcessGrid):
    """Reports each node's authenticated public key, as the SuperLink's grid does; some nodes never answer."""

    def __init__(self, *args, keys: dict, silent=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.keys, self.silent = keys, set(silent)

    def get_nodes(self):
        return [NodeInfo(node_id=n, public_key=self.keys.get(n, b"")) for n in self.get_node_ids()]

    def push_messages(self, messages):
        messages = list(messages)
        kept = [m for m in messages if m.metadata.dst_node_id not in self.silent]
        super().push_messages(kept)
        return [m.metadata.message_id for m in kept]


def _pem(pub: Path) -> bytes:
    return load_ssh_public_key(pub.read_bytes()).public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def test_only_registered_keys_join_and_as_the_site_and_domain_they_were_registered_for(tiny_federation, tmp_path):
    pubs = [generate_node_key(tmp_path / f"k{i}")[1] for i in range(4)]
    registry = SiteRegistry(tmp_path / "registry.json")
    registry.add("1", 0, pubs[0].read_text())  # node 1000 is simulated site 1, domain 0: admitted
    registry.add("2", 5, pubs[1].read_text())  # node 1001 is site 2 but says domain 1: refused
    registry.add("3", 2, pubs[2].read_text())  # node 1002 uses site 3's key but says it is site 4: refused
    over = {
        k.replace("_", "-"): v
        for k, v in tiny_overrides(
            tiny_federation, tmp_path / "run", num_server_rounds=1, site_registry=str(tmp_path / "registry.json")
        ).items()
    }
    keys = {1000: _pem(pubs[0]), 1001: _pem(pubs[1]), 1002: _pem(pubs[2]), 1003: _pem(pubs[3])}
    nodes = [{"partition-id": 0}, {"partition-id": 1}, {"partition-id": 3}, {"partition-id": 2}]
    run_server(KeyedGrid(make_app(), nodes, over, keys=keys), over)
    recs = RunLog(tmp_path / "run").records()
    assert [r["site"] for r in recs if r.get("event") == "join"] == ["1"]
    refused = {r["node"]: r["reason"] for r in recs if r.get("event") in ("join-refused", "join-error")}
    assert "not registered for any site" in refused[1003]  # a key nobody registered
    assert "registered for site '2' (domain 5)" in refused[1001] and "domain 1" in refused[1001]
    assert "registered for site '3'" in refused[1002] and "'4'" in refused[1002]
    assert next(r for r in recs if r.get("event") == "train")["sites"] == ["1"]


def test_a_node_that_never_answers_is_refused_after_three_rounds(tiny_federation, tmp_path):
    over = {
        k.replace("_", "-"): v
        for k, v in tiny_overrides(tiny_federation, tmp_path / "run", num_server_rounds=4, profile_timeout=1.0).items()
    }
    nodes = [{"partition-id": i} for i in range(4)]
    run_server(KeyedGrid(make_app(), nodes, over, keys={}, silent={1003}), over)
    errors = [r for r in RunLog(tmp_path / "run").records() if r.get("event") == "join-error"]
    assert [e["round"] for e in errors] == [1, 2, 3] and "not asked again" in errors[-1]["reason"]
    assert "no answer to the profile query within 1 s" in errors[0]["reason"]


def test_a_run_without_a_registry_on_nodes_with_keys_is_refused(tiny_federation, tmp_path):
    """Issue 29, F15: without ``site-registry`` any node was admitted as whatever site and domain its profile
    named, silently, even where every node authenticates with a key (a plain `flwr run` of the published app).
    Now such a run is refused before any round, naming the keys, unless allow-unregistered is set."""
    from server.admission import UnboundRun
    from server.grids import PackingGrid
    from server.rounds import RoundEngine
    from uharmony.federation.config import RunConfig

    pubs = [generate_node_key(tmp_path / f"k{i}")[1] for i in range(2)]
    over = {
        k.replace("_", "-"): v
        for k, v in tiny_overrides(tiny_federation, tmp_path / "run", num_server_rounds=1).items()
    }
    nodes = [{"partition-id": 0}, {"partition-id": 1}]
    grid = KeyedGrid(make_app(), nodes, over, keys={1000: _pem(pubs[0]), 1001: _pem(pubs[1])})
    with pytest.raises(UnboundRun, match=r"'site-registry' is empty, but 2 node\(s\) authenticate.*allow-unregistered"):
        RoundEngine(PackingGrid(grid), RunConfig.from_flwr(over))
    RoundEngine(PackingGrid(grid), RunConfig.from_flwr({**over, "allow-unregistered": True}))  # said explicitly
    RoundEngine(PackingGrid(KeyedGrid(make_app(), nodes, over, keys={})), RunConfig.from_flwr(over))  # no keys
    simulated = {1000: secrets.token_bytes(32), 1001: secrets.token_bytes(32)}  # what Flower's simulation gives
    RoundEngine(PackingGrid(KeyedGrid(make_app(), nodes, over, keys=simulated)), RunConfig.from_flwr(over))


def test_a_declared_case_count_above_the_registered_cap_is_refused(tiny_federation, tmp_path):
    """Issue 29, F6: the coordinator bounds a site's weight when it registers its key (``--max-cases``)."""
    pubs = [generate_node_key(tmp_path / f"k{i}")[1] for i in range(2)]
    registry = SiteRegistry(tmp_path / "registry.json")
    registry.add("1", 0, pubs[0].read_text(), max_cases=2)  # the tiny site trains on 2 cases: admitted
    registry.add("2", 1, pubs[1].read_text(), max_cases=1)  # declares 2: refused
    assert SiteRegistry(tmp_path / "registry.json").sites["2"].max_cases == 1  # kept in registry.json
    over = {
        k.replace("_", "-"): v
        for k, v in tiny_overrides(
            tiny_federation, tmp_path / "run", num_server_rounds=1, site_registry=str(tmp_path / "registry.json")
        ).items()
    }
    keys = {1000: _pem(pubs[0]), 1001: _pem(pubs[1])}
    run_server(KeyedGrid(make_app(), [{"partition-id": 0}, {"partition-id": 1}], over, keys=keys), over)
    recs = RunLog(tmp_path / "run").records()
    assert [r["site"] for r in recs if r.get("event") == "join"] == ["1"]
    refused = [r["reason"] for r in recs if r.get("event") == "join-error"]
    assert "declares 2 training cases, but the key of site '2' is registered for at most 1" in refused[0]


def test_min_sites_counts_the_sites_that_train_in_the_phase():
    """CI saw a TLS run start segmenting with two labelled sites because a label-free one had connected first:
    before round 1 the engine asks again until min-sites of the ready sites train in this phase."""
    from types import SimpleNamespace

    from server.joins import enough_trainers
    from server.phase import Phase
    from server.pretraining import Pretraining

    free = (3, {"site": "s5", "domain": 0, "labelled": False})
    later = [[], [(2, {"site": "s2", "domain": 1, "labelled": True})], []]
    asked = []

    def candidates(grid, rnd):
        asked.append(rnd)
        return later.pop(0), [{"event": "join-pending", "node": 2, "site": "s2"}] if not asked[1:] else []

    cfg = RunConfig(min_sites=2, round_timeout=30.0)
    engine = SimpleNamespace(cfg=cfg, grid=None, phase=Phase(cfg), admission=SimpleNamespace(candidates=candidates))
    first = (1, {"site": "s1", "domain": 0, "labelled": True})
    ready, events = enough_trainers(engine, 1, [free, first], [{"event": "join-pending", "node": 2}], poll=0.01)
    assert [n for n, _ in ready] == [1, 3, 2] and len(asked) == 2  # s5 did not count; s2 was waited for (sorted)
    assert events == [{"event": "join-pending", "node": 2, "site": "s2"}]
    engine.phase = Pretraining(RunConfig(min_sites=2, phase="pretrain", round_timeout=30.0))
    engine.cfg = engine.phase.cfg
    ready, _ = enough_trainers(engine, 1, [free, first], [], poll=0.01)
    assert len(ready) == 2 and len(asked) == 2  # in phase P the label-free site trains: no wait
    engine.cfg = RunConfig(min_sites=5, round_timeout=0.05)
    engine.phase, later[:] = Phase(engine.cfg), [[]] * 100
    ready, _ = enough_trainers(engine, 1, [free, first], [], poll=0.01)  # never enough: it goes on at the timeout
    assert len(ready) == 2
