"""The Ray executor against a real local Ray cluster: a task per case, placement on two fake GPUs, every failure a record.

One cluster for the module (Ray takes seconds to start): a head node with 2
CPUs and 2 fake H100s. Ray sets CUDA_VISIBLE_DEVICES per task from the fake
GPUs, so the CPU cases here request a GPU each and placement is real.
"""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a Ray cluster for the module, tasks start worker processes
ray = pytest.importorskip("ray", reason="the Ray executor needs ray: pip install 'attnbench[ray]'")
from ray.cluster_utils import Cluster  # noqa: E402

from attnbench.case import Case  # noqa: E402
from attnbench.executors.ray import RayExecutor  # noqa: E402
from attnbench.options import Correctness, Timing  # noqa: E402
from attnbench.plugins import load_registry  # noqa: E402
from attnbench.results import Record  # noqa: E402
from attnbench.runner import RunOptions, plan  # noqa: E402

FIXTURES = Path(__file__).parent / "fixture_plugins"
WORKER_ENV = {"PYTHONPATH": os.pathsep.join([str(FIXTURES), os.environ.get("PYTHONPATH", "")]),
              "ATTNBENCH_PLUGIN_MODULES": "fleet,misbehaving"}
FAST = RunOptions(correctness=Correctness(seeds=3), timing=Timing(processes=1, min_time_s=0.05, repeats=3, warmup=1), timeout_s=60)
CASE = Case(1, 2, 2, 32, 32, 16)


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "num_gpus": 2, "resources": {"accelerator_type:H100": 2}, "object_store_memory": 80 * 2**20})
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def registry():
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(FIXTURES))
        mp.setenv("ATTNBENCH_PLUGIN_MODULES", WORKER_ENV["ATTNBENCH_PLUGIN_MODULES"])
        return load_registry()


def pairs(registry, impls, cases=(CASE,), options=FAST):
    todo, settled = plan(list(cases), registry.select(include=impls), options)
    assert not settled
    return todo


def test_two_pairs_run_at_once_on_distinct_gpus(cluster, registry):
    options = RunOptions(correctness=Correctness(seeds=3), timing=Timing(processes=1, min_time_s=2.0, repeats=3, warmup=1))
    todo = pairs(registry, ["fleet.sleepy"], [Case(1, 2, 2, s, s, 16) for s in (32, 48)], options)
    with RayExecutor(options, accelerator_type="H100", num_gpus=1, env=WORKER_ENV) as executor:
        a, b = executor.submit(todo)
    for r in (a, b):
        assert r.status == "ok", r.reason
        assert r.where["executor"] == "ray" and r.where["attempt"] == 1 and r.where["node"]
        assert r.where["job"]["gpu_ids"] == [r.where["cuda_visible_devices"]]
    assert {a.where["cuda_visible_devices"], b.where["cuda_visible_devices"]} == {"0", "1"}
    assert a.where["started"] < b.where["finished"] and b.where["started"] < a.where["finished"]


def test_failures_end_in_their_status(cluster, registry):
    other = Case(1, 2, 2, 48, 48, 16)
    todo = pairs(registry, ["bad.abort", "bad.raises", "eager"]) + pairs(registry, ["eager", "fleet.kills_task"], [other])
    with RayExecutor(FAST, num_gpus=1, env=WORKER_ENV) as executor:
        records = {(r.impl, r.case["seq_q"]): r for r in executor.submit(todo)}
    assert {key: r.status for key, r in records.items()} == {
        ("bad.abort", 32): "crashed", ("bad.raises", 32): "error", ("eager", 32): "ok",
        ("eager", 48): "crashed", ("fleet.kills_task", 48): "crashed"}
    assert "SIGABRT" in records["bad.abort", 32].reason  # the worker subprocess died; the task reported it
    # The task's own process died: the pairs of its case it had not returned, eager's included, say so.
    assert all("WorkerCrashedError" in records[impl, 48].reason for impl in ("eager", "fleet.kills_task"))


def test_a_case_is_one_task_and_its_pairs_stream_back_one_by_one(cluster, registry):
    options = RunOptions(correctness=Correctness(seeds=3), timing=Timing(processes=1, min_time_s=1.0, repeats=3, warmup=1))
    todo = pairs(registry, ["fleet.sleepy", "fleet.sleepy_b"], options=options)
    started = []
    with RayExecutor(options, num_gpus=1, env=WORKER_ENV) as executor:
        records = list(executor.submit(todo, on_start=lambda pair: started.append((pair, time.time()))))
    assert [r.status for r in records] == ["ok", "ok"], [r.reason for r in records]
    assert len({r.where["job"]["task_id"] for r in records}) == 1
    assert len({r.where["cuda_visible_devices"] for r in records}) == 1  # the case's implementations share a card
    # Each pair's start reaches the driver as it happens: the second once the first is timed, not with the task.
    assert [pair for pair, _ in started] == todo
    first = next(r for r in records if r.impl == todo[0].impl.name)
    assert started[1][1] >= first.where["finished"] - 0.5


