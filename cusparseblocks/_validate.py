"""Input validation for every op, in one place. Messages name the argument, expected and actual value."""

from __future__ import annotations

import numpy as np

from ._array import FLOAT_DTYPES, dtype_name, is_cupy

__all__ = [
    "BLOCK_SIZES",
    "check_block_size",
    "check_feature_axis",
    "check_float",
    "check_same_dtype",
    "check_ndim",
    "check_dim",
    "check_shape",
    "check_contiguous",
    "check_device",
    "check_out",
]

BLOCK_SIZES = (8, 16, 32, 64)
KERNEL_DTYPES = ("float16", "bfloat16", "float32")


def check_block_size(block_size, allowed=BLOCK_SIZES) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)):
        raise TypeError(f"block_size: expected an int in {allowed}, got {block_size!r}")
    if int(block_size) not in allowed:
        raise ValueError(f"block_size: expected one of {allowed}, got {block_size}")
    return int(block_size)


def check_feature_axis(feature_axis) -> int:
    if isinstance(feature_axis, bool) or feature_axis not in (0, 1):
        raise ValueError(f"feature_axis: expected 0 or 1, got {feature_axis!r}")
    return int(feature_axis)


def _dtype_of(name, arr):
    dtype = getattr(arr, "dtype", None)
    if dtype is None:
        raise TypeError(f"{name}: expected an array, got {type(arr).__name__}")
    return np.dtype(dtype)


def check_float(name, arr, allowed=None):
    """A floating dtype among ``allowed`` (names), default every float dtype we know."""
    dtype = _dtype_of(name, arr)
    names = allowed or tuple(dtype_name(d) for d in FLOAT_DTYPES)
    if dtype_name(dtype) not in names:
        raise TypeError(f"{name}: expected dtype in {names}, got {dtype_name(dtype)}")
    return dtype


def check_same_dtype(**arrays):
    items = [(k, v) for k, v in arrays.items() if v is not None]
    first_name, first = items[0]
    for name, arr in items[1:]:
        if np.dtype(arr.dtype) != np.dtype(first.dtype):
            raise TypeError(
                f"{name}: expected dtype {dtype_name(first.dtype)} (the dtype of {first_name}), "
                f"got {dtype_name(arr.dtype)}"
            )


def check_ndim(name, arr, ndim):
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(arr.shape)}")


def check_dim(name, arr, axis, expected, detail=""):
    actual = arr.shape[axis]
    if actual != expected:
        extra = f" ({detail})" if detail else ""
        raise ValueError(f"{name}: expected {expected} on axis {axis}{extra}, got {actual}")


def check_shape(name, arr, expected, detail=""):
    if tuple(arr.shape) != tuple(expected):
        extra = f" ({detail})" if detail else ""
        raise ValueError(f"{name}: expected shape {tuple(expected)}{extra}, got {tuple(arr.shape)}")


def check_contiguous(name, arr):
    flags = getattr(arr, "flags", None)
    if flags is not None and not flags.c_contiguous:
        raise ValueError(
            f"{name}: expected a C-contiguous array, got strides {arr.strides} for shape {arr.shape}; "
            f"pass {name}.copy() (or ascontiguousarray)"
        )


def check_device(name, arr, device_id):
    if is_cupy(arr) and arr.device.id != device_id:
        raise ValueError(f"{name}: expected an array on GPU {device_id} (the current device), got GPU {arr.device.id}")


def check_out(name, out, shape, dtype, backend_is_cupy):
    if out is None:
        return
    if backend_is_cupy != is_cupy(out):
        raise TypeError(f"{name}: expected a {'cupy' if backend_is_cupy else 'numpy'}.ndarray, got {type(out).__name__}")
    check_shape(name, out, shape)
    if np.dtype(out.dtype) != np.dtype(dtype):
        raise TypeError(f"{name}: expected dtype {dtype_name(dtype)}, got {dtype_name(out.dtype)}")
    check_contiguous(name, out)
