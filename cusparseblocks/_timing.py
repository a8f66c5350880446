"""The shared timing harness: CUDA events, warm-up, median of many, inputs rotated past the L2 cache."""

from __future__ import annotations

import datetime
import json
import platform
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["time_ms", "Table", "save_json", "copy_bandwidth", "gpu_name"]


def time_ms(fn: Callable, rotate: Sequence | None = None, warmup: int = 3, batches: int = 7,
            min_ms: float = 60.0, graph: bool = False, reps: int = 0) -> dict:
    """Milliseconds per call of ``fn(*args)``, median over ``batches`` timed with CUDA events.

    ``rotate``: a list of argument tuples cycled call by call, so repeated calls do not find their
    inputs in L2 (without it ``fn()`` is called bare). Calls are enqueued back to back inside each
    batch (no synchronization between them), as a training loop issues them: host overhead is hidden
    when the GPU work is longer, and shows when it is not. ``graph=True`` captures one call per
    argument set into a CUDA graph and times its replays: GPU time alone, without launch overhead
    (``fn`` must not allocate or copy from the host). ``reps``: at least this many calls in all.
    Returns {"median", "p10", "p90", "calls"}.
    """
    import cupy

    args = list(rotate) if rotate else [()]
    stream = cupy.cuda.get_current_stream()
    if graph:
        cap = cupy.cuda.Stream(non_blocking=True)
        for a in args:  # warm-up outside the capture: compile, tables, memory pool
            fn(*a)
        cupy.cuda.get_current_stream().synchronize()
        with cap:
            cap.begin_capture()
            for a in args:
                fn(*a)
            g = cap.end_capture()
        g.upload(cap)
        step, per, stream = (lambda i: g.launch(cap)), len(args), cap
    else:
        step, per = (lambda i: fn(*args[i % len(args)])), 1
    for i in range(warmup * len(args)):
        step(i)
    stream.synchronize()
    # calibrate the batch length so that each batch lasts about min_ms / batches
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    start.record(stream)
    for i in range(len(args)):
        step(i)
    stop.record(stream)
    stop.synchronize()
    est = max(cupy.cuda.get_elapsed_time(start, stop) / len(args), 1e-3)
    calls = int(min(max(len(args), min_ms / batches / est, -(-reps // batches)), 5000))
    times = []
    for _ in range(batches):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record(stream)
        for i in range(calls):
            step(i)
        stop.record(stream)
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) / (calls * per))
    t = np.asarray(times)
    return {"median": float(np.median(t)), "p10": float(np.percentile(t, 10)),
            "p90": float(np.percentile(t, 90)), "calls": int(calls * per * batches)}


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Measured device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    import cupy

    src = cupy.random.random(nbytes // 4, dtype=cupy.float32)
    dst = cupy.empty_like(src)
    ms = time_ms(lambda: cupy.copyto(dst, src))["median"]
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
    """Write ``payload`` (plus GPU name, date, host) to ``directory/name-YYYYmmdd-HHMM.json`` and the
    command; a second run in the same minute gets ``-2``, ``-3``, ... instead of overwriting the first."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M")
    path, k = directory / f"{name}-{stamp}.json", 1
    while path.exists():
        k += 1
        path = directory / f"{name}-{stamp}-{k}.json"
    meta = {"gpu": gpu_name(), "date_utc": stamp, "host": platform.node()}
    path.write_text(json.dumps({"meta": meta, **payload}, indent=1, default=float))
    if command:
        path.with_suffix(".cmd").write_text(command + "\n")
    return path
