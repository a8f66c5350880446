"""BlockSparseConv: reference path vs PyTorch, layouts, kernel tables (host emulation), validation, GPU kernels."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, poison, random_array

from cusparseblocks import layouts
from cusparseblocks.conv import BlockSparseConv, ChannelBlockLayout, self_check
from cusparseblocks.reference import conv as ref

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def _mask(rng, shape, density=0.5):
    m = rng.random(shape) < density
    m[0, 0] = True
    return m


def _layouts(rng):
    return {
        "uniform16": ChannelBlockLayout.from_mask(_mask(rng, (3, 2)), 16),
        "uniform32": ChannelBlockLayout.from_mask(_mask(rng, (2, 3)), 32),
        "uniform64": ChannelBlockLayout.from_mask(_mask(rng, (1, 2), 1.0), 64),
        "uniform8": ChannelBlockLayout.from_mask(_mask(rng, (3, 4)), 8),
        "nonuniform": ChannelBlockLayout(
            [((0, 5), (0, 7)), ([1, 6, 7], (3, 11)), ((5, 13), [10, 2, 12])], 13, 13
        ),
        "channel_random": ChannelBlockLayout.channel_random(12, 20, 0.25, seed=int(rng.integers(1 << 30))),
        "bd_shuffle": ChannelBlockLayout.block_diagonal(64, 4, shuffle=True, block_size=16),
    }


def _torch_conv(x_ncx, W, geom, groups=1):
    """PyTorch's convolution of the float64 inputs with explicit (asymmetric) zero padding."""
    dims = geom.dims
    pad = []
    for lo, hi in zip(reversed(geom.pad_lo), reversed(geom.pad_hi)):
        pad += [lo, hi]
    xt = F.pad(torch.as_tensor(x_ncx), pad)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    return fn(xt, torch.as_tensor(W), stride=geom.stride, dilation=geom.dilation, groups=groups)


GEOMETRIES = [
    # dims, filter, stride, padding, dilation, input spatial
    (1, (3,), 1, 1, 1, (11,)),
    (1, (4,), 2, ((2, 0),), 1, (13,)),
    (2, (3, 3), 1, 1, 1, (7, 6)),
    (2, (3, 2), (2, 1), ((1, 2), (0, 1)), (1, 2), (9, 8)),
    (2, (1, 1), 1, 0, 1, (5, 3)),
    (2, (5, 5), 1, "same", 1, (6, 7)),
    (3, (3, 2, 3), (1, 2, 1), ((1, 0), (1, 1), (0, 2)), (2, 1, 1), (6, 5, 7)),
]


# ---------------------------------------------------------------------------------------------------
# reference path


@needs_torch
@pytest.mark.parametrize("geo", GEOMETRIES, ids=lambda g: f"{g[0]}d-f{g[1]}-s{g[2]}-p{g[3]}-d{g[4]}")
@pytest.mark.parametrize("fmt", ["last", "first"])
def test_reference_matches_torch(rng, geo, fmt):
    dims, fshape, stride, padding, dilation, spatial = geo
    names = {1: ("NWC", "NCW"), 2: ("NHWC", "NCHW"), 3: ("NDHWC", "NCDHW")}[dims]
    lay = ChannelBlockLayout.from_mask(_mask(rng, (3, 2)), 4)
    conv = BlockSparseConv(
        lay,
        fshape,
        stride=stride,
        padding=padding,
        dilation=dilation,
        data_format=names[0] if fmt == "last" else names[1],
    )
    n = 2
    x_ncx = rng.standard_normal((n, conv.C, *spatial))
    x = np.ascontiguousarray(np.moveaxis(x_ncx, 1, -1)) if fmt == "last" else x_ncx
    w = conv.init_normal(rng, dtype=np.float64)
    W = conv.dense(w)
    geom = conv.geometry(spatial)
    xt = torch.tensor(x_ncx, requires_grad=True)
    Wt = torch.tensor(W, requires_grad=True)
    yt = _torch_conv(xt, Wt, geom)
    y = conv.fprop(x, w)
    y_ncx = np.moveaxis(y, -1, 1) if fmt == "last" else y
    assert_close(y_ncx, yt.detach().numpy(), "float64", "fprop")
    dy_ncx = rng.standard_normal(yt.shape)
    yt.backward(torch.tensor(dy_ncx))
    dy = np.ascontiguousarray(np.moveaxis(dy_ncx, 1, -1)) if fmt == "last" else dy_ncx
    dx = conv.bprop(dy, w, input_spatial=spatial)
    dx_ncx = np.moveaxis(dx, -1, 1) if fmt == "last" else dx
    assert_close(dx_ncx, xt.grad.numpy(), "float64", "bprop")
    dw = conv.updat(x, dy)
    assert dw.shape == conv.w_shape
    assert_close(dw, conv.from_dense(Wt.grad.numpy()), "float64", "updat")


