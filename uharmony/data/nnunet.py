"""Scans named the nnU-Net way: ``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``, ... one file per channel, the
cases of a dataset side by side in one folder (``imagesTs``) or one case per folder.

Which contrast a channel holds is not in the file name: nnU-Net keeps it in the dataset's ``dataset.json``
(``"channel_names": {"0": "T1", ...}``, v1 and MSD: ``"modality"``), found beside the files or one folder up;
an explicit list (``--channels t1,t1ce,t2,flair``, in channel order) takes precedence. Channel names are mapped
to ours (``T1w``/``T1n`` -> t1, ``T1ce``/``T1Gd``/``T1c`` -> t1ce, ``T2w`` -> t2, ``FLAIR``/``T2f`` -> flair).
No image is read here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from uharmony.data.cases import Case, DataError

CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})\.nii(?:\.gz)?$")
ALIASES = {
    "t1": "t1",
    "t1w": "t1",
    "t1n": "t1",
    "t1native": "t1",
    "t1ce": "t1ce",
    "t1c": "t1ce",
    "t1gd": "t1ce",
    "t1post": "t1ce",
    "t1contrast": "t1ce",
    "t2": "t2",
    "t2w": "t2",
    "flair": "flair",
    "t2f": "flair",
    "t2flair": "flair",
    "adc": "adc",
}


def modality_of(name: str) -> str | None:
    """Our modality name for an nnU-Net channel name (case, dashes and underscores ignored), else None."""
    return ALIASES.get(re.sub(r"[\s_\-]", "", str(name)).lower())


def channel_files(folder: Path) -> dict[str, dict[int, Path]]:
    """case id -> {channel index: file} of the nnU-Net-named files directly in ``folder``."""
    out: dict[str, dict[int, Path]] = {}
    for f in sorted(Path(folder).iterdir()):
        m = CHANNEL_FILE.match(f.name)
        if m and f.is_file():
            out.setdefault(m["case"], {})[int(m["channel"])] = f
    return out


def dataset_channels(folder: Path) -> tuple[dict[int, str], Path] | None:
    """({channel index: our modality}, the dataset.json) of the ``dataset.json`` in ``folder`` or its parent."""
    for path in (Path(folder) / "dataset.json", Path(folder).parent / "dataset.json"):
        if not path.is_file():
            continue
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(path, f"unreadable dataset.json ({exc})") from None
        names = doc.get("channel_names", doc.get("modality")) if isinstance(doc, dict) else None
        if not isinstance(names, dict) or not names:
            raise DataError(path, "has no 'channel_names' (nnU-Net v2) or 'modality' (v1) mapping")
        return _mapped({int(k): str(v) for k, v in names.items()}, path), path
    return None


def parse_channels(text: str) -> dict[int, str]:
    """``--channels t1,t1ce,t2,flair``: channel 0 is t1, 1 is t1ce, ..."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise DataError("--channels", "give the contrast of each channel in order, e.g. t1,t1ce,t2,flair")
    return _mapped(dict(enumerate(names)), "--channels")


def _mapped(names: dict[int, str], where) -> dict[int, str]:
    out = {idx: modality_of(name) for idx, name in sorted(names.items())}
    unknown = [names[i] for i, mod in out.items() if mod is None]
    if unknown:
        raise DataError(where, f"unknown channel names {unknown}; known: {sorted(set(ALIASES))} (any case)")
    if len(set(out.values())) != len(out):
        raise DataError(where, f"two channels name the same contrast: {names}")
    return out


def nnunet_cases(folder: Path, channels: dict[int, str] | None, modalities) -> list[Case]:
    """The cases whose nnU-Net-named files lie directly in ``folder`` (each with the model's ``modalities``
    among its channels; others ignored). Empty when there is no such file."""
    files = channel_files(folder)
    if not files:
        return []
    if channels is None:
        found = dataset_channels(folder)
        if found is None:
            raise DataError(
                folder,
                "files are named the nnU-Net way (<case>_0000.nii.gz ...) but say nothing of their contrasts: give "
                "--channels in channel order (e.g. t1,t1ce,t2,flair) or put the dataset's dataset.json beside them",
            )
        channels = found[0]
    cases = []
    for case_id, by_channel in files.items():
        images = {channels[i]: str(f) for i, f in sorted(by_channel.items()) if channels.get(i) in modalities}
        if not images:
            raise DataError(
                folder / f"{case_id}_0000.nii.gz",
                f"case {case_id}: none of its channels {sorted(by_channel)} ({channels}) is among the model's "
                f"modalities {list(modalities)}",
            )
        cases.append(Case(case_id, images, None, "brats2021", tuple(images)))
    return cases
