"""Framework adapters (optional imports): ``cusparseblocks.adapters.torch``, ``.jax``, ``.tensorflow``."""
