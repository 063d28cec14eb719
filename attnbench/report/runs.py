"""Results files in, leaderboard groups out.

A group is one suite measured on one piece of hardware against one baseline,
possibly by several runs (dates, torch versions). A run measured on a mixed
fleet (records naming different hardware) adds to one group per kind of
hardware, so each kind gets its own entry on the leaderboard. A pair
(implementation, case) measured by more than one run of a group counts once:
the newest run's record wins (``run.started``) and the others are counted as
superseded. Speedups are always taken against the baseline record of the
*same* run on the same hardware, so neither two torch versions nor two kinds
of GPU divide each other's timings.

Nothing here imports torch: the report commands must start fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnbench.errors import UserError
from attnbench.results import Record, read_results

RESULTS_NAME = "results.json"


@dataclass
class Run:
    """One results file: its ``run`` section and its records."""

    info: dict[str, Any]
    records: list[Record]
    source: Path

    @property
    def id(self) -> str:
        return str(self.info.get("id") or self.source.parent.name)

    @property
    def suite(self) -> str:
        return str((self.info.get("suite") or {}).get("name") or "?")

    @property
    def hardware(self) -> str:
        return str(self.info.get("hardware") or "?")

    @property
    def baseline(self) -> str:
        return str(self.info.get("baseline") or "")

    @property
    def started(self) -> str:
        return str(self.info.get("started") or "")

    @property
    def torch(self) -> str:
        return str((self.info.get("environment") or {}).get("torch") or "?")

    def by_hardware(self) -> dict[str, list[Record]]:
        """The run's records by the hardware that measured them, in the order first seen.

        A run whose records all name one piece of hardware (or none) keeps its
        own label, which may say more (a CPU's thread count); a mixed fleet's
        records go by their own, a record naming none by the run's.
        """
        named = {r.hardware for r in self.records if r.hardware}
        if len(named) <= 1:
            return {self.hardware: list(self.records)}
        parts: dict[str, list[Record]] = {}
        for record in self.records:
            parts.setdefault(record.hardware or self.hardware, []).append(record)
        return parts


@dataclass
class Entry:
    """A record, the run it came from, and that run's baseline record for the same case on the same hardware (if any)."""

    run: Run
    record: Record
    baseline: Record | None
    hardware: str
    """What measured the record: its group's hardware."""


@dataclass
class Group:
    """What one leaderboard is computed from."""

    suite: str
    hardware: str
    baseline: str
    runs: list[Run]
    entries: list[Entry]
    superseded: int = 0
    cases: list[dict[str, Any]] = field(default_factory=list)
    """Distinct cases, in the order they first appear."""

    @property
    def title(self) -> str:
        return f"{self.suite} · {self.hardware}"


def load_runs(paths: list[str | os.PathLike]) -> list[Run]:
    """Read each results file (or run directory holding one); a bad file is a UserError naming it.

    ``read_results`` checks each file against the schema first, so what follows may index what it documents.
    """
    runs = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            path = path / RESULTS_NAME
        try:
            data = read_results(path)
        except FileNotFoundError:
            raise UserError(f"{given}: no such results file (give a results.json or a run directory)") from None
        records = [Record.from_dict(r) for r in data["records"]]
        runs.append(Run(info=data["run"], records=records, source=path))
    return runs


JOURNAL_SUFFIX = ".journal.jsonl"
"""``--output FILE.json`` writes FILE.journal.jsonl beside it: what tells its results file from any other JSON."""


def find_results(paths: list[str | os.PathLike]) -> list[Path]:
    """The results files named by ``paths``: a file as given, a run directory's results.json, and under any other
    directory, at any depth, every results.json and every FILE.json with its FILE.journal.jsonl beside it.

    Hidden directories (``.venv``, ``.git``) are not searched and links to directories not followed, so a
    tree with a loop ends. Each file counts once, in path order within a directory; a directory that holds
    none is a UserError naming it.
    """
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            found.append(path)  # load_runs says it if it is missing
            continue
        if (path / RESULTS_NAME).is_file():
            found.append(path / RESULTS_NAME)
            continue
        inside = []
        for folder, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            names = set(files)
            inside += [Path(folder, name) for name in sorted(files) if name == RESULTS_NAME or (
                name.endswith(".json") and name.removesuffix(".json") + JOURNAL_SUFFIX in names)]
        if not inside:
            raise UserError(f"{given}: no results files in this directory or under it "
                            f"({RESULTS_NAME}, or FILE.json beside its FILE{JOURNAL_SUFFIX})")
        found += inside
    seen: set[Path] = set()
    unique = []
    for path in found:
        if (real := path.resolve()) not in seen:
            seen.add(real)
            unique.append(path)
    return unique


def load_tree(paths: list[str | os.PathLike]) -> list[Run]:
    """``load_runs`` of every results file ``find_results`` finds under ``paths``."""
    return load_runs(find_results(paths))


def case_key(case: dict[str, Any]) -> tuple:
    """Identity of a case: its sorted items, hashable (and cheaper than JSON). Case fields are JSON scalars but for
    a packed batch's lengths, lists that become tuples here, so cases that differ only in their lengths stay apart."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in case.items()))


def group_runs(runs: list[Run]) -> list[Group]:
    """Groups by (suite, hardware, baseline), in the order first seen; newest record per pair.

    The hardware is each record's (``Run.by_hardware``), so one run may feed several groups.
    """
    grouped: dict[tuple[str, str, str], list[tuple[Run, list[Record]]]] = {}
    for run in runs:
        for hardware, records in run.by_hardware().items():
            grouped.setdefault((run.suite, hardware, run.baseline), []).append((run, records))
    groups = []
    for (suite, hardware, baseline), members in grouped.items():
        newest: dict[tuple, Entry] = {}
        superseded = 0
        cases: dict[tuple, dict] = {}
        # Stable sort: among runs with the same start time the later argument wins.
        for run, records in sorted(members, key=lambda m: m[0].started):
            keys = [case_key(r.case) for r in records]
            baselines = {key: r for key, r in zip(keys, records) if r.impl == baseline}
            for key, record in zip(keys, records):
                superseded += (record.impl, key) in newest
                newest[record.impl, key] = Entry(run, record, baselines.get(key), hardware)
                cases.setdefault(key, record.case)
        groups.append(Group(suite, hardware, baseline, [run for run, _ in members], list(newest.values()), superseded,
                            list(cases.values())))
    return groups


LENGTH_FIELDS = ("seq_q", "seq_kv", "seqlens_q", "seqlens_kv")


def family_key(case: dict[str, Any]) -> tuple:
    """Cases that differ only in sequence length share a family (seq_q moves with seq_kv, or stays fixed).

    Packed batches of one kind (ragged, or paged with one page size) and batch size that differ only in their
    lengths share one too, apart from dense cases; those whose sequences all have as many queries as keys apart
    from those with some that have not (a decode mix).
    """
    rest = {k: v for k, v in case.items() if k not in LENGTH_FIELDS}
    if case.get("seqlens_q") is not None:
        rest["packed"] = "=" if list(case["seqlens_q"]) == list(case["seqlens_kv"]) else "cross"
    else:
        rest["seq_q"] = "=" if case["seq_q"] == case["seq_kv"] else case["seq_q"]
    return case_key(rest)
