"""A user's install: a fresh venv, ``pip install`` of attnbench and the example plugin, both found by the CLI."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "plugins" / "attnbench-example"
# Copied, not built in place: a setuptools build leaves build/ and *.egg-info in its source folder.
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", ".tox", "__pycache__", "*.egg-info", "build", "dist", ".pytest_cache", ".ruff_cache", "plugins", "reports"
)


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, args))} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_pip_installed_attnbench_lists_the_pip_installed_example_plugin(tmp_path):
    if importlib.util.find_spec("venv") is None or importlib.util.find_spec("ensurepip") is None:
        pytest.skip("python -m venv is unavailable here (no venv/ensurepip module)")
    sources = tmp_path / "sources"
    shutil.copytree(REPO, sources / "attnbench", ignore=COPY_IGNORE)
    shutil.copytree(EXAMPLE, sources / "attnbench-example", ignore=COPY_IGNORE)
    # Nothing from this test run may leak in: no PYTHONPATH, no plugin selection, not this venv.
    # Bytecode may be written: the install skips precompiling (--no-compile, half its time), and
    # the first command then compiles only what it imports, for the later ones to reuse.
    leave_out = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if k not in leave_out and not k.startswith("ATTNBENCH_")}
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, env=env)
    bin_dir = venv / "bin"

    # A real install with dependency resolution and build isolation, as a user runs it. torch is
    # pinned to the build this interpreter runs (on the project's machines the CPU wheel on local
    # disk, about 20 s); left unpinned, pip would fetch the multi-GB CUDA build from PyPI.
    run(bin_dir / "python", "-m", "pip", "install", "-q", "--no-compile", f"torch=={torch.__version__}",
        sources / "attnbench", sources / "attnbench-example", env=env, cwd=tmp_path)

    where = run(bin_dir / "python", "-c",
                "import attnbench, attnbench_example, importlib.resources as r; "
                "print(attnbench.__file__); print(attnbench_example.__file__); "
                "print(r.files('attnbench').joinpath('py.typed').is_file())", env=env, cwd=tmp_path).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where[:2]), f"not imported from the fresh venv: {where}"
    assert where[2] == "True", "package data (py.typed) missing from the installed attnbench"

    listed = json.loads(run(bin_dir / "attnbench", "list", "--json", env=env, cwd=tmp_path).stdout)
    caps = {c["name"]: c for c in listed}
    assert {"reference", "eager", "sdpa", "flex", "chunked"} <= set(caps)
    assert (caps["example.naive"]["plugin"], caps["example.naive"]["version"]) == ("example", "0.1.0")

    plugins = json.loads(run(bin_dir / "attnbench", "plugins", "--json", env=env, cwd=tmp_path).stdout)
    example = [p for p in plugins if p["name"] == "example"]
    assert len(example) == 1, plugins
    assert example[0] == {
        "name": "example", "distribution": "attnbench-example", "version": "0.1.0", "builtin": False,
        "implementations": ["example.naive"], "errors": [], "ok": True,
    }
    assert all(p["ok"] for p in plugins), [p for p in plugins if not p["ok"]]