def test_an_accelerator_no_node_has_is_infeasible_at_once(cluster, registry):
    start = time.monotonic()
    with RayExecutor(FAST, accelerator_type="B200", num_gpus=1, env=WORKER_ENV) as executor:
        records = list(executor.submit(pairs(registry, ["eager", "fleet.sleepy"])))
    assert sorted(r.impl for r in records) == ["eager", "fleet.sleepy"]
    for record in records:
        assert record.status == "infeasible" and "accelerator_type:B200" in record.reason
        assert "accelerator_type:H100=2" in record.reason
    assert time.monotonic() - start < 5


def test_a_task_past_its_pairs_budgets_is_cancelled_as_timeout(cluster, registry):
    options = RunOptions(correctness=Correctness(seeds=3), timing=Timing(processes=1, min_time_s=0.05, repeats=3, warmup=1), timeout_s=600)
    todo = pairs(registry, ["bad.hang", "eager"], options=options)
    start = time.monotonic()
    with RayExecutor(options, num_gpus=1, env=WORKER_ENV, pair_timeout_s=2) as executor:
        records = list(executor.submit(todo))
    # Two pairs of 2 s each: the task had 4 s, and neither pair is left without a record.
    assert sorted(r.impl for r in records) == ["bad.hang", "eager"]
    for record in records:
        assert record.status == "timeout" and "ray.cancel" in record.reason and "4 s (2 pairs)" in record.reason
    assert time.monotonic() - start >= 4


def test_a_removed_node_loses_its_pair_and_strands_the_queued_one(cluster, registry):
    doomed = cluster.add_node(num_cpus=1, num_gpus=1, resources={"accelerator_type:L4": 1},
                              object_store_memory=80 * 2**20)
    cluster.wait_for_nodes()
    options = RunOptions(correctness=Correctness(seeds=3), timing=Timing(processes=1, min_time_s=0.05, repeats=3, warmup=1), timeout_s=600)
    # Two cases, so two tasks.
    todo = pairs(registry, ["bad.hang"], options=options) + pairs(registry, ["fleet.sleepy"], [Case(1, 2, 2, 48, 48, 16)],
                                                                  options)

    def remove_the_node(pair):
        cluster.remove_node(doomed)

    # One L4 GPU: bad.hang's task runs, fleet.sleepy's waits for it; then the node goes.
    with RayExecutor(options, accelerator_type="L4", num_gpus=1, env=WORKER_ENV, recheck_s=1) as executor:
        records = {r.impl: r for r in executor.submit(todo, on_start=remove_the_node)}
    running, queued = records[todo[0].impl.name], records[todo[1].impl.name]
    assert running.status == "node_lost" and "NodeDiedError" in running.reason
    assert running.where["job"]["node_id"] == doomed.node_id
    assert queued.status == "infeasible" and "accelerator_type:L4" in queued.reason


def tasks_in_order(records):
    """Each task's records (by task id), tasks in the order they started."""
    tasks = {}
    for r in sorted(records, key=lambda r: r.where["started"]):
        tasks.setdefault(r.where["job"]["task_id"], []).append(r)
    return list(tasks.values())


def successive_on_one_process(tasks):
    """(earlier, later) tasks that ran one after the other in the same Ray worker process."""
    last, successive = {}, []
    for task in tasks:
        process = task[0].where["job"]["worker_id"]
        if process in last:
            successive.append((last[process], task))
        last[process] = task
    return successive


def test_a_lane_keeps_its_workers_from_case_to_case(cluster, registry):
    options = RunOptions(correctness=Correctness(seeds=3), timing=Timing(processes=2, min_time_s=0.05, repeats=3, warmup=1), timeout_s=60)
    todo = pairs(registry, ["eager"], [Case(1, 2, 2, s, s, 16) for s in (32, 48, 64, 80)], options)
    # Two GPUs per task: one task at a time, each pinned to "0,1", so every task could take the last one's workers.
    with RayExecutor(options, num_gpus=2, env=WORKER_ENV) as executor:
        records = list(executor.submit(todo))
    assert [r.status for r in records] == ["ok"] * 4, [r.reason for r in records]
    successive = successive_on_one_process(tasks_in_order(records))
    assert successive, "no Ray worker process ran two of the four tasks"
    for (earlier,), (later,) in successive:
        # Both rounds' workers (processes=2): the later task's are the earlier task's, still running.
        assert later.where["pids"] == earlier.where["pids"] and len(set(later.where["pids"])) == 2


