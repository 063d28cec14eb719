"""Boards people cite: fast_p and win rate, implausible records, implementations that cannot run on the device,
the roofline chart, and a page that stays small and bounded with large results (no browser: tests/test_browser.py)."""

import base64
import gzip
import json
import re
from pathlib import Path

import pytest
from synthetic_results import CEILINGS, case, record, run_info

from attnbench.report import html as page_html
from attnbench.report.charts import DENSE, Palette
from attnbench.report.fastp import curve, fast_p
from attnbench.report.html import render
from attnbench.report.pagedata import PAGE_ROWS, pack, script_json
from attnbench.report.rank import leaderboard
from attnbench.report.roofline_chart import ceilings_of, roofline_chart, roofs
from attnbench.report.runs import Run, group_runs

CASES = [case(seq) for seq in (64, 128, 256, 512)]
OFF_DEVICE_REASON = "device cpu not supported (declares cuda)"


def run(records, **info):
    return Run(info=run_info(**info), records=records, source=Path("results.json"))


def board(records, **info):
    [group] = group_runs([run(records, **info)])
    return leaderboard(group)


def by_name(section):
    return {s.impl: s for s in section}


def test_fast_p_counts_correct_cases_faster_than_p_over_every_case():
    speedups = sorted([0.5, 1.0, 2.0, 2.0, 3.0])
    assert fast_p(speedups, 8, 0.0) == 5 / 8  # right, of all 8 cases
    assert fast_p(speedups, 8, 1.0) == 3 / 8  # strictly faster: 1.0 is not
    assert fast_p(speedups, 8, 2.0) == 1 / 8
    assert fast_p(speedups, 8, 3.0) == 0
    assert curve(speedups, 8) == [(0.0, 5 / 8), (0.5, 5 / 8), (0.5, 4 / 8), (1.0, 4 / 8), (1.0, 3 / 8),
                                  (2.0, 3 / 8), (2.0, 1 / 8), (3.0, 1 / 8), (3.0, 0.0)]


def test_win_rate_needs_a_correct_win_beyond_the_noise_and_fast_1_any_correct_win():
    cases = [case(seq) for seq in (64, 128, 256, 512, 1024)]
    records = [record("base", c, 1.0, noise=0.05) for c in cases]
    records += [record("x", cases[0], 0.5, noise=0.05),  # 2x: a win
                record("x", cases[1], 0.98, noise=0.05),  # inside the noise: fast, not a win
                record("x", cases[2], 2.0, noise=0.05),  # slower
                record("x", cases[3], 0.1, status="incorrect"),  # wrong: neither
                record("x", cases[4], status="unsupported", reason="no")]
    x = by_name(board(records).exact)["x"]
    assert (x.wins, x.win_rate) == (1, 1 / 5)
    assert x.fast_1 == pytest.approx(2 / 5)
    assert by_name(board(records).exact)["base"].win_rate == 0


def test_implausible_records_are_not_scored_fail_the_pass_rate_and_are_marked():
    records = [record("base", c, 1.0) for c in CASES]
    records += [record("cheat", c, 0.5) for c in CASES[:2]]
    records += [record("cheat", c, 0.001, status="implausible", reason="below the roofline floor") for c in CASES[2:]]
    cheat = by_name(board(records).exact)["cheat"]
    assert cheat.score == pytest.approx(2.0) and cheat.cases_scored == 2
    assert (cheat.implausible, cheat.passed, cheat.attempted) == (2, 2, 4)
    assert cheat.cases_supported == 4 and cheat.speedups == [pytest.approx(2.0)] * 2
    html = render([run(records)])
    assert '<span class="implausible" title="timed faster than the roofline floor allows: not scored">+2 implausible</span>' in html
    assert '<span class="implausible">2 implausible</span> records' in html
    # The case table keeps its time, marks its status and gives no speedup.
    assert '<td class="status implausible">implausible</td><td class="num" data-v="0.001">' in html
    assert 'title="implausible: below the roofline floor; kept out of the score">not scored</td>' in html


