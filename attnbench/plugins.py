"""Plugin loading: built-in modules, then entry points, one plugin at a time.

A plugin that fails to import, raises in its hook, returns something that is
not an ``Implementation`` or reuses a taken name is recorded with its name and
cause; every other plugin still loads.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import pluggy

import attnbench
from attnbench import hookspecs
from attnbench.implementation import Implementation
from attnbench.outcome import describe

ENTRY_POINT_GROUP = "attnbench"
SELECT_ENV = "ATTNBENCH_PLUGINS"
"""Comma-separated entry-point (or distribution) names to load; empty loads none; unset loads all."""
MODULES_ENV = "ATTNBENCH_PLUGIN_MODULES"
"""Comma-separated importable modules to load as plugins without installing them (plugin development)."""
ONLY_ENV = "ATTNBENCH_ONLY_PLUGINS"
"""Comma-separated plugin names (as ``Implementation.plugin`` gives them): when set, no other plugin is even
imported, built-ins aside. Set by the runner for its workers: a plugin the run did not select cannot touch it."""

BUILTIN_PLUGINS = (
    "attnbench.impls.reference",
    "attnbench.impls.eager",
    "attnbench.impls.sdpa",
    "attnbench.impls.sdpa_padded",
    "attnbench.impls.flex",
    "attnbench.impls.chunked",
    "attnbench.impls.sliding_window",
    "attnbench.impls.block_sparse",
    "attnbench.impls.linformer",
    "attnbench.impls.int8",
    "attnbench.impls.performer",
    "attnbench.impls.seed",
)


@dataclass
class PluginInfo:
    """One plugin as loaded: where it came from, what it registered, what went wrong."""

    name: str
    distribution: str
    version: str
    builtin: bool
    implementations: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"ok": self.ok}


@dataclass
class Registry:
    """Every loaded implementation by name, and the plugins they came from."""

    implementations: dict[str, Implementation]
    plugins: list[PluginInfo]

    def get(self, name: str) -> Implementation:
        try:
            return self.implementations[name]
        except KeyError:
            raise KeyError(f"no implementation named {name!r}; `attnbench list` shows what is installed") from None

    def select(self, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> list[Implementation]:
        """Implementations whose names match any ``include`` glob (all when empty) and no ``exclude`` glob."""
        include, exclude = list(include), list(exclude)
        chosen = []
        for name, impl in self.implementations.items():
            if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
                continue
            if any(fnmatch.fnmatchcase(name, p) for p in exclude):
                continue
            chosen.append(impl)
        return chosen

    @property
    def failures(self) -> list[PluginInfo]:
        return [p for p in self.plugins if not p.ok]


def load_registry(environ: Mapping[str, str] | None = None, extra: Iterable[tuple[str, object]] = ()) -> Registry:
    """Load built-ins, selected entry points, modules named in the environment, and ``extra`` (name, object) pairs."""
    environ = os.environ if environ is None else environ
    manager = pluggy.PluginManager("attnbench")
    manager.add_hookspecs(hookspecs)
    plugins: dict[str, PluginInfo] = {}  # registered plugins by name, in registration order
    listed: list[PluginInfo] = []  # every plugin in load order, those refused for a taken name too

    def claim(info: PluginInfo) -> bool:
        listed.append(info)
        if info.name in plugins:
            info.errors.append(f"plugin name {info.name!r} is already taken")
            return False
        plugins[info.name] = info
        return True

    for module_name in BUILTIN_PLUGINS:
        info = PluginInfo(module_name, "attnbench", attnbench.__version__, builtin=True)
        claim(info)
        _register(manager, info, lambda m=module_name: importlib.import_module(m))

    only = set(_split(environ[ONLY_ENV])) if ONLY_ENV in environ else None
    selected, missing = _selected_entry_points(environ)
    for ep in selected:
        if only is not None and ep.name not in only:
            continue
        dist = getattr(ep, "dist", None)
        info = PluginInfo(
            ep.name,
            dist.metadata["Name"] if dist is not None else "?",
            dist.version if dist is not None else "?",
            builtin=False,
        )
        if claim(info):
            _register(manager, info, ep.load)
    for name in missing:
        claim(PluginInfo(
            name, "?", "", builtin=False,
            errors=[f"named in {SELECT_ENV} but no installed plugin has that entry-point or distribution name"],
        ))

    for module_name in _split(environ.get(MODULES_ENV, "")):
        if only is not None and module_name not in only:
            continue
        info = PluginInfo(module_name, "(module)", "", builtin=False)
        if claim(info):
            _register(manager, info, lambda m=module_name: importlib.import_module(m))

    for name, obj in extra:
        info = PluginInfo(name, "(in-process)", "", builtin=False)
        if claim(info):
            _register(manager, info, lambda o=obj: o)

    implementations: dict[str, Implementation] = {}
    # Names go to plugins in registration order, built-ins first. pluggy's own order lets a
    # `trylast` hook go first, which would let a plugin take a built-in's name (even the oracle's).
    order = {name: i for i, name in enumerate(plugins)}
    hooks = sorted(manager.hook.attnbench_implementations.get_hookimpls(), key=lambda h: order[h.plugin_name])
    for hook in hooks:
        info = plugins[hook.plugin_name]
        for impl in _call_hook(hook, info):
            if impl.name in implementations:
                owner = implementations[impl.name].plugin
                info.errors.append(f"implementation name {impl.name!r} is already taken by plugin {owner!r}")
                continue
            impl = dataclasses.replace(impl, plugin=info.name, version=impl.version or info.version)
            implementations[impl.name] = impl
            info.implementations.append(impl.name)
    # List built-ins first, then by name.
    ordered = dict(sorted(implementations.items(), key=lambda kv: (not plugins[kv[1].plugin].builtin, kv[0])))
    return Registry(ordered, listed)


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _selected_entry_points(environ: Mapping[str, str]) -> tuple[list, list[str]]:
    """Entry points to load, and the names in ``ATTNBENCH_PLUGINS`` that match none."""
    found = list(entry_points(group=ENTRY_POINT_GROUP))
    if SELECT_ENV not in environ:
        return found, []
    wanted = set(_split(environ[SELECT_ENV]))
    chosen = []
    for ep in found:
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else None
        if ep.name in wanted or dist_name in wanted:
            chosen.append(ep)
            wanted -= {ep.name, dist_name}
    return chosen, sorted(wanted)


def _register(manager: pluggy.PluginManager, info: PluginInfo, load) -> None:
    try:
        obj = load()
        manager.register(obj, name=info.name)
    except BaseException as exc:  # noqa: BLE001 - a plugin may raise anything, even SystemExit
        if isinstance(exc, KeyboardInterrupt):
            raise
        info.errors.append(f"failed to load: {describe(exc)}")
        return
    callers = manager.get_hookcallers(obj) or []
    unknown = sorted(caller.name for caller in callers if caller.spec is None)
    if unknown:
        info.errors.append(f"defines unknown hook(s) {', '.join(unknown)}; attnbench's hook is attnbench_implementations")
    elif not callers:
        info.errors.append("registers no attnbench hook (is `@hookimpl` from attnbench missing?)")


def _call_hook(hook: pluggy.HookImpl, info: PluginInfo) -> list[Implementation]:
    try:
        result = hook.function()
    except BaseException as exc:  # noqa: BLE001
        if isinstance(exc, KeyboardInterrupt):
            raise
        info.errors.append(f"attnbench_implementations() raised {describe(exc)}")
        return []
    if result is None:
        return []
    if isinstance(result, Implementation):
        result = [result]
    if not isinstance(result, (list, tuple)):
        info.errors.append(f"attnbench_implementations() must return a list of Implementation, got {type(result).__name__}")
        return []
    good = []
    for item in result:
        if isinstance(item, Implementation):
            good.append(item)
        else:
            info.errors.append(f"attnbench_implementations() returned {type(item).__name__}, not an Implementation")
    return good
