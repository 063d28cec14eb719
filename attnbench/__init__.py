"""attnbench: a benchmark for attention implementations.

Plugin authors need only this module::

    from attnbench import hookimpl, Implementation, Case, Unsupported
"""

from attnbench.case import Case
from attnbench.hookspecs import hookimpl
from attnbench.implementation import Implementation, Unsupported

__version__ = "0.1.0"

__all__ = ["Case", "Implementation", "Unsupported", "hookimpl", "__version__"]
