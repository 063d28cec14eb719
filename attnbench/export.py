"""``attnbench export``: a results file as CSV, Parquet or pyperf JSON.

CSV and Parquet hold the table of ``attnbench.results.load``: one row per
record, with case fields, implementation, status, reason, hardware, run id,
suite and every scalar metric as columns. A CSV text cell that a spreadsheet
would run as a formula (it starts with ``= + - @``, a tab or a carriage
return) is written with a leading ``'`` (OWASP's advice against CSV
injection); numbers, negative ones included, stay numbers.

pyperf: records keep no individual samples, only each worker process's median
(``time_ms_process_medians``) and the pooled median and IQR. Each process
becomes one pyperf run whose single value is that process's median per call,
in seconds; pyperf's model is also one run per process. pyperf's mean and
standard deviation therefore describe the process-to-process variation (the
noise floor attnbench reports as ``process_spread``), not per-sample spread. A
record without per-process medians exports its pooled median as one run. Only
records with status ``ok`` are exported: the time of a wrong answer is not a
benchmark result, and pyperf has no place for failures. Benchmarks are named
``IMPL CASE-LABEL``, so ``python -m pyperf compare_to a.json b.json`` matches
the same pair across two exports. pyperf prints names and metadata as they
are, so their control characters are left out (``textsafe.plain``).

dispatch: what a serving stack reads to pick an implementation per call. One
table per hardware and torch version (``recommend.settings``: the newest
record per pair), mapping each case's ``recommend.signature`` to its correct
implementations (status ok, ranked), fastest first, with median time, IQR,
relative noise, peak memory, exactness and whether it is tied with the fastest
(inside its noise). Cases with no correct implementation are left out.
``read_dispatch`` reads one back.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnbench.errors import UserError
from attnbench.recommend import Setting, settings, signature
from attnbench.report.format import distinct_labels
from attnbench.report.runs import Run, load_runs, load_tree
from attnbench.report.speedup import noise
from attnbench.results import load, write_json_atomic
from attnbench.textsafe import csv_cell, plain

FORMATS = ("csv", "parquet", "pyperf", "dispatch")
DISPATCH_FORMAT, DISPATCH_VERSION = "attnbench-dispatch", 1
MS_PER_S = 1000.0


def export(results: str | os.PathLike | list[str | os.PathLike], fmt: str, out: str | os.PathLike) -> int:
    """Write ``results`` to ``out`` in ``fmt``; return the number of rows (csv, parquet), benchmarks (pyperf) or
    case signatures (dispatch). Dispatch takes a list of files and directories (searched at any depth); the
    others take one results file or run directory."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    given = list(results) if isinstance(results, (list, tuple)) else [results]
    out = Path(out)
    if fmt == "dispatch":
        table = dispatch_table(settings(load_tree(given)))
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, table)
        return sum(len(t["cases"]) for t in table["tables"])
    if len(given) != 1:
        raise UserError(f"--format {fmt} exports one results file; {len(given)} were given")
    run = load_runs(given)[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "pyperf":
        return write_pyperf(run, out)
    frame = load(run.source)
    if fmt == "csv":
        from pandas.api.types import is_numeric_dtype

        for column in frame.columns:
            # Text columns only (object or pandas' string dtype): numbers are written as numbers.
            if not is_numeric_dtype(frame[column]):
                frame[column] = frame[column].map(csv_cell)
        frame.to_csv(out, index=False)
    else:
        try:
            import pyarrow  # noqa: F401 - only checked for, pandas uses it
        except ImportError:
            raise UserError("Parquet export needs pyarrow: pip install 'attnbench[parquet]'") from None
        frame.to_parquet(out, index=False)
    return len(frame)


def write_pyperf(run: Run, out: Path) -> int:
    """One pyperf benchmark per ok record, one pyperf run per worker process (see the module doc)."""
    import pyperf

    env = run.info.get("environment") or {}
    shared = {"unit": "second", "date": run.started, "hostname": env.get("hostname"), "cpu_model_name": env.get("cpu"),
              "attnbench_hardware": run.hardware, "attnbench_torch": env.get("torch"), "attnbench_run": run.id}
    benchmarks = []
    # pyperf names each benchmark once: packed batches whose shapes read the same are told apart by their lengths.
    labels = distinct_labels([r.case for r in run.records])
    for record, label in zip(run.records, labels):
        m = record.metrics
        medians = m.get("time_ms_process_medians") or ([m["time_ms_median"]] if m.get("time_ms_median") else [])
        medians = [v for v in medians if v]
        if record.status != "ok" or not medians:
            continue
        metadata = {**shared, "name": f"{record.impl} {label}",
                    "attnbench_plugin": record.plugin, "attnbench_version": record.version,
                    "attnbench_timing_method": m.get("timing_method")}
        # pyperf refuses empty metadata values.
        metadata = {k: plain(v) if isinstance(v, str) else v for k, v in metadata.items() if v not in (None, "")}
        runs = [pyperf.Run([ms / MS_PER_S], metadata=metadata, collect_metadata=False) for ms in medians]
        benchmarks.append(pyperf.Benchmark(runs))
    if not benchmarks:
        raise UserError(f"{run.source}: no record with status ok and a timing: nothing to export to pyperf")
    pyperf.BenchmarkSuite(benchmarks).dump(str(out), replace=True)
    return len(benchmarks)


def dispatch_table(found: list[Setting]) -> dict[str, Any]:
    """The dispatch JSON (see the module doc) of ``recommend.settings``."""
    tables = []
    for s in found:
        cases = {}
        for p in s.picks:
            if not p.ranked:
                continue
            tied = {id(e) for e in p.ties}
            cases[signature(p.case)] = [{
                "impl": e.record.impl, "exact": e.record.exact, "tied_with_fastest": id(e) in tied,
                "time_ms_median": e.record.metrics["time_ms_median"], "time_ms_iqr": e.record.metrics.get("time_ms_iqr"),
                "noise": noise(e.record), "peak_bytes": e.record.metrics.get("peak_bytes"),
                "plugin": e.record.plugin, "version": e.record.version, "run": e.run.id,
            } for e in p.ranked]
        first = s.runs[-1].info
        tables.append({"hardware": s.hardware, "torch": s.torch, "device": first.get("device"),
                       "attnbench": first.get("attnbench"), "runs": [r.id for r in s.runs], "cases": cases})
    return {"format": DISPATCH_FORMAT, "version": DISPATCH_VERSION,
            "signature": "pass|dtype|mask|bBATCH|hqHEADS_Q|hkvHEADS_KV|dHEAD_DIM|sqSEQ_Q|skvSEQ_KV[|winWINDOW][|scaleSCALE]"
                         "[|FIELD=VALUE...]",
            "tables": tables}


@dataclass
class Dispatch:
    """One table of a dispatch file: per case signature, the implementations fastest first."""

    hardware: str
    torch: str
    cases: dict[str, list[dict[str, Any]]]

    def ranking(self, case_signature: str) -> list[str]:
        """Implementation names, fastest first; empty for a case the table does not have."""
        return [entry["impl"] for entry in self.cases.get(case_signature, [])]


def read_dispatch(path: str | os.PathLike) -> list[Dispatch]:
    """The tables of a dispatch file; a UserError naming the file when it is not one this attnbench writes."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UserError(f"{path}: cannot read a dispatch table: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != DISPATCH_FORMAT:
        raise UserError(f"{path}: not an attnbench dispatch table (no \"format\": \"{DISPATCH_FORMAT}\")")
    if data.get("version") != DISPATCH_VERSION:
        raise UserError(f"{path}: dispatch table version {data.get('version')!r}; this attnbench reads {DISPATCH_VERSION}")
    tables = []
    for i, t in enumerate(data.get("tables") or []):
        ok = isinstance(t, dict) and isinstance(t.get("cases"), dict) and all(
            isinstance(v, list) and all(isinstance(e, dict) and isinstance(e.get("impl"), str) for e in v)
            for v in t["cases"].values())
        if not ok:
            raise UserError(f"{path}: tables[{i}] is not a dispatch table (cases: signature -> list of implementations)")
        tables.append(Dispatch(str(t.get("hardware")), str(t.get("torch")), t["cases"]))
    return tables
