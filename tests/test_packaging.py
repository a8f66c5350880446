"""Packaging: ``pip install .`` gives a package that finds its kernel sources outside the source tree,
and ``import cusparseblocks`` needs no GPU, no CuPy and no framework."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cusparseblocks"


def _listed_packages() -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return {p.strip() for p in cfg["options"]["packages"].split() if p.strip()}


def test_setup_cfg_lists_every_package():
    found = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in PACKAGE.rglob("__init__.py")
        if "__pycache__" not in path.parts
    }
    missing = found - _listed_packages()
    assert not missing, f"setup.cfg [options] packages misses {sorted(missing)}: they would not be installed"
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert "cusparseblocks.kernels = kernels" in cfg["options"]["package_dir"]


def test_import_needs_no_gpu_or_framework():
    """Importing the package and its modules (adapters aside) loads neither CuPy nor a framework."""
    modules = sorted(
        "cusparseblocks." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts)
        for p in PACKAGE.rglob("*.py")
        if p.name != "__init__.py" and "adapters" not in p.parts and p.name != "__main__.py"
    )
    code = textwrap.dedent(
        f"""
        import sys, importlib
        import numpy as np
        import cusparseblocks
        bsmm = cusparseblocks.BlockSparseMatMul(np.eye(2, dtype=bool), block_size=8)
        bsmm.fprop(np.ones((3, 16), np.float32), np.ones(bsmm.w_shape, np.float32))
        for name in {modules!r}:
            importlib.import_module(name)
        heavy = {{"cupy", "torch", "jax", "tensorflow", "matplotlib"}} & set(sys.modules)
        assert not heavy, f"importing cusparseblocks loaded {{sorted(heavy)}}"
        print("ok")
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stdout + result.stderr


def _clean_copy(dest: Path) -> None:
    """The files a fresh clone would have (tracked + untracked-not-ignored), else the tree minus build output."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, check=True, timeout=60,
        ).stdout.split(b"\0")
    except (OSError, subprocess.SubprocessError):
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", ".git", ".venv"))
        return
    for rel in filter(None, (p.decode() for p in listed)):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src, dist = tmp / "src", tmp / "dist"
    _clean_copy(src)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(src)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, f"pip wheel failed:\n{result.stdout}\n{result.stderr}"
    wheels = list(dist.glob("cusparseblocks-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_contains_kernel_sources(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = sorted(p.name for p in (ROOT / "kernels").iterdir() if p.suffix in (".cu", ".cuh"))
    assert sources, "kernels/ holds no .cu/.cuh file"
    missing = [s for s in sources if f"cusparseblocks/kernels/{s}" not in names]
    assert not missing, f"kernel sources missing from the wheel: {missing}"
    assert not any(n.startswith("kernels/") for n in names), "kernels/ must install inside the package"
    assert "cusparseblocks/__main__.py" in names and "cusparseblocks/layouts.py" in names
    assert not any(n.startswith("tests/") for n in names)


def test_installed_package_finds_and_compiles_kernels(wheel, tmp_path):
    target = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    elsewhere = tmp_path / "elsewhere"  # outside the source tree, and not the install dir either
    elsewhere.mkdir()
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import cusparseblocks
        from cusparseblocks import compiler
        site = {str(target)!r}
        assert cusparseblocks.__file__.startswith(site), cusparseblocks.__file__
        kdir = compiler.kernel_source_dir()
        assert str(kdir).startswith(site) and kdir.name == "kernels", kdir
        assert (kdir / "common.cuh").is_file()
        bsmm = cusparseblocks.BlockSparseMatMul(np.eye(2, dtype=bool), block_size=8)
        y = bsmm.fprop(np.ones((3, 16), np.float32), bsmm.init_identity())
        assert np.array_equal(y, np.ones((3, 16), np.float32))
        if compiler.nvrtc_version() is None:
            print("no nvrtc"); sys.exit(0)
        families = compiler.all_specializations()
        if not families:
            print("no family"); sys.exit(0)
        portable = [f for f in families if all(compiler.target_arch(s.source, "sm_80") for s in families[f])]
        family = min(portable, key=lambda f: len(families[f]))
        spec = families[family][0]
        ck = compiler.compile_specs([spec], "sm_80")[spec]
        assert ck.cubin[:4] == b"\\x7fELF", ck.cubin[:4]
        for name, specs in families.items():  # an architecture-specific source ships too (wgmma: sm_90a)
            if name not in portable:
                assert compiler.compile_specs([specs[0]], "sm_90")[specs[0]].cubin[:4] == b"\\x7fELF"
        print("compiled", spec, ck.registers)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(target), CUSPARSEBLOCKS_CACHE_DIR=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=elsewhere, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    if "cuda.bindings" in sys.modules or _has_nvrtc():
        assert "compiled" in result.stdout or "no family" in result.stdout, result.stdout


def _has_nvrtc() -> bool:
    try:
        import cuda.bindings.nvrtc  # noqa: F401
    except ImportError:
        return False
    return True


def test_main_module_runs_from_installed_package(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, timeout=600)
    env = dict(os.environ, PYTHONPATH=str(target))
    result = subprocess.run([sys.executable, "-m", "cusparseblocks", "info", "--no-compile"], capture_output=True,
                            text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert str(target) in result.stdout  # kernel sources found inside the installed package
