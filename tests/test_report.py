"""Leaderboards: ranking math on synthetic records, merging runs, the HTML page and its escaping, the report command."""

import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from synthetic_results import case, record, run_info, write_run

from attnbench.cli import main
from attnbench.report.html import PAGE_NAME, render
from attnbench.report.rank import bootstrap_interval, leaderboard
from attnbench.report.runs import Run, group_runs, load_runs

CASES = [case(seq) for seq in (64, 128, 256, 512)]
XSS_SCRIPT = "<script>alert(1)</script>"
XSS_ATTR = '"><img src=x onerror=alert(2)>'


def board(records, **info):
    [group] = group_runs([Run(info=run_info(**info), records=records, source=Path("results.json"))])
    return leaderboard(group)


def by_name(section):
    return {s.impl: s for s in section}


def test_score_is_the_geometric_mean_speedup_over_the_baseline():
    records = [record("base", c, 1.0) for c in CASES]
    records += [record("fast", c, ms) for c, ms in zip(CASES, (0.5, 0.25, 1.0, 0.5))]  # speedups 2, 4, 1, 2
    lines = by_name(board(records).exact)
    assert lines["fast"].score == pytest.approx(2.0)
    assert lines["fast"].low <= 2.0 <= lines["fast"].high
    assert 1.0 <= lines["fast"].low and lines["fast"].high <= 4.0
    assert lines["base"].score == pytest.approx(1.0)
    assert lines["fast"].cases_scored == 4 and lines["fast"].coverage == 1.0


def test_no_speed_credit_for_a_case_it_got_wrong():
    records = [record("base", c, 1.0) for c in CASES]
    # 100x faster where it is wrong, as fast as the baseline where it is right.
    records += [record("cheat", CASES[0], 0.01, "incorrect")] + [record("cheat", c, 1.0) for c in CASES[1:]]
    line = by_name(board(records).exact)["cheat"]
    assert line.score == pytest.approx(1.0)
    assert line.cases_scored == 3
    assert (line.passed, line.attempted) == (3, 4)
    assert line.pass_rate == pytest.approx(0.75)


def test_overlapping_intervals_are_ties_and_ranks_count_the_implementations_entirely_above():
    records = [record("base", c, 1.0) for c in CASES]
    records += [record("a", c, 1 / r) for c, r in zip(CASES, (2.0, 2.2, 1.8, 2.0))]
    records += [record("b", c, 1 / r) for c, r in zip(CASES, (1.9, 2.1, 1.95, 2.05))]
    records += [record("same", c, 1.0) for c in CASES]
    lines = by_name(board(records).exact)
    assert lines["a"].rank == lines["b"].rank == 1
    assert "b" in lines["a"].tied_with and "a" in lines["b"].tied_with
    assert lines["same"].rank == lines["base"].rank == 3
    assert "same" in lines["base"].tied_with
    assert "a" not in lines["same"].tied_with


def test_interval_carries_the_timing_noise_and_is_seeded():
    records = [record("base", CASES[0], 1.0, noise=0.2), record("x", CASES[0], 0.5, noise=0.2)]
    line = by_name(board(records).exact)["x"]
    # One case: no spread across cases, so the width is the timing noise alone.
    assert line.low < 2.0 < line.high
    assert line.high / line.low > 1.2
    sigma = math.hypot(math.log1p(0.2), math.log1p(0.2))
    assert bootstrap_interval([math.log(2)], [sigma], 7) == bootstrap_interval([math.log(2)], [sigma], 7)


def test_coverage_memory_approximate_and_unranked():
    records = [record("base", c, 1.0, peak=1000) for c in CASES]
    records += [record("big", c, 1.0, peak=4000) for c in CASES[:3]]
    records.append(record("big", CASES[3], status="unsupported", reason="no long sequences"))
    records += [record("lowrank", c, 0.5, exact=False, rel_err=e) for c, e in zip(CASES, (1e-2, 2e-2, 3e-2, 9e-2))]
    records += [record("reference", c, 9.0, ranked=False) for c in CASES]
    b = board(records)
    big = by_name(b.exact)["big"]
    assert (big.cases_supported, big.cases_total) == (3, 4)
    assert big.memory_ratio == pytest.approx(4.0)
    assert [s.impl for s in b.approximate] == ["lowrank"]
    assert b.approximate[0].rel_err_median == pytest.approx(2.5e-2) and b.approximate[0].rel_err_max == pytest.approx(9e-2)
    assert [s.impl for s in b.unranked] == ["reference"]
    assert "reference" not in by_name(b.exact) and "lowrank" not in by_name(b.exact)


