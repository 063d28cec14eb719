"""The built-ins on attention variants (issue 18): measured ok on every variant each declares, dense and packed,
declined with the reason on the rest, and within their memory models."""

from __future__ import annotations

import dataclasses
import functools
import warnings

import pytest
import torch

from attnbench.case import Case
from attnbench.implementation import Implementation
from attnbench.impls import chunked, flex
from attnbench.measure import correctness as corr
from attnbench.measure.memory import call_peak_bytes
from attnbench.measurement import Request, measure
from attnbench.plugins import load_registry

REGISTRY = load_registry(environ={"ATTNBENCH_PLUGINS": ""})
BASE = dict(batch=2, heads_q=4, heads_kv=2, seq_q=48, seq_kv=80, head_dim=32, mask="causal")
RAGGED = dict(batch=3, heads_q=4, heads_kv=2, seq_q=40, seq_kv=50, head_dim=16, mask="causal",
              seqlens_q=(7, 40, 3), seqlens_kv=(9, 50, 3))
PAGED = dict(batch=3, heads_q=4, heads_kv=2, seq_q=1, seq_kv=50, head_dim=16, mask="causal",
             seqlens_q=(1, 1, 1), seqlens_kv=(20, 50, 5), page_size=16)
CASES = {
    "softcap": Case(**BASE, softcap=5.0),
    "alibi": Case(**BASE, bias="alibi"),
    "sinks": Case(**BASE, sinks=True),
    "head_dim_v": Case(**BASE, head_dim_v=16),
    "all_bf16": Case(**BASE, softcap=3.0, bias="alibi", sinks=True, head_dim_v=48, dtype="bfloat16"),
    "alibi_window": Case(**{**BASE, "mask": "sliding_window"}, window=12, bias="alibi", head_dim_v=24),
    "all_fwd_bwd": Case(**BASE, softcap=3.0, bias="alibi", sinks=True, head_dim_v=16, pass_="fwd+bwd"),
    "fp8_e4m3": Case(**BASE, dtype="float8_e4m3fn", sinks=True, softcap=4.0),
    "fp8_e5m2": Case(**BASE, dtype="float8_e5m2", bias="alibi"),
    "ragged_all": Case(**RAGGED, softcap=3.0, bias="alibi", sinks=True, head_dim_v=8, dtype="bfloat16"),
    "ragged_alibi_v": Case(**RAGGED, bias="alibi", head_dim_v=24),
    "ragged_fwd_bwd": Case(**RAGGED, softcap=3.0, bias="alibi", sinks=True, pass_="fwd+bwd"),
    "paged_alibi_sinks": Case(**PAGED, bias="alibi", sinks=True, softcap=4.0),
    "paged_fp8": Case(**PAGED, dtype="float8_e4m3fn", sinks=True),
}
# flex compiles every case (seconds on a CPU) and has no CPU backward: a few forward cases cover its variants.
FLEX_CASES = ("all_bf16", "ragged_all", "paged_alibi_sinks")
IMPLS = ("chunked", "flex", "sdpa", "sdpa.math", "sdpa.flash", "sdpa.padded")
PAIRS = [(name, key) for name in IMPLS for key, case in CASES.items()
         if REGISTRY.get(name).declines(case) is None and (name != "flex" or key in FLEX_CASES)]
# What torch itself refuses on the CPU, with its reason.
REFUSED = {("sdpa.flash", "head_dim_v"): "same last dimension", ("sdpa.flash", "alibi_window"): "same last dimension"}


def _measure(impl: Implementation, case: Case, memory: bool = False) -> dict:
    return measure(impl, Request(impl.name, case, 0, True, memory, False))


@pytest.mark.parametrize(("name", "key"), PAIRS, ids=[f"{n}-{k}" for n, k in PAIRS])
def test_builtin_is_ok_on_each_variant_it_declares(name, key):
    reply = _measure(REGISTRY.get(name), CASES[key])
    if (name, key) in REFUSED:
        assert reply["status"] == "unsupported" and REFUSED[name, key] in reply["reason"], reply
        return
    assert reply["status"] == "ok", reply["reason"]
    if CASES[key].needs_backward:
        assert {"dq_rel_err", "dk_rel_err", "dv_rel_err"} <= set(reply["metrics"])


