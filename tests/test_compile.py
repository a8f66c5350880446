"""Every kernel specialization the library can launch compiles with NVRTC for sm_80 and sm_90; no spills.

No GPU is needed: NVRTC (PyPI's cuda-bindings + nvidia-cuda-nvrtc, headers from nvidia-cuda-runtime)
compiles to cubin on any machine. Specializations come from ``compiler.all_specializations()`` (each
kernel family registers every spec it may launch). Each family is compiled for each arch as one NVRTC
program (the headers are parsed once); the (family, arch) jobs run in parallel worker processes, one per
core. The on-disk cubin cache (``$CUSPARSEBLOCKS_CACHE_DIR``) is keyed by source and header texts, options (not
the include directories) and NVRTC version, so an unchanged family is not compiled twice on one machine, from
any checkout.

A failure names the kernel family, the arch and the failing specialization(s) with NVRTC's log; a
local-memory spill (ptxas spill stores/loads > 0) in any kernel fails and names the kernel, and so does a
kernel whose wgmmas ptxas serializes (its C7514-C7519 warnings). Registers,
spills and stack frames are recorded (``record_property``, and printed with ``-rA``).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import re

import pytest

pytest.importorskip(
    "cuda.bindings.nvrtc", reason="cuda-bindings is not installed (pip install '.[nvrtc]'): cannot run NVRTC"
)

from cusparseblocks import compiler  # noqa: E402

ARCHS = ("sm_80", "sm_90")
MAX_BISECT = 8  # on a family failure, compile specs one by one to name up to this many culprits

# Spills accepted on purpose: {(arch, str(spec)): "why it is not hot / why it cannot be avoided"}.
# Empty by default; an entry that no longer spills fails the test, so the list cannot go stale.
KNOWN_SPILLS: dict[tuple[str, str], str] = {}


def _known_serialized() -> dict[tuple[str, str], str]:
    """Kernels whose wgmmas ptxas serializes, accepted on purpose: {(arch, str(spec)): why}. An entry that no
    longer warns fails the test."""
    from cusparseblocks import _matmul_gpu as mg

    why = ("xw_gmma_rs forced-only tile (one record a stage or super-rows): measured slower than the default "
           "two-record tiles, whose wgmmas ptxas does not serialize (bench/NOTES.md)")
    out = {}
    for bs, variants in ((32, ("rs_c4", "rs_c8", "rs_c2_r2")), (16, ("rs_c8", "rs_c8_r2"))):
        for dtype in ("float16", "bfloat16"):
            for odt in (dtype, "float32"):
                for variant in variants:
                    for trans in (0, 1):
                        out[("sm_90", str(mg.xw_gmma_rs_spec(dtype, odt, bs, variant, trans)))] = why
    return out


KNOWN_SERIALIZED = _known_serialized()


def _families() -> dict[str, list]:
    return compiler.all_specializations()


FAMILIES = _families()


def _targets(family: str, arch: str) -> list:
    """The family's specializations that build for ``arch`` (the wgmma kernels: sm_90 alone, as sm_90a)."""
    return [s for s in FAMILIES[family] if compiler.target_arch(s.source, arch)]


JOBS = [(family, arch) for family in sorted(FAMILIES) for arch in ARCHS if _targets(family, arch)]


def _compile_job(family: str, arch: str) -> dict:
    """Runs in a worker: compile one family for one arch; return a picklable summary."""
    from cusparseblocks import compiler as comp

    specs = [s for s in comp.all_specializations()[family] if comp.target_arch(s.source, arch)]
    try:
        compiled = comp.compile_specs(specs, arch)
    except Exception as exc:  # noqa: BLE001 - bisect to name the failing specializations
        culprits = []
        for spec in specs:
            try:
                comp.compile_specs([spec], arch)
            except Exception as one:  # noqa: BLE001
                culprits.append((str(spec), str(one)[-3000:]))
                if len(culprits) >= MAX_BISECT:
                    break
        return {"error": str(exc)[-3000:], "culprits": culprits}
    # ptxas's wgmma serialization warnings (C7514-C7519: a group waited for after every wgmma) name the function
    serialized = set()
    for spec in {s for s in specs}:
        for line in comp.compile_log(spec, arch).splitlines():
            if re.search(r"\(C751[0-9]\)", line):
                serialized.update(re.findall(r"function '(\S+)'", line))
    return {
        "kernels": {
            str(spec): {
                "registers": ck.registers,
                "spill_stores": ck.spill_stores,
                "spill_loads": ck.spill_loads,
                "stack_frame": ck.stack_frame,
                "serialized": ck.lowered_name in serialized,
            }
            for spec, ck in compiled.items()
        }
    }


