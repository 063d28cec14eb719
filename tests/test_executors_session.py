"""A run through the executor seam: resume re-measures what the fleet lost, the suite's hardware section reaching
the fleet executors, and `attnbench run --executor ray` end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attnbench.case import Case
from attnbench.cli import build_parser
from attnbench.executors import open_executor
from attnbench.options import Timing
from attnbench.plugins import load_registry
from attnbench.results import Journal, Record
from attnbench.run_command import build_spec
from attnbench.runner import RunOptions
from attnbench.session import JOURNAL_NAME, RunSpec, run

SUITE = """\
name: fleet-test
implementations:
  include: [eager, sdpa]
defaults: {batch: 1, heads_q: 2, head_dim: 16}
matrix:
  seq: [32]
timing: {warmup: 1, min_time_s: 0.01, repeats: 3, processes: 2}
"""


def test_resume_measures_again_only_what_the_fleet_lost(tmp_path):
    registry = load_registry()
    spec = RunSpec(suite_name="t", suite_path="t.yaml", suite_hash="0", device="cpu",
                   cases=[Case(1, 2, 2, 32, 32, 16)], impls=registry.select(include=["eager", "sdpa"]),
                   options=RunOptions(timing=Timing(processes=1, min_time_s=0.01, repeats=3, warmup=1)), baseline="sdpa")
    run(spec, tmp_path)
    journal = tmp_path / JOURNAL_NAME
    eager, sdpa = sorted(Journal.read(journal), key=lambda r: r.impl)
    # As if the fleet had lost eager's node: the journal's last word on eager is node_lost.
    lost = Record.from_dict(eager.to_dict() | {"status": "node_lost", "reason": "node went away", "metrics": {}})
    with journal.open("a") as f:
        f.write(json.dumps(lost.to_dict()) + "\n")

    info, records, _ = run(spec, tmp_path, resume=True)
    assert info["resumed_records"] == 1  # sdpa stands; eager is measured again
    assert sorted((r.impl, r.status) for r in records) == [("eager", "ok"), ("sdpa", "ok")]
    assert sdpa.where["pids"] == next(r for r in records if r.impl == "sdpa").where["pids"]

    info, records, _ = run(spec, tmp_path, resume=True)  # the newest journal line counts: nothing left to do
    assert info["resumed_records"] == 2 and len(records) == 2


def test_the_suites_hardware_reaches_the_fleet_executor_and_flags_win(tmp_path):
    pytest.importorskip("ray", reason="the Ray executor needs ray: pip install 'attnbench[ray]'")
    pytest.importorskip("submitit", reason="the Slurm executor needs submitit: pip install 'attnbench[slurm]'")
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE + "hardware: {gpu_type: H100, gpus_per_job: 2, partition: gpu}\n")

    def spec(*flags):
        return build_spec(build_parser().parse_args(["run", str(suite), "--output", str(tmp_path / "out"), *flags]))[0]

    ray = spec("--executor", "ray")
    assert ray.device == "cuda" and ray.executor.ray_accelerator_type == "H100"  # a GPU type: auto means cuda
    assert spec("--executor", "ray", "--ray-accelerator-type", "A100").executor.ray_accelerator_type == "A100"
    slurm = spec("--executor", "slurm")
    executor = open_executor(slurm.executor, slurm.options, device=slurm.device, run_dir=tmp_path)
    assert (executor.constraint, executor.partition, executor.gres, executor.gpus_per_job) == ("H100", "gpu", None, 2)
    flagged = spec("--executor", "slurm", "--slurm-gres", "gpu:a100:1", "--slurm-constraint", "a100").executor
    assert (flagged.slurm_constraint, flagged.slurm_partition, flagged.slurm_gres, flagged.slurm_gpus_per_job) == (
        "a100", "gpu", "gpu:a100:1", None)
    assert spec().executor.to_dict() == {"kind": "local"}  # a local run measures on this machine as it is


@pytest.mark.slow
def test_run_command_with_the_ray_executor(tmp_path):
    pytest.importorskip("ray", reason="the Ray executor needs ray: pip install 'attnbench[ray]'")
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    out = tmp_path / "run"
    # No --ray-address and no RAY_ADDRESS: the run starts a Ray of its own on this machine.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-m", "attnbench", "run", str(suite), "--executor", "ray", "--device", "cpu",
                           "--processes", "1", "--output", str(out), "--quiet"], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(Path(out / "results.json").read_text())
    assert data["run"]["executor"] == {"kind": "ray"}
    assert len(data["records"]) == 2 and {r["status"] for r in data["records"]} == {"ok"}
    for record in data["records"]:
        assert record["where"]["executor"] == "ray" and record["where"]["job"]["node_id"]
        assert record["hardware"] and record["hardware"] in data["run"]["hardware"]
