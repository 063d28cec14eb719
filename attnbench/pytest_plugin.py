"""attnbench's pytest plugin (``pytest11`` entry point): the conformance kit for plugin authors.

    pytest --attnbench-impl mylib.fast [--attnbench-suite suites/x.yaml] [--attnbench-device cuda]
           [--attnbench-cases dense|packed|variants]

runs, for each named implementation, every conformance case (or the suite's
cases) as a parametrized test: whatever the implementation declares must build
and pass attnbench's correctness rule against float64, with inputs untouched;
a case it cannot run must raise ``Unsupported`` with a reason (the test is then
skipped with that reason). The grid includes ragged and paged batches, checked
on implementations that declare ``ragged`` or ``paged`` (called with the
varlen or kvcache keywords, paged ones through the harness's shuffled block
table), and variant cases (value head dims, softcap, ALiBi, sinks, fp8 inputs),
given to an implementation only for the variants and dtypes it declares
(``attnbench.conformance.cases_for``). ``--attnbench-cases dense|packed|variants``
keeps one kind. With pytest-benchmark active, the same cases are
also timed by its ``benchmark`` fixture, the case fields in ``extra_info``.

Fixtures for authors' own tests: ``attnbench_registry``, ``attnbench_impl``,
``attnbench_case``, ``attnbench_inputs``, ``attnbench_step``.

Nothing heavy is imported until an option or fixture is used, so having
attnbench installed costs unrelated pytest runs nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CONFORMANCE_TESTS = Path(__file__).with_name("conformance_tests.py")
_REGISTRY = pytest.StashKey[object]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("attnbench", "attnbench conformance kit")
    group.addoption("--attnbench-impl", action="append", default=[], metavar="NAME",
                    help="run attnbench's conformance cases on this implementation (repeatable)")
    group.addoption("--attnbench-suite", metavar="SUITE", help="use this suite's cases instead of the conformance grid")
    group.addoption("--attnbench-device", default="auto", choices=("auto", "cpu", "cuda"),
                    help="device for the conformance cases (default: cuda when available)")
    group.addoption("--attnbench-cases", default="all", choices=("all", "dense", "packed", "variants"),
                    help="check every case (default), only dense ones, only ragged and paged ones, or only the "
                         "variant and fp8 ones")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "attnbench: attnbench conformance case")
    if config.getoption("attnbench_impl"):
        # Collect the kit's tests beside whatever the author asked pytest to run.
        config.args.append(str(CONFORMANCE_TESTS))


def _device(config: pytest.Config) -> str:
    import torch

    requested = config.getoption("attnbench_device")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def _cases(config: pytest.Config, name: str) -> list:
    """The cases implementation ``name`` is checked on: the suite's, or the conformance grid with the variant and
    fp8 cases it declares (the plain grid when it is not installed: its fixture then says so)."""
    from attnbench.conformance import cases_for, conformance_cases, is_variant
    from attnbench.suite import load_suite

    device = _device(config)
    suite = config.getoption("attnbench_suite")
    if suite:
        cases = load_suite(suite).cases(device)
    else:
        impl = _registry(config).implementations.get(name)
        cases = cases_for(impl, device) if impl else [c for c in conformance_cases(device) if not is_variant(c)]
    kind = config.getoption("attnbench_cases")
    if kind == "variants":
        return [case for case in cases if is_variant(case)]
    return cases if kind == "all" else [case for case in cases if case.packed == (kind == "packed")]


def _registry(config: pytest.Config):
    """The installed implementations, loaded once per session (collection and fixtures share them)."""
    registry = config.stash.get(_REGISTRY, None)
    if registry is None:
        from attnbench.plugins import load_registry

        registry = config.stash[_REGISTRY] = load_registry()
    return registry


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "attnbench_pair" not in metafunc.fixturenames:
        return
    names = metafunc.config.getoption("attnbench_impl")
    params = [pytest.param((name, case), id=f"{name}-{case.label().replace(' ', '-')}")
              for name in names for case in _cases(metafunc.config, name)]
    metafunc.parametrize("attnbench_pair", params)


@pytest.fixture(scope="session")
def attnbench_registry(pytestconfig):
    """Every implementation installed, as ``attnbench list`` sees them."""
    return _registry(pytestconfig)


@pytest.fixture
def attnbench_impl(attnbench_registry, attnbench_pair):
    """The implementation under test (from ``--attnbench-impl``)."""
    name = attnbench_pair[0]
    if name not in attnbench_registry.implementations:
        failures = "; ".join(f"{p.name}: {', '.join(p.errors)}" for p in attnbench_registry.failures)
        pytest.fail(f"no implementation {name!r} is installed" + (f" (plugin failures: {failures})" if failures else ""))
    return attnbench_registry.get(name)


@pytest.fixture
def attnbench_case(attnbench_pair):
    """The case under test: a ``attnbench.Case``."""
    return attnbench_pair[1]


@pytest.fixture
def attnbench_inputs(attnbench_case):
    """Seeded random q, k, v (and dO for backward cases) for the case."""
    from attnbench.measure.correctness import make_inputs

    return make_inputs(attnbench_case, seed=1234)


@pytest.fixture
def attnbench_step(attnbench_impl, attnbench_case, attnbench_inputs):
    """A zero-argument callable running the case's timed region (forward, backward, or both), built."""
    from attnbench.implementation import Unsupported
    from attnbench.worker import make_step

    reason = attnbench_impl.declines(attnbench_case)
    if reason:
        pytest.skip(f"not declared: {reason}")
    try:
        fn = attnbench_impl.build(attnbench_case)
    except Unsupported as exc:
        pytest.skip(f"Unsupported: {exc.reason}")
    return make_step(fn, attnbench_impl, attnbench_case, attnbench_inputs)
