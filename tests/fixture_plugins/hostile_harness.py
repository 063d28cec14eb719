"""Implementations that attack the harness, each wanting a better record than it deserves (or to spoil others').

Loaded via ATTNBENCH_PLUGIN_MODULES. Each is eager underneath, so any status
but the one the harness should give it is the attack working.
"""

import json
import os
import stat
import time

import torch

from attnbench import Implementation, Unsupported, hookimpl
from attnbench.impls.eager import build as eager_build

if os.environ.get("HOSTILE_AT_IMPORT"):
    # Changes at import, before any pair: the worker must undo them before the first one.
    torch.set_num_threads(1)
    time.perf_counter = lambda: 0.0


def _pipes() -> list[int]:
    """Every pipe this process can write to, stdin aside: the worker's reply channel among them."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if fd > 2 and stat.S_ISFIFO(os.fstat(fd).st_mode):
                found.append(fd)
        except OSError:
            continue
    return found


def _write_to_pipes(line: bytes) -> None:
    for fd in _pipes():
        try:
            os.write(fd, line)
        except OSError:
            continue


def forger(case):
    fake = {"status": "ok", "reason": "", "metrics": {"rel_err": 0.0, "max_abs_err": 0.0}, "samples_ms": [1e-4] * 5,
            "fatal": False, "pid": os.getpid()}
    _write_to_pipes((json.dumps(fake) + "\n").encode())
    return eager_build(case)


def garbage(case):
    _write_to_pipes(b"\x00not json at all\n")
    return eager_build(case)


def state_changer(case):
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    torch.use_deterministic_algorithms(True)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("medium")
    return eager_build(case)


def orphan_maker(case):
    child = os.fork()
    if child == 0:
        # The helper holds the worker's pipes open and outlives it, unless its process group dies with it.
        time.sleep(120)
        os._exit(0)
    if os.environ.get("HOSTILE_ORPHAN_PIDFILE"):
        with open(os.environ["HOSTILE_ORPHAN_PIDFILE"], "a") as f:
            f.write(f"{child}\n")
    os._exit(3)


def output_cache(case):
    good = eager_build(case)
    cache = {}

    def cached(q, k, v):
        key = (q.data_ptr(), k.data_ptr(), v.data_ptr())
        if key not in cache:
            cache[key] = good(q, k, v)
        return cache[key]
    return cached


def goes_bad(case):
    good = eager_build(case)
    calls = [0]

    def later_wrong(q, k, v):
        calls[0] += 1
        out = good(q, k, v)
        return out if calls[0] <= 4 else out * 0.5
    return later_wrong


def timer_patcher(case):
    real = time.perf_counter
    time.perf_counter = lambda: real() * 0.001
    return eager_build(case)


def state_probe(case):
    # Says what torch state a pair finds, through the one channel every status has: its reason.
    raise Unsupported(f"threads={torch.get_num_threads()} dtype={torch.get_default_dtype()} "
                      f"deterministic={torch.are_deterministic_algorithms_enabled()} "
                      f"perf_counter={time.perf_counter.__module__}")


@hookimpl
def attnbench_implementations():
    return [
        Implementation(name="hostile.forger", build=forger, description="writes a fake ok reply during build"),
        Implementation(name="hostile.garbage", build=garbage, description="writes garbage to the reply pipe"),
        Implementation(name="hostile.state", build=state_changer, description="changes torch's global state"),
        Implementation(name="hostile.orphan", build=orphan_maker, description="forks a helper, then crashes"),
        Implementation(name="hostile.cache", build=output_cache, description="caches outputs by input identity"),
        Implementation(name="hostile.goes_bad", build=goes_bad, description="right for 4 calls, then wrong"),
        Implementation(name="hostile.timer", build=timer_patcher, description="patches time.perf_counter"),
        Implementation(name="probe.state", build=state_probe, description="reports the torch state it finds"),
    ]
