"""The quality section: task records (``attnbench.quality``) as per-task boards, Pareto fronts and tables.

A board is one task configuration on one piece of hardware; when several
runs trained the same implementation on it, the newest run's record counts,
as on the leaderboards. The Pareto front is over accuracy (higher is better)
and time per training step (lower is better), among the records that are
``ok`` and beat chance (a model that did not learn is no trade-off, however
fast): no implementation off the front is both faster and more accurate
than one on it.

Nothing here imports torch: the report commands must start fast.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from markupsafe import Markup
from rich.console import Console
from rich.table import Table

from attnbench.report import charts
from attnbench.report.format import error_text, format_bytes, format_time, number_text, task_label
from attnbench.report.runs import Run, case_key
from attnbench.results import MEASURED, Record
from attnbench.textsafe import markup

REFERENCE = "eager"
"""The implementation exact ones are judged against (attnbench.quality.runner.EAGER, without importing torch)."""


def is_task(record: Record) -> bool:
    """A quality task's record (its case is a task config), not a kernel case's."""
    return "task" in record.case


def without_tasks(run: Run) -> Run:
    """The run with its task records left out (itself when it has none): what the kernel leaderboards read."""
    if not any(is_task(r) for r in run.records):
        return run
    return replace(run, records=[r for r in run.records if not is_task(r)])


def kernel_runs(runs: Iterable[Run]) -> list[Run]:
    """The runs without their task records, those that held nothing else left out: what leaderboards rank."""
    return [kernel for run in runs if (kernel := without_tasks(run)).records or not run.records]


@dataclass
class TaskLine:
    """One implementation on one task board."""

    record: Record
    run: Run
    front: bool = False
    """On the Pareto front of accuracy against time per step."""

    @property
    def impl(self) -> str:
        return self.record.impl

    def metric(self, name: str) -> float | None:
        value = self.record.metrics.get(name)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    @property
    def accuracy(self) -> float | None:
        """Mean accuracy over the seeds; None unless its std, min and max are numbers too, as the tables show them."""
        mean, *spread = (self.metric(f"accuracy_{stat}") for stat in ("mean", "std", "min", "max"))
        return None if None in spread else mean

    @property
    def step_ms(self) -> float | None:
        return self.metric("step_ms_median_mean")

    @property
    def plotted(self) -> bool:
        """Trained on every seed, so it has a mean accuracy and time per step to place on the chart."""
        return self.record.status in MEASURED and self.accuracy is not None and bool(self.step_ms)

    @property
    def verdict(self) -> str:
        """How its accuracy compares with eager's: a verdict for exact implementations, a comparison for the rest."""
        agrees = self.record.metrics.get("agrees_with_eager")
        if self.impl == REFERENCE:
            return "reference"
        if agrees is None:
            return "—"
        if self.record.exact:
            return "agrees" if agrees else "DISAGREES"
        return "within spread" if agrees else "outside spread"


@dataclass
class TaskBoard:
    """One task configuration on one piece of hardware."""

    hardware: str
    case: dict[str, Any]
    lines: list[TaskLine] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    superseded: int = 0

    @property
    def task(self) -> str:
        return str(self.case["task"])

    @property
    def title(self) -> str:
        return f"{self.task} · {self.hardware}"

    @property
    def label(self) -> str:
        return task_label(self.case)

    @property
    def seeds(self) -> list:
        return next((line.record.metrics["seeds"] for line in self.lines if line.record.metrics.get("seeds")), [])

    @property
    def chance(self) -> float | None:
        """Accuracy of always guessing the most common held-out label (the same data for every implementation)."""
        return next((c for c in (line.metric("chance_accuracy_mean") for line in self.lines) if c is not None), None)


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """For (time, accuracy) points: True where no other point is as fast and as accurate, and better in one."""
    return [
        not any(t <= time and a >= accuracy and (t < time or a > accuracy) for t, a in points)
        for time, accuracy in points
    ]


def task_boards(runs: Iterable[Run]) -> list[TaskBoard]:
    """Boards in the order first seen; lines best first (measured by accuracy, then the rest by name)."""
    boards: dict[tuple, TaskBoard] = {}
    # Stable sort: among runs with the same start time the later argument wins.
    for run in sorted(runs, key=lambda r: r.started):
        for hardware, records in run.by_hardware().items():
            for record in records:
                if not is_task(record):
                    continue
                board = boards.setdefault((hardware, case_key(record.case)), TaskBoard(hardware, record.case))
                if run not in board.runs:
                    board.runs.append(run)
                kept = [line for line in board.lines if line.impl != record.impl]
                board.superseded += len(board.lines) - len(kept)
                board.lines = [*kept, TaskLine(record, run)]
    for board in boards.values():
        board.lines.sort(key=lambda line: (not line.plotted, -(line.accuracy or 0.0), line.impl))
        candidates = [line for line in board.lines if line.plotted and line.record.status == "ok"
                      and line.accuracy > (line.metric("chance_accuracy_mean") or 0.0)]
        for line, front in zip(candidates, pareto_front([(line.step_ms, line.accuracy) for line in candidates])):
            line.front = front
    return list(boards.values())


# --- the page ------------------------------------------------------------------------------------------------------


class QualityRow(NamedTuple):
    """One line of a board's table on the page, its cells as text."""

    impl: str
    kind: str
    status: str
    accuracy: str
    spread: str
    precision: str
    recall: str
    f1: str
    roc_auc: str
    step: str
    peak: str
    kernel_err: str
    verdict: str
    agreement: str
    """Why the verdict: the agreement rule with its numbers (a tooltip)."""
    front: str
    reason: str


