"""The pytest conformance kit, run as a plugin author would: a good implementation passes, a defective one fails."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from attnbench.case import SCORE_MODS
from attnbench.conformance import cases_for, conformance_cases, is_variant, packed_cases, variant_cases
from attnbench.implementation import Implementation
from attnbench.impls import eager

FIXTURE_PLUGINS = Path(__file__).parent / "fixture_plugins"

PLUGIN = textwrap.dedent('''
    from attnbench import Implementation, hookimpl
    from attnbench.impls.eager import build as eager_build


    def off_by_one_percent(case):
        good = eager_build(case)
        return lambda q, k, v: good(q, k, v) * 1.01


    def refuses_long_heads(case):
        from attnbench import Unsupported
        if case.head_dim > 64:
            raise Unsupported("head_dim > 64")
        return eager_build(case)


    def drops_the_sinks(case):
        import dataclasses
        good = eager_build(dataclasses.replace(case, sinks=False))

        def planted(q, k, v, sinks=None, **kw):
            return good(q, k, v, **kw)
        return planted


    @hookimpl
    def attnbench_implementations():
        every_mask = {"none", "causal", "sliding_window"}
        return [
            Implementation(name="kit.good", build=refuses_long_heads, gqa=True, masks=every_mask, backward=True),
            Implementation(name="kit.bad", build=off_by_one_percent, gqa=True),
            Implementation(name="kit.no-sinks", build=drops_the_sinks, gqa=True, backward=True, score_mods={"sinks"}),
        ]
''')


def _pytest(tmp_path, *args, modules="kit_plugin"):
    (tmp_path / "kit_plugin.py").write_text(PLUGIN)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(FIXTURE_PLUGINS)]),
               ATTNBENCH_PLUGIN_MODULES=modules)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--benchmark-disable", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_good_implementation_passes_and_refusals_skip_with_reason(tmp_path):
    proc = _pytest(tmp_path, "--attnbench-impl", "kit.good", "-k", "float32", "-rs")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert " passed" in proc.stdout
    assert "Unsupported: head_dim > 64" in proc.stdout


def test_defective_implementation_fails_the_run(tmp_path):
    proc = _pytest(tmp_path, "--attnbench-impl", "kit.bad", "-k", "test_conformance and float32", "-x")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "rel-L2 error" in proc.stdout or "max-abs error" in proc.stdout


def test_unknown_implementation_is_named(tmp_path):
    proc = _pytest(tmp_path, "--attnbench-impl", "kit.missing", "-k", "test_conformance and float32 and none", "-x")
    assert proc.returncode == 1
    assert "no implementation 'kit.missing' is installed" in proc.stdout


def test_the_grid_has_ragged_and_paged_cases_the_selection_finds():
    packed = packed_cases()
    assert packed and all(case in conformance_cases() for case in packed)
    assert {case.paged for case in packed} == {True, False}
    assert any(case.needs_backward for case in packed if not case.paged)
    paged = [case for case in packed if case.paged]
    assert any(max(case.seqlens_q) > 1 and min(case.seqlens_q) == 1 for case in paged), "a mixed prefill/decode batch"
    assert any(n % case.page_size for case in paged for n in case.seqlens_kv), "a cache that is not whole pages"
    assert any(case.gqa and case.cross for case in packed if not case.paged)


def test_eager_passes_the_ragged_and_paged_cases(tmp_path):
    proc = _pytest(tmp_path, "--attnbench-impl", "eager", "--attnbench-cases", "packed", "-k",
                   "test_conformance and float32")
    assert proc.returncode == 0, proc.stdout[-3000:]
    passed = int(proc.stdout.split(" passed")[0].split()[-1])
    assert passed == sum(case.packed and case.dtype_name == "float32" for case in conformance_cases())


def test_a_kernel_that_ignores_the_block_table_fails_the_kit(tmp_path):
    proc = _pytest(tmp_path, "--attnbench-impl", "planted.ignores_block_table", "--attnbench-cases", "packed",
                   "-k", "test_conformance and float32", modules="planted_packed")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "planted.ignores_block_table on " in proc.stdout and "incorrect: out: rel-L2 error" in proc.stdout
    failed = int(proc.stdout.split(" failed")[0].split()[-1])
    # Every paged case it declares (masks none and causal) reads the wrong pages; ragged ones are not declared.
    declared = [case for case in packed_cases() if case.paged and case.dtype_name == "float32" and case.mask != "sliding_window"]
    assert failed == len(declared), proc.stdout[-2000:]
    assert " passed" not in proc.stdout.splitlines()[-1]


# --- variant cases: given to the implementations that declare them ----------------------------------------


def test_the_grid_has_each_variant_causal_and_not_forward_and_backward():
    cases = variant_cases()
    assert cases and all(is_variant(case) for case in cases) and all(case in conformance_cases() for case in cases)
    for mod in SCORE_MODS:
        with_mod = [case for case in cases if mod in case.score_mods and not case.fp8]
        assert {(case.mask, case.pass_) for case in with_mod} == {(m, p) for m in ("none", "causal")
                                                                   for p in ("fwd", "fwd+bwd")}, mod
        assert any(case.packed for case in with_mod), f"{mod} on a packed batch"
    assert any(case.score_mods == frozenset(SCORE_MODS) for case in cases), "all three combined"
    value_dims = {(case.head_dim, case.value_dim) for case in cases if case.value_dim != case.head_dim}
    assert {(48, 32), (32, 48), (192, 128)} <= value_dims, "v narrower, wider, and DeepSeek's 192/128"
    assert any(case.softcap and case.softcap <= 2.0 for case in cases), "a softcap that bites"
    fp8 = [case for case in cases if case.fp8]
    assert fp8 and all(case.pass_ == "fwd" for case in fp8)
    assert {case.dtype for case in fp8} == {torch.float8_e4m3fn, torch.float8_e5m2}
    assert any(case.paged for case in fp8) and any(case.packed and not case.paged for case in fp8)
    assert not any(case.fp8 for case in conformance_cases() if not is_variant(case)), "fp8 only as variant cases"


def test_an_implementation_gets_the_variant_cases_it_declares_only():
    plain = Implementation(name="plain", build=eager.build, gqa=True)
    assert not any(is_variant(case) for case in cases_for(plain))
    assert cases_for(plain) == [case for case in conformance_cases() if not is_variant(case)]
    fp8 = Implementation(name="fp8", build=eager.build, gqa=True, score_mods={"softcap"},
                         dtypes={torch.bfloat16, torch.float8_e4m3fn})
    given = [case for case in cases_for(fp8) if is_variant(case)]
    assert given and all(case.score_mods <= {"softcap"} and case.value_dim == case.head_dim for case in given)
    assert {case.dtype for case in given} == {torch.bfloat16, torch.float8_e4m3fn}
    assert any(case.fp8 and case.softcap for case in given)


def _passed(stdout: str) -> int:
    return int(stdout.split(" passed")[0].split()[-1])


def test_eager_passes_the_variant_cases(tmp_path):
    proc = _pytest(tmp_path, "--attnbench-impl", "eager", "--attnbench-cases", "variants", "-k",
                   "test_conformance and (float32 or float8_e4m3fn)")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert _passed(proc.stdout) == sum(case.dtype_name in ("float32", "float8_e4m3fn") for case in variant_cases())


def test_a_kernel_that_ignores_the_sinks_fails_the_kit(tmp_path):
    proc = _pytest(tmp_path, "--attnbench-impl", "kit.no-sinks", "--attnbench-cases", "variants", "-k",
                   "test_conformance and float32", "-rs")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "kit.no-sinks on " in proc.stdout and "incorrect: out: rel-L2 error" in proc.stdout
    failed = int(proc.stdout.split(" failed")[0].split()[-1])
    # Given only the sinks cases (it declares no other variant); the dense ones it declares all fail,
    # the packed ones are skipped (it declares no packed batches).
    declared = [case for case in variant_cases() if case.score_mods == {"sinks"} and case.dtype_name == "float32"
                and not case.packed and case.value_dim == case.head_dim]
    assert failed == len(declared) == 4, proc.stdout[-2000:]
    assert "ragged (packed) batches not supported" in proc.stdout and " passed" not in proc.stdout.splitlines()[-1]
