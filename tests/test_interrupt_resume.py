"""A killed run loses at most the case in flight; --resume completes it; SIGTERM keeps what was measured."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SUITE = """\
name: resume-test
implementations:
  include: [eager, sdpa, chunked]
defaults: {batch: 1, heads_q: 2, head_dim: 16}
matrix:
  seq: [32, 48, 64, 80]
  mask: [none, causal]
timing: {warmup: 1, min_time_s: 0.01, repeats: 3}
"""


def _start(suite: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "attnbench", "run", str(suite), "--output", str(out), "--quiet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.1)
    raise AssertionError(f"journal never reached {n} lines")


def _journal_records(path: Path) -> list[dict]:
    """The journal's records: every line after its header."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert lines[0]["journal"] == 1
    return lines[1:]


def _outcome(results: Path) -> dict:
    data = json.loads(results.read_text())
    return {(r["impl"], json.dumps(r["case"], sort_keys=True)): r["status"] for r in data["records"]}


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    full = tmp_path / "full"
    assert _start(suite, full).wait(timeout=300) == 0

    killed = tmp_path / "killed"
    proc = _start(suite, killed)
    _wait_for_lines(killed / "journal.jsonl", 1 + 6, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = _journal_records(killed / "journal.jsonl")
    assert len(kept) >= 6
    # No worker outlives the killed runner.
    time.sleep(1)
    for pid in {p for r in kept for p in r["where"].get("pids", []) if p}:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()

    resumed = _start(suite, killed, "--resume", str(killed))
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    data = json.loads((killed / "results.json").read_text())
    assert data["run"]["resumed_records"] == len(kept)
    assert _outcome(killed / "results.json") == _outcome(full / "results.json")
    assert len(data["records"]) == 8 * 3


def test_sigterm_writes_results_with_what_was_measured(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    out = tmp_path / "run"
    proc = _start(suite, out)
    _wait_for_lines(out / "journal.jsonl", 1 + 4, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    data = json.loads((out / "results.json").read_text())
    assert data["run"]["interrupted"] is True
    assert len(data["records"]) == len(_journal_records(out / "journal.jsonl")) >= 4


def test_resume_refuses_a_directory_without_journal(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    proc = subprocess.run([sys.executable, "-m", "attnbench", "run", str(suite), "--resume", str(tmp_path / "nowhere")],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "no journal.jsonl" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert os.listdir(tmp_path) == ["suite.yaml"]