def test_implementations_that_cannot_run_on_the_device_are_one_line_not_rows():
    records = [record("base", c, 1.0) for c in CASES] + [record("x", c, 0.5) for c in CASES]
    records += [record("gpu.only", c, status="unsupported", reason=OFF_DEVICE_REASON) for c in CASES]
    records += [record("partial", c, status="unsupported", reason=OFF_DEVICE_REASON) for c in CASES[:2]]
    records += [record("partial", c, 1.0) for c in CASES[2:]]
    b = board(records)
    assert b.off_device == [("gpu.only", OFF_DEVICE_REASON)]
    assert "gpu.only" not in by_name(b.exact) and "partial" in by_name(b.exact)
    html = render([run(records)])
    assert f"Cannot run on cpu at all: gpu.only ({OFF_DEVICE_REASON})." in html
    assert '<td class="impl">gpu.only</td><td class="num">' not in html  # no standings row


def test_boards_carry_win_rate_fast_p_and_the_rules_fold_below_them():
    records = [record("base", c, 1.0) for c in CASES] + [record("x", c, 0.5) for c in CASES]
    html = render([run(records)])
    assert "<th>win rate</th>" not in html and ">win rate</th>" in html and ">fast_1</th>" in html
    assert '<td class="num">100% (4/4)</td><td class="num">100%</td>' in html
    assert 'aria-label="fast_p: right and more than p× faster"' in html
    rules, boards = html.index('<details id="rules">'), html.index('<section class="leaderboard"')
    assert boards < rules < html.index('<section id="cases">')
    assert "fast_p" in html[rules:html.index("</details>", rules)]


def roofline_records(n_cases=4):
    cases = [case(seq) for seq in (64, 128, 256, 512, 1024, 2048)[:n_cases]]
    records = [record("base", c, 1.0, intensity=4.0 * c["seq_kv"]) for c in cases]
    records += [record("fast", c, 0.5, intensity=4.0 * c["seq_kv"]) for c in cases[:-1]]
    records.append(record("fast", cases[-1], 0.001, status="implausible", intensity=4.0 * cases[-1]["seq_kv"]))
    return records


def test_the_roofline_draws_each_record_under_measured_and_published_roofs():
    records = roofline_records()
    [group] = group_runs([run(records, ceilings=CEILINGS)])
    assert ceilings_of(group.runs) == CEILINGS
    chart = str(roofline_chart(group.entries, ceilings_of(group.runs), Palette(["base", "fast"])))
    assert chart.count('<polyline class="roof"') == 1 and chart.count('<polyline class="roof published"') == 1
    assert "<title>measured roof, float32: 2 TFLOP/s, 40 GB/s</title>" in chart
    tips = re.findall(r"<title>((?:base|fast) · [^<]*)</title>", chart)
    assert len(tips) == len(records)
    assert any("% of the roof" in t and "-bound" in t for t in tips)
    assert any("✗ implausible" in t for t in tips)  # drawn, hollow
    assert chart.count('fill="#fff"') == 1
    html = render([run(records, ceilings=CEILINGS)])
    assert 'aria-label="Roofline"' in html


def test_the_roofline_reads_ceilings_defensively_and_needs_intensities():
    records = roofline_records()
    [group] = group_runs([run(records)])
    palette = Palette(["base", "fast"])
    bare = str(roofline_chart(group.entries, {}, palette))
    assert 'class="roof' not in bare and "base · B1 H4 N64 D32" in bare
    junk = {"measured": {"tflops": {"float32": "fast", "bfloat16": float("nan")}, "gbps": {"best": -1}},
            "published": [1, 2]}
    assert roofs(junk, ["float32"]) == []
    assert roofline_chart(group.entries, junk, palette) is not None
    plain = [record("base", c, 1.0) for c in CASES]
    [group] = group_runs([run(plain)])
    assert roofline_chart(group.entries, CEILINGS, palette) is None
    assert 'aria-label="Roofline"' not in render([run(plain, ceilings=CEILINGS)])


def test_the_roofline_escapes_what_the_results_say():
    evil = "<script>alert(1)</script>"
    records = [record(evil, {**c, "dtype": evil}, 1.0, intensity=10.0, reason=evil) for c in CASES]
    ceilings = {"measured": {"tflops": {evil: 1.0}, "gbps": 10.0}}
    [group] = group_runs([run(records, baseline=evil)])
    chart = str(roofline_chart(group.entries, ceilings, Palette([evil])))
    assert "<script" not in chart and "&lt;script&gt;" in chart


