"""Implementations that crash, hang, hog memory or raise: each must end in its own status."""

import ctypes
import os
import time

import torch

from attnbench import Implementation, hookimpl
from attnbench.impls.eager import build as eager_build


def aborts(case):
    def call(q, k, v):
        os.abort()
    return call


def segfaults(case):
    def call(q, k, v):
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    return call


def hangs(case):
    def call(q, k, v):
        time.sleep(3600)
    return call


def hogs_memory(case):
    def call(q, k, v):
        hoard = []
        while True:  # bounded by the worker's RLIMIT_AS
            hoard.append(torch.ones(256 * 2**20 // 4))
    return call


def raises(case):
    def call(q, k, v):
        raise ValueError("kernel launch parameters out of range")
    return call


def out_half_written(case):
    good = eager_build(case)

    def call(q, k, v, out):
        result = good(q, k, v)
        out[:, :, : q.shape[2] // 2] = result[:, :, : q.shape[2] // 2]
        return out
    return call


def out_ok(case):
    good = eager_build(case)

    def call(q, k, v, out):
        out.copy_(good(q, k, v))
        return out
    return call


@hookimpl
def attnbench_implementations():
    plain = [("bad.abort", aborts), ("bad.segfault", segfaults), ("bad.hang", hangs),
             ("bad.memory_hog", hogs_memory), ("bad.raises", raises)]
    return [Implementation(name=name, build=build, description=name) for name, build in plain] + [
        Implementation(name="bad.out_half_written", build=out_half_written, out=True),
        Implementation(name="good.out", build=out_ok, out=True),
    ]
