"""Plugins that attack the harness, run through ``attnbench run``: each ends in its own deserved record,
and the honest implementations beside them get the records they get alone."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnbench.case import Case
from attnbench.implementation import Implementation
from attnbench.impls.eager import build as eager_build
from attnbench.measure.correctness import make_inputs
from attnbench.measurement import Request, make_step, measure
from attnbench.runner import WorkerProcess, call_or_failure

FIXTURES = Path(__file__).parent / "fixture_plugins"
HONEST = ["eager", "sdpa", "chunked"]
SUITE = """\
name: hostile
implementations:
  include: [{include}]
defaults: {{batch: 1, heads_q: 2, head_dim: 16}}
matrix:
  seq: [32, 48]
timing: {{warmup: 1, min_time_s: 0.01, repeats: 3}}
"""


def _run(tmp_path: Path, name: str, include: list[str], **env: str) -> dict[tuple[str, int], dict]:
    suite = tmp_path / f"{name}.yaml"
    suite.write_text(SUITE.format(include=", ".join(include)))
    out = tmp_path / name
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FIXTURES), os.environ.get("PYTHONPATH", "")]),
               "ATTNBENCH_PLUGIN_MODULES": "hostile_harness", **env}
    proc = subprocess.run([sys.executable, "-m", "attnbench", "run", str(suite), "--output", str(out), "--quiet"],
                          env=environ, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "internal error" not in proc.stderr
    data = json.loads((out / "results.json").read_text())
    return {(r["impl"], r["case"]["seq_q"]): r for r in data["records"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    pidfile = tmp / "orphans.txt"
    attacked = _run(tmp, "attacked", ["hostile.*", "probe.*", *HONEST], HOSTILE_ORPHAN_PIDFILE=str(pidfile))
    alone = _run(tmp, "alone", HONEST)
    return attacked, alone, pidfile


def _status(records: dict, impl: str) -> set[str]:
    return {r["status"] for (name, _), r in records.items() if name == impl}


def _reasons(records: dict, impl: str) -> str:
    return " | ".join(r["reason"] for (name, _), r in records.items() if name == impl)


def test_honest_records_beside_the_attackers_equal_their_records_alone(runs):
    attacked, alone, _ = runs
    for key, record in alone.items():
        assert attacked[key]["status"] == record["status"] == "ok", (key, attacked[key]["reason"])
        assert attacked[key]["metrics"]["timing_input_sets"] >= 2
        assert "torch_state_changed" not in attacked[key]["metrics"]


def test_a_forged_or_garbage_reply_is_that_pair_crashed(runs):
    attacked, _, _ = runs
    for impl in ("hostile.forger", "hostile.garbage"):
        assert _status(attacked, impl) == {"crashed"}, _reasons(attacked, impl)
        assert "worker protocol violated" in _reasons(attacked, impl)


def test_torch_state_changes_are_undone_and_noted(runs):
    attacked, _, _ = runs
    (state,) = [r for (name, seq), r in attacked.items() if name == "hostile.state" and seq == 32]
    assert state["status"] == "ok", state["reason"]
    changed = " ".join(state["metrics"]["torch_state_changed"])
    for knob in ("torch.get_num_threads()", "torch.get_default_dtype()", "torch.are_deterministic_algorithms_enabled()",
                 "torch.get_float32_matmul_precision()"):
        assert knob in changed
    # The next pair in the same worker finds the state as it was.
    probe = _reasons(attacked, "probe.state")
    assert "dtype=torch.float32" in probe and "deterministic=False" in probe and "threads=1 " not in probe


def test_a_crash_leaving_a_forked_child_is_crashed_and_the_child_is_killed(runs):
    attacked, _, pidfile = runs
    assert _status(attacked, "hostile.orphan") == {"crashed"}, _reasons(attacked, "hostile.orphan")
    assert "exited with status 3" in _reasons(attacked, "hostile.orphan")
    children = [int(p) for p in pidfile.read_text().split()]
    assert children
    for pid in children:
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or "zombie" in status.read_text()


def test_output_caches_and_late_garbage_are_incorrect(runs):
    attacked, _, _ = runs
    assert _status(attacked, "hostile.cache") == {"incorrect"}
    assert "output cache" in _reasons(attacked, "hostile.cache")
    assert _status(attacked, "hostile.goes_bad") == {"incorrect"}
    assert "after " in _reasons(attacked, "hostile.goes_bad")


def test_a_patched_timer_is_an_error(runs):
    attacked, _, _ = runs
    assert _status(attacked, "hostile.timer") == {"error"}
    assert "timer patched: time.perf_counter" in _reasons(attacked, "hostile.timer")


def test_state_changed_at_import_is_undone_before_the_first_pair(tmp_path):
    records = _run(tmp_path, "import", ["probe.*", "eager"], HOSTILE_AT_IMPORT="1")
    probe = _reasons(records, "probe.state")
    assert "threads=1 " not in probe and "perf_counter=time" in probe
    assert _status(records, "eager") == {"ok"}


def test_a_dead_worker_is_noticed_while_its_child_holds_the_pipe(fixture_plugins, tmp_path):
    pidfile = tmp_path / "pids"
    env = {**fixture_plugins("hostile_harness"), "HOSTILE_ORPHAN_PIDFILE": str(pidfile)}
    worker = WorkerProcess(0, env)
    request = Request(impl="hostile.orphan", case=Case(1, 2, 2, 32, 32, 16), seed=0, check_correctness=True,
                      measure_memory=False, measure_time=False).to_json()
    try:
        worker.ensure_started()
        start = time.monotonic()
        reply = call_or_failure(worker, request, timeout_s=60)
        assert time.monotonic() - start < 5
        assert reply["status"] == "crashed" and "status 3" in reply["reason"]
    finally:
        worker.kill()
    (child,) = map(int, pidfile.read_text().split())
    time.sleep(0.2)
    assert not Path(f"/proc/{child}").exists() or "zombie" in Path(f"/proc/{child}/status").read_text()


def test_rotation_covers_two_sets_and_a_late_check_reads_the_last_outputs():
    case = Case(1, 2, 2, 32, 32, 16)
    impl = Implementation("eager", eager_build)
    step = make_step(eager_build(case), impl, case, [make_inputs(case, 1), make_inputs(case, 2)])
    for _ in range(5):
        step()
    assert step.calls == 5 and all(last is not None for last in step.last) and step.reused_at is None
    reply = measure(impl, Request(impl="eager", case=case, seed=0, check_correctness=True, measure_memory=False,
                                  measure_time=True, trials=[2]))
    assert reply["status"] == "ok" and reply["metrics"]["timing_input_sets"] == 2
