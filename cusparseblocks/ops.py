"""Helper ops around the block-sparse matmuls, forward (``*_fprop``) and backward (``*_bprop``).

Sparse networks carry wide activations, so the elementwise and normalization work is bandwidth-bound:
each op here is one or two fused passes over memory. NumPy arrays run the reference path
(:mod:`cusparseblocks.reference.ops`); CuPy arrays run the kernels in ``kernels/ew.cu`` on the current
stream. GPU dtypes: float16, bfloat16, float32 (half types compute in float32); the CPU also takes float64.
Inputs must be C-contiguous; any shape works (ragged sizes take a scalar tail path).

Ops:
  - activations ``ACTIVATIONS`` with an optional bias on the feature axis: :func:`activation_fprop`;
    broadcast ``add``/``mul``/``scale`` fused with an activation: :func:`add_fprop`, :func:`mul_fprop`,
    :func:`scale_fprop`;
  - :func:`dropout_fprop` (a Philox counter RNG: the mask is a function of seed, offset and element index);
  - :func:`layer_norm_fprop`, :func:`batch_norm_fprop` over either feature axis of a 2-D array;
  - :func:`weight_norm_fprop`: L2 normalization of block-sparse weights per output unit or per block;
  - :func:`lstm_gates_fprop` (gate order i, f, g, o) and :func:`mlstm_fprop` (m = (W_mx x) ⊙ (W_mh h)).

Cached: compiled kernels (per device, by :mod:`cusparseblocks.compiler`) and the layout's tables on each
GPU for the weight norm.
"""

from __future__ import annotations

import math

import numpy as np

from . import _ops_cols, compiler
from . import _validate as V
from ._array import backend_of, bfloat16, dtype_name
from .blocklayout import BlockLayout
from .reference import ops as ref

__all__ = [
    "ACTIVATIONS",
    "activation_fprop",
    "activation_bprop",
    "add_fprop",
    "add_bprop",
    "mul_fprop",
    "mul_bprop",
    "scale_fprop",
    "scale_bprop",
    "dropout_fprop",
    "dropout_bprop",
    "dropout_mask",
    "layer_norm_fprop",
    "layer_norm_bprop",
    "batch_norm_fprop",
    "batch_norm_bprop",
    "weight_norm_fprop",
    "weight_norm_bprop",
    "lstm_gates_fprop",
    "lstm_gates_bprop",
    "mlstm_fprop",
    "mlstm_bprop",
    "launch_config",
    "self_check",
]

ACTIVATIONS = ref.ACTIVATIONS
_GPU_DTYPES = ("float16", "bfloat16", "float32")
_CPU_DTYPES = _GPU_DTYPES + ("float64",)
_GPU_DTYPE_SET = frozenset(np.dtype(d) for d in (np.float16, np.float32) + ((bfloat16,) if bfloat16 else ()))
_CTYPE = {"float32": "float", "float16": "__half", "bfloat16": "__nv_bfloat16"}
_OPS = {"none": 0, "add": 1, "mul": 2}

# Launch parameters, one table for the family (a benchmark may call launch_config with each entry).
#   elementwise: threads per block, vectors (16 bytes) per thread in flight (a compiled UNROLLS value);
#     act_kernels: the plain activation (no second operand) through ew_act_fwd / ew_act_bwd, and add/mul of
#       two same-shape operands through ew_bin_fwd (with unroll 1); act_fwd_vecs: 16-byte vectors a thread
#       of ew_act_fwd, all loaded before the first is used (an ACT_FWD_VECS value, or "auto": the
#       activation's entry in ACT_FWD_AUTO, else 1);
#   rows_fwd / rows_bwd: row in registers, `vecs` vectors per thread (a compiled ROW_VECS value, raised
#     when a row needs more than 1024 threads), `threads` per block; rows_bwd's persistent grid holds
#     `blocks_per_sm` blocks per SM (fewer if the registers don't allow it: the host asks the driver);
#   rows_bwd_cols: the layer-norm backward with the column sums (norm_rows_bwd_cols): the fewest warps a
#     row with at most `vecs` vectors a thread, `groups` rows a block (fewer if registers or shared
#     memory, 8·L bytes a group, don't allow it), a persistent grid of the resident blocks;
#   rows: the fallback for rows longer than 1024 * 8 vectors (two reads of each row);
#   cols: column reductions and column-statistics applies, (32, 8) threads per block, about
#     blocks_per_sm blocks per SM over (column tiles × row splits); reverse: the apply walks each
#     split's rows backwards with streaming loads and stores (reuses what L2 holds from the reduction).
LAUNCH = {
    "elementwise": {"threads": 256, "unroll": 1, "act_kernels": True, "act_fwd_vecs": "auto"},
    "rows_fwd": {"threads": 128, "vecs": 4},
    "rows_bwd": {"threads": 256, "vecs": 2, "blocks_per_sm": 2},
    "rows_bwd_cols": {"vecs": 2, "groups": 4},
    "rows": {"threads": 256, "max_row_threads": 512},
    "cols": {"block": (32, 8), "blocks_per_sm": 4, "reverse": False},
    "wn_unit": {"threads": 256},
    "wn_block": {"threads": 256},
}
# norm_cols_affine (batch-norm inference, features last): fixed (32, 8) blocks, each thread AFFINE_ROWS
# rows (kernels/ew.cu's constants)
AFFINE_BLOCK, AFFINE_ROWS = (32, 8), 4
# Launch plans derived from this table are cached (_PLANS): clear ops._PLANS after changing an entry.
UNROLLS = (1, 4)
ACT_FWD_VECS = (1, 2, 4)  # ew_act_fwd<T, ACT, U>: the values of LAUNCH["elementwise"]["act_fwd_vecs"]
# "auto" vectors a thread per activation (H100, bench/NOTES.md: 2 vectors made softplus, the one compute-heavy
# forward, 6-7 % faster; the others 0.985-1.01x, so they keep 1)
ACT_FWD_AUTO = {"softplus": 2}
ROW_VECS = (1, 2, 4, 8)  # norm_rows_bwd_reg
FWD_VECS = (1, 2, 4, 8, 16)  # norm_rows_fwd_reg<T, NV, G>: vectors a thread, with G warps a row
FWD_WARPS = (1, 2, 4, 8, 16)
FWD_MAX_VECS = (2, 4, 8, 16)  # the values of LAUNCH["rows_fwd"]["vecs"] compiled for G > 1 (where NV = vecs)
BWD_COLS_VECS = (1, 2, 4, 8)  # norm_rows_bwd_cols<T, NV, G> (G in FWD_WARPS)
BWD_COLS_MAX_VECS = (1, 2, 4, 8)  # the values of LAUNCH["rows_bwd_cols"]["vecs"] compiled for G > 1
WN_BLOCK_VECS = (1, 2, 4, 8)  # wn_block_reg: 16-byte vectors a lane (b = 16 and 32)
COLS_MAX_VECS = 4  # norm_rows_bwd_reg with column sums: 8 vectors of x, dy and 2 sums each spill


# ---------------------------------------------------------------------------------------------------
# kernel registry

_SINGLE_KERNELS = (
    "dropout_fwd",
    "lstm_fwd",
    "lstm_bwd",
    "norm_rows_fwd",
    "norm_rows_bwd",
    "norm_cols_reduce",
    "norm_finalize",
    "norm_apply_fwd",
    "norm_cols_affine",
    "wn_reduce_unit",
    "wn_block",
    "wn_apply",
)


def _fwd_shapes():
    """(NV, G) of every norm_rows_fwd_reg the plan may pick: one warp with any NV; G > 1 warps (the fewest
    that hold the row) only with NV = LAUNCH["rows_fwd"]["vecs"], one of FWD_MAX_VECS."""
    yield from ((nv, 1) for nv in FWD_VECS)
    yield from ((nv, g) for g in FWD_WARPS[1:] for nv in FWD_MAX_VECS)


def _bwd_cols_shapes():
    """(NV, G) of every norm_rows_bwd_cols the plan may pick (as _fwd_shapes)."""
    yield from ((nv, 1) for nv in BWD_COLS_VECS)
    yield from ((nv, g) for g in FWD_WARPS[1:] for nv in BWD_COLS_MAX_VECS)


def _specializations():
    for ctype in _CTYPE.values():
        for act in range(len(ACTIVATIONS)):
            for unroll in UNROLLS:
                yield compiler.KernelSpec("ew.cu", f"ew_fwd<{ctype}, {act}, {unroll}>")
                yield compiler.KernelSpec("ew.cu", f"ew_bwd<{ctype}, {act}, {unroll}>")
            yield compiler.KernelSpec("ew.cu", f"ew_bias_cols_bwd<{ctype}, {act}>")
            yield compiler.KernelSpec("ew.cu", f"ew_act_bwd<{ctype}, {act}>")
            for u in ACT_FWD_VECS:
                yield compiler.KernelSpec("ew.cu", f"ew_act_fwd<{ctype}, {act}, {u}>")
            for op in (1, 2):  # _OPS["add"], _OPS["mul"]
                yield compiler.KernelSpec("ew.cu", f"ew_bin_fwd<{ctype}, {act}, {op}>")
        for nv in WN_BLOCK_VECS:
            yield compiler.KernelSpec("ew.cu", f"wn_block_reg<{ctype}, {nv}>")
        for nv, g in _fwd_shapes():
            yield compiler.KernelSpec("ew.cu", f"norm_rows_fwd_reg<{ctype}, {nv}, {g}>")
        for nv, g in _bwd_cols_shapes():
            yield compiler.KernelSpec("ew.cu", f"norm_rows_bwd_cols<{ctype}, {nv}, {g}>")
        for nv in ROW_VECS:
            yield compiler.KernelSpec("ew.cu", f"norm_rows_bwd_reg<{ctype}, {nv}, false>")
            if nv <= COLS_MAX_VECS:
                yield compiler.KernelSpec("ew.cu", f"norm_rows_bwd_reg<{ctype}, {nv}, true>")
        for rev in ("false", "true"):
            yield compiler.KernelSpec("ew.cu", f"norm_cols_apply<{ctype}, {rev}>")
        for name in _SINGLE_KERNELS:
            yield compiler.KernelSpec("ew.cu", f"{name}<{ctype}>")


