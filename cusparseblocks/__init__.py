"""cusparseblocks: block-sparse GPU kernels (matmul, conv, RNN, helper ops) on CuPy arrays.

``import cusparseblocks`` imports neither CuPy nor a framework: NumPy arrays run the CPU reference
path; CuPy arrays run the CUDA kernels in ``kernels/``; framework tensors go through
``cusparseblocks.adapters``.
"""

from ._version import __version__
from .blocklayout import BlockLayout
from .matmul import BlockSparseMatMul

__all__ = ["__version__", "BlockLayout", "BlockSparseMatMul", "layouts", "reference", "compiler"]


def __getattr__(name):
    import importlib

    if name in ("layouts", "reference", "compiler", "ops", "conv", "rnn", "adapters"):
        return importlib.import_module(f"cusparseblocks.{name}")
    if name in ("BlockSparseConv",):
        return getattr(importlib.import_module("cusparseblocks.conv"), name)
    raise AttributeError(f"module 'cusparseblocks' has no attribute {name!r}")
