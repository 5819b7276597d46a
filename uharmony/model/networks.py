"""Network builders on MONAI backbones (DynUNet = nnU-Net, SwinUNETR) with U-Harmony normalization.

``build_model`` returns a :class:`UHarmonyNet`: per-modality input stems fused over the modalities that
are present, a MONAI backbone whose final 1x1 output block is removed, and a head (domain-gated or a
plain trunk + 1x1 conv for baselines). ``model(x, domain=None, present=None)`` returns segmentation logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv
from monai.networks.nets import DynUNet, SwinUNETR
from torch import nn

from uharmony.checks import one_of
from uharmony.model.fingerprint import fingerprint_size
from uharmony.model.head import DomainGatedHead, PlainHead
from uharmony.model.norm import INSTANCE_NORMS, UHarmonyNorm

# the vocabulary (torch-free, uharmony.vocabulary), importable from here as it always was
from uharmony.vocabulary import ARCHS, GATE_DESCRIPTORS, GATE_UNSEEN, HEADS, NORMS
from uharmony.vocabulary import MODALITIES as DEFAULT_MODALITIES
from uharmony.vocabulary import REGIONS as DEFAULT_REGIONS


class ModalityStems(nn.Module):
    """One 3x3 conv stem per input modality; the outputs of present modalities are averaged.

    A missing modality contributes nothing (hetero-modal mean fusion), so the network accepts any
    non-empty subset of its known modalities and a new modality can be added without changing the
    outputs for inputs that do not have it.
    """

    def __init__(self, spatial_dims: int, modalities: Sequence[str], channels: int) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.channels = channels
        self.modalities = list(modalities)
        self.stems = nn.ModuleList(self._new_stem() for _ in self.modalities)

    def _new_stem(self) -> nn.Module:
        return Conv[Conv.CONV, self.spatial_dims](1, self.channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        m = len(self.modalities)
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != m:
            raise ValueError(
                f"expected input (B, {m}, *{self.spatial_dims}D) for modalities {self.modalities}, got {tuple(x.shape)}"
            )
        if present is None:
            present = torch.ones(x.shape[0], m, dtype=torch.bool, device=x.device)
        present = torch.as_tensor(present, device=x.device).bool().reshape(x.shape[0], m)
        counts = present.sum(1)
        if bool((counts == 0).any()):
            raise ValueError("every sample needs at least one present modality")
        fused = None
        for i, stem in enumerate(self.stems):
            if not bool(present[:, i].any()):
                continue  # skip computing a stem nobody in the batch has
            w = present[:, i].to(x.dtype).view(-1, *([1] * (self.spatial_dims + 1)))
            out = stem(x[:, i : i + 1]) * w
            fused = out if fused is None else fused + out
        return fused / counts.to(x.dtype).view(-1, *([1] * (self.spatial_dims + 1)))

    @torch.no_grad()
    def add_modality(self, name: str) -> None:
        if name in self.modalities:
            raise ValueError(f"modality {name!r} already known: {self.modalities}")
        stem = self._new_stem().to(self.stems[0].weight.device)
        stem.weight.copy_(torch.stack([s.weight for s in self.stems]).mean(0))
        stem.bias.copy_(torch.stack([s.bias for s in self.stems]).mean(0))
        self.stems.append(stem)
        self.modalities.append(name)


class UHarmonyNet(nn.Module):
    def __init__(
        self, stems: ModalityStems, backbone: nn.Module, head: nn.Module, spec: dict, tasks: nn.ModuleDict | None = None
    ) -> None:
        super().__init__()
        self.stems = stems
        self.backbone = backbone
        self.head = head
        self.tasks = tasks if tasks is not None else nn.ModuleDict()  # UMS-Rep heads (uharmony.model.task_heads)
        self.spec = dict(spec)  # how it was built (for checkpoints)

    @property
    def spatial_dims(self) -> int:
        return self.stems.spatial_dims

    @property
    def modalities(self) -> list[str]:
        return list(self.stems.modalities)

    @property
    def regions(self) -> list[str]:
        """Names of the output channels (independent sigmoids), in order."""
        return list(self.spec["regions"])

    @property
    def gated(self) -> bool:
        return isinstance(self.head, DomainGatedHead)

    def features(self, x: torch.Tensor, present=None) -> torch.Tensor:
        """What enters the head: the backbone's full-resolution feature maps."""
        return self.backbone(self.stems(x, present))

    def forward(self, x: torch.Tensor, domain=None, present=None, gate_weights=None) -> torch.Tensor:
        """Logits. ``domain``: a domain expert (gated head); ``gate_weights`` (B, D): the gate's decision for
        the whole scan (``uharmony.model.gating.scan_gate``) when ``domain`` is None."""
        features = self.features(x, present)
        if self.gated:
            return self.head(features, domain, gate_weights)
        return self.head(features)


