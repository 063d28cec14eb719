"""Packed batches as a suite writes them: explicit lengths, drawn lengths and vLLM's batch-spec grammar.

The axes ``seqlens``, ``seqlens_q``, ``seqlens_kv``, ``lengths`` and
``batch_spec`` give a case's per-sequence lengths (``Case.seqlens_q`` and
``seqlens_kv``). Each value is checked here with its line, into what
``expand`` turns into lengths: a tuple of lengths, a ``LengthDraw``, or a
batch spec (kept as written, its grammar checked).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Any

from attnbench.suite.checking import Checker
from attnbench.suite.reading import Map, Seq, show
from attnbench.suite.schema import LENGTHS_KEYS

LENGTH_AXES = ("seqlens", "seqlens_q", "seqlens_kv", "lengths", "batch_spec")
"""The axes that give a packed batch's lengths."""

BOTH_SIDES = ("seqlens", "lengths", "batch_spec")
"""The length axes that give the queries' and the keys' lengths together."""

# vLLM's benchmarks/attention_benchmarks grammar: [<count>]q<q_len>[k][s<kv_len>[k]].
_GROUP = re.compile(r"(\d+)?q(\d+)(k?)(?:s(\d+)(k?))?")
_GRAMMAR = "[<count>]q<q_len>[s<kv_len>] (k after a length = x1024; e.g. 32q1s1k: 32 decodes over 1024-token caches)"


def parse_batch_spec(spec: str) -> tuple[tuple[int, int], ...]:
    """``"2q2k_32q1s1k"`` -> ((2048, 2048), (2048, 2048), (1, 1024) x 32); ValueError saying what is wrong."""
    pairs: list[tuple[int, int]] = []
    for group in spec.split("_"):
        match = _GROUP.fullmatch(group)
        if match is None:
            shown = f"group {group!r}" if group else "an empty group (two '_' in a row, or one at an end)"
            raise ValueError(f"batch_spec {spec!r}: {shown} is not {_GRAMMAR}")
        count = int(match[1]) if match[1] else 1
        q_len = int(match[2]) * (1024 if match[3] else 1)
        kv_len = int(match[4]) * (1024 if match[5] else 1) if match[4] else q_len
        if min(count, q_len, kv_len) < 1:
            raise ValueError(f"batch_spec {spec!r}: group {group!r} has a count or length of 0")
        if kv_len < q_len:
            raise ValueError(f"batch_spec {spec!r}: group {group!r} has {q_len} queries over {kv_len} keys; kv_len "
                             "must be at least q_len (the cache holds the new tokens too)")
        pairs += [(q_len, kv_len)] * count
    return tuple(pairs)


@dataclass(frozen=True)
class LengthDraw:
    """A ``lengths`` mapping: how to draw a packed self-attention batch's lengths."""

    dist: str
    mean: int | None = None
    min: int = 1
    max: int | None = None
    sigma: float = 1.0
    seed: int = 0

    def draw(self, n: int) -> tuple[int, ...]:
        """``n`` lengths, the same for the same mapping anywhere: the first n of any longer draw."""
        if self.dist == "fixed":
            return (self.mean,) * n
        # Seeded from the mapping alone (a string seed is hashed with SHA-512, stable across platforms).
        rng = random.Random(f"attnbench.lengths:{self.dist}:{self.mean}:{self.min}:{self.max}:{self.sigma!r}:"
                            f"{self.seed}")
        if self.dist == "uniform":
            return tuple(rng.randint(self.min, self.max) for _ in range(n))
        mu = math.log(self.mean) - self.sigma**2 / 2  # so that the distribution's mean is `mean`
        return tuple(min(self.max, max(self.min, round(rng.lognormvariate(mu, self.sigma)))) for _ in range(n))

    def describe(self) -> str:
        """The mapping as an error message shows it."""
        shown = {k: getattr(self, k) for k in LENGTHS_KEYS}
        used = {"fixed": ("dist", "mean"), "uniform": ("dist", "min", "max", "seed")}.get(self.dist, tuple(shown))
        return "{" + ", ".join(f"{k}: {shown[k]:g}" if isinstance(shown[k], float) else f"{k}: {shown[k]}"
                               for k in used) + "}"


# Keys each distribution takes; the rest would be silently unused.
_DIST_KEYS = {"fixed": ("dist", "mean", "seed"), "uniform": ("dist", "min", "max", "seed"),
              "lognormal": ("dist", "mean", "min", "max", "sigma", "seed")}
