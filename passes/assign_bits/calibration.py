"""Calibration inputs: batches read from .npy/.npz files or a directory of them, or random ones.

A `.npz` file maps input names to arrays; a `.npy` file is the array of a one-input model. An array
shaped like the input is one batch; one with an extra leading axis is a stack of batches. A
directory contributes its .npy and .npz files in name order. Random batches (N(0, 1), as
`passc.oracle.random_inputs`) are the last resort, and a warning says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from passc import oracle
from passc.errors import UsageError

__all__ = ["load_calibration"]

logger = logging.getLogger(__name__)

Spec = tuple[str, tuple[int, ...], str]


def _batches(arrays: dict[str, np.ndarray], specs: list[Spec], where: Path) -> list[dict[str, np.ndarray]]:
    counts = set()
    stacked = {}
    for name, shape, dtype in specs:
        if name not in arrays:
            raise UsageError(f"calibration file {where} has no array for input {name!r}")
        array = np.asarray(arrays[name])
        if array.shape == shape:
            array = array[None]
        if array.shape[1:] != shape:
            raise UsageError(
                f"calibration file {where}: input {name!r} has shape {array.shape}, expected {shape} "
                f"or (batches, {', '.join(map(str, shape))})"
            )
        counts.add(array.shape[0])
        stacked[name] = array.astype(dtype)
    if len(counts) != 1:
        raise UsageError(f"calibration file {where}: the inputs hold different numbers of batches")
    return [{name: a[i] for name, a in stacked.items()} for i in range(counts.pop())]


def _read(path: Path, specs: list[Spec]) -> list[dict[str, np.ndarray]]:
    if path.suffix == ".npz":
        with np.load(path) as data:
            return _batches(dict(data), specs, path)
    if len(specs) != 1:
        raise UsageError(f"calibration file {path}: a .npy file serves one-input models; use .npz")
    return _batches({specs[0][0]: np.load(path)}, specs, path)


def load_calibration(path: str | None, specs: list[Spec], samples: int) -> list[dict[str, np.ndarray]]:
    """The calibration batches for inputs `specs` (name, static shape, dtype)."""
    if path is None:
        logger.warning(
            "assign-bits: no calibration data (assign-bits.calibration); measuring sensitivities on %d "
            "random batches, which may rank layers unlike real inputs would",
            samples,
        )
        return [oracle.random_inputs(specs, seed=i) for i in range(samples)]
    root = Path(path)
    if root.is_dir():
        files = sorted(p for p in root.iterdir() if p.suffix in (".npy", ".npz"))
        if not files:
            raise UsageError(f"calibration directory {root} holds no .npy or .npz files")
    elif root.is_file() and root.suffix in (".npy", ".npz"):
        files = [root]
    else:
        raise UsageError(f"calibration data not found (expected a .npy/.npz file or a directory): {root}")
    return [batch for f in files for batch in _read(f, specs)]
