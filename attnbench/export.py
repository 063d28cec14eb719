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
"""

from __future__ import annotations

import os
from pathlib import Path

from attnbench.errors import UserError
from attnbench.report.format import case_label
from attnbench.report.runs import Run, load_runs
from attnbench.results import load
from attnbench.textsafe import csv_cell, plain

FORMATS = ("csv", "parquet", "pyperf")
MS_PER_S = 1000.0


def export(results: str | os.PathLike, fmt: str, out: str | os.PathLike) -> int:
    """Write ``results`` to ``out`` in ``fmt``; return the number of rows (csv, parquet) or benchmarks (pyperf)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    run = load_runs([results])[0]
    out = Path(out)
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
    for record in run.records:
        m = record.metrics
        medians = m.get("time_ms_process_medians") or ([m["time_ms_median"]] if m.get("time_ms_median") else [])
        medians = [v for v in medians if v]
        if record.status != "ok" or not medians:
            continue
        metadata = {**shared, "name": f"{record.impl} {case_label(record.case)}",
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
