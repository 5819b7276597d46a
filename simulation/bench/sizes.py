"""Benchmark sizes: the default (about an hour on 2 CPU cores) and ``--quick`` (a few minutes, tested)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

METHODS = ("local", "centralized", "fedavg", "fedprox", "fedbn", "uharmony")
UNSEEN_METHODS = ("fedavg", "uharmony")
# U-Harmony variants, each differing from the default in one setting (docs/method.md explains them)
ABLATIONS = {
    "K=2": {"poly-order": 2},
    "site-local=stats+coefficients": {"site-local": "stats+coefficients"},
    "harmonized layers=first half": {"harmonize-layers": "half"},
    "harmonized layers=none (InstanceNorm + gated head)": {"harmonize-layers": 0},
}


@dataclass(frozen=True)
class BenchSize:
    name: str
    seeds: tuple[int, ...]
    sites: int
    cases_per_site: int
    spacing: float
    rounds: int
    local_steps: int
    eval_every: int
    patch_size: int
    filters: str
    ablation_seeds: tuple[int, ...]
    held_out: int  # partition id left out of training in the unseen-site study
    flower_rounds: int
    scale_sites: int  # FeTS partitioning_1 has 23 institutions
    scale_cases: int
    scale_spacing: float
    scale_steps: int

    def base_overrides(self, seed: int) -> dict:
        """Run-config entries shared by every training job of ``seed`` (same data, budget, model)."""
        return {
            "seed": seed,
            "synth-sites": self.sites,
            "synth-cases-per-site": self.cases_per_site,
            "synth-spacing": self.spacing,
            "spacing": self.spacing,
            "num-server-rounds": self.rounds,
            "local-steps": self.local_steps,
            "eval-every": self.eval_every,
            "patch-size": self.patch_size,
            "filters": self.filters,
        }

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT = BenchSize(
    name="default",
    seeds=(0, 1, 2),
    sites=4,
    cases_per_site=8,
    spacing=3.0,
    rounds=6,
    local_steps=15,
    eval_every=2,
    patch_size=32,
    filters="16,32,64,128",
    ablation_seeds=(0,),
    held_out=0,
    flower_rounds=4,
    scale_sites=23,
    scale_cases=2,
    scale_spacing=3.0,
    scale_steps=5,
)
QUICK = BenchSize(
    name="quick",
    seeds=(0, 1),
    sites=3,
    cases_per_site=4,
    spacing=6.0,
    rounds=2,
    local_steps=2,
    eval_every=1,
    patch_size=16,
    filters="8,16,32",
    ablation_seeds=(0,),
    held_out=0,
    flower_rounds=3,
    scale_sites=23,
    scale_cases=2,
    scale_spacing=6.0,
    scale_steps=1,
)
SIZES = {"default": DEFAULT, "quick": QUICK}
