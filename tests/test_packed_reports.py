"""Packed (ragged) and paged records through the schema, the paging record, grouping and every reader."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from synthetic_results import case, record, run_info, write_run

from attnbench.case import Case
from attnbench.cli import main
from attnbench.implementation import Implementation
from attnbench.measure.correctness import make_inputs
from attnbench.measurement import Request, _seed
from attnbench.options import Correctness
from attnbench.recommend import signature
from attnbench.report.format import batch_shape, case_label, distinct_labels, family_label
from attnbench.report.html import render
from attnbench.report.rank import leaderboard
from attnbench.report.runs import Run, family_key, group_runs, load_runs
from attnbench.report.terminal import main_axis, print_run, summary_table
from attnbench.results import Record, load, pair_key, read_results
from attnbench.results_schema import ResultsError, record_problem
from attnbench.runner import TABLE_PAGES_RECORDED, RunOptions, make_record, paging_metrics


def packed(seqlens_q, seqlens_kv=None, page_size=None, **fields) -> dict:
    """A packed kernel case as Case.to_dict writes it (heads 4/2, head_dim 16, causal)."""
    seqlens_kv = list(seqlens_kv or seqlens_q)
    values = {"batch": len(seqlens_q), "heads_q": 4, "heads_kv": 2, "seq_q": max(seqlens_q), "seq_kv": max(seqlens_kv),
              "head_dim": 16, "dtype": "float32", "device": "cpu", "mask": "causal", "window": None, "scale": None,
              "pass_": "fwd", "seqlens_q": tuple(seqlens_q), "seqlens_kv": tuple(seqlens_kv), "page_size": page_size}
    return Case(**{**values, **fields}).to_dict()


RAGGED_A = packed([37, 100, 64])
RAGGED_B = packed([100, 64, 37])
"""Two cases that differ only in their lengths, and whose labels read the same."""
PAGED = packed([64, 64, 1, 1, 1, 1], [64, 64, 128, 128, 128, 128], page_size=16)


def packed_records(cases=(RAGGED_A, RAGGED_B, PAGED), base_ms=2.0, x_ms=1.0):
    return [r for c in cases for r in (record("base", c, base_ms), record("x", c, x_ms),
                                       record("y", c, status="unsupported", reason="not ragged"))]


# --- labels -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fields", [
    dict(batch=2, heads_q=8, heads_kv=2, seq_q=512, seq_kv=1024, head_dim=64, mask="causal"),
    dict(batch=1, heads_q=2, heads_kv=2, seq_q=8, seq_kv=16, head_dim=8, mask="block_sparse", block=4),
    dict(batch=1, heads_q=2, heads_kv=2, seq_q=8, seq_kv=8, head_dim=8, mask="sliding_window", window=3, scale=0.5),
    dict(batch=3, heads_q=32, heads_kv=8, seq_q=4096, seq_kv=4096, head_dim=128, seqlens_q=(37, 4096, 4059),
         seqlens_kv=(37, 4096, 4059), dtype="bfloat16", mask="causal"),
    dict(batch=34, heads_q=32, heads_kv=8, seq_q=2048, seq_kv=2048, head_dim=128, dtype="bfloat16", mask="causal",
         seqlens_q=(2048,) * 2 + (1,) * 32, seqlens_kv=(2048,) * 2 + (1024,) * 32, page_size=16),
], ids=["dense", "block_sparse", "window", "ragged", "paged"])
def test_the_reports_label_a_case_as_case_label_does(fields):
    c = Case(**fields)
    assert case_label(c.to_dict()) == c.label()
    assert batch_shape(c.to_dict()) == c.batch_shape()


def test_labels_show_the_batch_shape():
    assert case_label(RAGGED_A) == "ragged 37..100, 201 tok H4/2 D16 float32 causal fwd"
    assert case_label(PAGED) == "2q64_4q1s128 p16 H4/2 D16 float32 causal fwd"
    assert family_label(PAGED) == "paged p16 B6 H4/2 D16 float32 causal fwd, seq_q ≠ seq_kv in some sequence"


def test_cases_whose_labels_read_the_same_are_told_apart_by_their_lengths():
    assert case_label(RAGGED_A) == case_label(RAGGED_B)
    assert distinct_labels([RAGGED_A, RAGGED_B, RAGGED_A, PAGED]) == [
        "ragged 37..100, 201 tok H4/2 D16 float32 causal fwd [37,100,64]",
        "ragged 37..100, 201 tok H4/2 D16 float32 causal fwd [100,64,37]",
        "ragged 37..100, 201 tok H4/2 D16 float32 causal fwd [37,100,64]",
        case_label(PAGED)]


# --- the schema ---------------------------------------------------------------------------------------------------


def test_packed_and_paged_records_as_the_runner_writes_them_pass(tmp_path):
    options = RunOptions(correctness=Correctness(seeds=2))
    impl = Implementation(name="x", build=lambda c: None)
    made = [make_record(impl, Case.from_dict(c), "ok", "", options, metrics={"time_ms_median": 1.0})
            for c in (RAGGED_A, PAGED)]
    path = write_run(tmp_path / "run", made)
    read = read_results(path)["records"]
    assert [r["case"] for r in read] == [RAGGED_A, PAGED]
    assert Case.from_dict(read[1]["case"]).seqlens_kv == (64, 64, 128, 128, 128, 128)  # lists become tuples


def _paged_record(**changes) -> dict:
    data = record("x", PAGED, 1.0).to_dict()
    data["metrics"] |= paging_metrics(Case.from_dict(PAGED), RunOptions())
    for path, value in changes.items():
        *parents, last = path.split(".")
        target = data
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        key = int(last) if isinstance(target, list) else last
        if value is None:
            del target[key]
        else:
            target[key] = value
    return data


@pytest.mark.parametrize("changes,expected", [
    ({"case.seqlens_q": [64, 64, 1, 1, 1, "1"]}, "record.case.seqlens_q[5]: expected an integer >= 1, got \"1\""),
    ({"case.seqlens_q": [64, 64, 1, 1, 1, 0]}, "record.case.seqlens_q[5]: expected an integer >= 1, got 0"),
    ({"case.seqlens_kv": "64,64"}, "record.case.seqlens_kv: expected a list, got \"64,64\""),
    ({"case.seqlens_kv": None}, "record.case.seqlens_kv: missing (a packed case gives seqlens_q and seqlens_kv together)"),
    ({"case.seqlens_q": [64, 64, 1, 1, 1]}, "record.case.seqlens_q: expected one length per sequence (6, the batch), "
                                            "the longest 64 (seq_q), got a list of 5, longest 64"),
    ({"case.seqlens_kv": [64, 64, 100, 100, 100, 100]}, "record.case.seqlens_kv: expected one length per sequence "
                                                        "(6, the batch), the longest 128 (seq_kv), got a list"),
    ({"case.page_size": 0}, "record.case.page_size: expected an integer >= 1 or null, got 0"),
    ({"case.page_size": "16"}, "record.case.page_size: expected an integer >= 1 or null, got \"16\""),
    ({"metrics.page_pool": -1}, "record.metrics.page_pool: expected an integer >= 0, got -1"),
    ({"metrics.block_tables.0.pages.1": [3, -2]}, "record.metrics.block_tables[0].pages[1][1]: expected an integer >= 0"),
    ({"metrics.block_tables.0.sha256": None}, "record.metrics.block_tables[0].sha256: missing"),
])
def test_malformed_packed_records_are_refused_naming_the_json_path(changes, expected):
    assert record_problem(_paged_record()) is None
    assert record_problem(_paged_record(**changes)).startswith(expected)


def test_a_hostile_packed_file_is_refused_naming_file_and_path(tmp_path, capsys):
    path = write_run(tmp_path / "run", packed_records())
    data = json.loads(path.read_text())
    data["records"][4]["case"]["seqlens_kv"] = [100, 64, 1e400]
    path.write_text(json.dumps(data))
    with pytest.raises(ResultsError, match=r"records\[4\]\.case\.seqlens_kv\[2\]: expected an integer >= 1"):
        read_results(path)
    assert main(["report", str(path)]) == 1
    assert f"{path}: records[4].case.seqlens_kv[2]" in capsys.readouterr().err


# --- the paging record --------------------------------------------------------------------------------------------


def test_a_paged_record_holds_its_pool_and_the_page_tables_its_trials_used():
    c = Case.from_dict(PAGED)
    options = RunOptions(seed=7, correctness=Correctness(seeds=3))
    rec = make_record(Implementation(name="x", build=lambda c: None), c, "ok", "", options,
                      metrics={"time_ms_median": 2.0})
    m = rec.metrics
    assert m["time_ms_median"] == 2.0 and m["page_pool"] == c.num_pages == 2 * 4 + 4 * 8
    request = Request("x", c, options.seed, True, True, True)
    assert [t["seed"] for t in m["block_tables"]] == [_seed(request, trial) for trial in range(3)]
    for entry in m["block_tables"]:
        used = make_inputs(c, entry["seed"]).keywords["block_table"]  # what the harness hands the kernel
        rows = [pages + [0] * (used.shape[1] - len(pages)) for pages in entry["pages"]]
        assert torch.equal(torch.tensor(rows, dtype=torch.int32), used)
        assert entry["sha256"] == hashlib.sha256(used.numpy().astype("<i4").tobytes()).hexdigest()
        assert sorted(p for pages in entry["pages"] for p in pages) == list(range(c.num_pages))
    assert len({json.dumps(t["pages"]) for t in m["block_tables"]}) == 3  # each trial draws its own
    assert record_problem(rec.to_dict()) is None


def test_a_large_pool_is_recorded_by_seed_and_digest_and_dense_cases_by_nothing():
    big = Case(batch=2, heads_q=2, heads_kv=1, seq_q=1, seq_kv=TABLE_PAGES_RECORDED * 8, head_dim=8, page_size=8)
    [entry, *_] = paging_metrics(big, RunOptions())["block_tables"]
    assert set(entry) == {"seed", "sha256"}
    assert paging_metrics(Case.from_dict(RAGGED_A), RunOptions()) == {}
    assert paging_metrics(Case(batch=1, heads_q=1, heads_kv=1, seq_q=8, seq_kv=8, head_dim=8), RunOptions()) == {}
    assert paging_metrics(big, RunOptions(correctness=Correctness(seeds=0)))["block_tables"][0]["seed"] == 0


# --- grouping -----------------------------------------------------------------------------------------------------


def _run(records, **info):
    return Run(info=run_info(**info), records=records, source=Path("results.json"))


def test_two_packed_cases_differing_only_in_lengths_stay_apart_on_a_board():
    records = packed_records((RAGGED_A, RAGGED_B), x_ms=1.0)
    records[4] = record("x", RAGGED_B, 4.0)  # slower than the baseline on B only
    [group] = group_runs([_run(records)])
    assert group.cases == [RAGGED_A, RAGGED_B]
    board = leaderboard(group)
    x = next(s for s in board.exact if s.impl == "x")
    assert (x.cases_total, x.cases_scored, x.speedups) == (2, 2, [0.5, 2.0])
    assert family_key(RAGGED_A) == family_key(RAGGED_B) != family_key(PAGED)
    assert family_key(RAGGED_A) != family_key(case(100))


def test_the_terminal_prints_one_table_per_packed_case_and_summarises_by_shape():
    records = packed_records()
    console = Console(width=200, record=True)
    print_run(console, records, "base")
    out = console.export_text()
    assert "ragged 37..100, 201 tok H4/2 D16 float32 causal fwd [37,100,64]" in out
    assert "ragged 37..100, 201 tok H4/2 D16 float32 causal fwd [100,64,37]" in out
    assert "2q64_4q1s128 p16 H4/2 D16 float32 causal fwd" in out
    assert main_axis([r.case for r in records]) == "shape"
    summary = Console(width=250, record=True)
    summary.print(summary_table(records, "base"))
    text = summary.export_text()
    assert "shape=2q64_4q1s128 p16" in text and "shape=ragged 37..100, 201 tok [100,64,37]" in text
    assert "shape=ragged 37..100, 201 tok [37,100,64]" in text


def test_the_page_shows_each_batch_shape_and_charts_by_keys_in_the_batch():
    html = render([_run(packed_records())])
    assert "ragged 37..100, 201 tok H4/2 D16 float32 causal fwd [100,64,37]" in html
    assert "2q64_4q1s128 p16 H4/2 D16 float32 causal fwd" in html
    assert "<summary>paged p16 B6 H4/2 D16 float32 causal fwd, seq_q ≠ seq_kv in some sequence</summary>" in html
    assert "<summary>ragged B3 H4/2 D16 float32 causal fwd, seq_q = seq_kv per sequence</summary>" in html
    assert "keys in the batch (all sequences)" in html
    assert "<option>2q64_4q1s128 p16</option>" in html


# --- every reader -------------------------------------------------------------------------------------------------


def test_every_reader_reads_a_file_of_packed_and_paged_records(tmp_path, capsys):
    base = write_run(tmp_path / "a", packed_records(), started="2026-01-01T00:00:00+00:00", torch="2.12.0")
    new = write_run(tmp_path / "b", packed_records(x_ms=1.5), started="2026-01-02T00:00:00+00:00")
    for args in (["report", str(base)], ["report", str(base), str(new), "-o", str(tmp_path / "page")],
                 ["compare", str(base), str(new), "--all"], ["compare", str(tmp_path), "--by", "torch"],
                 ["recommend", str(base)],
                 ["export", str(base), "--format", "pyperf", "-o", str(tmp_path / "p.json")],
                 ["export", str(base), "--format", "dispatch", "-o", str(tmp_path / "d.json")]):
        assert main(args) == 0, (args, capsys.readouterr().err)
    out = capsys.readouterr().out
    assert "[100,64,37]" in out and "2q64_4q1s128 p16" in out
    names = [b["metadata"]["name"] for b in json.loads((tmp_path / "p.json").read_text())["benchmarks"]]
    assert len(names) == len(set(names)) == 6
    cases = json.loads((tmp_path / "d.json").read_text())["tables"][0]["cases"]
    assert signature(PAGED) in cases and len(cases) == 3
    assert signature(PAGED).endswith("|page_size=16|seqlens_kv=64,64,128,128,128,128|seqlens_q=64,64,1,1,1,1")
    page = (tmp_path / "page" / "index.html").read_text()
    assert "causal fwd [100,64,37]: time per call" in page and "causal fwd [37,100,64]: time per call" in page
    assert load_runs([base])[0].records[0] == Record.from_dict(packed_records()[0].to_dict())


def test_the_csv_table_holds_lengths_as_text_and_the_pool_as_a_number(tmp_path):
    records = packed_records()
    records[6].metrics |= paging_metrics(Case.from_dict(PAGED), RunOptions())
    frame = load(write_run(tmp_path / "run", records + [record("base", case(64))]))
    assert list(frame["seqlens_q"][:3]) == ["37,100,64"] * 3
    assert frame["seqlens_kv"][6] == "64,64,128,128,128,128" and frame["page_pool"][6] == 40
    assert frame["seqlens_q"].isna().iloc[-1] and "block_tables" not in frame
    assert frame.groupby("seqlens_q").size()["100,64,37"] == 3
    out = tmp_path / "t.csv"
    assert main(["export", str(tmp_path / "run"), "--format", "csv", "-o", str(out)]) == 0
    assert '"37,100,64"' in out.read_text()


def test_resume_knows_a_packed_pair_from_its_journal_line():
    c = Case.from_dict(PAGED)
    impl = Implementation(name="x", build=lambda c: None)
    written = make_record(impl, c, "ok", "", RunOptions()).to_dict()
    journal_line = Record.from_dict(json.loads(json.dumps(written)))
    assert journal_line.key == pair_key("x", c.to_dict())
    assert journal_line.key != pair_key("x", Case.from_dict(RAGGED_A).to_dict())
