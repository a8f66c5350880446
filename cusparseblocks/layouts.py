"""Block layouts: seeded generators of boolean block masks ``[in_blocks, out_blocks]`` and their metrics.

A layout's block (i, j) connects input features ``i*b:(i+1)*b`` to output features ``j*b:(j+1)*b``.
Every generator takes a ``seed`` (an int, a ``numpy.random.Generator`` or None) and returns a fresh,
writable ``numpy.ndarray`` of dtype bool; pass it to :class:`cusparseblocks.BlockSparseMatMul`.

Generators (also reachable by name through :func:`generate`, which the CLI uses):

- :func:`random` -- uniformly random blocks at a density, optionally keeping the diagonal;
- :func:`watts_strogatz` and :func:`barabasi_albert` -- small-world and scale-free block graphs
  (networkx), as in OpenAI's block-sparse paper (seed 000);
- :func:`block_diagonal` -- g groups (a grouped convolution), optionally merged with a ShuffleNet
  channel shuffle;
- :func:`channel_random` -- "sparse random" of seed 004: each output connects to a random fraction of
  inputs, with no dead input and no dead output.

Metrics (:func:`density`, :func:`clustering`, :func:`average_shortest_path_length`,
:func:`small_world`) treat the layout as a graph; :func:`plot` writes a PNG (matplotlib, imported lazily).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = [
    "random",
    "watts_strogatz",
    "barabasi_albert",
    "block_diagonal",
    "channel_random",
    "shuffle_permutation",
    "generate",
    "GENERATORS",
    "to_graph",
    "density",
    "clustering",
    "average_shortest_path_length",
    "small_world",
    "plot",
]


def _rng(seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    return int(value)


def _fraction(name: str, value, low_open: bool = True) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number in (0, 1], got {value!r}") from None
    inside = 0.0 < value <= 1.0 if low_open else 0.0 <= value <= 1.0
    if not inside:
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"{name}: expected a number in {interval}, got {value}")
    return value


def _shape(in_blocks, out_blocks) -> tuple[int, int]:
    in_blocks = _positive_int("in_blocks", in_blocks)
    out_blocks = in_blocks if out_blocks is None else _positive_int("out_blocks", out_blocks)
    return in_blocks, out_blocks


def _stretched_diagonal(in_blocks: int, out_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Blocks (r·in/n, r·out/n) for r < n = max(in, out): the main diagonal of a square layout; every
    row and every column gets at least one block in a non-square one."""
    n = max(in_blocks, out_blocks)
    r = np.arange(n)
    return r * in_blocks // n, r * out_blocks // n


# ---------------------------------------------------------------------------------------------------
# generators


def random(
    in_blocks: int,
    out_blocks: int | None = None,
    density: float = 0.25,
    *,
    keep_diagonal: bool = False,
    seed=None,
) -> np.ndarray:
    """Exactly ``round(density · in_blocks · out_blocks)`` blocks (at least one) chosen uniformly.

    ``keep_diagonal``: the diagonal blocks are always present (for a non-square layout the "stretched"
    diagonal (r·in/n, r·out/n), r < n = max(in, out), so every input and output keeps a block); the
    other blocks are drawn at random until the count is reached (the diagonal alone may exceed it).
    """
    in_blocks, out_blocks = _shape(in_blocks, out_blocks)
    density = _fraction("density", density)
    rng = _rng(seed)
    size = in_blocks * out_blocks
    target = min(size, max(1, round(density * size)))
    mask = np.zeros(size, dtype=bool)
    if keep_diagonal:
        r, c = _stretched_diagonal(in_blocks, out_blocks)
        mask[r * out_blocks + c] = True
    need = target - int(mask.sum())
    if need > 0:
        free = np.flatnonzero(~mask)
        mask[rng.choice(free, size=need, replace=False)] = True
    return mask.reshape(in_blocks, out_blocks)


def watts_strogatz(n: int, k: int = 4, p: float = 0.1, *, self_loops: bool = True, seed=None) -> np.ndarray:
    """Watts–Strogatz small world on n blocks: a ring lattice where each block links its k nearest
    neighbours (k//2 each side), each edge rewired with probability p (``networkx.watts_strogatz_graph``).

    The mask is the symmetric adjacency [n, n]; ``self_loops`` adds the diagonal so every block also
    feeds itself (a residual-like path).
    """
    import networkx as nx

    n = _positive_int("n", n)
    k = _positive_int("k", k)
    if k >= n:
        raise ValueError(f"k: expected fewer neighbours than blocks (k < n={n}), got {k}")
    p = _fraction("p", p, low_open=False)
    graph = nx.watts_strogatz_graph(n, k, p, seed=_nx_seed(seed))
    return _adjacency(graph, n, self_loops)


