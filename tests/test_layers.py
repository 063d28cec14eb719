"""The package's layers, read from its imports: every ``import`` in every module, function-level included.

Each rule is one test, named for what it keeps: no import cycles; the
measuring layer knows nothing of implementations, reports or the run; reports
know nothing of the run's processes or its timing code; the plugin contract
stands alone. A rule that must bend gets changed here, on purpose, not worked
around with a lazy import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "attnbench"
PACKAGE = "attnbench"
CONTRACT = {"attnbench", "attnbench.hookspecs", "attnbench.implementation", "attnbench.case", "attnbench.masks"}
"""What a plugin author imports: it may import only itself, so a plugin never drags the harness in."""


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Each module of the package under ``root`` -> the package modules it imports, anywhere in its body.

    ``from attnbench.x import y`` counts as an import of ``attnbench.x.y`` when
    that is a module, else of ``attnbench.x``. Imports outside the package are
    left out.
    """
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(name, is_package, node.module, node.level)
                for alias in node.names:
                    child = f"{base}.{alias.name}"
                    targets.add(child if child in modules else base)
        graph[name] = {_owner(t, modules) for t in targets if _owner(t, modules)} - {name}
    return graph


def _absolute(module: str, is_package: bool, target: str | None, level: int) -> str:
    if level == 0:
        return target or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _owner(target: str, modules: dict[str, Path]) -> str | None:
    """The package module ``target`` names (itself, or the nearest enclosing module); None outside the package."""
    while target:
        if target in modules:
            return target
        target = target.rpartition(".")[0]
    return None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that starts and ends at the same module, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def _in(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def forbidden_imports(graph: dict[str, set[str]], importers: tuple[str, ...], banned: tuple[str, ...]) -> list[str]:
    """``importer -> imported`` for every module under ``importers`` that imports one under ``banned``."""
    return sorted(f"{a} -> {b}" for a, targets in graph.items() if _in(a, importers)
                  for b in targets if _in(b, banned))


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(PACKAGE_DIR)


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from ..a import f\nimport os\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.a"}
    assert find_cycle(graph) in (["pkg.a", "pkg.sub.b", "pkg.a"], ["pkg.sub.b", "pkg.a", "pkg.sub.b"])
    assert find_cycle({"x": {"y"}, "y": set()}) is None


def test_rule_no_import_cycles(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_rule_measure_knows_no_implementation_report_or_run(graph):
    """measure/ is usable alone: it measures whatever callable it is given."""
    bad = forbidden_imports(graph, ("attnbench.measure",),
                            ("attnbench.impls", "attnbench.report", "attnbench.runner", "attnbench.worker",
                             "attnbench.cli", "attnbench.executors", "attnbench.session", "attnbench.run_command"))
    assert not bad, "measure/ imports what it measures or what drives it: " + ", ".join(bad)


def test_rule_report_reads_records_only(graph):
    """Reports render results files: they never start workers or time anything."""
    bad = forbidden_imports(graph, ("attnbench.report",),
                            ("attnbench.runner", "attnbench.worker", "attnbench.measure.timing",
                             "attnbench.executors", "attnbench.session", "attnbench.run_command"))
    assert not bad, "report/ imports the run's machinery: " + ", ".join(bad)


def test_rule_contract_imports_only_itself(graph):
    """A plugin importing ``attnbench`` loads the contract and nothing of the harness."""
    bad = sorted(f"{m} -> {t}" for m in CONTRACT for t in graph[m] if t not in CONTRACT)
    assert not bad, "contract module imports beyond the contract: " + ", ".join(bad)


def test_rule_executors_use_the_runner_never_the_reverse(graph):
    """The runner defines what to measure and the worker process; executors decide where it runs."""
    bad = forbidden_imports(graph, ("attnbench.runner", "attnbench.worker"), ("attnbench.executors",))
    assert not bad, "the runner or the worker imports an executor: " + ", ".join(bad)