@needs_torch
@pytest.mark.parametrize("groups,block_size", [(4, None), (4, 8), (2, 16), (8, 4)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_block_diagonal_shuffle_matches_grouped_conv(rng, groups, block_size, shuffle):
    C, K = 32, 32
    lay = ChannelBlockLayout.block_diagonal(C, groups, K, shuffle=shuffle, block_size=block_size)
    conv = BlockSparseConv(lay, (3, 3), padding=1, data_format="NCHW")
    x = rng.standard_normal((2, C, 6, 5))
    Wg = rng.standard_normal((K, C // groups, 3, 3))  # torch's grouped weight
    yt = F.conv2d(torch.tensor(x), torch.tensor(Wg), padding=1, groups=groups)
    if shuffle:
        yt = yt.reshape(2, groups, K // groups, 6, 5).transpose(1, 2).reshape(2, K, 6, 5)
    # our dense weight: output channel pos[g, a] reads group g's a-th filter
    W = np.zeros((K, C, 3, 3))
    gk, gc = K // groups, C // groups
    for g in range(groups):
        for a in range(gk):
            o = a * groups + g if shuffle else g * gk + a
            W[o, g * gc : (g + 1) * gc] = Wg[g * gk + a]
    w = conv.from_dense(W)
    np.testing.assert_array_equal(conv.dense(w), W)
    assert_close(conv.fprop(x, w), yt.numpy(), "float64", "grouped+shuffle")
    if block_size in (8, 16) or (block_size is None and C // groups in (8, 16)):
        assert lay.uniform is not None
        assert (lay.out_perm is not None) == shuffle


def test_channel_random_layout_runs(rng):
    lay = ChannelBlockLayout.channel_random(24, 16, fraction=0.25, seed=3)
    m = lay.connection_mask()
    assert lay.uniform == 1
    assert (m.sum(axis=0) > 0).all() and (m.sum(axis=1) > 0).all(), "no dead channels"
    conv = BlockSparseConv(lay, (3, 3), padding=1)
    x = rng.standard_normal((2, 5, 5, 24))
    w = conv.init_normal(rng, dtype=np.float64)
    y = conv.fprop(x, w)
    W = conv.dense(w)
    assert ((np.abs(W).sum(axis=(2, 3)) > 0) == (m.T > 0)).all()
    y2 = ref.conv_fprop(conv.geometry((5, 5)), x, W)
    assert_close(y, y2, "float64")


def test_layout_kinds():
    u = ChannelBlockLayout.from_mask(np.array([[1, 0], [1, 1]]), 16)
    assert u.uniform == 16 and u.out_perm is None and u.nnz == 3
    np.testing.assert_array_equal(u.mask, [[True, False], [True, True]])
    ptr, cin, cw = u.column_tables
    np.testing.assert_array_equal(ptr, [0, 2, 3])
    np.testing.assert_array_equal(cin, [0, 1, 1])
    np.testing.assert_array_equal(cw, [0, 1, 2])
    nu = ChannelBlockLayout([((0, 3), (0, 5)), ((3, 8), [7, 1])])
    assert nu.uniform is None and nu.in_channels == 8 and nu.out_channels == 8
    bd = ChannelBlockLayout.block_diagonal(64, 4, shuffle=True)
    assert bd.uniform == 16 and bd.out_perm is not None
    np.testing.assert_array_equal(bd.out_perm[:4], [0, 4, 8, 12])
    # blocks given in any order with aligned ranges are still uniform
    shuffled = ChannelBlockLayout([((16, 32), (0, 16)), ((0, 16), (16, 32))])
    assert shuffled.uniform == 16
    # duplicate blocks sum: non-uniform path
    dup = ChannelBlockLayout([((0, 16), (0, 16)), ((0, 16), (0, 16))])
    assert dup.uniform is None
    assert "uniform" in repr(u) and "non-uniform" in repr(nu)


def test_layouts_generator_masks():
    m = layouts.block_diagonal(8, 4, shuffle=True)
    lay = ChannelBlockLayout.from_mask(m, 16)
    assert lay.uniform == 16 and lay.nnz == 16


def test_edge_bias_map_and_grad(rng):
    conv = BlockSparseConv(
        ChannelBlockLayout.from_mask([[1]], 3), (3, 3), padding=1, input_spatial=(5, 4), edge_bias=True
    )
    emap, e = ref.edge_bias_map(conv.geometry((5, 4)))
    assert e == 8 and conv.edge_bias_shape == (8, 3)
    assert (emap[1:-1, 1:-1] == -1).all() and (emap[0, :] >= 0).all() and (emap[:, -1] >= 0).all()
    assert emap[0, 0] == 0  # raster order of first appearance
    x = rng.standard_normal((2, 5, 4, 3))
    w = conv.init_normal(rng, dtype=np.float64)
    eb = rng.standard_normal((8, 3))
    y0 = BlockSparseConv(conv.layout, (3, 3), padding=1).fprop(x, w)
    y = conv.fprop(x, w, eb)
    expect = y0.copy()
    for p in np.ndindex(5, 4):
        if emap[p] >= 0:
            expect[(slice(None), *p)] += eb[emap[p]]
    assert_close(y, expect, "float64")
    dy = rng.standard_normal(y.shape)
    deb = conv.updat_edge_bias(dy)
    # gradient check: d<dy, y>/d eb
    expect_g = np.zeros((8, 3))
    for p in np.ndindex(5, 4):
        if emap[p] >= 0:
            expect_g[emap[p]] += dy[(slice(None), *p)].sum(axis=0)
    assert_close(deb, expect_g, "float64")


def test_edge_bias_asymmetric_3d():
    geom = ref.ConvGeometry((4, 5, 3), (2, 3, 3), (1, 2, 1), (1, 0, 2), (0, 2, 0), (1, 1, 1))
    emap, e = ref.edge_bias_map(geom)
    assert emap.shape == geom.output_spatial and e == len(np.unique(emap[emap >= 0]))


def test_dense_roundtrip_nonuniform(rng):
    lay = ChannelBlockLayout([((0, 5), (0, 7)), ([1, 6, 7], (3, 11)), ((5, 13), [10, 2, 12])], 13, 13)
    conv = BlockSparseConv(lay, (2, 3))
    assert conv.w_shape == (int(lay.offsets[-1]) * 6,)
    w = conv.init_normal(rng, dtype=np.float64)
    W = conv.dense(w)
    # overlapping blocks sum in the dense weight; from_dense of a non-overlapping dense gives blocks back
    u = BlockSparseConv(ChannelBlockLayout.from_mask(_mask(rng, (3, 2)), 4), (3,))
    wu = u.init_normal(rng, dtype=np.float64)
    np.testing.assert_array_equal(u.from_dense(u.dense(wu)), wu)
    assert np.isfinite(W).all()


def test_self_check_numpy():
    rows = self_check("numpy")
    assert rows and all(passed for _, _, passed in rows), rows


# ---------------------------------------------------------------------------------------------------
# host emulation of the GPU kernels' tables (what the kernels read, checked without a GPU)


def _gather_column_conv(x, out_spatial, fshape, stride, pad_lo, dil, ptr, cin, cw, wblocks, perm, k_out):
    """What conv_fprop_tc computes: for each virtual output block j, Σ over (input block, w block) of
    column j and taps of the gathered (bounds-checked) input tile times the weight slice."""
    n, b = x.shape[0], wblocks.shape[-1]
    in_spatial = x.shape[1:-1]
    y = np.zeros((n, *out_spatial, k_out))
    for t, tap in enumerate(np.ndindex(*fshape)):
        idx, ok = [], np.ones(out_spatial, dtype=bool)
        grids = np.meshgrid(*[np.arange(p) for p in out_spatial], indexing="ij")
        for a, g in enumerate(grids):
            pos = g * stride[a] - pad_lo[a] + tap[a] * dil[a]
            ok &= (pos >= 0) & (pos < in_spatial[a])
            idx.append(np.clip(pos, 0, in_spatial[a] - 1))
        patch = x[(slice(None), *idx)] * ok[None, ..., None]
        for j in range(len(ptr) - 1):
            for e in range(ptr[j], ptr[j + 1]):
                i = cin[e]
                y[..., perm[j * b : (j + 1) * b]] += patch[..., i * b : (i + 1) * b] @ wblocks[cw[e], t]
    return y


@pytest.mark.parametrize("kind", ["uniform16", "uniform32", "bd_shuffle"])
@pytest.mark.parametrize("geo", [GEOMETRIES[2], GEOMETRIES[3], GEOMETRIES[6]], ids=["2d", "2d-asym", "3d"])
def test_tc_tables_emulated(rng, kind, geo):
    dims, fshape, stride, padding, dilation, spatial = geo
    lay = _layouts(rng)[kind]
    conv = BlockSparseConv(lay, fshape, stride=stride, padding=padding, dilation=dilation)
    geom = conv.geometry(spatial)
    b = lay.uniform
    x = rng.standard_normal((2, *spatial, conv.C))
    w = conv.init_normal(rng, dtype=np.float64)
    perm = lay.out_perm if lay.out_perm is not None else np.arange(conv.K)
    wb = w.reshape(lay.nnz, conv.taps, b, b)
    ptr, cin, cw = lay.column_tables
    y = _gather_column_conv(
        x,
        geom.output_spatial,
        fshape,
        geom.stride,
        geom.pad_lo,
        geom.dilation,
        ptr,
        cin,
        cw,
        wb,
        perm,
        conv.K,
    )
    assert_close(y, conv.fprop(x, w), "float64", "fprop tables")
    if all(s == 1 for s in geom.stride):
        # bprop as the GPU does it: transposed layout, flipped transposed blocks, dy gathered by perm
        dy = rng.standard_normal(y.shape)
        wt = wb[:, ::-1].transpose(0, 1, 3, 2)
        rptr, rout, rw = lay.row_tables
        pad_lo = [d * (f - 1) - lo for d, f, lo in zip(geom.dilation, fshape, geom.pad_lo)]
        dx = _gather_column_conv(
            dy[..., perm],
            spatial,
            fshape,
            (1,) * dims,
            pad_lo,
            geom.dilation,
            rptr,
            rout,
            rw,
            wt,
            np.arange(conv.C),
            conv.C,
        )
        assert_close(dx, conv.bprop(dy, w, input_spatial=spatial), "float64", "bprop tables")


@pytest.mark.parametrize("kind", ["uniform8", "nonuniform", "channel_random", "bd_shuffle"])
def test_direct_tables_emulated(rng, kind):
    lay = _layouts(rng)[kind]
    conv = BlockSparseConv(lay, (2, 3), padding=((1, 0), (1, 1)))
    geom = conv.geometry((5, 4))
    x = rng.standard_normal((2, 5, 4, conv.C))
    w = conv.init_normal(rng, dtype=np.float64).reshape(-1)
    conn = lay.connections(conv.taps)
    y = np.zeros((2, *geom.output_spatial, conv.K))
    xp = ref._pad(x, geom, np.float64)
    for t, tap in enumerate(np.ndindex(*conv.filter_shape)):
        patch = xp[(slice(None), *ref._window(geom, tap))]
        for k in range(conv.K):
            for e in range(conn["fw_ptr"][k], conn["fw_ptr"][k + 1]):
                y[..., k] += patch[..., conn["fw_idx"][e]] * w[conn["fw_off"][e] + t * conn["fw_ts"][e]]
    assert_close(y, conv.fprop(x, w.reshape(conv.w_shape)), "float64")
    # bprop lists hold the same elements, grouped by input channel
    for c in range(conv.C):
        s = slice(conn["bw_ptr"][c], conn["bw_ptr"][c + 1])
        assert sorted(zip(conn["bw_idx"][s], conn["bw_off"][s])) == sorted(
            (k, o) for cc, k, o in zip(conn["c"], conn["k"], conn["off"]) if cc == c
        )


# ---------------------------------------------------------------------------------------------------
# validation


def _small():
    return BlockSparseConv(ChannelBlockLayout.from_mask([[1, 0], [1, 1]], 8), (3, 3), padding=1)


def test_validation_arrays(rng):
    conv = _small()
    x = rng.standard_normal((2, 5, 5, 16)).astype(np.float32)
    w = conv.init_normal(0)
    with pytest.raises(ValueError, match="x: expected 16 on axis -1"):
        conv.fprop(x[..., :15].copy(), w)
    with pytest.raises(ValueError, match="x: expected 4 dimensions"):
        conv.fprop(x[0], w)
    with pytest.raises(ValueError, match="x: expected a C-contiguous"):
        conv.fprop(x.transpose(0, 2, 1, 3), w)
    with pytest.raises(TypeError, match="x: expected dtype"):
        conv.fprop(x.astype(np.int32), w)
    with pytest.raises(ValueError, match="w: expected shape"):
        conv.fprop(x, w[:2])
    with pytest.raises(TypeError, match="w: expected dtype float32"):
        conv.fprop(x, w.astype(np.float64))
    with pytest.raises(ValueError, match="batch size"):
        conv.fprop(x[:0], w)
    with pytest.raises(ValueError, match="out: expected shape"):
        conv.fprop(x, w, out=np.empty((2, 5, 5, 15), np.float32))
    with pytest.raises(TypeError, match="x: expected a numpy.ndarray or cupy.ndarray"):
        conv.fprop(x.tolist(), w)
    with pytest.raises(ValueError, match="too small"):
        conv.fprop(np.zeros((1, 1, 1, 16), np.float32), w) if False else BlockSparseConv(
            conv.layout, (3, 3)
        ).fprop(np.ones((1, 2, 2, 16), np.float32), w)
    y = conv.fprop(x, w)
    with pytest.raises(ValueError, match="dy: expected shape"):
        conv.updat(x, y[:, :4].copy())
    with pytest.raises(TypeError, match="dy: expected dtype"):
        conv.updat(x, y.astype(np.float64))
    with pytest.raises(TypeError, match="out_dtype"):
        conv.updat(x, y, out_dtype=np.float16)
    strided = BlockSparseConv(conv.layout, (3, 3), stride=2, padding=1)
    with pytest.raises(ValueError, match="input_spatial: needed"):
        strided.bprop(strided.fprop(x, w), w)
    with pytest.raises(ValueError, match="dy: expected spatial size"):
        conv.bprop(y, w, input_spatial=(6, 6))


def test_validation_edge_bias(rng):
    conv = BlockSparseConv(_small().layout, (3, 3), padding=1, input_spatial=(5, 5), edge_bias=True)
    x = rng.standard_normal((2, 5, 5, 16)).astype(np.float32)
    w = conv.init_normal(0)
    with pytest.raises(ValueError, match="edge_bias: expected an array of shape"):
        conv.fprop(x, w)
    with pytest.raises(ValueError, match="edge_bias: expected shape"):
        conv.fprop(x, w, np.zeros((3, 16), np.float32))
    with pytest.raises(ValueError, match="x: expected spatial size"):
        conv.fprop(x[:, :4].copy(), w, np.zeros(conv.edge_bias_shape, np.float32))
    with pytest.raises(ValueError, match="edge_bias=False"):
        _small().fprop(x, w, np.zeros((8, 16), np.float32))
    with pytest.raises(ValueError, match="edge_bias=False"):
        _small().updat_edge_bias(x)
    with pytest.raises(ValueError, match="input_spatial: expected"):
        BlockSparseConv(_small().layout, (3, 3), edge_bias=True)


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        ({"filter_shape": (3, 3, 3, 3)}, ValueError, "filter_shape"),
        ({"filter_shape": (3, 0)}, ValueError, "filter_shape"),
        ({"stride": (1, 2, 3)}, ValueError, "stride"),
        ({"dilation": 0}, ValueError, "dilation"),
        ({"padding": -1}, ValueError, "padding"),
        ({"padding": "full"}, ValueError, "padding"),
        ({"padding": ((1, 2, 3), 1)}, ValueError, "padding"),
        ({"data_format": "NHCW"}, ValueError, "data_format"),
        ({"data_format": "NDHWC"}, ValueError, "data_format"),
    ],
)
def test_validation_constructor(kwargs, err, match):
    args = {"filter_shape": (3, 3)}
    args.update(kwargs)
    with pytest.raises(err, match=match):
        BlockSparseConv(_small().layout, **args)


def test_validation_layout():
    with pytest.raises(ValueError, match="blocks: expected at least one"):
        ChannelBlockLayout([])
    with pytest.raises(ValueError, match=r"blocks\[0\]\[0\]: expected channels in \[0, 4\)"):
        ChannelBlockLayout([((0, 5), (0, 2))], 4, 4)
    with pytest.raises(ValueError, match="distinct"):
        ChannelBlockLayout([([1, 1], (0, 2))])
    with pytest.raises(ValueError, match="empty"):
        ChannelBlockLayout([((2, 2), (0, 2))])
    with pytest.raises(TypeError, match="pair"):
        ChannelBlockLayout([(0, 1, 2)])
    with pytest.raises(ValueError, match="out_perm"):
        ChannelBlockLayout.from_mask([[1]], 4, out_perm=[0, 0, 1, 2])
    with pytest.raises(ValueError, match="groups"):
        ChannelBlockLayout.block_diagonal(30, 4)
    with pytest.raises(ValueError, match="block_size"):
        ChannelBlockLayout.block_diagonal(32, 4, block_size=3)
    with pytest.raises(ValueError, match="block_size: expected a block size"):
        BlockSparseConv([[1]], (3, 3))
    with pytest.raises(ValueError, match="block_size: expected None or 8"):
        BlockSparseConv(ChannelBlockLayout.from_mask([[1]], 8), (3, 3), block_size=16)


# ---------------------------------------------------------------------------------------------------
# GPU kernels

GPU_DTYPES = ["float16", "bfloat16", "float32"]


def _gpu_case(
    rng,
    lay,
    fshape,
    stride,
    padding,
    dilation,
    spatial,
    dtype,
    fmt,
    edge_bias=False,
    n=3,
    ops=("fprop", "bprop", "updat"),
):
    import cupy

    conv = BlockSparseConv(
        lay,
        fshape,
        stride=stride,
        padding=padding,
        dilation=dilation,
        input_spatial=spatial,
        edge_bias=edge_bias,
        data_format=fmt,
    )
    last = conv.channels_last
    xs = (n, *spatial, conv.C) if last else (n, conv.C, *spatial)
    x = random_array(rng, xs, dtype)
    w = conv.init_normal(rng, dtype=np.float32).astype(x.dtype)
    eb = random_array(rng, conv.edge_bias_shape, dtype) if edge_bias else None
    r64 = BlockSparseConv(
        lay,
        fshape,
        stride=stride,
        padding=padding,
        dilation=dilation,
        input_spatial=spatial,
        edge_bias=edge_bias,
        data_format=fmt,
    )
    f64 = lambda a: None if a is None else a.astype(np.float64)  # noqa: E731
    y64 = r64.fprop(f64(x), f64(w), f64(eb))
    dy = random_array(rng, y64.shape, dtype)
    X, W, DY = cupy.asarray(x), cupy.asarray(w), cupy.asarray(dy)
    EB = None if eb is None else cupy.asarray(eb)
    y = poison(cupy, y64.shape, dtype)
    conv.fprop(X, W, EB, out=y)
    assert_close(y, y64, dtype, "fprop")
    if "bprop" in ops:
        dx = poison(cupy, x.shape, dtype)
        conv.bprop(DY, W, out=dx)
        assert_close(dx, r64.bprop(f64(dy), f64(w)), dtype, "bprop")
    if "updat" in ops:
        dw = poison(cupy, conv.w_shape, "float32")
        conv.updat(X, DY, out=dw)
        assert_close(dw, r64.updat(f64(x), f64(dy)), "float32" if dtype == "float32" else dtype, "updat")
    if edge_bias:
        deb = conv.updat_edge_bias(DY, out_dtype=np.float32)
        assert_close(
            deb, r64.updat_edge_bias(f64(dy)), "float32" if dtype == "float32" else dtype, "edge bias"
        )
    return conv


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize(
    "kind", ["uniform16", "uniform32", "uniform64", "uniform8", "nonuniform", "channel_random", "bd_shuffle"]
)
@pytest.mark.parametrize("fmt", ["NHWC", "NCHW"])
def test_gpu_conv2d(rng, dtype, kind, fmt):
    lay = _layouts(rng)[kind]
    conv = _gpu_case(rng, lay, (3, 3), 1, 1, 1, (9, 7), dtype, fmt)
    if kind in ("uniform16", "uniform32", "uniform64", "bd_shuffle") and fmt == "NHWC" and dtype != "float32":
        assert conv.uses_tensor_cores(dtype, "fprop") and conv.uses_tensor_cores(dtype, "bprop")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("geo", GEOMETRIES, ids=lambda g: f"{g[0]}d-f{g[1]}-s{g[2]}-p{g[3]}-d{g[4]}")
@pytest.mark.parametrize("kind", ["uniform32", "nonuniform"])
def test_gpu_geometries(rng, dtype, geo, kind):
    dims, fshape, stride, padding, dilation, spatial = geo
    fmt = {1: "NWC", 2: "NHWC", 3: "NDHWC"}[dims]
    _gpu_case(rng, _layouts(rng)[kind], fshape, stride, padding, dilation, spatial, dtype, fmt, n=2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("fmt", ["NHWC", "NCHW"])
@pytest.mark.parametrize("kind", ["uniform32", "nonuniform"])
def test_gpu_edge_bias(rng, dtype, fmt, kind):
    _gpu_case(
        rng, _layouts(rng)[kind], (3, 3), (1, 2), ((2, 1), (1, 1)), 1, (8, 9), dtype, fmt, edge_bias=True
    )


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_gpu_large_ragged_tc(rng, dtype):
    # ragged batch·pixels (not a multiple of the 128-row tile), several blocks per column
    lay = ChannelBlockLayout.from_mask(_mask(rng, (4, 3), 0.6), 32)
    _gpu_case(rng, lay, (3, 3), 1, 1, 1, (13, 11), dtype, "NHWC", n=5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(
    "variant",
    [
        "tap",
        "halo:128x4",
        "halo:256x4",
        "halo:256x8",
        "halo:512x4",
        "halo:512x8",
        "halo:256x4:full",
        "halo:128x4:full",
        "halo:256x4:v1",
        "halo:128x4:run3",
        "halo:256x4:run8",
        "halo:256x4:roll",
        "halo:512x8:run1",
        "gmma",
        "gmma:128x4",
        "gmma:256x8",
        "gmma:512x8",
        "gmma:256x4:full",
        "gmma:128x4:run3",
        "gmma:256x4:v1",
        "ws",
        "ws:128",
        "ws:256:run1",
        "wst",
        "wst:128",
        "wst:256:run1",
        "wst4",
        "ws4:256",
        "wss",
        "wss:128",
        "wss:256:run1",
        "wtp",
        "wtp:16",
        "wtp:32:run1",
        "wtpc:16",
    ],
)
def test_gpu_fprop_variants(rng, monkeypatch, dtype, variant):
    # every tensor-core fprop kernel (and the FLIP bprop of each halo tile) on ragged tiles, an empty
    # output column and uneven column lengths
    import cusparseblocks.conv as conv_module

    if variant.startswith(("gmma", "ws", "wtp")) and not conv_module._gmma_device():
        pytest.skip("the wgmma conv kernel needs a device of compute capability 9.0")
    monkeypatch.setattr(conv_module, "force_variant", variant)
    mask = _mask(rng, (5, 4), 0.5)
    mask[:, 1] = False
    mask[:, 2] = True
    lay = ChannelBlockLayout.from_mask(mask, 32)
    _gpu_case(rng, lay, (3, 3), 1, ((1, 2), (2, 0)), 1, (19, 37), dtype, "NHWC", n=3, ops=("fprop", "bprop"))


def _launches_of_case(monkeypatch, rng, lay, fshape, stride, padding, dilation, spatial, dtype, fmt, eb):
    """_gpu_case's fprop and bprop (batch 3), returning the names of the kernels launched."""
    import cusparseblocks.conv as conv_module

    launched = []
    real_launch = conv_module._launch
    monkeypatch.setattr(
        conv_module, "_launch", lambda spec, *a, **k: launched.append(spec.name) or real_launch(spec, *a, **k)
    )
    args = (rng, lay, fshape, stride, padding, dilation, spatial, dtype, fmt)
    _gpu_case(*args, edge_bias=eb, n=3, ops=("fprop", "bprop"))
    return launched


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(
    "case", ["b32-edge-bias", "b16", "strided-dilated", "1x1", "2x5-128", "one-block", "1d"]
)
def test_gpu_wss(rng, monkeypatch, dtype, case):
    # conv_fprop_wss (A from shared memory: the halo channel-chunk major, a tap's window a K-major descriptor):
    # row stride and dilation (the descriptor's row step), column dilation, other filters, edge bias, an
    # empty output block, both tiles, fprop and the FLIP bprop
    import cusparseblocks.conv as conv_module

    if not conv_module._gmma_device():
        pytest.skip("the wgmma conv kernel needs a device of compute capability 9.0")
    b, shape, fshape, stride, padding, dilation, spatial, fmt, eb, variant = {
        "b32-edge-bias": (32, (5, 4), (3, 3), 1, 1, 1, (19, 37), "NHWC", True, "wss"),
        "b16": (16, (6, 5), (3, 3), 1, ((1, 2), (2, 0)), 1, (13, 21), "NHWC", False, "wss:128"),
        "strided-dilated": (
            32,
            (4, 3),
            (3, 2),
            (2, 1),
            ((1, 2), (0, 1)),
            (2, 3),
            (23, 20),
            "NHWC",
            True,
            "wss:128",  # (the 256-position tile's rows at stride 2 do not fit four slots)
        ),
        "1x1": (16, (3, 4), (1, 1), 1, 0, 1, (9, 40), "NHWC", False, "wss"),
        "2x5-128": (32, (3, 3), (2, 5), 1, ((1, 0), (2, 2)), 1, (17, 11), "NHWC", False, "wss:128"),
        "one-block": (32, (1, 1), (3, 3), 1, 1, 1, (8, 16), "NHWC", True, "wss"),
        "1d": (32, (3, 2), (3,), 1, 1, 1, (45,), "NWC", False, "wss"),
    }[case]
    monkeypatch.setattr(conv_module, "force_variant", variant)
    mask = _mask(rng, shape, 0.5)
    if shape[1] > 2:
        mask[:, 1] = False
        mask[:, -1] = True
    lay = ChannelBlockLayout.from_mask(mask, b)
    launched = _launches_of_case(
        monkeypatch, rng, lay, fshape, stride, padding, dilation, spatial, dtype, fmt, eb
    )
    unit = all(v == 1 for v in np.broadcast_to(stride, (len(fshape),)))
    assert len([n for n in launched if n.startswith("conv_fprop_wss<")]) == (2 if unit else 1), launched


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(
    "case",
    ["b32-edge-bias", "b32-16", "b16", "strided-dilated", "1x1", "2x5", "one-block", "1d", "odd", "shuffle"],
)
def test_gpu_wtp(rng, monkeypatch, dtype, case):
    # conv_fprop_wtp (the transposed output-block groups fed by TMA: A = the group's weight slices through an
    # M-major descriptor, B = the halo's swizzled position rows through a K-major one): row stride and dilation,
    # column dilation, other filters, edge bias, an empty output block, an odd block alone in its group, a merged
    # shuffle, groups of 4 blocks (b = 16), both tiles, ragged tiles; fprop (the bprop takes the default kernel)
    import cusparseblocks.conv as conv_module

    if not conv_module._gmma_device():
        pytest.skip("the wgmma conv kernel needs a device of compute capability 9.0")
    b, shape, fshape, stride, padding, dilation, spatial, fmt, eb, variant = {
        "b32-edge-bias": (32, (5, 4), (3, 3), 1, 1, 1, (19, 37), "NHWC", True, "wtp:32"),
        "b32-16": (32, (6, 6), (3, 3), 1, ((1, 2), (2, 0)), 1, (21, 35), "NHWC", False, "wtp:16"),
        "b16": (16, (6, 5), (3, 3), 1, ((1, 2), (2, 0)), 1, (13, 21), "NHWC", False, "wtp:16"),
        "strided-dilated": (
            32,
            (4, 3),
            (3, 2),
            (2, 1),
            ((1, 2), (0, 1)),
            (2, 3),
            (23, 20),
            "NHWC",
            True,
            "wtp:16",
        ),
        "1x1": (16, (3, 4), (1, 1), 1, 0, 1, (9, 40), "NHWC", False, "wtp:32"),
        "2x5": (32, (3, 3), (2, 5), 1, ((1, 0), (2, 2)), 1, (17, 11), "NHWC", False, "wtp:16"),
        "one-block": (32, (1, 1), (3, 3), 1, 1, 1, (8, 16), "NHWC", True, "wtp"),
        "1d": (32, (3, 2), (3,), 1, 1, 1, (45,), "NWC", False, "wtp:16"),
        "odd": (32, (4, 5), (3, 3), 1, 1, 1, (33, 32), "NHWC", False, "wtp:32"),
        "shuffle": (32, None, (3, 3), 1, 1, 1, (16, 16), "NHWC", True, "wtp"),
    }[case]
    monkeypatch.setattr(conv_module, "force_variant", variant)
    if shape is None:
        lay = ChannelBlockLayout.block_diagonal(8 * b, 4, shuffle=True, block_size=b)
    else:
        mask = _mask(rng, shape, 0.5)
        if shape[1] > 2:
            mask[:, 1] = False
            mask[:, -1] = True
        lay = ChannelBlockLayout.from_mask(mask, b)
    launched = _launches_of_case(
        monkeypatch, rng, lay, fshape, stride, padding, dilation, spatial, dtype, fmt, eb
    )
    assert len([n for n in launched if n.startswith("conv_fprop_wtp<")]) == 1, launched


@pytest.mark.gpu
def test_gpu_misaligned_raises(rng):
    # the tiled kernels copy 16 bytes at a time: a weight view 2 bytes past a boundary is refused by name
    import cupy

    lay = ChannelBlockLayout.from_mask([[1, 1], [0, 1]], 32)
    conv = BlockSparseConv(lay, (3, 3), padding=1, data_format="NHWC")
    x = cupy.asarray(random_array(rng, (2, 8, 8, conv.C), "float16"))
    w = cupy.asarray(conv.init_normal(rng, dtype=np.float32).astype(np.float16))
    buf = cupy.zeros(w.size + 1, dtype=cupy.float16)
    wv = buf[1:].reshape(w.shape)
    wv[...] = w
    with pytest.raises(ValueError, match="w: the tiled conv kernels"):
        conv.fprop(x, wv)
    import cusparseblocks.conv as conv_module

    if conv_module._gmma_device():  # the default there (conv_fprop_wtp) stores 16-byte vectors: out too
        ybuf = cupy.empty(2 * 8 * 8 * conv.K + 4, dtype=cupy.float16)
        with pytest.raises(ValueError, match="out: conv_fprop_wtp stores 16-byte vectors"):
            conv.fprop(x, w, out=ybuf[4:].reshape(2, 8, 8, conv.K))
    assert_close(
        conv.fprop(x, w),
        conv.fprop(cupy.asnumpy(x).astype(np.float64), cupy.asnumpy(w).astype(np.float64)),
        "float16",
    )


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("sms", [None, 1], ids=["device", "one-sm"])
def test_gpu_halo_persistent(rng, monkeypatch, dtype, sms):
    # the persistent halo grid with more items than co-resident CTAs (the device's own count, and a grid
    # of one SM's CTAs walking every item): fprop and the FLIP bprop, uneven columns, an empty column
    import cusparseblocks.conv as conv_module

    if sms is not None:
        monkeypatch.setattr(conv_module._ops, "_sm_count", lambda: sms)
    mask = _mask(rng, (5, 4), 0.4)
    mask[:, 1] = False
    mask[:, 3] = True
    lay = ChannelBlockLayout.from_mask(mask, 32)
    n, spatial = (24, (32, 33)) if sms is None else (3, (17, 33))
    _gpu_case(rng, lay, (3, 3), 1, 1, 1, spatial, dtype, "NHWC", n=n, ops=("fprop", "bprop"))


@pytest.mark.gpu
@pytest.mark.parametrize("variant", [None, "halo:256x4:v1", "halo:128x4:run2", "halo:256x4:run8"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_gpu_halo_schedules(rng, monkeypatch, variant, shuffle):
    # the halo kernel's schedules on a block-diagonal layout (one-stage columns: the weight-slice cache
    # keeps a run's weights) with edge bias, grouped and shuffled (the paired store): runs of tiles with a
    # ragged last run, more runs than co-resident CTAs, fprop and the FLIP bprop
    import cusparseblocks.conv as conv_module

    monkeypatch.setattr(conv_module, "force_variant", variant)
    lay = ChannelBlockLayout.block_diagonal(128, 4, shuffle=shuffle, block_size=32)
    _gpu_case(
        rng, lay, (3, 3), 1, 1, 1, (21, 35), "float16", "NHWC", edge_bias=True, n=37, ops=("fprop", "bprop")
    )


@pytest.mark.gpu
@needs_torch
@pytest.mark.parametrize("variant", [None, "halo:256x4:v1", "halo:128x4:run4"])
def test_gpu_block_diagonal_shuffle_vs_torch(rng, monkeypatch, variant):
    import cupy

    import cusparseblocks.conv as conv_module

    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    monkeypatch.setattr(conv_module, "force_variant", variant)
    C = K = 128
    g = 4
    lay = ChannelBlockLayout.block_diagonal(C, g, shuffle=True)
    conv = BlockSparseConv(lay, (3, 3), padding=1)
    x = torch.randn(4, C, 10, 12, device="cuda", dtype=torch.float16)
    Wg = torch.randn(K, C // g, 3, 3, device="cuda", dtype=torch.float16) * 0.1
    yt = F.conv2d(x.double(), Wg.double(), padding=1, groups=g)
    yt = yt.reshape(4, g, K // g, 10, 12).transpose(1, 2).reshape(4, K, 10, 12)
    W = torch.zeros(K, C, 3, 3, dtype=torch.float64)
    for gi in range(g):
        for a in range(K // g):
            W[a * g + gi, gi * (C // g) : (gi + 1) * (C // g)] = Wg[gi * (K // g) + a].double().cpu()
    w = cupy.asarray(conv.from_dense(W.numpy())).astype(cupy.float16)
    xn = cupy.ascontiguousarray(cupy.from_dlpack(x.permute(0, 2, 3, 1).contiguous()))
    y = conv.fprop(xn, w)
    assert_close(cupy.moveaxis(y, -1, 1), yt.cpu().numpy(), "float16", "grouped+shuffle")


@pytest.mark.gpu
def test_gpu_validation(rng):
    import cupy

    conv = _small()
    x = cupy.asarray(rng.standard_normal((2, 5, 5, 16)).astype(np.float32))
    w = conv.init_normal(0, xp=cupy)
    with pytest.raises(TypeError, match="x: expected dtype"):
        conv.fprop(x.astype(cupy.float64), w.astype(cupy.float64))
    with pytest.raises(TypeError, match="arrays must all be NumPy or all CuPy"):
        conv.fprop(x, w.get())
    with pytest.raises(ValueError, match="C-contiguous"):
        conv.fprop(x.transpose(0, 2, 1, 3), w)


@pytest.mark.gpu
def test_gpu_self_check():
    rows = self_check("cupy")
    assert all(passed for _, _, passed in rows), rows


# ---------------------------------------------------------------------------------------------------
# PyTorch adapter


def _adapter_case(rng, device, dtype, channels_last, edge_bias):
    from cusparseblocks.adapters.torch_conv import BlockSparseConv2d

    tdt = getattr(torch, dtype)
    lay = ChannelBlockLayout.from_mask(_mask(rng, (2, 3)), 16)
    mod = BlockSparseConv2d(
        lay,
        3,
        stride=1,
        padding=((1, 0), (1, 2)),
        edge_bias=edge_bias,
        input_size=(6, 5),
        seed=int(rng.integers(1 << 30)),
        device=device,
        dtype=tdt,
    )
    if edge_bias:
        with torch.no_grad():
            mod.edge_bias.copy_(torch.from_numpy(rng.standard_normal(mod.edge_bias.shape)).to(tdt))
    x = torch.from_numpy(np.asarray(random_array(rng, (2, 32, 6, 5), "float32"))).to(device=device, dtype=tdt)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y = mod(x)
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
    dy = torch.from_numpy(rng.standard_normal(tuple(y.shape))).to(device=device, dtype=tdt)
    y.backward(dy)
    # float64 reference: torch's dense conv on the masked weight (+ edge bias via the reference op)
    op = mod.op_nchw
    w64 = mod.weight.detach().double().cpu().numpy()
    x64 = np.ascontiguousarray(x.detach().double().cpu().numpy())
    eb64 = mod.edge_bias.detach().double().cpu().numpy() if edge_bias else None
    ref_op = BlockSparseConv(
        lay, (3, 3), padding=((1, 0), (1, 2)), input_spatial=(6, 5), edge_bias=edge_bias, data_format="NCHW"
    )
    dy64 = np.ascontiguousarray(dy.double().cpu().numpy())
    assert_close(y.detach().float(), ref_op.fprop(x64, w64, eb64), dtype, "module y")
    assert_close(x.grad.float(), ref_op.bprop(dy64, w64), dtype, "module dx")
    assert_close(mod.weight.grad.float(), ref_op.updat(x64, dy64), dtype, "module dw")
    if edge_bias:
        assert_close(mod.edge_bias.grad.float(), ref_op.updat_edge_bias(dy64), dtype, "module d edge_bias")
    assert op.w_shape == tuple(mod.weight.shape)


@needs_torch
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("edge_bias", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_torch_module_cpu(rng, channels_last, edge_bias, dtype):
    _adapter_case(rng, "cpu", dtype, channels_last, edge_bias)


@needs_torch
def test_torch_gradcheck_cpu(rng):
    from cusparseblocks.adapters.torch_conv import block_sparse_conv

    lay = ChannelBlockLayout([((0, 3), (0, 2)), ([1, 4], (1, 4))], 5, 4)
    op = BlockSparseConv(
        lay, (2, 3), padding=((1, 0), (0, 1)), input_spatial=(4, 3), edge_bias=True, data_format="NCHW"
    )
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.from_numpy(op.init_normal(0, dtype=np.float64)).requires_grad_(True)
    eb = torch.randn(op.edge_bias_shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: block_sparse_conv(a, b, op, c), (x, w, eb))


@needs_torch
def test_torch_validation():
    from cusparseblocks.adapters.torch_conv import BlockSparseConv2d, block_sparse_conv

    mod = BlockSparseConv2d([[1]], 3, block_size=8, padding=1)
    with pytest.raises(ValueError, match="x: expected 4 dimensions"):
        mod(torch.randn(8, 5, 5))
    with pytest.raises(ValueError, match="contiguous or channels_last"):
        mod(torch.randn(2, 5, 8, 5).transpose(1, 2))
    with pytest.raises(TypeError, match="op: expected"):
        block_sparse_conv(torch.randn(1, 8, 5, 5), mod.weight, None)
    with pytest.raises(ValueError, match="x: expected 8 on axis 1"):
        mod(torch.randn(1, 7, 5, 5))
    dense = mod.dense_weight()
    assert tuple(dense.shape) == (8, 8, 3, 3)


@pytest.mark.gpu
@needs_torch
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_torch_module_gpu(rng, channels_last, dtype):
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    _adapter_case(rng, "cuda", dtype, channels_last, True)


# ---------------------------------------------------------------------------------------------------
# The GPU path on the CPU: conv.py's CuPy dispatch with a NumPy-backed CuPy, and kernels/conv.cu compiled
# for the host with the CUDA execution model emulated (threads, barriers, cp.async, ldmatrix, mma.sync).


# conv_driver.cpp's kernel table lists the halo kernel's default tile only; this driver adds every
# other conv_fprop_halo specialization the library registers (taller tiles, 8 warps, FLIP for bprop)
_HALO_DRIVER = r"""
#define main conv_driver_main
#include "conv_driver.cpp"
#undef main
#define HALO_X(T, B, TW, TH, WP, F) {"conv_fprop_halo<" #T ", " #B ", " #TW ", " #TH ", " #WP ", " #F ">", \
  [] { return [] { conv_fprop_halo<T, B, TW, TH, WP, F>(P<T>(0), P<T>(1), P<T>(2), P<int>(3), P<int>(4), \
  P<int>(5), P<int>(6), P<T>(7), P<int>(8), P<int>(9), P<unsigned>(10), I(11)); }; }}
#define GMMA_X(T, B, TW, TH, WP, F) {"conv_fprop_halo<" #T ", " #B ", " #TW ", " #TH ", " #WP ", " #F ", true>", \
  [] { return [] { conv_fprop_halo<T, B, TW, TH, WP, F, true>(P<T>(0), P<T>(1), P<T>(2), P<int>(3), P<int>(4), \
  P<int>(5), P<int>(6), P<T>(7), P<int>(8), P<int>(9), P<unsigned>(10), I(11)); }; }}
#define WS_X(NAME, T, B, TW, TH, F, NWG) {NAME, \
  [] { return [] { conv_fprop_ws<T, B, TW, TH, F, NWG>(P<T>(0), P<T>(1), P<T>(2), P<int>(3), P<int>(4), \
  P<int>(5), P<int>(6), P<T>(7), P<int>(8), P<int>(9), P<unsigned>(10), I(11)); }; }}
#define WTPC_X(NAME, T, B, NR) {NAME, \
  [] { return [] { conv_fprop_wtpc<T, B, NR>(P<T>(0), P<T>(1), P<T>(2), P<int>(3), P<int>(4), P<int>(5), \
  P<int>(6), P<int>(7), P<T>(8), P<int>(9), P<int>(10), P<unsigned>(11), I(12), I(13)); }; }}
static const int halo_registered = [] {
  using Table = std::map<std::string, std::function<std::function<void()>()>>;
  const_cast<Table&>(kernels).insert({ %s });
  return 0;
}();
int main(int argc, char** argv) { return conv_driver_main(argc, argv); }
"""


def _build_halo_driver(fake_cupy, directory):
    import hashlib
    import re
    import subprocess

    from cusparseblocks import compiler

    specs = compiler.all_specializations()["conv"]
    names = [s.name for s in specs if s.name.count(",") == 5]
    # the wgmma kernels the emulated tests run (tile width 8: every tile of the variants), beside the registry's
    import cusparseblocks.conv as conv_module

    types = ("__half", "__nv_bfloat16")
    gm = [
        conv_module._gmma_spec(t, b, 8, p // 8, w, f)
        for t in types
        for b in (16, 32)
        for p, w in conv_module._LAUNCH["gmma"]["tiles"]
        for f in (False, True)
    ]
    ws = [
        conv_module._ws_spec(t, b, 8, p // 8, f, False, n)
        for t in types
        for b in (16, 32)
        for p, n in ((128, 2), (256, 2), (256, 4))
        for f in (False, True)
    ]
    specs = list(dict.fromkeys([*specs, *gm, *ws]))
    entries = ", ".join(
        "HALO_X({})".format(re.match(r"conv_fprop_halo<(.*)>", n).group(1)) for n in names if "halo" in n
    )
    # the wgmma specializations (conv_gmma.cu: the same source with CONV_GMMA, the driver built with it)
    entries += "".join(
        ", GMMA_X({})".format(re.match(r"conv_fprop_halo<(.*), true>", s.name).group(1))
        for s in specs
        if s.source == "conv_gmma.cu" and "_halo<" in s.name
    )

    def ws_args(name):  # the template arguments, the consumer warpgroups (2 by default) last
        return ", ".join((re.match(r"conv_fprop_ws<(.*)>", name).group(1).split(", ") + ["2"])[:6])

    entries += "".join(f', WS_X("{s.name}", {ws_args(s.name)})' for s in specs if "_ws<" in s.name)
    # conv_fprop_wtp fed by cp.async (the TMA kernel does not run on the host)
    wtpc = [conv_module._wtp_spec(t, b, r, False) for t in types for b in (16, 32) for r in (16, 32)]
    entries += "".join(f', WTPC_X("{s.name}", {s.name[s.name.index("<") + 1 : -1]})' for s in wtpc)
    src = _HALO_DRIVER % entries
    here = fake_cupy.HERE
    inputs = [here / n for n in sorted(p.name for p in here.iterdir()) if n.endswith((".h", ".cpp"))]
    inputs += [
        fake_cupy.KERNELS / "conv.cu",
        fake_cupy.KERNELS / "common.cuh",
        fake_cupy.KERNELS / "gmma.cuh",
    ]
    digest = hashlib.sha256(src.encode() + b"".join(p.read_bytes() for p in inputs)).hexdigest()[:16]
    exe = directory / f"conv_halo_driver-{digest}"
    if not exe.exists():
        cpp = directory / "conv_halo_driver.cpp"
        cpp.write_text(src)
        subprocess.run(
            [
                "g++",
                "-std=c++20",
                "-O1",
                "-pthread",
                "-DCSB_HOST_EMULATION",
                "-DCONV_GMMA",
                f"-I{here}",
                f"-I{fake_cupy.KERNELS}",
                str(cpp),
                "-o",
                str(exe),
            ],
            check=True,
            capture_output=True,
        )
    return exe


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    import shutil

    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    from cuda_emulation import fake_cupy

    return fake_cupy, _build_halo_driver(fake_cupy, tmp_path_factory.mktemp("emu"))


@pytest.fixture
def emulated(monkeypatch, emulator):
    fake, exe = emulator
    return fake.install(monkeypatch, exe)[1]


EMULATED = [
    # kind, dtype, data format, geometry index, edge bias, batch, ops, fprop variant, kernels that must run
    (
        "uniform16",
        "float16",
        "NHWC",
        2,
        False,
        2,
        "fbu",
        None,
        ("conv_fprop_halo<__half, 16, 8>", "conv_updat_tc<__half, 16>"),
    ),
    ("uniform16", "float16", "NHWC", 2, False, 2, "fb", "tap", ("conv_fprop_tc<__half, 16>",)),
    (
        "uniform32",
        "bfloat16",
        "NHWC",
        3,
        True,
        2,
        "fbu",
        None,
        ("conv_fprop_halo<__nv_bfloat16, 32, 8>", "conv_bprop_direct", "conv_updat_tc<__nv_bfloat16, 32>"),
    ),
    ("uniform32", "bfloat16", "NHWC", 3, True, 2, "f", "tap", ("conv_fprop_tc<__nv_bfloat16, 32>",)),
    ("uniform32", "float16", "NDHWC", 6, False, 1, "fb", None, ("conv_fprop_halo<__half, 32, 8>",)),
    (
        "uniform64",
        "float16",
        "NDHWC",
        6,
        False,
        1,
        "fbu",
        None,
        ("conv_fprop_tc<__half, 64>", "conv_updat_tc<__half, 64>"),
    ),
    (
        "bd_shuffle",
        "float16",
        "NHWC",
        2,
        True,
        2,
        "fbu",
        None,
        ("conv_fprop_halo<__half, 16, 8>", "edge_bias_updat", "conv_updat_reduce"),
    ),
    ("bd_shuffle", "float16", "NHWC", 2, True, 2, "fb", "tap", ("conv_fprop_tc<__half, 16>",)),
    (
        "nonuniform",
        "float32",
        "NCHW",
        3,
        True,
        2,
        "fbu",
        None,
        ("conv_fprop_direct<float>", "conv_bprop_direct<float>"),
    ),
    ("channel_random", "bfloat16", "NCW", 1, False, 2, "fbu", None, ("conv_fprop_direct<__nv_bfloat16>",)),
    ("uniform8", "float16", "NHWC", 2, False, 2, "fb", None, ("conv_fprop_direct<__half>",)),
    ("uniform16", "float32", "NHWC", 2, True, 2, "fb", None, ("conv_fprop_ffma<16>",)),
    (
        "uniform8",
        "float32",
        "NHWC",
        3,
        False,
        2,
        "fb",
        None,
        ("conv_fprop_ffma<8>", "conv_bprop_direct<float>"),
    ),
    ("uniform32", "float32", "NHWC", 2, False, 2, "fb", None, ("conv_fprop_ffma<32>",)),
    ("uniform64", "float32", "NDHWC", 6, False, 1, "f", None, ("conv_fprop_ffma<64>",)),
    ("bd_shuffle", "float32", "NHWC", 2, True, 2, "fb", None, ("conv_fprop_ffma<16>",)),
]


@pytest.mark.parametrize(
    "case", EMULATED, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}-g{c[3]}{'-eb' if c[4] else ''}-{c[7] or 'auto'}"
)
def test_gpu_path_emulated(rng, emulated, monkeypatch, case):
    kind, dtype, fmt, gi, eb, n, ops, variant, expect = case
    import cusparseblocks.conv as conv_module

    monkeypatch.setattr(conv_module, "force_variant", variant)
    dims, fshape, stride, padding, dilation, spatial = GEOMETRIES[gi]
    lay = _layouts(rng)[kind]
    if kind == "uniform16":
        lay = ChannelBlockLayout.from_mask([[1, 0], [1, 1]], 16)
    if kind == "uniform64":
        lay = ChannelBlockLayout.from_mask([[1]], 64)
    ops = [{"f": "fprop", "b": "bprop", "u": "updat"}[o] for o in ops]
    _gpu_case(rng, lay, fshape, stride, padding, dilation, spatial, dtype, fmt, edge_bias=eb, n=n, ops=ops)
    for name in expect:
        assert any(k.startswith(name) for k in emulated), (name, emulated)


@pytest.mark.parametrize("spatial,tw", [((11, 10), 8), ((13, 20), 16), ((5, 33), 32)])
def test_gpu_path_emulated_ragged_tiles(rng, emulated, spatial, tw):
    # partial tiles at the right and bottom edges, 3 blocks in one column, every tile width of the halo kernel
    lay = ChannelBlockLayout.from_mask([[1, 0], [1, 1], [1, 0]], 16)
    conv = BlockSparseConv(lay, (3, 3), padding=((2, 0), (1, 1)), data_format="NHWC")
    import cupy

    x = random_array(rng, (2, *spatial, 48), "float16")
    w = conv.init_normal(rng, dtype=np.float32).astype(np.float16)
    y = conv.fprop(cupy.asarray(x), cupy.asarray(w))
    assert_close(y, conv.fprop(x.astype(np.float64), w.astype(np.float64)), "float16")
    assert emulated == [f"conv_fprop_halo<__half, 16, {tw}>"]


HALO_TILES = [(128, 4), (256, 4), (256, 8), (512, 4), (512, 8)]


@pytest.mark.parametrize(
    "tile", ["128x4", "128x4:roll", "256x4", "256x8", "512x8:run2", "ws:128", "ws:256:run3", "ws4:256"]
)
@pytest.mark.parametrize("kind", ["bd_shuffle", "columns", "plain", "filter2x5"])
@pytest.mark.parametrize("b,dtype", [(16, "float16"), (32, "bfloat16")])
def test_gpu_path_emulated_gmma(rng, emulated, monkeypatch, tile, kind, b, dtype):
    # conv_fprop_halo on wgmma (GM, kernels/conv_gmma.cu) with the emulated asynchrony of
    # tests/cuda_emulation/gmma_emulated.h: every tile (one and two warpgroups, 1 to 4 m64 groups), the step
    # loops (3 × 3 unrolled, the offset table of a 2 × 5 filter, ":roll"), runs of tiles, the weight-slice
    # cache, items without stages after items with (zeros, not the last sums), the paired store of a shuffled
    # output with edge bias; fprop and the FLIP bprop against float64
    import cupy

    import cusparseblocks.conv as conv_module

    if kind == "filter2x5" and tile.startswith("512"):
        pytest.skip("a 64-row halo of a 2 x 5 filter exceeds the shared-memory limit: the tap kernel runs")
    monkeypatch.setattr(conv_module, "_gmma_device", lambda: True)
    monkeypatch.setattr(conv_module, "force_variant", tile if tile.startswith("ws") else f"gmma:{tile}")
    if kind == "bd_shuffle":
        lay = ChannelBlockLayout.block_diagonal(3 * b, 3, shuffle=True, block_size=b)
    else:
        lay = ChannelBlockLayout.from_mask([[1, 0, 1, 1], [1, 0, 0, 1], [0, 0, 0, 0]], b)
    edge = kind not in ("plain", "filter2x5")
    fshape = (2, 5) if kind == "filter2x5" else (3, 3)  # not 3 × 3: the step loop with the offset table
    conv = BlockSparseConv(
        lay, fshape, padding=((2, 0), (1, 1)), input_spatial=(9, 11), edge_bias=edge, data_format="NHWC"
    )
    x = random_array(rng, (3, 9, 11, conv.C), dtype)
    w = conv.init_normal(rng, dtype=np.float32).astype(x.dtype)
    eb = random_array(rng, conv.edge_bias_shape, dtype) if edge else None
    y = poison(cupy, conv.output_shape(x.shape), dtype)
    conv.fprop(cupy.asarray(x), cupy.asarray(w), None if eb is None else cupy.asarray(eb), out=y)
    f64 = lambda a: None if a is None else a.astype(np.float64)  # noqa: E731
    assert_close(y, conv.fprop(f64(x), f64(w), f64(eb)), dtype, "fprop")
    dy = random_array(rng, y.shape, dtype)
    dx = poison(cupy, x.shape, dtype)
    conv.bprop(cupy.asarray(dy), cupy.asarray(w), out=dx)
    assert_close(dx, conv.bprop(f64(dy), f64(w)), dtype, "bprop")
    ct = "__half" if dtype == "float16" else "__nv_bfloat16"
    if tile.startswith("ws"):
        pixels = int(tile.split(":")[1])
        four = ", 4" if tile.startswith("ws4") else ""
        assert emulated[0] == f"conv_fprop_ws<{ct}, {b}, 8, {pixels // 8}, false{four}>", emulated
    else:
        pixels, warps = (int(v) for v in tile.split(":")[0].split("x"))
        assert emulated[0] == f"conv_fprop_halo<{ct}, {b}, 8, {pixels // 8}, {warps}, false, true>", emulated
    assert [c.tolist() for c in conv_module._SCHED.values()] == [[0, 0]]


@pytest.mark.parametrize("kind", ["columns", "bd_shuffle", "odd", "filter2x5", "strided"])
@pytest.mark.parametrize("b,rows,dtype", [(32, 16, "float16"), (32, 32, "bfloat16"), (16, 16, "bfloat16")])
def test_gpu_path_emulated_wtp(rng, emulated, monkeypatch, kind, b, rows, dtype):
    # conv_fprop_wtp's consumers (the transposed output-block groups: A = the group's weight slices through an
    # M-major descriptor, B = the halo's swizzled position rows through a K-major one) with the cp.async producers
    # (wtpc) and the emulated asynchrony: groups of 64 / B output blocks paired by their input blocks, an empty
    # column (its item has no stage: zeros + edge bias), a member without some input block of its group (zeros
    # copied), an odd output block alone in its group, edge bias and a merged shuffle (out_perm), a 2 × 5 filter
    # (the step loop), row stride 2 and dilation, runs of tiles, ragged tiles; against float64
    import cupy

    import cusparseblocks.conv as conv_module

    monkeypatch.setattr(conv_module, "_gmma_device", lambda: True)
    rows = 16 if kind == "strided" else rows  # (a 32-row halo of row stride and dilation 2 fits no two slots)
    monkeypatch.setattr(conv_module, "force_variant", f"wtpc:{rows}" + (":run2" if kind == "columns" else ""))
    if kind == "bd_shuffle":
        lay = ChannelBlockLayout.block_diagonal(4 * b, 4, shuffle=True, block_size=b)
    elif kind == "odd":
        lay = ChannelBlockLayout.from_mask([[1, 0, 1], [0, 1, 1], [1, 1, 0]], b)
    else:
        lay = ChannelBlockLayout.from_mask([[1, 0, 1, 1, 0], [1, 0, 0, 1, 1], [0, 0, 1, 1, 0]], b)
    edge = kind in ("columns", "bd_shuffle")
    fshape = (2, 5) if kind == "filter2x5" else (3, 3)
    kw = {"stride": (2, 1), "dilation": (2, 2)} if kind == "strided" else {}
    spatial = (19, 21) if kind == "strided" else (9, 11)
    conv = BlockSparseConv(
        lay, fshape, padding=((2, 0), (1, 1)), input_spatial=spatial, edge_bias=edge, data_format="NHWC", **kw
    )
    x = random_array(rng, (2, *spatial, conv.C), dtype)
    w = conv.init_normal(rng, dtype=np.float32).astype(x.dtype)
    eb = random_array(rng, conv.edge_bias_shape, dtype) if edge else None
    y = poison(cupy, conv.output_shape(x.shape), dtype)
    conv.fprop(cupy.asarray(x), cupy.asarray(w), None if eb is None else cupy.asarray(eb), out=y)
    f64 = lambda a: None if a is None else a.astype(np.float64)  # noqa: E731
    assert_close(y, conv.fprop(f64(x), f64(w), f64(eb)), dtype, "fprop")
    ct = "__half" if dtype == "float16" else "__nv_bfloat16"
    assert emulated[0] == f"conv_fprop_wtpc<{ct}, {b}, {rows}>", emulated
    assert [c.tolist() for c in conv_module._SCHED.values()] == [[0, 0]]
    if kind == "strided" and b == 32:  # the 32-row tile's two slots do not fit: a clear error, not a launch
        monkeypatch.setattr(conv_module, "force_variant", "wtpc:32")
        with pytest.raises(ValueError, match="two slots need more than"):
            conv.fprop(cupy.asarray(x), cupy.asarray(w))


def test_wtp_variant_limits(monkeypatch):
    # conv_fprop_wtp's applicability: a halo wider than a TMA box (256 columns) or slots beyond shared memory
    # leave the automatic choice to the other kernels and make a forced "wtp" raise by name
    import cusparseblocks.conv as conv_module

    monkeypatch.setattr(conv_module, "_gmma_device", lambda: True)
    lay = ChannelBlockLayout.from_mask([[1, 1], [1, 0]], 32)
    op = BlockSparseConv(lay, (3, 3), padding=1, dilation=(1, 121), data_format="NHWC")
    geo = conv_module._forward_geo(op, op.geometry((20, 300)), 2)
    g = {k: int(geo[i]) for k, i in conv_module._G.items()}
    assert conv_module._wtp_variant(g, 32, "wtp", "auto", fit_only=True) == (None, None)
    assert conv_module._fprop_variant(geo, 32)[0] != "wtp"
    monkeypatch.setattr(conv_module, "force_variant", "wtp")
    with pytest.raises(ValueError, match="exceeds a TMA box"):
        conv_module._fprop_variant(geo, 32)
    op = BlockSparseConv(lay, (7, 7), padding=3, data_format="NHWC")  # 49 taps: two slots of 200 KB
    geo = conv_module._forward_geo(op, op.geometry((20, 30)), 2)
    with pytest.raises(ValueError, match="two slots need more than"):
        conv_module._fprop_variant(geo, 32)
    monkeypatch.setattr(conv_module, "force_variant", "wtp:24")
    with pytest.raises(ValueError, match="ROWS in"):
        conv_module._fprop_variant(geo, 32)


def test_wtp_groups():
    # the greedy pairing: blocks sharing input blocks go together; the tables name every member's w block
    import cusparseblocks.conv as conv_module

    mask = [[1, 0, 1, 0, 1], [1, 0, 1, 0, 0], [0, 1, 0, 1, 0], [0, 1, 0, 0, 0]]
    lay = ChannelBlockLayout.from_mask(mask, 32)
    ptr, gin, gw, gout = conv_module._wtp_groups(lay, 2)
    assert sorted(map(sorted, gout.tolist())) == [[-1, 4], [0, 2], [1, 3]]
    assert (np.diff(np.diff(ptr)) <= 0).all()  # the longest groups first
    assert sorted(map(sorted, conv_module._wtp_groups(lay, 4)[3].tolist())) == [[-1, -1, 1, 3], [-1, 0, 2, 4]]
    cols = lay.column_tables
    for p, members in enumerate(gout.tolist()):
        want = set()
        for j in members:
            if j >= 0:
                want |= set(cols[1][cols[0][j] : cols[0][j + 1]].tolist())
        assert gin[ptr[p] : ptr[p + 1]].tolist() == sorted(want)
        for e in range(ptr[p], ptr[p + 1]):
            for g, j in enumerate(members):
                blk = int(gw[e, g])
                if j >= 0 and mask[gin[e]][j]:
                    assert (int(lay.block_rows[blk]), int(lay.block_cols[blk])) == (gin[e], j)
                else:
                    assert blk == lay.nnz


@pytest.mark.parametrize(
    "schedule", ["", ":run2", ":run3", ":v1", ":roll"], ids=["auto", "run2", "run3", "v1", "roll"]
)
@pytest.mark.parametrize("kind", ["bd_shuffle", "columns", "plain"])
def test_gpu_path_emulated_halo_schedules(rng, emulated, monkeypatch, schedule, kind):
    # the halo kernel's schedules (kernels/conv.cu opts): runs of R tiles of one output block (4 tiles:
    # R = 3 leaves a ragged run of 1), the weight-slice cache (block-diagonal: one-stage columns reuse a
    # slot; columns of 2 stages: each slot keeps one block; a column of 1 between them), the deferred
    # claim, the paired store of a shuffled output with edge bias; an empty column (zeros + edge bias);
    # "plain": the same columns without edge bias (the short epilogue); ":v1" the previous schedule,
    # ":roll" without the unrolled taps. fprop and the FLIP bprop against the float64 reference.
    import cupy

    import cusparseblocks.conv as conv_module

    monkeypatch.setattr(conv_module, "force_variant", f"halo:128x4{schedule}")
    if kind == "bd_shuffle":
        lay = ChannelBlockLayout.block_diagonal(48, 3, shuffle=True, block_size=16)
    else:
        lay = ChannelBlockLayout.from_mask([[1, 0, 1, 1], [1, 0, 0, 1], [0, 0, 0, 0]], 16)
    edge = kind != "plain"
    conv = BlockSparseConv(
        lay, (3, 3), padding=((2, 0), (1, 1)), input_spatial=(9, 11), edge_bias=edge, data_format="NHWC"
    )
    x = random_array(rng, (2, 9, 11, conv.C), "float16")
    w = conv.init_normal(rng, dtype=np.float32).astype(x.dtype)
    eb = random_array(rng, conv.edge_bias_shape, "float16") if edge else None
    y = poison(cupy, (2, 9, 11, conv.K), "float16")
    conv.fprop(cupy.asarray(x), cupy.asarray(w), None if eb is None else cupy.asarray(eb), out=y)
    f64 = lambda a: None if a is None else a.astype(np.float64)  # noqa: E731
    assert_close(y, conv.fprop(f64(x), f64(w), f64(eb)), "float16", "fprop")
    dy = random_array(rng, y.shape, "float16")
    dx = poison(cupy, x.shape, "float16")
    conv.bprop(cupy.asarray(dy), cupy.asarray(w), out=dx)
    assert_close(dx, conv.bprop(f64(dy), f64(w)), "float16", "bprop")
    assert emulated[0] == "conv_fprop_halo<__half, 16, 8>", emulated
    assert [c.tolist() for c in conv_module._SCHED.values()] == [[0, 0]]


def test_halo_run_choice(monkeypatch):
    # equal one-stage columns with a multiple of the CTAs' work: the longest run; uneven columns with
    # fewer items than a long run's tail allows: short runs; fewer items than CTAs: runs of 1
    import cusparseblocks.conv as conv_module

    assert conv_module._halo_run((1,) * 8, 256, 264) == 8
    assert conv_module._halo_run((5, 3, 6, 2, 4, 3, 5, 4), 256, 264) == 1
    assert conv_module._halo_run((1,) * 8, 32, 264) == 1
    assert conv_module._halo_run((2, 2), 1 << 14, 100) == 8  # a long claim list: estimated
    assert conv_module._halo_opts("v1", None, 4, 6) == 1 and conv_module._halo_opts("full", None, 4, 6) == 1
    assert conv_module._halo_opts(3, (1,), 4, 6) & 0xFFFF == 3
    with pytest.raises(ValueError, match="force_variant"):
        conv_module._parse_schedule("halo:128x4:runx")
    # the automatic tile: 256 positions, 128 for a permuted (shuffled) output
    lay = ChannelBlockLayout.block_diagonal(64, 2, shuffle=True, block_size=32)
    op = BlockSparseConv(lay, (3, 3), padding=1, data_format="NHWC")
    geo = conv_module._forward_geo(op, op.geometry((32, 32)), 4)
    monkeypatch.setattr(conv_module, "_gmma_device", lambda: False)
    assert conv_module._fprop_variant(geo, 32)[1][:3] == (32, 8, 4)
    assert conv_module._fprop_variant(geo, 32, permuted=True)[1][:3] == (32, 4, 4)
    assert conv_module._fprop_variant(geo, 32)[0] == "halo"
    with pytest.raises(ValueError, match="compute capability 9.0"):
        monkeypatch.setattr(conv_module, "force_variant", "gmma:256x4")
        conv_module._fprop_variant(geo, 32)
    # on sm_90: the transposed output-block groups (conv_fprop_wtp: 16 rows, 3 slots, the staged epilogue) for
    # B = 32 without permutation or edge bias; with edge bias the warp-specialized kernel fed by TMA, four
    # consumer warpgroups (20 warps); a permuted output keeps the halo kernel's 128-position tile
    monkeypatch.setattr(conv_module, "_gmma_device", lambda: True)
    monkeypatch.setattr(conv_module, "force_variant", None)
    g = {k: int(geo[i]) for k, i in conv_module._G.items()}
    stage = 2 * 8 * 16 * 72 * 2 + 16
    assert conv_module._fprop_variant(geo, 32) == (
        "wtp",
        (16, 3, conv_module._wtp_smem(g, 32, 16, 3) + stage, "auto", True),
    )
    assert conv_module._fprop_variant(geo, 32, edge_bias=True) == (
        "wst",
        (32, 8, 20, conv_module._ws_smem(g, 32, 32, 8), "auto"),
    )
    assert conv_module._fprop_variant(geo, 32, flip=True)[0] == "wst"  # (the FLIP bprop)
    assert conv_module._fprop_variant(geo, 16)[0] == "wst"  # (B = 16: groups of four blocks, not measured)
    assert conv_module._fprop_variant(geo, 32, permuted=True)[:2] == (
        "halo",
        (32, 4, 4, conv_module._halo_smem(g, 32, 32, 4), "auto"),
    )
    # a layout whose output blocks each have one input block (block-diagonal): the halo kernel, 256 positions
    assert conv_module._fprop_variant(geo, 32, single_stage=True) == (
        "halo",
        (32, 8, 4, conv_module._halo_smem(g, 32, 32, 8), "auto"),
    )
    monkeypatch.setattr(conv_module._ops, "_resident_blocks", lambda *a: 1)
    monkeypatch.setattr(conv_module._ops, "_sm_count", lambda: 132)
    ptr = np.array([0, 1, 1], dtype=np.int32)  # at most one input block a column (one empty): single stage
    assert "conv_fprop_halo<" in conv_module._tc_plan(geo, 2, 32, "float16", False, ptr)[0].name
    ptr = np.array([0, 2, 3], dtype=np.int32)
    assert "conv_fprop_wst<" in conv_module._tc_plan(geo, 2, 32, "float16", False, ptr)[0].name
    lay = ChannelBlockLayout.from_mask([[1, 1], [1, 0]], 32)
    plan = conv_module._tc_plan(
        geo, 2, 32, "float16", False, ptr, groups=lambda G: conv_module._wtp_groups(lay, G)
    )
    assert (
        plan[0].name == "conv_fprop_wtp<__half, 32, 16>" and plan[2] == (384,) and plan[5] >> 23 == 2 * 3 + 1
    )
    monkeypatch.setattr(conv_module, "force_variant", "ws:128:run2")
    assert conv_module._fprop_variant(geo, 32)[0] == "ws" and conv_module._fprop_variant(geo, 32)[1][2:] == (
        12,
        conv_module._ws_smem(g, 32, 32, 4),
        2,
    )
    monkeypatch.setattr(conv_module, "force_variant", "wst:96")
    with pytest.raises(ValueError, match="ws tile"):
        conv_module._fprop_variant(geo, 32)
    # the wgmma halo kernel once enabled (not by default: slower on the H100); "halo" still names the
    # mma.sync kernel
    monkeypatch.setattr(conv_module, "force_variant", None)
    monkeypatch.setitem(conv_module._LAUNCH["ws"], "enabled", False)
    monkeypatch.setitem(conv_module._LAUNCH["wtp"], "auto", False)
    assert conv_module._fprop_variant(geo, 32)[0] == "halo"
    monkeypatch.setitem(conv_module._LAUNCH["gmma"], "enabled", True)
    monkeypatch.setitem(conv_module._LAUNCH["gmma"], "default", (256, 4))
    assert conv_module._fprop_variant(geo, 32) == (
        "gmma",
        (
            32,
            8,
            4,
            conv_module._halo_smem({k: int(geo[i]) for k, i in conv_module._G.items()}, 32, 32, 8, True),
            "auto",
        ),
    )
    kind, tile = conv_module._fprop_variant(geo, 32, permuted=True)
    assert kind == "gmma" and tile[:3] == (32, 4, 4)
    monkeypatch.setattr(conv_module, "force_variant", "halo:256x8")
    assert conv_module._fprop_variant(geo, 32)[0] == "halo"
    monkeypatch.setattr(conv_module, "force_variant", "gmma:512x8:run2")
    assert conv_module._fprop_variant(geo, 32)[0] == "gmma" and conv_module._fprop_variant(geo, 32)[1][4] == 2


@pytest.mark.parametrize("tile", HALO_TILES, ids=lambda t: f"{t[0]}x{t[1]}")
@pytest.mark.parametrize("b,dtype", [(16, "float16"), (32, "bfloat16")])
@pytest.mark.parametrize("grid", ["", ":full"], ids=["persistent", "full"])
def test_gpu_path_emulated_halo_tiles(rng, emulated, monkeypatch, tile, b, dtype, grid):
    # every halo tile, fprop and the FLIP bprop (w read flipped and untransposed in the kernel): ragged
    # tiles at the right and bottom edges, asymmetric padding, 3 blocks in one column, an empty column
    # (zeros); the persistent grid (the fake GPU's 3 SMs × 2 CTAs walk 16 items, several stages and an
    # empty item in one CTA's stage stream) and a CTA per item
    import cupy

    import cusparseblocks.conv as conv_module

    assert tile in conv_module._LAUNCH["halo"]["tiles"]
    monkeypatch.setattr(conv_module, "force_variant", f"halo:{tile[0]}x{tile[1]}{grid}")
    lay = ChannelBlockLayout.from_mask([[1, 0, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]], b)
    conv = BlockSparseConv(lay, (3, 3), padding=((2, 0), (1, 1)), data_format="NHWC")
    x = random_array(rng, (2, 9, 11, 3 * b), dtype)
    w = conv.init_normal(rng, dtype=np.float32).astype(x.dtype)
    y = poison(cupy, (2, 9, 11, 4 * b), dtype)
    conv.fprop(cupy.asarray(x), cupy.asarray(w), out=y)
    f64 = lambda a: a.astype(np.float64)  # noqa: E731
    assert_close(y, conv.fprop(f64(x), f64(w)), dtype, "fprop")
    dy = random_array(rng, y.shape, dtype)
    dx = poison(cupy, x.shape, dtype)
    conv.bprop(cupy.asarray(dy), cupy.asarray(w), out=dx)
    assert_close(dx, conv.bprop(f64(dy), f64(w)), dtype, "bprop")
    tw, th = 8, tile[0] // 8
    ct = "__half" if dtype == "float16" else "__nv_bfloat16"
    fwd = conv_module._halo_spec(ct, b, tw, th, tile[1], False).name
    assert emulated == [fwd, f"conv_fprop_halo<{ct}, {b}, {tw}, {th}, {tile[1]}, true>"], emulated
    # the last CTA reset the work counters (next item, CTAs done) for the next launch
    assert [c.tolist() for c in conv_module._SCHED.values()] == [[0, 0]]


def test_self_check_emulated(emulated):
    rows = self_check("cupy")
    assert all(passed for _, _, passed in rows), rows