compiler.register_family("ew", _specializations)


# Host caches of the GPU path (small dicts; a benchmark or test may clear any of them):
#   _SPECS: KernelSpec by (name, dtype, template parameters); _FUNCS: loaded function by (device, spec,
#   dynamic shared memory); _PLANS: launch plans (grid, block, specs) by kernel kind, device, dtype and
#   shape; _SM_COUNT, _RESIDENT, _MAX_THREADS: the driver's answers per device; _WN_TABLES: a layout's
#   tables on each GPU.
_CACHES = (
    "_SPECS",
    "_FUNCS",
    "_PLANS",
    "_SM_COUNT",
    "_RESIDENT",
    "_MAX_THREADS",
    "_SMEM_OPTIN",
    "_WN_TABLES",
)
_SPECS: dict = {}
_FUNCS: dict = {}
_PLANS: dict = {}
# Kernel kinds whose plan must take its general fallback ("rows_fwd", "rows_bwd"): set by tests that check
# both paths on shapes where the plan would pick the fast one.
_FORCE_FALLBACK: set = set()


def _spec(name, dtype, *params):
    """The KernelSpec of ``name<ctype, *params>`` (params: template arguments after the type)."""
    key = (name, dtype, params)
    spec = _SPECS.get(key)
    if spec is None:
        args = ", ".join([_CTYPE[dtype_name(dtype)], *(str(p) for p in params)])
        spec = compiler.KernelSpec("ew.cu", f"{name}<{args}>")
        _SPECS[key] = spec
    return spec


_SM_COUNT: dict[int, int] = {}


def _sm_count() -> int:
    import cupy

    dev = cupy.cuda.runtime.getDevice()
    if dev not in _SM_COUNT:
        _SM_COUNT[dev] = cupy.cuda.Device(dev).attributes["MultiProcessorCount"]
    return _SM_COUNT[dev]


_RESIDENT: dict = {}


def _resident_blocks(spec, threads, smem, fallback):
    """Blocks of ``spec`` one SM holds at once (the driver's occupancy answer; ``fallback`` without it)."""
    import cupy

    key = (cupy.cuda.runtime.getDevice(), spec, threads, smem)
    if key not in _RESIDENT:
        try:
            from cupy_backends.cuda.api import driver

            fn = compiler.get_function(spec, smem)
            _RESIDENT[key] = max(1, driver.occupancyMaxActiveBlocksPerMultiprocessor(fn.ptr, threads, smem))
        except Exception:  # noqa: BLE001 - an older CuPy without the call: the table's value
            _RESIDENT[key] = fallback
    return _RESIDENT[key]


_MAX_THREADS: dict = {}


def _max_threads(spec) -> int:
    """The most threads a block of ``spec`` may have (its registers decide; the driver's answer)."""
    import cupy

    key = (cupy.cuda.runtime.getDevice(), spec)
    if key not in _MAX_THREADS:
        try:
            from cupy_backends.cuda.api import driver

            fn = compiler.get_function(spec)
            _MAX_THREADS[key] = int(
                driver.funcGetAttribute(0, fn.ptr)
            )  # CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK
        except Exception:  # noqa: BLE001 - without the call: assume the hardware limit
            _MAX_THREADS[key] = 1024
    return _MAX_THREADS[key]


