"""Packed and paged batches in suites: seqlens, lengths, batch_spec and page_size, and the suites that ship them."""

import statistics
import textwrap
from pathlib import Path

import pytest

from attnbench.run_command import with_model
from attnbench.suite import SuiteError, load_suite
from attnbench.suite.lengths import LengthDraw, parse_batch_spec

SUITES = Path(__file__).parent.parent / "suites"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def packed(case) -> tuple:
    return case.batch, case.seq_q, case.seq_kv, case.seqlens_q, case.seqlens_kv, case.page_size


# --- the keys ------------------------------------------------------------------------


def test_each_key_gives_the_case_fields(tmp_path):
    suite = load_suite(write(tmp_path, """
        name: t
        defaults: {heads_q: 4, head_dim: 16}
        include_cases:
          - {seqlens: [3, 9, 5]}
          - {seqlens_q: [1, 4], seq_kv: 512, mask: causal}
          - {seqlens_kv: [100, 300, 200], seq_q: 1}
          - {seqlens_q: [2, 6], seqlens_kv: [8, 6]}
          - {lengths: {dist: fixed, mean: 64}, batch: 3}
          - {batch_spec: 2q2k_3q1s1k, page_size: 16}
          - {seq: 40, batch: 2, page_size: 16}
    """))
    cases = suite.cases("cpu")
    assert [packed(c) for c in cases] == [
        (3, 9, 9, (3, 9, 5), (3, 9, 5), None),
        (2, 4, 512, (1, 4), (512, 512), None),
        (3, 1, 300, (1, 1, 1), (100, 300, 200), None),
        (2, 6, 8, (2, 6), (8, 6), None),
        (3, 64, 64, (64, 64, 64), (64, 64, 64), None),
        (5, 2048, 2048, (2048, 2048, 1, 1, 1), (2048, 2048, 1024, 1024, 1024), 16),
        # A dense case with a paged cache is a packed one of equal lengths.
        (2, 40, 40, (40, 40), (40, 40), 16),
    ]
    assert cases[5].batch_shape() == "2q2k_3q1s1k p16"
    assert cases[0].batch_shape() == "ragged 3..9, 17 tok"
    assert all(c.heads_q == 4 and c.head_dim == 16 for c in cases)


def test_matrix_lists_of_lengths_are_one_case_each(tmp_path):
    suite = load_suite(write(tmp_path, """
        name: t
        matrix:
          seqlens: [[4, 8], [16, 2, 1]]
          page_size: [null, 16]
        cuda:
          defaults: {batch: 4}
          matrix:
            lengths:
              - {dist: uniform, min: 8, max: 16}
              - {dist: lognormal, mean: 32, max: 128, sigma: 0.5, seed: 2}
    """))
    assert [(c.seqlens_q, c.page_size) for c in suite.cases("cpu")] == [
        ((4, 8), None), ((16, 2, 1), None), ((4, 8), 16), ((16, 2, 1), 16)]
    cuda = suite.cases("cuda")
    # The suite's page_size list still applies: each draw, contiguous and paged.
    assert [c.page_size for c in cuda] == [None, None, 16, 16]
    assert all(c.batch == 4 and c.seqlens_q == c.seqlens_kv for c in cuda)
    assert cuda[0].seqlens_q == cuda[2].seqlens_q and cuda[1].seqlens_q == cuda[3].seqlens_q
    assert all(8 <= n <= 16 for n in cuda[0].seqlens_q) and all(1 <= n <= 128 for n in cuda[1].seqlens_q)


def test_the_most_specific_mapping_with_lengths_gives_all_of_them(tmp_path):
    suite = load_suite(write(tmp_path, """
        name: t
        defaults:
          batch_spec: 4q1s1k
        matrix:
          heads_q: 2
        cpu:
          defaults:
            seq_q: 64
            seqlens_kv: [10, 20]     # replaces the batch spec altogether: the queries are seq_q's
    """))
    assert packed(suite.cases("cpu")[0]) == (2, 64, 20, (64, 64), (10, 20), None)
    assert packed(suite.cases("cuda")[0]) == (4, 1, 1024, (1,) * 4, (1024,) * 4, None)


# --- vLLM's batch-spec grammar ---------------------------------------------------------


