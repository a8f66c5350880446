"""A NumPy-backed stand-in for the bits of CuPy that cusparseblocks.conv's GPU path uses (tests only).

With :func:`install` the GPU dispatch of ``cusparseblocks.conv`` runs unchanged on the CPU: arrays are
``ndarray`` (a NumPy subclass that looks like a CuPy array to the validation), and every kernel launch
goes to ``conv_driver``, which runs the real ``kernels/conv.cu`` source compiled for the host with the
CUDA execution model emulated (tests/cuda_emulation/*.h).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
KERNELS = HERE.parent.parent / "kernels"


class _Device:
    id = 0


class ndarray(np.ndarray):  # noqa: N801 - CuPy's name
    @property
    def device(self):
        return _Device()

    def get(self):
        return np.array(self).view(np.ndarray)


def _wrap(a):
    return np.asarray(a).view(ndarray)


def _poisoned(shape, dtype):
    try:
        return np.full(shape, np.nan, dtype=dtype)
    except (ValueError, TypeError):
        return np.full(shape, 0x5A, dtype=dtype)


def _module():
    mod = types.ModuleType("cupy")
    mod.ndarray = ndarray
    mod.empty = lambda shape, dtype=np.float32: _wrap(_poisoned(shape, dtype))
    mod.zeros = lambda shape, dtype=np.float32: _wrap(np.zeros(shape, dtype))
    mod.full = lambda shape, value, dtype=None: _wrap(np.full(shape, value, dtype=dtype))
    mod.asarray = lambda a, dtype=None: _wrap(
        np.array(a, dtype=dtype, copy=True) if not isinstance(a, ndarray) else np.asarray(a, dtype=dtype)
    )
    mod.ascontiguousarray = lambda a: _wrap(np.ascontiguousarray(a))
    mod.arange = lambda *a, **k: _wrap(np.arange(*a, **k))
    mod.moveaxis = lambda a, s, d: _wrap(np.moveaxis(a, s, d))
    for name in ("float16", "float32", "float64", "int32", "int64"):
        setattr(mod, name, getattr(np, name))
    mod.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDevice=lambda: 0),
        get_current_stream=lambda: None,
        # a small GPU: persistent grids (a CTA walking several items) are exercised by small problems
        Device=lambda dev=0: types.SimpleNamespace(attributes={"MultiProcessorCount": 3}),
    )
    return mod


def build_driver(cache_dir: Path) -> Path:
    """Compile tests/cuda_emulation/conv_driver.cpp (with kernels/conv.cu) once per source version."""
    sources = [HERE / n for n in sorted(os.listdir(HERE)) if n.endswith((".h", ".cpp"))]
    sources += [KERNELS / "conv.cu", KERNELS / "common.cuh"]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:16]
    exe = cache_dir / f"conv_driver-{digest}"
    if not exe.exists():
        tmp = exe.with_name(exe.name + f".tmp{os.getpid()}")
        subprocess.run(
            [
                "g++",
                "-std=c++20",
                "-O1",
                "-pthread",
                "-DCSB_HOST_EMULATION",
                f"-I{HERE}",
                f"-I{KERNELS}",
                str(HERE / "conv_driver.cpp"),
                "-o",
                str(tmp),
            ],
            check=True,
            capture_output=True,
        )
        os.replace(tmp, exe)
    return exe


def make_launcher(exe: Path, log: list):
    def launch(spec, grid, block, args, smem=0):
        grid = tuple(grid) + (1,) * (3 - len(grid))
        block = tuple(block) + (1,) * (3 - len(block))
        log.append(spec.name)
        chunks = [
            np.int32(len(spec.name)).tobytes(),
            spec.name.encode(),
            np.asarray([*grid, *block, smem], dtype=np.int32).tobytes(),
            np.int32(len(args)).tobytes(),
        ]
        arrays = []
        for a in args:
            if isinstance(a, np.ndarray):
                assert a.flags.c_contiguous, f"{spec.name}: non-contiguous argument"
                raw = a.reshape(-1).view(np.uint8)
                chunks += [np.int32(0).tobytes(), np.int64(raw.size).tobytes(), raw.tobytes()]
                arrays.append(a)
            elif isinstance(a, np.int32):
                chunks += [np.int32(1).tobytes(), a.tobytes()]
            elif isinstance(a, np.int64):
                chunks += [np.int32(2).tobytes(), a.tobytes()]
            elif isinstance(a, np.uint64):
                chunks += [np.int32(3).tobytes(), a.tobytes()]
            elif isinstance(a, np.float32):
                chunks += [np.int32(4).tobytes(), a.tobytes()]
            else:
                raise TypeError(
                    f"{spec.name}: argument of type {type(a).__name__} (expected numpy scalars/arrays)"
                )
        with tempfile.TemporaryDirectory() as d:
            src, dst = Path(d) / "in.bin", Path(d) / "out.bin"
            src.write_bytes(b"".join(chunks))
            res = subprocess.run([str(exe), str(src), str(dst)], capture_output=True, text=True)
            if res.returncode:
                raise RuntimeError(f"{spec.name}: emulator failed ({res.returncode}): {res.stderr}")
            data = dst.read_bytes()
        pos = 0
        for a in arrays:
            nb = int(np.frombuffer(data, np.int64, 1, pos)[0])
            pos += 8
            a.reshape(-1).view(np.uint8)[:] = np.frombuffer(data, np.uint8, nb, pos)
            pos += nb

    return launch


def install(monkeypatch, exe: Path):
    """Route cusparseblocks.conv's GPU path to the emulator; returns the list of launched kernel names."""
    import cusparseblocks.conv as conv
    from cusparseblocks import _array

    mod = _module()
    monkeypatch.setitem(sys.modules, "cupy", mod)

    def backend_of(**arrays):
        kinds = {("cupy" if isinstance(a, ndarray) else "numpy") for a in arrays.values() if a is not None}
        if len(kinds) > 1:
            raise TypeError("arrays must all be NumPy or all CuPy")
        return kinds.pop() if kinds else "numpy"

    monkeypatch.setattr(conv, "backend_of", backend_of)
    monkeypatch.setattr(conv, "_GEO_CACHE", {})  # never mix emulated arrays into the real device cache
    monkeypatch.setattr(conv, "_SCHED", {})  # nor the halo kernel's work counters
    monkeypatch.setattr(conv, "_gmma_device", lambda: False)  # a test names the wgmma kernel to run it
    log: list = []
    monkeypatch.setattr(conv, "_launch", make_launcher(exe, log))
    assert _array.is_cupy(mod.zeros(1))
    return mod, log