def _rows_plan(kind, name, dtype, R, L, *params, max_vecs=ROW_VECS[-1]):
    """(spec, grid, block) of a row-in-registers kernel (name<ctype, nv, *params>), or None when the row
    is too long for it (more than max_vecs vectors a thread) or its registers allow fewer threads per
    block than one row needs."""
    grid, block, nv = launch_config(kind, dtype, R=R, L=L)
    if nv is None or nv > max_vecs:
        return None
    spec = _spec(name, dtype, nv, *params)
    limit = _max_threads(spec)
    tx, ty = block
    if tx > limit:
        return None
    ty = max(1, min(ty, limit // tx))
    return spec, (max(1, min(math.ceil(R / ty), 2**31 - 1)),), (tx, ty)


def launch_config(kind: str, dtype, **sizes):
    """(grid, block) for a kernel kind of :data:`LAUNCH` at the given sizes (n, or R and L / R and C).

    rows_fwd / rows_bwd also return the vectors per thread (None: the row is too long to keep in
    registers, use "rows"); cols also returns the rows per split.
    """
    lanes = 16 // np.dtype(dtype).itemsize
    cfg = LAUNCH[kind]
    if kind == "elementwise":
        t, u = cfg["threads"], sizes.get("unroll", cfg["unroll"])
        return (max(1, min(math.ceil(sizes["n"] / (lanes * t * u)), 2**31 - 1)),), (t,)
    if kind == "rows_fwd":  # G warps a row (the fewest that hold it with at most `vecs` vectors a thread)
        vecs = math.ceil(sizes["L"] / lanes)
        g = next((g for g in FWD_WARPS if 32 * g * cfg["vecs"] >= vecs), None)
        if g is None:
            return None, None, None
        nv = next(v for v in FWD_VECS if 32 * g * v >= vecs)
        ty = max(1, cfg["threads"] // (32 * g))
        return (max(1, min(math.ceil(sizes["R"] / ty), 2**31 - 1)),), (32 * g, ty), nv
    if kind == "rows_bwd":
        vecs = math.ceil(sizes["L"] / lanes)
        nv = next((v for v in ROW_VECS if v >= cfg["vecs"] and vecs <= 1024 * v), None)
        if nv is None:
            return None, None, None
        tx = 32 * math.ceil(vecs / (32 * nv))
        nv = next(v for v in ROW_VECS if tx * v >= vecs)  # short rows: fewer vectors, one warp
        ty = max(1, cfg["threads"] // tx)
        return (max(1, min(math.ceil(sizes["R"] / ty), 2**31 - 1)),), (tx, ty), nv
    if kind == "rows":
        need = math.ceil(sizes["L"] / lanes)
        tx = min(max(32, 1 << max(0, need - 1).bit_length()), cfg["max_row_threads"])
        ty = max(1, cfg["threads"] // tx)
        return (max(1, min(math.ceil(sizes["R"] / ty), 2**31 - 1)),), (tx, ty)
    if kind == "cols":
        bx, by = cfg["block"]
        tiles = math.ceil(sizes["C"] / (bx * lanes))
        splits = max(
            1,
            min(
                math.ceil(cfg["blocks_per_sm"] * sizes.get("sms", 132) / tiles),
                math.ceil(sizes["R"] / by),
                65535,
            ),
        )
        rows_per_split = math.ceil(sizes["R"] / splits)
        return (tiles, math.ceil(sizes["R"] / rows_per_split)), (bx, by), rows_per_split
    raise ValueError(f"kind: expected one of {tuple(LAUNCH)}, got {kind!r}")


_NULL = np.uint64(0)  # a null pointer argument


def _aligned(*arrays) -> int:
    for a in arrays:
        if a is not None and a.data.ptr % 16:
            return 0
    return 1


def _launch(spec, grid, block, args, smem=0):
    """Launch on the current device and stream; None arguments are null pointers."""
    import cupy

    key = (cupy.cuda.runtime.getDevice(), spec, smem)
    fn = _FUNCS.get(key)
    if fn is None:
        fn = _FUNCS[key] = compiler.get_function(spec, smem)
    fn(
        grid,
        block,
        tuple([_NULL if a is None else a for a in args]),
        stream=cupy.cuda.get_current_stream(),
        shared_mem=smem,
    )


def _ew_plan(name, dtype, act, n):
    """(spec, grid, block) of ew_fwd / ew_bwd over n elements with the table's unroll (cached)."""
    key = (name, dtype, act, n)
    plan = _PLANS.get(key)
    if plan is None:
        unroll = LAUNCH["elementwise"]["unroll"]
        grid, block = launch_config("elementwise", dtype, n=n, unroll=unroll)
        plan = _PLANS[key] = (_spec(name, dtype, act, unroll), grid, block)
    return plan


def _act_plan(name, dtype, act, n, *params):
    """(spec, grid, block) of ew_act_fwd / ew_act_bwd / ew_bin_fwd (``params``: its op, or ew_act_fwd's
    vectors a thread) over n elements (one vector a thread, U for ew_act_fwd; cached)."""
    key = (name, dtype, act, n, *params)
    plan = _PLANS.get(key)
    if plan is None:
        vecs = params[0] if name == "ew_act_fwd" else 1
        grid, block = launch_config("elementwise", dtype, n=n, unroll=vecs)
        plan = _PLANS[key] = (_spec(name, dtype, act, *params), grid, block)
    return plan


def _elementwise_grid(dtype, n):
    """(grid, block) of a one-vector-per-thread elementwise kernel over n elements (cached)."""
    key = ("elementwise", dtype, n)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = launch_config("elementwise", dtype, n=n, unroll=1)
    return plan


def _cols_grid(dtype, R, C):
    """(grid, block, rows_per_split) of the column kernels on the current device (cached)."""
    import cupy

    key = ("cols", cupy.cuda.runtime.getDevice(), dtype, R, C)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = launch_config("cols", dtype, R=R, C=C, sms=_sm_count())
    return plan


# ---------------------------------------------------------------------------------------------------
# validation


def _backend(**arrays) -> str:
    """backend_of(**arrays); CuPy arrays must also be on the current device (checked here, once per call)."""
    backend = backend_of(**arrays)
    if backend == "cupy":
        import cupy

        dev = cupy.cuda.runtime.getDevice()
        for name, arr in arrays.items():
            if arr is not None and arr.device.id != dev:
                V.check_device(name, arr, dev)
    return backend


def _check_input(name, arr, backend):
    """A float array of the backend's dtypes, C-contiguous (the device: see _backend)."""
    if backend == "cupy" and arr.dtype in _GPU_DTYPE_SET and arr.flags.c_contiguous:
        return  # the common case without the checks' string work
    V.check_float(name, arr, _GPU_DTYPES if backend == "cupy" else _CPU_DTYPES)
    V.check_contiguous(name, arr)


def _check_like(name, arr, ref_name, ref_arr, backend, shape=None, detail=""):
    """``arr`` has ``ref_arr``'s dtype, backend rules, and ``shape`` (default: ref_arr's shape)."""
    _check_input(name, arr, backend)
    V.check_same_dtype(**{ref_name: ref_arr, name: arr})
    V.check_shape(name, arr, ref_arr.shape if shape is None else shape, detail)


def _check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
    return ACTIVATIONS.index(activation)


def _check_scalar(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    return float(value)


def _check_2d(name, arr):
    V.check_ndim(name, arr, 2)
    if 0 in arr.shape:
        raise ValueError(f"{name}: expected a non-empty array, got shape {tuple(arr.shape)}")


def _check_vector(name, vec, length, x_name, x, backend, detail):
    if vec is None:
        return
    _check_input(name, vec, backend)
    V.check_same_dtype(**{x_name: x, name: vec})
    V.check_shape(name, vec, (length,), detail)


# ---------------------------------------------------------------------------------------------------
# elementwise: y = act(alpha * (a op b)) with numpy broadcasting of b


def _bcast_pattern(b_shape, out_shape):
    """(inner, mid) with b's element for flat output index i at (i // inner) % mid, or None when b's
    broadcast is not one contiguous run of the output's axes (then b is materialized)."""
    bs = (1,) * (len(out_shape) - len(b_shape)) + tuple(b_shape)
    live = [i for i, s in enumerate(bs) if s != 1]
    if not live:
        return 1, 1
    lo, hi = live[0], live[-1]
    if any(bs[i] != out_shape[i] for i in range(lo, hi + 1)):
        return None
    return math.prod(out_shape[hi + 1 :]), math.prod(out_shape[lo : hi + 1])


def _ew_prepare(op, a, b, backend, a_name="a", b_name="b"):
    _check_input(a_name, a, backend)
    if op == "none":
        return a, None, tuple(a.shape), False
    _check_input(b_name, b, backend)
    V.check_same_dtype(**{a_name: a, b_name: b})
    try:
        shape = tuple(np.broadcast_shapes(tuple(a.shape), tuple(b.shape)))
    except ValueError:
        raise ValueError(
            f"{b_name}: expected a shape that broadcasts against {a_name} {tuple(a.shape)}, "
            f"got {tuple(b.shape)}"
        ) from None
    swapped = False
    if tuple(a.shape) != shape and tuple(b.shape) == shape:
        a, b, swapped = b, a, True
    return a, b, shape, swapped


def _ew_gpu_fwd(op, a, b, shape, act, alpha):
    import cupy

    if tuple(a.shape) != shape:
        a = cupy.ascontiguousarray(cupy.broadcast_to(a, shape))
    cfg = LAUNCH["elementwise"]
    if b is None and cfg["act_kernels"] and cfg["unroll"] == 1:  # the plain activation: its own kernel
        y = cupy.empty(shape, dtype=a.dtype)
        n = y.size
        if n:
            vecs = cfg["act_fwd_vecs"]
            vecs = ACT_FWD_AUTO.get(ACTIVATIONS[act], 1) if vecs == "auto" else vecs
            spec, grid, block = _act_plan("ew_act_fwd", a.dtype, act, n, vecs)
            _launch(spec, grid, block, (y, a, np.int64(n), np.float32(alpha), np.int32(_aligned(y, a))))
        return y
    if b is not None and tuple(b.shape) == shape and cfg["act_kernels"] and cfg["unroll"] == 1:
        y = cupy.empty(shape, dtype=a.dtype)  # two same-shape operands: their own kernel
        n = y.size
        if n:
            spec, grid, block = _act_plan("ew_bin_fwd", a.dtype, act, n, _OPS[op])
            _launch(spec, grid, block, (y, a, b, np.int64(n), np.float32(alpha), np.int32(_aligned(y, a, b))))
        return y
    pattern = (1, a.size) if b is None else _bcast_pattern(b.shape, shape)
    if pattern is None:
        b = cupy.ascontiguousarray(cupy.broadcast_to(b, shape))
        pattern = (1, a.size)
    y = cupy.empty(shape, dtype=a.dtype)
    n = y.size
    if n:
        spec, grid, block = _ew_plan("ew_fwd", a.dtype, act, n)
        _launch(
            spec,
            grid,
            block,
            (
                y,
                a,
                b,
                np.int64(n),
                np.int64(pattern[0]),
                np.int64(pattern[1]),
                np.int32(_OPS[op]),
                np.float32(alpha),
                np.int32(_aligned(y, a, b)),
            ),
        )
    return y


def _sum_to(xp, g, shape, dtype):
    """Sum a float32 array of the broadcast shape back to ``shape`` (a broadcast operand's gradient)."""
    lead = g.ndim - len(shape)
    if lead:
        g = g.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return xp.ascontiguousarray(g.reshape(shape).astype(dtype))


def _ew_gpu_bwd(op, dy, a, b, shape, act, alpha):
    import cupy

    n = math.prod(shape)
    cfg = LAUNCH["elementwise"]
    if b is None and tuple(a.shape) == shape and cfg["act_kernels"] and cfg["unroll"] == 1:  # own kernel
        da = cupy.empty(shape, dtype=a.dtype)
        if n:
            spec, grid, block = _act_plan("ew_act_bwd", a.dtype, act, n)
            _launch(
                spec,
                grid,
                block,
                (da, dy, a, np.int64(n), np.float32(alpha), np.int32(_aligned(da, dy, a))),
            )
        return da, None
    spec, grid, block = _ew_plan("ew_bwd", a.dtype, act, n)
    if tuple(a.shape) != shape:  # neither operand has the output's shape: both go through float32 sums
        a_in = cupy.ascontiguousarray(cupy.broadcast_to(a, shape))
        b_in = cupy.ascontiguousarray(cupy.broadcast_to(b, shape))
        da_f = cupy.empty(shape, dtype=cupy.float32)
        db_f = cupy.empty(shape, dtype=cupy.float32)
        for out, first, second in ((da_f, b_in, a_in), (db_f, a_in, b_in)):
            if n:  # the db output of (first, second) is g·first (mul) or g (add)
                _launch(
                    spec,
                    grid,
                    block,
                    (
                        None,
                        None,
                        out,
                        dy,
                        first,
                        second,
                        np.int64(n),
                        np.int64(1),
                        np.int64(n),
                        np.int32(_OPS[op]),
                        np.float32(alpha),
                        np.int32(_aligned(out, dy, first, second)),
                    ),
                )
        return _sum_to(cupy, da_f, a.shape, a.dtype), _sum_to(cupy, db_f, b.shape, b.dtype)
    b_shape = None if b is None else tuple(b.shape)
    b_full = b_shape == shape
    pattern = (1, n) if b is None else _bcast_pattern(b_shape, shape)
    # a row vector added along the last axes: its gradient is the column sum of da (no float32 copy)
    row_bias = (
        op == "add" and b is not None and not b_full and pattern is not None and pattern[0] == 1 and n > 0
    )
    if row_bias and alpha == 1.0:  # one pass: dx and the bias gradient's column partials together
        mid = pattern[1]
        da, db = _bias_cols_bwd(dy.reshape(n // mid, mid), a.reshape(n // mid, mid), b.reshape(mid), act)
        return da.reshape(shape), db.reshape(b_shape)
    if pattern is None:
        b = cupy.ascontiguousarray(cupy.broadcast_to(b, shape))
        pattern = (1, n)
    da = cupy.empty(shape, dtype=a.dtype)
    db = cupy.empty(shape, dtype=a.dtype) if b_full else None
    db_f = cupy.empty(shape, dtype=cupy.float32) if b is not None and not b_full and not row_bias else None
    if n:
        _launch(
            spec,
            grid,
            block,
            (
                da,
                db,
                db_f,
                dy,
                a,
                b,
                np.int64(n),
                np.int64(pattern[0]),
                np.int64(pattern[1]),
                np.int32(_OPS[op]),
                np.float32(alpha),
                np.int32(_aligned(da, db, db_f, dy, a, b)),
            ),
        )
    if row_bias:
        mid = pattern[1]
        db = _column_sums(da.reshape(n // mid, mid)).reshape(b_shape)
    elif db_f is not None:
        db = _sum_to(cupy, db_f, b_shape, b.dtype)
    elif b is not None and n == 0:
        db = cupy.zeros(b_shape, dtype=b.dtype)
    return da, db


def _bias_cols_bwd(dy, x, bias, act):
    """dx = dy·act'(x + bias) and dbias = Σ_rows dx for x [R, C], bias [C]: one pass and a finalize."""
    import cupy

    R, C = x.shape
    lanes = 16 // x.dtype.itemsize
    grid, block, rows_per_split = _cols_grid(x.dtype, R, C)
    dx = cupy.empty_like(x)
    ws = cupy.empty((grid[1], 1, C), dtype=cupy.float32)
    _launch(
        _spec("ew_bias_cols_bwd", x.dtype, act),
        grid,
        block,
        (
            dx,
            ws,
            dy,
            x,
            bias,
            np.int64(R),
            np.int64(C),
            np.int64(rows_per_split),
            np.int32(_aligned(dx, dy, x, bias) and C % lanes == 0),
        ),
    )
    return dx, _finalize(ws, x, None, C, 1.0, 0.0, 1, want=(), sums_t=True)[2]


def _ew_fprop(op, a, b, activation, alpha, a_name="a", b_name="b"):
    act = _check_activation(activation)
    alpha = _check_scalar("alpha", alpha)
    backend = _backend(**{a_name: a, b_name: b})
    a2, b2, shape, _ = _ew_prepare(op, a, b, backend, a_name, b_name)
    if backend == "cupy":
        return _ew_gpu_fwd(op, a2, b2, shape, act, alpha)
    a_full = a2 if tuple(a2.shape) == shape else np.broadcast_to(a2, shape)
    return ref.ew_fprop(op, a_full, b2, activation, alpha)


def _ew_bprop(op, dy, a, b, activation, alpha, a_name="a", b_name="b"):
    act = _check_activation(activation)
    alpha = _check_scalar("alpha", alpha)
    backend = _backend(dy=dy, **{a_name: a, b_name: b})
    a2, b2, shape, swapped = _ew_prepare(op, a, b, backend, a_name, b_name)
    _check_input("dy", dy, backend)
    V.check_same_dtype(**{a_name: a, "dy": dy})
    V.check_shape("dy", dy, shape, "the broadcast output shape")
    if backend == "cupy":
        da, db = _ew_gpu_bwd(op, dy, a2, b2, shape, act, alpha)
    else:
        da, db = ref.ew_bprop(op, dy, a2, b2, activation, alpha)
    return (db, da) if swapped else (da, db)


def _bias_shape(x, bias, feature_axis, backend):
    if (
        isinstance(feature_axis, bool)
        or not isinstance(feature_axis, (int, np.integer))
        or not (-x.ndim <= feature_axis < x.ndim)
    ):
        raise ValueError(
            f"feature_axis: expected an axis of x in [{-x.ndim}, {x.ndim}), got {feature_axis!r}"
        )
    fa = int(feature_axis) % x.ndim
    _check_vector("bias", bias, x.shape[fa], "x", x, backend, f"x.shape[{fa}], the feature axis")
    shape = [1] * x.ndim
    shape[fa] = x.shape[fa]
    return bias.reshape(shape)


def activation_fprop(x, activation: str = "relu", *, bias=None, feature_axis: int = 1):
    """y = act(x + bias), the bias (optional) broadcast along ``feature_axis``, in one pass.

    x: [...] float16|bfloat16|float32 (float64 on NumPy); bias: [x.shape[feature_axis]], x's dtype.
    activation: one of :data:`ACTIVATIONS` (elu with α = 1, gelu_tanh/gelu_erf the two GELU forms,
    swish = x·sigmoid(x)). Returns y like x.
    """
    if bias is None:
        return _ew_fprop("none", x, None, activation, 1.0, "x", "bias")
    backend = _backend(x=x, bias=bias)
    _check_input("x", x, backend)
    return _ew_fprop("add", x, _bias_shape(x, bias, feature_axis, backend), activation, 1.0, "x", "bias")


def activation_bprop(dy, x, activation: str = "relu", *, bias=None, feature_axis: int = 1):
    """(dx, dbias) of :func:`activation_fprop` from the pre-activation input x (dbias None without bias).

    dx = dy · act'(x + bias); dbias = dx summed over every axis but ``feature_axis``.
    """
    if bias is None:
        dx, _ = _ew_bprop("none", dy, x, None, activation, 1.0, "x", "bias")
        return dx, None
    backend = _backend(dy=dy, x=x, bias=bias)
    _check_input("x", x, backend)
    dx, db = _ew_bprop(
        "add", dy, x, _bias_shape(x, bias, feature_axis, backend), activation, 1.0, "x", "bias"
    )
    return dx, db.reshape(bias.shape)


def add_fprop(a, b, *, activation: str = "identity", alpha: float = 1.0):
    """y = act(alpha · (a + b)), numpy broadcasting, one pass. a, b: same dtype; y: the broadcast shape."""
    return _ew_fprop("add", a, b, activation, alpha)


def add_bprop(dy, a, b, *, activation: str = "identity", alpha: float = 1.0):
    """(da, db) of :func:`add_fprop`, each summed back to its operand's shape."""
    return _ew_bprop("add", dy, a, b, activation, alpha)


def mul_fprop(a, b, *, activation: str = "identity", alpha: float = 1.0):
    """y = act(alpha · a · b), numpy broadcasting, one pass."""
    return _ew_fprop("mul", a, b, activation, alpha)


def mul_bprop(dy, a, b, *, activation: str = "identity", alpha: float = 1.0):
    """(da, db) of :func:`mul_fprop`: da = g·b, db = g·a with g = dy·alpha·act'(z), summed to each shape."""
    return _ew_bprop("mul", dy, a, b, activation, alpha)


def scale_fprop(x, alpha: float, *, activation: str = "identity"):
    """y = act(alpha · x)."""
    return _ew_fprop("none", x, None, activation, alpha, "x")


def scale_bprop(dy, x, alpha: float, *, activation: str = "identity"):
    """dx of :func:`scale_fprop`: dy · alpha · act'(alpha · x)."""
    return _ew_bprop("none", dy, x, None, activation, alpha, "x")[0]


def mlstm_fprop(mx, mh):
    """The multiplicative-LSTM intermediate m = mx ⊙ mh (mx = W_mx·x_t, mh = W_mh·h_{t-1}), same shapes."""
    backend = _backend(mx=mx, mh=mh)
    _check_input("mx", mx, backend)
    _check_like("mh", mh, "mx", mx, backend)
    return _ew_fprop("mul", mx, mh, "identity", 1.0, "mx", "mh")


def mlstm_bprop(dm, mx, mh):
    """(dmx, dmh) = (dm ⊙ mh, dm ⊙ mx), one pass."""
    backend = _backend(dm=dm, mx=mx, mh=mh)
    _check_input("mx", mx, backend)
    _check_like("mh", mh, "mx", mx, backend)
    return _ew_bprop("mul", dm, mx, mh, "identity", 1.0, "mx", "mh")


# ---------------------------------------------------------------------------------------------------
# dropout


def _check_dropout(p, seed, offset):
    p = _check_scalar("p", p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p: expected a drop probability in [0, 1), got {p}")
    for name, value in (("seed", seed), ("offset", offset)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name}: expected an int in [0, 2**64), got {type(value).__name__}")
        if not 0 <= int(value) < 2**64:
            raise ValueError(f"{name}: expected an int in [0, 2**64), got {value}")
    return p, int(seed), int(offset)


def dropout_fprop(x, p: float, seed: int, offset: int = 0):
    """y = x · mask / (1 - p); element e (C order) is kept when Philox4x32-10 of counter (e // 4, offset)
    and key ``seed`` gives word e % 4 >= p·2³². No mask is stored: :func:`dropout_bprop` regenerates it.

    x: any shape; p in [0, 1); seed, offset: ints in [0, 2**64). Use a new ``offset`` (a step counter)
    or seed for each independent mask. The NumPy and CuPy paths draw the identical mask.
    """
    p, seed, offset = _check_dropout(p, seed, offset)
    backend = _backend(x=x)
    _check_input("x", x, backend)
    if backend == "numpy":
        return ref.dropout(x, p, seed, offset)
    import cupy

    threshold, scale = ref.dropout_threshold(p)
    y = cupy.empty_like(x)
    if x.size:
        grid, block = _elementwise_grid(x.dtype, x.size)
        _launch(
            _spec("dropout_fwd", x.dtype),
            grid,
            block,
            (
                y,
                x,
                np.int64(x.size),
                np.uint32(seed & 0xFFFFFFFF),
                np.uint32(seed >> 32),
                np.uint32(offset & 0xFFFFFFFF),
                np.uint32(offset >> 32),
                np.uint32(threshold),
                scale,
                np.int32(_aligned(x, y)),
            ),
        )
    return y


def dropout_bprop(dy, p: float, seed: int, offset: int = 0):
    """dx = dy · mask / (1 - p) with the forward's (p, seed, offset)."""
    return dropout_fprop(dy, p, seed, offset)


def dropout_mask(shape, p: float, seed: int, offset: int = 0, xp=np):
    """The boolean keep-mask :func:`dropout_fprop` applies to an array of ``shape`` (xp: numpy or cupy)."""
    p, seed, offset = _check_dropout(p, seed, offset)
    if xp is np:
        return ref.dropout_mask(tuple(shape), p, seed, offset)
    return dropout_fprop(xp.ones(tuple(shape), dtype=xp.float32), p, seed, offset) != 0


# ---------------------------------------------------------------------------------------------------
# normalization (2-D): statistics per row or per column of a C-contiguous [R, L] array


_COLS_SMEM_MAX = 160 * 1024  # shared memory for the fused column sums of norm_rows_bwd_reg (8·L bytes)
_NO_RUNNING = (None, None, 0.0, 0.0)
_NO_INFERENCE = (None, np.float32(0.0), None, None)  # norm_cols_apply's (run_var, eps, mean_out, rstd_out)


def _rows_fwd_plan(dtype, R, L):
    """((spec, grid, block) of the row in registers or None, (spec, grid, block) of the two-read fallback)
    of the row forward (cached). The register kernel needs 16-byte vectors (checked per call)."""
    import cupy

    key = ("rows_fwd", cupy.cuda.runtime.getDevice(), dtype, R, L)
    plan = _PLANS.get(key)
    if plan is None:
        reg = None
        grid, block, nv = launch_config("rows_fwd", dtype, R=R, L=L)
        if nv is not None and L % (16 // np.dtype(dtype).itemsize) == 0 and L < 2**31:
            spec = _spec("norm_rows_fwd_reg", dtype, nv, block[0] // 32)
            limit = _max_threads(spec)  # its registers may not allow the block
            if block[0] <= limit:
                ty = max(1, min(block[1], limit // block[0]))
                reg = (spec, (max(1, min(math.ceil(R / ty), 2**31 - 1)),), (block[0], ty))
        grid, block = launch_config("rows", dtype, R=R, L=L)
        plan = _PLANS[key] = (reg, (_spec("norm_rows_fwd", dtype), grid, block))
    return plan


def _rows_fwd(x, gain, bias, eps, gain_per_row, running=None):
    """Statistics per row and the normalized rows: (y, mean, rstd). running: (run_mean, run_var,
    momentum, var_scale), the running statistics updated in place by the same launch (see norm_rows_fwd)."""
    import cupy

    R, L = x.shape
    y = cupy.empty_like(x)
    mean = cupy.empty(R, dtype=cupy.float32)
    rstd = cupy.empty(R, dtype=cupy.float32)
    run_mean, run_var, momentum, var_scale = running or _NO_RUNNING
    aligned = _aligned(x, y, gain, bias) and L % (16 // x.dtype.itemsize) == 0
    reg, fallback = _rows_fwd_plan(x.dtype, R, L)
    spec, grid, block = reg if reg is not None and aligned and "rows_fwd" not in _FORCE_FALLBACK else fallback
    _launch(
        spec,
        grid,
        block,
        (
            y,
            x,
            gain,
            bias,
            mean,
            rstd,
            run_mean,
            run_var,
            np.int64(R),
            np.int64(L),
            np.float32(eps),
            np.float32(momentum),
            np.float32(var_scale),
            np.int32(gain_per_row),
            np.int32(aligned),
        ),
    )
    return y, mean, rstd


def _rows_bwd_plan(dtype, R, L, stat_per_col, cols):
    """(spec, grid, block, smem, cols, reg) of the row backward (cached). reg: the row-in-registers kernel
    (persistent grid sized to the resident capacity), else norm_rows_bwd; cols: it also writes the column
    sums (needs statistics per row and a row short enough)."""
    import cupy

    key = ("rows_bwd", cupy.cuda.runtime.getDevice(), dtype, R, L, stat_per_col, cols)
    plan = _PLANS.get(key)
    if plan is not None:
        return plan
    cols = cols and 8 * L <= _COLS_SMEM_MAX
    reg = None
    if not stat_per_col:
        reg = cols and _rows_plan(
            "rows_bwd", "norm_rows_bwd_reg", dtype, R, L, "true", max_vecs=COLS_MAX_VECS
        )
        if not reg:  # no column sums here (the row needs more vectors than COLS_MAX_VECS, or too long)
            cols = False
            reg = _rows_plan("rows_bwd", "norm_rows_bwd_reg", dtype, R, L, "false")
    if reg is None:
        grid, block = launch_config("rows", dtype, R=R, L=L)
        plan = (_spec("norm_rows_bwd", dtype), grid, block, 0, False, False)
    else:
        spec, grid, block = reg
        smem = 8 * L if cols else 0
        resident = _resident_blocks(spec, block[0] * block[1], smem, LAUNCH["rows_bwd"]["blocks_per_sm"])
        per_sm = min(resident, LAUNCH["rows_bwd"]["blocks_per_sm"]) if cols else resident
        plan = (spec, (max(1, min(grid[0], per_sm * _sm_count())),), block, smem, cols, True)
    _PLANS[key] = plan
    return plan


_SMEM_OPTIN: dict = {}


def _smem_optin() -> int:
    """The most dynamic + static shared memory a block may opt in to on the current device."""
    import cupy

    dev = cupy.cuda.runtime.getDevice()
    if dev not in _SMEM_OPTIN:
        try:
            _SMEM_OPTIN[dev] = int(cupy.cuda.Device(dev).attributes["MaxSharedMemoryPerBlockOptin"])
        except Exception:  # noqa: BLE001 - without the attribute: the portable 48 KiB
            _SMEM_OPTIN[dev] = 48 * 1024
    return _SMEM_OPTIN[dev]


def _bwd_cols_shape(dtype, L):
    """(NV, G) of norm_rows_bwd_cols for rows of L elements: the fewest warps G a row with at most
    LAUNCH["rows_bwd_cols"]["vecs"] vectors a thread; None when the row is not a whole number of 16-byte
    vectors or too long."""
    lanes = 16 // np.dtype(dtype).itemsize
    vecs = L // lanes
    g = next((g for g in FWD_WARPS if 32 * g * LAUNCH["rows_bwd_cols"]["vecs"] >= vecs), None)
    if L % lanes or not 0 < L < 2**31 or g is None:
        return None
    return next(v for v in BWD_COLS_VECS if 32 * g * v >= vecs), g


def _bwd_cols_plan(dtype, R, L):
    """(spec, grid, block, smem) of norm_rows_bwd_cols (cached), or None when it does not apply (the row
    is not a whole number of 16-byte vectors, is too long, or the column accumulators don't fit)."""
    import cupy

    key = ("rows_bwd_cols", cupy.cuda.runtime.getDevice(), dtype, R, L)
    if key in _PLANS:
        return _PLANS[key]
    plan = None
    shape = _bwd_cols_shape(dtype, L)
    if shape is not None and "rows_bwd" not in _FORCE_FALLBACK:
        nv, g = shape
        spec = _spec("norm_rows_bwd_cols", dtype, nv, g)
        static = 2 * 16 * g * 2 * 4
        groups = min(
            LAUNCH["rows_bwd_cols"]["groups"],
            15,
            _max_threads(spec) // (32 * g),
            (_smem_optin() - static) // (8 * L),
        )
        if groups >= 1:
            smem = groups * 8 * L
            resident = _resident_blocks(spec, 32 * g * groups, smem, 1)
            grid = max(1, min(math.ceil(R / groups), resident * _sm_count()))
            plan = (spec, (grid,), (32 * g, groups), smem)
    _PLANS[key] = plan
    return plan


def _rows_bwd(
    dy,
    x,
    gain,
    mean,
    rstd,
    stat_per_col,
    gain_per_row,
    train,
    want_dx=True,
    want_dgain=True,
    want_dbias=True,
    cols=False,
):
    """Row reductions of the normalization backward (see norm_rows_bwd_reg): (dx, dgain_row, dbias_row, ws),
    the row sums in x's dtype (each None unless wanted).

    cols: also the per-block column sums ws [blocks, 2, L] of dy and dy·xhat (statistics per row), or
    None when the row is too long for that (the caller then runs the column pass itself).
    """
    import cupy

    R, L = x.shape
    spec, grid, block, smem, cols, reg = _rows_bwd_plan(x.dtype, R, L, stat_per_col, cols)
    dx = cupy.empty_like(x) if want_dx else None
    s2 = cupy.empty(R, dtype=x.dtype) if want_dgain else None
    s1 = cupy.empty(R, dtype=x.dtype) if want_dbias else None
    aligned = _aligned(dx, dy, x, gain) and L % (16 // x.dtype.itemsize) == 0
    sizes = (np.int64(R), np.int64(L))
    flags = (np.int32(gain_per_row), np.int32(train), np.int32(aligned))
    if not reg:
        _launch(
            spec, grid, block, (dx, s2, s1, dy, x, gain, mean, rstd, *sizes, np.int32(stat_per_col), *flags)
        )
        return dx, s2, s1, None
    ws = cupy.empty((grid[0], 2, L), dtype=cupy.float32) if cols else None
    _launch(spec, grid, block, (dx, s2, s1, ws, dy, x, gain, mean, rstd, *sizes, *flags), smem)
    return dx, s2, s1, ws


def _finalize(ws, x, gain, C, scale, eps, mode, want=("a", "b"), running=None, sums_t=False):
    """One launch: sums ws [splits, 1 or 2, C], finishes statistics (mode 0, updating the running
    statistics when given, see _rows_fwd) or gradient sums (mode 1): (out_a, out_b, sum0_t, sum1_t)."""
    import cupy

    out_a = cupy.empty(C, dtype=cupy.float32) if "a" in want else None
    out_b = cupy.empty(C, dtype=cupy.float32) if "b" in want else None
    s0_t = cupy.empty(C, dtype=x.dtype) if sums_t else None
    s1_t = cupy.empty(C, dtype=x.dtype) if sums_t else None
    run_mean, run_var, momentum, var_scale = running or _NO_RUNNING
    _launch(
        _spec("norm_finalize", x.dtype),
        (math.ceil(C / 32),),
        (32, 32 if ws.shape[0] > 64 else 8),  # lanes over the splits (kernels/ew.cu norm_finalize)
        (
            out_a,
            out_b,
            run_mean,
            run_var,
            s0_t,
            s1_t,
            ws,
            x,
            gain,
            np.int32(ws.shape[0]),
            np.int32(ws.shape[1]),
            np.int64(C),
            np.float32(scale),
            np.float32(eps),
            np.float32(momentum),
            np.float32(var_scale),
            np.int32(mode),
        ),
    )
    return out_a, out_b, s0_t, s1_t


def _cols_ws(x, dy, gain, mean, rstd, mode):
    """The per-split column sums ws [splits, 2, C] (float32) of norm_cols_reduce."""
    import cupy

    R, C = x.shape
    grid, block, rows_per_split = _cols_grid(x.dtype, R, C)
    ws = cupy.empty((grid[1], 2, C), dtype=cupy.float32)
    aligned = _aligned(x, dy) and C % (16 // x.dtype.itemsize) == 0
    _launch(
        _spec("norm_cols_reduce", x.dtype),
        grid,
        block,
        (
            ws,
            x,
            dy,
            gain,
            mean,
            rstd,
            np.int64(R),
            np.int64(C),
            np.int64(rows_per_split),
            np.int32(mode),
            np.int32(aligned),
        ),
    )
    return ws


def _column_sums(x):
    """Column sums of a 2-D array [R, C] in its dtype (accumulated in float32)."""
    ws = _cols_ws(x, None, None, None, None, 3)
    return _finalize(ws, x, None, x.shape[1], 1.0, 0.0, 1, want=(), sums_t=True)[2]


def _cols_stats(x, eps, running=None):
    """Per-column mean, rstd of [R, C], float32; running statistics updated as in _rows_fwd."""
    ws = _cols_ws(x, None, None, None, None, 0)
    mean, rstd, _, _ = _finalize(ws, x, None, x.shape[1], 1.0 / x.shape[0], eps, 0, running=running)
    return mean, rstd


def _apply_fwd(x, mean, rstd, gain, bias, stat_per_col, gain_per_col, run_var=None, eps=0.0, stats_out=None):
    """y = (x − mean)·rstd·gain + bias; statistics per column go through norm_cols_apply.

    run_var (batch norm inference, one launch): rstd = 1/sqrt(run_var + eps) computed in the kernel, which
    also writes the statistics it used to stats_out = (mean_out, rstd_out).
    """
    import cupy

    y = cupy.empty_like(x)
    R, C = x.shape
    aligned = _aligned(x, y, gain, bias) and C % (16 // x.dtype.itemsize) == 0
    mean_out, rstd_out = stats_out or (None, None)
    if stat_per_col:
        inference = (run_var, np.float32(eps), mean_out, rstd_out)
        return _cols_apply(y, x, None, mean, rstd, gain, bias, None, None, gain_per_col, aligned, inference)
    grid, block = _elementwise_grid(x.dtype, x.size)
    _launch(
        _spec("norm_apply_fwd", x.dtype),
        grid,
        block,
        (
            y,
            x,
            mean,
            rstd,
            gain,
            bias,
            run_var,
            np.float32(eps),
            mean_out,
            rstd_out,
            np.int64(R),
            np.int64(x.size),
            np.int64(C),
            np.int32(stat_per_col),
            np.int32(gain_per_col),
            np.int32(aligned),
        ),
    )
    return y


def _affine_cols(x, run_mean, run_var, gain, bias, eps, mean_out, rstd_out):
    """Batch-norm inference with features last (norm_cols_affine): y = (x − run_mean)·rsqrt(run_var + eps)
    ·gain + bias per column, one pass; mean_out, rstd_out [C] get the statistics used."""
    import cupy

    R, C = x.shape
    y = cupy.empty_like(x)
    if x.size == 0:
        if C:
            mean_out[...] = run_mean
            rstd_out[...] = 1.0 / cupy.sqrt(run_var + np.float32(eps))
        return y
    lanes = 16 // x.dtype.itemsize
    key = ("affine", x.dtype, R, C)
    grid = _PLANS.get(key)
    if grid is None:
        rows = AFFINE_BLOCK[1] * AFFINE_ROWS
        grid = _PLANS[key] = (math.ceil(C / (32 * lanes)), min(math.ceil(R / rows), 65535))
    aligned = _aligned(x, y, gain, bias, run_mean, run_var, mean_out, rstd_out) and C % lanes == 0
    _launch(
        _spec("norm_cols_affine", x.dtype),
        grid,
        AFFINE_BLOCK,
        (y, x, run_mean, run_var, gain, bias, np.float32(eps), mean_out, rstd_out, np.int64(R), np.int64(C))
        + (np.int32(aligned),),
    )
    return y


def _apply_bwd(dy, x, mean, rstd, gain, A, B, gain_per_col, row_sums=False):
    """dx = rstd·(gain·dy − A − xhat·B) with statistics (and A, B) per column; row_sums (no gain per
    column): (dx, ws_rows [column tiles, 2, R] float32), the sums of dy and dy·xhat over each tile's columns
    per row."""
    import cupy

    dx = cupy.empty_like(x)
    aligned = _aligned(x, dx, dy, gain) and x.shape[1] % (16 // x.dtype.itemsize) == 0
    if not row_sums:
        return _cols_apply(dx, x, dy, mean, rstd, gain, None, A, B, gain_per_col, aligned)
    grid, _, _ = _cols_grid(x.dtype, *x.shape)
    ws = cupy.empty((grid[0], 2, x.shape[0]), dtype=cupy.float32)
    return _cols_apply(dx, x, dy, mean, rstd, gain, None, A, B, gain_per_col, aligned, ws_rows=ws), ws


def _cols_apply(
    out, x, dy, mean, rstd, gain, bias, A, B, gain_per_col, aligned, inference=None, ws_rows=None
):
    """norm_cols_apply on the row splits of the column reduction that made the statistics. inference:
    (run_var, eps, mean_out, rstd_out), rstd from the running variance (see _apply_fwd); ws_rows: the row
    sums of the backward (see _apply_bwd)."""
    R, C = x.shape
    grid, block, rows_per_split = _cols_grid(x.dtype, R, C)
    rev = "true" if LAUNCH["cols"]["reverse"] else "false"
    _launch(
        _spec("norm_cols_apply", x.dtype, rev),
        grid,
        block,
        (
            out,
            x,
            dy,
            mean,
            rstd,
            gain,
            bias,
            A,
            B,
            *(inference or _NO_INFERENCE),
            ws_rows,
            np.int64(R),
            np.int64(C),
            np.int64(rows_per_split),
            np.int32(gain_per_col),
            np.int32(aligned),
        ),
    )
    return out


def _check_norm(x, gain, bias, feature_axis, backend, what):
    _check_input("x", x, backend)
    _check_2d("x", x)
    fa = V.check_feature_axis(feature_axis)
    F = x.shape[fa]
    detail = f"x.shape[{fa}], the {what} axis"
    _check_vector("gain", gain, F, "x", x, backend, detail)
    _check_vector("bias", bias, F, "x", x, backend, detail)
    return fa


def _check_eps(eps):
    eps = _check_scalar("eps", eps)
    if eps < 0:
        raise ValueError(f"eps: expected eps >= 0, got {eps}")
    return eps


def _check_stats(name, arr, length, backend, detail):
    if backend == "cupy":
        import cupy

        if not isinstance(arr, cupy.ndarray):
            raise TypeError(
                f"{name}: expected a cupy.ndarray (from the forward pass), got {type(arr).__name__}"
            )
    elif not isinstance(arr, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray (from the forward pass), got {type(arr).__name__}")
    V.check_float(name, arr, ("float32", "float64") if backend == "numpy" else ("float32",))
    V.check_contiguous(name, arr)
    V.check_shape(name, arr, (length,), detail)


def layer_norm_fprop(x, gain=None, bias=None, *, feature_axis: int = 1, eps: float = 1e-5):
    """y = (x − mean) / sqrt(var + eps) · gain + bias over the features of each sample.

    x: [N, F] (feature_axis 1) or [F, N] (feature_axis 0), float16|bfloat16|float32 (float64 on NumPy);
    gain, bias: [F] in x's dtype, or None. Returns (y like x, mean [N], rstd [N]); mean and rstd are
    float32 (float64 for float64 x) and are what :func:`layer_norm_bprop` needs.
    """
    backend = _backend(x=x, gain=gain, bias=bias)
    fa = _check_norm(x, gain, bias, feature_axis, backend, "feature")
    eps = _check_eps(eps)
    if backend == "numpy":
        return ref.layer_norm_fprop(x, gain, bias, fa, eps)
    if fa == 1:
        return _rows_fwd(x, gain, bias, eps, gain_per_row=0)
    one_pass = _ops_cols.cols_fwd(x, gain, bias, eps, gain_per_col=0)  # sm_90, tile on chip; else None
    if one_pass is not None:
        return one_pass
    mean, rstd = _cols_stats(x, eps)
    return _apply_fwd(x, mean, rstd, gain, bias, stat_per_col=1, gain_per_col=0), mean, rstd


def layer_norm_bprop(dy, x, gain, mean, rstd, *, feature_axis: int = 1):
    """(dx, dgain, dbias) of :func:`layer_norm_fprop`; dgain is None when gain is None.

    dy, x: like the forward's x; mean, rstd: the forward's. dgain, dbias: [F] (gain's and x's dtype).
    """
    backend = _backend(dy=dy, x=x, gain=gain, mean=mean, rstd=rstd)
    fa = _check_norm(x, gain, None, feature_axis, backend, "feature")
    _check_like("dy", dy, "x", x, backend)
    n = x.shape[1 - fa]
    for name, arr in (("mean", mean), ("rstd", rstd)):
        _check_stats(name, arr, n, backend, f"x.shape[{1 - fa}], one per sample")
    if backend == "numpy":
        return ref.layer_norm_bprop(dy, x, gain, mean, rstd, fa)
    F = x.shape[fa]
    if fa == 1:  # one pass: dx per row, the gain and bias gradients as per-block column partials
        import cupy

        R = x.shape[0]
        plan = _bwd_cols_plan(x.dtype, R, F) if _aligned(dy, x, gain) else None
        if plan is not None and R > 0:
            spec, grid, block, smem = plan
            dx = cupy.empty_like(x)
            ws = cupy.empty((grid[0], 2, F), dtype=cupy.float32)
            _launch(spec, grid, block, (dx, ws, dy, x, gain, mean, rstd, np.int64(R), np.int64(F)), smem)
            *_, dbias, dgain = _finalize(ws, x, None, F, 1.0, 0.0, 1, want=(), sums_t=True)
            return dx, (None if gain is None else dgain), dbias
        dx, _, _, ws = _rows_bwd(
            dy, x, gain, mean, rstd, 0, 0, train=1, want_dgain=False, want_dbias=False, cols=True
        )
        if ws is None:
            ws = _cols_ws(x, dy, None, mean, rstd, 2)
        *_, dbias, dgain = _finalize(ws, x, None, F, 1.0, 0.0, 1, want=(), sums_t=True)
    else:
        one_pass = _ops_cols.cols_bwd(dy, x, gain, mean, rstd, 0, 1, want_sums=False, row_sums=True)
        if one_pass is not None:  # dx and per-tile row sums in one pass; the tiles summed in order
            dx, _, _, ws = one_pass
            *_, dbias, dgain = _finalize(ws, x, None, F, 1.0, 0.0, 1, want=(), sums_t=True)
        else:
            # the split path: column sums, then dx with the per-tile row sums (dbias, dgain) in the same pass
            ws = _cols_ws(x, dy, gain, mean, rstd, 1)
            A, B, *_ = _finalize(ws, x, None, x.shape[1], 1.0 / F, 0.0, 1)
            dx, ws_rows = _apply_bwd(dy, x, mean, rstd, gain, A, B, gain_per_col=0, row_sums=True)
            *_, dbias, dgain = _finalize(ws_rows, x, None, F, 1.0, 0.0, 1, want=(), sums_t=True)
    return dx, (None if gain is None else dgain), dbias


def _check_running(name, arr, C, backend):
    if arr is None:
        return
    _check_stats(name, arr, C, backend, "one per channel")


def batch_norm_fprop(
    x,
    gain=None,
    bias=None,
    *,
    feature_axis: int = 1,
    training: bool = True,
    running_mean=None,
    running_var=None,
    momentum: float = 0.1,
    eps: float = 1e-5,
):
    """Batch normalization of x [N, C] (feature_axis 1) or [C, N] (feature_axis 0) over the batch.

    gain, bias: [C] in x's dtype or None. training: normalize with this batch's statistics and update
    running_mean/running_var ([C] float32, or float64 on NumPy; optional) in place,
    r ← (1 − momentum)·r + momentum·stat with the unbiased variance (as PyTorch). Not training:
    normalize with the running statistics (both required). Returns (y, mean [C], rstd [C]) (float32),
    the statistics used, which :func:`batch_norm_bprop` takes.
    """
    backend = _backend(x=x, gain=gain, bias=bias, running_mean=running_mean, running_var=running_var)
    fa = _check_norm(x, gain, bias, feature_axis, backend, "channel")
    eps = _check_eps(eps)
    momentum = _check_scalar("momentum", momentum)
    C, N = x.shape[fa], x.shape[1 - fa]
    _check_running("running_mean", running_mean, C, backend)
    _check_running("running_var", running_var, C, backend)
    if not training and (running_mean is None or running_var is None):
        raise ValueError("running_mean, running_var: expected both arrays when training=False, got None")
    if training and N < 2 and running_var is not None:
        raise ValueError(f"x: expected at least 2 samples on axis {1 - fa} to update running_var, got {N}")
    if backend == "numpy":
        return ref.batch_norm_fprop(x, gain, bias, fa, training, running_mean, running_var, momentum, eps)
    import cupy

    if not training:  # one launch: the kernel takes the running statistics and writes mean, rstd
        mean = cupy.empty(C, dtype=cupy.float32)
        rstd = cupy.empty(C, dtype=cupy.float32)
        if fa == 1:
            return _affine_cols(x, running_mean, running_var, gain, bias, eps, mean, rstd), mean, rstd
        y = _apply_fwd(
            x, running_mean, None, gain, bias, fa, fa, run_var=running_var, eps=eps, stats_out=(mean, rstd)
        )
        return y, mean, rstd
    running = None  # updated in place by the launch that finishes the statistics
    if running_mean is not None or running_var is not None:
        running = (running_mean, running_var, momentum, momentum * N / max(N - 1, 1))
    if fa == 1:
        one_pass = _ops_cols.cols_fwd(x, gain, bias, eps, gain_per_col=1, running=running)
        if one_pass is not None:
            return one_pass
        mean, rstd = _cols_stats(x, eps, running)
        return _apply_fwd(x, mean, rstd, gain, bias, stat_per_col=1, gain_per_col=1), mean, rstd
    return _rows_fwd(x, gain, bias, eps, gain_per_row=1, running=running)


def batch_norm_bprop(dy, x, gain, mean, rstd, *, feature_axis: int = 1, training: bool = True):
    """(dx, dgain, dbias) of :func:`batch_norm_fprop` (training: through the batch statistics; else the
    statistics are constants). dgain is None when gain is None."""
    backend = _backend(dy=dy, x=x, gain=gain, mean=mean, rstd=rstd)
    fa = _check_norm(x, gain, None, feature_axis, backend, "channel")
    _check_like("dy", dy, "x", x, backend)
    C, N = x.shape[fa], x.shape[1 - fa]
    for name, arr in (("mean", mean), ("rstd", rstd)):
        _check_stats(name, arr, C, backend, f"x.shape[{fa}], one per channel")
    if backend == "numpy":
        return ref.batch_norm_bprop(dy, x, gain, mean, rstd, fa, training)
    one_pass = fa == 1 and _ops_cols.cols_bwd(dy, x, gain, mean, rstd, 1, int(bool(training)), want_sums=True)
    if one_pass:
        dx, dbias, dgain, _ = one_pass
    elif fa == 1:
        ws = _cols_ws(x, dy, None, mean, rstd, 1)
        A, B, dbias, dgain = _finalize(
            ws, x, gain, C, 1.0 / N, 0.0, 1, want=("a", "b") if training else (), sums_t=True
        )
        dx = _apply_bwd(dy, x, mean, rstd, gain, A, B, gain_per_col=1)
    else:
        dx, dgain, dbias, _ = _rows_bwd(
            dy, x, gain, mean, rstd, 0, 1, train=int(bool(training)), want_dgain=gain is not None
        )
    return dx, (None if gain is None else dgain), dbias


# ---------------------------------------------------------------------------------------------------
# L2 weight normalization of block-sparse weights

_WN_TABLES: dict = {}


def _wn_layout(layout):
    if isinstance(layout, BlockLayout):
        return layout
    lay = getattr(layout, "layout", None)
    if isinstance(lay, BlockLayout):
        return lay
    raise TypeError(f"layout: expected a BlockSparseMatMul or BlockLayout, got {type(layout).__name__}")


def _check_wn(layout, w, gain, per, backend):
    lay = _wn_layout(layout)
    if per not in ("unit", "block"):
        raise ValueError(f"per: expected 'unit' or 'block', got {per!r}")
    _check_input("w", w, backend)
    V.check_ndim("w", w, 3)
    b = w.shape[-1]
    expected_b = getattr(layout, "block_size", b)
    V.check_shape("w", w, (lay.nnz, expected_b, expected_b), f"nnz_blocks={lay.nnz}, block_size={expected_b}")
    length = lay.out_blocks * b if per == "unit" else lay.nnz
    detail = f"out_blocks={lay.out_blocks} × block_size={b}" if per == "unit" else f"nnz_blocks={lay.nnz}"
    _check_vector("gain", gain, length, "w", w, backend, detail)
    return lay, b, length


def _wn_tables(lay):
    """The layout's (col_ptr, col_order, cols) on the current GPU (the layout caches its hash)."""
    import cupy

    key = (lay, cupy.cuda.runtime.getDevice())
    tables = _WN_TABLES.get(key)
    if tables is None:
        tables = _WN_TABLES[key] = tuple(
            cupy.asarray(t, dtype=cupy.int32) for t in (lay.col_ptr, lay.col_order, lay.cols)
        )
    return tables


def _wn_aligned(b, dtype, *arrays) -> int:
    """16-byte vectors in the weight-norm kernels: aligned pointers and b a multiple of the lanes."""
    return int(_aligned(*arrays) and b % (16 // np.dtype(dtype).itemsize) == 0)


def _wn_unit_reduce(lay, w, w2, b, eps=0.0, rnorm=None, dgain=None):
    """Sums of w·w2 over each output unit's column of nonzero blocks, float32 [out_blocks·b], finished in
    the kernel: forward (rnorm None) rnorm = 1/sqrt(Σ w² + eps); backward the sums, and dgain = sums·rnorm
    (in the gain's dtype) written when dgain is given."""
    import cupy

    out = cupy.empty(lay.out_blocks * b, dtype=cupy.float32)
    col_ptr, col_order, _ = _wn_tables(lay)
    _launch(
        _spec("wn_reduce_unit", w.dtype),
        (lay.out_blocks,),
        (LAUNCH["wn_unit"]["threads"],),
        (
            out,
            dgain,
            w,
            w2,
            rnorm,
            col_ptr,
            col_order,
            np.int32(b),
            np.float32(eps),
            np.int32(rnorm is None),
            np.int32(_wn_aligned(b, w.dtype, w, w2)),
        ),
    )
    return out


def _wn_block(w, dv, gain, rnorm, b, eps):
    """wn_block: forward (dv None) returns (v, rnorm); backward returns (dw, dgain) (dgain None without
    a gain)."""
    import cupy

    out = cupy.empty_like(w)
    nnz = w.shape[0]
    if dv is None:
        rnorm = red = cupy.empty(nnz, dtype=cupy.float32)
    else:
        red = None if gain is None else cupy.empty_like(gain)
    t = LAUNCH["wn_block"]["threads"]
    aligned = int(_aligned(out, w, dv) and (b * b) % (16 // w.dtype.itemsize) == 0)
    # the block in registers when it is a whole number (1, 2, 4, 8) of 16-byte vectors a lane
    nv = b * b // (32 * (16 // w.dtype.itemsize))
    reg = aligned and nv in WN_BLOCK_VECS and nv * 32 * 16 == b * b * w.dtype.itemsize
    reg = reg and "wn_block" not in _FORCE_FALLBACK
    _launch(
        _spec("wn_block_reg", w.dtype, nv) if reg else _spec("wn_block", w.dtype),
        (math.ceil(nnz / (t // 32)),),
        (t,),
        (out, rnorm, None if dv is None else red, w, dv, gain, np.int64(nnz), np.int32(b), np.float32(eps))
        + (np.int32(aligned),),
    )
    return out, red


def _wn_apply(lay, w, dv, gain, rnorm, dot, b):
    import cupy

    out = cupy.empty_like(w)
    _, _, cols = _wn_tables(lay)
    grid, block = _elementwise_grid(w.dtype, w.size)
    _launch(
        _spec("wn_apply", w.dtype),
        grid,
        block,
        (
            out,
            w,
            dv,
            gain,
            rnorm,
            dot,
            cols,
            np.int64(w.size),
            np.int32(b),
            np.int32(_wn_aligned(b, w.dtype, out, w, dv)),
        ),
    )
    return out


def weight_norm_fprop(layout, w, gain=None, *, per: str = "unit", eps: float = 1e-12):
    """v = gain · w / sqrt(‖w‖² + eps), the L2 norm per output unit or per block.

    layout: the BlockSparseMatMul (or BlockLayout) that w belongs to; w: [nnz, b, b]
    float16|bfloat16|float32 (float64 on NumPy). per="unit": the norm of each output feature's
    column over all its nonzero blocks, gain [M = out_blocks·b]; per="block": the Frobenius norm of
    each block, gain [nnz]. gain None: 1.
    Returns (v like w, rnorm = 1/sqrt(‖w‖² + eps), float32 [M] or [nnz]).
    """
    backend = _backend(w=w, gain=gain)
    lay, b, length = _check_wn(layout, w, gain, per, backend)
    eps = _check_eps(eps)
    if backend == "numpy":
        return ref.weight_norm_fprop(lay, w, gain, per, eps)
    if per == "block":  # one warp per block: the norm and the scaling in one kernel
        return _wn_block(w, None, gain, None, b, eps)
    one_pass = _ops_cols.wn_unit(lay, _wn_tables(lay)[:2], w, None, gain, None, b, eps)
    if one_pass is not None:
        return one_pass
    rnorm = _wn_unit_reduce(lay, w, w, b, eps=eps)
    return _wn_apply(lay, w, None, gain, rnorm, None, b), rnorm


def weight_norm_bprop(layout, dv, w, gain, rnorm, *, per: str = "unit"):
    """(dw, dgain) of :func:`weight_norm_fprop`: dw = g·r·(dv − w·r²·Σ dv·w), dgain = r·Σ dv·w
    (sums over the unit or block); dgain is None when gain is None."""
    backend = _backend(dv=dv, w=w, gain=gain, rnorm=rnorm)
    lay, b, length = _check_wn(layout, w, gain, per, backend)
    _check_like("dv", dv, "w", w, backend)
    _check_stats("rnorm", rnorm, length, backend, "from weight_norm_fprop")
    if backend == "numpy":
        return ref.weight_norm_bprop(lay, dv, w, gain, rnorm, per)
    if per == "block":
        return _wn_block(w, dv, gain, rnorm, b, 0.0)
    one_pass = _ops_cols.wn_unit(lay, _wn_tables(lay)[:2], w, dv, gain, rnorm, b)
    if one_pass is not None:
        return one_pass
    import cupy

    dgain = None if gain is None else cupy.empty_like(gain)
    dot = _wn_unit_reduce(lay, dv, w, b, rnorm=rnorm, dgain=dgain)
    return _wn_apply(lay, w, dv, gain, rnorm, dot, b), dgain


# ---------------------------------------------------------------------------------------------------
# fused LSTM gates


def _check_lstm(z, c_prev, feature_axis, backend):
    _check_input("z", z, backend)
    _check_2d("z", z)
    fa = V.check_feature_axis(feature_axis)
    if z.shape[fa] % 4:
        raise ValueError(
            f"z: expected 4·H gate pre-activations (i, f, g, o) on axis {fa}, got {z.shape[fa]} "
            "(not a multiple of 4)"
        )
    shape = list(z.shape)
    shape[fa] //= 4
    _check_like("c_prev", c_prev, "z", z, backend, tuple(shape), f"z.shape[{fa}] / 4 = H units")
    return fa, tuple(shape)


def lstm_gates_fprop(z, c_prev, *, feature_axis: int = 1):
    """One fused pass of the LSTM cell update; returns (c, h).

    z: [N, 4H] (feature_axis 1) or [4H, N] (0), the gate pre-activations in the order (i, f, g, o),
    each a block of H features; c_prev: [N, H] (or [H, N]). c = σ(f)·c_prev + σ(i)·tanh(g),
    h = σ(o)·tanh(c). float16|bfloat16|float32 (float64 on NumPy).
    """
    backend = _backend(z=z, c_prev=c_prev)
    fa, shape = _check_lstm(z, c_prev, feature_axis, backend)
    if backend == "numpy":
        return ref.lstm_gates_fprop(z, c_prev, fa)
    import cupy

    c, h = cupy.empty_like(c_prev), cupy.empty_like(c_prev)
    n, H = c.size, shape[fa]
    lanes = 16 // z.dtype.itemsize
    aligned = _aligned(z, c_prev, c, h) and (H if fa == 1 else n) % lanes == 0
    grid, block = _elementwise_grid(z.dtype, n)
    _launch(
        _spec("lstm_fwd", z.dtype),
        grid,
        block,
        (c, h, z, c_prev, np.int64(n), np.int64(H), np.int32(fa), np.int32(aligned)),
    )
    return c, h


def lstm_gates_bprop(dh, dc, z, c_prev, *, feature_axis: int = 1):
    """(dz, dc_prev) of :func:`lstm_gates_fprop`; c is recomputed from z and c_prev.

    dh: [N, H] (or [H, N]) gradient of h; dc: the gradient reaching c from the next step, or None (0).
    """
    backend = _backend(dh=dh, dc=dc, z=z, c_prev=c_prev)
    fa, shape = _check_lstm(z, c_prev, feature_axis, backend)
    _check_like("dh", dh, "c_prev", c_prev, backend)
    if dc is not None:
        _check_like("dc", dc, "c_prev", c_prev, backend)
    if backend == "numpy":
        return ref.lstm_gates_bprop(dh, dc, z, c_prev, fa)
    import cupy

    dz, dc_prev = cupy.empty_like(z), cupy.empty_like(c_prev)
    n, H = c_prev.size, shape[fa]
    lanes = 16 // z.dtype.itemsize
    aligned = _aligned(dz, dc_prev, dh, dc, z, c_prev) and (H if fa == 1 else n) % lanes == 0
    grid, block = _elementwise_grid(z.dtype, n)
    _launch(
        _spec("lstm_bwd", z.dtype),
        grid,
        block,
        (dz, dc_prev, dh, dc, z, c_prev, np.int64(n), np.int64(H), np.int32(fa), np.int32(aligned)),
    )
    return dz, dc_prev


# ---------------------------------------------------------------------------------------------------
# self check (python -m cusparseblocks check)

_CHECK_TOL = {"float64": 1e-10, "float32": 1e-4, "float16": 5e-3, "bfloat16": 3e-2}


def _rel(a, r):
    a = np.asarray(a.get() if hasattr(a, "get") else a, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    if a.shape != r.shape or not np.all(np.isfinite(a)):
        return math.inf
    return float(np.linalg.norm(a - r) / max(np.linalg.norm(r), 1e-30))


def self_check(backend: str = "numpy", dtype: str = "float32", seed: int = 0):
    """A quick randomized check of each op (forward and backward) against the float64 reference.

    Returns rows ``(name, rel_error, tolerance, passed)``: name, ‖out − ref‖/‖ref‖ of the worst output.
    """
    from ._array import bfloat16

    rng = np.random.default_rng(seed)
    if backend == "cupy":
        import cupy as xp
    elif backend == "numpy":
        xp = np
    else:
        raise ValueError(f"backend: expected 'numpy' or 'cupy', got {backend!r}")
    dt = bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    tol = _CHECK_TOL[dtype]

    def arr(*shape, scale=1.0):
        host = (rng.standard_normal(shape) * scale).astype(dt)
        return host, xp.asarray(host), host.astype(np.float64)

    rows = []

    def record(name, outs, refs):
        err = max(_rel(o, r) for o, r in zip(outs, refs))
        rows.append((name, err, tol, bool(err <= tol)))

    N, F = 37, 203
    _, x, x64 = arr(N, F)
    _, bias, b64 = arr(F)
    _, dy, dy64 = arr(N, F)
    for act in ACTIVATIONS:
        y = activation_fprop(x, act, bias=bias)
        dx, db = activation_bprop(dy, x, act, bias=bias)
        ry = ref.ew_fprop("add", x64, b64[None, :], act)
        rdx, rdb = ref.ew_bprop("add", dy64, x64, b64[None, :], act)
        record(f"activation.{act}", (y, dx, db), (ry, rdx, rdb.reshape(-1)))
    _, a2, a64 = arr(N, 1)
    record(
        "mul.broadcast",
        (mul_fprop(x, a2),) + mul_bprop(dy, x, a2),
        (ref.ew_fprop("mul", x64, a64),) + ref.ew_bprop("mul", dy64, x64, a64),
    )
    record(
        "dropout.mask",
        (dropout_mask((N, F), 0.3, 7, 3, xp=xp).astype(xp.float32),),
        (ref.dropout_mask((N, F), 0.3, 7, 3).astype(np.float64),),
    )
    for fa in (1, 0):
        xs, dys = (x, dy) if fa == 1 else (xp.ascontiguousarray(x.T), xp.ascontiguousarray(dy.T))
        xs64, dys64 = (x64, dy64) if fa == 1 else (x64.T.copy(), dy64.T.copy())
        _, g, g64 = arr(F)
        y, m, r = layer_norm_fprop(xs, g, bias, feature_axis=fa)
        grads = layer_norm_bprop(dys, xs, g, m, r, feature_axis=fa)
        ry, rm, rr = ref.layer_norm_fprop(xs64, g64, b64, fa)
        rg = ref.layer_norm_bprop(dys64, xs64, g64, rm, rr, fa)
        record(f"layer_norm.axis{fa}", (y,) + grads, (ry,) + rg)
        y, m, r = batch_norm_fprop(xs, g, bias, feature_axis=fa)
        grads = batch_norm_bprop(dys, xs, g, m, r, feature_axis=fa)
        ry, rm, rr = ref.batch_norm_fprop(xs64, g64, b64, fa)
        rg = ref.batch_norm_bprop(dys64, xs64, g64, rm, rr, fa)
        record(f"batch_norm.axis{fa}", (y,) + grads, (ry,) + rg)
    mask = rng.random((5, 4)) < 0.6
    mask[0, 0] = True
    lay = BlockLayout(mask)
    for per in ("unit", "block"):
        _, w, w64 = arr(lay.nnz, 8, 8)
        _, dv, dv64 = arr(lay.nnz, 8, 8)
        length = lay.out_blocks * 8 if per == "unit" else lay.nnz
        _, g, g64 = arr(length)
        v, rn = weight_norm_fprop(lay, w, g, per=per)
        grads = weight_norm_bprop(lay, dv, w, g, rn, per=per)
        rv, rrn = ref.weight_norm_fprop(lay, w64, g64, per)
        record(
            f"weight_norm.{per}", (v,) + grads, (rv,) + ref.weight_norm_bprop(lay, dv64, w64, g64, rrn, per)
        )
    H = 29
    _, z, z64 = arr(N, 4 * H)
    _, cp, cp64 = arr(N, H)
    _, dh, dh64 = arr(N, H)
    _, dc, dc64 = arr(N, H)
    record(
        "lstm_gates",
        lstm_gates_fprop(z, cp) + lstm_gates_bprop(dh, dc, z, cp),
        ref.lstm_gates_fprop(z64, cp64) + ref.lstm_gates_bprop(dh64, dc64, z64, cp64),
    )
    return rows
