"""Foreign text reaches the terminal without control characters, and CSV cells never start a formula."""

import csv
import json
import subprocess
import sys

import pytest
from synthetic_results import case, record, write_run

from attnbench.cli import main
from attnbench.textsafe import csv_cell, markup, plain

MARK = "hostile-text"
"""The plain words beside the escapes, as in tests/fixture_plugins/hostile_text.py."""
ESCAPES = "\x1b[2J\x1b[H\x1b]0;owned\x07\x1b]8;;http://evil.example/\x1b\\link\x1b]8;;\x1b\\\x9b31mred\x7f"
EVIL = f"{MARK} {ESCAPES}\r\x00\x08\u202eevil"
FORBIDDEN = ("\x1b", "\x9b", "\x07", "\x7f", "\x00", "\x08", "\r", "\u202e")
"""What none of our output may hold. Rich writes no colour codes of its own to a pipe or to capsys."""


@pytest.fixture(autouse=True)
def no_forced_colour(monkeypatch):
    """Rich writes no escapes of its own to a pipe unless told to: any found are the plugins'."""
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)


def assert_clean(text: str) -> None:
    found = [repr(c) for c in FORBIDDEN if c in text]
    assert not found, f"control characters {found} in output:\n{text!r}"
    assert "internal error" not in text and "Traceback" not in text


def test_plain_strips_c0_c1_esc_del_and_bidi_overrides_and_keeps_words():
    assert plain("a\x1b[31mb\x9bc\x7fd\x00e\u202ef\u2066g") == "a[31mbcdefg"
    assert plain("line\none\ttab") == "line one tab"
    assert plain("line\none\ttab", keep_lines=True) == "line\none\ttab"
    assert plain("a\r\nb", keep_lines=True) == "a\nb"
    assert plain("µs ± 3% — ok ✗") == "µs ± 3% — ok ✗"
    assert markup("[bold]x\x1b[0m[/]") == "\\[bold]x[0m\\[/]"


@pytest.mark.parametrize("value,expected", [
    ("=HYPERLINK(\"http://evil.example\",\"x\")", "'=HYPERLINK(\"http://evil.example\",\"x\")"),
    ("+1+cmd", "'+1+cmd"), ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"), ("\rx", "'\rx"),
    ("plain", "plain"), ("", ""), (-1.5, -1.5), (-3, -3), (None, None), (True, True),
])
def test_csv_cell_neutralises_formula_strings_only(value, expected):
    assert csv_cell(value) == expected


def test_csv_export_neutralises_formulas_and_keeps_negative_numbers(tmp_path, capsys):
    formula = '=HYPERLINK("http://evil.example/","click")'
    path = write_run(tmp_path / "r", [
        record("base", case(64) | {"offset": -1.5}, 1.0, plugin="+cmd|' /C calc'!A0", version="-1", hardware="@SUM(1+1)"),
        record("x", case(64) | {"offset": -1.5}, status="unsupported", reason=formula),
    ])
    out = tmp_path / "out.csv"
    assert main(["export", str(path), "--format", "csv", "-o", str(out)]) == 0
    rows = list(csv.DictReader(out.open(newline="")))
    assert rows[1]["reason"] == "'" + formula
    assert rows[0]["plugin"] == "'+cmd|' /C calc'!A0" and rows[0]["version"] == "'-1" and rows[0]["hardware"] == "'@SUM(1+1)"
    assert rows[0]["offset"] == "-1.5" and rows[0]["time_ms_median"] == "1.0"


def _evil_runs(tmp_path):
    """Two runs whose every foreign string (ids, hardware, torch, suite, names, reasons) carries escapes."""
    def records(ms):
        return [record("base", case(64), 1.0, plugin=EVIL, version=EVIL, hardware=EVIL),
                record("x", case(64), ms, plugin=EVIL, version=EVIL, hardware=EVIL),
                record("y", case(64), status="crashed", reason=f"worker died; stderr: {EVIL}\n{EVIL}", hardware=EVIL)]
    info = {"hardware": EVIL, "torch": EVIL, "hostname": EVIL}
    base = write_run(tmp_path / "base", records(0.5), run_id=EVIL, **info)
    new = write_run(tmp_path / "new", records(2.0), run_id=EVIL, **info)
    for path in (base, new):  # the suite name, which run_info does not take
        path.write_text(path.read_text().replace('"name": "synthetic"', '"name": ' + json.dumps(EVIL)))
    return str(base), str(new)


def test_report_and_compare_strip_escapes_from_results_files(tmp_path, capsys):
    base, new = _evil_runs(tmp_path)
    for args, code in ((["report", base, new], 0), (["compare", base, new, "--all"], 0),
                       (["compare", base, new, "--fail-on-regression", "10"], 4)):
        assert main(args) == code
        out = capsys.readouterr()
        assert_clean(out.out + out.err)
        assert MARK in out.out


def test_cli_error_messages_strip_escapes(tmp_path, capsys):
    missing = tmp_path / f"no{ESCAPES}such.json"
    assert main(["report", str(missing)]) == 1
    err = capsys.readouterr().err
    assert_clean(err)
    assert "no such results file" in err


@pytest.fixture
def hostile_env(fixture_plugins):
    return fixture_plugins("hostile_text,hostile_broken")


def _cli(env, cwd, *args):
    done = subprocess.run([sys.executable, "-m", "attnbench", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr


def test_list_and_plugins_strip_escapes_from_descriptions_and_load_errors(hostile_env, tmp_path):
    for args in (["list"], ["plugins"], ["list", "--json"], ["plugins", "--json"]):
        code, out = _cli(hostile_env, tmp_path, *args)
        assert code == 0, out
        assert_clean(out)
        assert MARK in out and "hostile_broken" in out
    # Wide enough that the description column does not wrap the marked words apart.
    code, out = _cli({**hostile_env, "COLUMNS": "400"}, tmp_path, "list")
    assert f"{MARK} description" in out and f"{MARK} load error" in out


TINY_SUITE = "name: tiny\nmatrix: {batch: 1, heads_q: 2, seq: 32, head_dim: 16}\ntiming: {warmup: 1, min_time_s: 0.005}\n"


@pytest.mark.slow
def test_escapes_in_a_runs_records_do_not_reach_report_or_compare(hostile_env, tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY_SUITE)
    out = tmp_path / "run"
    code, text = _cli(hostile_env, tmp_path, "run", "tiny.yaml", "--impl", "hostile.*", "--processes", "1",
                      "--output", str(out), "--quiet")
    assert code == 0, text
    results = (out / "results.json").read_text()
    # The escapes did reach the records (JSON spells them \u001b): what follows is what the readers make of them.
    assert "hostile-text reason \\u001b" in results and "hostile-text stderr \\u001b" in results
    for args in (["report", str(out)], ["compare", str(out), str(out), "--all"]):
        code, text = _cli(hostile_env, tmp_path, *args)
        assert code == 0, text
        assert_clean(text)
        assert "hostile.unsupported" in text
    assert f"{MARK} reason" in text  # compare shows each pair's reason
