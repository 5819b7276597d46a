"""Flower records <-> plain Python (numpy dicts); used by both the ClientApp and the ServerApp."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def nbytes(arrays: dict[str, np.ndarray]) -> int:
    return int(sum(v.nbytes for v in arrays.values()))
