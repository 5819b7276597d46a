"""Typed run configuration, parsed once from Flower's ``[tool.flwr.app.config]`` (kebab-case keys)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

from uharmony.checks import one_of
from uharmony.federation.strategies import STRATEGIES, Strategy, get_strategy
from uharmony.vocabulary import (
    FINETUNE,
    GATE_DESCRIPTORS,
    GATE_UNSEEN,
    NORMS,
    PHASES,
    PRESENCE_POOLS,
    PRETEXTS,
    SCENARIOS,
    TUMOUR_TYPES,
)

_PHASES = list(PHASES)  # the vocabulary's, and any a server registers (server.phase.register_phase)


def accept_phase(name: str) -> None:
    """Let run configs name ``name`` as their ``phase`` (a phase registered with the round engine)."""
    if name not in _PHASES:
        _PHASES.append(name)


def forget_phase(name: str) -> None:
    """Undo ``accept_phase`` for a name the vocabulary does not hold."""
    if name in _PHASES and name not in PHASES:
        _PHASES.remove(name)


@dataclass(frozen=True)
class RunConfig:
    num_server_rounds: int = 16  # the main job within 10 min on the slower 2-core kind; the bench runs 48
    strategy: str = "uharmony"
    arch: str = "dynunet"
    norm: str = "auto"  # auto: the strategy's (uharmony.federation.strategies)
    poly_order: int = 1  # K=1 by our ablation: same Dice as K=2, step time within 1.10x of InstanceNorm
    site_local: str = "stats"
    restore: str = "ratio"  # ratio | affine | none: how site statistics re-enter (docs/method.md)
    harmonize_layers: int = -1  # -1: all normalization layers
    head_experts: str = "residual"  # gated head: shared conv + zero-initialized residual per domain | separate
    head_gate: str = "scan"  # gated head: one decision per scan (calibrated distance) | window (per window)
    gate_confidence: float = 0.5  # scan gate: below this best weight the shared answer alone is used
    gate_descriptor: str = (
        "features+acquisition"  # scan gate: head-input features + the scan's acquisition fingerprint | features
    )
    gate_unseen: str = "nearest"  # scan gate: a scan beyond every domain's reach: nearest domain | shared answer
    filters: tuple[int, ...] = (8, 16, 32, 64)
    local_steps: int = 25
    batch_size: int = 2
    patch_size: int = 24
    lr: float = 5e-3
    lr_schedule: str = "cosine"  # cosine: from lr to 5 % of it at the last round | constant
    optimizer: str = "adamw"  # adamw (decoupled weight decay) | adam (L2 in the gradient) | sgd (nnU-Net's)
    weight_decay: float = 1e-2
    residual_weight_decay: float = -1.0  # a residual gated head's experts (pulls them to the shared answer); -1: same
    expert_dropout: float = 0.0  # residual gated head: share of training samples scored by the shared answer alone
    keep_optimizer_state: bool = True  # each site keeps its optimizer's moments across rounds (site state folder)
    neg_ratio: float = 1.0  # background patches per lesion patch
    proximal_mu: float = 0.01
    eval_every: int = 16
    data_root: str = ""  # a federation manifest's folder; empty: the embedded synthetic federation
    synth_sites: int = 4
    synth_cases_per_site: int = 8
    synth_val_cases: int = 0  # held-out validation cases per site beyond those (the split of the others unchanged)
    synth_spacing: float = 3.0
    synth_join_sites: int = 0  # the last N synthetic sites are post-operative (+ADC, +resection cavity)
    synth_scenario: str = "S2"  # S0 ... S4 (docs/scenarios.md); "": the development federation (synth-sites)
    synth_kappa: float = 1.0  # S2: strength of the label-convention conflicts (0: none)
    synth_reference: bool = False  # also write every scan without its noise (UMS-Rep: denoising scored against it)
    spacing: float = 3.0
    seed: int = 0
    data_seed: int = -1  # the federation's cases and their split (-1: seed)
    init_seed: int = -1  # the initial weights and the sampling of training patches (-1: seed)
    precision: str = "fp32"  # fp32 | bf16 (autocast around the forward pass) | auto (bf16 where the device has it)
    channels_last: bool = True  # convolutions on channels-last tensors in a step (faster on CPU; uharmony.precision)
    device: str = "auto"  # auto: cuda when available, else cpu
    run_dir: str = "runs/latest"
    resume: bool = False
    run_id: str = ""  # "": a new id per run (a resumed run keeps its checkpoint's; a given one must match it)
    tensorboard: bool = False  # also write TensorBoard event files (needs uharmony-fl[track])
    min_sites: int = 1
    num_domains: int = 0  # 0: one per domain among the sites admitted in the first round
    round_timeout: float = 3600.0
    profile_timeout: float = 120.0  # seconds a node has to answer the profile query (3 misses: refused)
    update_norm_factor: float = 10.0
    max_relative_update: float = 10.0  # reject ||w_site - w_global|| > this x ||w_global|| (works with 1-2 replies)
    max_weight_ratio: float = 3.0  # a reply weighs at most this x the median weight of the others it is averaged with
    robust_aggregation: str = ""  # "": weighted mean | median | trimmed-mean (Flower's, beta 0.2): unweighted
    straggler_seconds: float = 0.0  # grace for late sites after a quorum (0: the quorum's time, >= 60 s; -1: none)
    min_report_cases: int = 1  # a site reports evaluation metrics only over at least this many cases
    site_registry: str = ""  # coordinator: registry.json binding node keys to sites and domains ("" = no binding)
    allow_unregistered: bool = False  # run without site-registry although the nodes authenticate with keys
    model_signing_key: str = ""  # coordinator: Ed25519 key that signs the released models' manifests
    dp_noise_multiplier: float = 0.0  # > 0: Flower's server-side fixed-clipping DP wrapper
    dp_clipping_norm: float = 1.0
    dp_delta: float = 1e-5  # the delta the privacy spent (epsilon) is reported at
    dp_max_epsilon: float = 0.0  # > 0: stop the run before a round would spend more than this
    extend_on_join: bool = True  # a joining site with a new modality/class/domain extends the model
    join_schedule: str = ""  # simulation only: "SITE@ROUND,..." = that site's SuperNode comes online then
    # UMS-Rep (uharmony.umsrep, docs/umsrep.md)
    phase: str = "segment"  # segment | pretrain (phase P: label-free denoising on every site, writes umsrep.pt)
    umsrep: str = ""  # phase F: start the trunk from this phase-P artifact (umsrep.pt); "": from scratch
    finetune: str = "full"  # phase F plan (uharmony.umsrep.plans): full | joint | alternating | independent | ...
    # extra task heads beside segmentation, comma-separated: "" | "presence" (WT/TC/ET present in the patch) |
    # "tumour-type" (the scan's tumour type among 'tumour-types'; cases give theirs in types.csv) | both
    tasks: str = ""
    tumour_types: str = ",".join(TUMOUR_TYPES)  # the type head's classes, in order (every site the same)
    presence_pool: str = "multiscale"  # what the presence head reads: multiscale (every encoder scale) | bottleneck
    task_weight: float = 0.5  # joint plan: weight of each task head's loss (presence, tumour type) beside seg's
    alternate_batches: int = 5  # alternating plan: batches per task before switching
    noise: str = "rician"  # phase P corruption: rician (MRI magnitude) | gaussian (the paper's option)
    noise_levels: tuple[float, ...] = (0.1, 0.2, 0.3)  # sigma in units of the brain's intensity SD
    # phase P task: denoise | denoise+inpaint (cubes blanked in half the batches) | denoise+skipdrop (top skips
    # zeroed at random)
    pretext: str = "denoise"
    plateau_patience: int = 2  # phase P: evaluations without a 1 % gain before the rate is halved
    stop_patience: int = 4  # phase P: evaluations without a 1 % gain before the phase stops early
    calibration_batches: int = 8  # batches of clean scans that re-estimate a site's harmonization statistics
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_flwr(cls, run_config: dict) -> RunConfig:
        """Parse Flower's run config; unknown keys or wrong types raise ValueError naming the key."""
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "extra"}
        values = {}
        for key, raw in dict(run_config).items():
            name = key.replace("-", "_")
            if name not in fields:
                raise ValueError(
                    f"run config: unknown key {key!r} (known: {sorted(k.replace('_', '-') for k in fields)})"
                )
            values[name] = _convert(key, raw, fields[name].default)
        cfg = cls(**values)
        cfg.check()
        return cfg

    def check(self) -> None:
        one_of("run config: 'strategy'", self.strategy, STRATEGIES)
        one_of("run config: 'norm'", self.norm, ("auto", *NORMS))
        one_of("run config: 'optimizer'", self.optimizer, ("adamw", "adam", "sgd"))
        one_of("run config: 'lr-schedule'", self.lr_schedule, ("cosine", "constant"))
        one_of("run config: 'head-experts'", self.head_experts, ("residual", "separate"))
        one_of("run config: 'head-gate'", self.head_gate, ("scan", "window"))
        one_of("run config: 'gate-descriptor'", self.gate_descriptor, GATE_DESCRIPTORS)
        one_of("run config: 'gate-unseen'", self.gate_unseen, GATE_UNSEEN)
        if not 0.0 <= self.gate_confidence < 1.0:
            raise ValueError("run config: 'gate-confidence' must be in [0, 1)")
        one_of("run config: 'device'", self.device, ("auto", "cpu", "cuda"))
        one_of("run config: 'precision'", self.precision, ("fp32", "bf16", "auto"))
        if self.data_seed < -1 or self.init_seed < -1:
            raise ValueError("run config: 'data-seed' and 'init-seed' must be >= 0, or -1 (the 'seed')")
        for key in ("num_server_rounds", "local_steps", "batch_size", "patch_size", "eval_every", "min_report_cases"):
            if getattr(self, key) < 1:
                raise ValueError(f"run config: {key.replace('_', '-')!r} must be >= 1")
        if self.neg_ratio < 0:
            raise ValueError("run config: 'neg-ratio' must be >= 0")
        if self.dp_noise_multiplier < 0 or self.dp_clipping_norm <= 0:
            raise ValueError("run config: 'dp-noise-multiplier' must be >= 0 and 'dp-clipping-norm' > 0")
        if not 0 < self.dp_delta < 1 or self.dp_max_epsilon < 0:
            raise ValueError("run config: 'dp-delta' must be in (0, 1) and 'dp-max-epsilon' >= 0")
        if self.profile_timeout <= 0 or self.max_relative_update < 0:
            raise ValueError("run config: 'profile-timeout' must be > 0 and 'max-relative-update' >= 0")
        if self.max_weight_ratio != 0 and self.max_weight_ratio < 1:
            raise ValueError("run config: 'max-weight-ratio' must be >= 1, or 0 (no cap)")
        one_of("run config: 'robust-aggregation'", self.robust_aggregation, ("", "median", "trimmed-mean"))
        if self.robust_aggregation and self.dp_noise_multiplier > 0:
            raise ValueError(
                "run config: 'robust-aggregation' cannot be used with differential privacy (its noise is calibrated "
                "to the mean of the clipped updates)"
            )
        if self.dp_noise_multiplier > 0 and not self.strategy_spec.dp:
            dp = sorted(n for n, s in STRATEGIES.items() if s.dp)
            raise ValueError(
                f"run config: differential privacy works with {', '.join(dp)}, not {self.strategy!r} "
                "(Flower's DP wrapper needs identical update keys from every site)"
            )
        if self.patch_size % 8:
            raise ValueError("run config: 'patch-size' must be a multiple of 8")
        if self.synth_join_sites < 0 or self.synth_join_sites >= self.synth_sites:
            raise ValueError("run config: 'synth-join-sites' must be in [0, synth-sites)")
        if self.synth_scenario:
            one_of("run config: 'synth-scenario'", self.synth_scenario, SCENARIOS)
            if self.synth_join_sites:
                raise ValueError(
                    "run config: 'synth-join-sites' makes the development federation: set synth-scenario='' with it"
                )
        one_of("run config: 'synth-scenario'", self.synth_scenario, ("", *SCENARIOS))
        if not 0.0 <= self.synth_kappa <= 2.0:
            raise ValueError("run config: 'synth-kappa' must be in [0, 2]")
        if not 0.0 <= self.expert_dropout < 1.0:
            raise ValueError("run config: 'expert-dropout' must be in [0, 1)")
        if self.residual_weight_decay < 0 and self.residual_weight_decay != -1:
            raise ValueError("run config: 'residual-weight-decay' must be >= 0, or -1 (the same as 'weight-decay')")
        if self.synth_val_cases < 0:
            raise ValueError("run config: 'synth-val-cases' must be >= 0")
        self.join_rounds()  # checks the format
        self._check_umsrep()

    def _check_umsrep(self) -> None:
        one_of("run config: 'phase'", self.phase, tuple(_PHASES))
        one_of("run config: 'finetune'", self.finetune, FINETUNE)
        for task in self.task_list:
            one_of("run config: 'tasks'", task, ("presence", "tumour-type"))
        if "tumour-type" in self.task_list:
            from uharmony.data.case_types import check_type

            types = self.type_list
            for t in types:
                check_type(t, "run config", "'tumour-types'")
            if len(types) < 2 or len(set(types)) != len(types):
                raise ValueError(f"run config: 'tumour-types' needs at least two distinct types, got {types}")
        one_of("run config: 'presence-pool'", self.presence_pool, PRESENCE_POOLS)
        one_of("run config: 'noise'", self.noise, ("rician", "gaussian"))
        one_of("run config: 'pretext'", self.pretext, PRETEXTS)
        if not self.noise_levels or any(not 0 < s <= 2 for s in self.noise_levels):
            raise ValueError("run config: 'noise-levels' must be 1+ comma-separated sigmas in (0, 2]")
        if min(self.plateau_patience, self.stop_patience, self.alternate_batches, self.calibration_batches) < 1:
            raise ValueError(
                "run config: 'plateau-patience', 'stop-patience', 'alternate-batches' and 'calibration-batches' "
                "must be >= 1"
            )
        if self.phase == "pretrain" and (self.strategy_spec.pooled or self.umsrep):
            raise ValueError(
                "run config: phase 'pretrain' runs at the sites (not a pooled strategy) and from scratch "
                "('umsrep' empty)"
            )

    def join_rounds(self) -> dict[str, int]:
        """``join-schedule`` parsed: site name -> first round its SuperNode is online (simulation)."""
        out = {}
        for item in filter(None, (x.strip() for x in self.join_schedule.split(","))):
            site, sep, rnd = item.rpartition("@")
            if not sep or not site or not rnd.isdigit() or int(rnd) < 1:
                raise ValueError(f"run config: 'join-schedule' entries are SITE@ROUND (round >= 1), got {item!r}")
            out[site] = int(rnd)
        return out

    @property
    def strategy_spec(self) -> Strategy:
        return get_strategy(self.strategy)

    @property
    def task_list(self) -> tuple[str, ...]:
        """The extra task heads of ``tasks``, in order."""
        return tuple(t.strip() for t in self.tasks.split(",") if t.strip())

    @property
    def type_list(self) -> tuple[str, ...]:
        """The type head's classes (``tumour-types``)."""
        return tuple(t.strip() for t in self.tumour_types.split(",") if t.strip())

    @property
    def uses_plan(self) -> bool:
        """UMS-Rep: the run trains under a plan of ``uharmony.umsrep.plans`` (phase P, a phase-P start, task
        heads or a fine-tuning strategy other than full); otherwise the plain segmentation path."""
        return self.phase == "pretrain" or bool(self.tasks or self.umsrep or self.finetune != "full")

    @property
    def model_norm(self) -> str:
        return self.strategy_spec.norm if self.norm == "auto" else self.norm

    @property
    def head(self) -> str:
        return self.strategy_spec.head

    @property
    def federation_seed(self) -> int:
        """The seed of the data: which cases the embedded federation holds and how each site splits them."""
        return self.seed if self.data_seed < 0 else self.data_seed

    @property
    def weights_seed(self) -> int:
        """The seed of the optimisation: the initial weights and the training patches each round draws."""
        return self.seed if self.init_seed < 0 else self.init_seed

    @property
    def autocast_dtype(self):
        """``torch.bfloat16`` when the run computes its forward passes in bf16 (``precision``), else None."""
        if self.precision == "fp32":
            return None
        import torch

        if self.precision == "bf16":
            return torch.bfloat16
        from uharmony.precision import native_bf16

        return torch.bfloat16 if native_bf16(self.torch_device) else None

    @property
    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def model_kwargs(self) -> dict:
        kw = dict(arch=self.arch, in_channels=4, out_channels=3, norm=self.model_norm, head=self.head)
        if self.arch == "dynunet":
            kw["filters"] = self.filters
        if self.head == "gated":
            kw.update(
                experts=self.head_experts,
                gate=self.head_gate,
                confidence=self.gate_confidence,
                gate_descriptor=self.gate_descriptor,
                gate_unseen=self.gate_unseen,
            )
        tasks = ("recon",) if self.phase == "pretrain" else self.task_list
        if tasks:
            kw["tasks"] = tasks
        if "tumour-type" in tasks:
            kw["types"] = self.type_list
        if "presence" in tasks and self.presence_pool != "bottleneck":
            kw["presence_pool"] = self.presence_pool
        if self.model_norm == "uharmony":
            kw.update(
                order=self.poly_order,
                site_local=self.site_local,
                restore=self.restore,
                harmonize_layers=None if self.harmonize_layers < 0 else self.harmonize_layers,
            )
        return kw

    def build_model(self, num_domains: int = 1):
        """The run's model, its weights drawn from ``seed`` (the same at the server and every site)."""
        import torch

        from uharmony.model.networks import build_model

        torch.manual_seed(self.weights_seed)
        kw = self.model_kwargs()
        return build_model(
            kw.pop("arch"), kw.pop("in_channels"), kw.pop("out_channels"), num_domains, kw.pop("norm"), **kw
        )

    def to_flwr(self) -> dict:
        """The run config as Flower's kebab-case keys (tuples as comma-separated strings)."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            out[f.name.replace("_", "-")] = ",".join(map(str, value)) if isinstance(value, tuple) else value
        return out


def _convert(key: str, raw, default):
    try:
        if isinstance(default, bool):
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            return text in ("1", "true", "yes")
        if isinstance(default, tuple):
            kind = type(default[0]) if default else int
            return tuple(kind(v) for v in (str(raw).split(",") if isinstance(raw, str) else raw) if str(v).strip())
        if isinstance(default, int):
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        return str(raw)
    except (TypeError, ValueError):
        raise ValueError(f"run config: {key!r} must be {type(default).__name__}, got {raw!r}") from None


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """``["key=value", ...]`` (a command's ``--set``) -> dict; a malformed item names itself."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set entries are KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out