def test_no_score_without_a_correct_baseline_in_the_same_run():
    records = [record("base", c, status="unsupported") for c in CASES] + [record("x", c, 1.0) for c in CASES]
    line = by_name(board(records).exact)["x"]
    assert line.score is None and line.rank is None
    assert line.passed == 4


def test_newest_run_wins_and_speedups_stay_within_their_run(tmp_path):
    old = write_run(tmp_path / "old", [record("base", CASES[0], 1.0), record("x", CASES[0], 1.0)],
                    started="2026-01-01T00:00:00+00:00", torch="2.13.0")
    new = write_run(tmp_path / "new", [record("base", CASES[0], 2.0), record("x", CASES[0], 1.0)],
                    started="2026-02-01T00:00:00+00:00", torch="2.14.0")
    [group] = group_runs(load_runs([new, old]))
    assert group.superseded == 2
    assert by_name(leaderboard(group).exact)["x"].score == pytest.approx(2.0)


def two_machines(tmp_path):
    a = write_run(tmp_path / "a", [record("base", c, 1.0) for c in CASES] + [record("x", c, 0.5) for c in CASES],
                  hardware="Machine A (8 threads)", hostname="host-alpha")
    b = write_run(tmp_path / "b", [record("base", c, 1.0) for c in CASES] + [record("x", c, 2.0) for c in CASES],
                  hardware="NVIDIA Machine B", hostname="host-beta", torch="2.14.0")
    return a, b


def test_results_from_two_machines_merge_as_two_hardware_entries(tmp_path):
    a, b = two_machines(tmp_path)
    groups = group_runs(load_runs([a, b]))
    assert [g.hardware for g in groups] == ["Machine A (8 threads)", "NVIDIA Machine B"]
    assert [by_name(leaderboard(g).exact)["x"].score for g in groups] == pytest.approx([2.0, 0.5])
    html = render(load_runs([a, b]))
    for text in ("Machine A (8 threads)", "NVIDIA Machine B", "host-alpha", "host-beta", "2.14.0"):
        assert text in html
    assert len(re.findall(r'<section class="leaderboard"', html)) == 2


def test_a_mixed_fleet_run_opens_as_one_entry_per_hardware_type(tmp_path):
    a100, h100 = "NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3"
    # One run, as a fleet merges it: cases 0-1 measured on A100 nodes, 2-3 on H100 nodes, x twice as fast on H100s.
    records = []
    for i, c in enumerate(CASES):
        gpu, x_ms = (a100, 0.5) if i < 2 else (h100, 0.25)
        records += [record("base", c, 1.0, hardware=gpu), record("x", c, x_ms, hardware=gpu)]
    records.append(record("x", case(1024), 0.5, hardware=""))  # names no hardware: the run's label stands in
    path = write_run(tmp_path / "fleet", records, hardware=f"{a100} + {h100}", device="cuda")
    groups = group_runs(load_runs([path]))
    assert [(g.hardware, len(g.cases)) for g in groups] == [(a100, 2), (h100, 2), (f"{a100} + {h100}", 1)]
    assert [by_name(leaderboard(g).exact)["x"].score for g in groups[:2]] == pytest.approx([2.0, 4.0])
    html = render(load_runs([path]))
    headings = re.findall(r"<h2>synthetic <span class=\"on\">on</span> ([^<]*)</h2>", html)
    assert headings == [a100, h100, f"{a100} + {h100}"]
    # The case table names each record's own hardware.
    assert html.count(f"<tr><td>{a100}</td>") == 4 and html.count(f"<tr><td>{h100}</td>") == 4


