"""attnbench: a benchmark for attention implementations.

Plugin authors need only this module::

    from attnbench import hookimpl, Implementation, Case, Unsupported
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = ["Case", "Implementation", "Unsupported", "hookimpl", "__version__"]

if TYPE_CHECKING:
    from attnbench.case import Case
    from attnbench.hookspecs import hookimpl
    from attnbench.implementation import Implementation, Unsupported

# These import torch (seconds): they load on first use, so that the commands that
# only read results files (report, compare, export) start in a fraction of that.
_LAZY = {
    "Case": "attnbench.case",
    "Implementation": "attnbench.implementation",
    "Unsupported": "attnbench.implementation",
    "hookimpl": "attnbench.hookspecs",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'attnbench' has no attribute {name!r}")
