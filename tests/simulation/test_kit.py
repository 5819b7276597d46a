"""The evidence kit: a new study is its own jobs and page on the one pool, ledger, statistics and page helpers."""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from simulation.kit.page import ms
from simulation.kit.pool import recorder, run_jobs
from simulation.kit.stats import paired
from uharmony.files import read_jsonl


@dataclass(frozen=True)
class ToySize:
    workers: int = 1


def toy_job(size, call: tuple, out: Path) -> dict:
    """A study's job (module-level, as the pool's worker processes need): a score from its seed."""
    kind, method, seed = call
    return {"kind": kind, "method": method, "seed": seed, "score": 0.5 + 0.1 * seed + (0.05 if method == "b" else 0)}


def toy_study(out: Path) -> list[dict]:
    """A whole toy study in a few lines: plan, resume from the ledger, run, read back."""
    jsonl = out / "results.jsonl"
    plan = [(f"toy/{m}/seed{s}", ("toy", m, s)) for m in ("a", "b") for s in range(3)]
    done = {r["job"] for r in read_jsonl(jsonl)}
    todo = [(k, c) for k, c in plan if k not in done]
    run_jobs(ToySize(), todo, out, recorder(jsonl, len(todo), "toy"), job=toy_job, label="toy")
    return read_jsonl(jsonl)


def test_a_new_study_runs_on_the_kit_and_resumes_from_its_ledger(tmp_path, capsys):
    records = toy_study(tmp_path)
    assert len(records) == 6 and all(r["job_seconds"] >= 0 for r in records)
    assert "[toy] 6/6" in capsys.readouterr().out
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    (tmp_path / "results.jsonl").write_text("\n".join(lines[:4]) + "\n")  # killed after four jobs
    records = toy_study(tmp_path)
    assert sorted(r["job"] for r in records) == sorted(json.loads(x)["job"] for x in lines)  # the other two ran
    by = {m: {r["seed"]: r["score"] for r in records if r["method"] == m} for m in ("a", "b")}
    d = paired(by["b"], by["a"])
    assert d.n == 3 and abs(d.mean - 0.05) < 1e-12
    assert ms(list(by["a"].values())) == "60.0 ± 10.0"


def test_signed_rank_beside_the_t_interval():
    from scipy.stats import wilcoxon

    from simulation.kit.stats import signed_rank

    a = {s: 0.5 + 0.03 * s for s in range(5)}
    b = dict.fromkeys(range(5), 0.5)
    b[3] = 0.9  # one seed against the others
    got = signed_rank(a, b)
    diffs = [a[s] - b[s] for s in range(5)]
    assert got["n"] == 4 and got["p"] == pytest.approx(wilcoxon(diffs).pvalue)  # seed 0's zero is not ranked
    assert got["median"] == pytest.approx(sorted(diffs)[2])
    assert signed_rank(b, b) is None and signed_rank({0: 1.0}, {0: 0.0}) is None
