"""Implementations for the executor tests (loaded via ATTNBENCH_PLUGIN_MODULES).

``fleet.sleepy`` is correct attention that sleeps in every call, so its time is
wall-clock waiting, not CPU: two of them overlap on a 2-core machine as two
GPU-bound pairs would on two GPUs. ``fleet.sleepy_b`` .. ``_d`` are the same,
for cases with several implementations. ``fleet.kills_task`` kills the process that
started its worker: inside a Ray task, the task's own process.
"""

import os
import signal
import time

from attnbench import Implementation, hookimpl
from attnbench.impls.eager import build as eager_build

SLEEP_S = float(os.environ.get("ATTNBENCH_FLEET_SLEEP_S", "0.05"))


def sleepy(case):
    good = eager_build(case)

    def call(q, k, v):
        time.sleep(SLEEP_S)
        return good(q, k, v)
    return call


def kills_task(case):
    def call(q, k, v):
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(60)
    return call


@hookimpl
def attnbench_implementations():
    twins = [Implementation(name=name, build=sleepy, description="eager after a sleep")
             for name in ("fleet.sleepy", "fleet.sleepy_b", "fleet.sleepy_c", "fleet.sleepy_d")]
    return [*twins, Implementation(name="fleet.kills_task", build=kills_task, description="kills its worker's parent")]
