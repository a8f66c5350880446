"""Which backend an array belongs to. CuPy is imported only when a CuPy array is seen."""

from __future__ import annotations

import sys

import numpy as np

try:  # bf16 on the host comes from ml_dtypes; CuPy uses the same dtype object.
    from ml_dtypes import bfloat16
except ImportError:  # pragma: no cover
    bfloat16 = None

__all__ = ["bfloat16", "FLOAT_DTYPES", "is_cupy", "backend_of", "cupy", "dtype_name"]

FLOAT_DTYPES = tuple(
    np.dtype(d) for d in (np.float16, np.float32, np.float64) + ((bfloat16,) if bfloat16 else ())
)


def is_cupy(x) -> bool:
    """True for a cupy.ndarray, without importing CuPy when it was never imported."""
    mod = sys.modules.get("cupy")
    return mod is not None and isinstance(x, mod.ndarray)


def cupy():
    """Import CuPy on first use; a clear ImportError when it is missing."""
    try:
        import cupy as cp
    except ImportError as exc:
        raise ImportError("GPU arrays need CuPy: pip install 'cusparseblocks[gpu]'") from exc
    return cp


def backend_of(**arrays) -> str:
    """'numpy' or 'cupy' for the given named arrays; mixed or foreign types raise TypeError."""
    kinds = {}
    for name, arr in arrays.items():
        if arr is None:
            continue
        if isinstance(arr, np.ndarray):
            kinds[name] = "numpy"
        elif is_cupy(arr):
            kinds[name] = "cupy"
        else:
            raise TypeError(
                f"{name}: expected a numpy.ndarray or cupy.ndarray, got {type(arr).__module__}."
                f"{type(arr).__name__} (framework tensors go through cusparseblocks.adapters)"
            )
    found = set(kinds.values())
    if len(found) > 1:
        detail = ", ".join(f"{k}={v}" for k, v in kinds.items())
        raise TypeError(f"arrays must all be NumPy or all CuPy, got {detail}")
    return found.pop() if found else "numpy"


_NAMES: dict = {}


def dtype_name(dtype) -> str:
    """'float16', 'bfloat16', ...: the dtype's name (cached: numpy's name lookup costs µs on every call)."""
    try:
        return _NAMES[dtype]
    except (KeyError, TypeError):  # TypeError: an unhashable dtype-like
        pass
    dt = np.dtype(dtype)
    name = "bfloat16" if bfloat16 is not None and dt == np.dtype(bfloat16) else dt.name
    try:
        _NAMES[dtype] = name
    except TypeError:
        pass
    return name