def barabasi_albert(n: int, m: int = 2, *, self_loops: bool = True, seed=None) -> np.ndarray:
    """Barabási–Albert scale-free block graph on n blocks: each new block attaches to m existing blocks
    by preferential attachment (``networkx.barabasi_albert_graph``). Symmetric [n, n] adjacency, with the
    diagonal when ``self_loops``."""
    import networkx as nx

    n = _positive_int("n", n)
    m = _positive_int("m", m)
    if m >= n:
        raise ValueError(f"m: expected fewer edges per new block than blocks (m < n={n}), got {m}")
    graph = nx.barabasi_albert_graph(n, m, seed=_nx_seed(seed))
    return _adjacency(graph, n, self_loops)


def _nx_seed(seed):
    # networkx takes an int or a RandomState-like; derive an int from a Generator so results stay seeded
    return int(seed.integers(2**31)) if isinstance(seed, np.random.Generator) else seed


def _adjacency(graph, n: int, self_loops: bool) -> np.ndarray:
    mask = np.zeros((n, n), dtype=bool)
    edges = np.array(list(graph.edges()), dtype=np.int64).reshape(-1, 2)
    mask[edges[:, 0], edges[:, 1]] = True
    mask[edges[:, 1], edges[:, 0]] = True
    if self_loops:
        np.fill_diagonal(mask, True)
    return mask


