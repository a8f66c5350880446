"""The one module that compiles CUDA kernels.

Sources live in ``kernels/*.cu`` (CUDA C only). A :class:`KernelSpec` names one specialization: the
source file and a C++ name expression (``"bsmm_tc<__half, 32, 128, 0, 0>"``), plus optional ``-D``
macros. Specializations are compiled with NVRTC (``cuda.bindings.nvrtc``) to a cubin for the target
architecture, with ``-Xptxas -v`` so that registers, spills and stack frame are recorded, and loaded
into CuPy. Three caches keep the cost once: an in-process cache of compiled programs, an on-disk cache
of cubins (``$CUSPARSEBLOCKS_CACHE_DIR``, default ``~/.cache/cusparseblocks``), and a per-device cache
of loaded functions.

Compilation needs no GPU and no driver: ``compile_specs(specs, arch="sm_90")`` runs on any machine
with the ``nvrtc`` extra installed, which is how CI proves that every specialization compiles.
Kernel families register the full list of specializations they can launch with
:func:`register_family`; :func:`all_specializations` returns them for the tests and ``info``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

__all__ = [
    "KernelSpec",
    "CompiledKernel",
    "CompileError",
    "kernel_source_dir",
    "compile_specs",
    "get_function",
    "register_family",
    "all_specializations",
    "nvrtc_version",
    "cuda_include_dirs",
    "compile_log",
    "target_arch",
]


class CompileError(RuntimeError):
    """A kernel specialization failed to compile; the message names it and holds NVRTC's log."""


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """One kernel specialization: ``source`` in kernels/, C++ ``name`` expression, ``-D`` defines."""

    source: str
    name: str
    defines: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        extra = "".join(f" -D{k}={v}" for k, v in self.defines)
        return f"{self.source}:{self.name}{extra}"


@dataclasses.dataclass
class CompiledKernel:
    spec: KernelSpec
    arch: str
    lowered_name: str
    cubin: bytes
    registers: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    stack_frame: int | None = None
    shared_static: int | None = None
    compile_seconds: float = 0.0


_ROOT = Path(__file__).resolve().parent


def kernel_source_dir() -> Path:
    """Directory holding the ``.cu`` sources: package data when installed, ``kernels/`` in a checkout."""
    for candidate in (_ROOT / "kernels", _ROOT.parent / "kernels"):
        if candidate.is_dir() and any(candidate.glob("*.cu")):
            return candidate
    raise FileNotFoundError(
        f"cusparseblocks: kernel sources not found in {_ROOT / 'kernels'} or {_ROOT.parent / 'kernels'}"
    )


def _read_source(name: str) -> str:
    path = kernel_source_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"kernel source {name!r} not found in {path.parent}")
    return path.read_text()


def _local_headers(text: str, seen: tuple = ()) -> list[str]:
    """The texts of the kernels/ headers that ``text`` includes (``#include "x.cuh"``), recursively: part
    of the cache key, so that editing common.cuh or pack16.cuh invalidates every source built on it."""
    out = []
    for name in re.findall(r'^\s*#include\s+"([^"]+)"', text, flags=re.M):
        path = kernel_source_dir() / name
        if name in seen or not path.is_file():
            continue
        seen = (*seen, name)
        sub = path.read_text()
        out += [sub, *_local_headers(sub, seen)]
    return out


def cuda_include_dirs() -> list[str]:
    """Directories with CUDA's headers (cuda_fp16.h, cuda_bf16.h) that NVRTC needs."""
    found = []
    env = [os.environ.get(k) for k in ("CUDA_PATH", "CUDA_HOME")]
    candidates = [Path(e) / "include" for e in env if e]
    for entry in sys.path:
        for sub in ("nvidia/cu13/include", "nvidia/cuda_runtime/include", "nvidia/cu12/include"):
            candidates.append(Path(entry) / sub)
    candidates += [Path("/usr/local/cuda/include")] + sorted(Path("/usr/local").glob("cuda-*/include"))
    for path in candidates:
        if (path / "cuda_fp16.h").is_file() and str(path) not in found:
            found.append(str(path))
            break
    return found


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "cusparseblocks needs NVRTC through cuda-bindings to compile kernels: "
            "pip install 'cusparseblocks[nvrtc]' (cuda-bindings and nvidia-cuda-nvrtc)"
        ) from exc
    return nvrtc


def nvrtc_version() -> str | None:
    try:
        nvrtc = _nvrtc()
    except ImportError:
        return None
    err, major, minor = nvrtc.nvrtcVersion()
    return f"{major}.{minor}"


def _check(nvrtc, result, what: str, log: str = "") -> None:
    err = result[0] if isinstance(result, tuple) else result
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise CompileError(f"{what}: {err}\n{log}")


