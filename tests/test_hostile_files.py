"""Hostile results files: every reader refuses them with exit 1, naming the file and the JSON path, no traceback."""

import json
import os
import stat
import subprocess
import sys

import pytest
from synthetic_results import case, record, task_record, write_run

from attnbench.cli import main
from attnbench.report.html import PAGE_NAME, write_report
from attnbench.results import read_results, write_results
from attnbench.results_schema import MAX_DEPTH, ResultsError, record_problem

PAGED = case(64) | {"batch": 2, "seqlens_q": [64, 30], "seqlens_kv": [64, 30], "page_size": 16}


def _good(tmp_path):
    return write_run(tmp_path / "good", [record("base", case(64), 1.0), record("x", case(64), 0.5),
                                         record("y", case(64), status="unsupported"), task_record("eager", [0.9, 0.8]),
                                         record("base", PAGED, 1.0), record("x", PAGED, 0.7)])


def _edit(change):
    """A hostile variant made by editing the parsed good file."""
    def make(text):
        data = json.loads(text)
        change(data)
        return json.dumps(data).encode()
    return make


def _replace(old, new):
    """A hostile variant made by editing the good file's text (for what json.dumps would not write)."""
    def make(text):
        assert old in text
        return text.replace(old, new, 1).encode()
    return make


def _metric(name, value):
    return _edit(lambda d: d["records"][1]["metrics"].__setitem__(name, value))


def _nested(levels):
    return _edit(lambda d: d["records"][0].__setitem__("where", {"deep": json.loads("[" * levels + "]" * levels)}))


