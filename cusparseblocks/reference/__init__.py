"""NumPy/SciPy reference implementations of every op: real CPU code and the tests' ground truth.

Half-precision inputs (float16, bfloat16) are computed in float32 and returned in their own dtype;
float32 and float64 compute in their own precision.
"""

from .matmul import bsmm_bprop, bsmm_fprop, bsmm_updat, compute_dtype, to_scipy  # noqa: F401
