"""The main job ``python -m cusparseblocks``: info, check, layout, bench on a CPU-only machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cusparseblocks import cli

ROOT = Path(__file__).resolve().parents[1]


def run_module(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "cusparseblocks", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def test_main_module_help():
    result = run_module("--help")
    assert result.returncode == 0
    for command in ("info", "check", "layout", "bench"):
        assert command in result.stdout


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 0
    assert "info" in capsys.readouterr().out


def test_info_versions(capsys):
    assert cli.main(["info", "--no-compile"]) == 0
    out = capsys.readouterr().out
    for key in ("cusparseblocks", "numpy", "cupy", "gpu", "nvrtc", "nvcc", "kernel sources"):
        assert key in out


def test_info_compiles_kernels(capsys, monkeypatch):
    """info compiles one (cached) family per arch; with the real registry this is the compile test's work."""
    pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-bindings is not installed")
    from cusparseblocks import compiler

    families = compiler.all_specializations()
    if not families:
        pytest.skip("no kernel family registered")
    portable = [name for name, specs in families.items() if all(compiler.target_arch(s.source, "sm_80") for s in specs)]
    family = min(portable, key=lambda name: len(families[name]))
    monkeypatch.setattr(compiler, "all_specializations", lambda: {family: families[family]})
    status = cli.main(["info", "--arch", "sm_80"])
    out = capsys.readouterr().out
    assert f"{family}" in out and "sm_80" in out and "max regs" in out
    assert status in (0, 1)  # 1 only when a kernel spills, which the compile test reports by name


def test_info_subprocess():
    result = run_module("info", "--no-compile")
    assert result.returncode == 0, result.stderr
    assert "gpu" in result.stdout


