"""Shared test helpers: per-dtype tolerances, fresh random data, poisoned outputs, the gpu marker."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cusparseblocks._array import bfloat16, dtype_name

# relative-error bounds (‖actual − ref‖ / ‖ref‖ and element-wise atol·scale) per dtype, against float64
TOLERANCES = {
    "float64": (1e-12, 1e-12),
    "float32": (1e-5, 1e-5),
    "tf32": (2e-3, 2e-3),
    "float16": (2e-3, 1e-2),
    "bfloat16": (1e-2, 6e-2),
}


def _gpu_available() -> tuple[bool, str]:
    try:
        import cupy
    except ImportError:
        return False, "CuPy is not installed"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - any driver failure means no GPU here
        return False, f"no CUDA device ({type(exc).__name__})"
    return (n > 0), ("" if n else "no CUDA device")


GPU, GPU_REASON = _gpu_available()


def pytest_collection_modifyitems(config, items):
    if GPU:
        return
    skip = pytest.mark.skip(reason=f"gpu test: {GPU_REASON}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def to_numpy(a):
    if hasattr(a, "get"):
        return a.get()
    if hasattr(a, "detach"):
        return a.detach().cpu().float().numpy() if str(a.dtype) == "torch.bfloat16" else a.detach().cpu().numpy()
    return np.asarray(a)


def assert_close(actual, reference, dtype, what="result", scale=None):
    """Every element of ``actual`` against a float64 ``reference`` with the tolerances of ``dtype``.

    Fails on NaN/Inf anywhere (poisoned, unwritten outputs show up as NaN), on a relative Frobenius
    error above ``rtol``, and on any element off by more than ``atol × max|reference|``. ``scale``
    (same shape): the magnitude of the terms the result is computed from, for results that cancel
    (a batch-norm gradient over 3 samples): errors are then relative to it instead of the result.
    """
    name = dtype if isinstance(dtype, str) else dtype_name(dtype)
    rtol, atol = TOLERANCES[name]
    a = to_numpy(actual).astype(np.float64)
    r = np.asarray(reference, dtype=np.float64)
    assert a.shape == r.shape, f"{what}: shape {a.shape} != reference {r.shape}"
    bad = ~np.isfinite(a)
    assert not bad.any(), f"{what}: {int(bad.sum())} non-finite elements (first at {np.argwhere(bad)[0]})"
    basis = r if scale is None else np.asarray(scale, dtype=np.float64)
    rel = np.linalg.norm(a - r) / max(np.linalg.norm(basis), 1e-30)
    err = np.abs(a - r).max() / max(np.abs(basis).max(), 1e-30)
    assert rel <= rtol, f"{what} ({name}): relative error {rel:.3e} > {rtol:.1e}"
    assert err <= atol, f"{what} ({name}): max element error {err:.3e}·max|ref| > {atol:.1e} at {np.unravel_index(np.argmax(np.abs(a - r)), a.shape)}"


def random_array(rng, shape, dtype, scale=1.0):
    """Fresh normal data, rounded to ``dtype`` (never zeros)."""
    dt = bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    return (rng.standard_normal(shape) * scale).astype(dt)


def poison(xp, shape, dtype):
    """An output buffer full of NaN: any element a kernel forgets to write fails assert_close."""
    dt = bfloat16 if dtype == "bfloat16" else dtype
    return xp.full(shape, np.nan, dtype=dt)


@pytest.fixture
def rng(request):
    seed = int.from_bytes(os.urandom(4), "little")
    request.node.user_properties.append(("seed", seed))
    return np.random.default_rng(seed)