def test_a_crash_in_one_task_leaves_the_next_a_working_worker(cluster, registry):
    # bad.abort first: eager then runs on a worker the task's thread restarted, which must outlive that thread.
    crash = sorted(pairs(registry, ["bad.abort", "eager"]), key=lambda p: p.impl.name)
    todo = crash + pairs(registry, ["eager"], [Case(1, 2, 2, s, s, 16) for s in (48, 64, 80)])
    with RayExecutor(FAST, num_gpus=2, env=WORKER_ENV) as executor:
        records = list(executor.submit(todo))
    assert sorted((r.impl, r.status) for r in records) == [("bad.abort", "crashed")] + [("eager", "ok")] * 4, \
        [r.reason for r in records]
    tasks = tasks_in_order(records)
    crashed = {r.impl: r for r in tasks[0]}
    assert set(crashed) == {"bad.abort", "eager"}  # submitted first, one task at a time: the crash ran first
    after = [later for earlier, (later,) in successive_on_one_process(tasks) if earlier is tasks[0]]
    assert after, "the crashed task's Ray worker process ran none of the three tasks after it"
    assert after[0].where["pids"] == crashed["eager"].where["pids"]


def test_a_task_given_up_midway_kills_its_workers_and_the_next_gets_fresh_ones(registry):
    # _as_they_happen outside Ray: what a task process does when Ray closes its generator early.
    from attnbench.executors.ray import KEPT, _as_they_happen
    from attnbench.executors.remote import describe

    options = RunOptions(correctness=Correctness(seeds=3), timing=Timing(processes=1, min_time_s=3.0, repeats=3, warmup=1), timeout_s=60)
    described = [describe(p) for p in pairs(registry, ["fleet.sleepy"], options=options)]
    quick = RunOptions(correctness=Correctness(seeds=3), timing=Timing(processes=1, min_time_s=0.05, repeats=3, warmup=1), timeout_s=60)

    def record_of(run):
        (record,) = [Record.from_dict(e["record"]) for e in run if "record" in e]
        assert record.status == "ok", record.reason
        return record

    try:
        first = record_of(_as_they_happen(described, quick, WORKER_ENV, {}))
        (pid,) = first.where["pids"]
        given_up = _as_they_happen(described, options, WORKER_ENV, {})
        assert next(given_up) == {"started": "fleet.sleepy"}  # on the kept worker, timing for 3 s
        given_up.close()
        assert eventually_dead(pid)
        again = record_of(_as_they_happen(described, quick, WORKER_ENV, {}))
        assert again.where["pids"] != [pid]
    finally:
        KEPT.give_back([])  # kills what the last run kept


def eventually_dead(pid, within_s=10.0):
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


def test_a_task_process_never_initialises_cuda(tmp_path):
    # CUDA reads CUDA_VISIBLE_DEVICES once: a task process that asked it about one task's GPU would describe that
    # GPU for every later task. Any torch.cuda query in the task process's path trips here, even without a GPU.
    script = tmp_path / "task_body.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        import torch

        def tripwire(*args, **kwargs):
            raise AssertionError("the task process asked torch.cuda")

        for name in ("is_available", "device_count", "get_device_properties", "get_device_name", "init",
                     "_lazy_init", "current_device", "set_device", "mem_get_info"):
            setattr(torch.cuda, name, tripwire)

        from attnbench.case import Case
        from attnbench.executors.ray import KEPT, _as_they_happen
        from attnbench.executors.remote import describe
        from attnbench.implementation import Implementation
        from attnbench.options import Correctness, Timing
        from attnbench.runner import Pair, RunOptions

        def eager(case):
            raise AssertionError("built in the task process")

        options = RunOptions(correctness=Correctness(seeds=3), timing=Timing(processes=1, min_time_s=0.05, repeats=3, warmup=1), timeout_s=60)
        described = [describe(Pair(Case(1, 2, 2, 32, 32, 16, device="cuda"), Implementation("eager", eager)))]
        os.environ["CUDA_VISIBLE_DEVICES"] = "0"
        events = list(_as_they_happen(described, options, {}, {"executor": "ray"}))
        (record,) = [e["record"] for e in events if "record" in e]
        print(record["status"], record["where"]["cuda_visible_devices"], record["where"]["environment"]["torch"])
        KEPT.give_back([])
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    status, visible, torch_version = done.stdout.split()
    assert visible == "0" and torch_version  # the case reached a worker, with the task's GPU and environment
    assert status in ("ok", "error", "unsupported")  # whatever eager makes of CUDA here, the worker said it


def test_the_gpus_a_fresh_process_sees_are_those_this_one_sees():
    from attnbench.executors.machine import gpus_seen_with, visible_gpus

    assert gpus_seen_with(os.environ) == visible_gpus()  # on a CPU machine both are []: the round trip still runs
