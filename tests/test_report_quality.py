"""The quality section: task records as boards with a Pareto front, kept off the speed leaderboards, on page and terminal."""

import re
from pathlib import Path

import pytest
from rich.console import Console
from synthetic_results import case, record, run_info, task_case, task_record, write_run

from attnbench.cli import main
from attnbench.report import charts
from attnbench.report.html import render
from attnbench.report.quality import pareto_front, print_task_records, task_boards
from attnbench.report.runs import Run, load_runs
from attnbench.report.terminal import print_run

XSS = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'


def run(records, **info) -> Run:
    return Run(info=run_info(**info), records=records, source=Path("results.json"))


def quality_records():
    return [
        task_record("eager", [0.90, 0.92, 0.94], step_ms=20.0),
        task_record("sdpa", [0.90, 0.92, 0.94], step_ms=10.0),
        task_record("broken", [0.50, 0.52, 0.51], step_ms=5.0, status="incorrect", agrees=False,
                    reason="accuracy disagrees with eager's"),
        task_record("linear", [0.80, 0.83, 0.86], step_ms=4.0, exact=False, agrees=False),
        task_record("lowrank", [0.70, 0.72, 0.74], step_ms=8.0, exact=False, agrees=False),
        task_record("guess", [0.49, 0.50, 0.51], step_ms=2.0, exact=False, agrees=False),
        task_record("int8", None, status="unsupported", exact=False, reason="backward not supported"),
    ]


def test_pareto_front():
    points = [(10.0, 0.9), (5.0, 0.8), (20.0, 0.85), (5.0, 0.8), (5.0, 0.7), (30.0, 0.95)]
    # (20, 0.85) is slower and less accurate than (10, 0.9); (5, 0.7) is as fast as (5, 0.8) but worse; ties stay.
    assert pareto_front(points) == [True, True, False, True, False, True]
    assert pareto_front([]) == []


def test_boards_rank_by_accuracy_mark_the_front_and_keep_the_newest_record():
    old = run([task_record("sdpa", [0.1, 0.1, 0.1], step_ms=1.0)], run_id="old", started="2026-01-01T00:00:00+00:00")
    new = run(quality_records(), run_id="new", started="2026-02-01T00:00:00+00:00")
    other_task = run([task_record("eager", [0.6, 0.6, 0.6], case_=task_case("recall"))], run_id="recall")
    boards = task_boards([new, old, other_task])
    assert [b.task for b in boards] == ["compare", "recall"]
    board = boards[0]
    assert board.superseded == 1 and [r.id for r in board.runs] == ["old", "new"]
    assert board.hardware == "Synthetic CPU (2 threads)" and board.seeds == [0, 1, 2] and board.chance == 0.5
    assert [line.impl for line in board.lines] == ["eager", "sdpa", "linear", "lowrank", "broken", "guess", "int8"]
    # Faster than linear, neither an incorrect record nor one at chance has a place on the front; lowrank is
    # slower and worse than linear.
    assert {line.impl for line in board.lines if line.front} == {"sdpa", "linear"}
    verdicts = {line.impl: line.verdict for line in board.lines}
    assert verdicts == {"eager": "reference", "sdpa": "agrees", "broken": "DISAGREES", "linear": "outside spread",
                        "lowrank": "outside spread", "guess": "outside spread", "int8": "—"}


def test_task_records_stay_off_the_leaderboards_and_the_case_table():
    kernel = [record("base", case(seq), 1.0) for seq in (64, 128)] + [record("x", case(64), 0.5)]
    mixed = render([run(kernel + quality_records())])
    alone = render([run(kernel)])
    for html in (mixed, alone):
        assert len(re.findall(r'<section class="leaderboard"', html)) == 1
        assert len(re.findall(r"<tr><td>Synthetic CPU", html)) == len(kernel)
    assert 'id="quality"' not in alone
    # The speed leaderboard lists the kernel implementations only.
    board = mixed[mixed.index('<section class="leaderboard"'):mixed.index('id="quality"')]
    assert "<td class=\"impl\">base</td>" in board and "sdpa" not in board and "int8" not in board
    quality = mixed[mixed.index('id="quality"'):mixed.index('id="cases"')]
    assert "compare <span class=\"on\">on</span> Synthetic CPU (2 threads)" in quality
    assert "0.920 ± 0.020" in quality and "0.900–0.940" in quality and "backward not supported" in quality
    assert 'title="synthetic rule">agrees</td>' in quality and quality.count('<td class="front">★</td>') == 2


