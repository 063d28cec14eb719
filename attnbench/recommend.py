"""``attnbench recommend``: per case, the fastest correct implementation, how much faster than the baseline, its memory.

Records are taken per hardware and torch version (what a deployment runs on),
the newest run's record of a pair counting, as on the leaderboards. A case's
candidates are its records with status ``ok`` and a median time, exact or
approximate (approximate ones are marked, and the fastest exact one is named
beside them); ``ranked=False`` implementations (the float64 reference) are not
candidates. The fastest is the recommendation, and every candidate whose time
is inside the noise of the fastest's (``report.speedup``'s rule) is named as
tied with it: an order inside the noise is not a result.

Phases: ``train`` is the cases with a backward pass (``fwd+bwd``, ``bwd``);
``decode`` the forward cases with at most DECODE_MAX_Q queries (one token, or
a few draft tokens of speculative decoding); ``prefill`` the other forward
cases. A packed batch goes by its longest query run (``seq_q``), so a batch
that mixes prefills with decodes (``2q2k_32q1s1k``) is a prefill case. ``--model NAME`` keeps the cases whose heads_q, heads_kv and head_dim
are the model's: ``Shape`` is the filter, and a preset table plugs in as
``attnbench.models.MODELS``, a mapping of name to a preset with those three
fields (attributes or keys), and a preset whose ``pending`` says why it
cannot be a case yet is refused with that reason.

``signature`` names a case in the dispatch table (``attnbench export --format
dispatch``), one stable string per case.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from attnbench.compare import median_time
from attnbench.errors import UserError
from attnbench.report.format import batch_shape, format_bytes, format_time, is_packed, lengths_text, seq_text
from attnbench.report.quality import kernel_runs
from attnbench.report.runs import Entry, Run, case_key
from attnbench.report.speedup import noise, speedup
from attnbench.textsafe import markup

PHASES = ("prefill", "decode", "train")
DECODE_MAX_Q = 16
"""The most queries per sequence a decode step has: one new token, or up to 16 draft tokens being verified."""
MODEL_TABLE = "attnbench.models"
"""The module whose ``MODELS`` mapping ``--model`` reads; it does not exist yet in every attnbench."""


def phase(case: dict[str, Any]) -> str:
    """``train``, ``decode`` or ``prefill`` (see the module doc)."""
    if case["pass"] != "fwd":
        return "train"
    return "decode" if case["seq_q"] <= DECODE_MAX_Q else "prefill"


@dataclass(frozen=True)
class Shape:
    """What a model asks of a case: its query heads, key/value heads and head size."""

    heads_q: int
    heads_kv: int
    head_dim: int

    def matches(self, case: dict[str, Any]) -> bool:
        return (case["heads_q"], case["heads_kv"], case["head_dim"]) == (self.heads_q, self.heads_kv, self.head_dim)


def model_shape(name: str, table: Mapping[str, Any] | None = None) -> Shape:
    """The shape of preset ``name`` in ``table`` (default: ``attnbench.models.MODELS``, when that module exists)."""
    if table is None:
        try:
            table = importlib.import_module(MODEL_TABLE).MODELS
        except (ImportError, AttributeError):
            raise UserError(f"--model {name}: no model preset table is installed ({MODEL_TABLE} with its MODELS "
                            "is not in this attnbench); --model keeps the cases whose heads_q, heads_kv and "
                            "head_dim are a preset's, so it works once the table is there") from None
    if name not in table:
        raise UserError(f"--model {name}: no such preset; known: {', '.join(sorted(table)) or 'none'}")
    preset = table[name]
    # A preset whose attention a case cannot express yet (attnbench.models' pending) matches no case: say why.
    pending = preset.get("pending") if isinstance(preset, Mapping) else getattr(preset, "pending", "")
    if pending:
        raise UserError(f"--model {name}: no case has this model's shape yet: {pending}")
    try:
        fields = [preset[k] if isinstance(preset, Mapping) else getattr(preset, k)
                  for k in ("heads_q", "heads_kv", "head_dim")]
    except (KeyError, AttributeError) as exc:
        raise UserError(f"--model {name}: the preset does not say its {exc}") from None
    return Shape(*fields)


@dataclass
class Pick:
    """One case's candidates, fastest first, and the ones tied with the fastest."""

    case: dict[str, Any]
    entries: list[Entry]
    """Every record of the case on this hardware and torch version."""
    ranked: list[Entry] = field(default_factory=list)
    ties: list[Entry] = field(default_factory=list)

    @property
    def best(self) -> Entry | None:
        return self.ranked[0] if self.ranked else None

    @property
    def fastest_exact(self) -> Entry | None:
        return next((e for e in self.ranked if e.record.exact), None)


