"""``python -m cusparseblocks``: the main job (see :mod:`cusparseblocks.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