HOSTILE = {
    "records_a_dict": (_edit(lambda d: d.__setitem__("records", {})), "records: expected a list, got an object"),
    "case_a_list": (_edit(lambda d: d["records"][0].__setitem__("case", [])), "records[0].case: expected an object"),
    "case_field_a_list": (_edit(lambda d: d["records"][0]["case"].__setitem__("seq_q", [64])),
                          "records[0].case.seq_q: expected an integer >= 1"),
    "case_lengths_not_the_batch": (_edit(lambda d: d["records"][4]["case"].__setitem__("seqlens_q", [64])),
                                   "records[4].case.seqlens_q: expected one length per sequence (2, the batch)"),
    "case_page_size_a_string": (_edit(lambda d: d["records"][5]["case"].__setitem__("page_size", "16")),
                                'records[5].case.page_size: expected an integer >= 1 or null, got "16"'),
    "metric_a_string": (_metric("time_ms_median", "fast"), 'records[1].metrics.time_ms_median: expected a finite number >= 0'),
    "metric_1e308": (_metric("time_ms_median", 1e308), "records[1].metrics.time_ms_median: expected a finite number >= 0 "
                                                      "or null, got 1e+308"),
    "metric_tiny": (_metric("time_ms_iqr", 5e-324), "records[1].metrics.time_ms_iqr"),
    "metric_negative": (_metric("peak_bytes", -1), "records[1].metrics.peak_bytes: expected a finite number >= 0"),
    "metric_true": (_metric("tflops", True), "records[1].metrics.tflops"),
    "metric_1e999": (_replace('"time_ms_median": 0.5', '"time_ms_median": 1e999'), "got Infinity"),
    "metric_nan": (_replace('"time_ms_median": 0.5', '"time_ms_median": NaN'),
                   "records[1].metrics.time_ms_median: expected a finite number >= 0 or null, got NaN"),
    "task_figure_a_string": (_edit(lambda d: d["records"][3]["metrics"].__setitem__("accuracy_std", "wide")),
                             "records[3].metrics.accuracy_std"),
    "run_a_string": (_edit(lambda d: d.__setitem__("run", "x")), 'run: expected an object, got "x"'),
    "run_suite_without_hash": (_edit(lambda d: d["run"]["suite"].pop("sha256")), "run.suite.sha256: missing"),
    "status_missing": (_edit(lambda d: d["records"][2].pop("status")), "records[2].status: missing"),
    "status_unknown": (_edit(lambda d: d["records"][2].__setitem__("status", "fine")), "records[2].status: expected one of ok"),
    "plugins_not_objects": (_edit(lambda d: d["run"].__setitem__("plugins", ["a"])), "run.plugins[0]: expected an object"),
    "schema_2": (_edit(lambda d: d.__setitem__("schema", 2)), "results schema 2, this attnbench reads 1"),
    "not_results": (lambda text: b"[1, 2]", "not an attnbench results file"),
    "nested_200k": (lambda text: b'{"schema": 1, "run": {}, "records": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
                    "nested too deeply"),
    "nested_past_the_limit": (_nested(MAX_DEPTH + 10), f"expected at most {MAX_DEPTH} levels of nesting"),
    "bad_utf8": (lambda text: text.encode().replace(b'"base"', b'"\xff\xfe"', 1), "not UTF-8"),
    "truncated": (lambda text: text.encode()[: len(text) // 2], "truncated"),
    "empty": (lambda text: b"", "not valid JSON"),
    "huge_integer": (_replace('"time_ms_n": 10', '"time_ms_n": ' + "9" * 5000), "not valid JSON"),
}
COMMANDS = {
    "report": lambda path, good: ["report", path],
    "report_html": lambda path, good: ["report", path, "-o", os.path.join(os.path.dirname(path), "page")],
    "compare_base": lambda path, good: ["compare", path, good, "--fail-on-regression", "5"],
    "compare_new": lambda path, good: ["compare", good, path, "--fail-on-regression", "5"],
    "export_csv": lambda path, good: ["export", path, "--format", "csv", "-o", path + ".csv"],
    "export_pyperf": lambda path, good: ["export", path, "--format", "pyperf", "-o", path + ".pyperf.json"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_every_reader_refuses_a_hostile_file_naming_file_and_path(tmp_path, capsys, kind, command):
    good = _good(tmp_path)
    make, expected = HOSTILE[kind]
    hostile = tmp_path / "runs" / "hostile.json"
    hostile.parent.mkdir()
    hostile.write_bytes(make(good.read_text()))
    assert main(COMMANDS[command](str(hostile), str(good))) == 1
    err = capsys.readouterr().err
    assert f"{hostile}: " in err and expected in " ".join(err.split()), err
    assert "internal error" not in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "page").exists()


def test_the_good_file_passes_every_reader(tmp_path, capsys):
    good = str(_good(tmp_path))
    for command in COMMANDS.values():
        assert main(command(good, good)) == 0, capsys.readouterr().err


@pytest.mark.parametrize("kind", ["nested_200k", "metric_nan", "run_a_string"])
def test_the_real_command_exits_1_without_a_traceback(tmp_path, kind):
    good = _good(tmp_path)
    make, expected = HOSTILE[kind]
    hostile = tmp_path / "hostile.json"
    hostile.write_bytes(make(good.read_text()))
    for args in (["report", str(hostile)], ["compare", str(good), str(hostile)],
                 ["export", str(hostile), "--format", "csv", "-o", str(tmp_path / "o.csv")]):
        done = subprocess.run([sys.executable, "-m", "attnbench", *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, done.stderr
        assert expected in done.stderr and str(hostile) in done.stderr
        assert "Traceback" not in done.stderr and "internal error" not in done.stderr


def test_read_results_raises_a_user_error_that_is_also_a_value_error(tmp_path):
    hostile = tmp_path / "results.json"
    hostile.write_bytes(HOSTILE["metric_1e308"][0](_good(tmp_path).read_text()))
    with pytest.raises(ResultsError, match=r"records\[1\]\.metrics\.time_ms_median") as caught:
        read_results(hostile)
    assert isinstance(caught.value, ValueError)


def test_what_the_writer_writes_passes(tmp_path):
    statuses = ["ok", "incorrect", "unsupported", "skipped", "error", "oom", "timeout", "crashed", "preempted",
                "infeasible", "node_lost"]
    records = [record(f"i{n}", case(64, mask="sliding_window") | {"window": 8}, 1.0, status) for n, status in enumerate(statuses)]
    records += [record("nan", case(64), float("nan")), record("blocks", case(64, mask="block_sparse") | {"block": 16}, 1.0),
                task_record("eager", [0.9, 0.8]), task_record("failed", None, status="error")]
    records[0].where = {"executor": "local", "pids": [1, 2], "gpu_telemetry": [{"sm_clock_mhz": [1980, 1975]}]}
    path = write_run(tmp_path / "all", records)
    assert len(read_results(path)["records"]) == len(records)


def test_one_record_is_checked_by_the_same_rules(tmp_path):
    good = record("x", case(64), 1.0).to_dict()
    assert record_problem(good) is None
    assert record_problem([]) == "record: expected an object, got a list"
    assert record_problem(good | {"metrics": {"time_ms_median": 1e308}}).startswith("record.metrics.time_ms_median: ")
    assert record_problem({k: v for k, v in good.items() if k != "case"}) == "record.case: missing"


RESUME_SUITE = ("name: t\nimplementations: {include: [eager]}\nmatrix: {batch: 1, heads_q: 2, seq: 32, head_dim: 16}\n"
                "timing: {warmup: 1, min_time_s: 0.005}\n")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["metric_1e308", "nested_200k"])
def test_resume_never_trips_over_a_hostile_previous_results_file(tmp_path, kind):
    run_dir = tmp_path / "run"
    good = _good(tmp_path)
    run_dir.mkdir()
    (run_dir / "journal.jsonl").write_text("")
    make, expected = HOSTILE[kind]
    (run_dir / "results.json").write_bytes(make(good.read_text()))
    (tmp_path / "t.yaml").write_text(RESUME_SUITE)
    done = subprocess.run([sys.executable, "-m", "attnbench", "run", str(tmp_path / "t.yaml"), "--resume", str(run_dir),
                           "--quiet"], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    if done.returncode == 1:  # it read the file: refused, naming it
        assert f"{run_dir / 'results.json'}: " in done.stderr and expected in done.stderr
    else:  # it continued from the journal alone: the file it wrote in its place reads back
        assert done.returncode == 0, done.stderr
        read_results(run_dir / "results.json")


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_results_and_page_follow_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        path = tmp_path / "results.json"
        write_results(path, json.loads(_good(tmp_path).read_text())["run"], [record("base", case(64), 1.0)])
        page = write_report([path], tmp_path / "page")
    finally:
        os.umask(previous)
    assert page.name == PAGE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert stat.S_IMODE(page.stat().st_mode) == mode
    assert not [p for p in tmp_path.rglob(".*.tmp")]
