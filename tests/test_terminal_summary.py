"""What a newcomer's run prints: no rows for implementations the device rules out, one summary table, the paths."""

from pathlib import Path

from rich.console import Console

from attnbench.report.terminal import main_axis, print_run, ruled_out_by_device, summary_table
from attnbench.results import Record


def _record(impl: str, seq: int, status: str = "ok", ms: float | None = 1.0, reason: str = "") -> Record:
    case = {"batch": 1, "heads_q": 2, "heads_kv": 2, "seq_q": seq, "seq_kv": seq, "head_dim": 16, "dtype": "float32",
            "mask": "none", "window": None, "block": None, "scale": None, "device": "cpu", "pass": "fwd"}
    metrics = {} if ms is None else {"time_ms_median": ms, "time_ms_iqr": 0.01 * ms, "time_ms_n": 10}
    return Record(impl=impl, case=case, status=status, reason=reason, metrics=metrics)


RECORDS = [
    *(_record("sdpa", s, ms=1.0) for s in (64, 128)),
    _record("eager", 64, ms=2.0), _record("eager", 128, ms=1.005),
    _record("bad", 64, status="incorrect", reason="out: wrong"), _record("bad", 128, ms=0.5),
    *(_record("gpu.only", s, status="unsupported", ms=None, reason="device cpu not supported (declares cuda)")
      for s in (64, 128)),
]


def test_device_ruled_out_implementations_are_named_once_not_tabled():
    assert ruled_out_by_device(RECORDS) == ["gpu.only"]
    console = Console(width=160, record=True)
    print_run(console, RECORDS, "sdpa")
    text = console.export_text()
    assert "Not run on cpu" in text and "gpu.only" in text.split("Not run on cpu")[1]
    assert "gpu.only" not in text.split("Not run on cpu")[0]


def test_the_summary_is_implementation_by_main_axis_with_noise_marked():
    assert main_axis([r.case for r in RECORDS]) == "seq_q"
    console = Console(width=160, record=True)
    console.print(summary_table(RECORDS, "sdpa"))
    text = console.export_text()
    eager = next(line for line in text.splitlines() if "eager" in line)
    assert "0.50x" in eager and "≈1.00x" in eager  # 2x slower at 64; within the 1% noise at 128
    bad = next(line for line in text.splitlines() if "bad" in line)
    assert "✗" in bad and "2.00x" in bad


def test_a_pair_that_changed_torch_state_or_throttled_is_flagged_on_board_and_terminal():
    from attnbench.report.format import pair_notes
    from attnbench.report.html import render
    from attnbench.report.runs import Run

    flagged = _record("sneaky", 64)
    flagged.metrics["torch_state_changed"] = ["torch.get_num_threads(): 2 -> 1"]
    flagged.metrics["throttled"] = ["sw_thermal_slowdown"]
    notes = pair_notes(flagged)
    assert "torch.get_num_threads(): 2 -> 1" in notes[0] and "sw_thermal_slowdown" in notes[1]
    console = Console(width=200, record=True)
    print_run(console, [flagged, _record("sdpa", 64)], "sdpa")
    assert "⚑" in console.export_text()
    run = Run(source=Path("x.json"), info={"id": "x", "suite": {"name": "s"}, "hardware": "cpu", "baseline": "sdpa",
                                   "attnbench": "0", "environment": {}}, records=[flagged, _record("sdpa", 64)])
    assert "torch.get_num_threads(): 2 -&gt; 1" in render([run]) or "torch.get_num_threads(): 2 -\\u003e 1" in render([run])
