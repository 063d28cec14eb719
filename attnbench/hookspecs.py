"""The plugin contract: the hooks attnbench calls. Each is documented in docs/hooks.md."""

from __future__ import annotations

import pluggy

from attnbench.implementation import Implementation

hookspec = pluggy.HookspecMarker("attnbench")
hookimpl = pluggy.HookimplMarker("attnbench")


@hookspec
def attnbench_implementations() -> list[Implementation]:
    """Return the attention implementations this plugin provides."""
