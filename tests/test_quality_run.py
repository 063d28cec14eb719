"""Quality tasks in a run: each seed trained in an isolated worker, one record per task x implementation."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
import textwrap

import pytest

from attnbench.options import Timing
from attnbench.plugins import load_registry
from attnbench.quality import preset
from attnbench.quality.runner import plan_tasks, record_case, run_tasks
from attnbench.report.html import PAGE_NAME
from attnbench.runner import RunOptions

pytestmark = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None,
                                reason="scikit-learn not installed (the quality extra)")


@pytest.fixture
def training_env(fixture_plugins):
    return fixture_plugins("training")


def test_each_failure_is_its_own_record_and_the_rest_go_on(training_env):
    registry = load_registry()
    impls = [registry.get(name) for name in ("train.aborts", "train.hangs", "train.raises", "int8", "eager")]
    config = dataclasses.replace(preset("compare", "cpu", "tiny"), steps=3, eval_size=32, threads=1)
    options = RunOptions(timing=Timing(warmup=1), timeout_s=5.0, device_name="test CPU")
    todo, settled = plan_tasks([config], impls, options)
    assert [r.impl for r in settled] == ["int8"] and settled[0].status == "unsupported"
    assert settled[0].reason == "backward not supported"
    assert [p.impl.name for p in todo] == ["eager", "train.aborts", "train.hangs", "train.raises"]

    records = {r.impl: r for r in run_tasks(todo, options, env=training_env)}
    assert records["train.aborts"].status == "crashed" and "SIGABRT" in records["train.aborts"].reason
    assert records["train.hangs"].status == "timeout" and records["train.hangs"].reason.startswith("seed 0:")
    assert records["train.raises"].status == "error"
    assert "ValueError: kernel launch parameters out of range" in records["train.raises"].reason
    # A failed seed stops the record: no mean over the seeds that happened to survive.
    assert "accuracy_mean" not in records["train.raises"].metrics
    eager = records["eager"]
    assert eager.status == "ok" and eager.case == record_case(config) and eager.hardware == "test CPU"
    assert [s["seed"] for s in eager.metrics["per_seed"]] == [0, 1, 2] == eager.metrics["seeds"]
    assert eager.metrics["accuracy_min"] <= eager.metrics["accuracy_mean"] <= eager.metrics["accuracy_max"]
    assert eager.metrics["agrees_with_eager"] is None and eager.metrics["kernel_rel_err"] < 1e-5
    # One worker served every seed of eager; the crash and the timeout each cost a fresh one.
    assert len(set(eager.where["pids"])) == 1
    assert eager.where["pids"][0] not in records["train.raises"].where["pids"]


TINY_SUITE = """\
    name: tiny-quality
    description: eager learns the compare task; a broken backward pass must show.
    implementations:
      include: [eager, sdpa, performer.m64, int8, train.detached]
    tasks:
      names: compare
      size: tiny
"""


@pytest.mark.slow
def test_a_tiny_quality_suite_end_to_end(tmp_path, training_env):
    """attnbench run on a tasks-only suite: records, verdicts, the page's quality section, the closing table."""
    suite = tmp_path / "tiny.yaml"
    suite.write_text(textwrap.dedent(TINY_SUITE))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "attnbench", "run", str(suite), "--output", str(out)],
                          env=training_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    records = {r["impl"]: r for r in json.loads((out / "results.json").read_text())["records"]}
    assert list(records)[0] == "eager" and len(records) == 5
    eager, sdpa, detached = records["eager"], records["sdpa"], records["train.detached"]
    assert eager["status"] == "ok", eager["reason"]
    assert eager["metrics"]["accuracy_mean"] >= eager["metrics"]["chance_accuracy_mean"] + 0.3
    assert sdpa["status"] == "ok" and sdpa["metrics"]["agrees_with_eager"] is True
    assert detached["status"] == "incorrect" and "disagrees with eager" in detached["reason"]
    assert detached["metrics"]["agrees_with_eager"] is False
    assert records["int8"]["status"] == "unsupported" and records["int8"]["reason"] == "backward not supported"
    performer = records["performer.m64"]
    assert performer["status"] == "ok" and performer["exact"] is False and performer["metrics"]["kernel_rel_err"] > 1e-3
    for record in (eager, sdpa, detached, performer):
        assert len(record["metrics"]["per_seed"]) == 3
        for figure in ("accuracy", "precision", "recall", "f1", "roc_auc", "step_ms_median", "peak_bytes"):
            assert record["metrics"][f"{figure}_mean"] >= 0 and record["metrics"][f"{figure}_std"] >= 0
    assert "compare · " in done.stdout and "DISAGREES" in done.stdout and "agrees" in done.stdout
    page = (out / PAGE_NAME).read_text()
    assert 'id="quality"' in page and "compare: accuracy vs time per training step" in page


def test_tasks_train_on_this_machine_only(tmp_path, capsys):
    from attnbench.cli import main

    pytest.importorskip("submitit", reason="a missing attnbench[slurm] is refused before the suite is read")
    suite = tmp_path / "tasks.yaml"
    suite.write_text("name: t\ntasks: {names: compare}\n")
    assert main(["run", str(suite), "--executor", "slurm", "--output", str(tmp_path / "out")]) == 1
    assert "quality tasks train on this machine only" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
