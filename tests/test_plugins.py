"""Plugin loading through real entry points: fake distributions written to disk, found by importlib.metadata."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from attnbench import Implementation, hookimpl
from attnbench.impls.eager import build as eager_build
from attnbench.plugins import Registry, load_registry

BUILTIN_NAMES = {
    "reference", "eager", "sdpa", "sdpa.math", "sdpa.flash", "sdpa.efficient", "sdpa.cudnn", "flex", "chunked",
    "sliding_window", "block_sparse", "linformer", "linformer.r64", "linformer.r1024", "int8", "int8.per_token",
    "int8.per_tensor", "performer", "performer.m64", "performer.m1024", "seed.self_attention", "seed.multi_head",
    "seed.self_attention_fixed",
}
"""Built-ins every test can count on (more may be added)."""

GOOD = """
import torch
from attnbench import Implementation, hookimpl


def build(case):
    return lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=case.scale)


@hookimpl
def attnbench_implementations():
    return [
        Implementation(name="good.sdpa", build=build),
        Implementation(name="good.pinned", build=build, version="9.9"),
    ]
"""

BROKEN = {
    # kind: (module source, the cause `attnbench plugins` must show)
    "import_error": (
        "import attnbench_no_such_dependency\n",
        "failed to load: ModuleNotFoundError: No module named 'attnbench_no_such_dependency'",
    ),
    "hook_raises": (
        "from attnbench import hookimpl\n\n@hookimpl\ndef attnbench_implementations():\n    raise RuntimeError('boom')\n",
        "attnbench_implementations() raised RuntimeError: boom",
    ),
    "returns_non_implementation": (
        "from attnbench import hookimpl\n\n@hookimpl\ndef attnbench_implementations():\n    return ['eager']\n",
        "attnbench_implementations() returned str, not an Implementation",
    ),
    "returns_dict": (
        "from attnbench import hookimpl\n\n@hookimpl\ndef attnbench_implementations():\n    return {'name': 'x'}\n",
        "must return a list of Implementation, got dict",
    ),
    "invalid_name": (
        "from attnbench import Implementation, hookimpl\n\n@hookimpl\ndef attnbench_implementations():\n"
        "    return [Implementation(name='Bad Name', build=lambda case: None)]\n",
        "raised ValueError: implementation name 'Bad Name' is invalid",
    ),
    "taken_name": (
        "from attnbench import Implementation, hookimpl\n\n@hookimpl\ndef attnbench_implementations():\n"
        "    return [Implementation(name='eager', build=lambda case: None)]\n",
        "implementation name 'eager' is already taken by plugin 'attnbench.impls.eager'",
    ),
    "no_hookimpl": (
        "def attnbench_implementations():\n    return []\n",
        "registers no attnbench hook",
    ),
    "misspelled_hook": (
        "from attnbench import hookimpl\n\n@hookimpl\ndef attnbench_implementation():\n    return []\n",
        "defines unknown hook(s) attnbench_implementation",
    ),
}


class FakeDists:
    """Writes installed-looking distributions (dist-info with entry points, plus their modules) into one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.modules: list[str] = []

    def add(self, dist: str, version: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
        info = self.root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[attnbench]\n{lines}")
        for module, source in modules.items():
            self.add_module(module, source)

    def add_module(self, module: str, source: str) -> None:
        (self.root / f"{module}.py").write_text(textwrap.dedent(source))
        self.modules.append(module)


@pytest.fixture
def dists(tmp_path, monkeypatch):
    """A folder on sys.path for fake distributions; their modules are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    fake = FakeDists(tmp_path)
    yield fake
    for module in fake.modules:
        sys.modules.pop(module, None)


def by_name(registry) -> dict:
    return {p.name: p for p in registry.plugins}


def test_good_plugin_loads_with_its_plugin_name_and_distribution_version(dists):
    dists.add("good-plugin", "1.2.3", {"good": "good_plugin_mod"}, {"good_plugin_mod": GOOD})
    registry = load_registry(environ={})
    info = by_name(registry)["good"]
    assert info.ok and not info.builtin
    assert (info.distribution, info.version) == ("good-plugin", "1.2.3")
    assert info.implementations == ["good.sdpa", "good.pinned"]
    impl = registry.get("good.sdpa")
    assert (impl.plugin, impl.version) == ("good", "1.2.3")
    assert registry.get("good.pinned").version == "9.9", "a version the implementation declares is kept"
    assert BUILTIN_NAMES <= set(registry.implementations)


def test_builtins_are_listed_before_plugins(dists):
    dists.add("good-plugin", "1.2.3", {"good": "good_plugin_mod"}, {"good_plugin_mod": GOOD})
    registry = load_registry(environ={})
    builtin = [by_name(registry)[impl.plugin].builtin for impl in registry.implementations.values()]
    assert BUILTIN_NAMES <= set(registry.implementations) and "good.sdpa" in registry.implementations
    assert builtin == sorted(builtin, reverse=True), "a built-in listed after a plugin's implementation"


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_plugin_is_reported_with_its_cause_while_others_load(dists, kind):
    source, cause = BROKEN[kind]
    dists.add("good-plugin", "1.2.3", {"good": "good_plugin_mod"}, {"good_plugin_mod": GOOD})
    dists.add("broken-plugin", "0.1", {"broken": f"broken_{kind}"}, {f"broken_{kind}": source})
    registry = load_registry(environ={})
    broken = by_name(registry)["broken"]
    assert not broken.ok
    assert broken.distribution == "broken-plugin"
    assert any(cause in error for error in broken.errors), broken.errors
    assert registry.failures == [broken]
    assert {"good.sdpa", "good.pinned"} | BUILTIN_NAMES <= set(registry.implementations)
    assert registry.get("eager").plugin == "attnbench.impls.eager"


def test_entry_point_to_missing_attribute_is_reported(dists):
    dists.add("attr-plugin", "1.0", {"attr": "good_plugin_mod:no_such_object"}, {"good_plugin_mod": GOOD})
    info = by_name(load_registry(environ={}))["attr"]
    assert any("failed to load: AttributeError" in e and "no_such_object" in e for e in info.errors), info.errors


def test_plugin_keeps_its_good_implementations_when_one_item_is_bad(dists):
    source = """
        from attnbench import Implementation, hookimpl
        from attnbench.impls.eager import build

        @hookimpl
        def attnbench_implementations():
            return [Implementation(name="mixed.ok", build=build), object(), Implementation(name="sdpa", build=build)]
    """
    dists.add("mixed-plugin", "2.0", {"mixed": "mixed_mod"}, {"mixed_mod": source})
    registry = load_registry(environ={})
    info = by_name(registry)["mixed"]
    assert info.implementations == ["mixed.ok"]
    assert len(info.errors) == 2 and "returned object" in info.errors[0] and "'sdpa' is already taken" in info.errors[1]
    assert registry.get("mixed.ok").plugin == "mixed"


def test_trylast_plugin_cannot_take_a_builtin_name(dists):
    """pluggy runs a trylast hook first; the oracle must still belong to the built-in."""
    source = """
        from attnbench import Implementation, hookimpl
        from attnbench.impls.eager import build

        @hookimpl(trylast=True)
        def attnbench_implementations():
            return [Implementation(name="reference", build=build, description="not the oracle")]
    """
    dists.add("hijack-plugin", "1.0", {"hijack": "hijack_mod"}, {"hijack_mod": source})
    registry = load_registry(environ={})
    assert registry.get("reference").plugin == "attnbench.impls.reference"
    assert by_name(registry)["attnbench.impls.reference"].ok
    assert any("'reference' is already taken" in e for e in by_name(registry)["hijack"].errors)


def test_first_plugin_keeps_a_name_two_plugins_claim(dists):
    twin = """
        from attnbench import Implementation, hookimpl
        from attnbench.impls.eager import build

        @hookimpl
        def attnbench_implementations():
            return [Implementation(name="twin.impl", build=build)]
    """
    dists.add_module("twin_a", twin)
    dists.add_module("twin_b", twin)
    registry = load_registry(environ={"ATTNBENCH_PLUGINS": "", "ATTNBENCH_PLUGIN_MODULES": "twin_a,twin_b"})
    assert registry.get("twin.impl").plugin == "twin_a"
    assert by_name(registry)["twin_b"].errors == ["implementation name 'twin.impl' is already taken by plugin 'twin_a'"]


def test_entry_point_named_like_a_builtin_plugin_is_refused(dists):
    dists.add("impostor", "1.0", {"attnbench.impls.eager": "good_plugin_mod"}, {"good_plugin_mod": GOOD})
    registry = load_registry(environ={})
    builtin, impostor = [p for p in registry.plugins if p.name == "attnbench.impls.eager"]
    assert builtin.builtin and builtin.ok and builtin.implementations == ["eager"]
    assert impostor.distribution == "impostor" and impostor.errors == ["plugin name 'attnbench.impls.eager' is already taken"]
    assert "good.sdpa" not in registry.implementations


def test_module_named_twice_is_reported_once_and_loads_once(dists):
    dists.add_module("good_plugin_mod", GOOD)
    registry = load_registry(environ={"ATTNBENCH_PLUGINS": "", "ATTNBENCH_PLUGIN_MODULES": "good_plugin_mod,good_plugin_mod"})
    first, second = [p for p in registry.plugins if p.name == "good_plugin_mod"]
    assert first.ok and set(first.implementations) == {"good.sdpa", "good.pinned"}
    assert second.errors == ["plugin name 'good_plugin_mod' is already taken"]


def test_plugins_env_selects_one_of_two_by_entry_point_or_distribution_name(dists):
    dists.add("good-plugin", "1.2.3", {"good": "good_plugin_mod"}, {"good_plugin_mod": GOOD})
    other = GOOD.replace("good.", "other.")
    dists.add("other-plugin", "0.5", {"other": "other_plugin_mod"}, {"other_plugin_mod": other})
    for selector in ("good", "good-plugin"):
        registry = load_registry(environ={"ATTNBENCH_PLUGINS": selector})
        assert "good" in by_name(registry) and "other" not in by_name(registry)
        assert "good.sdpa" in registry.implementations and "other.sdpa" not in registry.implementations
    both = load_registry(environ={"ATTNBENCH_PLUGINS": " good , other-plugin "})
    assert {"good.sdpa", "other.sdpa"} <= set(both.implementations)


def test_empty_plugins_env_loads_builtins_only(dists):
    dists.add("good-plugin", "1.2.3", {"good": "good_plugin_mod"}, {"good_plugin_mod": GOOD})
    registry = load_registry(environ={"ATTNBENCH_PLUGINS": ""})
    assert all(p.builtin for p in registry.plugins)
    assert BUILTIN_NAMES <= set(registry.implementations) and "good.sdpa" not in registry.implementations


def test_plugins_env_naming_a_missing_plugin_is_reported(dists):
    dists.add("good-plugin", "1.2.3", {"good": "good_plugin_mod"}, {"good_plugin_mod": GOOD})
    registry = load_registry(environ={"ATTNBENCH_PLUGINS": "good,nonesuch"})
    missing = by_name(registry)["nonesuch"]
    assert not missing.ok and "ATTNBENCH_PLUGINS" in missing.errors[0] and "no installed plugin" in missing.errors[0]
    assert "good.sdpa" in registry.implementations


def test_plugin_modules_env_loads_an_uninstalled_module(dists):
    dists.add_module("good_plugin_mod", GOOD)
    dists.add_module("broken_import", BROKEN["import_error"][0])
    registry = load_registry(environ={"ATTNBENCH_PLUGINS": "", "ATTNBENCH_PLUGIN_MODULES": "good_plugin_mod, broken_import"})
    good = by_name(registry)["good_plugin_mod"]
    assert good.ok and good.distribution == "(module)"
    assert registry.get("good.sdpa").plugin == "good_plugin_mod"
    assert "ModuleNotFoundError" in by_name(registry)["broken_import"].errors[0]


def test_extra_in_process_plugins_load():
    @hookimpl
    def attnbench_implementations():
        return [Implementation(name="inproc.eager", build=eager_build)]

    plugin = types.SimpleNamespace(attnbench_implementations=attnbench_implementations)
    registry = load_registry(environ={"ATTNBENCH_PLUGINS": ""}, extra=[("inproc", plugin)])
    assert registry.get("inproc.eager").plugin == "inproc"
    assert by_name(registry)["inproc"].distribution == "(in-process)"


def test_select_filters_by_include_and_exclude_globs():
    names = ["eager", "sdpa", "sdpa.math", "sdpa.flash", "mylib.fast", "mylib.fast_v2"]
    registry = Registry({n: Implementation(name=n, build=eager_build) for n in names}, [])

    def select(**kw):
        return [impl.name for impl in registry.select(**kw)]

    assert select() == names
    assert select(include=["sdpa*"]) == ["sdpa", "sdpa.math", "sdpa.flash"]
    assert select(include=["sdpa.*", "mylib.*"], exclude=["*flash", "*_v?"]) == ["sdpa.math", "mylib.fast"]
    assert select(include=["eager", "mylib.fast"]) == ["eager", "mylib.fast"]
    assert select(exclude=["*"]) == []
    assert select(include=["Eager"]) == [], "globs are case-sensitive, like implementation names"
    with pytest.raises(KeyError, match="attnbench list"):
        registry.get("nonesuch")


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m attnbench ARGS`` with the fake distributions importable and no plugin selection inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTNBENCH_")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *filter(None, [env.get("PYTHONPATH")])])
    env["COLUMNS"] = "400"  # keep rich from wrapping the failure line
    return subprocess.run([sys.executable, "-m", "attnbench", *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cli_shows_broken_plugin_by_name_and_cause_while_others_load(dists, tmp_path):
    dists.add("good-plugin", "1.2.3", {"good": "good_plugin_mod"}, {"good_plugin_mod": GOOD})
    source, cause = BROKEN["hook_raises"]
    dists.add("broken-plugin", "0.1", {"broken": "broken_hook_raises"}, {"broken_hook_raises": source})

    plugins = run_cli(tmp_path, "plugins", "--json")
    assert plugins.returncode == 0, plugins.stderr
    shown = {p["name"]: p for p in json.loads(plugins.stdout)}
    assert shown["broken"]["ok"] is False and any(cause in e for e in shown["broken"]["errors"])
    assert shown["broken"]["distribution"] == "broken-plugin"
    assert shown["good"]["ok"] is True and shown["good"]["version"] == "1.2.3"
    assert set(shown["good"]["implementations"]) == {"good.sdpa", "good.pinned"}

    listed = run_cli(tmp_path, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    caps = {c["name"]: c for c in json.loads(listed.stdout)}
    assert BUILTIN_NAMES | {"good.sdpa", "good.pinned"} <= set(caps)
    assert (caps["good.sdpa"]["plugin"], caps["good.sdpa"]["version"]) == ("good", "1.2.3")

    table = run_cli(tmp_path, "list")
    assert table.returncode == 0, table.stderr
    assert "plugin broken failed:" in table.stdout and cause in table.stdout
