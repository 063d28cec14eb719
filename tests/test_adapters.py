"""Adapters: the check their own tests share, and the CPU adapter as a user gets it (pip-installed, then run)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import sys

import pytest
import torch
from test_fresh_install import COPY_IGNORE, REPO, run

from attnbench.case import Case
from attnbench.conformance import (
    GPU_SHAPES,
    PACKED_GPU_SHAPES,
    VARIANT_GPU_SHAPES,
    call_problem,
    forward_backward_problem,
    gpu_variant_case,
    packed_problem,
)
from attnbench.impls import eager

ADAPTER = REPO / "plugins" / "attnbench-local-attention"
SUITE = """\
name: adapter-smoke
implementations:
  include: [local_attention, eager]
defaults: {batch: 1, heads_q: 2, head_dim: 32}
include_cases:
  - {seq: 128, mask: sliding_window, window: 16}
  - {seq: 96, mask: sliding_window, window: 1, dtype: bfloat16}
  - {seq: 64, mask: causal, dtype: float16}
  - {seq: 80, mask: sliding_window, window: 20, pass: fwd+bwd}
timing: {warmup: 1, min_time_s: 0.01, repeats: 1}
"""


CASE = Case(1, 4, 2, 48, 80, 32, mask="causal", pass_="fwd+bwd")


def test_shared_check_passes_correct_attention_in_either_layout():
    assert forward_backward_problem(eager.build(CASE), CASE) is None
    fn = eager.build(CASE)

    def bshd(q, k, v):
        return fn(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)

    assert forward_backward_problem(bshd, CASE, "bshd") is None


def test_shared_check_names_the_failing_tensor():
    fn = eager.build(CASE)
    assert forward_backward_problem(lambda q, k, v: fn(q * 1.25, k, v), CASE).startswith("out: rel-L2 error")
    # Right output, gradient of q lost.
    assert forward_backward_problem(lambda q, k, v: fn(q.detach(), k, v) + 0 * q, CASE).startswith("dq: ")
    assert "shape" in forward_backward_problem(lambda q, k, v: fn(q, k, v)[:, :, 1:], CASE)
    with pytest.raises(ValueError, match="backward"):
        forward_backward_problem(fn, Case(1, 2, 2, 8, 8, 16))


def test_gpu_shapes_are_cases():
    for shape in GPU_SHAPES.values():
        assert Case(**shape, device="cuda", pass_="fwd+bwd").needs_backward


@pytest.mark.slow
def test_pip_installed_local_attention_adapter_runs_a_suite(tmp_path):
    if importlib.util.find_spec("venv") is None or importlib.util.find_spec("ensurepip") is None:
        pytest.skip("python -m venv is unavailable here (no venv/ensurepip module)")
    sources = tmp_path / "sources"
    shutil.copytree(REPO, sources / "attnbench", ignore=COPY_IGNORE)
    shutil.copytree(ADAPTER, sources / "adapter", ignore=COPY_IGNORE)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("ATTNBENCH_")}
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, env=env)
    bin_dir = venv / "bin"
    # torch pinned to the build this interpreter runs (the CPU wheel on local disk here); local-attention and
    # its pure-Python dependencies come from the index, and must leave that torch in place. Not byte-compiling
    # torch's thousands of modules saves about a minute.
    run(bin_dir / "python", "-m", "pip", "install", "-q", "--no-compile", f"torch=={torch.__version__}",
        sources / "attnbench", sources / "adapter", env=env, cwd=tmp_path)
    versions = run(bin_dir / "python", "-c", "import torch, local_attention; print(torch.__version__)",
                   env=env, cwd=tmp_path).stdout.split()
    assert versions == [torch.__version__], "installing the adapter changed torch"

    suite = tmp_path / "adapter-smoke.yaml"
    suite.write_text(SUITE)
    out = run(bin_dir / "attnbench", "run", suite, "--device", "cpu", "--quiet", "--json",
              "--output", tmp_path / "run", env=env, cwd=tmp_path).stdout
    results = json.loads(out)
    plugin = next(p for p in results["run"]["plugins"] if p["name"] == "local_attention")
    assert plugin["ok"] and plugin["distribution"] == "attnbench-local-attention", plugin
    records = [r for r in results["records"] if r["impl"] == "local_attention"]
    assert len(records) == 4
    for record in records:
        assert record["status"] == "ok", (record["case"], record["status"], record["reason"])
        assert record["metrics"]["rel_err"] < 1e-2 and record["metrics"]["time_ms_median"] > 0
    assert "dq_rel_err" in records[-1]["metrics"], "the fwd+bwd case checked the gradients"


RAGGED = Case(3, 4, 2, 40, 48, 32, mask="causal", pass_="fwd+bwd", seqlens_q=(16, 1, 40), seqlens_kv=(48, 33, 40))
PAGED = Case(3, 4, 2, 20, 100, 32, mask="causal", seqlens_q=(20, 1, 3), seqlens_kv=(20, 45, 100), page_size=16)


def test_packed_check_passes_correct_ragged_and_paged_attention():
    assert packed_problem(eager.build(RAGGED), RAGGED) is None
    assert packed_problem(eager.build(PAGED), PAGED) is None
    with pytest.raises(ValueError, match="packed"):
        packed_problem(eager.build(CASE), CASE)


def test_packed_check_names_the_failing_tensor_and_reads_the_keywords():
    fn = eager.build(RAGGED)
    assert packed_problem(lambda q, k, v, **kw: fn(q * 1.25, k, v, **kw), RAGGED).startswith("out: rel-L2 error")
    assert packed_problem(lambda q, k, v, **kw: fn(q.detach(), k, v, **kw) + 0 * q, RAGGED).startswith("dq: ")
    paged = eager.build(PAGED)

    def sorted_table(q, k, v, *, block_table, **kw):
        return paged(q, k, v, block_table=block_table.sort(dim=1).values, **kw)

    assert packed_problem(sorted_table, PAGED).startswith("out: rel-L2 error"), "the shuffled table is the one judged"


def test_packed_gpu_shapes_are_cases():
    for shape in PACKED_GPU_SHAPES.values():
        case = Case(**shape, device="cuda", dtype=torch.float16, pass_="fwd" if "page_size" in shape else "fwd+bwd")
        assert case.packed and case.heads_q % case.heads_kv == 0


VARIANT = Case(2, 4, 2, 24, 40, 32, head_dim_v=16, mask="causal", pass_="fwd+bwd", softcap=2.0, bias="alibi", sinks=True)
FP8 = Case(2, 4, 2, 24, 40, 32, mask="causal", dtype="float8_e4m3fn", softcap=2.0)


def test_variant_check_passes_correct_attention_with_the_call_keywords_in_either_layout():
    fn = eager.build(VARIANT)
    assert call_problem(fn, VARIANT) is None
    assert forward_backward_problem(fn, VARIANT) is None

    def bshd(q, k, v, **kw):
        return fn(*(t.transpose(1, 2) for t in (q, k, v)), **kw).transpose(1, 2)

    assert call_problem(bshd, VARIANT, "bshd") is None
    assert call_problem(eager.build(FP8), FP8) is None


@pytest.mark.parametrize("dropped", ["alibi_slopes", "sinks"])
def test_variant_check_fails_a_call_that_drops_a_keyword(dropped):
    field = {"alibi_slopes": dict(bias=None), "sinks": dict(sinks=False)}[dropped]
    inner = eager.build(dataclasses.replace(VARIANT, **field))

    def planted(q, k, v, **kw):
        kw.pop(dropped)
        return inner(q, k, v, **kw)

    assert call_problem(planted, VARIANT).startswith("out: rel-L2 error")


def test_variant_check_fails_an_fp8_call_that_ignores_the_descales():
    inner = eager.build(Case(2, 4, 2, 24, 40, 32, mask="causal", dtype="bfloat16", softcap=2.0))

    def raw(q, k, v, q_descale, k_descale, v_descale):
        return inner(q.to(torch.bfloat16), k.to(torch.bfloat16), v.to(torch.bfloat16))

    problem = call_problem(raw, FP8)
    assert problem.startswith("out: ") and "limit" in problem


def test_variant_gpu_shapes_are_cases():
    for name in VARIANT_GPU_SHAPES:
        for dtype in (torch.float16, torch.float8_e4m3fn):
            case = gpu_variant_case(name, dtype)
            assert case.score_mods or case.value_dim != case.head_dim
            assert case.needs_backward == (not case.paged and not case.fp8)
