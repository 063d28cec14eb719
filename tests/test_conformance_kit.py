"""The pytest conformance kit, run as a plugin author would: a good implementation passes, a defective one fails."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from attnbench.conformance import conformance_cases, packed_cases

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


    @hookimpl
    def attnbench_implementations():
        every_mask = {"none", "causal", "sliding_window"}
        return [
            Implementation(name="kit.good", build=refuses_long_heads, gqa=True, masks=every_mask, backward=True),
            Implementation(name="kit.bad", build=off_by_one_percent, gqa=True),
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
    assert passed == sum(case.dtype_name == "float32" for case in packed_cases())


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