@dataclass
class Setting:
    """What measured the picks: one hardware under one torch version."""

    hardware: str
    torch: str
    runs: list[Run]
    picks: list[Pick]

    @property
    def title(self) -> str:
        return f"{self.hardware} · torch {self.torch}"


def pick(case: dict[str, Any], entries: list[Entry]) -> Pick:
    """Rank a case's correct, timed, ranked records by median time; name those inside the fastest's noise."""
    result = Pick(case, entries)
    candidates = [e for e in entries if e.record.status == "ok" and e.record.ranked and median_time(e.record)]
    result.ranked = sorted(candidates, key=lambda e: (median_time(e.record), e.record.impl))
    if result.ranked:
        first = result.ranked[0].record
        result.ties = [e for e in result.ranked[1:] if not speedup(first, e.record)[1]]
    return result


def settings(runs: list[Run]) -> list[Setting]:
    """Per hardware and torch version, in the order first seen: every case's pick from the newest record per pair."""
    members: dict[tuple[str, str], list[tuple[Run, list]]] = {}
    for run in kernel_runs(runs):
        for hardware, records in run.by_hardware().items():
            members.setdefault((hardware, run.torch), []).append((run, records))
    found = []
    for (hardware, torch), parts in members.items():
        newest: dict[tuple, dict[str, Entry]] = {}
        cases: dict[tuple, dict] = {}
        # Stable sort: among runs started at the same time the later argument wins.
        for run, records in sorted(parts, key=lambda p: p[0].started):
            baselines = {case_key(r.case): r for r in records if r.impl == run.baseline}
            for record in records:
                key = case_key(record.case)
                cases.setdefault(key, record.case)
                newest.setdefault(key, {})[record.impl] = Entry(run, record, baselines.get(key), hardware)
        picks = [pick(case, list(newest[key].values())) for key, case in cases.items()]
        found.append(Setting(hardware, torch, [run for run, _ in parts], picks))
    return found


def recommend(runs: list[Run], phase_name: str | None = None, shape: Shape | None = None) -> list[Setting]:
    """``settings`` with only the cases of ``phase_name`` that match ``shape``; a UserError when none is left."""
    if phase_name is not None and phase_name not in PHASES:
        raise UserError(f"--phase {phase_name}: not one of {', '.join(PHASES)}")
    found = settings(runs)
    for s in found:
        s.picks = [p for p in s.picks if (phase_name is None or phase(p.case) == phase_name)
                   and (shape is None or shape.matches(p.case))]
    kept = [s for s in found if s.picks]
    if not kept:
        wanted = " and ".join(w for w in (phase_name and f"phase {phase_name}", shape and (
            f"heads_q {shape.heads_q}, heads_kv {shape.heads_kv}, head_dim {shape.head_dim}")) if w)
        raise UserError(f"no case of the results is {wanted}" if wanted else "the results hold no kernel case")
    return kept


def signature(case: dict[str, Any]) -> str:
    """The case as one stable string: ``pass|dtype|mask|bB|hqH|hkvH|dD|sqN|skvN``, then ``|winW`` for a sliding
    window, ``|scaleS`` for an explicit scale and ``|field=value`` for any other field, sorted (device left out:
    the hardware says it), e.g. ``fwd|bfloat16|causal|b8|hq32|hkv8|d128|sq1|skv8192``; a packed batch's lengths
    follow as ``|page_size=16|seqlens_kv=4096,1024|seqlens_q=1,1`` (sq and skv are its longest)."""
    parts = [str(case["pass"]), str(case["dtype"]), str(case["mask"]), f"b{case['batch']}", f"hq{case['heads_q']}",
             f"hkv{case['heads_kv']}", f"d{case['head_dim']}", f"sq{case['seq_q']}", f"skv{case['seq_kv']}"]
    if case.get("window") is not None:
        parts.append(f"win{case['window']}")
    if case.get("scale") is not None:
        parts.append(f"scale{case['scale']:g}")
    known = {"pass", "dtype", "mask", "batch", "heads_q", "heads_kv", "head_dim", "seq_q", "seq_kv", "window", "scale",
             "device"}
    parts += [f"{k}={_value(case[k])}" for k in sorted(case) if k not in known]
    return "|".join(parts)