@pytest.mark.parametrize("spec,pairs", [
    ("q2k", [(2048, 2048)]),
    ("8q1s1k", [(1, 1024)] * 8),
    ("32q1s1k", [(1, 1024)] * 32),
    ("16q4s1k", [(4, 1024)] * 16),
    ("2q2k_32q1s1k", [(2048, 2048)] * 2 + [(1, 1024)] * 32),
    ("1q256s1k_3q1s1k", [(256, 1024)] + [(1, 1024)] * 3),
    ("q100s300_2q7", [(100, 300), (7, 7), (7, 7)]),
])
def test_batch_spec_grammar(spec, pairs):
    assert list(parse_batch_spec(spec)) == pairs


@pytest.mark.parametrize("spec,message", [
    ("", "an empty group"),
    ("2q2k_", "an empty group"),
    ("2q2k__q1", "an empty group"),
    ("2x1s1k", "group '2x1s1k' is not [<count>]q<q_len>[s<kv_len>]"),
    ("2Q2K", "group '2Q2K' is not"),
    ("q", "group 'q' is not"),
    ("2kq1s1k", "group '2kq1s1k' is not"),
    ("q1kv1k", "group 'q1kv1k' is not"),   # vLLM's older spelling of s
    ("0q1", "has a count or length of 0"),
    ("q0s4", "has a count or length of 0"),
    ("q4s2", "group 'q4s2' has 4 queries over 2 keys; kv_len must be at least q_len"),
])
def test_bad_batch_specs_say_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match="batch_spec") as info:
        parse_batch_spec(spec)
    assert message in str(info.value)


# --- drawn lengths ---------------------------------------------------------------------


def test_drawn_lengths_are_deterministic_prefixes_within_bounds():
    draw = LengthDraw("lognormal", mean=192, min=16, max=768)
    assert draw.draw(6) == LengthDraw("lognormal", mean=192, min=16, max=768).draw(6)
    assert draw.draw(40)[:6] == draw.draw(6)
    assert draw.draw(6) != LengthDraw("lognormal", mean=192, min=16, max=768, seed=1).draw(6)
    many = draw.draw(5000)
    assert min(many) == 16 and max(many) == 768   # clipped at both ends
    uniform = LengthDraw("uniform", min=5, max=9).draw(2000)
    assert set(uniform) == {5, 6, 7, 8, 9}
    assert LengthDraw("fixed", mean=100).draw(3) == (100, 100, 100)


def test_lognormal_mean_is_the_distribution_mean():
    # Barely clipped: the sample mean is the requested mean (mu = ln(mean) - sigma^2 / 2).
    for sigma in (0.5, 1.0):
        drawn = LengthDraw("lognormal", mean=1000, max=10**9, sigma=sigma).draw(20000)
        assert statistics.fmean(drawn) == pytest.approx(1000, rel=0.05)
    # The median sits below the mean by exp(sigma^2 / 2).
    assert statistics.median(LengthDraw("lognormal", mean=1000, max=10**9).draw(20000)) == pytest.approx(607, rel=0.05)


def test_a_suite_draws_the_same_lengths_for_every_case(tmp_path):
    suite = load_suite(write(tmp_path, """
        name: t
        defaults:
          batch: 5
          lengths: {dist: lognormal, mean: 100, max: 400, seed: 7}
        matrix:
          dtype: [float32, bfloat16]
          heads_q: [2, 4]
    """))
    cases = suite.cases("cpu")
    assert len({c.seqlens_q for c in cases}) == 1
    assert cases[0].seqlens_q == LengthDraw("lognormal", mean=100, max=400, seed=7).draw(5)
    assert load_suite(suite.path).cases("cpu") == cases


# --- mistakes ----------------------------------------------------------------------------


