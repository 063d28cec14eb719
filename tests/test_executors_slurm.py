"""The Slurm executor through submitit's local cluster: real job processes, each measuring on this machine.

What only a real Slurm cluster shows (gres scheduling, preemption signals,
requeue, several nodes) is in docs/executors.md.
"""

import json
import os
import signal
import time
from pathlib import Path

import pytest

pytest.importorskip("submitit", reason="the Slurm executor needs submitit: pip install 'attnbench[slurm]'")

from attnbench.case import Case  # noqa: E402
from attnbench.executors.slurm import SlurmExecutor, status_for_job_state, timed_out  # noqa: E402
from attnbench.options import Correctness, Timing
from attnbench.plugins import load_registry  # noqa: E402
from attnbench.runner import RunOptions, plan  # noqa: E402


@pytest.fixture
def registry(fixture_plugins):
    # submitit's local jobs inherit this environment, and their workers with it.
    fixture_plugins("misbehaving")
    return load_registry()


def local_slurm(options, folder, **kwargs):
    return SlurmExecutor(options, folder, device="cpu", cluster="local", poll_s=0.3, result_grace_s=1, **kwargs)


@pytest.mark.slow  # each job is a process that starts worker processes
def test_jobs_stream_records_and_a_crash_stays_a_record(registry, tmp_path):
    options = RunOptions(correctness=Correctness(seeds=3), timing=Timing(processes=1, min_time_s=0.05, repeats=3, warmup=1), timeout_s=60)
    cases = [Case(1, 2, 2, 32, 32, 16), Case(1, 2, 2, 48, 48, 16)]
    todo, _ = plan(cases, registry.select(include=["eager", "bad.abort"]), options)
    with local_slurm(options, tmp_path) as executor:
        records = list(executor.submit(todo))
    assert sorted((r.case["seq_q"], r.impl, r.status) for r in records) == [
        (32, "bad.abort", "crashed"), (32, "eager", "ok"), (48, "bad.abort", "crashed"), (48, "eager", "ok")]
    assert "SIGABRT" in next(r for r in records if r.impl == "bad.abort").reason
    jobs = {r.where["job"]["id"] for r in records}
    assert len(jobs) == 2  # a job per case
    for r in records:
        assert r.where["executor"] == "slurm" and r.where["attempt"] == 1 and r.where["node"]
        assert r.where["environment"]["torch"]


def _measuring_job_pid(folder: Path, timeout_s: float = 60) -> int:
    """The job's process, once it has a worker process measuring."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for started in (folder / "records").glob("*.started"):
            pid = json.loads(started.read_text())["job"]["pid"]
            if Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
                time.sleep(3)  # the worker loads torch, then eager is measured and bad.hang begins
                return pid
        time.sleep(0.1)
    raise AssertionError("the job never started measuring")


@pytest.mark.slow
@pytest.mark.parametrize("sent, status", [(signal.SIGKILL, "crashed"), (signal.SIGTERM, "preempted")],
                         ids=["killed", "preempted"])
def test_a_job_killed_or_preempted_still_yields_every_record(registry, tmp_path, sent, status):
    options = RunOptions(correctness=Correctness(seeds=3), timing=Timing(processes=1, min_time_s=0.05, repeats=3, warmup=1), timeout_s=90)
    todo, _ = plan([Case(1, 2, 2, 32, 32, 16)], registry.select(include=["eager", "bad.hang"]), options)

    signalled = []

    def signal_the_job(pair):  # called for each pair of the job as it starts: signal it once
        if not signalled:
            os.kill(_measuring_job_pid(tmp_path), sent)
            signalled.append(sent)

    start = time.monotonic()
    with local_slurm(options, tmp_path) as executor:
        records = list(executor.submit(todo, on_start=signal_the_job))
    assert time.monotonic() - start < 60  # bad.hang would hold the job for 90 s
    assert sorted(r.impl for r in records) == ["bad.hang", "eager"]
    assert {r.status for r in records} == {status}, [r.reason for r in records]
    if sent == signal.SIGKILL:
        assert "ended without a result" in records[0].reason
    else:
        assert "SIGTERM" in records[0].reason and "--resume" in records[0].reason


@pytest.mark.parametrize("state, status", [("PREEMPTED", "preempted"), ("TIMEOUT", "timeout"),
                                           ("NODE_FAIL", "node_lost"), ("OUT_OF_MEMORY", "oom"),
                                           ("CANCELLED by 1000", "crashed"), ("FAILED", "crashed"),
                                           ("INTERRUPTED", "crashed")])
def test_job_states_name_the_missing_pairs_status(state, status):
    assert status_for_job_state(state) == status


def test_a_signal_near_the_time_limit_is_a_timeout():
    assert timed_out(elapsed_s=55 * 60, limit_s=60 * 60)
    assert not timed_out(elapsed_s=20 * 60, limit_s=60 * 60)
    assert timed_out(elapsed_s=9 * 60, limit_s=10 * 60)
