"""``count.slow``: correct attention that takes 0.3 s a call and logs each call's pid (loaded via ATTNBENCH_PLUGIN_MODULES).

The log (``ATTNBENCH_COUNT_FILE``) shows how many calls a pair costs in each
worker process: the budget that decides whether long sequences fit a run.
"""

import os
import time

from attnbench import Implementation, hookimpl
from attnbench.impls.eager import build as eager_build

CALL_S = 0.3


def slow(case):
    good = eager_build(case)

    def call(q, k, v):
        with open(os.environ["ATTNBENCH_COUNT_FILE"], "a") as log:
            log.write(f"{os.getpid()}\n")
        time.sleep(CALL_S)
        return good(q, k, v)
    return call


@hookimpl
def attnbench_implementations():
    return [Implementation(name="count.slow", build=slow, description="eager after 0.3 s, each call logged")]