def _value(value: Any) -> str:
    """A field as a signature writes it: a packed batch's lengths joined by commas (``seqlens_q=5,1,1``)."""
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _shape_label(case: dict[str, Any]) -> str:
    heads = f"H{case['heads_q']}" if case["heads_q"] == case["heads_kv"] else f"H{case['heads_q']}/{case['heads_kv']}"
    if is_packed(case):
        return f"{batch_shape(case)} {heads} D{case['head_dim']}"
    return f"B{case['batch']} {heads} N{seq_text(case, 'x')} D{case['head_dim']}"


def _table_key(case: dict[str, Any]) -> tuple:
    mask = case["mask"] if case.get("window") is None else f"{case['mask']} {case['window']}"
    return str(case["dtype"]), mask, str(case["pass"]), "" if case.get("scale") is None else f"scale {case['scale']:g}"


def _name(entry: Entry) -> str:
    return markup(entry.record.impl) + ("" if entry.record.exact else " [dim](approx)[/]")


def _speedup_text(entry: Entry) -> str:
    base = entry.baseline
    if base is None:
        return "[dim]no baseline[/]"
    if base is entry.record:
        return "1.00× (baseline)"
    if base.status != "ok":
        return f"[dim]baseline {markup(base.status)}[/]"
    ratio = speedup(entry.record, base)
    if ratio is None:
        return "[dim]baseline not timed[/]"
    value, significant = ratio
    return f"{value:.2f}× vs {markup(base.impl)}" if significant else f"≈{value:.2f}× vs {markup(base.impl)} (noise)"


def _failures(p: Pick) -> str:
    statuses = sorted({e.record.status for e in p.entries if e.record.ranked})
    return "[dim]" + markup(", ".join(statuses) or "no record") + "[/]"


def print_recommendations(console: Console, found: list[Setting]) -> None:
    """One table per hardware and torch version and per dtype, mask and pass; one row per case."""
    for s in found:
        console.rule(f"[bold]{markup(s.title)}[/] · runs {markup(', '.join(r.id for r in s.runs))}", align="left")
        tables: dict[tuple, list[Pick]] = {}
        for p in s.picks:
            tables.setdefault(_table_key(p.case), []).append(p)
        for key, picks in tables.items():
            picks.sort(key=lambda p: (p.case["head_dim"], p.case["heads_q"], p.case["heads_kv"], p.case["seq_kv"],
                                      p.case["seq_q"], p.case["batch"]))
            approximate = any(p.best and not p.best.record.exact for p in picks)
            table = Table(title=markup(" · ".join(k for k in key if k)), title_justify="left")
            for name, justify in (("case", "left"), ("phase", "left"), ("fastest", "left"), ("tied within noise", "left"),
                                  ("time ± noise", "right"), ("speedup", "right"), ("peak memory", "right")):
                table.add_column(name, justify=justify)
            if approximate:
                table.add_column("fastest exact", justify="left")
            shapes = [_shape_label(p.case) for p in picks]
            # Packed batches of different lengths can read the same: their rows say their lengths.
            shapes = [f"{t} [{lengths_text(p.case)}]" if shapes.count(t) > 1 and is_packed(p.case) else t
                      for t, p in zip(shapes, picks)]
            for p, shape in zip(picks, shapes):
                best = p.best
                if best is None:
                    cells = ["[red]none correct[/]", _failures(p), "", "", ""]
                else:
                    r = best.record
                    peak = r.metrics.get("peak_bytes")
                    # Each tie with its own noise: a tie can come from the other's noisy timing rather than its speed.
                    cells = [_name(best), ", ".join(f"{_name(e)} ±{100 * noise(e.record):.0f}%" for e in p.ties),
                             f"{format_time(median_time(r))} ± {100 * noise(r):.0f}%", _speedup_text(best),
                             format_bytes(peak) if peak is not None else "[dim]not measured[/]"]
                if approximate:
                    exact = p.fastest_exact
                    cells.append("" if best is None or best.record.exact else (
                        f"{_name(exact)} {format_time(median_time(exact.record))}" if exact else "[dim]none correct[/]"))
                table.add_row(markup(shape), phase(p.case), *cells)
            console.print(table)
    console.print("[dim]fastest: the quickest implementation with status ok (approx: not exact); tied: inside the "
                  "timing noise of the fastest (the larger of IQR/median and the spread between processes)[/]")