ERRORS = {
    "two kinds of lengths in one mapping": ("""
        name: t
        matrix: {seqlens: [1, 2], batch_spec: q4}
    """, 2, "matrix.batch_spec", "matrix sets both seqlens and batch_spec, which both set the packed batch's "
        "lengths; use one"),
    "seq beside lengths": ("""
        name: t
        defaults: {seq: 64, batch_spec: 4q1s1k}
    """, 2, "defaults.batch_spec", "defaults sets both seq and batch_spec, which both set seq_kv (a packed batch's "
        "longest length); use one"),
    "a more specific seq over lengths": ("""
        name: t
        defaults: {seqlens: [8, 16]}
        matrix: {seq: [32]}
    """, 3, "matrix.seq", "matrix.seq: defaults.seqlens (line 2) gives the packed batch's lengths, and seq_q is their "
        "longest; leave seq out"),
    "batch that disagrees": ("""
        name: t
        defaults: {batch: 4}
        matrix:
          batch_spec: [4q1s1k, 2q1s1k]
    """, 4, "matrix.batch_spec", "matrix.batch_spec makes a batch of 2 sequences, but batch is 4 (from "
        "defaults.batch, line 2); leave batch out or make them agree"),
    "tokens with lengths": ("""
        name: t
        matrix: {tokens: 4096, seqlens: [8, 16]}
    """, 2, "matrix.tokens", "matrix.tokens: tokens sets batch, but matrix.seqlens (line 2) gives a packed batch"),
    "lengths without batch": ("""
        name: t
        matrix:
          lengths: {dist: fixed, mean: 8}
    """, 3, "matrix.lengths", "matrix.lengths draws batch lengths: give batch (the number of sequences) beside it"),
    "seqlens_q without the keys": ("""
        name: t
        include_cases:
          - {seqlens_q: [1, 4]}
    """, 3, "include_cases[0].seqlens_q", "include_cases[0].seqlens_q gives the seqlens_q of a packed batch; give "
        "the seqlens_kv too: seqlens_kv, or seq_kv for every sequence"),
    "seqlens_kv without the queries": ("""
        name: t
        include_cases:
          - {seqlens_kv: [64, 128]}
    """, 3, "include_cases[0].seqlens_kv", "include_cases[0].seqlens_kv gives the seqlens_kv of a packed batch; give "
        "the seqlens_q too: seqlens_q, or seq_q for every sequence (e.g. seq_q 1 for decode)"),
    "sides of different counts": ("""
        name: t
        matrix: {seqlens_q: [1, 2], seqlens_kv: [4, 4, 4]}
    """, 2, "matrix.seqlens_q", "matrix.seqlens_q: seqlens_q has 2 lengths and seqlens_kv 3"),
    "more queries than keys under a mask": ("""
        name: t
        matrix: {mask: causal, seqlens_q: [2, 9], seq_kv: 8}
    """, 2, "matrix.seqlens_q", "matrix.seqlens_q: sequence 1 has 9 queries over 8 keys"),
    "paged backward": ("""
        name: t
        defaults: {batch_spec: 4q1s1k}
        matrix:
          page_size: 16
          pass: [fwd, fwd+bwd]
    """, 4, "matrix.page_size", "matrix.page_size: page_size 16 pages the KV cache, which serving reads in a "
        "forward pass only, but pass is fwd+bwd (from matrix.pass, line 5); use pass fwd or leave page_size out"),
    "bad batch spec in a matrix list": ("""
        name: t
        matrix:
          batch_spec:
            - 2q2k_32q1s1k
            - 2q2k_32d1s1k
    """, 5, "matrix.batch_spec", "matrix.batch_spec: batch_spec '2q2k_32d1s1k': group '32d1s1k' is not"),
    "batch spec not a string": ("""
        name: t
        defaults: {batch_spec: 16}
    """, 2, "defaults.batch_spec", "defaults.batch_spec must be a batch spec such as '2q2k_32q1s1k'"),
    "seqlens not a list": ("""
        name: t
        defaults: {seqlens: 64}
    """, 2, "defaults.seqlens", "defaults.seqlens must be a list of lengths (integers >= 1), got integer 64"),
    "seqlens with a zero": ("""
        name: t
        defaults:
          seqlens:
            - 8
            - 0
    """, 5, "defaults.seqlens", "defaults.seqlens: length 1 must be an integer >= 1, got integer 0"),
    "a list of seqlens outside matrix": ("""
        name: t
        defaults: {seqlens: [[1, 2], [3]]}
    """, 2, "defaults.seqlens", "defaults.seqlens must be a single value, got a list of lists of lengths; lists "
        "belong in matrix"),
    "lengths not a mapping": ("""
        name: t
        defaults: {batch: 2, lengths: lognormal}
    """, 2, "defaults.lengths", "defaults.lengths must be a mapping (dist, mean, min, max, sigma, seed), got string"),
    "unknown lengths key": ("""
        name: t
        defaults:
          batch: 2
          lengths: {dist: lognormal, mean: 64, max: 128, stdev: 1}
    """, 4, "defaults.lengths.stdev", "unknown key 'stdev' in defaults.lengths"),
    "unknown dist": ("""
        name: t
        defaults:
          batch: 2
          lengths: {dist: normal, mean: 64}
    """, 4, "defaults.lengths.dist", "defaults.lengths.dist 'normal' is not one of fixed, uniform, lognormal"),
    "missing dist": ("""
        name: t
        defaults:
          batch: 2
          lengths: {mean: 64}
    """, 4, "dist", "missing required key 'dist' in defaults.lengths"),
    "a key the dist does not use": ("""
        name: t
        defaults:
          batch: 2
          lengths: {dist: uniform, mean: 64, max: 128}
    """, 4, "defaults.lengths.mean", "defaults.lengths.mean: dist uniform does not use mean (it takes min, max, "
        "seed); remove it"),
    "lognormal without max": ("""
        name: t
        defaults:
          batch: 2
          lengths: {dist: lognormal, mean: 64}
    """, 4, "defaults.lengths", "defaults.lengths: dist lognormal needs max"),
    "mean outside min..max": ("""
        name: t
        defaults:
          batch: 2
          lengths: {dist: lognormal, mean: 64, min: 100, max: 200}
    """, 4, "defaults.lengths", "defaults.lengths: {dist: lognormal, mean: 64, min: 100, max: 200, sigma: 1, "
        "seed: 0} needs min <= mean <= max"),
    "page size zero": ("""
        name: t
        defaults: {seq: 8, page_size: 0}
    """, 2, "defaults.page_size", "defaults.page_size must be an integer >= 1 or null, got 0"),
}


