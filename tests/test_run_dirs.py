"""Where a run writes, through the real command line: --output FILE.json names its files, a used place is refused,
one run at a time writes a place, --resume continues only the same run from a repaired journal, and a full disk is
an error to act on, not a crash."""

import errno
import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from attnbench import cli, results, run_command

# A budget no case fits: every pair is settled as skipped at once, so a run writes all its files without a worker.
SUITE = """\
name: dirs
implementations:
  include: [eager]
defaults: {batch: 1, heads_q: 2, head_dim: 16}
matrix:
  seq: [32, 48]
memory_budget: 1KiB
"""
PAIRS = 4  # eager and sdpa, the suite's baseline, on two cases


def _run(cwd: Path, *args: str, umask: int | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "attnbench", "run", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, preexec_fn=None if umask is None else lambda: os.umask(umask))


def _lines(journal: Path) -> list[dict]:
    return [json.loads(line) for line in journal.read_text().splitlines()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A folder holding suite.yaml, someone's index.html and one finished run, a.json, written with umask 027."""
    folder = tmp_path_factory.mktemp("finished")
    (folder / "suite.yaml").write_text(SUITE)
    (folder / "index.html").write_text("<p>not attnbench's</p>")
    proc = _run(folder, "suite.yaml", "--output", "a.json", "--quiet", umask=0o027)
    assert proc.returncode == 0, proc.stderr
    return folder


@pytest.fixture
def folder(finished, tmp_path) -> Path:
    """A copy of ``finished`` to change."""
    return Path(shutil.copytree(finished, tmp_path / "runs"))


def test_output_file_names_its_journal_and_page_and_leaves_the_rest(folder):
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert sorted(before) == ["a.html", "a.journal.jsonl", "a.json", "index.html", "suite.yaml"]
    proc = _run(folder, "suite.yaml", "--output", "b.json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in folder.iterdir()) == sorted([*before, "b.html", "b.journal.jsonl", "b.json"])
    assert all((folder / name).read_bytes() == data for name, data in before.items())  # a's run and index.html
    data = json.loads((folder / "b.json").read_text())
    assert data["run"]["id"] == "b" and len(data["records"]) == PAIRS
    assert "<html" in (folder / "b.html").read_text().lower()


def test_files_follow_the_umask(finished):
    for name in ("a.json", "a.journal.jsonl", "a.html"):
        assert (finished / name).stat().st_mode & 0o777 == 0o640, name


def test_output_directory_keeps_the_usual_names(tmp_path):
    (tmp_path / "suite.yaml").write_text(SUITE)
    proc = _run(tmp_path, "suite.yaml", "--output", "run", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["index.html", "journal.jsonl", "results.json"]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["run"]["id"] == "run"


@pytest.mark.parametrize("output,used", [("run", "run/journal.jsonl"), ("run", "run/results.json"),
                                         ("a.json", "a.json"), ("a.json", "a.journal.jsonl")])
def test_a_used_place_is_refused_without_resume(tmp_path, output, used):
    (tmp_path / "suite.yaml").write_text(SUITE)
    (tmp_path / used).parent.mkdir(exist_ok=True)
    (tmp_path / used).write_text("an earlier run's\n")
    proc = _run(tmp_path, "suite.yaml", "--output", output)
    assert proc.returncode == 1, proc.stderr
    assert f"--resume {output}" in proc.stderr and "fresh path" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / used).read_text() == "an earlier run's\n"


def test_a_page_the_run_did_not_write_is_not_replaced(tmp_path):
    (tmp_path / "suite.yaml").write_text(SUITE)
    (tmp_path / "a.html").write_text("mine")
    proc = _run(tmp_path, "suite.yaml", "--output", "a.json")
    assert proc.returncode == 1 and "a.html exists" in proc.stderr, proc.stderr
    assert (tmp_path / "a.html").read_text() == "mine" and not (tmp_path / "a.journal.jsonl").exists()


@pytest.mark.parametrize("output,lock", [("run", "run/.attnbench.lock"), ("a.json", "a.lock")])
def test_a_second_run_at_once_stops_at_once(tmp_path, output, lock):
    (tmp_path / "suite.yaml").write_text(SUITE)
    (tmp_path / lock).parent.mkdir(exist_ok=True)
    with open(tmp_path / lock, "w") as held:  # as the first run holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write(f"{os.getpid()}\n")
        held.flush()
        proc = _run(tmp_path, "suite.yaml", "--output", output)
    assert proc.returncode == 1, proc.stderr
    assert f"error: {lock}: another attnbench run (pid {os.getpid()})" in proc.stderr
    assert not list(tmp_path.rglob("*journal.jsonl")) and "Traceback" not in proc.stderr
    # Let go, the place is free again; a finished run leaves no lock file behind.
    proc = _run(tmp_path, "suite.yaml", "--output", output, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / lock).exists()


def test_resume_refuses_another_suite(folder):
    (folder / "other.yaml").write_text(SUITE.replace("seq: [32, 48]", "seq: [64]"))
    (folder / "a.json").unlink()  # as after a kill: only the journal says what the run was
    proc = _run(folder, "other.yaml", "--resume", "a.json")
    assert proc.returncode == 1, proc.stderr
    assert "suite sha256: " in proc.stderr and " != " in proc.stderr and "Traceback" not in proc.stderr
    assert len(_lines(folder / "a.journal.jsonl")) == 1 + PAIRS


def test_resume_refuses_other_options_naming_each(folder):
    proc = _run(folder, "suite.yaml", "--resume", "a.json", "--seed", "7", "--processes", "3")
    assert proc.returncode == 1, proc.stderr
    assert "options seed: 0 != 7" in proc.stderr and "options timing processes: 2 != 3" in proc.stderr


def test_resume_refuses_a_journal_without_header(folder):
    journal = folder / "a.journal.jsonl"
    journal.write_text("".join(line + "\n" for line in journal.read_text().splitlines()[1:]))
    proc = _run(folder, "suite.yaml", "--resume", "a.json")
    assert proc.returncode == 1 and "no header line" in proc.stderr and "older attnbench" in proc.stderr, proc.stderr


def test_resume_cuts_a_torn_last_line_and_keeps_every_record(folder):
    journal = folder / "a.journal.jsonl"
    lines = journal.read_text().splitlines()
    # Killed while writing its last record: the line is cut short, and that pair is measured again.
    journal.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:40])
    (folder / "a.json").unlink()
    proc = _run(folder, "suite.yaml", "--resume", str(journal))  # the journal itself names the run too
    assert proc.returncode == 0, proc.stderr
    assert f"line {len(lines)}: cut short" in proc.stderr
    kept = _lines(journal)  # every line whole again
    assert kept[0]["journal"] == 1 and len(kept) == len(lines)
    assert [r["impl"] for r in kept[1:]] == [json.loads(line)["impl"] for line in lines[1:]]
    assert len(json.loads((folder / "a.json").read_text())["records"]) == PAIRS


