"""The pytest conformance kit, run as a plugin author would: a good implementation passes, a defective one fails."""

import os
import subprocess
import sys
import textwrap

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


def _pytest(tmp_path, *args):
    (tmp_path / "kit_plugin.py").write_text(PLUGIN)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), ATTNBENCH_PLUGIN_MODULES="kit_plugin")
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