_DIST_NEEDS = {"fixed": ("mean",), "uniform": ("max",), "lognormal": ("mean", "max")}


def length_items(check: Checker, name: str, value: Any, field: str, line: int,
                 lists: bool) -> tuple[tuple[Any, int], ...]:
    """The checked values of length axis ``name`` as written at ``line``; ``lists`` (matrix) allows several."""
    many = isinstance(value, Seq) and bool(value) and (
        all(isinstance(v, Seq) for v in value) if name.startswith("seqlens") else True)
    if name.startswith("seqlens") and not isinstance(value, Seq):
        raise check.error(line, field, f"{field} must be a list of lengths (integers >= 1), got {show(value)}")
    if name == "lengths" and not isinstance(value, (Map, Seq)):
        raise check.error(line, field, f"{field} must be a mapping (dist, mean, min, max, sigma, seed), got "
                          f"{show(value)}")
    if isinstance(value, Seq) and not value:
        raise check.error(line, field, f"{field} is an empty list; give at least one value")
    if many and not lists:
        what = "a list of lists of lengths" if name.startswith("seqlens") else "a list"
        raise check.error(line, field, f"{field} must be a single value, got {what}; lists belong in matrix")
    items = tuple(zip(value, value.lines)) if many else ((value, line),)
    parse = {"lengths": _lengths, "batch_spec": _batch_spec}.get(name, _seqlens)
    return tuple((parse(check, v, field, vl), vl) for v, vl in items)


def _seqlens(check: Checker, value: Any, field: str, line: int) -> tuple[int, ...]:
    if not isinstance(value, Seq) or not value:
        raise check.error(line, field, f"{field} must be a non-empty list of lengths (integers >= 1), got "
                          f"{show(value)}")
    for i, (n, nl) in enumerate(zip(value, value.lines)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise check.error(nl, field, f"{field}: length {i} must be an integer >= 1, got {show(n)}")
    return tuple(value)


def _batch_spec(check: Checker, value: Any, field: str, line: int) -> str:
    if not isinstance(value, str):
        raise check.error(line, field, f"{field} must be a batch spec such as '2q2k_32q1s1k' ({_GRAMMAR}, "
                          f"groups joined by '_'), got {show(value)}")
    try:
        parse_batch_spec(value)
    except ValueError as exc:
        raise check.error(line, field, f"{field}: {exc}") from None
    return value


def _lengths(check: Checker, value: Any, field: str, line: int) -> LengthDraw:
    if not isinstance(value, Map):
        raise check.error(line, field, f"{field} entries must be mappings (dist, mean, min, max, sigma, seed), got "
                          f"{show(value)}")
    check.keys(value, LENGTHS_KEYS, field)
    given = {k: check.scalar(v, LENGTHS_KEYS[k], f"{field}.{k}", value.lines[k]) for k, v in value.items()}
    dist = given["dist"]
    for k in given:
        if k not in _DIST_KEYS[dist]:
            raise check.error(value.lines[k], f"{field}.{k}", f"{field}.{k}: dist {dist} does not use {k} "
                              f"(it takes {', '.join(_DIST_KEYS[dist][1:])}); remove it")
    for k in _DIST_NEEDS[dist]:
        if k not in given:
            raise check.error(value.line, field, f"{field}: dist {dist} needs {k}")
    draw = LengthDraw(**given)
    if dist != "fixed":
        low = draw.mean if draw.mean is not None else draw.min
        if not draw.min <= low <= draw.max:
            shown = "min <= mean <= max" if draw.mean is not None else "min <= max"
            raise check.error(value.line, field, f"{field}: {draw.describe()} needs {shown}")
    return draw


def packed_lengths(name: str, value: Any, batch: int) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """(seqlens_q, seqlens_kv) that length axis ``name``'s checked ``value`` gives; None for a side it leaves."""
    if name == "lengths":
        drawn = value.draw(batch)
        return drawn, drawn
    if name == "batch_spec":
        pairs = parse_batch_spec(value)
        return tuple(q for q, _ in pairs), tuple(kv for _, kv in pairs)
    return (value if name != "seqlens_kv" else None), (value if name != "seqlens_q" else None)


def show_lengths(lengths: tuple[int, ...]) -> str:
    """Lengths as a message shows them: all of a short list, the ends of a long one."""
    if len(lengths) <= 8:
        return "[" + ", ".join(map(str, lengths)) + "]"
    return f"[{', '.join(map(str, lengths[:3]))}, ... {lengths[-1]}] ({len(lengths)})"
