"""Canaries: one test per Flower internal the project relies on (not Flower's public app API).

A Flower upgrade that moves or changes one of them fails here, by name, instead of deep inside a deployment
test or, worse, in a hospital's daemon. Each test checks the import, the signature we call, and where cheap
the behaviour we depend on. Where each is used is in the test's docstring.
"""

import importlib
import inspect
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest


def params(obj) -> list[str]:
    return list(inspect.signature(obj).parameters)


def test_flower_version_is_one_the_canaries_were_written_for():
    """pyproject.toml states the range (constraints.txt the version); the canaries pass on 1.41 and 1.42."""
    major, minor = (int(x) for x in metadata.version("flwr").split(".")[:2])
    assert (major, minor) >= (1, 41)


def test_supernode_runtime_api_starter_can_be_wrapped():
    """client/guarded_supernode.py replaces ``_start_supernode_http_api`` and rebuilds its app."""
    cli = importlib.import_module("flwr.supernode.cli.flower_supernode")
    assert params(cli._start_supernode_http_api) == ["config", "state_factory"]
    assert callable(cli.flower_supernode)
    from flwr.supernode.main import create_app

    assert {"state_factory", "superexec_auth_secret"} <= set(params(create_app))
    fields = set(getattr(cli.SuperNodeLifespanConfig, "__dataclass_fields__", {})) or set(
        params(cli.SuperNodeLifespanConfig)
    )
    assert {"host", "port", "runtime_ssl_certfile", "runtime_ssl_keyfile", "superexec_auth_secret"} <= fields


def test_superlink_app_can_be_built_from_flowers_own_config():
    """server/operator/guarded_superlink.py builds Flower's SuperLink app from Flower's parser and serves it guarded."""
    cli = importlib.import_module("flwr.superlink.cli.flower_superlink")
    assert params(cli._parse_superlink_lifespan_config) == []
    assert hasattr(cli, "SuperLinkLifespan")
    from flwr.superlink.main import create_app

    assert params(create_app)[:2] == ["config", "superlink_lifespan_class"]
    from flwr.supercore.http_logging import get_uvicorn_log_config

    assert isinstance(get_uvicorn_log_config(20), dict)
    from flwr.supercore import log  # noqa: F401
    from flwr.supercore.logger import console_handler

    assert isinstance(console_handler.level, int)


def test_start_run_request_carries_the_fields_the_policy_reads():
    """server/operator/guarded_superlink.py refuses a start-run that carries a FAB; it reads ``fab``, ``app_spec``."""
    from flwr.proto.control_pb2 import ListNodesRequest, ListRunsRequest, StartRunRequest

    request = StartRunRequest()
    request.fab.hash_str = "ab"
    request.app_spec = "uharmony/app"
    again = StartRunRequest()
    again.ParseFromString(request.SerializeToString())
    assert (again.fab.hash_str, again.app_spec, again.fab.content) == ("ab", "uharmony/app", b"")
    ListNodesRequest(), ListRunsRequest()


def test_message_serde_round_trips_what_the_site_worker_forwards():
    """client/worker.py forwards Flower messages over a Unix socket as Flower's own protobufs (no pickle)."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.common.serde import (
        context_from_proto,
        context_to_proto,
        recorddict_from_proto,
        recorddict_to_proto,
    )

    rd = RecordDict({"config": ConfigRecord({"round": 3, "lr": 0.5})})
    assert recorddict_from_proto(recorddict_to_proto(rd))["config"]["round"] == 3
    ctx = Context(1, 2, {"partition-id": 0}, RecordDict(), {"lr": 0.1})
    back = context_from_proto(context_to_proto(ctx))
    assert (back.run_id, back.node_id, back.node_config["partition-id"]) == (1, 2, 0)
    from flwr.common.serde import message_from_proto, message_to_proto  # noqa: F401

    assert callable(Message)


def test_control_client_helpers_exist():
    """server/operator/control_api.py talks to the SuperLink's Control API with the CLI's own connection helpers."""
    from flwr.cli.flower_config import read_superlink_connection
    from flwr.cli.utils import init_http_client_from_connection
    from flwr.common.serde import run_from_proto

    assert params(read_superlink_connection) == ["connection_name"]
    assert params(init_http_client_from_connection)[0] == "connection"
    assert callable(run_from_proto)


def test_trim_mean_and_record_aggregation_behave_as_the_aggregator_expects():
    """server/aggregation.py: Flower's trimmed mean (robust-aggregation) and its weighted record averages."""
    from flwr.app import ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords, aggregate_metricrecords

    stacked = np.array([[0.0], [1.0], [2.0], [3.0], [100.0]])
    assert trim_mean(stacked, 0.2)[0] == pytest.approx(2.0)  # one value cut at each end
    recs = [
        RecordDict({"a": ArrayRecord([np.full(2, v, dtype=np.float32)]), "m": MetricRecord({"n": n, "x": v})})
        for v, n in ((1.0, 1), (4.0, 3))
    ]
    merged = aggregate_arrayrecords(recs, "n")
    assert next(iter(merged.values())).numpy() == pytest.approx([3.25, 3.25])
    assert aggregate_metricrecords(recs, "n")["x"] == pytest.approx(3.25)


