"""README: its examples run, and its test command is the one .ci/run calls."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
BASH_BLOCKS = re.findall(r"```bash\n(.*?)```", README, re.S)

TEST_COMMAND = "python -m pip install -e '.[test]' && python -m pytest"
MAIN_COMMAND = "python -m pip install '.[gpu,nvrtc]' && python -m cusparseblocks check"


def test_two_commands_documented():
    commands = [b.strip() for b in BASH_BLOCKS]
    assert MAIN_COMMAND in commands and TEST_COMMAND in commands


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert any(line.strip() == TEST_COMMAND for line in ci.splitlines()), ".ci/run must call the README command"


def test_sections_present():
    for heading in ("## Benchmarks", "## Framework adapters", "## Helper ops", "## Convolution",
                    "## Persistent RNN", "## Layouts"):
        assert f"\n{heading}\n" in README
    assert (ROOT / "docs" / "layouts.png").is_file()


def test_numpy_example_runs():
    exec(compile(PYTHON_BLOCKS[0], "README.md (NumPy example)", "exec"), {})


@pytest.mark.gpu
def test_cupy_example_runs():
    namespace: dict = {}
    exec(compile(PYTHON_BLOCKS[0], "README.md (NumPy example)", "exec"), namespace)
    exec(compile(PYTHON_BLOCKS[1], "README.md (CuPy example)", "exec"), namespace)
    assert namespace["yg"].shape == (100, namespace["bsmm"].M)
