"""Pickled ground truth read without running it: an unpickler that builds only containers, numbers, strings
and numpy arrays (revisitop's gnd_*.pkl, GSV-Cities' object-array gt.npy) and refuses any other global.
A pickle can call anything when loaded; these files come from dataset downloads, so they are read this way."""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from vpr_core.datasets.errors import DatasetError

MAX_PICKLE_BYTES = 256 << 20
# the globals a pickled numpy array needs, and nothing else
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar")}


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a ground-truth file (refused)")


def load_pickle(data: bytes, where: str) -> Any:
    """The object pickled in `data`, built by the restricted unpickler; DatasetError for anything else."""
    try:
        return _Restricted(io.BytesIO(data)).load()
    except Exception as exc:  # UnpicklingError, EOFError, ValueError... on a damaged or foreign file
        raise DatasetError(f"{where}: not a readable ground truth ({type(exc).__name__}: {exc})") from None


def read_pickle(path: Path) -> Any:
    size = path.stat().st_size
    if size > MAX_PICKLE_BYTES:
        raise DatasetError(f"{path}: {size} bytes, more than a ground truth file may hold ({MAX_PICKLE_BYTES})")
    return load_pickle(path.read_bytes(), str(path))


def read_npy(path: Path) -> np.ndarray:
    """A .npy array; an object array (its payload is a pickle) through the restricted unpickler."""
    try:
        with path.open("rb") as fh:
            major, _ = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(fh)
            if dtype.hasobject:
                arr = load_pickle(fh.read(MAX_PICKLE_BYTES + 1), str(path))
                if not isinstance(arr, np.ndarray) or arr.shape != shape:
                    raise DatasetError(f"{path}: its object array does not match its header's shape {shape}")
                return arr
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable .npy file ({exc})") from None
