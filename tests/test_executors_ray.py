"""The Ray executor against a real local Ray cluster: placement on two fake GPUs, and every failure a record.

One cluster for the module (Ray takes seconds to start): a head node with 2
CPUs and 2 fake H100s. Ray sets CUDA_VISIBLE_DEVICES per task from the fake
GPUs, so the CPU cases here request a GPU each and placement is real.
"""

import os
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a Ray cluster for the module, tasks start worker processes
ray = pytest.importorskip("ray", reason="the Ray executor needs ray: pip install 'attnbench[ray]'")
from ray.cluster_utils import Cluster  # noqa: E402

from attnbench.case import Case  # noqa: E402
from attnbench.executors.ray import RayExecutor  # noqa: E402
from attnbench.plugins import load_registry  # noqa: E402
from attnbench.runner import RunOptions, plan  # noqa: E402

FIXTURES = Path(__file__).parent / "fixture_plugins"
WORKER_ENV = {"PYTHONPATH": os.pathsep.join([str(FIXTURES), os.environ.get("PYTHONPATH", "")]),
              "ATTNBENCH_PLUGIN_MODULES": "fleet,misbehaving"}
FAST = RunOptions(processes=1, seeds=3, min_time_s=0.05, min_samples=3, timeout_s=60)
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
    options = RunOptions(processes=1, seeds=3, min_time_s=2.0, min_samples=3)
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
    todo = pairs(registry, ["bad.abort", "bad.raises", "fleet.kills_task", "eager"])
    with RayExecutor(FAST, num_gpus=1, env=WORKER_ENV) as executor:
        records = {r.impl: r for r in executor.submit(todo)}
    assert {name: r.status for name, r in records.items()} == {
        "bad.abort": "crashed", "bad.raises": "error", "fleet.kills_task": "crashed", "eager": "ok"}
    assert "SIGABRT" in records["bad.abort"].reason  # the worker subprocess died; the task reported it
    assert "WorkerCrashedError" in records["fleet.kills_task"].reason  # the task's own process died


def test_an_accelerator_no_node_has_is_infeasible_at_once(cluster, registry):
    start = time.monotonic()
    with RayExecutor(FAST, accelerator_type="B200", num_gpus=1, env=WORKER_ENV) as executor:
        (record,) = executor.submit(pairs(registry, ["eager"]))
    assert record.status == "infeasible" and "accelerator_type:B200" in record.reason
    assert "accelerator_type:H100=2" in record.reason
    assert time.monotonic() - start < 5


def test_a_task_past_its_budget_is_cancelled_as_timeout(cluster, registry):
    options = RunOptions(processes=1, seeds=3, min_time_s=0.05, min_samples=3, timeout_s=600)
    with RayExecutor(options, num_gpus=1, env=WORKER_ENV, task_timeout_s=4) as executor:
        (record,) = executor.submit(pairs(registry, ["bad.hang"], options=options))
    assert record.status == "timeout" and "ray.cancel" in record.reason


def test_a_removed_node_loses_its_pair_and_strands_the_queued_one(cluster, registry):
    doomed = cluster.add_node(num_cpus=1, num_gpus=1, resources={"accelerator_type:L4": 1},
                              object_store_memory=80 * 2**20)
    cluster.wait_for_nodes()
    options = RunOptions(processes=1, seeds=3, min_time_s=0.05, min_samples=3, timeout_s=600)
    todo = pairs(registry, ["bad.hang", "fleet.sleepy"], options=options)

    def remove_the_node(pair):
        cluster.remove_node(doomed)

    # One L4 GPU: bad.hang runs, fleet.sleepy waits for it; then the node goes.
    with RayExecutor(options, accelerator_type="L4", num_gpus=1, env=WORKER_ENV, recheck_s=1) as executor:
        records = {r.impl: r for r in executor.submit(todo, on_start=remove_the_node)}
    running, queued = records[todo[0].impl.name], records[todo[1].impl.name]
    assert running.status == "node_lost" and "NodeDiedError" in running.reason
    assert running.where["job"]["node_id"] == doomed.node_id
    assert queued.status == "infeasible" and "accelerator_type:L4" in queued.reason
