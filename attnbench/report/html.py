"""The HTML leaderboard: one self-contained ``index.html`` from one or more results files.

The page is rendered by jinja2 with autoescape on, so every plugin-provided
string (names, versions, reasons, environment values) is escaped by the
template; nothing of theirs is marked safe. Only our own CSS and script, the
SVG charts (whose text charts.py escapes itself) and the script's JSON data
(pagedata writes it so that no text can end its element) go in as markup. The
CSS and the script ship as package data (``report/static``) and are inlined:
the page is one file that opens from the filesystem with no network and keeps
working when copied elsewhere. The boards and their charts are all server-side;
the script sorts, filters and pages the case table from its data (pagedata).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import jinja2
from markupsafe import Markup

import attnbench
from attnbench.report import charts
from attnbench.report.board import INTERVAL_HEADING, Line, line, off_device_text
from attnbench.report.format import (
    batch_keys,
    distinct_labels,
    error_text,
    family_label,
    format_bytes,
    format_time,
    is_packed,
    pair_notes,
    seq_text,
)
from attnbench.report.history import history_views
from attnbench.report.pagedata import INLINE_CHART_BYTES, PAGE_ROWS, LazyCharts, pack, script_json
from attnbench.report.quality import quality_views, task_boards, without_tasks
from attnbench.report.rank import CONFIDENCE, REPLICATES, Leaderboard, leaderboard
from attnbench.report.roofline_chart import ceilings_of, roofline_chart
from attnbench.report.runs import Entry, Run, case_key, family_key, group_runs, load_runs
from attnbench.report.speedup import noise, speedup
from attnbench.results import MEASURED, write_text_atomic

PAGE_NAME = "index.html"
FILTERS = (("hardware", 0, "hardware"), ("seq", 2, "sequence length or batch shape"), ("dtype", 3, "dtype"), ("mask", 4, "mask"),
           ("pass_", 5, "pass"), ("impl", 6, "implementation"), ("status_text", 7, "status"))
"""The case table's filters: CaseRow field, column of the table, label."""
SHOWN = (*MEASURED, "implausible")
"""Statuses whose figures the case table shows: an implausible record was timed, its time just cannot be true."""


class Cell(NamedTuple):
    """A numeric cell of the case table. An empty value says why in its text and title."""

    css: str
    sort: str
    """The number it sorts by, as text; empty when there is none."""
    why: str
    text: str


class CaseRow(NamedTuple):
    """One record in the case table. Tuples, unpacked in the template's loop: jinja's attribute lookups
    would double the time of a 10,000-row table."""

    hardware: str
    label: str
    seq_sort: str
    seq: str
    dtype: str
    mask: str
    pass_: str
    impl: str
    status: str
    status_text: str
    cells: tuple[Cell, ...]
    """time, speedup, TFLOP/s, peak memory, error."""
    reason: str


@dataclass
class BoardView:
    anchor: str
    board: Leaderboard
    exact: list[tuple[Line, bool]]
    approximate: list[tuple[Line, bool]]
    """Lines with whether they hold rank 1."""
    error_chart: Markup | None
    runs: list[tuple[Run, str]]
    """The group's runs with the page anchor of their environment."""
    fastp_chart: Markup | None = None
    roofline_chart: Markup | None = None
    off_device: str = ""
    families: list[tuple[str, list[Markup], int | None]] = field(default_factory=list)
    """Label, charts drawn into the page, and the LazyCharts number of those drawn when opened."""


def write_report(paths: list[str | os.PathLike], out_dir: str | os.PathLike) -> Path:
    """Render the results files' leaderboard to ``out_dir/index.html`` (written atomically); return its path."""
    html = render(load_runs(paths))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    page = out / PAGE_NAME
    write_text_atomic(page, html)
    return page


