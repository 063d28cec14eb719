"""The docs cannot drift from the code: generated reference, documented hooks, tutorial code."""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import inspect
import re
from pathlib import Path

import pytest

from attnbench import hookspecs
from attnbench.implementation import Implementation

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_suite_reference_is_what_the_generator_writes():
    expected = _generator().render()
    actual = (DOCS / "suites.md").read_text(encoding="utf-8")
    diff = "".join(difflib.unified_diff(actual.splitlines(True), expected.splitlines(True), "docs/suites.md",
                                        "generated", n=1))
    assert actual == expected, f"docs/suites.md is out of date: run `python docs/gen_reference.py`\n{diff[:3000]}"


def test_suite_reference_documents_every_schema_key():
    from attnbench.suite import SCHEMA

    text = (DOCS / "suites.md").read_text(encoding="utf-8")
    for title, keys in SCHEMA.items():
        assert f"### {title}" in text
        for name in keys:
            assert f"| `{name}` |" in text, f"suite key {title}.{name} missing from docs/suites.md"


def _hookspecs() -> dict[str, object]:
    # pluggy marks each spec with an attribute named after the project.
    return {name: f for name, f in vars(hookspecs).items() if callable(f) and hasattr(f, "attnbench_spec")}


def _signature(f) -> str:
    """``name(arg: type, ...) -> type`` as written in hookspecs.py (annotations are strings there)."""
    params = [p.name if p.annotation is inspect.Parameter.empty else f"{p.name}: {p.annotation}"
              for p in inspect.signature(f).parameters.values()]
    returns = f.__annotations__.get("return")
    return f"{f.__name__}({', '.join(params)})" + (f" -> {returns}" if returns else "")


def _headings() -> set[str]:
    return set(re.findall(r"^## (.+?)\s*$", (DOCS / "hooks.md").read_text(encoding="utf-8"), re.MULTILINE))


def test_there_are_hookspecs_to_document():
    assert "attnbench_implementations" in _hookspecs()


@pytest.mark.parametrize("name", sorted(_hookspecs()))
def test_every_hook_is_documented_with_its_signature(name):
    signature = _signature(_hookspecs()[name])
    assert signature in _headings(), f"docs/hooks.md needs a heading '## {signature}'"


def test_every_documented_hook_exists():
    documented = {h.split("(")[0] for h in _headings() if re.match(r"attnbench_\w+\(", h)}
    assert documented == set(_hookspecs())


def test_every_implementation_field_is_in_the_reference_table():
    text = (DOCS / "hooks.md").read_text(encoding="utf-8")
    section = text.split("\n## Implementation\n", 1)[1].split("\n## ", 1)[0]
    # A table row names one field, or several as `plugin`, `version`.
    documented = {name for row in re.findall(r"^\| ((?:`\w+`(?:, )?)+) \|", section, re.MULTILINE)
                  for name in re.findall(r"`(\w+)`", row)}
    missing = {f.name for f in dataclasses.fields(Implementation)} - documented
    assert not missing, f"docs/hooks.md's Implementation table lacks {sorted(missing)}"


INCLUDE = re.compile(r"<!-- include: (?P<path>\S+) -->\n```\w*\n(?P<code>.*?)^```$", re.DOTALL | re.MULTILINE)


def test_tutorial_code_is_the_example_plugin_verbatim():
    text = (DOCS / "plugins.md").read_text(encoding="utf-8")
    included = {m["path"]: m["code"] for m in INCLUDE.finditer(text)}
    # The markers themselves must stay, or a block could drift unnoticed.
    assert {"plugins/attnbench-example/src/attnbench_example/__init__.py",
            "plugins/attnbench-example/pyproject.toml"} <= set(included)
    for path, code in included.items():
        assert code == (REPO / path).read_text(encoding="utf-8"), (
            f"docs/plugins.md's copy of {path} differs from the file: copy the file into the block after its marker")
