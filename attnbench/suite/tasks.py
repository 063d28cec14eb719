"""The ``tasks`` section: the quality tasks a device trains, one ``TaskConfig`` each."""

from __future__ import annotations

import dataclasses

from attnbench.quality.config import TaskConfig, preset
from attnbench.suite.checking import Checker
from attnbench.suite.parts import Part
from attnbench.suite.schema import TASK_KEYS


def device_tasks(check: Checker, top: Part, section: Part | None, device: str) -> tuple[TaskConfig, ...]:
    """The device's task configs: each task's preset, then the suite's task keys, then the device section's."""
    parts = [p for p in (top, section) if p is not None and p.tasks is not None]
    if not parts:
        return ()
    values = {k: value for p in parts for k, (value, _) in p.tasks.items()}
    configs = []
    for name in values.get("names", TASK_KEYS["names"].default):
        changes = {k: values[k] for k in ("steps", "eval_size") if k in values}
        changes["seeds"] = tuple(range(values.get("seeds", TASK_KEYS["seeds"].default)))
        changes["threads"] = values.get("threads", TASK_KEYS["threads"].default)
        try:
            configs.append(dataclasses.replace(preset(name, device, values.get("size")), **changes))
        except ValueError as exc:
            # A preset and an override that do not fit together: blame the most specific tasks mapping.
            where = parts[-1].prefix + "tasks"
            line = min(line for _, line in parts[-1].tasks.values())
            raise check.error(line, where, f"{where}: task {name} on {device}: {exc}") from None
    return tuple(configs)
