"""The code base stays ruff-clean (the project's lint config lives in pyproject.toml)."""

import shutil
import subprocess
import sys

import pytest


def test_ruff_clean(repo_root):
    if shutil.which("ruff") is None:
        pytest.skip("ruff not installed (pip install -e '.[test]')")
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "augdiff", "tests", "benchmarks", "tools"],
        capture_output=True, text=True, cwd=repo_root,
    )
    assert out.returncode == 0, out.stdout + out.stderr
