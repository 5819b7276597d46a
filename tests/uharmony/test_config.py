import dataclasses
import tomllib
from pathlib import Path

import pytest

from uharmony.federation.config import RunConfig, parse_assignments


def test_pyproject_run_config_matches_the_typed_defaults():
    toml = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    cfg_toml = toml["tool"]["flwr"]["app"]["config"]
    parsed = RunConfig.from_flwr(cfg_toml)
    assert parsed == RunConfig()
    names = {f.name.replace("_", "-") for f in dataclasses.fields(RunConfig) if f.name != "extra"}
    assert set(cfg_toml) == names


@pytest.mark.parametrize(
    "entry, match",
    [
        ({"num-rounds": 3}, "unknown key 'num-rounds'"),
        ({"local-steps": "many"}, "'local-steps' must be int"),
        ({"strategy": "fedsgd"}, "'strategy'.*did you mean"),
        ({"resume": "maybe"}, "'resume' must be bool"),
        ({"device": "tpu"}, "'device'"),
        ({"patch-size": 30}, "multiple of 8"),
        ({"norm": "layer"}, "'norm'"),
        ({"dp-noise-multiplier": 0.5}, "differential privacy works with fedavg"),
        ({"synth-val-cases": -1}, "'synth-val-cases' must be >= 0"),
        ({"residual-weight-decay": -0.5}, "'residual-weight-decay' must be >= 0, or -1"),
    ],
)
def test_bad_run_config_names_the_key(entry, match):
    with pytest.raises(ValueError, match=match):
        RunConfig.from_flwr(entry)


def test_strategy_table_decides_model_defaults():
    assert RunConfig.from_flwr({"strategy": "fedavg"}).model_kwargs()["norm"] == "instance"
    assert RunConfig.from_flwr({"strategy": "uharmony"}).model_kwargs()["head"] == "gated"
    assert RunConfig.from_flwr({"strategy": "fedbn", "norm": "batch"}).model_norm == "batch"
    assert RunConfig.from_flwr({"filters": "8,16,32"}).filters == (8, 16, 32)


def test_run_config_round_trips_through_flower_keys():
    cfg = RunConfig.from_flwr({"strategy": "fedprox", "filters": "8,16,32", "resume": "true", "lr": 0.01})
    assert RunConfig.from_flwr(cfg.to_flwr()) == cfg


def test_one_parser_for_set_options():
    assert parse_assignments(["lr=0.01", " seed = 3 "]) == {"lr": "0.01", "seed": "3"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_assignments(["lr"])
