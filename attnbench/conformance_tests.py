"""Tests the attnbench pytest plugin adds for ``--attnbench-impl`` (collected from this file)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.attnbench


def test_conformance(attnbench_impl, attnbench_case):
    """Declared cases build and are correct, inputs untouched; refusals carry a reason."""
    from attnbench.worker import Request, measure

    reason = attnbench_impl.declines(attnbench_case)
    if reason:
        pytest.skip(f"not declared: {reason}")
    reply = measure(attnbench_impl, Request(impl=attnbench_impl.name, case=attnbench_case, seed=0,
                                            check_correctness=True, measure_memory=False, measure_time=False))
    if reply["status"] == "unsupported":
        pytest.skip(f"Unsupported: {reply['reason']}")
    metrics = reply["metrics"]
    if not attnbench_impl.exact:
        assert reply["status"] == "ok", reply["reason"]
        assert metrics.get("rel_err") is not None, "approximate output must be finite"
        return
    assert reply["status"] == "ok", (
        f"{attnbench_impl.name} on {attnbench_case.label()}: {reply['status']}: {reply['reason']} "
        f"(rel err {metrics.get('rel_err')}, plain {attnbench_case.dtype_name} {metrics.get('baseline_rel_err')})"
    )


def test_unsupported_carries_a_reason(attnbench_impl, attnbench_case):
    """Unsupported raised from build must say why (the reason fills every table's hole)."""
    from attnbench.implementation import Unsupported

    if attnbench_impl.declines(attnbench_case):
        pytest.skip("not declared")
    try:
        attnbench_impl.build(attnbench_case)
    except Unsupported as exc:
        assert exc.reason.strip()


def test_timing(request, attnbench_step, attnbench_case):
    """With pytest-benchmark active, time the case with its ``benchmark`` fixture."""
    try:
        benchmark = request.getfixturevalue("benchmark")
    except pytest.FixtureLookupError:
        pytest.skip("pytest-benchmark is not installed")
    if attnbench_case.device == "cuda":
        import torch

        def step():
            attnbench_step()
            torch.cuda.synchronize()  # the kernel's time, not its launch's
    else:
        step = attnbench_step
    step()  # warm-up outside the measurement
    benchmark.extra_info.update(attnbench_case.to_dict() | {"flops": attnbench_case.flops()})
    benchmark(step)