@pytest.fixture(scope="module")
def compiled():
    """{(family, arch): summary} for every family and arch, compiled in parallel processes."""
    jobs = JOBS
    if not jobs:
        return {}
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    ctx = multiprocessing.get_context("spawn")  # a clean interpreter: no CUDA state inherited
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = {job: pool.submit(_compile_job, *job) for job in jobs}
        return {job: future.result() for job, future in futures.items()}


def test_kernel_families_registered():
    if not FAMILIES:
        pytest.skip("no kernel family registered yet (compiler.register_family)")
    for family, specs in FAMILIES.items():
        assert specs, f"kernel family {family!r} registered no specializations"


def test_every_kernel_source_is_compiled():
    """A kernels/*.cu file that no registered specialization uses would go untested: fail on it."""
    try:
        sources = {p.name for p in compiler.kernel_source_dir().glob("*.cu")}
    except FileNotFoundError:
        pytest.skip("no kernel source yet")
    used = {spec.source for specs in FAMILIES.values() for spec in specs}
    assert not used - sources, f"specializations name missing sources: {sorted(used - sources)}"
    assert not sources - used, f"kernel sources with no registered specialization: {sorted(sources - used)}"


def test_cuda_headers_found():
    dirs = compiler.cuda_include_dirs()
    assert dirs, "cuda_fp16.h not found: pip install nvidia-cuda-runtime (the nvrtc extra) or set CUDA_PATH"


@pytest.mark.parametrize(
    "family, arch", JOBS or [pytest.param("none", "none", marks=pytest.mark.skip("no family"))]
)
def test_family_compiles_without_spills(compiled, family, arch, record_property):
    result = compiled[(family, arch)]
    if "error" in result:
        named = "\n".join(f"  {spec}:\n{log}" for spec, log in result["culprits"]) or "  (none alone: see log)"
        pytest.fail(
            f"kernel family {family!r} does not compile for {arch}.\nfailing specializations:\n{named}\n"
            f"program log:\n{result['error']}",
            pytrace=False,
        )
    kernels = result["kernels"]
    specs = _targets(family, arch)
    assert len(kernels) == len(set(specs)), f"{family} {arch}: compiled {len(kernels)} of {len(set(specs))}"
    unknown = [name for name, k in kernels.items() if k["registers"] is None]
    spilling = {
        name: (k["spill_stores"], k["spill_loads"])
        for name, k in kernels.items()
        if (k["spill_stores"] or 0) + (k["spill_loads"] or 0) > 0
    }
    spilled = {name: v for name, v in spilling.items() if (arch, name) not in KNOWN_SPILLS}
    stale = [name for (a, name) in KNOWN_SPILLS if a == arch and name in kernels and name not in spilling]
    registers = {name: k["registers"] for name, k in kernels.items()}
    record_property("max_registers", max((r for r in registers.values() if r is not None), default=None))
    record_property("kernels", {name: (k["registers"], k["stack_frame"]) for name, k in kernels.items()})
    print(f"{family} {arch}: {len(kernels)} specializations, max {max(registers.values(), default=0)} registers")
    assert not unknown, f"{family} {arch}: ptxas -v reported no resource usage for {unknown[:5]}"
    assert not stale, f"{family} {arch}: KNOWN_SPILLS lists kernels that no longer spill: {stale}"
    assert not spilled, f"{family} {arch}: local-memory spills (stores, loads bytes) in " + "; ".join(
        f"{name}: {st}/{ld}" for name, (st, ld) in sorted(spilled.items())
    )
    serialized = sorted(name for name, k in kernels.items() if k["serialized"] and (arch, name) not in KNOWN_SERIALIZED)
    stale_ser = [n for (a, n) in KNOWN_SERIALIZED if a == arch and n in kernels and not kernels[n]["serialized"]]
    assert not stale_ser, f"{family} {arch}: KNOWN_SERIALIZED lists kernels ptxas no longer serializes: {stale_ser[:3]}"
    assert not serialized, f"{family} {arch}: ptxas serializes the wgmmas (C7510-C7519) of {serialized[:5]}"


def test_cache_key_ignores_include_paths():
    """The on-disk cache key holds what is compiled, not where: the same source, headers, options and
    specializations under another checkout or virtual environment (other -I directories) hit the same entry;
    any other option, the source text or the specializations change it."""
    text = "extern \"C\" __global__ void k(float* x) { x[0] = 1.f; }\n"
    group = (compiler.KernelSpec("k.cu", "k"),)
    base = ["--gpu-architecture=sm_90", "-std=c++17"]
    here = compiler._digest(text, [*base, "-I/a/kernels", "-I/venv1/include"], group)
    assert here == compiler._digest(text, [*base, "-I/b/kernels", "-I/venv2/include"], group)
    assert here != compiler._digest(text, [*base, "-DX=1", "-I/a/kernels"], group)
    assert here != compiler._digest(text + "\n", [*base, "-I/a/kernels"], group)
    assert here != compiler._digest(text, [*base, "-I/a/kernels"], (compiler.KernelSpec("k.cu", "k2"),))
