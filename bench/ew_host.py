"""Host (Python) cost of each helper op's GPU dispatch, measured on the CPU with CuPy stubbed out.

bench/ew.py showed many helper ops host-bound on the H100 (the Python enqueue time per call ≈ the GPU
time). This script times only our own dispatch: validation, lookup tables, launch configuration and
argument packing. CuPy is replaced by a stand-in whose arrays hold no memory, whose allocations and
elementwise operators only count, and whose kernel functions only count their launches; so the times
exclude CuPy's own cost per call (on the H100's VM about 10 µs per launch of a CuPy builtin, see the
"copy" row of bench/ew.py). The counts say how many of those each op still pays: kernel launches of
ours, CuPy elementwise launches (astype copies, arithmetic) and allocations.

    PYTHONPATH=. python bench/ew_host.py [--calls 2000] [--json out.json]

No GPU needed. Same shapes as bench/ew.py (bf16 [8192, 4096]; weight norm b = 32).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import types

import numpy as np

COUNTS = {"launch": 0, "cupy_op": 0, "alloc": 0}


class _Flags:
    c_contiguous = True
    f_contiguous = False


class _Data:
    ptr = 1 << 20  # 16-byte aligned


class _Device:
    id = 0


class FakeArray:
    """A CuPy-like array with no memory: shape, dtype, flags, a pointer, a device; ops only count."""

    __slots__ = ("shape", "dtype", "size", "ndim")
    flags = _Flags()
    data = _Data()
    device = _Device()

    def __init__(self, shape, dtype):
        shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(shape)
        self.shape = shape
        self.dtype = dtype if isinstance(dtype, np.dtype) else np.dtype(dtype)
        self.ndim = len(shape)
        self.size = math.prod(shape)

    @property
    def strides(self):
        st, acc = [], self.dtype.itemsize
        for s in reversed(self.shape):
            st.append(acc)
            acc *= s
        return tuple(reversed(st))

    @property
    def nbytes(self):
        return self.size * self.dtype.itemsize

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        if -1 in shape:
            known = math.prod(s for s in shape if s != -1)
            shape = tuple(self.size // known if s == -1 else s for s in shape)
        return FakeArray(shape, self.dtype)

    def astype(self, dtype, copy=True):
        if not copy and np.dtype(dtype) == self.dtype:
            return self
        COUNTS["cupy_op"] += 1
        return FakeArray(self.shape, dtype)

    def _op(self, other, inplace=False):
        COUNTS["cupy_op"] += 1
        if inplace:
            return self
        dt = self.dtype if not isinstance(other, FakeArray) else np.promote_types(self.dtype, other.dtype)
        return FakeArray(self.shape, dt)

    def __add__(self, o):
        return self._op(o)

    __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = __add__

    def __iadd__(self, o):
        return self._op(o, True)

    __isub__ = __imul__ = __itruediv__ = __iadd__

    def get(self):
        return np.zeros(self.shape, self.dtype)


def _empty(shape, dtype=np.float32):
    COUNTS["alloc"] += 1
    return FakeArray(shape, dtype)


def _sqrt(a):
    COUNTS["cupy_op"] += 1
    return FakeArray(a.shape, a.dtype)


class _Function:
    ptr = 0

    def __call__(self, grid, block, args, stream=None, shared_mem=0):
        COUNTS["launch"] += 1


def fake_cupy():
    mod = types.ModuleType("cupy")
    mod.ndarray = FakeArray
    mod.empty = _empty
    mod.zeros = _empty
    mod.empty_like = lambda a, dtype=None: _empty(a.shape, a.dtype if dtype is None else dtype)
    mod.asarray = lambda a, dtype=None: FakeArray(np.shape(a), dtype or np.asarray(a).dtype)
    mod.ascontiguousarray = lambda a: a
    mod.broadcast_to = lambda a, shape: FakeArray(shape, a.dtype)
    mod.sqrt = _sqrt
    for name in ("float16", "float32", "float64", "int32", "int64", "uint32"):
        setattr(mod, name, getattr(np, name))
    stream = types.SimpleNamespace(ptr=1)
    # an H100: the one-pass column kernels (compute capability 9.0) are the path measured
    dev = types.SimpleNamespace(attributes={"MultiProcessorCount": 132}, compute_capability="90")
    mod.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDevice=lambda: 0),
        get_current_stream=lambda: stream,
        Device=lambda i=None: dev,
    )
    return mod


def install():
    """Put the stand-in in sys.modules and route kernel lookups to a counting function."""
    sys.modules["cupy"] = fake_cupy()
    # the function attributes _ops_cols sets once per kernel: no driver here
    driver = types.ModuleType("cupy_backends.cuda.api.driver")
    driver.funcSetAttribute = lambda *args: None
    for name in ("cupy_backends", "cupy_backends.cuda", "cupy_backends.cuda.api"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["cupy_backends.cuda.api"].driver = driver
    sys.modules["cupy_backends.cuda.api.driver"] = driver
    from cusparseblocks import _ops_cols, compiler, ops

    fn = _Function()
    compiler.get_function = lambda spec, dynamic_smem=0: fn
    # caches of the real path that may hold driver answers: start empty (the stand-in has no driver)
    for name in getattr(ops, "_CACHES", ("_SPECS", "_SM_COUNT", "_RESIDENT", "_MAX_THREADS", "_WN_TABLES")):
        getattr(ops, name).clear()
    for name in _ops_cols._CACHES:
        getattr(_ops_cols, name).clear()
    return ops


def cases(ops, dtype="bfloat16", N=8192, F=4096):
    from cusparseblocks._array import bfloat16
    from cusparseblocks.blocklayout import BlockLayout

    dt = np.dtype(bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    A = lambda *s: FakeArray(s, dt)  # noqa: E731
    f32 = lambda *s: FakeArray(s, np.float32)  # noqa: E731
    x, y, dy, b, g = A(N, F), A(N, F), A(N, F), A(F), A(F)
    H = F // 4
    z, cp, dh, dc = A(N, 4 * H), A(N, H), A(N, H), A(N, H)
    rm, rv = f32(F), f32(F)
    mean_r, rstd_r = f32(N), f32(N)
    mean_c, rstd_c = f32(F), f32(F)
    bsz = 32
    nnz = N * F // (bsz * bsz)
    side = int(np.ceil(np.sqrt(2 * nnz)))
    flat = np.zeros(side * side, bool)
    flat[np.random.default_rng(0).permutation(side * side)[:nnz]] = True
    layout = BlockLayout(flat.reshape(side, side))
    w, dv = A(nnz, bsz, bsz), A(nnz, bsz, bsz)
    gu, gb = A(layout.out_blocks * bsz), A(nnz)
    ru, rb = f32(layout.out_blocks * bsz), f32(nnz)
    return [
        ("relu fwd", lambda: ops.activation_fprop(x, "relu")),
        ("relu bwd", lambda: ops.activation_bprop(dy, x, "relu")),
        ("bias+gelu fwd", lambda: ops.activation_fprop(x, "gelu_tanh", bias=b)),
        ("bias+relu bwd", lambda: ops.activation_bprop(dy, x, "relu", bias=b)),
        ("add", lambda: ops.add_fprop(x, y)),
        ("mlstm bwd", lambda: ops.mlstm_bprop(dy, x, y)),
        ("scale", lambda: ops.scale_fprop(x, 0.5)),
        ("dropout fwd", lambda: ops.dropout_fprop(x, 0.1, 1234, 5)),
        ("layer_norm fwd ax1", lambda: ops.layer_norm_fprop(x, g, b)),
        ("layer_norm bwd ax1", lambda: ops.layer_norm_bprop(dy, x, g, mean_r, rstd_r)),
        ("layer_norm fwd ax0", lambda: ops.layer_norm_fprop(x.reshape(F, N), g, b, feature_axis=0)),
        (
            "layer_norm bwd ax0",
            lambda: ops.layer_norm_bprop(
                dy.reshape(F, N), x.reshape(F, N), g, mean_r, rstd_r, feature_axis=0
            ),
        ),
        ("batch_norm fwd ax1", lambda: ops.batch_norm_fprop(x, g, b)),
        (
            "batch_norm fwd ax1 +running",
            lambda: ops.batch_norm_fprop(x, g, b, running_mean=rm, running_var=rv),
        ),
        (
            "batch_norm fwd ax0 +running",
            lambda: ops.batch_norm_fprop(
                x.reshape(F, N), g, b, feature_axis=0, running_mean=rm, running_var=rv
            ),
        ),
        ("batch_norm bwd ax1", lambda: ops.batch_norm_bprop(dy, x, g, mean_c, rstd_c)),
        (
            "batch_norm bwd ax0",
            lambda: ops.batch_norm_bprop(
                dy.reshape(F, N), x.reshape(F, N), g, mean_c, rstd_c, feature_axis=0
            ),
        ),
        (
            "batch_norm inf ax1",
            lambda: ops.batch_norm_fprop(x, g, b, training=False, running_mean=rm, running_var=rv),
        ),
        (
            "batch_norm inf ax0",
            lambda: ops.batch_norm_fprop(
                x.reshape(F, N), g, b, feature_axis=0, training=False, running_mean=rm, running_var=rv
            ),
        ),
        ("lstm_gates fwd", lambda: ops.lstm_gates_fprop(z, cp)),
        ("lstm_gates bwd", lambda: ops.lstm_gates_bprop(dh, dc, z, cp)),
        ("weight_norm unit fwd", lambda: ops.weight_norm_fprop(layout, w, gu, per="unit")),
        ("weight_norm unit bwd", lambda: ops.weight_norm_bprop(layout, dv, w, gu, ru, per="unit")),
        ("weight_norm block fwd", lambda: ops.weight_norm_fprop(layout, w, gb, per="block")),
        ("weight_norm block bwd", lambda: ops.weight_norm_bprop(layout, dv, w, gb, rb, per="block")),
    ]


def measure(calls: int = 2000, repeats: int = 5):
    ops = install()
    rows = []
    for name, fn in cases(ops):
        fn()  # warm every cache
        for k in COUNTS:
            COUNTS[k] = 0
        fn()
        counts = dict(COUNTS)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            best = min(best, (time.perf_counter() - t0) / calls * 1e6)
        rows.append(dict(op=name, host_us=best, **counts))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args(argv)
    rows = measure(args.calls)
    print(f"{'op':30s} {'host us':>8s} {'launches':>8s} {'cupy ops':>8s} {'allocs':>6s}")
    for r in rows:
        print(f"{r['op']:30s} {r['host_us']:8.1f} {r['launch']:8d} {r['cupy_op']:8d} {r['alloc']:6d}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
