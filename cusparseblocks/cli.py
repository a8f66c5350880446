"""The main job: ``python -m cusparseblocks {info,check,layout,bench}``; each runs with no arguments.

- ``info``: versions, the GPU (or its absence), and which kernel specializations compile (per family:
  count, compile seconds, max registers, spills) for sm_80 and sm_90 (plus the GPU's arch).
- ``check``: random layouts, shapes and dtypes of fprop / bprop / updat (also grouped) on every
  backend present, against a float64 ``scipy.sparse.bsr_matrix`` built here from the mask alone;
  a table of relative errors; exit code 1 on any failure.
- ``layout``: generate a named layout, print its metrics, save its PNG.
- ``bench``: ``cusparseblocks.benchmark.main(argv)`` on a GPU; says so and exits 0 without one.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np

from ._version import __version__

__all__ = ["main", "gpu_status", "CHECK_TOLERANCES"]

# ‖actual − ref‖_F / ‖ref‖_F and max|actual − ref| / max|ref| bounds per dtype (ref in float64)
CHECK_TOLERANCES = {
    "float64": (1e-12, 1e-12),
    "float32": (1e-5, 1e-5),
    "float16": (2e-3, 1e-2),
    "bfloat16": (1e-2, 6e-2),
}
CPU_DTYPES = ("float16", "bfloat16", "float32", "float64")
GPU_DTYPES = ("float16", "bfloat16", "float32")
DEFAULT_ARCHS = ("sm_80", "sm_90")


def _progress(iterable, **kwargs):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a core dependency; keep working without it anyway
        return iterable
    return tqdm(iterable, file=sys.stderr, leave=False, dynamic_ncols=True, disable=None, **kwargs)


def _table(headers: Sequence[str], rows: Sequence[Sequence], out=None) -> None:
    out = out or sys.stdout
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_number(r[i]) for r in cells[1:]) and len(cells) > 1 for i in range(len(headers))]
    lines = [
        "  ".join(
            (c.rjust(w) if numeric[i] else c.ljust(w)) for i, (c, w) in enumerate(zip(row, widths))
        ).rstrip()
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    print("\n".join(lines), file=out)


def _is_number(text: str) -> bool:
    if text in ("-", ""):
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------
# environment


def gpu_status() -> dict:
    """``{"available": bool, "reason": str, "name": str, "arch": "sm_90", "count": int, "cupy": ver}``."""
    status = {"available": False, "reason": "", "name": None, "arch": None, "count": 0, "cupy": None}
    try:
        import cupy
    except ImportError:
        status["reason"] = "CuPy is not installed (pip install 'cusparseblocks[gpu]')"
        return status
    status["cupy"] = cupy.__version__
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - no driver, no device: any failure means no GPU
        status["reason"] = f"no usable CUDA device ({type(exc).__name__}: {exc})".strip()
        return status
    if count < 1:
        status["reason"] = "no CUDA device"
        return status
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())
    name = props["name"]
    status.update(
        available=True,
        count=count,
        name=name.decode() if isinstance(name, bytes) else name,
        arch=f"sm_{props['major']}{props['minor']}",
    )
    return status


def _nvcc_version() -> str | None:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        text = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"release (\S+),", text)
    return found.group(1) if found else text.strip().splitlines()[-1:] or None


# ---------------------------------------------------------------------------------------------------
# info


def cmd_info(args) -> int:
    from . import compiler

    gpu = gpu_status()
    try:
        source_dir = str(compiler.kernel_source_dir())
    except FileNotFoundError as exc:
        source_dir = f"not found ({exc})"
    rows = [
        ("cusparseblocks", __version__),
        ("python", platform.python_version()),
        ("numpy", np.__version__),
        ("scipy", importlib.import_module("scipy").__version__),
        ("cupy", gpu["cupy"] or "not installed"),
        (
            "gpu",
            f"{gpu['name']} ({gpu['arch']}, {gpu['count']} device(s))"
            if gpu["available"]
            else f"none: {gpu['reason']}",
        ),
        ("nvrtc", compiler.nvrtc_version() or "not found (pip install 'cusparseblocks[nvrtc]')"),
        ("nvcc", _nvcc_version() or "not found"),
        ("cuda headers", ", ".join(compiler.cuda_include_dirs()) or "not found"),
        ("kernel sources", source_dir),
    ]
    _table(("component", "version"), rows)
    if args.no_compile:
        return 0
    if compiler.nvrtc_version() is None:
        print("\nkernels: NVRTC not found, cannot compile (pip install 'cusparseblocks[nvrtc]')")
        return 0
    archs = list(
        dict.fromkeys(args.arch or list(DEFAULT_ARCHS) + ([gpu["arch"]] if gpu["available"] else []))
    )
    with _cache_dir(args.fresh):
        status = _compile_report(compiler, archs)
        if gpu["available"]:
            _first_call(compiler)
    return status


class _cache_dir:
    """With ``fresh``: compile into a temporary on-disk cache, so times are real compiles."""

    def __init__(self, fresh: bool):
        self.fresh = fresh

    def __enter__(self):
        if self.fresh:
            self.tmp = tempfile.TemporaryDirectory(prefix="cusparseblocks-cache-")
            self.old = os.environ.get("CUSPARSEBLOCKS_CACHE_DIR")
            os.environ["CUSPARSEBLOCKS_CACHE_DIR"] = self.tmp.name
        return self

    def __exit__(self, *exc):
        if self.fresh:
            if self.old is None:
                os.environ.pop("CUSPARSEBLOCKS_CACHE_DIR", None)
            else:
                os.environ["CUSPARSEBLOCKS_CACHE_DIR"] = self.old
            self.tmp.cleanup()


def _compile_report(compiler, archs) -> int:
    families = compiler.all_specializations()
    total = sum(len(specs) for specs in families.values())
    if not total:
        print("\nkernels: no kernel family registered yet")
        return 0
    print(f"\nkernels: {total} specializations in {len(families)} families, compiling for {', '.join(archs)}")
    rows, failures, warnings = [], [], []
    jobs = [(family, [s for s in specs if compiler.target_arch(s.source, arch)], arch)
            for family, specs in families.items() for arch in archs]
    jobs = [job for job in jobs if job[1]]  # the wgmma kernels build for sm_90 (as sm_90a) alone
    for family, specs, arch in _progress(jobs, desc="compile", unit="family"):
        start = time.perf_counter()
        try:
            compiled = compiler.compile_specs(specs, arch)
        except Exception as exc:  # noqa: BLE001 - report every family, then fail
            failures.append(f"{family} {arch}: {exc}")
            rows.append((family, arch, len(specs), "FAILED", "-", "-", "-", "-"))
            continue
        seconds = time.perf_counter() - start
        regs = [c.registers for c in compiled.values() if c.registers is not None]
        spilled = [str(c.spec) for c in compiled.values() if (c.spill_stores or 0) + (c.spill_loads or 0) > 0]
        nvrtc_seconds = sum(c.compile_seconds for c in compiled.values())  # as recorded, even when cached
        rows.append(
            (
                family,
                arch,
                len(specs),
                "ok",
                f"{nvrtc_seconds:.1f}",
                f"{seconds:.1f}",
                max(regs) if regs else "?",
                len(spilled),
            )
        )
        warnings += [f"{family} {arch}: local-memory spill in {name}" for name in spilled]
    _table(("family", "arch", "specs", "compile", "nvrtc s", "this run s", "max regs", "spilling"), rows)
    for line in warnings:
        print(f"WARN {line}")
    for line in failures:
        print(f"FAIL {line.splitlines()[0]}")
    return 1 if failures else 0


def _first_call(compiler) -> None:
    """Time get_function on the GPU for one bsmm spec, compiled cold (temporary cache, new program)."""
    families = compiler.all_specializations()
    specs = families.get("bsmm") or next(iter(families.values()), [])
    if not specs:
        return
    spec = specs[0]
    with _cache_dir(True):
        start = time.perf_counter()
        compiler.get_function(spec)
        seconds = time.perf_counter() - start
    print(f"\nfirst call on this GPU (compile + load, cold cache): {spec} in {seconds:.2f} s")


# ---------------------------------------------------------------------------------------------------
# check


def _reference_w(mask: np.ndarray, w64: np.ndarray):
    """W as a float64 bsr_matrix built from the mask alone (not from BlockLayout's tables)."""
    import scipy.sparse as sp

    rows, cols = np.nonzero(mask)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=mask.shape[0]))])
    b = w64.shape[-1]
    return sp.bsr_matrix((w64, cols, indptr), shape=(mask.shape[0] * b, mask.shape[1] * b))