@dataclass
class QualityView:
    anchor: str
    board: TaskBoard
    rows: list[QualityRow]
    chart: Markup | None
    runs: list[tuple[Run, str]]
    """The board's runs with the page anchor of their environment."""


def quality_views(boards: list[TaskBoard], palette: charts.Palette, anchors: dict[int, str]) -> list[QualityView]:
    """The page's quality section: each board's table and its accuracy-vs-time chart."""
    views = []
    for i, board in enumerate(boards, 1):
        points = [_point(line) for line in board.lines if line.plotted]
        chart = charts.quality_chart(f"{board.task}: accuracy vs time per training step", points, palette, board.chance)
        views.append(QualityView(f"quality-{i}", board, [_row(line) for line in board.lines], chart,
                                 [(run, anchors[id(run)]) for run in board.runs]))
    return views


def _point(line: TaskLine) -> charts.QualityPoint:
    m, r = line.record.metrics, line.record
    kind = "exact" if r.exact else "approximate"
    tip = (f"{r.impl} ({kind}): accuracy {accuracy_text(line)}, {format_time(line.step_ms)} per step, "
           f"vs eager: {line.verdict}" + (" · Pareto front" if line.front else ""))
    return charts.QualityPoint(name=r.impl, exact=r.exact, time_ms=line.step_ms, accuracy=line.accuracy,
                               low=m["accuracy_min"], high=m["accuracy_max"], tip=tip,
                               hollow=r.status != "ok", front=line.front)


def _row(line: TaskLine) -> QualityRow:
    r = line.record
    spread = "" if line.accuracy is None else f"{r.metrics['accuracy_min']:.3f}–{r.metrics['accuracy_max']:.3f}"
    accuracy = "" if line.accuracy is None else f"{line.accuracy:.3f} ± {r.metrics['accuracy_std']:.3f}"
    return QualityRow(
        impl=r.impl, kind="exact" if r.exact else "approx", status=r.status, accuracy=accuracy, spread=spread,
        precision=number_text(line.metric("precision_mean")), recall=number_text(line.metric("recall_mean")),
        f1=number_text(line.metric("f1_mean")), roc_auc=number_text(line.metric("roc_auc_mean")),
        step=format_time(line.step_ms) if line.step_ms else "", peak=format_bytes(line.metric("peak_bytes_mean")),
        kernel_err=error_text(line.metric("kernel_rel_err")), verdict=line.verdict,
        agreement=str(r.metrics.get("agreement") or ""), front="★" if line.front else "", reason=r.reason,
    )


# --- text ----------------------------------------------------------------------------------------------------------


def accuracy_text(line: TaskLine) -> str:
    """``0.912 ± 0.013 [0.897, 0.921]``: mean ± std, and the range over seeds."""
    m = line.record.metrics
    if line.accuracy is None:
        return ""
    return f"{m['accuracy_mean']:.3f} ± {m['accuracy_std']:.3f} [{m['accuracy_min']:.3f}, {m['accuracy_max']:.3f}]"


def task_table(board: TaskBoard) -> Table:
    """The board as a rich table; the Pareto front marked ★, failures with their reason."""
    seeds = len(board.seeds)
    chance = "" if board.chance is None else f", chance {board.chance:.3f}"
    table = Table(title=markup(f"{board.title} — {board.label}, {seeds} seeds{chance}"), title_justify="left")
    for name, justify in (("implementation", "left"), ("kind", "left"), ("accuracy mean ± std [min, max]", "right"),
                          ("F1", "right"), ("ROC-AUC", "right"), ("time/step", "right"), ("peak mem", "right"),
                          ("kernel err", "right"), ("vs eager", "left"), ("", "left"), ("status", "left")):
        table.add_column(name, justify=justify)
    for line in board.lines:
        r = line.record
        if r.status == "ok":
            status = "[green]ok[/]"
        elif r.status in ("unsupported", "skipped"):
            status = f"[dim]{r.status}: {markup(r.reason, keep_lines=True)}[/]"
        else:
            status = f"[bold red]{r.status}[/]: {markup(r.reason, keep_lines=True)}"
        cells = [r.impl, "exact" if r.exact else "approx", accuracy_text(line), number_text(line.metric("f1_mean")),
                 number_text(line.metric("roc_auc_mean")), format_time(line.step_ms) if line.step_ms else "",
                 format_bytes(line.metric("peak_bytes_mean")), error_text(line.metric("kernel_rel_err")),
                 line.verdict, "★" if line.front else ""]
        table.add_row(*(markup(c) for c in cells), status, style="red" if r.status == "incorrect" else None)
    return table


def print_task_boards(console: Console, boards: list[TaskBoard]) -> None:
    """One table per board, then what the marks mean."""
    for board in boards:
        console.print(task_table(board))
    if boards:
        console.print("[dim]Quality: held-out accuracy over seeds of a small transformer trained with each "
                      "implementation as its attention. vs eager: an exact implementation must agree with eager "
                      "within the seed spread; ★ Pareto front of accuracy against time per training step.[/]")


def print_task_records(console: Console, records: list[Record]) -> None:
    """The task records of one run, as boards (``attnbench run``'s closing tables)."""
    tasks = [r for r in records if is_task(r)]
    if tasks:
        hardware = next((r.hardware for r in tasks if r.hardware), "")
        print_task_boards(console, task_boards([Run(info={"hardware": hardware}, records=tasks, source=Path())]))