def test_a_quality_only_page_has_no_case_table():
    html = render([run(quality_records())])
    assert 'id="quality"' in html and 'id="case-table"' not in html and 'href="#cases"' not in html
    assert '<section class="leaderboard"' not in html


def test_chart_marks_kind_front_and_failures():
    [board] = task_boards([run(quality_records())])
    from attnbench.report.quality import quality_views

    [view] = quality_views([board], charts.Palette(line.impl for line in board.lines), {id(board.runs[0]): "run-1"})
    svg = str(view.chart)
    plotted = [line for line in board.lines if line.plotted]
    assert len(plotted) == 6
    # Exact implementations are circles, approximate ones diamonds; the front ringed (two points, one legend entry).
    # Filled circles: eager and sdpa, and the legend's three exact ones; broken (incorrect) is hollow.
    assert len(re.findall(r'<circle cx="[^"]+" cy="[^"]+" r="3.5" fill="#[0-9a-f]{6}"', svg)) == 2 + 3
    assert len(re.findall(r'<circle cx="[^"]+" cy="[^"]+" r="3.5" fill="#fff"', svg)) == 1
    assert len(re.findall(r'<polygon points="[^"]+" fill="#[0-9a-f]{6}"', svg)) == 3 + 3  # diamonds, and in the legend
    assert svg.count('class="ring"') == 2 + 1 and svg.count('class="front"') == 1 and 'class="chance"' in svg
    assert "sdpa (exact): accuracy 0.920 ± 0.020 [0.900, 0.940], 10 ms per step, vs eager: agrees · Pareto front" in svg
    assert charts.quality_chart("empty", [], charts.Palette([])) is None


def test_plugin_text_in_the_quality_section_shows_as_text(tmp_path, capsys):
    records = [task_record("eager", [0.9, 0.9, 0.9]), task_record(XSS, [0.8, 0.8, 0.8], exact=False),
               task_record("bad", None, status="error", reason=XSS)]
    html = render([run(records)])
    assert XSS not in html and "<img" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_terminal_tables(tmp_path, capsys):
    kernel = [record("base", case(64), 1.0)]
    console = Console(record=True, width=250)
    print_run(console, kernel + quality_records(), "base")
    text = console.export_text()
    assert "B1 H4 N64 D32 float32 none fwd" in text
    assert "compare · Synthetic CPU — compare N128 d64 H4 L2 B32 300 steps, 3 seeds, chance 0.500" in text
    assert "0.920 ± 0.020 [0.900, 0.940]" in text and "DISAGREES" in text and "backward not supported" in text
    console = Console(record=True, width=250)
    print_task_records(console, kernel)
    assert console.export_text() == ""


def test_report_and_compare_commands_read_task_records(tmp_path, capsys):
    a = write_run(tmp_path / "a", [record("base", case(64), 1.0)] + quality_records())
    b = write_run(tmp_path / "b", [record("base", case(64), 1.0), task_record("sdpa", [0.5, 0.5, 0.5])])
    assert main(["report", str(a)]) == 0
    out = capsys.readouterr().out
    assert "95% interval" in out and "compare · Synthetic CPU (2 threads)" in out and "★" in out
    assert main(["compare", str(a), str(b), "--all"]) == 0
    assert "compare N128 d64 H4 L2 B32 300 steps" in capsys.readouterr().out
    assert [r.impl for r in load_runs([b])[0].records] == ["base", "sdpa"]


@pytest.mark.parametrize("lo,hi,ticks", [(0.45, 1.0, [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]), (0.9, 0.96, [0.9, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96]),
                                         (0.52, 0.71, [0.55, 0.6, 0.65, 0.7]),
                                         (0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])])
def test_accuracy_ticks(lo, hi, ticks):
    assert charts.linear_ticks(lo, hi) == pytest.approx(ticks)
