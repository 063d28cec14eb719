"""Attention variants (issue 18): the contract, the reference, FLOPs, and planted defects that must fail."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from attnbench import variants
from attnbench.case import Case
from attnbench.implementation import Implementation, Unsupported
from attnbench.impls import eager
from attnbench.measure import correctness as corr
from attnbench.measurement import Request, measure

BASE = dict(batch=2, heads_q=4, heads_kv=2, seq_q=48, seq_kv=80, head_dim=32, mask="causal")


def _measure(impl: Implementation, case: Case) -> dict:
    return measure(impl, Request(impl.name, case, 0, True, False, False))


def _eager_impl(name: str, build, **caps) -> Implementation:
    return Implementation(name=name, build=build, masks=frozenset({"none", "causal"}), gqa=True, backward=True,
                          head_dim_v=True, score_mods=frozenset(variants_all()), **caps)


def variants_all() -> tuple[str, ...]:
    return ("softcap", "alibi", "sinks")


# --- the contract ---------------------------------------------------------------


def test_flops_of_an_mla_shaped_case_follow_flashattention():
    # FlashAttention's hopper/benchmark_attn.py: 2 * seqlen_q * seqlen_k * heads * (headdim + headdim_v) per batch.
    case = Case(2, 16, 16, 512, 512, 192, head_dim_v=128)
    assert case.forward_flops() == 2 * 2 * 512 * 512 * 16 * (192 + 128)
    assert case.flops() == case.forward_flops()
    backward = dataclasses.replace(case, pass_="fwd+bwd")
    assert backward.flops() == pytest.approx(3.5 * case.forward_flops())
    causal = dataclasses.replace(case, mask="causal")
    assert causal.forward_flops() == 2 * 16 * (512 * 513 // 2) * (2 * 192 + 2 * 128)


def test_score_variants_add_no_flops():
    plain = Case(**BASE)
    assert Case(**BASE, softcap=30.0, bias="alibi", sinks=True).flops() == plain.flops()


def test_shapes_and_labels():
    case = Case(**BASE, head_dim_v=16, softcap=50.0, bias="alibi", sinks=True)
    assert case.v_shape == (2, 2, 80, 16) and case.out_shape == (2, 4, 48, 16)
    assert case.label() == "B2 H4/2 N48x80 D32/16 float32 causal softcap50 alibi sinks fwd"
    assert case.score_mods == frozenset({"softcap", "alibi", "sinks"})
    assert Case.from_dict(case.to_dict()) == case
    assert not {"head_dim_v", "softcap", "bias", "sinks"} & set(Case(**BASE).to_dict())  # old journals' keys stay
    fp8 = Case(**BASE, dtype="float8_e4m3fn")
    assert fp8.out_dtype == torch.bfloat16 and fp8.io_bytes() < Case(**BASE, dtype="bfloat16").io_bytes()


@pytest.mark.parametrize("bad, message", [
    (dict(softcap=0.0), "softcap must be"), (dict(softcap=float("nan")), "softcap must be"),
    (dict(bias="rope"), "bias 'rope'"), (dict(sinks=1), "sinks must be"), (dict(head_dim_v=0), "head_dim_v"),
    (dict(dtype="float8_e4m3fn", pass_="fwd+bwd"), "forward only"),
])
def test_bad_variants_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        Case(**{**BASE, **bad})


def test_undeclared_variants_are_declined_with_the_reason():
    plain = Implementation(name="plain", build=eager.build, masks=frozenset({"none", "causal"}), gqa=True)
    assert "softcap not supported" in plain.declines(Case(**BASE, softcap=5.0))
    assert "alibi, sinks not supported" in plain.declines(Case(**BASE, bias="alibi", sinks=True))
    assert "head_dim_v (16)" in plain.declines(Case(**BASE, head_dim_v=16))
    assert "dtype float8_e4m3fn not supported" in plain.declines(Case(**BASE, dtype="float8_e4m3fn"))
    assert plain.declines(Case(**BASE)) is None


def test_alibi_slopes_are_the_standard_geometric_ones():
    assert torch.allclose(variants.alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    twelve = variants.alibi_slopes(12)  # 8 of the power of two below, then every other one of 16's
    assert torch.allclose(twelve[:8], variants.alibi_slopes(8))
    assert torch.allclose(twelve[8:], variants.alibi_slopes(16)[0::2][:4])


def test_fp8_inputs_are_quantised_per_sequence_and_kv_head():
    case = Case(**BASE, dtype="float8_e4m3fn")
    inputs = corr.make_inputs(case, 3)
    assert inputs.q.dtype == torch.float8_e4m3fn
    for name in ("q", "k", "v"):
        descale = inputs.keywords[f"{name}_descale"]
        assert descale.shape == (2, 2) and descale.dtype == torch.float32
    # Each (batch, kv head)'s largest magnitude lands on the dtype's largest value.
    k = inputs.k.float().abs().amax(dim=(2, 3))
    assert torch.equal(k, torch.full_like(k, torch.finfo(torch.float8_e4m3fn).max))
    gen = torch.Generator().manual_seed(3)
    raw_q = torch.randn(case.q_shape, generator=gen)
    real = variants.dequantise(case, inputs.q, inputs.keywords["q_descale"], "q", torch.float64)
    assert (real - raw_q.double()).abs().max() <= raw_q.abs().max() * 2 ** -3  # e4m3: 3 mantissa bits


def test_fp8_paged_pools_are_quantised_by_the_sequence_that_owns_each_page():
    case = Case(3, 4, 2, 1, 40, 16, mask="causal", seqlens_q=(1, 1, 1), seqlens_kv=(40, 17, 5), page_size=16,
                dtype="float8_e5m2")
    inputs = corr.make_inputs(case, 0)
    table, descale = inputs.table, inputs.keywords["k_descale"]
    real = variants.dequantise(case, inputs.k, descale, "k", torch.float64, table)
    for i, pages in enumerate(case.pages_per_sequence):
        for page in table[i, :pages].tolist():
            assert torch.equal(real[page], inputs.k[page].double() * descale[i].double()[None, :, None])


def test_the_reference_agrees_with_an_independent_float64_implementation():
    from attnbench.impls.reference import reference_attention
    case = Case(**BASE, head_dim_v=24, softcap=4.0, bias="alibi", sinks=True)
    inputs = corr.make_inputs(case, 1)
    oracle = corr.reference_outputs(inputs, case, dtype=torch.float64)[0]
    written_out = reference_attention(inputs.q, inputs.k, inputs.v, case, **inputs.keywords)
    assert (oracle - written_out).abs().max() < 1e-12


def test_sinks_take_a_real_share_of_each_row():
    case = Case(**BASE, sinks=True)
    inputs = corr.make_inputs(case, 0)
    with_sinks = corr.reference_outputs(inputs, case, dtype=torch.float64)[0]
    without = corr.reference_outputs(inputs, dataclasses.replace(case, sinks=False), dtype=torch.float64)[0]
    assert corr.error_metrics(without, with_sinks)["rel_err"] > 0.2


# --- every variant on eager, and planted defects ----------------------------------

VARIANT_CASES = [
    Case(**BASE, softcap=5.0), Case(**BASE, bias="alibi"), Case(**BASE, sinks=True), Case(**BASE, head_dim_v=16),
    Case(**BASE, softcap=5.0, bias="alibi", sinks=True, head_dim_v=48, pass_="fwd+bwd", dtype="bfloat16"),
    Case(**BASE, dtype="float8_e4m3fn"), Case(**BASE, dtype="float8_e5m2", sinks=True),
    Case(3, 4, 2, 100, 120, 16, mask="causal", seqlens_q=(37, 100, 5), seqlens_kv=(40, 120, 5), softcap=3.0,
         bias="alibi", sinks=True, head_dim_v=8, dtype="bfloat16"),
    Case(3, 4, 2, 1, 120, 16, mask="causal", seqlens_q=(1, 1, 1), seqlens_kv=(40, 120, 5), page_size=16,
         dtype="float8_e4m3fn", sinks=True),
    Case(2, 4, 2, 3, 50, 16, mask="causal", seqlens_q=(3, 1), seqlens_kv=(50, 17), page_size=16, head_dim_v=8),
]


@pytest.mark.parametrize("case", VARIANT_CASES, ids=lambda c: c.label())
@pytest.mark.parametrize("name", ["reference", "eager"])
def test_reference_and_eager_are_correct_on_every_variant(name, case):
    from attnbench.plugins import load_registry
    impl = load_registry().implementations[name]
    assert impl.declines(case) is None
    reply = _measure(impl, case)
    assert reply["status"] == "ok", reply["reason"]
    assert math.isfinite(reply["metrics"]["rel_err"])


def _ignoring(what: str):
    """eager's build, with one variant planted away."""
    def build(case: Case):
        if what == "head_dim_v":
            inner = eager.build(case)

            def truncated(q, k, v, **kw):
                out = inner(q, k, v, **kw)
                return torch.cat([out[..., : case.value_dim // 2], torch.zeros_like(out[..., case.value_dim // 2:])], -1)
            return truncated
        if what == "descales":
            inner = eager.build(dataclasses.replace(case, dtype="bfloat16"))

            def raw(q, k, v, q_descale, k_descale, v_descale, **kw):  # reads fp8 values as if they were real
                return inner(q.to(torch.bfloat16), k.to(torch.bfloat16), v.to(torch.bfloat16), **kw)
            return raw
        field = {"softcap": dict(softcap=None), "alibi": dict(bias=None), "sinks": dict(sinks=False)}[what]
        inner = eager.build(dataclasses.replace(case, **field))
        dropped = {"alibi": "alibi_slopes", "sinks": "sinks"}.get(what)

        def planted(q, k, v, **kw):
            kw.pop(dropped, None)
            return inner(q, k, v, **kw)
        return planted
    return build


@pytest.mark.parametrize("what, case", [
    ("softcap", Case(**BASE, softcap=2.0)),
    ("softcap", Case(**BASE, softcap=2.0, dtype="bfloat16", pass_="fwd+bwd")),
    ("alibi", Case(**BASE, bias="alibi")),
    ("alibi", Case(**BASE, bias="alibi", dtype="bfloat16")),
    ("sinks", Case(**BASE, sinks=True, dtype="bfloat16")),
    ("head_dim_v", Case(**BASE, head_dim_v=48)),
    ("descales", Case(**BASE, dtype="float8_e4m3fn")),
    ("descales", Case(3, 4, 2, 1, 120, 16, mask="causal", seqlens_q=(1, 1, 1), seqlens_kv=(40, 120, 5),
                      page_size=16, dtype="float8_e5m2")),
], ids=lambda v: v if isinstance(v, str) else v.label())
def test_an_implementation_that_ignores_a_variant_is_incorrect(what, case):
    from attnbench.packing import per_sequence
    build = _ignoring(what)
    impl = _eager_impl(f"planted.{what.replace('_', '-')}", (lambda c: per_sequence(c, build)) if case.packed else build,
                       dtypes=frozenset({case.dtype}), ragged=True, paged=True)
    reply = _measure(impl, case)
    assert reply["status"] == "incorrect", reply
    assert "limit" in reply["reason"] or "NaN" in reply["reason"]


def test_an_output_without_the_value_head_dim_is_incorrect():
    def build(case):
        inner = eager.build(dataclasses.replace(case, head_dim_v=None))
        return lambda q, k, v, **kw: inner(q, k, v[..., : case.head_dim] if v.shape[-1] >= case.head_dim
                                           else torch.cat([v] * 2, -1)[..., : case.head_dim], **kw)
    reply = _measure(_eager_impl("planted.shape", build), Case(**BASE, head_dim_v=16))
    assert reply["status"] == "incorrect" and "output shape" in reply["reason"]


def test_unsupported_stays_a_clean_skip():
    def build(case):
        raise Unsupported("no fp8 here")
    reply = _measure(_eager_impl("planted.none", build, dtypes=frozenset({torch.float8_e4m3fn})),
                     Case(**BASE, dtype="float8_e4m3fn"))
    assert reply["status"] == "unsupported" and reply["reason"] == "no fp8 here"


# --- suites ------------------------------------------------------------------------


def test_suite_keys_give_the_variant_fields(tmp_path):
    from attnbench.suite import SuiteError, load_suite
    path = tmp_path / "s.yaml"
    path.write_text("""\
name: v
defaults: {seq: 32, heads_q: 4, head_dim: 16, mask: causal}
include_cases:
  - {softcap: 30}
  - {bias: alibi, sinks: true}
  - {head_dim_v: 8, dtype: float8_e4m3fn}
  - {model: gemma-2-9b}
  - {model: gemma-2-9b, softcap: 5.0}
  - {model: deepseek-v3, seq_q: 1, seq_kv: 64}
""")
    cases = load_suite(path).cases("cpu")
    assert [(c.softcap, c.bias, c.sinks, c.value_dim, c.dtype_name) for c in cases[:3]] == [
        (30, None, False, 16, "float32"), (None, "alibi", True, 16, "float32"), (None, None, False, 8, "float8_e4m3fn")]
    gemma = [c for c in cases if c.head_dim == 256]
    assert [(c.mask, c.window, c.softcap) for c in gemma] == [("causal", None, 50.0), ("sliding_window", 4096, 50.0),
                                                               ("causal", None, 5.0), ("sliding_window", 4096, 5.0)]
    mla = [c for c in cases if c.heads_q == 128]
    assert [(c.heads_kv, c.head_dim, c.value_dim) for c in mla] == [(128, 192, 128), (1, 576, 512)]
    path.write_text("name: v\ndefaults: {seq: 8}\ninclude_cases:\n  - {bias: rope}\n")
    with pytest.raises(SuiteError, match="include_cases"):
        load_suite(path).cases("cpu")
    path.write_text("name: v\ndefaults: {seq: 8, dtype: float8_e5m2, pass: fwd+bwd}\nmatrix: {}\n")
    with pytest.raises(SuiteError, match="forward only"):
        load_suite(path).cases("cpu")


def test_where_matches_variant_and_length_fields():
    from attnbench.run_command import filter_cases
    cases = [Case(**BASE), Case(**BASE, softcap=5.0), Case(3, 4, 2, 9, 9, 16, seqlens_q=(3, 9, 5), seqlens_kv=(3, 9, 5))]
    assert filter_cases(cases, ["softcap=5.0"]) == [cases[1]]
    assert filter_cases(cases, ["sinks=False"]) == cases
    assert filter_cases(cases, ["seqlens_q=3:9:5"]) == [cases[2]]
    assert filter_cases(cases, ["softcap=None"]) == [cases[0], cases[2]]


@pytest.mark.parametrize("case", VARIANT_CASES + [Case(**BASE, scale=0.5, softcap=50.0)], ids=lambda c: c.label())
def test_report_labels_name_the_variants_as_the_case_does(case):
    from attnbench.report.format import case_label
    assert case_label(case.to_dict()) == case.label()


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2"])
def test_timing_rotates_over_an_fp8_twin_with_v_negated(dtype):
    from attnbench.measurement import timing_trials
    from attnbench.plugins import load_registry
    case = Case(**BASE, dtype=dtype)
    request = Request("eager", case, 0, True, True, True, trials=[0])
    trial, twin = timing_trials(request)
    assert torch.equal(twin.inputs.v.float(), -trial.inputs.v.float())
    reply = measure(load_registry().implementations["eager"], request)
    assert reply["status"] == "ok", reply["reason"]
    assert reply["metrics"]["timing_input_sets"] == 2
