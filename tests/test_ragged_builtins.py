"""The built-ins on ragged and paged batches: measured ok against the per-sequence float64 reference, within
their memory models, and a kernel that reads pages in pool order instead of through the table is incorrect."""

from __future__ import annotations

import math

import pytest
import torch

from attnbench.case import Case
from attnbench.implementation import Implementation
from attnbench.impls.eager import build as eager_build
from attnbench.impls.sdpa_padded import padded_mask
from attnbench.measure.memory import call_peak_bytes
from attnbench.measurement import Request, measure
from attnbench.packing import offsets, per_sequence
from attnbench.plugins import load_registry

REGISTRY = load_registry(environ={"ATTNBENCH_PLUGINS": ""})
IMPLS = ("eager", "reference", "chunked", "sdpa", "sdpa.padded", "flex")
CASES = {
    "self_causal_gqa": Case(3, 4, 2, 40, 40, 16, mask="causal", seqlens_q=(7, 40, 19), seqlens_kv=(7, 40, 19)),
    "cross_causal": Case(3, 4, 2, 20, 45, 16, mask="causal", seqlens_q=(3, 20, 1), seqlens_kv=(10, 45, 33)),
    "window_bf16": Case(2, 4, 4, 50, 50, 16, dtype=torch.bfloat16, mask="sliding_window", window=8,
                        seqlens_q=(50, 21), seqlens_kv=(50, 21)),
    "fwd_bwd": Case(3, 4, 2, 40, 40, 16, mask="causal", seqlens_q=(7, 40, 19), seqlens_kv=(7, 40, 19),
                    pass_="fwd+bwd"),
    "decode_p16": Case(4, 4, 2, 1, 37, 16, mask="causal", seqlens_q=(1, 1, 1, 1), seqlens_kv=(37, 5, 16, 30),
                       page_size=16),
    "mixed_p16": Case(3, 4, 1, 30, 50, 16, mask="causal", seqlens_q=(30, 1, 4), seqlens_kv=(30, 50, 21),
                      page_size=16),
}
# flex compiles every case (seconds on a CPU) and has no CPU backward: it gets a ragged, a cross and a paged one.
FLEX_CASES = ("self_causal_gqa", "window_bf16", "mixed_p16")
MEMORY_FACTOR = 8
PAIRS = [(name, shape) for name in IMPLS for shape in CASES if name != "flex" or shape in FLEX_CASES]


def _measure(impl: Implementation, case: Case, memory: bool = True) -> dict:
    return measure(impl, Request(impl.name, case, 0, check_correctness=True, measure_memory=memory, measure_time=False))


@pytest.mark.parametrize(("name", "shape"), PAIRS)
def test_builtin_is_ok_on_packed_cases_and_within_its_memory_model(name, shape):
    impl, case = REGISTRY.get(name), CASES[shape]
    assert impl.declines(case) is None, impl.declines(case)
    reply = _measure(impl, case)
    assert reply["status"] == "ok", reply["reason"]
    metrics = reply["metrics"]
    errors = [value for key, value in metrics.items() if key.endswith("rel_err")]
    assert errors and all(math.isfinite(e) for e in errors), metrics
    if case.needs_backward:
        assert math.isfinite(metrics["dq_rel_err"]) and math.isfinite(metrics["dv_rel_err"])
    measured, predicted = metrics["peak_bytes"], call_peak_bytes(case, impl)
    assert measured <= predicted <= MEMORY_FACTOR * measured, (measured, predicted)


def test_padded_sdpa_declines_dense_batches_and_masks_no_row_empty():
    impl = REGISTRY.get("sdpa.padded")
    assert "packed batches only" in impl.declines(Case(2, 4, 4, 16, 16, 16))
    case = CASES["cross_causal"]
    allowed = padded_mask(case)
    assert allowed.shape == (3, 1, 20, 45) and allowed.any(dim=-1).all()
    # Sequence 0: 3 queries over 10 keys, bottom-right causal; nothing past its keys; its padded rows see key 0.
    assert allowed[0, 0, 0, :8].all() and not allowed[0, 0, 0, 8:].any()
    assert allowed[0, 0, 2, :10].all() and not allowed[0, 0, :3, 10:].any()
    assert allowed[0, 0, 3:, 0].all() and not allowed[0, 0, 3:, 1:].any()


def _pool_order(case: Case) -> torch.Tensor:
    """The block table that lays sequences out page after page, in pool order."""
    pages = case.pages_per_sequence
    table = torch.zeros(case.batch, max(pages), dtype=torch.int32)
    for i, start in enumerate(offsets(pages)[:-1]):
        table[i, : pages[i]] = torch.arange(start, start + pages[i], dtype=torch.int32)
    return table


@pytest.mark.parametrize("honest", [True, False], ids=["through_table", "pool_order"])
def test_reading_pages_in_pool_order_is_incorrect(honest):
    """eager a sequence at a time, handed the harness's shuffled table or a table of its own in pool order."""
    case = CASES["mixed_p16"]

    def build(case):
        packed = per_sequence(case, eager_build)
        in_order = _pool_order(case).to(case.device)

        def fn(q, k, v, *, block_table, **keywords):
            return packed(q, k, v, block_table=block_table if honest else in_order, **keywords)
        return fn

    impl = Implementation(name="test.pool_order", build=build, masks=frozenset({"causal"}), gqa=True, paged=True)
    reply = _measure(impl, case, memory=False)
    assert reply["status"] == ("ok" if honest else "incorrect"), reply["reason"]
    if not honest:
        assert reply["reason"].startswith("out:"), reply["reason"]
