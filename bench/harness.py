"""Timing harness for every benchmark in bench/ (re-exported from the package so the CLI can use it)."""

from cusparseblocks._timing import Table, copy_bandwidth, gpu_name, save_json, time_ms  # noqa: F401
