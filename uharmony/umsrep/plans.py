"""UMS-Rep round plans, declared once: what each fine-tuning strategy trains, with which losses and
schedule, and therefore which state entries a site sends. The site (``uharmony.umsrep.training``), the
server's reply check and the benchmark read these fields; none of them switches on a plan's name.

Module groups are found by module type (never by name): the input stems, the backbone's decoder (MONAI's
``UnetUpBlock`` / ``UnetrUpBlock``), the rest of the backbone (encoder), the segmentation head, and each
UMS-Rep head (``uharmony.model.task_heads``).
"""

from __future__ import annotations

from dataclasses import dataclass

from monai.networks.blocks.dynunet_block import UnetUpBlock
from monai.networks.blocks.unetr_block import UnetrUpBlock
from torch import nn

from uharmony.checks import one_of
from uharmony.model.head import DomainGatedHead, PlainHead
from uharmony.model.roles import module_state_keys
from uharmony.model.task_heads import PresenceHead, ReconstructionHead, TypeHead
from uharmony.vocabulary import PLANS_VERSION  # noqa: F401 - this table's version (a run's checkpoints record it)

DECODER_TYPES = (UnetUpBlock, UnetrUpBlock)
GROUPS = ("encoder", "decoder", "seg", "recon", "presence", "tumour-type")


def _inside(model: nn.Module, types) -> set[str]:
    """State keys of every module of ``types`` and everything below it."""
    keys = set()
    for _, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, types):
            keys |= module_state_keys(module, lambda m: True)
    return keys


def module_groups(model: nn.Module) -> dict[str, set[str]]:
    """State keys of each group (every key in exactly one)."""
    all_keys = set(model.state_dict())
    prefixed = {}
    for group, types in (
        ("seg", (PlainHead, DomainGatedHead)),
        ("recon", (ReconstructionHead,)),
        ("tumour-type", (TypeHead,)),
        ("presence", (PresenceHead,)),
        ("decoder", DECODER_TYPES),
    ):
        found = set()
        for name, module in model.named_modules(remove_duplicate=False):
            if isinstance(module, types):
                prefix = f"{name}." if name else ""
                found |= {prefix + k for k in module.state_dict()}
        prefixed[group] = found & all_keys
    taken = set().union(*prefixed.values())
    return {"encoder": all_keys - taken, **prefixed}


@dataclass(frozen=True)
class Plan:
    """One fine-tuning strategy (phase F), or the pretraining phase itself.

    Attributes:
        name: the run config's ``finetune`` value (``pretrain`` is phase P's own plan).
        summary: one line for logs and docs/umsrep.md.
        trains: the module groups whose weights change (and are sent); the others are frozen.
        losses: ``seg`` (segmentation only), ``tasks`` (every task head the model has), ``recon`` (phase P).
        schedule: ``joint`` (one weighted sum of the task losses at every step), ``alternating`` (blocks of
            ``alternate-batches`` batches per task, shared weights updated by each; every block is seen by
            every task, so each task gets the whole budget) or ``independent`` (each task its own optimizer
            over its own groups, every batch; the groups the tasks would share are frozen).
    """

    name: str
    summary: str
    trains: tuple[str, ...]
    losses: str = "tasks"
    schedule: str = "joint"

    def __post_init__(self) -> None:
        one_of(f"plan {self.name!r}: losses", self.losses, ("seg", "tasks", "recon"))
        one_of(f"plan {self.name!r}: schedule", self.schedule, ("joint", "alternating", "independent"))
        bad = sorted(set(self.trains) - set(GROUPS))
        if bad:
            raise ValueError(f"plan {self.name!r}: unknown module groups {bad}")

    def trained_keys(self, model: nn.Module) -> set[str]:
        groups = module_groups(model)
        return set().union(*(groups[g] for g in self.trains))


PLANS: dict[str, Plan] = {
    p.name: p
    for p in (
        Plan("pretrain", "phase P: denoising on every site's scans", ("encoder", "decoder", "recon"), "recon"),
        Plan("full", "every weight, segmentation loss only (transfer as usual)", ("encoder", "decoder", "seg"), "seg"),
        Plan(
            "joint",
            "every weight, one weighted sum of the task losses",
            ("encoder", "decoder", "seg", "presence", "tumour-type"),
        ),
        Plan(
            "alternating",
            "every weight, blocks of batches per task",
            ("encoder", "decoder", "seg", "presence", "tumour-type"),
            schedule="alternating",
        ),
        Plan(
            "independent",
            "encoder frozen; each task its own decoder or head and optimizer, every batch",
            ("decoder", "seg", "presence", "tumour-type"),
            schedule="independent",
        ),
        Plan(
            "independent-head",
            "trunk frozen; each head its own optimizer, every batch (a probe of the trunk's features)",
            ("seg", "presence", "tumour-type"),
            schedule="independent",
        ),
    )
}
FINETUNE = tuple(n for n in PLANS if n != "pretrain")


def get_plan(name: str) -> Plan:
    return PLANS[one_of("plan", name, PLANS)]


def sendable_keys(model: nn.Module, plan: Plan, outgoing: list[str]) -> list[str]:
    """What a site sends under ``plan``: the strategy's outgoing entries that the plan trains (the model's own
    heads only: a plan's group the model lacks is empty)."""
    trained = plan.trained_keys(model)
    return [k for k in outgoing if k in trained]
