"""attnbench recommend: the fastest correct implementation per case, ties within noise, phases and model shapes."""

import sys
import types

import pytest
from synthetic_results import case, record, write_run

from attnbench.cli import main
from attnbench.errors import UserError
from attnbench.recommend import Shape, model_shape, phase, recommend, settings, signature
from attnbench.report.runs import load_runs

SEQS = (512, 1024, 2048, 4096, 8192, 16384)


def long_case(seq, mask="none", dtype="float32", pass_="fwd", seq_q=None, **extra):
    """A long_seq CPU case: batch 1, 8 heads of 64."""
    return {**case(seq, dtype=dtype, mask=mask, pass_=pass_, seq_q=seq_q), "heads_q": 8, "heads_kv": 8, "head_dim": 64,
            **extra}


def long_seq_records():
    """sdpa (the baseline) fastest at most lengths; chunked fastest at 16k; flex inside sdpa's noise at 1024;
    eager slower, then skipped by the memory budget; an incorrect implementation faster than all of them."""
    records = []
    for mask in ("none", "causal"):
        for seq in SEQS:
            c = long_case(seq, mask)
            sdpa = seq / 512
            records.append(record("sdpa", c, sdpa, noise=0.02, peak=seq * 1000))
            records.append(record("chunked", c, sdpa * (0.8 if seq == 16384 else 1.5), noise=0.02, peak=seq * 100))
            records.append(record("flex", c, sdpa * (1.01 if seq == 1024 else 1.3), noise=0.02))
            records.append(record("eager", c, sdpa * 3, noise=0.02) if seq <= 4096
                           else record("eager", c, status="skipped", reason="predicted 8 GiB > budget"))
            records.append(record("wrong", c, sdpa / 10, status="incorrect"))
            records.append(record("reference", c, sdpa * 50, ranked=False))
    return records


@pytest.fixture
def long_seq(tmp_path):
    return write_run(tmp_path / "long_seq", long_seq_records(), baseline="sdpa")


def picks_by_case(found):
    return {(p.case["mask"], p.case["seq_kv"]): p for s in found for p in s.picks}


def test_fastest_correct_implementation_per_sequence_length(long_seq):
    [setting] = recommend(load_runs([long_seq]))
    assert setting.torch == "2.13.0" and setting.hardware == "Synthetic CPU (2 threads)"
    picks = picks_by_case([setting])
    for mask in ("none", "causal"):
        for seq in SEQS:
            p = picks[mask, seq]
            assert p.best.record.impl == ("chunked" if seq == 16384 else "sdpa")  # never "wrong", never "reference"
            assert "wrong" not in [e.record.impl for e in p.ranked] and "reference" not in [e.record.impl for e in p.ranked]
            assert [e.record.impl for e in p.ties] == (["flex"] if seq == 1024 else [])
            assert ("eager" in [e.record.impl for e in p.ranked]) == (seq <= 4096)


def test_recommend_command_names_the_pick_its_speedup_and_memory(long_seq, capsys):
    assert main(["recommend", str(long_seq.parent)]) == 0
    out = capsys.readouterr().out
    assert "float32 · none · fwd" in out and "float32 · causal · fwd" in out
    assert "B1 H8 N16384 D64" in out and "1.25× vs sdpa" in out  # chunked at 16k: 0.8 of sdpa's time
    assert "1.00× (baseline)" in out and "flex" in out
    assert "1.6 MiB" in out and "7.8 MiB" in out  # peaks: chunked at 16k, sdpa at 8k
    assert "wrong" not in out


def test_approximate_picks_are_marked_with_the_fastest_exact_beside(tmp_path, capsys):
    c = long_case(1024)
    path = write_run(tmp_path / "r", [record("sdpa", c, 1.0), record("lowrank", c, 0.2, exact=False)], baseline="sdpa")
    [setting] = recommend(load_runs([path]))
    [p] = setting.picks
    assert p.best.record.impl == "lowrank" and p.fastest_exact.record.impl == "sdpa"
    assert main(["recommend", str(path)]) == 0
    out = capsys.readouterr().out
    assert "(approx)" in out and "fastest exact" in out


def test_a_case_nothing_ran_correctly_says_so(tmp_path, capsys):
    c = long_case(1024)
    path = write_run(tmp_path / "r", [record("sdpa", c, status="oom"), record("x", c, 1.0, status="incorrect")])
    assert main(["recommend", str(path)]) == 0
    out = capsys.readouterr().out
    assert "none correct" in out and "incorrect, oom" in out


@pytest.mark.parametrize("case_, expected", [
    (long_case(4096, seq_q=1), "decode"), (long_case(4096, seq_q=16), "decode"), (long_case(4096, seq_q=17), "prefill"),
    (long_case(512), "prefill"), (long_case(512, pass_="fwd+bwd"), "train"), (long_case(512, pass_="bwd"), "train"),
])
def test_phases(case_, expected):
    assert phase(case_) == expected