def _backbone(arch: str, spatial_dims: int, in_channels: int, norm: str, options: dict) -> tuple[nn.Module, int]:
    norm_name = "batch" if norm == "batch" else ("instance", {"affine": True})
    if arch == "dynunet":
        filters = list(options.pop("filters", (16, 32, 64, 128)))
        if len(filters) < 3:
            raise ValueError(f"build_model: dynunet needs at least 3 filter levels, got {filters}")
        strides = [1] + [2] * (len(filters) - 1)
        net = DynUNet(
            spatial_dims,
            in_channels,
            filters[0],
            kernel_size=[3] * len(filters),
            strides=strides,
            upsample_kernel_size=strides[1:],
            filters=filters,
            norm_name=norm_name,
            res_block=options.pop("res_block", False),
        )
        net.output_block = nn.Identity()
        return net, filters[0]
    feature_size = options.pop("feature_size", 12)
    if feature_size % 12:
        raise ValueError(f"build_model: swinunetr feature_size must be a multiple of 12, got {feature_size}")
    net = SwinUNETR(
        in_channels=in_channels,
        out_channels=feature_size,
        feature_size=feature_size,
        spatial_dims=spatial_dims,
        norm_name=norm_name,
        depths=options.pop("depths", (2, 2, 2, 2)),
        num_heads=options.pop("num_heads", (3, 6, 12, 24)),
        window_size=options.pop("window_size", 7),
    )
    net.out = nn.Identity()
    return net, feature_size


def harmonize(module: nn.Module, layers=None, **norm_options) -> int:
    """Replace InstanceNorm layers of ``module`` (by type, in forward order) with UHarmonyNorm.

    ``layers``: None = all; int N = the first N (shallowest); a sequence of indices = exactly those.
    Returns how many layers were replaced.
    """
    found = [
        (parent, name, child)
        for parent in module.modules()
        for name, child in parent.named_children()
        if isinstance(child, INSTANCE_NORMS)
    ]
    if layers is None:
        chosen = set(range(len(found)))
    elif isinstance(layers, int):
        if not 0 <= layers <= len(found):
            raise ValueError(f"harmonize: layers={layers} but the network has {len(found)} norm layers")
        chosen = set(range(layers))
    else:
        chosen = {int(i) for i in layers}
        bad = [i for i in chosen if not 0 <= i < len(found)]
        if bad:
            raise ValueError(f"harmonize: layer indices {bad} outside [0, {len(found)})")
    for i, (parent, name, child) in enumerate(found):
        if i in chosen:
            setattr(parent, name, UHarmonyNorm(child.num_features, **norm_options))
    return len(chosen)


PRESENCE_HEAD = 2  # uharmony.model.task_heads.PresenceHead's version (2: normalized input, leaky units)