def _random_case(rng: np.random.Generator, index: int) -> dict:
    from . import layouts

    b = int(rng.choice([8, 16, 32, 64]))
    limit = {8: 40, 16: 24, 32: 16, 64: 8}[b]
    kind = ["random", "watts_strogatz", "block_diagonal", "channel_random", "barabasi_albert"][index % 5]
    seed = int(rng.integers(2**31))
    if kind == "random":
        mask = layouts.random(
            int(rng.integers(1, limit)),
            int(rng.integers(1, limit)),
            float(rng.uniform(0.05, 0.6)),
            keep_diagonal=bool(rng.integers(2)),
            seed=seed,
        )
    elif kind == "watts_strogatz":
        n = int(rng.integers(6, max(7, limit)))
        mask = layouts.watts_strogatz(n, 4, float(rng.uniform(0, 0.5)), seed=seed)
    elif kind == "barabasi_albert":
        mask = layouts.barabasi_albert(int(rng.integers(4, max(5, limit))), 2, seed=seed)
    elif kind == "block_diagonal":
        groups = int(rng.choice([1, 2, 4]))
        mask = layouts.block_diagonal(
            groups * int(rng.integers(1, max(2, limit // 4))),
            groups,
            groups * int(rng.integers(1, max(2, limit // 4))),
            shuffle=bool(rng.integers(2)),
        )
    else:
        mask = layouts.channel_random(
            int(rng.integers(1, limit)), int(rng.integers(1, limit)), float(rng.uniform(0.1, 0.5)), seed=seed
        )
    return {
        "layout": kind,
        "mask": mask,
        "block_size": b,
        "feature_axis": int(rng.integers(2)),
        # one case in ten past the dense route's least batch (_dense_route.MIN_ROWS)
        "n": int(rng.integers(1024, 2600) if rng.random() < 0.1 else
                 rng.choice([1, 3, 17, 64, 100, 129, 257]) if rng.random() < 0.5 else rng.integers(1, 300)),
    }


def _errors(actual: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    a = np.asarray(actual, dtype=np.float64)
    if a.shape != ref.shape:
        return math.inf, math.inf
    if not np.all(np.isfinite(a)):
        return math.nan, math.nan
    rel = np.linalg.norm(a - ref) / max(np.linalg.norm(ref), 1e-300)
    elem = np.abs(a - ref).max(initial=0.0) / max(np.abs(ref).max(initial=0.0), 1e-300)
    return float(rel), float(elem)


def _check_case(case: dict, dtype: str, backend: str, rng: np.random.Generator) -> list[tuple]:
    from ._array import bfloat16
    from .matmul import BlockSparseMatMul

    xp = np
    if backend == "cupy":
        import cupy as xp
    dt = bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    mask, b, fa, n = case["mask"], case["block_size"], case["feature_axis"], case["n"]
    bsmm = BlockSparseMatMul(mask, block_size=b, feature_axis=fa)
    K, M = bsmm.K, bsmm.M

    def data(shape):
        host = rng.standard_normal(shape).astype(dt)
        return xp.asarray(host), host.astype(np.float64)

    def act(features, batch):  # activations in the layout of feature_axis, with their float64 [N, F]
        dev, ref = data((batch, features) if fa == 1 else (features, batch))
        return dev, (ref if fa == 1 else ref.T)

    def host(a):
        a = a.get() if backend == "cupy" else a
        a = np.asarray(a, dtype=np.float64)
        return a if fa == 1 or a.ndim == 3 else a.T

    w, w64 = data(bsmm.w_shape)
    W = _reference_w(mask, w64)
    x, x64 = act(K, n)
    dy, dy64 = act(M, n)
    rows, cols = np.nonzero(mask)

    def blocks(dense):
        return dense.reshape(mask.shape[0], b, mask.shape[1], b).transpose(0, 2, 1, 3)[rows, cols]

    ops = [
        ("fprop", lambda: bsmm.fprop(x, w), lambda: np.asarray((W.T @ x64.T).T)),
        ("bprop", lambda: bsmm.bprop(dy, w), lambda: np.asarray((W @ dy64.T).T)),
        ("updat", lambda: bsmm.updat(x, dy), lambda: blocks(x64.T @ dy64)),
    ]
    n2 = int(rng.integers(1, 200))
    x2, x2_64 = act(K, n2)
    dy2, dy2_64 = act(M, n2)
    ops.append(
        ("updat[2]", lambda: bsmm.updat([x, x2], [dy, dy2]), lambda: blocks(x64.T @ dy64 + x2_64.T @ dy2_64))
    )
    results = []
    shape = f"{mask.shape[0]}x{mask.shape[1]}x{b} N={n}"
    for op, run, reference in ops:
        rtol, etol = CHECK_TOLERANCES[dtype]
        try:
            rel, elem = _errors(host(run()), reference())
            ok = rel <= rtol and elem <= etol
            note = "" if ok else f"error above {rtol:.0e}/{etol:.0e}"
        except Exception as exc:  # noqa: BLE001 - a crash is a failed check, reported in the table
            rel = elem = math.nan
            ok, note = False, _note(exc)
        results.append((backend, op, dtype, case["layout"], shape, fa, rel, elem, rtol, ok, note))
    return results


def _self_checks(backends) -> list[tuple]:
    """``self_check(backend)`` of the ops, conv and rnn modules, where they exist and define it."""
    rows = []
    for name in ("ops", "conv", "rnn"):
        try:
            module = importlib.import_module(f"cusparseblocks.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"cusparseblocks.{name}":
                continue
            rows.append(_self_check_row("-", f"{name}.import", note=_note(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - a module that fails to import fails the check
            rows.append(_self_check_row("-", f"{name}.import", note=_note(exc)))
            continue
        fn = getattr(module, "self_check", None)
        if fn is None:
            continue
        for backend in _progress(backends, desc=f"{name}.self_check", unit="backend"):
            rows += _self_check_rows(name, backend, fn)
    return rows


def _self_check_row(backend, label, err=math.nan, tol=math.nan, ok=False, note="") -> tuple:
    return (backend, label, "-", "-", "-", "-", float(err), math.nan, float(tol), bool(ok), note)


def _self_check_rows(name, backend, fn) -> list[tuple]:
    """Run ``module.self_check(backend)``. It may return None or a bool, or rows: dicts with ``name``,
    ``error``, ``tolerance``, ``ok``, or tuples ``(name, error, tolerance, ok)``, ``(name, error, ok)``
    or ``(name, ok)``. An exception is a failed row."""
    try:
        result = fn(backend)
    except Exception as exc:  # noqa: BLE001 - a crash is a failed check, reported in the table
        return [_self_check_row(backend, f"{name}.self_check", note=_note(exc))]
    if result is None or isinstance(result, (bool, np.bool_)):
        ok = result is None or bool(result)
        return [_self_check_row(backend, f"{name}.self_check", ok=ok, note="" if ok else "returned False")]
    rows = []
    for item in result:
        try:
            if isinstance(item, dict):
                row = (
                    item.get("name", "?"),
                    item.get("error", math.nan),
                    item.get("tolerance", math.nan),
                    item.get("ok", False),
                )
            elif len(item) == 4:
                row = tuple(item)
            elif len(item) == 3:
                row = (item[0], item[1], math.nan, item[2])
            else:
                row = (item[0], math.nan, math.nan, item[1])
            rows.append(_self_check_row(backend, f"{name}.{row[0]}", row[1], row[2], row[3]))
        except (TypeError, ValueError, IndexError) as exc:
            rows.append(_self_check_row(backend, f"{name}.self_check", note=f"bad row {item!r}: {exc}"[:80]))
    return rows


def _note(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:80]


def cmd_check(args) -> int:
    gpu = gpu_status()
    backends = ["numpy"]
    if args.backend in ("all", "cupy"):
        if gpu["available"]:
            backends.append("cupy")
        elif args.backend == "cupy":
            print(f"check: backend cupy requested but no GPU: {gpu['reason']}")
            return 1
        else:
            print(f"check: GPU backend skipped: {gpu['reason']}")
    if args.backend == "cupy":
        backends.remove("numpy")
    rng = np.random.default_rng(args.seed)
    cases = [_random_case(rng, i) for i in range(args.cases)]
    jobs = [
        (case, dtype, backend)
        for backend in backends
        for case in cases
        for dtype in (CPU_DTYPES if backend == "numpy" else GPU_DTYPES)
    ]
    rows = []
    for case, dtype, backend in _progress(jobs, desc="check", unit="case"):
        rows += _check_case(case, dtype, backend, rng)
    rows += _self_checks(backends)
    failed = [r for r in rows if not r[9]]
    show = rows if args.verbose else _summary(rows)
    print(
        f"check: seed {args.seed}, {len(cases)} random layouts x dtypes on {', '.join(backends)}; "
        f"{len(rows)} results against float64 scipy.sparse.bsr_matrix"
    )
    _table(
        ("backend", "op", "dtype", "layout", "shape", "axis", "rel err", "max err", "tol", "result", "note"),
        [
            (
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                _fmt(r[6]),
                _fmt(r[7]),
                _fmt(r[8]),
                "pass" if r[9] else "FAIL",
                r[10],
            )
            for r in show
        ],
    )
    if failed and not args.verbose:
        print("\nfailures:")
        _table(
            ("backend", "op", "dtype", "layout", "shape", "axis", "rel err", "note"),
            [(r[0], r[1], r[2], r[3], r[4], r[5], _fmt(r[6]), r[10]) for r in failed],
        )
    print(f"\n{len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def _summary(rows) -> list[tuple]:
    """One row per (backend, op, dtype): the worst errors over all layouts; self checks as they are."""
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r[0], r[1], r[2]), []).append(r)
    out = []
    for (backend, op, dtype), group in groups.items():
        if len(group) == 1:
            out.append(group[0])
            continue
        rel = max((g[6] for g in group), key=lambda v: math.inf if math.isnan(v) else v)
        elem = max((g[7] for g in group), key=lambda v: math.inf if math.isnan(v) else v)
        ok = all(g[9] for g in group)
        fails = sum(not g[9] for g in group)
        out.append(
            (
                backend,
                op,
                dtype,
                f"{len(group)} layouts",
                "worst of all",
                "0,1",
                rel,
                elem,
                group[0][8],
                ok,
                "" if ok else f"{fails} failed",
            )
        )
    return out


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2e}"


# ---------------------------------------------------------------------------------------------------
# layout

LAYOUT_DEFAULTS = {
    "random": {"in_blocks": 64, "density": 0.1, "keep_diagonal": True, "seed": 0},
    "watts_strogatz": {"n": 64, "k": 6, "p": 0.1, "seed": 0},
    "barabasi_albert": {"n": 64, "m": 3, "seed": 0},
    "block_diagonal": {"in_blocks": 64, "groups": 8, "shuffle": True},
    "channel_random": {"in_blocks": 64, "fraction": 0.1, "seed": 0},
}


def _parse_value(text: str):
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low == "none":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def cmd_layout(args) -> int:
    from . import layouts

    params = dict(LAYOUT_DEFAULTS[args.name])
    for item in args.params:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"layout: expected key=value parameters, got {item!r}", file=sys.stderr)
            return 2
        params[key.replace("-", "_")] = _parse_value(value)
    try:
        mask = layouts.generate(args.name, **params)
    except (TypeError, ValueError) as exc:
        print(f"layout {args.name}: {exc}", file=sys.stderr)
        return 2
    summary = layouts.small_world(mask)
    print(f"layout {args.name}(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")")
    _table(("metric", "value"), [(k, f"{v:.4f}" if isinstance(v, float) else v) for k, v in summary.items()])
    if args.block_size:
        b = args.block_size
        print(
            f"at block size {b}: K={mask.shape[0] * b}, M={mask.shape[1] * b}, "
            f"{int(mask.sum()) * b * b} weights"
        )
    if not args.no_plot:
        path = args.output or f"layout-{args.name}.png"
        try:
            layouts.plot(
                mask,
                path,
                title=f"{args.name}: {mask.shape[0]}x{mask.shape[1]}, density {summary['density']:.3f}",
            )
        except ImportError as exc:
            print(f"plot skipped: {exc}")
        else:
            print(f"wrote {path}")
    if args.save:
        np.save(args.save, mask)
        print(f"wrote {args.save}")
    return 0


# ---------------------------------------------------------------------------------------------------
# bench


def cmd_bench(args) -> int:
    try:
        benchmark = importlib.import_module("cusparseblocks.benchmark")
    except ModuleNotFoundError as exc:
        if exc.name != "cusparseblocks.benchmark":
            raise
        print("bench: cusparseblocks.benchmark is not part of this build yet; nothing to run")
        return 0
    gpu = gpu_status()
    if not gpu["available"]:
        print(f"bench: benchmarks time the CUDA kernels and need a GPU; none here ({gpu['reason']})")
        return 0
    # with no arguments: the benchmark's short run (three cases)
    argv = list(args.argv) if args.argv else list(getattr(benchmark, "DEFAULT_ARGV", ["--short"]))
    result = benchmark.main(argv)
    return int(result or 0)


# ---------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cusparseblocks", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cusparseblocks {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{info,check,layout,bench}")

    p = sub.add_parser("info", help="versions, GPU, and which kernel specializations compile")
    p.add_argument(
        "--arch",
        action="append",
        help="target arch to compile for (repeatable; default sm_80, sm_90 and the GPU's)",
    )
    p.add_argument("--no-compile", action="store_true", help="only print versions")
    p.add_argument("--fresh", action="store_true", help="compile into a temporary cache (real compile times)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("check", help="every op on random layouts/shapes/dtypes against float64 scipy.sparse")
    p.add_argument("--cases", type=int, default=10, help="random layouts per backend (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--backend",
        choices=("all", "numpy", "cupy"),
        default="all",
        help="all: NumPy, plus CuPy when a GPU is found (default)",
    )
    p.add_argument(
        "--verbose", "-v", action="store_true", help="one row per case instead of the worst per op"
    )
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("layout", help="generate a named layout, print its metrics, save its PNG")
    p.add_argument(
        "name",
        nargs="?",
        default="watts_strogatz",
        choices=sorted(LAYOUT_DEFAULTS),
        help="generator (default watts_strogatz)",
    )
    p.add_argument(
        "params",
        nargs="*",
        metavar="key=value",
        help="generator arguments, e.g. n=128 k=8 p=0.2 seed=1 (defaults embedded)",
    )
    p.add_argument("--output", "-o", help="PNG path (default layout-<name>.png)")
    p.add_argument("--no-plot", action="store_true", help="do not write a PNG")
    p.add_argument("--save", help="also save the mask as a .npy file")
    p.add_argument("--block-size", type=int, default=32, help="report sizes at this block size (default 32)")
    p.set_defaults(func=cmd_layout)

    p = sub.add_parser("bench", help="benchmarks of the GPU kernels (needs a GPU)")
    p.add_argument("argv", nargs=argparse.REMAINDER, help="arguments for cusparseblocks.benchmark")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # only bench passes arguments through (to cusparseblocks.benchmark)
        if args.command != "bench":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.argv = extra + list(args.argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.func(args) or 0)
