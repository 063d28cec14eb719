"""attnbench compare (significance, status changes, exit codes) and export (csv, parquet, pyperf round trips)."""

import subprocess
import sys

import pandas as pd
import pytest
from synthetic_results import case, record, write_run

from attnbench.cli import main
from attnbench.compare import BROKE, EXIT_REGRESSION, FASTER, FIXED, NOISE, ONLY_BASE, ONLY_NEW, SLOWER, compare_runs
from attnbench.errors import UserError
from attnbench.export import export
from attnbench.report.runs import load_runs
from attnbench.results import load

C1, C2 = case(128), case(256, dtype="bfloat16", mask="causal")


@pytest.fixture
def base_and_new(tmp_path):
    base = write_run(tmp_path / "base", [
        record("x", C1, 1.0, noise=0.05), record("x", C2, 1.0, noise=0.05),
        record("y", C1, 1.0, noise=0.01), record("y", C2, 1.0),
        record("gone", C1, 1.0), record("w", C1, status="unsupported"),
    ])
    new = write_run(tmp_path / "new", [
        record("x", C1, 1.5, noise=0.05),       # 50% slower, noise ~7%: a regression
        record("x", C2, 1.03, noise=0.05),      # 3% slower inside ~7% noise
        record("y", C1, 0.5, noise=0.01),       # twice as fast
        record("y", C2, 1.0, status="incorrect", reason="rel err 0.3"),
        record("w", C1, 2.0), record("added", C1, 1.0),
    ], started="2026-02-01T00:00:00+00:00")
    return base, new


def test_compare_judges_each_pair_against_the_combined_noise(base_and_new):
    base, new = load_runs(list(base_and_new))
    verdicts = {(c.impl, c.case["seq_kv"]): c for c in compare_runs(base, new)}
    assert verdicts["x", 128].verdict == SLOWER and verdicts["x", 128].ratio == pytest.approx(1.5)
    assert verdicts["x", 256].verdict == NOISE
    assert verdicts["y", 128].verdict == FASTER and verdicts["y", 128].ratio == pytest.approx(0.5)
    assert verdicts["y", 256].verdict == BROKE
    assert verdicts["w", 128].verdict == FIXED
    assert verdicts["gone", 128].verdict == ONLY_BASE and verdicts["added", 128].verdict == ONLY_NEW
    assert verdicts["x", 128].regresses(40) and not verdicts["x", 128].regresses(60)
    assert not verdicts["x", 256].regresses(0)
    assert verdicts["y", 256].regresses(1000)


def test_compare_command_prints_a_summary_and_fails_on_regression_for_ci(base_and_new, capsys):
    base, new = map(str, base_and_new)
    assert main(["compare", base, new]) == 0
    out = capsys.readouterr().out
    assert "Slower (significant)" in out and "Faster (significant)" in out and "Broke" in out
    assert "+50.0%" in out and "1 slower, 1 faster, 1 within noise, 1 broke, 1 fixed" in out
    assert main(["compare", base, new, "--all"]) == 0
    assert "Every pair" in capsys.readouterr().out
    assert main(["compare", base, new, "--fail-on-regression", "10"]) == EXIT_REGRESSION
    assert main(["compare", base, base, "--fail-on-regression", "0"]) == 0
    assert "no regression" in capsys.readouterr().out


def missing_as_none(frame: pd.DataFrame) -> pd.DataFrame:
    """CSV has one empty value for null, NaN and the empty string: compare them as one."""
    return frame.astype(object).where(frame.notna() & (frame != ""), None)


def test_csv_export_reads_back_as_the_results_table(base_and_new, tmp_path):
    out = tmp_path / "out.csv"
    assert main(["export", str(base_and_new[0]), "--format", "csv", "-o", str(out)]) == 0
    original = load(base_and_new[0])
    # Text columns read as text: a version like "1.0" would otherwise come back a float.
    back = pd.read_csv(out, dtype={c: str for c in ("version", "reason", "plugin", "impl", "status", "hardware")})
    assert list(back.columns) == list(original.columns)
    pd.testing.assert_frame_equal(missing_as_none(back), missing_as_none(original))