def test_phase_filter_and_its_error(tmp_path, capsys):
    path = write_run(tmp_path / "r", [record("sdpa", long_case(4096, seq_q=1), 0.1), record("sdpa", long_case(4096), 1.0),
                                      record("sdpa", long_case(512, pass_="fwd+bwd"), 1.0)])
    runs = load_runs([path])
    assert [p.case["seq_q"] for p in recommend(runs, "decode")[0].picks] == [1]
    assert [p.case["pass"] for p in recommend(runs, "train")[0].picks] == ["fwd+bwd"]
    assert main(["recommend", str(path), "--phase", "prefill"]) == 0
    assert "N4096 D64" in capsys.readouterr().out
    only_train = write_run(tmp_path / "t", [record("sdpa", long_case(512, pass_="fwd+bwd"), 1.0)])
    assert main(["recommend", str(only_train), "--phase", "decode"]) == 1
    assert "no case of the results is phase decode" in capsys.readouterr().err


def test_model_filter_is_a_shape_and_says_when_no_preset_table_is_installed(tmp_path, capsys, monkeypatch):
    llama = long_case(1024, heads_q=32, heads_kv=8, head_dim=128)
    path = write_run(tmp_path / "r", [record("sdpa", llama, 1.0), record("sdpa", long_case(1024), 1.0)])
    runs = load_runs([path])
    [setting] = recommend(runs, shape=Shape(32, 8, 128))
    assert [p.case["heads_q"] for p in setting.picks] == [32]
    table = {"toy": {"heads_q": 32, "heads_kv": 8, "head_dim": 128}, "bad": {"heads_q": 1}}
    assert model_shape("toy", table) == Shape(32, 8, 128)
    with pytest.raises(UserError, match="known: bad, toy"):
        model_shape("nope", table)
    with pytest.raises(UserError, match="does not say its 'heads_kv'"):
        model_shape("bad", table)
    monkeypatch.setitem(sys.modules, "attnbench.models", None)  # as if there were no table
    assert main(["recommend", str(path), "--model", "llama"]) == 1
    assert "no model preset table is installed" in capsys.readouterr().err
    # A table plugs in as attnbench.models.MODELS, presets with attributes or keys.
    module = types.ModuleType("attnbench.models")
    module.MODELS = {"llama": types.SimpleNamespace(heads_q=32, heads_kv=8, head_dim=128)}
    monkeypatch.setitem(sys.modules, "attnbench.models", module)
    assert main(["recommend", str(path), "--model", "llama"]) == 0
    out = capsys.readouterr().out
    assert "H32/8" in out and "B1 H8 " not in out


def test_newest_record_per_pair_and_one_setting_per_torch_version(tmp_path):
    c = long_case(1024)
    old = write_run(tmp_path / "old", [record("sdpa", c, 1.0), record("flex", c, 0.5)], started="2026-01-01T00:00:00+00:00")
    new = write_run(tmp_path / "new", [record("sdpa", c, 1.0), record("flex", c, 2.0)], started="2026-02-01T00:00:00+00:00")
    other = write_run(tmp_path / "other", [record("sdpa", c, 1.0), record("flex", c, 0.1)], torch="2.5.1")
    found = settings(load_runs([new, old, other]))
    assert [(s.torch, s.picks[0].best.record.impl) for s in found] == [("2.13.0", "sdpa"), ("2.5.1", "flex")]


def test_signatures_are_stable_and_distinct():
    assert signature(long_case(8192, "causal", "bfloat16", seq_q=1, heads_q=32, heads_kv=8, head_dim=128, batch=8)) == \
        "fwd|bfloat16|causal|b8|hq32|hkv8|d128|sq1|skv8192"
    assert signature(long_case(512, "sliding_window", window=128, scale=0.125)) == \
        "fwd|float32|sliding_window|b1|hq8|hkv8|d64|sq512|skv512|win128|scale0.125"
    assert signature(long_case(512, extra_field="x")).endswith("|extra_field=x")
    cases = {signature(r.case): r.case for r in long_seq_records()}
    assert len(cases) == 2 * len(SEQS)


def test_what_results_files_say_reaches_the_terminal_as_text(tmp_path, capsys):
    c = long_case(1024)
    path = write_run(tmp_path / "r", [record("[bold]x\x1b[2J", c, 0.5), record("sdpa", c, 1.0)],
                     hardware="CPU\x1b]0;title\x07")
    assert main(["recommend", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "[bold]x[2J" in out
    path.write_text(path.read_text().replace('"time_ms_median": 0.5', '"time_ms_median": NaN'))
    assert main(["recommend", str(path)]) == 1
    assert str(path) in capsys.readouterr().err