def test_resume_skips_lines_that_are_no_record_with_a_warning(folder):
    journal = folder / "a.journal.jsonl"
    lines = journal.read_text().splitlines()
    strays = ["[1, 2]", '{"impl": "eager"}', "garbage", '{"impl": "eager", "case": 3, "status": "ok"}']
    journal.write_text("\n".join(lines[:2] + strays + lines[2:]) + "\n")
    proc = _run(folder, "suite.yaml", "--resume", "a.json")
    assert proc.returncode == 0, proc.stderr
    for number in range(3, 3 + len(strays)):
        assert f"line {number}: " in proc.stderr
    assert "Traceback" not in proc.stderr
    data = json.loads((folder / "a.json").read_text())
    assert data["run"]["resumed_records"] == PAIRS and len(data["records"]) == PAIRS


def test_resume_of_a_directory_missing_its_journal_names_it(tmp_path):
    (tmp_path / "suite.yaml").write_text(SUITE)
    proc = _run(tmp_path, "suite.yaml", "--resume", "b.json")
    assert proc.returncode == 1 and "no b.journal.jsonl beside it" in proc.stderr, proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["suite.yaml"]


class _FullDisk:
    """``os`` as attnbench.results sees it, but ``write`` fails after ``room`` calls, half-writing its last line."""

    def __init__(self, room: int) -> None:
        self.room = room

    def __getattr__(self, name: str):
        return getattr(os, name)

    def write(self, fd: int, data) -> int:
        if self.room == 0:
            os.write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= 1
        return os.write(fd, data)


def _full_disk_run(tmp_path, capsys) -> tuple[int, str]:
    (tmp_path / "suite.yaml").write_text(SUITE)
    code = cli.main(["run", str(tmp_path / "suite.yaml"), "--output", str(tmp_path / "a.json"), "--quiet"])
    return code, " ".join(capsys.readouterr().err.split())  # rich wraps long lines


def test_disk_full_on_the_journal_is_an_error_and_the_journal_stays_whole(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(results, "os", _FullDisk(room=2))  # the header and one record, then the disk is full
    code, err = _full_disk_run(tmp_path, capsys)
    assert code == 1, err
    assert f"disk full writing {tmp_path / 'a.journal.jsonl'}; the journal is intact, continue with --resume " \
           f"{tmp_path / 'a.json'}" in err
    assert "Traceback" not in err and "internal error" not in err
    kept = _lines(tmp_path / "a.journal.jsonl")  # the half-written line was taken back
    assert kept[0]["journal"] == 1 and len(kept) == 2
    assert not (tmp_path / "a.lock").exists()


def test_disk_full_on_the_page_names_it(tmp_path, monkeypatch, capsys):
    def full(path, text):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(run_command, "write_text_atomic", full)
    code, err = _full_disk_run(tmp_path, capsys)
    assert code == 1, err
    assert f"disk full writing {tmp_path / 'a.html'}; the journal is intact" in err
    assert len(json.loads((tmp_path / "a.json").read_text())["records"]) == PAIRS
