"""Implementation: what a plugin registers, and the capabilities it declares."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from attnbench.case import DTYPES, FLOAT_DTYPES, SCORE_MODS, Case, dtype_name
from attnbench.masks import MASKS

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""What ``build`` returns: ``(q, k, v) -> out`` in the declared layout."""

MemoryModel = Callable[[Case], int]
"""``memory(case) -> bytes``: an implementation's workspace beyond the resident q, k, v, output (and gradients)."""

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_\-]*(\.[a-z0-9][a-z0-9_\-]*)*$")
LAYOUTS = ("bhsd", "bshd")
DEVICES = ("cpu", "cuda")


class Unsupported(Exception):
    """Raised by ``build(case)`` when the implementation cannot run the case; the message is the reason."""

    def __init__(self, reason: str) -> None:
        if not str(reason).strip():
            raise ValueError("Unsupported needs a reason")
        super().__init__(reason)

    @property
    def reason(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Implementation:
    """An attention implementation and the capabilities it declares.

    ``build(case)`` runs once per case, outside any timed region, and returns
    ``(q, k, v) -> out`` (with keywords for packed and paged cases) or raises ``Unsupported(reason)``. The declared
    capabilities let the runner skip a case without building; they must be
    truthful: whatever they admit has to build and be correct.

    - ``devices``, ``dtypes``, ``masks``: what the implementation accepts (``dtypes`` by default the
      three float types; fp8 only where declared).
    - ``gqa``: accepts ``heads_kv < heads_q`` (k and v are not repeated for it).
    - ``cross``: accepts ``seq_q != seq_kv`` (masks bottom-right aligned).
    - ``backward``: the returned callable is differentiable w.r.t. q, k and v.
    - ``layout``: ``"bhsd"`` (default) or ``"bshd"``; the runner transposes
      inputs and output outside the timed region. Packed cases have one layout,
      ``(tokens, heads, head_dim)``, whatever this says.
    - ``out``: the callable takes ``out=`` (a preallocated output, in the
      layout, that it must fill completely and return); the runner passes a
      NaN-poisoned buffer to catch unwritten elements.
    - ``exact``: computes exact attention; False for approximations, whose
      error is reported without a verdict.
    - ``ranked``: False keeps it off leaderboards (the float64 reference).
    - ``params``: the knobs an approximate implementation was built with.
    - ``dense``: accepts dense (equal-length, unpacked) batches; False for an implementation that only
      makes sense on packed ones.
    - ``ragged``: accepts packed batches of per-sequence lengths, called with
      FlashAttention's varlen keywords (``attnbench.packing``).
    - ``paged``: accepts paged KV caches, called with FlashAttention's kvcache
      keywords (``attnbench.packing``).
    - ``head_dim_v``: accepts a value head dim other than q's and k's (``Case.head_dim_v``).
    - ``score_mods``: the score variants it implements, of ``"softcap"``, ``"alibi"`` and
      ``"sinks"`` (called with ``alibi_slopes=`` and ``sinks=``; see ``attnbench.variants``).
      fp8 dtypes are declared in ``dtypes``: called with ``q_descale=``, ``k_descale=``, ``v_descale=``.
    - ``memory``: ``memory(case) -> int``, the bytes one call needs beyond the
      resident q, k, v, output (and dO and the gradients in backward), forward
      and backward together; the budget pre-check adds it to those. None: a
      fused kernel's statistics and blocks (``fused_workspace_bytes``).
    """

    name: str
    build: Callable[[Case], AttentionFn]
    description: str = ""
    devices: frozenset[str] = frozenset(DEVICES)
    dtypes: frozenset[torch.dtype] = frozenset(FLOAT_DTYPES.values())
    masks: frozenset[str] = frozenset({"none", "causal"})
    gqa: bool = False
    cross: bool = True
    backward: bool = False
    dense: bool = True
    ragged: bool = False
    paged: bool = False
    head_dim_v: bool = False
    score_mods: frozenset[str] = frozenset()
    layout: str = "bhsd"
    out: bool = False
    exact: bool = True
    ranked: bool = True
    params: dict = field(default_factory=dict)
    memory: MemoryModel | None = None
    plugin: str = ""
    version: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.match(self.name):
            raise ValueError(
                f"implementation name {self.name!r} is invalid: use lower-case dotted words, e.g. 'mylib.fast'"
            )
        if not callable(self.build):
            raise ValueError(f"implementation {self.name}: build must be callable, got {type(self.build).__name__}")
        if self.memory is not None and not callable(self.memory):
            raise ValueError(f"implementation {self.name}: memory must be callable or None, got {type(self.memory).__name__}")
        object.__setattr__(self, "devices", _frozen(self.name, "devices", self.devices, DEVICES))
        object.__setattr__(self, "masks", _frozen(self.name, "masks", self.masks, MASKS))
        object.__setattr__(self, "score_mods", _frozen(self.name, "score_mods", self.score_mods, SCORE_MODS))
        dtypes = frozenset(self.dtypes)
        bad = [d for d in dtypes if d not in DTYPES.values()]
        if bad:
            raise ValueError(f"implementation {self.name}: dtypes {bad} are not among {', '.join(DTYPES)}")
        object.__setattr__(self, "dtypes", dtypes)
        if self.layout not in LAYOUTS:
            raise ValueError(f"implementation {self.name}: layout {self.layout!r} is not one of {', '.join(LAYOUTS)}")

    def declines(self, case: Case) -> str | None:
        """Why the declared capabilities rule ``case`` out, or None when they admit it."""
        if case.device not in self.devices:
            return f"device {case.device} not supported (declares {', '.join(sorted(self.devices))})"
        if case.dtype not in self.dtypes:
            names = ", ".join(sorted(dtype_name(d) for d in self.dtypes))
            return f"dtype {case.dtype_name} not supported (declares {names})"
        if case.mask not in self.masks:
            return f"mask {case.mask} not supported (declares {', '.join(sorted(self.masks))})"
        if case.gqa and not self.gqa:
            return "GQA/MQA (heads_kv < heads_q) not supported"
        if case.cross and not self.cross:
            return "seq_q != seq_kv not supported"
        if case.value_dim != case.head_dim and not self.head_dim_v:
            return f"head_dim_v ({case.value_dim}) != head_dim ({case.head_dim}) not supported"
        missing = case.score_mods - self.score_mods
        if missing:
            declared = ", ".join(sorted(self.score_mods)) or "none"
            return f"{', '.join(sorted(missing))} not supported (declares score_mods: {declared})"
        if not case.packed and not self.dense:
            return "dense batch not supported (declares packed batches only)"
        if case.paged and not self.paged:
            return "paged KV cache (page_size) not supported"
        if case.packed and not case.paged and not self.ragged:
            return "ragged (packed) batches not supported"
        if case.needs_backward and not self.backward:
            return "backward not supported"
        return None

    def capabilities(self) -> dict:
        """JSON-ready description of what this implementation declares."""
        return {
            "name": self.name,
            "plugin": self.plugin,
            "version": self.version,
            "description": self.description,
            "devices": sorted(self.devices),
            "dtypes": sorted(dtype_name(d) for d in self.dtypes),
            "masks": sorted(self.masks),
            "gqa": self.gqa,
            "cross": self.cross,
            "backward": self.backward,
            "dense": self.dense,
            "ragged": self.ragged,
            "paged": self.paged,
            "head_dim_v": self.head_dim_v,
            "score_mods": sorted(self.score_mods),
            "layout": self.layout,
            "out": self.out,
            "exact": self.exact,
            "ranked": self.ranked,
            "params": dict(self.params),
        }


def to_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """A ``(batch, heads, seq, head_dim)`` tensor as an implementation of ``layout`` takes it (contiguous)."""
    return t.transpose(1, 2).contiguous() if layout == "bshd" else t


def from_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """An implementation's output (or gradient) in ``layout`` back as ``(batch, heads, seq, head_dim)``."""
    return t.transpose(1, 2) if layout == "bshd" else t


def _frozen(impl: str, what: str, values: Iterable[str], allowed: Iterable[str]) -> frozenset[str]:
    if isinstance(values, str):
        values = [values]
    values = frozenset(values)
    unknown = values - set(allowed)
    if unknown:
        raise ValueError(f"implementation {impl}: {what} {sorted(unknown)} not among {', '.join(allowed)}")
    return values
