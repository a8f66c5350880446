"""cusparseblocks.layouts: generators (shape, seeding, guarantees), metrics, plot, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cusparseblocks import BlockSparseMatMul, layouts

SHAPES = [(1, 1), (7, 7), (16, 40), (33, 5)]


def _check_mask(mask, shape):
    assert isinstance(mask, np.ndarray) and mask.dtype == np.bool_ and mask.shape == shape
    assert mask.any()
    BlockSparseMatMul(mask, block_size=8)  # every generated layout is a valid layout


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("density", [0.01, 0.3, 1.0])
@pytest.mark.parametrize("keep_diagonal", [False, True])
def test_random(shape, density, keep_diagonal):
    mask = layouts.random(*shape, density, keep_diagonal=keep_diagonal, seed=3)
    _check_mask(mask, shape)
    target = max(1, round(density * mask.size))
    if keep_diagonal:
        assert mask.any(axis=0).all() and mask.any(axis=1).all(), "stretched diagonal reaches every row/column"
        if shape[0] == shape[1]:
            assert mask.diagonal().all()
        assert mask.sum() >= target
    else:
        assert mask.sum() == target


def test_random_seeding():
    a = layouts.random(20, 30, 0.2, seed=7)
    assert np.array_equal(a, layouts.random(20, 30, 0.2, seed=7))
    assert not np.array_equal(a, layouts.random(20, 30, 0.2, seed=8))
    gen = np.random.default_rng(1)
    assert not np.array_equal(layouts.random(20, 30, 0.2, seed=gen), layouts.random(20, 30, 0.2, seed=gen))


@pytest.mark.parametrize("n,k,p", [(8, 2, 0.0), (32, 4, 0.1), (64, 6, 0.3), (10, 8, 1.0)])
def test_watts_strogatz(n, k, p):
    mask = layouts.watts_strogatz(n, k, p, seed=5)
    _check_mask(mask, (n, n))
    assert np.array_equal(mask, mask.T) and mask.diagonal().all()
    # rewiring keeps the number of edges: n·k/2 undirected edges plus the diagonal
    assert mask.sum() == n * k + n
    assert np.array_equal(mask, layouts.watts_strogatz(n, k, p, seed=5))
    if p == 0.0:  # a pure ring lattice: block i links i±1 … i±k/2
        offsets = (np.arange(n)[None, :] - np.arange(n)[:, None]) % n
        assert np.array_equal(mask, (offsets <= k // 2) | (offsets >= n - k // 2))
    assert not layouts.watts_strogatz(n, k, p, self_loops=False, seed=5).diagonal().any()


@pytest.mark.parametrize("n,m", [(5, 1), (32, 2), (64, 3)])
def test_barabasi_albert(n, m):
    mask = layouts.barabasi_albert(n, m, seed=2)
    _check_mask(mask, (n, n))
    assert np.array_equal(mask, mask.T) and mask.diagonal().all()
    assert (mask.sum() - n) // 2 == (n - m) * m  # each new node brings m edges
    assert np.array_equal(mask, layouts.barabasi_albert(n, m, seed=2))


@pytest.mark.parametrize("in_blocks,groups,out_blocks", [(8, 4, None), (12, 3, 6), (4, 4, 8), (6, 1, None)])
def test_block_diagonal(in_blocks, groups, out_blocks):
    out = out_blocks or in_blocks
    mask = layouts.block_diagonal(in_blocks, groups, out_blocks)
    _check_mask(mask, (in_blocks, out))
    gi, go = in_blocks // groups, out // groups
    for g in range(groups):
        assert mask[g * gi : (g + 1) * gi, g * go : (g + 1) * go].all()
    assert mask.sum() == groups * gi * go


def test_block_diagonal_shuffle_permutation():
    # 8 blocks, 4 groups of 2: output order after the shuffle is g0a0 g1a0 g2a0 g3a0 g0a1 g1a1 ...
    perm = layouts.shuffle_permutation(8, 4)
    assert perm.tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    plain = layouts.block_diagonal(8, 4)
    shuffled = layouts.block_diagonal(8, 4, shuffle=True)
    assert np.array_equal(shuffled, plain[:, perm])
    # as a computation: grouped layer then channel shuffle == one layer with the merged mask
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((8, 8)) * plain
    x = rng.standard_normal((3, 8))
    assert np.allclose((x @ dense)[:, perm], x @ (dense[:, perm]))
    # consecutive output blocks come from different groups
    groups_of_output = np.argmax(shuffled, axis=0) // 2
    assert groups_of_output.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


@pytest.mark.parametrize("shape", [(1, 1), (10, 10), (40, 10), (10, 40), (64, 16)])
@pytest.mark.parametrize("fraction", [0.05, 0.25, 1.0])
def test_channel_random(shape, fraction):
    in_blocks, out_blocks = shape
    mask = layouts.channel_random(in_blocks, out_blocks, fraction, seed=11)
    _check_mask(mask, shape)
    assert mask.any(axis=0).all(), "no dead output"
    assert mask.any(axis=1).all(), "no dead input"
    per_output = mask.sum(axis=0)
    k = min(in_blocks, max(1, round(fraction * in_blocks), math.ceil(in_blocks / out_blocks)))
    assert (per_output == k).all()
    assert np.array_equal(mask, layouts.channel_random(in_blocks, out_blocks, fraction, seed=11))


def test_generate_registry():
    assert set(layouts.GENERATORS) == {"random", "watts_strogatz", "barabasi_albert", "block_diagonal",
                                       "channel_random"}
    mask = layouts.generate("random", in_blocks=4, out_blocks=6, density=0.5, seed=0)
    assert np.array_equal(mask, layouts.random(4, 6, 0.5, seed=0))
    with pytest.raises(ValueError, match="name: expected one of"):
        layouts.generate("nope")


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: layouts.random(0, 4), ValueError, "in_blocks"),
        (lambda: layouts.random(4, -1), ValueError, "out_blocks"),
        (lambda: layouts.random(4.5, 4), TypeError, "in_blocks"),
        (lambda: layouts.random(True, 4), TypeError, "in_blocks"),
        (lambda: layouts.random(4, 4, 0.0), ValueError, "density"),
        (lambda: layouts.random(4, 4, 1.5), ValueError, "density"),
        (lambda: layouts.random(4, 4, "dense"), TypeError, "density"),
        (lambda: layouts.watts_strogatz(8, 8), ValueError, "k"),
        (lambda: layouts.watts_strogatz(8, 2, 1.5), ValueError, "p"),
        (lambda: layouts.barabasi_albert(4, 4), ValueError, "m"),
        (lambda: layouts.block_diagonal(10, 4), ValueError, "groups"),
        (lambda: layouts.block_diagonal(8, 4, 6), ValueError, "groups"),
        (lambda: layouts.block_diagonal(8, 0), ValueError, "groups"),
        (lambda: layouts.shuffle_permutation(9, 2), ValueError, "groups"),
        (lambda: layouts.channel_random(8, 8, 0.0), ValueError, "fraction"),
    ],
)
def test_generator_validation(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_metrics_ring_and_complete():
    ring = layouts.watts_strogatz(12, 2, 0.0, seed=0)  # a cycle of 12
    assert layouts.density(ring) == pytest.approx((12 * 2 + 12) / 144)
    assert layouts.clustering(ring) == 0.0
    # mean distance on a 12-cycle: (2·(1+…+5) + 6) / 11
    assert layouts.average_shortest_path_length(ring) == pytest.approx((2 * 15 + 6) / 11)
    full = np.ones((6, 6), dtype=bool)
    assert layouts.clustering(full) == 1.0 and layouts.average_shortest_path_length(full) == 1.0


def test_metrics_non_square_is_bipartite():
    mask = layouts.channel_random(6, 3, 0.5, seed=0)
    graph = layouts.to_graph(mask)
    assert graph.number_of_nodes() == 9 and graph.number_of_edges() == int(mask.sum())
    assert layouts.clustering(mask) == 0.0
    assert layouts.average_shortest_path_length(mask) >= 1.0


def test_metrics_disconnected_and_edgeless():
    assert layouts.average_shortest_path_length(layouts.block_diagonal(8, 4)) == 1.0  # largest component
    assert math.isinf(layouts.average_shortest_path_length(np.eye(4, dtype=bool)))


def test_small_world_summary():
    ws = layouts.small_world(layouts.watts_strogatz(128, 8, 0.05, seed=1))
    assert ws["sigma"] > 1.5, ws  # Watts-Strogatz at small p is a small world
    assert ws["clustering"] > ws["clustering_random"]
    assert ws["connected_components"] == 1 and ws["dead_inputs"] == 0 and ws["dead_outputs"] == 0
    for key in ("shape", "blocks", "density", "path_length", "path_length_random"):
        assert key in ws
    dead = np.zeros((4, 4), dtype=bool)
    dead[0, 1] = True
    summary = layouts.small_world(dead)
    assert summary["dead_inputs"] == 3 and summary["dead_outputs"] == 3


def test_metrics_validate_layout():
    with pytest.raises(ValueError, match="layout"):
        layouts.density(np.zeros((3, 3)))


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = layouts.plot(layouts.random(16, 48, 0.2, seed=0), tmp_path / "mask.png")
    data = (tmp_path / "mask.png").read_bytes()
    assert path.endswith("mask.png") and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