@pytest.mark.parametrize("text,line,field,message", ERRORS.values(), ids=ERRORS.keys())
def test_mistakes_name_file_line_and_key(tmp_path, text, line, field, message):
    path = write(tmp_path, text)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    assert str(info.value).startswith(f"{path}:{line}: {message}"), str(info.value)
    assert info.value.field == field


# --- --model -------------------------------------------------------------------------------


def test_model_flag_sets_the_heads_of_packed_and_paged_cases():
    cases = load_suite(SUITES / "serving.yaml").cases("cpu")
    heads = with_model(cases, "llama-3.1-8b")
    assert len(heads) == len(cases)
    for before, after in zip(cases, heads):
        assert (after.heads_q, after.heads_kv, after.head_dim) == (32, 8, 128)
        assert packed(after) == packed(before) and after.label().startswith(before.batch_shape())


# --- the shipped suites --------------------------------------------------------------------


IMPLEMENTATIONS = ("reference", "eager", "flex", "chunked", "sdpa", "sdpa.padded")


def test_ragged_suite_packs_lognormal_documents():
    suite = load_suite(SUITES / "ragged.yaml")
    for device in ("cpu", "cuda"):
        cases = suite.cases(device)
        assert all(c.packed and not c.paged and not c.cross and c.mask == "causal" for c in cases)
        assert all(len(set(c.seqlens_q)) == c.batch and c.batch_shape().startswith("ragged ") for c in cases)
        assert {c.pass_ for c in cases} == {"fwd", "fwd+bwd"}
        assert all(suite.settings(device).selects(name) for name in IMPLEMENTATIONS)
    cpu = suite.cases("cpu")
    assert len(cpu) == 8 and {c.dtype_name for c in cpu} == {"float32", "bfloat16"}
    assert {(c.heads_q, c.heads_kv) for c in cpu} == {(8, 8), (8, 2)}
    assert all(4 <= c.batch <= 8 and c.total_q <= 4096 and c.seq_q <= 1024 for c in cpu)
    cuda = suite.cases("cuda")
    assert {c.dtype_name for c in cuda} == {"bfloat16"} and {c.head_dim for c in cuda} == {64, 128}
    assert all(8192 <= c.total_q <= 32768 and 1024 <= c.total_q / c.batch <= 2048 for c in cuda)


def test_serving_suite_mixes_batch_specs_over_paged_caches():
    suite = load_suite(SUITES / "serving.yaml")
    for device, page_sizes in (("cpu", {16}), ("cuda", {16, 64})):
        cases = suite.cases(device)
        assert all(c.paged and c.pass_ == "fwd" and c.mask == "causal" for c in cases)
        assert {c.page_size for c in cases} == page_sizes
        assert all(suite.settings(device).selects(name) for name in IMPLEMENTATIONS)
        pairs = [set(zip(c.seqlens_q, c.seqlens_kv)) for c in cases]
        assert any(all(q == 1 for q, _ in p) for p in pairs)                        # pure decode
        assert any(all(1 < q < kv for q, kv in p) for p in pairs)                   # spec decode
        assert any(any(q == 1 for q, _ in p) and any(q >= 128 for q, _ in p) for p in pairs)   # chunked prefill
    cuda = suite.cases("cuda")
    assert {(c.heads_q, c.heads_kv, c.head_dim) for c in cuda} == {(32, 8, 128)}
    assert "2q2k_32q1s1k p16" in {c.batch_shape() for c in cuda}
    # Small enough for two cores, at llama-3.1-8b's heads too (`--model`).
    assert all(c.total_kv <= 32768 and c.total_q <= 512 for c in suite.cases("cpu"))
