"""History: runs of one suite and hardware in version order, changes beyond noise marked, results found at any depth."""

import json

import pytest
from synthetic_results import case, record, write_run

from attnbench.cli import main
from attnbench.compare import FASTER, SLOWER, version_key
from attnbench.errors import UserError
from attnbench.report.history import histories, history_chart
from attnbench.report.html import render
from attnbench.report.runs import find_results, load_runs

C1, C2 = case(128), case(256)
XSS = "<script>alert(1)</script>"


def two_torch_versions(tmp_path, **new_extra):
    """torch 2.9.1 then 2.10.0 (written the other way round: the axis goes by version, not by argument or date)."""
    new = write_run(tmp_path / "new", [
        record("x", C1, 1.5, noise=0.02),      # 50% slower, noise ~3%: a change
        record("y", C1, 1.01, noise=0.05),     # inside the noise
        record("x", C2, 0.5, noise=0.02),      # twice as fast
    ], torch="2.10.0", started="2026-01-01T00:00:00+00:00", **new_extra)
    old = write_run(tmp_path / "old", [
        record("x", C1, 1.0, noise=0.02), record("y", C1, 1.0, noise=0.05), record("x", C2, 1.0, noise=0.02),
    ], torch="2.9.1", started="2026-02-01T00:00:00+00:00")
    return new, old


def test_versions_sort_naturally():
    assert sorted(["2.10.0", "2.9.1", "2.5.1+cu124", "2.13.0+cpu"], key=version_key) == \
        ["2.5.1+cu124", "2.9.1", "2.10.0", "2.13.0+cpu"]


def test_history_orders_runs_by_torch_version_and_marks_changes_beyond_noise(tmp_path):
    [history] = histories(load_runs(list(two_torch_versions(tmp_path))))
    assert [r.torch for r in history.runs] == ["2.9.1", "2.10.0"]
    verdicts = {(s.change.impl, s.change.case["seq_kv"]): s for shifts in history.shifts.values() for s in shifts}
    assert set(verdicts) == {("x", 128), ("x", 256)}  # y moved 1%, inside its noise: not listed
    assert verdicts["x", 128].change.verdict == SLOWER and verdicts["x", 128].change.ratio == pytest.approx(1.5)
    assert verdicts["x", 256].change.verdict == FASTER
    assert (verdicts["x", 128].before, verdicts["x", 128].after) == (0, 1)
    key = next(k for k, c in history.cases.items() if c["seq_kv"] == 128)
    svg = history_chart(history, key, lambda impl: "#123456")
    assert svg.count('class="change slower"') == 1 and 'class="change faster"' not in svg
    assert "+50.0%" in svg and "2.9.1" in svg and "2.10.0" in svg


def test_page_has_a_history_section_only_with_several_runs_of_a_suite_and_hardware(tmp_path):
    new, old = two_torch_versions(tmp_path)
    page = render(load_runs([new, old]))
    assert 'id="history"' in page and 'class="change slower"' in page
    section = page[page.index('id="history"'):]
    assert "slower" in section and "+50.0%" in section and "torch 2.9.1" in section
    assert 'id="history"' not in render(load_runs([new]))
    other = write_run(tmp_path / "gpu", [record("x", C1, 1.0)], hardware="Synthetic GPU", torch="2.10.0")
    assert 'id="history"' not in render(load_runs([new, other]))  # one run per hardware: no history


def test_history_escapes_what_results_files_say(tmp_path):
    runs = [write_run(tmp_path / f"r{i}", [record(XSS, C1, ms, noise=0.01)], torch=f"2.{i}.0{XSS}",
                      started=f"2026-0{i}-01T00:00:00+00:00") for i, ms in ((1, 1.0), (2, 2.0))]
    page = render(load_runs(runs))
    assert XSS not in page and "&lt;script&gt;" in page


def test_a_failed_run_breaks_the_line_and_is_listed(tmp_path):
    runs = [write_run(tmp_path / f"r{i}", [record("x", C1, ms, status=status)], torch=f"2.{i}.0")
            for i, (ms, status) in enumerate(((1.0, "ok"), (None, "error"), (1.0, "ok")), 1)]
    [history] = histories(load_runs(runs))
    key = next(iter(history.cases))
    svg = history_chart(history, key, lambda impl: "#123456")
    assert svg.count("<circle") - 1 == 2 and '<line class="line"' not in svg  # two points, no line through the error
    assert [s.change.verdict for s in history.shifts[key]] == ["broke", "fixed"]


def test_results_are_found_at_any_depth(tmp_path):
    new, old = two_torch_versions(tmp_path / "a" / "b" / "c")
    named = write_run(tmp_path / "d", [record("x", C1, 1.0)])
    loose = named.parent / "loose.json"  # FILE.json beside FILE.journal.jsonl: a run written with --output FILE.json
    loose.write_text(named.read_text())
    (named.parent / "loose.journal.jsonl").write_text("")
    (named.parent / "other.json").write_text("{}")  # no journal beside it: not a run's
    hidden = write_run(tmp_path / ".venv" / "x", [record("x", C1, 1.0)])
    found = find_results([tmp_path, new])
    assert set(found) == {new, old, named, loose} and hidden not in found
    assert find_results([new.parent]) == [new]  # a run directory is its own results file
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no results files"):
        find_results([tmp_path / "empty"])


def test_report_command_reads_directory_trees(tmp_path, capsys):
    two_torch_versions(tmp_path / "runs" / "2026" / "jan")
    assert main(["report", str(tmp_path / "runs"), "-o", str(tmp_path / "site")]) == 0
    page = (tmp_path / "site" / "index.html").read_text()
    assert 'id="history"' in page and "2 results files" in page
    assert main(["report", str(tmp_path / "runs")]) == 0
    assert "synthetic" in capsys.readouterr().out
    (tmp_path / "nothing").mkdir()
    assert main(["report", str(tmp_path / "nothing")]) == 1
    assert "no results files" in capsys.readouterr().err


def test_a_bad_file_in_a_tree_is_named(tmp_path, capsys):
    two_torch_versions(tmp_path)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text(json.dumps({"schema": 1}))
    assert main(["report", str(tmp_path)]) == 1
    assert "broken" in capsys.readouterr().err
