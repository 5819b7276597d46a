"""What a researcher needs to track a run, beside ``metrics.jsonl``: the run's configuration with the
software and machine it ran on (``run.json``), and optional TensorBoard event files (torch's writer).

TensorBoard is switched on by the run-config key ``tensorboard``; it needs the ``tensorboard`` package
(``pip install 'uharmony-fl[track]'``), checked when the run starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

from uharmony.files import atomic_write

PACKAGES = ("uharmony-fl", "flwr", "torch", "monai", "numpy", "nibabel", "cryptography")


def software_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine() -> dict:
    """The machine, as a reader of the figures needs it: CPU model and cores, memory, the GPU if any."""
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        names = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    info = {"platform": platform.platform(), "cpu": cpu, "cpu-count": os.cpu_count(), "hostname": platform.node()}
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory-gib"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    import torch

    info["torch-threads"] = torch.get_num_threads()
    info["cpu-capability"] = torch.backends.cpu.get_cpu_capability()  # AVX2 / AVX512: kernels, hence speed
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


def write_run_info(run_dir: str | Path, config: dict, run_id: str, resumed_from: int | None = None) -> Path:
    """``config.json`` (the run config, as ``flwr run -c`` takes it) and ``run.json`` (its id, when it
    started, software versions and machine; a resumed run keeps the earlier starts under ``attempts``)."""
    run_dir = Path(run_dir)
    atomic_write(run_dir / "config.json", json.dumps(config, indent=2))
    path = run_dir / "run.json"
    attempts = []
    if resumed_from is not None and path.exists():
        try:
            earlier = json.loads(path.read_text())
            if earlier.get("run-id") == run_id:
                attempts = list(earlier.get("attempts", []))
        except (OSError, json.JSONDecodeError):
            pass
    attempts.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resumed-after-round": resumed_from})
    info = {"run-id": run_id, "attempts": attempts, "software": software_versions(), "machine": machine()}
    return atomic_write(path, json.dumps(info, indent=2))


class TensorBoard:
    """Scalars of a run (mean Dice per mode, per site, per region; train loss; gate accuracy) as TensorBoard
    event files in ``<run folder>/tensorboard``."""

    def __init__(self, run_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError(
                "run config: 'tensorboard' is true but the tensorboard package is missing "
                "(pip install 'uharmony-fl[track]')"
            ) from None
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def train(self, server_round: int, loss: float | None, seconds: float) -> None:
        if loss is not None:
            self.writer.add_scalar("train/loss", loss, server_round)
        self.writer.add_scalar("train/seconds", seconds, server_round)
        self.writer.flush()

    def evaluation(self, server_round: int, summary: dict, per_region: list[dict]) -> None:
        """Mean Dice (``dice/gated`` and ``dice/oracle`` for a gated head; ``dice/mean`` for a plain head, whose
        two modes are one), the gate's accuracy and each site's Dice per region."""
        from uharmony.records.plots import has_gated_head

        gated = has_gated_head(per_region) if per_region else summary.get("gated") != summary.get("oracle")
        modes = ("oracle", "gated") if gated else ("oracle",)
        for mode in modes:
            if mode in summary:
                self.writer.add_scalar(f"dice/{mode}" if gated else "dice/mean", summary[mode], server_round)
        if "gate-accuracy" in summary:
            self.writer.add_scalar("gate/accuracy", summary["gate-accuracy"], server_round)
        for r in per_region:
            if r["mode"] in modes:
                tag = f"{r['region']}-{r['mode']}" if gated else r["region"]
                self.writer.add_scalar(f"dice-site-{r['site']}/{tag}", r["dice"], server_round)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
