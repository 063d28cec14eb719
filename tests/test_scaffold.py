"""``scaffold_plugin``: the package it writes is valid, correct, ruff clean, and passes the kit once pip-installed."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from test_fresh_install import COPY_IGNORE, REPO, run

from attnbench.case import Case
from attnbench.errors import UserError
from attnbench.plugins import load_registry
from attnbench.scaffold import scaffold_plugin
from attnbench.worker import Request, measure


@pytest.mark.parametrize("name", ["", "MyLib", "1lib", "my-lib", "my.lib", "my lib", "_lib", "lib/x"])
def test_invalid_names_are_refused_with_the_rule(tmp_path, name):
    with pytest.raises(UserError, match="lower-case Python identifier"):
        scaffold_plugin(name, tmp_path)
    assert not any(tmp_path.iterdir())


def test_existing_directory_is_refused_and_left_alone(tmp_path):
    (tmp_path / "attnbench-mylib").mkdir()
    (tmp_path / "attnbench-mylib" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists"):
        scaffold_plugin("mylib", tmp_path)
    assert [p.name for p in (tmp_path / "attnbench-mylib").iterdir()] == ["keep.txt"]


def test_layout_and_pyproject(tmp_path):
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = scaffold_plugin("my_lib2", tmp_path / "new" / "dir")
    assert root == tmp_path / "new" / "dir" / "attnbench-my_lib2"
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == ["README.md", "pyproject.toml", "src/attnbench_my_lib2/__init__.py", "tests/conftest.py",
                     "tests/test_conformance.py"]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["name"] == "attnbench-my_lib2"
    assert project["dependencies"] == ["attnbench"]
    assert project["entry-points"]["attnbench"] == {"my_lib2": "attnbench_my_lib2"}
    assert "my_lib2.attention" in (root / "README.md").read_text()


def test_scaffolded_files_are_ruff_clean(tmp_path):
    root = scaffold_plugin("clean", tmp_path)
    # The project's own rule selection, without its config file (the package is a project of its own).
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--isolated", "--no-cache", "--select",
                           "E,F,W,I,B,UP", "--target-version", "py310", "--line-length", "120", str(root)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


CASES = [
    Case(2, 8, 2, 48, 80, 32, mask="causal"),  # GQA, fewer queries than keys: bottom-right alignment
    Case(1, 4, 4, 64, 64, 64, dtype="bfloat16", mask="sliding_window", window=16, pass_="fwd+bwd"),
    Case(2, 4, 1, 1, 96, 32, dtype="float16", mask="causal"),  # MQA decoding
]


def test_scaffolded_implementation_is_declared_truthfully_and_correct(tmp_path, monkeypatch):
    root = scaffold_plugin("scaffoldcheck", tmp_path)
    monkeypatch.syspath_prepend(str(root / "src"))
    registry = load_registry(environ={"ATTNBENCH_PLUGINS": "", "ATTNBENCH_PLUGIN_MODULES": "attnbench_scaffoldcheck"})
    assert not registry.failures, [(p.name, p.errors) for p in registry.failures]
    impl = registry.get("scaffoldcheck.attention")
    assert (impl.exact, impl.gqa, impl.cross, impl.backward) == (True, True, True, True)
    assert impl.masks == {"none", "causal", "sliding_window"}
    for case in CASES:
        assert impl.declines(case) is None
        reply = measure(impl, Request(impl=impl.name, case=case, seed=0, check_correctness=True, measure_memory=False, measure_time=False))
        assert reply["status"] == "ok", (case.label(), reply["reason"])
    block_sparse = Case(1, 2, 2, 32, 32, 16, mask="block_sparse", block=8)
    assert "mask block_sparse" in impl.declines(block_sparse)


@pytest.mark.slow
def test_pip_installed_scaffold_is_listed_and_passes_the_conformance_kit(tmp_path):
    if importlib.util.find_spec("venv") is None or importlib.util.find_spec("ensurepip") is None:
        pytest.skip("python -m venv is unavailable here (no venv/ensurepip module)")
    # As tests/test_fresh_install.py: copies of the sources, a clean environment, a real pip install.
    attnbench_src = tmp_path / "sources" / "attnbench"
    shutil.copytree(REPO, attnbench_src, ignore=COPY_IGNORE)
    plugin = scaffold_plugin("mykernel", tmp_path / "sources")
    leave_out = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if k not in leave_out and not k.startswith("ATTNBENCH_")}
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, env=env)
    bin_dir = venv / "bin"
    # The plugin's test extra (attnbench[pytest]) brings pytest and pytest-benchmark, as for its author.
    run(bin_dir / "python", "-m", "pip", "install", "-q", "--no-compile", f"torch=={torch.__version__}",
        attnbench_src, f"{plugin}[test]", env=env, cwd=tmp_path)

    listed = {c["name"]: c for c in json.loads(run(bin_dir / "attnbench", "list", "--json", env=env, cwd=tmp_path).stdout)}
    assert listed["mykernel.attention"]["plugin"] == "mykernel"
    assert listed["mykernel.attention"]["version"] == "0.1.0"

    proc = run(bin_dir / "pytest", "--attnbench-impl", "mykernel.attention", "-k", "float32", "-q", "-rA",
               "--benchmark-disable", "-p", "no:cacheprovider", env=env, cwd=plugin)
    summary = proc.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, proc.stdout[-3000:]
    # The kit's tests ran (from the installed attnbench), and so did the package's own test on its fixtures.
    assert "::test_conformance[mykernel.attention-" in proc.stdout
    assert "::test_repeated_calls_give_identical_results[mykernel.attention-" in proc.stdout