def build_model(
    arch: str,
    in_channels: int,
    out_channels: int,
    num_domains: int = 1,
    norm: str = "uharmony",
    *,
    spatial_dims: int = 3,
    modalities: Sequence[str] | None = None,
    regions: Sequence[str] | None = None,
    head: str = "gated",
    stem_channels: int = 16,
    harmonize_layers=None,
    order: int = 1,
    site_local: str = "stats",
    restore: str = "ratio",
    temperature: float = 0.05,
    expert_regions: Sequence[Sequence[str]] | None = None,
    experts: str = "residual",
    gate: str = "scan",
    confidence: float = 0.5,
    gate_descriptor: str = "features+acquisition",
    gate_unseen: str = "nearest",
    tasks: Sequence[str] = (),
    presence_pool: str = "bottleneck",
    types: Sequence[str] = (),
    **options,
) -> UHarmonyNet:
    """Build a segmentation network. Arguments are checked up front; see module docstring."""
    arch, norm, head = (
        one_of("build_model: arch", arch, ARCHS),
        one_of("build_model: norm", norm, NORMS),
        one_of("build_model: head", head, HEADS),
    )
    for name, value in (
        ("in_channels", in_channels),
        ("out_channels", out_channels),
        ("num_domains", num_domains),
        ("stem_channels", stem_channels),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"build_model: {name} must be a positive int, got {value!r}")
    if spatial_dims not in (2, 3):
        raise ValueError(f"build_model: spatial_dims must be 2 or 3, got {spatial_dims!r}")
    modalities = (
        list(modalities)
        if modalities is not None
        else (list(DEFAULT_MODALITIES) if in_channels == 4 else [f"ch{i}" for i in range(in_channels)])
    )
    if len(modalities) != in_channels or len(set(modalities)) != in_channels:
        raise ValueError(f"build_model: need {in_channels} distinct modality names, got {modalities}")
    regions = (
        list(regions)
        if regions is not None
        else (list(DEFAULT_REGIONS) if out_channels == 3 else [f"c{i}" for i in range(out_channels)])
    )
    if len(regions) != out_channels or len(set(regions)) != out_channels:
        raise ValueError(f"build_model: need {out_channels} distinct region names, got {regions}")
    if norm != "uharmony" and harmonize_layers is not None:
        raise ValueError("build_model: harmonize_layers only applies to norm='uharmony'")
    spec = dict(
        arch=arch,
        in_channels=in_channels,
        out_channels=out_channels,
        num_domains=num_domains,
        norm=norm,
        spatial_dims=spatial_dims,
        modalities=modalities,
        regions=regions,
        head=head,
        stem_channels=stem_channels,
        harmonize_layers=harmonize_layers,
        order=order,
        site_local=site_local,
        restore=restore,
        temperature=temperature,
        **options,
    )
    if head == "gated":
        one_of("build_model: gate_descriptor", gate_descriptor, GATE_DESCRIPTORS)
        one_of("build_model: gate_unseen", gate_unseen, GATE_UNSEEN)
        spec.update(
            experts=experts, gate=gate, confidence=confidence, gate_descriptor=gate_descriptor, gate_unseen=gate_unseen
        )
    if tasks:  # UMS-Rep: a reconstruction head (phase P) and/or an image-level head (phase F)
        spec["tasks"] = sorted(set(tasks))
        if "presence" in tasks:
            spec["presence_head"] = PRESENCE_HEAD
            if presence_pool != "bottleneck":  # (a spec without the key: the bottleneck, as before it existed)
                spec["presence_pool"] = presence_pool
        if "tumour-type" in tasks:
            spec["types"] = list(types)
    options = dict(options)
    stems = ModalityStems(spatial_dims, modalities, stem_channels)
    backbone, feat = _backbone(arch, spatial_dims, stem_channels, norm, options)
    if options:
        raise ValueError(f"build_model: unknown options for {arch}: {sorted(options)}")
    if norm == "uharmony":
        harmonize(backbone, harmonize_layers, order=order, site_local=site_local, restore=restore)
    if head == "gated":
        knows = None
        if expert_regions is not None:
            if len(expert_regions) != num_domains or any(set(r) - set(regions) for r in expert_regions):
                raise ValueError(
                    f"build_model: expert_regions must list, for each of the {num_domains} domains, "
                    f"regions among {regions}; got {expert_regions}"
                )
            knows = [[r in known for r in regions] for known in expert_regions]
            spec["expert_regions"] = [list(r) for r in expert_regions]
        head_module = DomainGatedHead(
            spatial_dims,
            feat,
            out_channels,
            num_domains,
            temperature=temperature,
            knows=knows,
            experts=experts,
            gate=gate,
            confidence=confidence,
            fingerprint=fingerprint_size(len(modalities), spatial_dims)
            if gate == "scan" and gate_descriptor == "features+acquisition"
            else 0,
            unseen=gate_unseen,
        )
    else:
        head_module = PlainHead(spatial_dims, feat, out_channels)
    task_heads = None
    if tasks:
        from uharmony.model.task_heads import make_task_heads

        task_heads = make_task_heads(
            spec["tasks"], spatial_dims, feat, in_channels, out_channels, backbone, presence_pool, types
        )
    elif types:
        raise ValueError("build_model: types are the type head's classes; give them with tasks including 'tumour-type'")
    return UHarmonyNet(stems, backbone, head_module, spec, task_heads)


def model_from_spec(spec: dict) -> UHarmonyNet:
    spec = dict(spec)
    if "presence" in spec.get("tasks", ()) and spec.pop("presence_head", 1) != PRESENCE_HEAD:
        raise ValueError(
            "the model's presence head is of an earlier version (before 2026-12-07: no normalization, ReLU units); "
            "its weights would compute something else in this version: fine-tune it again (UMS-Rep phase F)"
        )
    if spec.get("head") == "gated":  # a model saved before the acquisition fingerprint: features only
        spec.setdefault("gate_descriptor", "features")
    return build_model(
        spec.pop("arch"),
        spec.pop("in_channels"),
        spec.pop("out_channels"),
        spec.pop("num_domains"),
        spec.pop("norm"),
        **spec,
    )
