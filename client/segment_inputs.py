"""What ``uharmony-segment`` and ``uharmony-calibrate`` read, where ``segment`` writes, and on which device.

Inputs (``--input``), each case with any subset of the model's modalities:

- a case folder in BraTS naming (``CASE/CASE_{t1,t1ce,t2,flair}.nii.gz`` or BraTS 2023 ``CASE-t1n.nii.gz`` ...);
- a folder of such case folders (a batch);
- nnU-Net naming (``uharmony.data.nnunet``): ``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``, ... side by side in
  one folder (``imagesTs``: a batch when it holds several cases) or in one folder per case; the contrast of each
  channel comes from ``--channels`` or the dataset's ``dataset.json``.

Outputs (``--out``): a batch writes ``OUT/<case>_seg.nii.gz``; one case writes ``OUT`` when it names a
``.nii.gz`` / ``.nii`` file, else (an existing folder, or a name without that ending) ``OUT/<case>_seg.nii.gz``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from uharmony.data import Case, DataError
from uharmony.data.nnunet import channel_files, nnunet_cases, parse_channels


def add_input_options(p: argparse.ArgumentParser) -> None:
    """--channels and --device."""
    p.add_argument(
        "--channels",
        default=None,
        help="nnU-Net-named inputs (<case>_0000.nii.gz, ...): the contrast of each channel in order, e.g. "
        "t1,t1ce,t2,flair (default: from the dataset.json beside the files or one folder up)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu (default), cuda, cuda:N, or auto (CUDA when available)",
    )


def torch_device(name: str) -> str:
    """The torch device a ``--device`` value names; DataError for a CUDA device this machine lacks."""
    import torch

    name = name.strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DataError("--device", f"{name}: this machine has no CUDA device torch can use (try --device cpu)")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise DataError("--device", f"{name}: only {torch.cuda.device_count()} CUDA device(s) here")
        return name
    raise DataError("--device", f"{name!r}: expected cpu, cuda, cuda:N or auto")


def find_cases(inp: Path, modalities, channels_text: str | None = None) -> tuple[list, list[str], list[str], bool]:
    """(cases, skipped, ignored, batch?) of ``--input``: each case a BraTS case folder (a Path, read when it is
    segmented) or a ``Case`` of nnU-Net-named files; ``skipped``: case folders that could not be read as a case
    (with why); ``ignored``: files beside case folders that are no case."""
    if not inp.is_dir():
        raise DataError(inp, "not a folder")
    channels = parse_channels(channels_text) if channels_text else None
    flat = nnunet_cases(inp, channels, modalities)
    if flat:
        return flat, [], [], len(flat) > 1
    folders = sorted(p for p in inp.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        return [inp], [], [], False
    cases, skipped = [], []
    for folder in folders:
        try:
            nn = nnunet_cases(folder, channels, modalities) if channel_files(folder) else []
        except DataError as exc:
            skipped.append(str(exc))
            continue
        if len(nn) > 1:
            skipped.append(f"{folder}: holds {len(nn)} nnU-Net cases ({[c.case_id for c in nn]}); one per folder")
            continue
        cases.append(nn[0] if nn else folder)
    stray = sorted(p.name for p in inp.iterdir() if p.is_file() and not p.name.startswith("."))
    ignored = [f"{inp / name}: not a case folder; ignored" for name in stray if name != "dataset.json"]
    return cases, skipped, ignored, True


def case_name(entry: Path | Case) -> str:
    return entry.case_id if isinstance(entry, Case) else entry.name


def output_path(out: Path, name: str, batch: bool) -> Path:
    """Where a case's labels go (see the module's docstring)."""
    if batch or out.is_dir() or not out.name.endswith((".nii.gz", ".nii")):
        return out / f"{name}_seg.nii.gz"
    return out
