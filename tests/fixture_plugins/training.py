"""Implementations that train wrongly or not at all: each must end in its own status on a quality task."""

import os
import time

from attnbench import Implementation, hookimpl
from attnbench.impls.eager import build as eager_build


def detached(case):
    """Exact forward, no gradient to q, k and v: the model cannot learn where to look."""
    attend = eager_build(case)

    def call(q, k, v):
        return attend(q.detach(), k.detach(), v.detach())
    return call


def aborts(case):
    def call(q, k, v):
        os.abort()
    return call


def hangs(case):
    def call(q, k, v):
        time.sleep(3600)
    return call


def raises(case):
    def call(q, k, v):
        raise ValueError("kernel launch parameters out of range")
    return call


@hookimpl
def attnbench_implementations():
    builds = [("train.detached", detached), ("train.aborts", aborts), ("train.hangs", hangs), ("train.raises", raises)]
    return [Implementation(name=name, build=build, description=name, backward=True) for name, build in builds]
