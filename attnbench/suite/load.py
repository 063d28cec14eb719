"""A loaded suite, and ``load_suite``, which reads, validates and expands a file into one."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from attnbench.case import Case
from attnbench.implementation import DEVICES
from attnbench.quality.config import TaskConfig
from attnbench.suite.checking import Checker
from attnbench.suite.expand import device_cases
from attnbench.suite.parts import layer_settings, parse_hardware, parse_part
from attnbench.suite.reading import SuiteError, read_yaml
from attnbench.suite.schema import SECTION_KEYS, TOP_KEYS
from attnbench.suite.settings import Hardware, Settings
from attnbench.suite.tasks import device_tasks


@dataclass(frozen=True)
class Suite:
    """A loaded, validated suite.

    ``defaults`` holds the suite's top-level settings, before any device
    section (its ``device`` is ''); ``settings(device)`` and ``cases(device)``
    apply that device's section, and are what a run uses.
    """

    name: str
    description: str
    path: Path
    file_hash: str
    defaults: Settings
    _settings: dict[str, Settings] = field(repr=False, compare=False)
    _cases: dict[str, tuple[Case, ...]] = field(repr=False, compare=False)
    _tasks: dict[str, tuple[TaskConfig, ...]] = field(default_factory=dict, repr=False, compare=False)
    _models: dict[str, dict[Case, tuple[str, ...]]] = field(default_factory=dict, repr=False, compare=False)
    hardware: Hardware = field(default_factory=Hardware)

    def settings(self, device: str) -> Settings:
        """Effective settings on ``device`` ('cpu' or 'cuda'), its section applied."""
        return self._settings[_device(device)]

    def cases(self, device: str) -> list[Case]:
        """The cases to run on ``device`` ('cpu' or 'cuda'), in order, without duplicates."""
        return list(self._cases[_device(device)])

    def models(self, device: str) -> dict[str, list[Case]]:
        """The model presets the suite names on ``device`` (its ``model`` axis), each with the cases that are
        that model's, in order; two presets of one shape share their cases."""
        found: dict[str, list[Case]] = {}
        for case, names in self._models.get(_device(device), {}).items():
            for name in names:
                found.setdefault(name, []).append(case)
        return found

    def tasks(self, device: str) -> list[TaskConfig]:
        """The quality tasks to train on ``device``, one config each; empty when the suite declares none there."""
        return list(self._tasks.get(_device(device), ()))


def _device(device: str) -> str:
    if device not in DEVICES:
        raise ValueError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    return device


def load_suite(path: str | os.PathLike[str]) -> Suite:
    """Read, validate and expand a suite file; every problem raises SuiteError."""
    shown = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise SuiteError(shown, None, "", "no such suite file") from None
    except OSError as exc:
        raise SuiteError(shown, None, "", f"cannot read the suite file: {exc.strerror or exc}") from None
    doc = read_yaml(shown, data, TOP_KEYS)
    check = Checker(shown)
    top = parse_part(check, doc, "", TOP_KEYS, 1)
    name = check.plain_name(doc["name"], TOP_KEYS["name"], "name", doc.lines["name"])
    description = check.scalar(doc["description"], TOP_KEYS["description"], "description",
                               doc.lines["description"]) if "description" in doc else ""
    hardware = parse_hardware(check, check.mapping(doc, "hardware", "hardware")) if "hardware" in doc else Hardware()
    sections = {}
    for device in DEVICES:
        if device in doc:
            sections[device] = parse_part(check, check.mapping(doc, device, device), device + ".", SECTION_KEYS,
                                          doc.lines[device])
    settings = {d: layer_settings(d, [top, *([sections[d]] if d in sections else [])]) for d in DEVICES}
    tasks = {d: device_tasks(check, top, sections.get(d), d) for d in DEVICES}
    models = {d: device_cases(check, top, sections.get(d), d, bool(tasks[d])) for d in DEVICES}
    cases = {d: tuple(models[d]) for d in DEVICES}
    return Suite(
        name=name, description=description, path=Path(path), file_hash=hashlib.sha256(data).hexdigest(),
        defaults=layer_settings("", [top]), _settings=settings, _cases=cases, _tasks=tasks, hardware=hardware,
        _models=models,
    )
