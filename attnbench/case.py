"""Case: one attention workload, and the FLOP and byte model that goes with its shape."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from attnbench.masks import MASKS, count_visible_pairs

PASSES = ("fwd", "bwd", "fwd+bwd")
"""What a case times: the forward call, the backward call alone, or both."""

FLOAT_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
"""The floating-point dtypes attention is computed in, and what an implementation declares by default."""

FP8_DTYPES: dict[str, torch.dtype] = {
    "float8_e4m3fn": torch.float8_e4m3fn,
    "float8_e5m2": torch.float8_e5m2,
}
"""fp8 inputs: quantised per (batch, kv head) with descales, attended to in a wider type, output bfloat16."""

DTYPES: dict[str, torch.dtype] = {**FLOAT_DTYPES, **FP8_DTYPES}
"""Dtypes a suite may name, by their torch names."""

FP8_OUTPUT_DTYPE = torch.bfloat16
"""What an fp8 case's output (and its same-dtype baseline) is computed in, as FlashAttention-3 returns it."""

SCORE_MODS = ("softcap", "alibi", "sinks")
"""Changes to the scores a case may ask for (``Case.score_mods``), which an implementation declares."""

BIASES = ("alibi",)
"""Position biases a suite may name."""

BACKWARD_FLOP_FACTOR = 2.5
"""Backward FLOPs per forward FLOP: dV, dP, dS->dQ, dK (4 matmuls) plus the
recomputed QK^T (1) against the forward's 2 matmuls, as FlashAttention counts."""


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Case:
    """One attention workload.

    q is ``(batch, heads_q, seq_q, head_dim)``; k is ``(batch, heads_kv, seq_kv, head_dim)``
    and v ``(batch, heads_kv, seq_kv, head_dim_v)``; the output is q's shape with
    ``head_dim_v`` last (``head_dim_v`` None: equal to ``head_dim``).
    ``heads_q`` a multiple of ``heads_kv`` gives GQA (MQA when ``heads_kv == 1``).
    Masks are bottom-right aligned (see ``attnbench.masks``); ``window`` belongs
    to sliding_window and ``block`` to block_sparse, and is None otherwise.
    ``scale`` None means ``1/sqrt(head_dim)``.

    A *packed* batch (``seqlens_q`` and ``seqlens_kv`` given together, one length
    per sequence) is ragged: ``seq_q``/``seq_kv`` are the longest lengths, q is
    ``(total_q, heads_q, head_dim)`` and k, v ``(total_kv, heads_kv, head_dim)``,
    sequence after sequence, and masks apply within each sequence, bottom-right
    aligned per sequence. ``page_size`` pages the KV cache: k and v are page
    pools ``(num_pages, page_size, heads_kv, head_dim)`` read through a block
    table; a paged case is always packed (its lengths default to the dense
    shape's) and forward only. See ``attnbench.packing`` for the call conventions.

    Variants (see ``attnbench.variants``): ``softcap`` caps the scaled scores,
    ``softcap * tanh(s / softcap)``, before any bias and the mask; ``bias`` "alibi"
    adds ``-slope_h * |pos_q - pos_k|`` (positions bottom-right aligned); ``sinks``
    adds one logit per query head to every row's softmax denominator. fp8 dtypes
    give quantised inputs with per-(batch, kv head) descales and a bfloat16 output;
    they are forward only.
    """

    batch: int
    heads_q: int
    heads_kv: int
    seq_q: int
    seq_kv: int
    head_dim: int
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    mask: str = "none"
    window: int | None = None
    block: int | None = None
    scale: float | None = None
    pass_: str = "fwd"
    seqlens_q: tuple[int, ...] | None = None
    seqlens_kv: tuple[int, ...] | None = None
    page_size: int | None = None
    head_dim_v: int | None = None
    softcap: float | None = None
    bias: str | None = None
    sinks: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.dtype, str):
            object.__setattr__(self, "dtype", _parse_dtype(self.dtype))
        for name in ("batch", "heads_q", "heads_kv", "seq_q", "seq_kv", "head_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.heads_q % self.heads_kv:
            raise ValueError(f"heads_q ({self.heads_q}) must be a multiple of heads_kv ({self.heads_kv})")
        if self.dtype not in DTYPES.values():
            raise ValueError(f"dtype {self.dtype} is not one of {', '.join(DTYPES)}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device {self.device!r} is not one of cpu, cuda")
        if self.mask not in MASKS:
            raise ValueError(f"mask {self.mask!r} is not one of {', '.join(MASKS)}")
        if self.mask == "sliding_window":
            if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
                raise ValueError(f"mask sliding_window needs a positive integer window, got {self.window!r}")
        elif self.window is not None:
            raise ValueError(f"window is only meaningful with mask sliding_window, not {self.mask!r}")
        if self.mask == "block_sparse":
            if isinstance(self.block, bool) or not isinstance(self.block, int) or self.block < 1:
                raise ValueError(f"mask block_sparse needs a positive integer block, got {self.block!r}")
        elif self.block is not None:
            raise ValueError(f"block is only meaningful with mask block_sparse, not {self.mask!r}")
        self._check_packing()
        self._check_variants()
        if self.mask != "none" and self.seq_q > self.seq_kv and not self.packed:
            raise ValueError(
                f"mask {self.mask} with seq_q ({self.seq_q}) > seq_kv ({self.seq_kv}) leaves query rows "
                "that see no key (masks are bottom-right aligned)"
            )
        if self.scale is not None and not (isinstance(self.scale, (int, float)) and math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a positive finite number or null, got {self.scale!r}")
        if self.pass_ not in PASSES:
            raise ValueError(f"pass {self.pass_!r} is not one of {', '.join(PASSES)}")

    def _check_packing(self) -> None:
        if self.page_size is not None:
            if isinstance(self.page_size, bool) or not isinstance(self.page_size, int) or self.page_size < 1:
                raise ValueError(f"page_size must be a positive integer or null, got {self.page_size!r}")
            if self.pass_ != "fwd":
                raise ValueError(f"a paged KV cache is read by a forward (serving) pass only, not pass {self.pass_!r}")
            if self.seqlens_q is None and self.seqlens_kv is None:
                object.__setattr__(self, "seqlens_q", (self.seq_q,) * self.batch)
                object.__setattr__(self, "seqlens_kv", (self.seq_kv,) * self.batch)
        if (self.seqlens_q is None) != (self.seqlens_kv is None):
            raise ValueError("seqlens_q and seqlens_kv go together: give both (equal for self-attention) or neither")
        if self.seqlens_q is None:
            return
        for name, total in (("seqlens_q", self.seq_q), ("seqlens_kv", self.seq_kv)):
            lengths = getattr(self, name)
            if isinstance(lengths, (str, bytes)) or not hasattr(lengths, "__iter__"):
                raise ValueError(f"{name} must be a list of positive integers, got {lengths!r}")
            lengths = tuple(lengths)
            if not lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in lengths):
                raise ValueError(f"{name} must be a non-empty list of positive integers, got {list(lengths)!r}")
            if len(lengths) != self.batch:
                raise ValueError(f"{name} has {len(lengths)} lengths but batch is {self.batch}")
            if max(lengths) != total:
                longest = "seq_q" if name == "seqlens_q" else "seq_kv"
                raise ValueError(f"{longest} ({total}) must be the longest of {name} ({max(lengths)})")
            object.__setattr__(self, name, lengths)
        if self.mask != "none":
            for i, (lq, lkv) in enumerate(zip(self.seqlens_q, self.seqlens_kv)):
                if lq > lkv:
                    raise ValueError(
                        f"mask {self.mask}: sequence {i} has {lq} queries over {lkv} keys, which leaves query rows "
                        "that see no key (masks are bottom-right aligned per sequence)")

    def _check_variants(self) -> None:
        if self.head_dim_v is not None and (isinstance(self.head_dim_v, bool) or not isinstance(self.head_dim_v, int)
                                            or self.head_dim_v < 1):
            raise ValueError(f"head_dim_v must be a positive integer or null, got {self.head_dim_v!r}")
        if self.softcap is not None and (isinstance(self.softcap, bool) or not isinstance(self.softcap, (int, float))
                                         or not math.isfinite(self.softcap) or self.softcap <= 0):
            raise ValueError(f"softcap must be a positive finite number or null, got {self.softcap!r}")
        if self.bias is not None and self.bias not in BIASES:
            raise ValueError(f"bias {self.bias!r} is not one of {', '.join(BIASES)} (or null)")
        if not isinstance(self.sinks, bool):
            raise ValueError(f"sinks must be true or false, got {self.sinks!r}")
        if self.fp8 and self.pass_ != "fwd":
            raise ValueError(f"fp8 inputs ({self.dtype_name}) are forward only, not pass {self.pass_!r}")

    @property
    def value_dim(self) -> int:
        """v's and the output's head dim: ``head_dim_v``, or ``head_dim`` when that is None."""
        return self.head_dim if self.head_dim_v is None else self.head_dim_v

    @property
    def score_mods(self) -> frozenset[str]:
        """The variants of ``SCORE_MODS`` this case's scores go through."""
        return frozenset(name for name, on in (("softcap", self.softcap is not None), ("alibi", self.bias == "alibi"),
                                               ("sinks", self.sinks)) if on)

    @property
    def fp8(self) -> bool:
        """True when q, k and v are fp8 (quantised, with descales)."""
        return self.dtype in FP8_DTYPES.values()

    @property
    def out_dtype(self) -> torch.dtype:
        """The output's dtype: the inputs', bfloat16 for fp8 inputs."""
        return FP8_OUTPUT_DTYPE if self.fp8 else self.dtype

    @property
    def packed(self) -> bool:
        """True for a ragged batch given by per-sequence lengths (every paged case is one)."""
        return self.seqlens_q is not None

    @property
    def paged(self) -> bool:
        """True when the KV cache is a page pool read through a block table."""
        return self.page_size is not None

    @property
    def cross(self) -> bool:
        """True when some sequence has fewer or more queries than keys."""
        if self.packed:
            return any(lq != lkv for lq, lkv in zip(self.seqlens_q, self.seqlens_kv))
        return self.seq_q != self.seq_kv

    @property
    def total_q(self) -> int:
        """Query tokens over the batch (real ones: a packed batch has no padding)."""
        return sum(self.seqlens_q) if self.packed else self.batch * self.seq_q

    @property
    def total_kv(self) -> int:
        """Key/value tokens over the batch, padding of the last pages not counted."""
        return sum(self.seqlens_kv) if self.packed else self.batch * self.seq_kv

    @property
    def pages_per_sequence(self) -> tuple[int, ...]:
        """Pages each sequence's cache takes; () when the cache is not paged."""
        if not self.paged:
            return ()
        return tuple(-(-n // self.page_size) for n in self.seqlens_kv)

    @property
    def num_pages(self) -> int:
        """Pages in the pool: exactly those the batch's caches take; 0 when not paged."""
        return sum(self.pages_per_sequence)

    def sequences(self) -> tuple[Case, ...]:
        """The batch's sequences as dense batch-1 cases (a dense case is its own single entry)."""
        if not self.packed:
            return (self,)
        keep = {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("batch", "seq_q", "seq_kv", "seqlens_q", "seqlens_kv", "page_size")}
        return tuple(Case(batch=1, seq_q=lq, seq_kv=lkv, **keep) for lq, lkv in zip(self.seqlens_q, self.seqlens_kv))

    @property
    def causal(self) -> bool:
        """True for any mask that hides future keys (all but none)."""
        return self.mask != "none"

    @property
    def gqa(self) -> bool:
        """True when several query heads share one key/value head."""
        return self.heads_q != self.heads_kv

    @property
    def group_size(self) -> int:
        """Query heads per key/value head."""
        return self.heads_q // self.heads_kv

    @property
    def softmax_scale(self) -> float:
        """The scale applied to QK^T: ``scale`` or ``1/sqrt(head_dim)``."""
        return float(self.scale) if self.scale is not None else 1.0 / math.sqrt(self.head_dim)

    @property
    def needs_backward(self) -> bool:
        """True when the case runs a backward pass."""
        return self.pass_ != "fwd"

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    @property
    def q_shape(self) -> tuple[int, ...]:
        """q's (and the output's) shape: ``(batch, heads_q, seq_q, head_dim)``; packed ``(total_q, heads_q, head_dim)``."""
        if self.packed:
            return (self.total_q, self.heads_q, self.head_dim)
        return (self.batch, self.heads_q, self.seq_q, self.head_dim)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """The output's (and dO's) shape: q's with ``value_dim`` last."""
        return (*self.q_shape[:-1], self.value_dim)

    @property
    def v_shape(self) -> tuple[int, ...]:
        """v's shape: k's with ``value_dim`` last."""
        return (*self.kv_shape[:-1], self.value_dim)

    @property
    def kv_shape(self) -> tuple[int, ...]:
        """k's and v's shape: dense 4-d, packed ``(total_kv, heads_kv, head_dim)``, paged the page pool."""
        if self.paged:
            return (self.num_pages, self.page_size, self.heads_kv, self.head_dim)
        if self.packed:
            return (self.total_kv, self.heads_kv, self.head_dim)
        return (self.batch, self.heads_kv, self.seq_kv, self.head_dim)

    # --- FLOP and byte model -------------------------------------------------
    def visible_pairs(self) -> int:
        """Unmasked (query, key) pairs over all batches and query heads (of a packed batch: per sequence, summed)."""
        if self.packed:
            return sum(sequence.visible_pairs() for sequence in self.sequences())
        return self.batch * self.heads_q * count_visible_pairs(self.mask, self.window, self.seq_q, self.seq_kv, block=self.block)

    def forward_flops(self) -> int:
        """Useful forward FLOPs: QK^T (2 x head_dim) and PV (2 x head_dim_v) per unmasked pair, as FlashAttention
        counts; softcap, bias and sinks are a few operations per score, not counted."""
        return (2 * self.head_dim + 2 * self.value_dim) * self.visible_pairs()

    def flops(self) -> float:
        """Useful FLOPs of what this case times (forward, backward, or both)."""
        fwd = self.forward_flops()
        return {"fwd": fwd, "bwd": BACKWARD_FLOP_FACTOR * fwd, "fwd+bwd": (1 + BACKWARD_FLOP_FACTOR) * fwd}[self.pass_]

    def io_bytes(self) -> int:
        """Minimum bytes moved to and from memory by an ideal fused kernel.

        Forward reads q, k, v and writes o. Backward reads q, k, v, o, dO and
        writes dQ, dK, dV (the per-row softmax statistics are negligible).
        A packed batch counts its real tokens only; a paged cache the whole
        pages its sequences read (the block table and offsets are negligible).
        """
        elem = self.dtype.itemsize
        q = math.prod(self.q_shape) * elem
        k = math.prod(self.kv_shape) * elem
        v = math.prod(self.v_shape) * elem
        o = math.prod(self.out_shape) * self.out_dtype.itemsize
        fwd = q + k + v + o
        bwd = 2 * (q + k + v + o)  # reads q, k, v, o and dO; writes dq, dk and dv
        return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[self.pass_]

    # --- naming and serialisation -------------------------------------------
    def label(self) -> str:
        """Short human label, e.g. ``B2 H8/2 N512x1024 D64 bfloat16 causal fwd``; a packed batch
        shows its shape instead of B and N (``batch_shape``)."""
        heads = f"H{self.heads_q}" if not self.gqa else f"H{self.heads_q}/{self.heads_kv}"
        seq = f"{self.seq_q}" if self.seq_q == self.seq_kv else f"{self.seq_q}x{self.seq_kv}"
        mask = {"sliding_window": f"window{self.window}", "block_sparse": f"block_sparse{self.block}"}.get(self.mask, self.mask)
        scale = "" if self.scale is None else f" scale{self.scale:g}"
        shape = f"{self.batch_shape()} {heads}" if self.packed else f"B{self.batch} {heads} N{seq}"
        dims = f"D{self.head_dim}" if self.head_dim_v is None else f"D{self.head_dim}/{self.head_dim_v}"
        mods = "".join((f" softcap{self.softcap:g}" if self.softcap is not None else "",
                        f" {self.bias}" if self.bias else "", " sinks" if self.sinks else ""))
        return f"{shape} {dims} {self.dtype_name} {mask}{mods}{scale} {self.pass_}"

    def batch_shape(self) -> str:
        """A packed batch's shape in a few characters.

        Batches of equal query and key lengths that are all different (packed
        documents) read ``ragged 37..4096, 8.2k tok``; any other (repeated
        lengths, queries shorter than their caches) reads as the batch spec
        that builds it, ``2q2k_32q1s1k`` (see docs/suites.md). A paged cache
        adds its page size: `` p16``.
        """
        if not self.packed:
            return f"B{self.batch}"
        groups: list[list] = []
        for pair in zip(self.seqlens_q, self.seqlens_kv):
            if groups and groups[-1][1] == pair:
                groups[-1][0] += 1
            else:
                groups.append([1, pair])
        if self.cross or len(groups) < self.batch:
            text = "_".join(f"{n}q{_tokens(lq)}" + ("" if lq == lkv else f"s{_tokens(lkv)}") for n, (lq, lkv) in groups)
        else:
            text = f"ragged {min(self.seqlens_q)}..{max(self.seqlens_q)}, {_count(self.total_q)} tok"
        return text + (f" p{self.page_size}" if self.paged else "")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields by name; ``pass_`` is written as ``pass``.

        ``block``, the lengths, ``page_size`` and the variants are written only where they are set, so
        every other case keeps the keys (and the journal keys of resumed runs) it had
        before those fields existed.
        """
        out = asdict(self)
        out["dtype"] = self.dtype_name
        out["pass"] = out.pop("pass_")
        if not self.sinks:
            del out["sinks"]
        for name in ("block", "seqlens_q", "seqlens_kv", "page_size", "head_dim_v", "softcap", "bias"):
            if out[name] is None:
                del out[name]
            elif name.startswith("seqlens"):
                out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Case:
        """Inverse of ``to_dict``; unknown keys are an error."""
        data = dict(data)
        if "pass" in data:
            data["pass_"] = data.pop("pass")
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown case field(s): {', '.join(sorted(unknown))}")
        return cls(**data)


def _tokens(n: int) -> str:
    """A length as batch specs write it: 2048 -> ``2k``, 100 -> ``100``."""
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def _count(n: int) -> str:
    """A token count at a glance: 600 -> ``600``, 8192 -> ``8.2k``."""
    return str(n) if n < 1000 else f"{n / 1000:.1f}k"


def _parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype {name!r} is not one of {', '.join(DTYPES)}") from None
