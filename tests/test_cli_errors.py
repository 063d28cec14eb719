"""Bad input at the command line: one paragraph, exit code 1, no traceback, nothing written."""

import subprocess
import sys

import pytest

GOOD = "name: t\ndefaults: {batch: 1, heads_q: 2, head_dim: 16}\nmatrix:\n  seq: [32]\n"
HOSTILE = {
    "malformed": ("name: t\nmatrix: [seq: 1\n", "malformed.yaml:"),
    "unknown_key": ("name: t\nmatrix:\n  seq: [32]\n  sequence: [64]\n", "malformed.yaml:4"),
    "wrong_type": ("name: t\nmatrix:\n  seq: [32]\n  batch: two\n", "batch"),
    "head_dim_zero": ("name: t\nmatrix:\n  seq: [32]\n  head_dim: 0\n", "head_dim"),
    "heads_not_multiple": ("name: t\nmatrix:\n  seq: [32]\n  heads_q: 3\n  heads_kv: 2\n", "multiple"),
    "seq_zero": ("name: t\nmatrix:\n  seq: [0]\n", "seq"),
    "bad_dtype": ("name: t\nmatrix:\n  seq: [32]\n  dtype: bf32\n", "not one of float32, float16, bfloat16"),
    "python_tag": ("name: !!python/object/apply:os.system ['touch PWNED']\nmatrix:\n  seq: [32]\n", "malformed.yaml:1"),
}


def _run(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "attnbench", *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_suite_is_refused_cleanly(tmp_path, kind):
    text, expected = HOSTILE[kind]
    (tmp_path / "malformed.yaml").write_text(text)
    proc = _run(tmp_path, "run", "malformed.yaml", "--output", str(tmp_path / "out"))
    assert proc.returncode == 1, proc.stderr
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "reports").exists()
    assert not (tmp_path / "PWNED").exists()


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "malformed.yaml").write_text(HOSTILE["bad_dtype"][0])
    proc = _run(tmp_path, "--debug", "run", "malformed.yaml")
    assert proc.returncode == 1 and "Traceback" in proc.stderr


@pytest.mark.parametrize("args,expected", [
    (["run", "missing.yaml"], "no such suite file"),
    (["run", "good.yaml", "--impl", "nosuch.*"], "matches nothing"),
    (["run", "good.yaml", "--output", "/proc/attnbench-cannot-write"], "cannot write results"),
    (["run", "good.yaml", "--where", "colour=red"], "--where"),
])
def test_usage_errors_name_the_culprit(tmp_path, args, expected):
    (tmp_path / "good.yaml").write_text(GOOD)
    proc = _run(tmp_path, *args)
    assert proc.returncode == 1, proc.stderr
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "reports").exists()
