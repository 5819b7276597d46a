"""The step benchmark: the product's step timed, its FLOPs counted, the peak it is compared with derived."""

import json

import pytest

import simulation.step_benchmark as sb


@pytest.mark.parametrize(
    "flags, precision, per_cycle",
    [
        ({"avx512f", "avx2", "fma"}, "fp32", 64),
        ({"avx2", "fma"}, "fp32", 32),
        ({"avx512f", "amx_bf16"}, "bf16", 1024),
        ({"avx512f", "avx512_bf16"}, "bf16", 128),
        ({"avx2", "fma"}, "bf16", 32),  # emulated: no faster than fp32
    ],
)
def test_the_vendor_peak_follows_the_cpu_flags_and_clock(monkeypatch, flags, precision, per_cycle):
    monkeypatch.setattr(sb, "_cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(sb, "cpu_clock_ghz", lambda: 2.0)
    peak, how = sb.vendor_peak("cpu", precision)
    assert peak == pytest.approx(2.0 * per_cycle)
    assert "2.00 GHz" in how
    assert sb.vendor_peak("cuda", precision)[0] is None


def test_unknown_clock_gives_no_vendor_peak(monkeypatch):
    monkeypatch.setattr(sb, "cpu_clock_ghz", lambda: None)
    assert sb.vendor_peak("cpu", "fp32") == (None, "clock unknown")


def test_the_benchmark_times_the_product_step_and_writes_its_records(tmp_path):
    argv = ["--patch", "16", "--steps", "1", "--repeats", "2", "--norms", "uharmony", "instance"]
    argv += ["--precisions", "fp32", "--layouts", "contiguous", "channels-last", "--out", str(tmp_path)]
    rows = sb.main(argv)
    assert len(rows) == 4
    for r in rows:
        assert r["patch"] == 16 and r["step_s"] > 0 and len(r["step_s_all"]) == 2
        assert r["gflop_per_step"] > 0.05  # a DynUNet step at 16³ is ~0.6 GFLOP: convolutions counted
        assert r["gflops"] == pytest.approx(r["gflop_per_step"] / r["step_s"], rel=0.01)
        assert r["voxels_per_s"] == pytest.approx(2 * 16**3 / r["step_s"], rel=0.01)
        assert r["matmul_gflops"] > 0 and r["machine"]["cpu"]
    by = {(r["norm"], r["layout"]): r["gflop_per_step"] for r in rows}
    assert by["uharmony", "contiguous"] == by["uharmony", "channels-last"]  # the layout changes no arithmetic
    assert by["uharmony", "contiguous"] > by["instance", "contiguous"]  # the gated head's experts add some
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert [json.loads(x)["layout"] for x in lines] == [r["layout"] for r in rows]
    assert (tmp_path / "step_benchmark.png").stat().st_size > 10_000
    assert len(sb.speedup_rows(rows)) == 4


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        sb.parse(["--patch", "20"])
    with pytest.raises(SystemExit):
        sb.parse(["--steps", "0"])