_RESOURCE = re.compile(
    r"Function properties for (?P<name>\S+)\s*\n.*?(?P<stack>\d+) bytes stack frame, "
    r"(?P<st>\d+) bytes spill stores, (?P<ld>\d+) bytes spill loads\s*\n"
    r"ptxas info\s*: Used (?P<reg>\d+) registers(?:, used \d+ barriers)?(?:, (?P<smem>\d+) bytes smem)?",
    re.S,
)

_compiled: dict[tuple, dict[KernelSpec, CompiledKernel]] = {}
_logs: dict[tuple, str] = {}
_lock = threading.Lock()


def _cache_dir() -> Path:
    return Path(os.environ.get("CUSPARSEBLOCKS_CACHE_DIR", Path.home() / ".cache" / "cusparseblocks"))


def _options(arch: str, defines: Sequence[tuple[str, str]]) -> list[str]:
    opts = [f"--gpu-architecture={arch}", "-std=c++17", "-Xptxas=-v", "--use_fast_math", "-lineinfo"]
    opts += [f"-I{kernel_source_dir()}"] + [f"-I{d}" for d in cuda_include_dirs()]
    opts += [f"-D{k}={v}" for k, v in defines]
    return opts


# Sources that use architecture-specific instructions (wgmma: sm_90a; thread-block clusters: sm_90) and the
# one target they build for; the dispatch launches them only on devices of that architecture.
ARCH_SPECIFIC = {"bsmm_gmma.cu": "sm_90a", "bsmm_gmma_rs.cu": "sm_90a", "bsmm_tma.cu": "sm_90a", "conv_gmma.cu": "sm_90a",
                 "ew_cols.cu": "sm_90", "cols_probe.cu": "sm_90"}


def target_arch(source: str, arch: str) -> str | None:
    """The target to compile ``source`` for on ``arch`` (``sm_90`` -> ``sm_90a`` for the wgmma kernels),
    or None when the source cannot run there."""
    special = ARCH_SPECIFIC.get(source)
    if special is None:
        return arch
    return special if arch in (special, special.rstrip("a")) else None


def compile_specs(specs: Iterable[KernelSpec], arch: str = "sm_90") -> dict[KernelSpec, CompiledKernel]:
    """Compile specializations for ``arch`` (``sm_80``, ``sm_90``, ``sm_90a``); no GPU needed.

    Specs sharing a source and defines are compiled in one NVRTC program (headers parsed once); a source
    of :data:`ARCH_SPECIFIC` builds for its own target (``sm_90`` -> ``sm_90a``) and raises
    :class:`CompileError` for any other arch. Raises :class:`CompileError` naming the failing
    specialization(s) with NVRTC's log.
    """
    groups: dict[tuple, list[KernelSpec]] = {}
    for spec in specs:
        groups.setdefault((spec.source, spec.defines), []).append(spec)
    out: dict[KernelSpec, CompiledKernel] = {}
    for (source, defines), group in groups.items():
        target = target_arch(source, arch)
        if target is None:
            raise CompileError(f"{source} builds for {ARCH_SPECIFIC[source]} only, not {arch}")
        out.update(_compile_group(source, defines, tuple(dict.fromkeys(group)), target))
    return out


def _digest(text: str, opts: Sequence[str], group) -> str:
    """The on-disk cache key of one NVRTC program: the source and the texts of the kernels/ headers it
    includes, the options except the include directories (absolute paths of this checkout and environment:
    a fresh clone or virtual environment elsewhere would miss every entry; what they hold is covered by the
    header texts and the NVRTC version), the specializations and the NVRTC version."""
    kept = [o for o in opts if not o.startswith("-I")]
    parts = [text, *_local_headers(text), *kept, *(s.name for s in group), str(nvrtc_version())]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def _compile_group(source, defines, group, arch):
    key = (source, defines, group, arch)
    with _lock:
        if key in _compiled:
            return _compiled[key]
    text = _read_source(source)
    opts = _options(arch, defines)
    digest = _digest(text, opts, group)
    cached = _load_disk(digest, group, arch)
    if cached is not None:
        with _lock:
            _compiled[key], _logs[key] = cached
        return cached[0]
    nvrtc = _nvrtc()
    start = time.perf_counter()
    err, prog = nvrtc.nvrtcCreateProgram(text.encode(), source.encode(), 0, [], [])
    _check(nvrtc, err, f"nvrtcCreateProgram({source})")
    try:
        for spec in group:
            _check(nvrtc, nvrtc.nvrtcAddNameExpression(prog, spec.name.encode()), f"name {spec.name}")
        enc = [o.encode() for o in opts]
        result = nvrtc.nvrtcCompileProgram(prog, len(enc), enc)
        err, size = nvrtc.nvrtcGetProgramLogSize(prog)
        buf = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, buf)
        log = buf.rstrip(b"\0 ").decode(errors="replace")
        names = ", ".join(str(s) for s in group)
        _check(nvrtc, result, f"compiling {names} for {arch}", log)
        err, size = nvrtc.nvrtcGetCUBINSize(prog)
        cubin = b" " * size
        _check(nvrtc, nvrtc.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        lowered = {}
        for spec in group:
            err, name = nvrtc.nvrtcGetLoweredName(prog, spec.name.encode())
            _check(nvrtc, err, f"lowered name of {spec}")
            lowered[spec] = name.decode()
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    seconds = time.perf_counter() - start
    result = _build(group, arch, lowered, cubin, log, seconds / len(group))
    _store_disk(digest, cubin, log, lowered, seconds)
    with _lock:
        _compiled[key] = result
        _logs[key] = log
    return result


def _build(group, arch, lowered, cubin, log, seconds):
    resources = {m["name"]: m for m in _RESOURCE.finditer(log)}
    result = {}
    for spec in group:
        ck = CompiledKernel(spec, arch, lowered[spec], cubin, compile_seconds=seconds)
        m = resources.get(lowered[spec])
        if m:
            ck.registers = int(m["reg"])
            ck.spill_stores = int(m["st"])
            ck.spill_loads = int(m["ld"])
            ck.stack_frame = int(m["stack"])
            ck.shared_static = int(m["smem"] or 0)
        result[spec] = ck
    return result


def _load_disk(digest, group, arch):
    path = _cache_dir() / digest
    try:
        cubin = (path / "module.cubin").read_bytes()
        log = (path / "log.txt").read_text()
        lines = (path / "names.txt").read_text().splitlines()
        seconds = float(lines[0])
        lowered = dict(zip(group, lines[1:]))
        if len(lowered) != len(group):
            return None
    except (OSError, ValueError, IndexError):
        return None
    return _build(group, arch, lowered, cubin, log, seconds / len(group)), log


def _store_disk(digest, cubin, log, lowered, seconds):
    path = _cache_dir() / digest
    try:
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "module.cubin").write_bytes(cubin)
        (tmp / "log.txt").write_text(log)
        (tmp / "names.txt").write_text("\n".join([repr(seconds), *lowered.values()]))
        os.replace(tmp, path) if not path.exists() else None
    except OSError:
        pass