def test_every_builtin_is_measured_on_each_variant_it_declares():
    for name in IMPLS:
        impl = REGISTRY.get(name)
        covered = {(k, CASES[k].dtype) for n, k in PAIRS if n == name}
        mods = {m for k, _ in covered for m in CASES[k].score_mods}
        assert mods == set(impl.score_mods), name
        assert impl.head_dim_v == any(CASES[k].value_dim != CASES[k].head_dim for k, _ in covered), name
        assert {d for _, d in covered if d.itemsize == 1} == {d for d in impl.dtypes if d.itemsize == 1}, name


@pytest.mark.parametrize(("name", "case", "reason"), [
    ("sdpa", CASES["softcap"], "softcap not supported"),
    ("sdpa", CASES["sinks"], "sinks not supported"),
    ("sdpa.math", CASES["fp8_e4m3"], "dtype float8_e4m3fn not supported"),
    ("sdpa.padded", CASES["ragged_all"], "sinks, softcap not supported"),
    ("flex", CASES["fp8_e5m2"], "dtype float8_e5m2 not supported"),
])
def test_what_a_builtin_does_not_declare_is_declined_with_the_reason(name, case, reason):
    assert reason in REGISTRY.get(name).declines(case)


@pytest.mark.parametrize("key", ["all_fwd_bwd", "all_bf16", "alibi_window", "fp8_e4m3", "ragged_fwd_bwd"])
def test_chunked_over_many_tiles_is_ok(key):
    """Small blocks: sinks, ALiBi and softcap carried through the online softmax across tiles and chunks."""
    impl = dataclasses.replace(REGISTRY.get("chunked"), name="chunked.small",
                               build=functools.partial(chunked.build, q_block=16, kv_block=32))
    reply = _measure(impl, CASES[key])
    assert reply["status"] == "ok", reply["reason"]


@pytest.mark.parametrize("key", ["sinks", "ragged_all"])
def test_flex_sinks_by_log_sum_exp(key):
    """The path flex takes where its compiled kernel returns the log-sum-exp (CUDA), run here on the unfused
    flex_attention (the CPU's compiled kernel returns none): out x sigmoid(lse - sink) matches the reference."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    case = CASES[key]
    inputs = corr.make_inputs(case, 0)
    fn = flex.attend(case, flex_attention, create_block_mask, sinks_by_lse=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unfused path's performance warning
        out = fn(inputs.q, inputs.k, inputs.v, **inputs.keywords)
    expected = corr.reference_outputs(inputs, case, dtype=torch.float64)[0]
    assert corr.error_metrics(out, expected)["rel_err"] < (1e-5 if case.dtype == torch.float32 else 1e-2)
    dropped = {**inputs.keywords, "sinks": torch.full_like(inputs.keywords["sinks"], -1e4)}
    assert corr.error_metrics(fn(inputs.q, inputs.k, inputs.v, **dropped), expected)["rel_err"] > 0.1


@pytest.mark.parametrize(("name", "key"), [
    ("chunked", "all_fwd_bwd"), ("chunked", "all_bf16"), ("chunked", "fp8_e4m3"), ("chunked", "ragged_all"),
    ("sdpa", "alibi"), ("sdpa", "head_dim_v"), ("sdpa.math", "alibi_window"), ("sdpa.padded", "ragged_alibi_v"),
])
def test_memory_model_covers_the_measured_peak(name, key):
    impl, case = REGISTRY.get(name), CASES[key]
    if case.needs_backward:  # a bigger case, so that the score tiles dominate what is measured
        case = dataclasses.replace(case, seq_q=256, seq_kv=256)
    reply = _measure(impl, case, memory=True)
    assert reply["status"] == "ok", reply["reason"]
    measured, predicted = reply["metrics"]["peak_bytes"], call_peak_bytes(case, impl)
    assert measured <= predicted <= 8 * measured, (measured, predicted)
