"""The pre-registered design of the confirmatory comparison (docs/preregistration.md says it in words).

Nothing here may change after a confirmatory seed has run, except by a new design name: the seeds, the
methods and their protocol, the conflict cells, the estimands, the size and the targets. The learning rates
are chosen on the pilot seeds (``PILOT_SEEDS``) by the rule in ``choose_lr`` before the confirmatory run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from simulation.synth.scenarios import S3_SITES

NAME = "confirm-2026-12"  # the design; a changed design is a new name
PILOT_SEEDS = (5, 6, 7, 8, 9)  # settings are chosen here
CONFIRM_SEEDS = tuple(range(100, 110))  # never used for a decision
SIDE_DATA_SEED = 100  # the init-seed side study: this federation, ...
SIDE_INIT_SEEDS = (300, 301, 302, 303, 304)  # ... these initial weights and patch draws
# issue 30 item 4 (docs/preregistration.md, "a whole-tumour-only site's contribution"): S3 without this site
ABLATED_SITE, ABLATED_METHODS = "4", ("fedavg", "uharmony")
# issue 30 item 5 ("an unseen site, rotated"): each other S3 site left out in turn, on the first confirmatory seeds
ROTATED_SITES, ROTATION_SEEDS = ("1", "2", "3", "5"), (100, 101, 102)
LRS = (2e-3, 5e-3, 1e-2)  # the learning-rate pilot's grid, the same for every method

# method -> the protocol that is its dataset-free number (docs/preregistration.md)
METHODS = {
    "S3": ("fedavg", "fedprox", "fedbn", "uharmony", "local", "centralized-uharmony"),
    "S0": ("fedavg", "uharmony"),
}
# the modes of a job's per-case records (``jobs.protocol_modes``): "shared" a model with nothing site-specific
# (dataset-free as trained), "own" / "oracle" the site's own entries / own expert (site-aware), "own-gated"
# U-Harmony's own statistics with its gate, "routed" / "mean" the dataset-free protocol (``protocols``)
DATASET_FREE = {
    "fedavg": "shared",
    "fedprox": "shared",
    "centralized-uharmony": "shared",
    "fedbn": "routed",
    "local": "routed",
    "uharmony": "routed",
}
SITE_AWARE = {"fedbn": "own", "local": "own", "uharmony": "oracle", "centralized-uharmony": "oracle"}
SECONDARY_MODES = {"fedbn": ("mean",), "uharmony": ("mean", "own-gated")}
# Issue 30's U-Harmony variants (registered 2026-12-06, before their pilot; docs/preregistration.md
# "Amendment: method variants"): method name -> run-config changes to the product's U-Harmony
VARIANTS = {
    "uharmony-coef": {"site-local": "stats+coefficients"},  # stage 2's coefficients per site (FedBN-like capacity)
    "uharmony-drop": {"expert-dropout": 0.3},  # the shared answer trained on 30 % of the samples alone
    "uharmony-coef-drop": {"site-local": "stats+coefficients", "expert-dropout": 0.3},
}
METHOD_PILOT_SEEDS = (6, 8)  # the variants are chosen here (seed 9 left)
for _v in VARIANTS:
    DATASET_FREE[_v], SITE_AWARE[_v], SECONDARY_MODES[_v] = "routed", "oracle", ("mean", "own-gated")


def method_config(method: str) -> dict:
    """A method's run-config entries: its strategy, and a variant's changes."""
    if method in VARIANTS:
        return {"strategy": "uharmony", **VARIANTS[method]}
    return {"strategy": method}


CONVENTION_REGIONS = {"oedema": "WT", "tc_excludes_necrosis": "TC", "faint_is_et": "ET"}  # C1, C2, C3


def conflict_cells(sites=S3_SITES) -> tuple[tuple[str, str], ...]:
    """(site name, region) cells whose labels a site's convention changes, read off the generator: C1 moves
    the whole tumour, C2 the core, C3 the enhancing tumour; only regions the site annotates count."""
    from uharmony.data.regions import protocol_regions

    cells = []
    for i, site in enumerate(sites):
        annotated = protocol_regions({"full": "brats2021"}.get(site["labels"], site["labels"]))
        for key, region in CONVENTION_REGIONS.items():
            if site["convention"].get(key) and region in annotated:
                cells.append((str(i + 1), region))
    return tuple(sorted(cells))


@dataclass(frozen=True)
class Size:
    """What every job of the design trains and scores at (the bench's default regime, bf16)."""

    cases_per_site: int = 8
    val_cases: int = 20  # held-out validation cases per site (their own random streams; training data unchanged)
    spacing: float = 3.0
    rounds: int = 48
    local_steps: int = 25
    patch_size: int = 24
    filters: str = "8,16,32,64"
    precision: str = "bf16"  # every method alike; fp32 parity is a pilot (docs/preregistration.md)
    # PyTorch's default layout, as every confirmatory seed ran (the product's channels-last default came after
    # seed 103 started; it changes the rounding, so a seed would no longer be the same run)
    channels_last: bool = False
    workers: int = 2
    device: str = "cpu"
    lrs: dict = field(default_factory=dict)  # method -> lr chosen on the pilot seeds (default 5e-3)

    def lr(self, method: str) -> float:
        """The method's piloted rate (a U-Harmony variant: U-Harmony's; before the pilot: 5e-3)."""
        return float(self.lrs.get("uharmony" if method in VARIANTS else method, 5e-3))

    def overrides(self, scenario: str, method: str, seed: int, **extra) -> dict:
        """The run config of one job: the same data, initial weights and budget for every method of a seed."""
        over = {
            "seed": seed,
            **method_config(method),
            "synth-scenario": scenario,
            "synth-kappa": 1.0,
            "synth-cases-per-site": self.cases_per_site,
            "synth-val-cases": self.val_cases,
            "synth-spacing": self.spacing,
            "spacing": self.spacing,
            "num-server-rounds": self.rounds,
            "local-steps": self.local_steps,
            "eval-every": self.rounds,  # scored at the last round only
            "patch-size": self.patch_size,
            "filters": self.filters,
            "precision": self.precision,
            "channels-last": self.channels_last,
            "lr": self.lr(method),
            "device": self.device,
        }
        return {**over, **extra}

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT = Size()
QUICK = replace(  # the pipeline at toy size (tests)
    DEFAULT, cases_per_site=4, val_cases=1, spacing=6.0, rounds=2, local_steps=2, patch_size=16, filters="8,16,32"
)

# margins and targets (DSC points), stated as interval statements (docs/preregistration.md)
TARGETS = {
    "primary_vs_fedavg": 3.0,  # U-Harmony gated - FedAvg >= +3 with the 95 % interval above 0
    "primary_vs_fedbn_router": 1.0,  # U-Harmony gated - (FedBN + router) >= +1 with the interval above 0
    "s0_noninferiority": 1.0,  # S0: lower 95 % bound of U-Harmony - FedAvg >= -1
    "centralized_equivalence": 1.0,  # the 90 % interval of centralized - federated U-Harmony inside +-1
    "floor_gap": 10.0,  # the voxel classifier >= 10 below centralized U-Harmony on S3's conflict-free cells
}