def compile_log(spec: KernelSpec, arch: str = "sm_90") -> str:
    """NVRTC's full log (ptxas -v lines) for the program that compiled ``spec``."""
    compile_specs([spec], arch)
    arch = target_arch(spec.source, arch)
    for key, log in _logs.items():
        if spec in key[2] and key[3] == arch:
            return log
    return ""


# ---------------------------------------------------------------------------------------------------
# Loading on the GPU (CuPy)

_functions: dict[tuple[int, KernelSpec], object] = {}
_modules: dict[tuple[int, bytes], object] = {}
_smem_limits: dict[tuple[int, KernelSpec], int] = {}
_CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8


def device_arch(device_id: int | None = None) -> str:
    import cupy

    dev = cupy.cuda.Device(device_id)
    major, minor = dev.compute_capability[:-1], dev.compute_capability[-1]
    return f"sm_{major}{minor}"


def get_function(spec: KernelSpec, dynamic_smem: int = 0):
    """The CuPy function for ``spec`` on the current device, compiled and loaded once per device.

    ``dynamic_smem`` above 48 KiB raises the function's dynamic shared-memory limit.
    """
    import cupy

    device_id = cupy.cuda.runtime.getDevice()
    fn = _functions.get((device_id, spec))
    if fn is None:
        arch = device_arch(device_id)
        compiled = compile_specs([spec], arch)[spec]
        mkey = (device_id, hashlib.sha1(compiled.cubin).digest())
        module = _modules.get(mkey)
        if module is None:
            module = cupy.cuda.function.Module()
            module.load(compiled.cubin)
            _modules[mkey] = module
        fn = module.get_function(compiled.lowered_name)
        _functions[(device_id, spec)] = fn
    # cupy's Function takes no Python attributes: the raised limit is kept here, set via the driver
    if dynamic_smem > 48 * 1024 and _smem_limits.get((device_id, spec), 0) < dynamic_smem:
        from cupy_backends.cuda.api import driver

        driver.funcSetAttribute(fn.ptr, _CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, dynamic_smem)
        _smem_limits[(device_id, spec)] = dynamic_smem
    return fn


# ---------------------------------------------------------------------------------------------------
# Registry of every specialization the library can launch

_families: dict[str, Callable[[], Iterable[KernelSpec]]] = {}


def register_family(name: str, specializations: Callable[[], Iterable[KernelSpec]]) -> None:
    """Record a kernel family; ``specializations()`` yields every spec the library may launch."""
    _families[name] = specializations


def all_specializations() -> dict[str, list[KernelSpec]]:
    """Every registered family's specializations.

    Imports every module of the package (not the CLI, not subpackages such as adapters) so that each
    kernel family registers, wherever its ``register_family`` call lives.
    """
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules([str(_ROOT)]):
        if not info.ispkg and info.name not in ("cli", "__main__"):
            importlib.import_module(f"cusparseblocks.{info.name}")
    return {name: list(dict.fromkeys(fn())) for name, fn in sorted(_families.items())}
