"""The shared timing harness: CUDA events, warm-up, median of many, inputs rotated past the L2 cache."""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

__all__ = ["time_ms", "Table", "save_json", "copy_bandwidth", "gpu_name"]


def time_ms(fn: Callable, rotate: Sequence | None = None, warmup: int = 5, reps: int = 50,
            min_ms: float = 100.0, max_reps: int = 2000) -> dict:
    """Median milliseconds of ``fn(arg)`` over CUDA events on the current CuPy stream.

    ``rotate``: a list of argument sets cycled per call (each a tuple), so repeated calls do not find
    their inputs in L2; without it ``fn()`` is called bare. Repeats at least ``reps`` times and until
    ``min_ms`` of work has been timed. Returns {"median", "p10", "p90", "reps"} in milliseconds.
    """
    import cupy

    args = list(rotate) if rotate else [()]
    call = (lambda i: fn(*args[i % len(args)])) if rotate else (lambda i: fn())
    for i in range(warmup):
        call(i)
    stream = cupy.cuda.get_current_stream()
    stream.synchronize()
    times = []
    total = 0.0
    i = 0
    while (i < reps or total < min_ms) and i < max_reps:
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record(stream)
        call(i)
        stop.record(stream)
        stop.synchronize()
        t = cupy.cuda.get_elapsed_time(start, stop)
        times.append(t)
        total += t
        i += 1
    t = np.asarray(times)
    return {"median": float(np.median(t)), "p10": float(np.percentile(t, 10)),
            "p90": float(np.percentile(t, 90)), "reps": int(t.size)}


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Measured device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    import cupy

    src = cupy.random.random(nbytes // 4, dtype=cupy.float32)
    dst = cupy.empty_like(src)
    ms = time_ms(lambda: dst.__setitem__(Ellipsis, src), reps=20)["median"]
    return 2 * nbytes / (ms * 1e-3)


def gpu_name() -> str:
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())
        return props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    except Exception:  # noqa: BLE001
        return "no GPU"


class Table:
    """Rows of dicts printed as an aligned text table (the benchmark's last output)."""

    def __init__(self, columns: Sequence[str]):
        self.columns = list(columns)
        self.rows: list[dict] = []

    def add(self, **row):
        self.rows.append(row)

    def render(self) -> str:
        def fmt(v):
            if isinstance(v, float):
                return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
            return str(v)

        cells = [[fmt(r.get(c, "")) for c in self.columns] for r in self.rows]
        widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(self.columns)]
        lines = ["  ".join(c.rjust(w) for c, w in zip(self.columns, widths))]
        lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
        return "\n".join(lines)


def save_json(name: str, payload: dict, directory: str | Path = "bench/results", command: str | None = None) -> Path:
    """Write ``payload`` (plus GPU name, date, host) to ``directory/name-YYYYmmdd-HHMM.json`` and the command."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M")
    path = directory / f"{name}-{stamp}.json"
    meta = {"gpu": gpu_name(), "date_utc": stamp, "host": platform.node()}
    path.write_text(json.dumps({"meta": meta, **payload}, indent=1, default=float))
    if command:
        path.with_suffix(".cmd").write_text(command + "\n")
    return path