def test_report_command_writes_a_page_or_prints_tables(tmp_path, capsys):
    a, b = two_machines(tmp_path)
    assert main(["report", str(a), str(b.parent), "-o", str(tmp_path / "page")]) == 0
    assert (tmp_path / "page" / PAGE_NAME).stat().st_size > 0
    capsys.readouterr()
    assert main(["report", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "Machine A (8 threads)" in out and "NVIDIA Machine B" in out and "95% interval" in out
    assert main(["report", str(tmp_path / "missing.json")]) == 1


def test_empty_cells_say_why_and_wrong_answers_get_no_credit():
    records = [record("base", c, 1.0) for c in CASES]
    records += [record("x", CASES[0], status="unsupported", reason="head_dim 32 is not supported by x")]
    records += [record("x", CASES[1], status="crashed", reason="worker died: SIGSEGV")]
    records += [record("x", CASES[2], 0.1, status="incorrect", reason="rel err 0.5 > 2x eager")]
    html = render([Run(info=run_info(), records=records, source=Path("results.json"))])
    assert 'title="head_dim 32 is not supported by x">unsupported</td>' in html
    assert 'title="worker died: SIGSEGV">crashed</td>' in html
    assert ">no credit</td>" in html


def test_plugin_text_shows_as_text(tmp_path, capsys):
    evil = XSS_SCRIPT + XSS_ATTR
    records = [record("base", c, 1.0) for c in CASES]
    records += [record(evil, c, 0.5, plugin=evil, version=evil) for c in CASES[:2]]
    records += [record(evil, CASES[2], status="unsupported", reason=evil), record(evil, CASES[3], status="oom", reason=evil)]
    info = run_info(hardware=evil, hostname=evil)
    info["plugins"].append({"name": evil, "distribution": evil, "version": evil, "implementations": [evil],
                            "errors": [evil], "ok": False})
    html = render([Run(info=info, records=records, source=tmp_path / "results.json")])
    assert XSS_SCRIPT not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # Ours only: the page's script and the case table's data, where the text is JSON with < > & escaped.
    assert re.findall(r"<script[^>]*>", html) == ['<script type="application/json" id="case-data">', "<script>"]
    data = re.search(r'id="case-data">(.*?)</script>', html, re.S).group(1)
    assert "<" not in data and ">" not in data and "\\u003cscript\\u003e" in data
    assert evil in json.loads(data)["strings"]
    # Inside SVG tooltips and legends too.
    assert "<title>&lt;script&gt;alert(1)" in html

    path = write_run(tmp_path / "run", [record("base", CASES[0], 1.0), record("[bold red]x[/]", CASES[0], 0.5)])
    assert main(["report", str(path)]) == 0
    assert "[bold red]x[/]" in capsys.readouterr().out


def test_page_is_self_contained(tmp_path):
    a, b = two_machines(tmp_path)
    html = render(load_runs([a, b]))
    assert "<link" not in html
    assert not re.findall(r'\s(?:src|href)="(?!#)', html)
    # The only URL is SVG's namespace name, which browsers never fetch.
    assert set(re.findall(r"https?://[^\s\"'<>]+", html)) == {"http://www.w3.org/2000/svg"}


EVIL_PLUGIN = f'''
from attnbench import Implementation, Unsupported, hookimpl

def build(case):
    raise Unsupported({XSS_SCRIPT + XSS_ATTR!r})

@hookimpl
def attnbench_implementations():
    return [Implementation(name="evil.html", build=build, description={XSS_SCRIPT!r}, devices={{"cpu"}})]
'''
BROKEN_PLUGIN = f"raise ImportError({XSS_ATTR!r})\n"
TINY_SUITE = """
name: tiny
defaults: {batch: 1, heads_q: 2, seq: 32, head_dim: 16}
include_cases:
  - {}
cpu:
  timing: {warmup: 1, min_time_s: 0.005, repeats: 3}
"""


@pytest.mark.slow
def test_run_writes_an_escaped_page_beside_its_results(tmp_path):
    (tmp_path / "evil_plugin.py").write_text(textwrap.dedent(EVIL_PLUGIN))
    (tmp_path / "broken_plugin.py").write_text(BROKEN_PLUGIN)
    (tmp_path / "tiny.yaml").write_text(TINY_SUITE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "ATTNBENCH_PLUGIN_MODULES": "evil_plugin,broken_plugin"}
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "attnbench", "run", str(tmp_path / "tiny.yaml"), "--impl", "evil.*",
                           "--output", str(out), "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    html = (out / PAGE_NAME).read_text()
    assert (out / "results.json").exists()
    assert XSS_SCRIPT not in html and "<img" not in html
    assert 'title="&lt;script&gt;alert(1)&lt;/script&gt;&#34;&gt;&lt;img src=x onerror=alert(2)&gt;">unsupported' in html
    assert "broken_plugin" in html and "&lt;img src=x onerror=alert(2)&gt;" in html