def test_check_passes_on_numpy(capsys):
    assert cli.main(["check", "--cases", "4", "--seed", "3", "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert "0 failed" in out
    for op in ("fprop", "bprop", "updat", "updat[2]"):
        assert op in out
    for dtype in ("float16", "bfloat16", "float32", "float64"):
        assert dtype in out


def test_check_default_subprocess():
    """The README's main-job command with no arguments: exit code 0 on this machine."""
    result = run_module("check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed, 0 failed" in result.stdout


def test_check_verbose_rows(capsys):
    assert cli.main(["check", "--cases", "2", "--backend", "numpy", "-v"]) == 0
    out = capsys.readouterr().out
    assert out.count("pass") >= 2 * 4 * 4  # 2 layouts x 4 dtypes x 4 ops


def test_check_fails_with_exit_code_1(capsys, monkeypatch):
    """A wrong result anywhere makes check print FAIL and return 1."""
    from cusparseblocks import matmul

    real = matmul.BlockSparseMatMul.bprop
    monkeypatch.setattr(matmul.BlockSparseMatMul, "bprop", lambda self, dy, w, **kw: real(self, dy, w, **kw) * 1.01)
    assert cli.main(["check", "--cases", "2", "--backend", "numpy"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "bprop" in out.split("failures:")[1]


def test_check_reports_exceptions(capsys, monkeypatch):
    from cusparseblocks import matmul

    def broken(self, x, dy, **kw):
        raise NotImplementedError("no kernel")

    monkeypatch.setattr(matmul.BlockSparseMatMul, "updat", broken)
    assert cli.main(["check", "--cases", "1", "--backend", "numpy"]) == 1
    assert "NotImplementedError: no kernel" in capsys.readouterr().out


def test_check_cupy_without_gpu(capsys, monkeypatch):
    monkeypatch.setattr(cli, "gpu_status", lambda: {"available": False, "reason": "no GPU here"})
    assert cli.main(["check", "--backend", "cupy", "--cases", "1"]) == 1
    assert "no GPU" in capsys.readouterr().out


def test_check_runs_module_self_checks(capsys, monkeypatch):
    import types

    fake = types.ModuleType("cusparseblocks.ops")
    fake.self_check = lambda backend: [{"name": "relu", "error": 0.0, "tolerance": 1e-6, "ok": True},
                                       ("gelu", 1.0, 1e-6, False)]
    monkeypatch.setitem(sys.modules, "cusparseblocks.ops", fake)
    assert cli.main(["check", "--cases", "1", "--backend", "numpy"]) == 1
    out = capsys.readouterr().out
    assert "ops.relu" in out and "ops.gelu" in out


@pytest.mark.parametrize("name", sorted(cli.LAYOUT_DEFAULTS))
def test_layout_defaults(tmp_path, capsys, name):
    pytest.importorskip("matplotlib")
    png = tmp_path / f"{name}.png"
    assert cli.main(["layout", name, "-o", str(png), "--save", str(tmp_path / "mask.npy")]) == 0
    out = capsys.readouterr().out
    for metric in ("density", "clustering", "path_length", "sigma"):
        assert metric in out
    assert png.read_bytes()[:4] == b"\x89PNG"
    mask = np.load(tmp_path / "mask.npy")
    assert mask.dtype == bool and mask.any()


def test_layout_parameters(capsys):
    assert cli.main(["layout", "block_diagonal", "in_blocks=12", "groups=3", "out_blocks=6", "shuffle=false",
                     "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "(12, 6)" in out and "block_diagonal(in_blocks=12, groups=3, shuffle=False, out_blocks=6)" in out


def test_layout_default_subprocess(tmp_path):
    pytest.importorskip("matplotlib")
    result = run_module("layout", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "layout-watts_strogatz.png").is_file()


@pytest.mark.parametrize("args", [["random", "density=2"], ["random", "nope"], ["random", "bogus=1"]])
def test_layout_bad_parameters(capsys, args):
    assert cli.main(["layout", *args, "--no-plot"]) == 2
    assert capsys.readouterr().err


def test_bench_without_gpu_exits_0(capsys, monkeypatch):
    monkeypatch.setattr(cli, "gpu_status", lambda: {"available": False, "reason": "no GPU here"})
    assert cli.main(["bench"]) == 0
    out = capsys.readouterr().out
    assert "bench:" in out and ("GPU" in out or "not part of this build" in out)


def test_bench_subprocess():
    result = run_module("bench")
    assert result.returncode == 0, result.stderr
    assert "bench:" in result.stdout or result.stdout  # on a GPU machine the benchmark prints its table


def test_bench_passes_arguments_through(monkeypatch):
    """With a GPU, bench calls cusparseblocks.benchmark.main: ['--short'] by default, else the user's argv."""
    import types

    calls = []
    fake = types.ModuleType("cusparseblocks.benchmark")
    fake.main = lambda argv: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, "cusparseblocks.benchmark", fake)
    monkeypatch.setattr(cli, "gpu_status", lambda: {"available": True, "reason": ""})
    assert cli.main(["bench"]) == 0
    assert cli.main(["bench", "--out", "somewhere", "--no-save"]) == 0
    assert calls == [["--short"], ["--out", "somewhere", "--no-save"]]


def test_unknown_arguments_rejected():
    with pytest.raises(SystemExit) as excinfo:
        cli.main(["check", "--bogus"])
    assert excinfo.value.code == 2


def test_save_json_same_minute_keeps_both(tmp_path, monkeypatch):
    """Two benchmark runs saved in the same minute get two files (the second with -2), never one overwritten."""
    import json

    from cusparseblocks import _timing

    monkeypatch.setattr(_timing, "gpu_name", lambda: "test")
    paths = [_timing.save_json("bench", {"run": i}, tmp_path, command=f"cmd {i}") for i in range(3)]
    assert len(set(paths)) == 3
    if paths[0].name == paths[2].name.replace("-3.json", ".json"):  # (unless the minute turned meanwhile)
        assert paths[1].name.endswith("-2.json")
    assert [json.loads(p.read_text())["run"] for p in paths] == [0, 1, 2]
    assert paths[1].with_suffix(".cmd").read_text() == "cmd 1\n"
