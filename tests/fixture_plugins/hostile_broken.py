"""A plugin that fails to load with terminal escapes in its error (loaded via ATTNBENCH_PLUGIN_MODULES)."""

from hostile_text import ESCAPES, MARK

raise ImportError(f"{MARK} load error {ESCAPES}")