def render(runs: list[Run]) -> str:
    """The page's HTML."""
    # Quality tasks have their own section; the leaderboards and the case table read the kernel records.
    kernel = [without_tasks(run) for run in runs]
    groups = group_runs([k for run, k in zip(runs, kernel) if k.records or not run.records])
    palette = charts.Palette(r.impl for run in runs for r in run.records)
    anchors = {id(run): f"run-{i}" for i, run in enumerate(runs, 1)}
    anchors |= {id(k): anchors[id(run)] for run, k in zip(runs, kernel)}
    lazy = LazyCharts()
    boards = [_board_view(i, leaderboard(g), palette, anchors, lazy) for i, g in enumerate(groups, 1)]
    cases = {case_key(e.record.case): e.record.case for g in groups for e in g.entries}
    labels = dict(zip(cases, distinct_labels(list(cases.values()))))
    rows = [_case_row(e, labels[case_key(e.record.case)]) for g in groups for e in g.entries]
    template = _environment().get_template("report.html")
    return template.render(
        generated=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        version=attnbench.__version__,
        sources=[str(r.source) for r in runs],
        boards=boards,
        quality=quality_views(task_boards(runs), palette, anchors),
        history=history_views(kernel, palette.color),
        rows=rows,
        page_rows=PAGE_ROWS,
        case_data=script_json(pack(map(_packed, rows))),
        family_data=lazy.blob(),
        filters=[(column, label, _choices(rows, key)) for key, column, label in FILTERS],
        runs=[_run_view(r, anchors[id(r)]) for r in runs],
        confidence=f"{CONFIDENCE:.0%}",
        interval_heading=INTERVAL_HEADING,
        replicates=REPLICATES,
        css=Markup(_static("report.css")),
        script=Markup(_static("report.js")),
    )


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("attnbench.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _static(name: str) -> str:
    return (resources.files("attnbench.report") / "static" / name).read_text(encoding="utf-8")


def _board_view(index: int, board: Leaderboard, palette: charts.Palette, anchors: dict[int, str],
                lazy: LazyCharts) -> BoardView:
    entries = board.group.entries
    view = BoardView(
        anchor=f"board-{index}",
        board=board,
        exact=[(line(s), s.rank == 1) for s in board.exact],
        approximate=[(line(s), s.rank == 1) for s in board.approximate],
        error_chart=charts.error_chart(entries, palette),
        runs=[(run, anchors[id(run)]) for run in board.group.runs],
        fastp_chart=charts.fastp_chart(board.exact + board.approximate, palette),
        roofline_chart=roofline_chart(entries, ceilings_of(board.group.runs), palette),
        off_device=off_device_text(board) if board.off_device else "",
    )
    inline = 0
    families: dict[tuple, list[Entry]] = {}
    for e in entries:
        families.setdefault(family_key(e.record.case), []).append(e)
    for members in families.values():
        drawn = [c for c in (charts.time_chart(members, palette), charts.tflops_chart(members, palette),
                             charts.memory_chart(members, palette)) if c is not None]
        if not drawn:
            continue
        # The first family is always drawn; past the budget the page carries them compressed, drawn when opened.
        size = sum(map(len, drawn))
        if view.families and inline + size > INLINE_CHART_BYTES:
            view.families.append((family_label(members[0].record.case), [], lazy.add(drawn)))
        else:
            inline += size
            view.families.append((family_label(members[0].record.case), drawn, None))
    return view


def _number(value: float, text: str) -> Cell:
    return Cell("num", f"{value:.6g}", "", text)


def _why(e: Entry) -> Cell:
    """The cell of a value that does not exist, saying why."""
    return Cell("num why", "", e.record.reason, e.record.status)


def _note(text: str, why: str = "") -> Cell:
    return Cell("num why", "", why, text)


def _speedup_cell(e: Entry) -> Cell:
    rec, base = e.record, e.baseline
    if rec.status == "implausible":
        return _note("not scored", f"implausible: {rec.reason or 'faster than the roofline floor allows'}; "
                                   "kept out of the score")
    if rec.status not in MEASURED:
        return _why(e)
    if rec.status != "ok":
        return _note("no credit", f"{rec.status}: no speed credit for a wrong answer")
    if base is None:
        return _note("no baseline", f"the baseline {e.run.baseline or '(none)'} has no record of this case in run {e.run.id}")
    if base is rec:
        return _number(1.0, "baseline")
    if base.status != "ok":
        return _note(f"baseline {base.status}", base.reason)
    ratio = speedup(rec, base)
    if ratio is None:
        return _note("not timed", "no median time")
    value, significant = ratio
    if significant:
        return _number(value, f"{value:.2f}×")
    return Cell("num", f"{value:.6g}", "inside the timing noise of the two measurements: not a difference", f"≈{value:.2f}×")


def _metric_cell(e: Entry, key: str, text: Callable[[float], str]) -> Cell:
    value = e.record.metrics.get(key)
    if value is None:
        return _why(e) if e.record.status not in SHOWN else _note("not measured")
    return _number(value, text(value))


def _packed(row: CaseRow) -> list[str | float | None]:
    """A case row as the page's script reads it (report.js, ROW): its fields, each cell's sort key, text and
    tooltip; a sort key is a number, or None for a cell without a value."""
    fields: list[str | float | None] = [row.hardware, row.label, float(row.seq_sort), row.seq, row.dtype, row.mask,
                                        row.pass_, row.impl, row.status, row.status_text]
    for cell in row.cells:
        fields += [float(cell.sort) if cell.sort else None, cell.text, cell.why]
    return [*fields, row.reason]


def _case_row(e: Entry, label: str) -> CaseRow:
    """``label``: the case's, told apart from any other case's that reads the same (``distinct_labels``)."""
    r, case = e.record, e.record.case
    return CaseRow(
        hardware=e.hardware,
        label=label,
        seq_sort=f"{_seq_sort(case):.9g}",
        seq=seq_text(case),
        dtype=str(case["dtype"]),
        mask=str(case["mask"]),
        pass_=str(case["pass"]),
        impl=r.impl,
        status=r.status,
        status_text=(r.status if r.exact else f"{r.status} (approx)") + (" ⚑" if pair_notes(r) else ""),
        cells=(
            _metric_cell(e, "time_ms_median", lambda ms: f"{format_time(ms)} ± {100 * noise(r):.0f}%"),
            _speedup_cell(e),
            _metric_cell(e, "tflops", lambda v: f"{v:.3g}"),
            _metric_cell(e, "peak_bytes", format_bytes),
            _metric_cell(e, "rel_err", error_text),
        ),
        reason="; ".join(filter(None, [r.reason, *pair_notes(r)])),
    )


def _seq_sort(case: dict[str, Any]) -> float:
    """By keys, then queries: a packed batch's over all its sequences (the x of its family's charts)."""
    queries = sum(case["seqlens_q"]) if is_packed(case) else case["seq_q"]
    return batch_keys(case) * 1e6 + queries


def _seq_order(text: str) -> tuple:
    """Dense lengths by keys then queries, numerically; packed batch shapes after them, by their text."""
    parts = text.split("×")
    if all(p.isdigit() for p in parts):
        return (0, *(int(n) for n in reversed(parts)))
    return (1, text)


def _choices(rows: list[CaseRow], key: str) -> list[str]:
    values = {getattr(row, key) for row in rows}
    if key == "seq":
        return sorted(values, key=_seq_order)
    return sorted(values)


def _fact(value: Any) -> str:
    if value is None:
        return "—"
    return value if isinstance(value, str) else json.dumps(value)


def _run_view(run: Run, anchor: str) -> dict[str, Any]:
    info = run.info
    facts = [("source", str(run.source)), ("suite", info.get("suite")), ("device", info.get("device")),
             ("hardware", run.hardware), ("baseline", run.baseline), ("started", run.started),
             ("finished", info.get("finished")), ("interrupted", info.get("interrupted")),
             ("attnbench", info.get("attnbench")), ("command", " ".join(map(str, info.get("command") or []))),
             ("resumed records", info.get("resumed_records"))]
    for section in ("environment", "options"):
        facts += [(f"{section}.{k}", v) for k, v in (info.get(section) or {}).items()]
    return {"id": run.id, "anchor": anchor, "title": f"{run.suite} · {run.hardware} · {run.started}",
            "facts": [(k, _fact(v)) for k, v in facts],
            "plugins": info.get("plugins") or [], "records": len(run.records)}