def shuffle_permutation(n: int, groups: int) -> np.ndarray:
    """ShuffleNet's channel shuffle over n blocks in ``groups`` groups, as a gather index.

    ``y_shuffled[q] = y[perm[q]]`` with ``perm = arange(n).reshape(groups, n // groups).T.ravel()``:
    the output block at position ``q = a·groups + g`` is block ``a`` of group ``g``, i.e. the groups
    are interleaved (reshape to [groups, n/groups], transpose, flatten).
    """
    n = _positive_int("n", n)
    groups = _positive_int("groups", groups)
    if n % groups:
        raise ValueError(f"groups: expected a divisor of {n} blocks, got {groups}")
    return np.arange(n).reshape(groups, n // groups).T.ravel()


def block_diagonal(
    in_blocks: int, groups: int, out_blocks: int | None = None, *, shuffle: bool = False
) -> np.ndarray:
    """A grouped layer: input group g (blocks ``g·in/G:(g+1)·in/G``) feeds only output group g.

    ``shuffle=True`` merges a ShuffleNet channel shuffle (at block granularity) after the grouped layer
    into the same mask: column q of the result is column ``perm[q]`` of the block-diagonal mask, with
    ``perm = shuffle_permutation(out_blocks, groups)`` (interleave the output groups). So output block
    ``q = a·G + g`` is the a-th output block of group g, and consecutive output blocks come from
    different groups -- the next grouped layer then mixes information across groups. Deterministic.
    """
    in_blocks, out_blocks = _shape(in_blocks, out_blocks)
    groups = _positive_int("groups", groups)
    for name, value in (("in_blocks", in_blocks), ("out_blocks", out_blocks)):
        if value % groups:
            raise ValueError(f"groups: expected a divisor of {name}={value}, got {groups}")
    gin = np.arange(in_blocks) // (in_blocks // groups)
    gout = np.arange(out_blocks) // (out_blocks // groups)
    mask = gin[:, None] == gout[None, :]
    if shuffle:
        mask = mask[:, shuffle_permutation(out_blocks, groups)]
    return np.ascontiguousarray(mask)


def channel_random(
    in_blocks: int, out_blocks: int | None = None, fraction: float = 0.25, *, seed=None
) -> np.ndarray:
    """Seed 004's "sparse random": each output block connects to a random ``fraction`` of the inputs.

    Every output gets ``k = max(1, round(fraction · in_blocks))`` input blocks, and every input feeds at
    least one output: inputs are first dealt round-robin in random order over the outputs, then each
    output is filled up to k with distinct random inputs. When ``k · out_blocks < in_blocks`` (too few
    connections to reach every input), outputs get ``ceil(in_blocks / out_blocks)`` blocks instead.
    """
    in_blocks, out_blocks = _shape(in_blocks, out_blocks)
    fraction = _fraction("fraction", fraction)
    rng = _rng(seed)
    k = max(1, round(fraction * in_blocks), math.ceil(in_blocks / out_blocks))
    k = min(k, in_blocks)
    # dealt blocks score 2 and always win; the rest compete with uniform scores in [0, 1)
    score = rng.random((in_blocks, out_blocks))
    perm = rng.permutation(in_blocks)
    score[perm, np.arange(in_blocks) % out_blocks] = 2.0
    top = np.argpartition(-score, k - 1, axis=0)[:k]
    mask = np.zeros((in_blocks, out_blocks), dtype=bool)
    mask[top, np.arange(out_blocks)[None, :]] = True
    return mask


GENERATORS: dict[str, Callable[..., np.ndarray]] = {
    "random": random,
    "watts_strogatz": watts_strogatz,
    "barabasi_albert": barabasi_albert,
    "block_diagonal": block_diagonal,
    "channel_random": channel_random,
}


def generate(name: str, **kwargs) -> np.ndarray:
    """The layout of generator ``name`` (a key of :data:`GENERATORS`) with keyword arguments."""
    try:
        fn = GENERATORS[name]
    except KeyError:
        raise ValueError(f"name: expected one of {sorted(GENERATORS)}, got {name!r}") from None
    return fn(**kwargs)


# ---------------------------------------------------------------------------------------------------
# metrics


def _mask(layout) -> np.ndarray:
    from .blocklayout import as_layout

    return as_layout(layout).mask


def to_graph(layout):
    """The undirected networkx graph of a layout.

    Square layouts: node i is block i (input block i and output block i are the same unit, as in a
    recurrent or residual layer); an edge joins i and j when (i, j) or (j, i) is in the mask; the
    diagonal (self loops) is left out. Non-square layouts: the bipartite graph of input nodes
    ``("in", i)`` and output nodes ``("out", j)``.
    """
    import networkx as nx

    mask = _mask(layout)
    graph = nx.Graph()
    if mask.shape[0] == mask.shape[1]:
        sym = mask | mask.T
        np.fill_diagonal(sym, False)
        graph.add_nodes_from(range(mask.shape[0]))
        r, c = np.nonzero(np.triu(sym))
        graph.add_edges_from(zip(r.tolist(), c.tolist()))
    else:
        graph.add_nodes_from(("in", i) for i in range(mask.shape[0]))
        graph.add_nodes_from(("out", j) for j in range(mask.shape[1]))
        r, c = np.nonzero(mask)
        graph.add_edges_from((("in", i), ("out", j)) for i, j in zip(r.tolist(), c.tolist()))
    return graph


def density(layout) -> float:
    """Fraction of blocks present."""
    mask = _mask(layout)
    return float(mask.sum()) / mask.size


def clustering(layout) -> float:
    """Average clustering coefficient of :func:`to_graph` (0 for a bipartite graph by construction)."""
    import networkx as nx

    return float(nx.average_clustering(to_graph(layout)))


def average_shortest_path_length(layout) -> float:
    """Average shortest path length of :func:`to_graph`; over its largest connected component when
    the graph is disconnected (a block-diagonal layout), ``inf`` for a graph with no edge."""
    import networkx as nx

    graph = to_graph(layout)
    if graph.number_of_edges() == 0:
        return math.inf
    if not nx.is_connected(graph):
        graph = graph.subgraph(max(nx.connected_components(graph), key=len))
    return float(nx.average_shortest_path_length(graph))


def small_world(layout, seed=0) -> dict:
    """Small-world summary: density, clustering C, path length L, and the same for a random layout of
    equal size and density (C_rand, L_rand); ``sigma = (C/C_rand) / (L/L_rand)`` (> 1: small world).

    ``connected_components`` counts the graph's components; ``dead_inputs``/``dead_outputs`` count
    empty rows/columns of the mask.
    """
    import networkx as nx

    mask = _mask(layout)
    graph = to_graph(mask)
    d = density(mask)
    reference = random(mask.shape[0], mask.shape[1], d, seed=seed)
    c, c_rand = clustering(mask), clustering(reference)
    path, path_rand = average_shortest_path_length(mask), average_shortest_path_length(reference)
    sigma = math.nan
    if c_rand > 0 and path_rand > 0 and path > 0 and math.isfinite(path) and math.isfinite(path_rand):
        sigma = (c / c_rand) / (path / path_rand)
    return {
        "shape": tuple(mask.shape),
        "blocks": int(mask.sum()),
        "density": d,
        "clustering": c,
        "path_length": path,
        "clustering_random": c_rand,
        "path_length_random": path_rand,
        "sigma": sigma,
        "connected_components": nx.number_connected_components(graph),
        "dead_inputs": int((~mask.any(axis=1)).sum()),
        "dead_outputs": int((~mask.any(axis=0)).sum()),
    }


def plot(layout, path, title: str | None = None) -> str:
    """Write the mask as a PNG at ``path`` (rows: input blocks, columns: output blocks); returns the path."""
    try:  # a bare Figure renders with Agg and leaves pyplot's global state alone
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("plot needs matplotlib: pip install 'cusparseblocks[plot]'") from exc

    mask = _mask(layout)
    height = 4.0
    width = min(12.0, max(2.5, height * mask.shape[1] / mask.shape[0]))
    fig = Figure(figsize=(width, height), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(mask, cmap="Greys", interpolation="nearest", aspect="equal")
    ax.set_xlabel("output block")
    ax.set_ylabel("input block")
    ax.set_title(title or f"{mask.shape[0]}x{mask.shape[1]} blocks, density {density(mask):.3f}")
    fig.tight_layout()
    fig.savefig(path)
    return str(path)