def test_fab_signature_message_is_what_flower_verifies():
    """server/operator/app_registry.py signs published apps with the message Flower's SuperLink verifies."""
    from flwr.supercore.primitives.asymmetric_ed25519 import create_message_to_sign

    a = create_message_to_sign(bytes.fromhex("00" * 32), 1700000000)
    assert isinstance(a, bytes) and a == create_message_to_sign(bytes.fromhex("00" * 32), 1700000000)
    assert a != create_message_to_sign(bytes.fromhex("00" * 32), 1700000001)


def test_rdp_accountant_composes_and_reports_epsilon():
    """server/privacy.py: Flower's RDP accountant (dp-noise-multiplier, dp-max-epsilon)."""
    from flwr.supercore.privacy_accounting import (
        GaussianPrivacyEvent,
        NeighboringRelation,
        PrivacyConfig,
        SamplingMethod,
    )
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    config = PrivacyConfig(
        target_delta=1e-5,
        population_size=1_000_000,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION,
        max_epsilon=5.0,
    )
    acc = RdpAccountant(config)
    event = GaussianPrivacyEvent(1.0, 3, 1_000_000)
    assert acc.num_releases == 0
    acc.compose(event)
    assert acc.num_releases == 1 and acc.get_privacy_spent() is not None
    again = RdpAccountant(config)
    again.load_state_dict(acc.state_dict())
    assert again.num_releases == 1
    assert isinstance(acc.would_exceed(event), bool)


def test_in_process_grid_internals():
    """simulation/inprocess.py and server/simulation_size.py: an in-process grid that Flower's strategies accept."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.superlink.grid import InMemoryGrid

    assert Run.create_empty(7).run_id == 7
    assert isinstance(SUPERLINK_NODE_ID, int)
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    try:
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, SUPERLINK_NODE_ID  # as inprocess does
        assert (TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id) == (1, 7, SUPERLINK_NODE_ID)
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
    assert inspect.isclass(InMemoryGrid)


def test_run_config_parser_and_the_superexec_poll_setting():
    """simulation/main_job.py and server/operator/deployed_runs.py parse `-c` strings as flwr run does;
    client/site_cli.py and server/operator/control_api.py shorten the SuperExec's task poll by its environment
    variable."""
    from flwr.common.config import parse_config_args

    assert parse_config_args(["lr=0.5 strategy='fedavg'"]) == {"lr": 0.5, "strategy": "fedavg"}
    import flwr

    source = Path(flwr.__file__).parent / "supercore" / "superexec" / "run_superexec.py"
    assert "FLWR_SUPEREXEC_TASK_POLL_INTERVAL" in source.read_text()


def test_server_side_clipping_internals_the_keyed_wrapper_reuses():
    """server/aggregation.py's KeyedFixedClipping subclasses DifferentialPrivacyServerSideFixedClipping and calls
    its accounting steps, ``validate_replies`` and the clip/noise helpers of ``flwr.supercore``."""
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping as Wrapper
    from flwr.serverapp.strategy.dp_fixed_clipping import validate_replies
    from flwr.supercore.differential_privacy import add_gaussian_noise_inplace, compute_clip_model_update, compute_stdv

    for name in ("_pop_pending_event", "_validate_uniform_weights", "_compose_release", "configure_train"):
        assert callable(getattr(Wrapper, name)), name
    assert params(validate_replies)[:3] == ["replies", "num_sampled_clients", "strict"]
    update = [np.full(4, 3.0), np.full(4, 4.0)]
    compute_clip_model_update(param1=update, param2=[np.zeros(4), np.zeros(4)], clipping_norm=1.0)
    assert np.isclose(np.sqrt(sum((a**2).sum() for a in update)), 1.0)  # clipped in place, in the caller's list
    assert compute_stdv(2.0, 1.0, 4) == 0.5
    arrays = [np.zeros(1000)]
    add_gaussian_noise_inplace(arrays, 0.5)
    assert 0.4 < arrays[0].std() < 0.6


def test_supernode_connection_loop_waits_can_be_shortened():
    """client/guarded_supernode.py replaces the ``time`` of Flower's connection loop (``sleep(3)`` after an
    empty pull); the loop must still call ``time.sleep`` through its module's ``time``."""
    import time

    from client.guarded_supernode import FLOWER_IDLE_SLEEP

    loop = importlib.import_module("flwr.supernode.start_client_internal")
    assert loop.time is time
    assert FLOWER_IDLE_SLEEP in inspect.getsource(loop.start_client_internal)
    assert "time.sleep(0.5)" in inspect.getsource(loop._push_messages)