def test_parquet_export_reads_back_or_says_what_to_install(base_and_new, tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    out = tmp_path / "out.parquet"
    assert export(base_and_new[0], "parquet", out) == 6
    pd.testing.assert_frame_equal(pd.read_parquet(out), load(base_and_new[0]), check_dtype=False)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    with pytest.raises(UserError, match=r"attnbench\[parquet\]"):
        export(base_and_new[0], "parquet", out)


def test_pyperf_export_is_read_by_pyperf_compare_to(tmp_path):
    import pyperf

    a = write_run(tmp_path / "a", [record("sdpa", C1, 1.0, process_medians=[1.0, 1.02]), record("sdpa", C2, 1.0),
                                   record("bad", C1, 1.0, status="incorrect")])
    b = write_run(tmp_path / "b", [record("sdpa", C1, 2.0, process_medians=[2.0, 2.04]), record("sdpa", C2, 1.0)])
    assert export(a, "pyperf", tmp_path / "a.json") == 2  # the incorrect record is left out
    assert export(b, "pyperf", tmp_path / "b.json") == 2
    suite = pyperf.BenchmarkSuite.load(str(tmp_path / "a.json"))
    bench = suite.get_benchmark("sdpa B1 H4 N128 D32 float32 none fwd")
    assert sorted(bench.get_values()) == pytest.approx([1.0e-3, 1.02e-3])  # per-process medians, in seconds
    assert bench.get_nrun() == 2
    done = subprocess.run([sys.executable, "-m", "pyperf", "compare_to", str(tmp_path / "a.json"), str(tmp_path / "b.json")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "sdpa B1 H4 N128 D32 float32 none fwd" in done.stdout and "2.00x slower" in done.stdout


def test_export_refuses_unknown_formats_and_empty_pyperf(tmp_path):
    path = write_run(tmp_path / "r", [record("x", C1, status="unsupported")])
    with pytest.raises(UserError, match="unknown export format"):
        export(path, "xlsx", tmp_path / "o")
    with pytest.raises(UserError, match="nothing to export"):
        export(path, "pyperf", tmp_path / "o.json")


def torch_runs(root):
    """Latest runs of torch 2.5.1, 2.9.0 and 2.10.0 at various depths, plus an older 2.9.0 run that is superseded."""
    write_run(root / "a" / "old-2.9", [record("x", C1, 9.0)], torch="2.9.0", started="2026-01-01T00:00:00+00:00")
    write_run(root / "a" / "b" / "t2.10", [record("x", C1, 1.5, noise=0.01), record("y", C1, 1.0)], torch="2.10.0",
              started="2026-01-02T00:00:00+00:00")
    write_run(root / "t2.5", [record("x", C1, 1.0, noise=0.01), record("y", C1, 1.0)], torch="2.5.1",
              started="2026-01-03T00:00:00+00:00")
    write_run(root / "a" / "t2.9", [record("x", C1, 1.0, noise=0.01), record("y", C1, 1.0)], torch="2.9.0",
              started="2026-01-04T00:00:00+00:00")


def test_compare_by_torch_steps_through_consecutive_versions(tmp_path, capsys):
    from attnbench.compare import compare_by
    from attnbench.report.runs import load_tree

    torch_runs(tmp_path)
    steps, notes = compare_by(load_tree([tmp_path]))
    assert [(s.base.torch, s.new.torch) for s in steps] == [("2.5.1", "2.9.0"), ("2.9.0", "2.10.0")]
    assert steps[0].base.id == "t2.5" and steps[0].new.id == "t2.9"  # the latest 2.9.0 run, not old-2.9
    verdicts = [{c.impl: c.verdict for c in s.changes} for s in steps]
    assert verdicts == [{"x": NOISE, "y": NOISE}, {"x": SLOWER, "y": NOISE}]
    assert main(["compare", str(tmp_path), "--by", "torch"]) == 0
    out = capsys.readouterr().out
    assert "torch 2.5.1 → 2.9.0" in out and "torch 2.9.0 → 2.10.0" in out and "+50.0%" in out
    assert main(["compare", str(tmp_path / "t2.5"), str(tmp_path / "a"), "--by", "torch", "--fail-on-regression", "10"]) \
        == EXIT_REGRESSION
    assert main(["compare", str(tmp_path / "t2.5"), str(tmp_path / "a" / "t2.9"), "--by", "torch",
                 "--fail-on-regression", "10"]) == 0


def test_compare_by_torch_needs_two_versions_and_plain_compare_two_results(tmp_path, capsys):
    one = write_run(tmp_path / "one", [record("x", C1, 1.0)])
    two = write_run(tmp_path / "two", [record("x", C1, 1.0)], started="2026-02-01T00:00:00+00:00")
    assert main(["compare", str(one), str(two), "--by", "torch"]) == 1
    err = capsys.readouterr().err
    assert "no suite and hardware has runs of two torch versions" in err and "only torch 2.13.0" in err
    assert main(["compare", str(one), str(two), str(two)]) == 1
    assert "--by torch" in capsys.readouterr().err


def test_dispatch_export_reads_back_as_the_same_ranking(tmp_path, capsys):
    from attnbench.export import read_dispatch
    from attnbench.recommend import settings, signature

    fast, slow = case(128, dtype="bfloat16", seq_q=1), case(256)
    cpu = [record("sdpa", fast, 1.0, noise=0.02), record("flex", fast, 0.5, noise=0.02),
           record("chunked", fast, 0.505, noise=0.02), record("bad", fast, 0.1, status="incorrect"),
           record("sdpa", slow, 1.0), record("eager", slow, 2.0), record("reference", slow, 9.0, ranked=False)]
    write_run(tmp_path / "runs" / "cpu", cpu)
    write_run(tmp_path / "runs" / "deep" / "gpu", [record("sdpa", fast, 0.1, hardware="Synthetic GPU")],
              hardware="Synthetic GPU", torch="2.10.0+cu128")
    write_run(tmp_path / "runs" / "none", [record("sdpa", case(512), status="error")])
    out = tmp_path / "dispatch.json"
    assert main(["export", str(tmp_path / "runs"), "--format", "dispatch", "-o", str(out)]) == 0
    assert "3 case signatures" in capsys.readouterr().out  # the all-error case is left out
    tables = {(t.hardware, t.torch): t for t in read_dispatch(out)}
    assert set(tables) == {("Synthetic CPU (2 threads)", "2.13.0"), ("Synthetic GPU", "2.10.0+cu128")}
    cpu_table = tables["Synthetic CPU (2 threads)", "2.13.0"]
    for s in settings(load_runs([tmp_path / "runs" / "cpu"])):
        for p in s.picks:
            assert cpu_table.ranking(signature(p.case)) == [e.record.impl for e in p.ranked]
    assert cpu_table.ranking(signature(fast)) == ["flex", "chunked", "sdpa"]
    assert cpu_table.ranking(signature(slow)) == ["sdpa", "eager"]
    [flex, chunked, sdpa] = cpu_table.cases[signature(fast)]
    assert not flex["tied_with_fastest"] and chunked["tied_with_fastest"] and not sdpa["tied_with_fastest"]
    assert flex["time_ms_median"] == 0.5 and flex["time_ms_iqr"] == pytest.approx(0.01) and flex["exact"]
    assert signature(fast) == "fwd|bfloat16|none|b1|hq4|hkv4|d32|sq1|skv128"


def test_dispatch_reader_refuses_other_files_and_one_file_formats_refuse_several(tmp_path, capsys):
    from attnbench.export import read_dispatch

    (tmp_path / "x.json").write_text('{"format": "something else"}')
    with pytest.raises(UserError, match="not an attnbench dispatch table"):
        read_dispatch(tmp_path / "x.json")
    (tmp_path / "y.json").write_text('{"format": "attnbench-dispatch", "version": 1, "tables": [{"cases": {"s": [1]}}]}')
    with pytest.raises(UserError, match=r"tables\[0\]"):
        read_dispatch(tmp_path / "y.json")
    a = write_run(tmp_path / "a", [record("x", C1, 1.0)])
    assert main(["export", str(a), str(a), "--format", "csv", "-o", str(tmp_path / "o.csv")]) == 1
    assert "exports one results file" in capsys.readouterr().err
