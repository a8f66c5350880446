"""Block-sparse matmul benchmark: run from the repository root as `PYTHONPATH=. python bench/bsmm.py`."""

import sys

from cusparseblocks.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
