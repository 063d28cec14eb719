"""Two correct implementations that declare their workspace (loaded via ATTNBENCH_PLUGIN_MODULES).

``memory.huge`` claims a pebibyte a call, so any budget pre-check must skip it;
``memory.small`` claims a mebibyte, so it fits any budget its inputs fit.
"""

from attnbench import Implementation, hookimpl
from attnbench.impls.eager import build as eager_build

HUGE = 2**50
SMALL = 2**20


@hookimpl
def attnbench_implementations():
    return [
        Implementation(name="memory.huge", build=eager_build, memory=lambda case: HUGE,
                       description="eager, declaring a pebibyte of workspace"),
        Implementation(name="memory.small", build=eager_build, memory=lambda case: SMALL,
                       description="eager, declaring a mebibyte of workspace"),
    ]