def test_dense_charts_merge_markers_on_the_same_spot():
    """A board of thousands of records draws what can be seen: bounded markers, each counting its records."""
    cases = [case(seq, dtype=d, mask=m, pass_=p) for seq in (64, 128) for d in ("float32", "bfloat16")
             for m in ("none", "causal") for p in ("fwd", "bwd")]
    records = []
    for i in range(40):
        records += [record(f"impl{i % 4}", {**c, "batch": 1 + i}, 1.0, intensity=4.0 * c["seq_kv"]) for c in cases]
    [group] = group_runs([run(records)])
    per_impl = len(records) // 4
    assert per_impl > DENSE
    chart = str(roofline_chart(group.entries, CEILINGS, Palette(f"impl{i}" for i in range(4))))
    marks = re.findall(r"<title>(\d+) here:", chart)
    assert marks and len(marks) < len(records) / 10
    assert sum(map(int, marks)) + len(re.findall(r"<title>impl\d · ", chart)) == len(records)


def test_script_data_is_json_that_cannot_leave_its_element():
    evil = "</script><!-- <img src=x onerror=alert(1)> & \u2028"
    text = str(script_json({"s": evil}))
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"s": evil}
    packed = pack([["a", 1.5, None, "b"], ["b", float("inf"), 2.0, "a"]])
    assert packed == {"strings": ["a", "b"], "rows": [[0, 1.5, None, 1], [1, None, 2.0, 0]]}


def test_a_large_case_table_renders_one_page_and_carries_every_row_as_data():
    cases = [case(seq, dtype=d) for seq in range(64, 64 + 8 * 60, 8) for d in ("float32", "bfloat16")]
    records = [record("base", c, 1.0) for c in cases] + [record("x", c, 0.5) for c in cases]
    assert len(records) > PAGE_ROWS
    html = render([run(records)])
    table = html[html.index('<table id="case-table"'):html.index("</table>", html.index('<table id="case-table"'))]
    assert table.count("<tr><td>") == PAGE_ROWS
    data = json.loads(re.search(r'id="case-data">(.*?)</script>', html, re.S).group(1))
    assert len(data["rows"]) == len(records)
    strings = data["strings"]
    first = [strings[i] if isinstance(i, int) and k not in (2, 10, 13, 16, 19, 22) else i
             for k, i in enumerate(data["rows"][0])]
    assert first[:2] == ["Synthetic CPU (2 threads)", "B1 H4 N64 D32 float32 none fwd"]
    assert first[7:10] == ["base", "ok", "ok"] and first[11] == "1 ms ± 0%"
    assert "<noscript>" in html and f"The first {PAGE_ROWS} of {len(records)} records" in html


def test_family_charts_past_the_budget_are_carried_gzipped_and_the_first_is_drawn(monkeypatch):
    monkeypatch.setattr(page_html, "INLINE_CHART_BYTES", 1)
    cases = [case(seq, dtype=d, mask=m) for seq in (64, 128) for d in ("float32", "bfloat16") for m in ("none", "causal")]
    records = [record("base", c, 1.0) for c in cases] + [record("x", c, 0.5) for c in cases]
    html = render([run(records)])
    families = re.findall(r'<details class="family"[^>]*>', html)
    assert len(families) == 4 and "data-lazy" not in families[0] and " open" in families[0]
    assert [re.search(r'data-lazy="(\d+)"', f).group(1) for f in families[1:]] == ["0", "1", "2"]
    blob = json.loads(re.search(r'id="family-charts">(.*?)</script>', html, re.S).group(1))
    charts = json.loads(gzip.decompress(base64.b64decode(blob["gzip"])))
    assert len(charts) == 3 and all(len(c) == 3 and c[0].startswith('<svg class="chart"') for c in charts)
    # Within the budget, nothing is carried.
    monkeypatch.undo()
    assert 'id="family-charts"' not in render([run(records)])
