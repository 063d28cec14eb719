"""``sdpa`` and its pinned backends: torch's ``scaled_dot_product_attention``.

``sdpa`` lets torch dispatch; ``sdpa.math``, ``sdpa.flash``, ``sdpa.efficient``
and ``sdpa.cudnn`` pin one backend with ``torch.nn.attention.sdpa_kernel``.
A pinned backend that cannot run a case is found out in ``build`` by a small
probe with the case's dtype, heads, head_dim, mask and direction, and reported
as ``Unsupported`` with the reasons torch gives. Masks given as tensors are
built once, in ``build``, never in the timed call.

ALiBi is an additive float mask: its distances and the case's mask are built
in ``build``, and each call multiplies in the slopes it is passed (one
score-sized op per head, what an additive bias costs). A value head dim of
its own goes to the backends that take it (math; on CUDA memory-efficient);
softcapping and sinks have no SDPA form and are not declared.

``sdpa`` runs ragged and paged batches as one call per sequence
(``packing.per_sequence``, pages gathered): torch 2.13's nested jagged
tensors reach SDPA on the CPU only unmasked and without GQA (no causal
mask: "No viable backend"; GQA: nested matmul does not broadcast heads).
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings

import torch
import torch.nn.functional as F
from torch.backends.cuda import SDPAParams, can_use_efficient_attention, can_use_flash_attention
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

from attnbench import variants
from attnbench.case import Case
from attnbench.hookspecs import hookimpl
from attnbench.implementation import Implementation, Unsupported
from attnbench.masks import MASKS, dense_mask
from attnbench.measure.memory import (
    accumulation_itemsize,
    dense_mask_bytes,
    fused_workspace_bytes,
    kv_repeated_elements,
    per_sequence_workspace,
    score_elements,
)
from attnbench.packing import per_sequence

BACKENDS = {
    "math": SDPBackend.MATH,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}
PROBE_SEQ = 64
TRIGGERED = re.compile(r"\s*\(Triggered internally at [^)]*\)\s*$")


def mask_arguments(case: Case, seq_q: int, seq_kv: int, backend: SDPBackend | None = None) -> dict:
    """SDPA keyword arguments expressing the case's mask at the given lengths, for ``backend`` (None: torch's choice).

    SDPA's own ``is_causal`` is top-left aligned, so causal attention with
    ``seq_q != seq_kv`` goes through ``causal_lower_right`` where a kernel takes
    it as is, and is otherwise given as the boolean mask ``causal_lower_right``
    would build on every call (the same call torch then makes), built here once.
    """
    if case.mask == "none":
        return {}
    if case.mask == "causal":
        if seq_q == seq_kv:
            return {"is_causal": True}
        if lower_right_is_native(case, backend, seq_q, seq_kv):
            return {"attn_mask": causal_lower_right(seq_q, seq_kv)}
    return {"attn_mask": dense_mask(case.mask, case.window, seq_q, seq_kv, device=case.device, block=case.block)}


def lower_right_is_native(case: Case, backend: SDPBackend | None, seq_q: int, seq_kv: int) -> bool:
    """Whether ``causal_lower_right`` reaches a kernel without a mask tensor, as torch's ``CausalBias`` decides.

    Only its flash and memory-efficient paths take it natively (CUDA kernels aligned bottom-right);
    otherwise -- the math and cuDNN backends, and any case those kernels cannot run, every CPU case
    included -- it materialises a boolean ``seq_q x seq_kv`` mask on each call. Decided with torch's
    own checks, on small tensors of the case's device, dtype, heads and head_dim, in the backend's pin.
    """
    if backend in (SDPBackend.MATH, SDPBackend.CUDNN_ATTENTION):
        return False
    shape = dict(device=case.device, dtype=case.dtype, requires_grad=case.needs_backward)
    q = torch.empty(1, case.heads_q, min(seq_q, PROBE_SEQ), case.head_dim, **shape)
    k = torch.empty(1, case.heads_kv, min(seq_kv, PROBE_SEQ + 1), case.head_dim, **shape)
    v = torch.empty(1, case.heads_kv, min(seq_kv, PROBE_SEQ + 1), case.value_dim, **shape)
    params = SDPAParams(q, k, v, None, 0.0, False, case.gqa)
    with sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext():
        return bool(can_use_flash_attention(params) or can_use_efficient_attention(params))


def _make_call(case: Case, backend: SDPBackend | None, seq_q: int, seq_kv: int):
    if case.bias == "alibi":
        return _alibi_call(case, backend, seq_q, seq_kv)
    kwargs = mask_arguments(case, seq_q, seq_kv, backend)
    kwargs["scale"] = case.scale
    if case.gqa:
        kwargs["enable_gqa"] = True

    if backend is None:
        def sdpa(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, **kwargs)
        return sdpa

    def pinned(q, k, v):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, **kwargs)
    return pinned


def alibi_terms(case: Case, seq_q: int, seq_kv: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ALiBi's distances ``|pos_q - pos_k|`` (bottom-right aligned) and the case's mask as 0 / -inf, each
    ``(1, 1, seq_q, seq_kv)`` in the case's dtype: what a call's additive bias is made from."""
    rows = torch.arange(seq_q, device=case.device) + (seq_kv - seq_q)
    distance = (rows[:, None] - torch.arange(seq_kv, device=case.device)[None, :]).abs().to(case.dtype)
    hidden = torch.zeros(seq_q, seq_kv, dtype=case.dtype, device=case.device)
    allowed = dense_mask(case.mask, case.window, seq_q, seq_kv, device=case.device, block=case.block)
    if allowed is not None:
        hidden.masked_fill_(~allowed, float("-inf"))
    return hidden[None, None], distance[None, None]


def _alibi_call(case: Case, backend: SDPBackend | None, seq_q: int, seq_kv: int):
    """ALiBi as SDPA's additive float mask, the case's mask folded in.

    The slopes come with each call, so the call makes the ``(1, heads_q, seq_q, seq_kv)`` bias from
    them, one fused ``addcmul`` over the distances and the mask built here: the score-sized pass
    (per head, not per batch) an additive bias costs. The mask is 4-d as the CPU flash kernel asks.
    """
    hidden, distance = alibi_terms(case, seq_q, seq_kv)
    kwargs = {"scale": case.scale, "enable_gqa": case.gqa}
    pin = (lambda: sdpa_kernel([backend])) if backend is not None else contextlib.nullcontext

    def alibi(q, k, v, *, alibi_slopes):
        bias = torch.addcmul(hidden, alibi_slopes.to(hidden.dtype).neg().view(1, -1, 1, 1), distance)
        with pin():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, **kwargs)
    return alibi


def alibi_bias_bytes(case: Case) -> int:
    """ALiBi's terms, held by the call (distances and the mask as 0 / -inf), the bias each call makes
    and a conversion of it to the accumulation dtype; 0 without ALiBi."""
    if case.bias != "alibi":
        return 0
    area = case.seq_q * case.seq_kv
    return 2 * area * case.dtype.itemsize + case.heads_q * area * (case.dtype.itemsize + accumulation_itemsize(case))


def _probe(case: Case, backend: SDPBackend) -> None:
    """Run the backend on a short version of the case; raise Unsupported with torch's reasons."""
    # Keep the case's relation between the lengths (equal, shorter or longer queries).
    if case.seq_q <= case.seq_kv:
        seq_q = min(case.seq_q, PROBE_SEQ)
        seq_kv = seq_q + min(case.seq_kv - case.seq_q, PROBE_SEQ)
    else:
        seq_kv = min(case.seq_kv, PROBE_SEQ)
        seq_q = seq_kv + min(case.seq_q - case.seq_kv, PROBE_SEQ)
    call = _make_call(case, backend, seq_q, seq_kv)
    gen = torch.Generator(device=case.device).manual_seed(0)
    q = torch.randn(1, case.heads_q, seq_q, case.head_dim, device=case.device, dtype=case.dtype, generator=gen)
    k, v = (torch.randn(1, case.heads_kv, seq_kv, dim, device=case.device, dtype=case.dtype, generator=gen)
            for dim in (case.head_dim, case.value_dim))
    keywords = {"alibi_slopes": variants.alibi_slopes(case.heads_q).to(case.device)} if case.bias == "alibi" else {}
    if case.needs_backward:
        for t in (q, k, v):
            t.requires_grad_(True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = call(q, k, v, **keywords)
            if case.needs_backward:
                out.sum().backward()
        except RuntimeError as exc:
            # torch warns "<kernel> not used because:", then the reasons, each with where it was triggered.
            reasons = [TRIGGERED.sub("", str(w.message)).strip() for w in caught
                       if "because" in str(w.message) or TRIGGERED.search(str(w.message))]
            detail = " ".join(dict.fromkeys(r for r in reasons if r)) or str(exc).strip().splitlines()[0]
            raise Unsupported(f"torch {torch.__version__} cannot run this case: {detail}") from None


def _builder(backend_name: str | None):
    backend = BACKENDS[backend_name] if backend_name else None

    def build(case: Case):
        if case.packed:
            return per_sequence(case, build)
        if backend_name in ("efficient", "cudnn") and case.device != "cuda":
            raise Unsupported(f"the {backend_name} backend has no {case.device} kernel")
        if backend is not None and backend is not SDPBackend.MATH:
            _probe(case, backend)
        return _make_call(case, backend, case.seq_q, case.seq_kv)

    return build


def math_workspace_bytes(case: Case) -> int:
    """The math backend: ``eager``'s score tensors, computed in float32 for half-precision inputs.

    torch upcasts half inputs in the math backend (unless
    ``allow_fp16_bf16_reduction_math_sdp``), so scores are float32 there, and
    its safe softmax adds a boolean score-sized tensor. Adds the upcast and
    scaled q, k and v, k and v repeated under GQA, and, when the case is
    masked, a boolean ``Sq x Skv`` mask (built once by ``build``, held by its
    call: causal with ``seq_q != seq_kv`` too) and the additive float version
    torch converts it to on every call.
    """
    acc = accumulation_itemsize(case)
    bwd = case.needs_backward
    total = score_elements(case) * (acc * (3 if bwd else 2) + 1)
    copies = (2 * math.prod(case.q_shape) + 3 * math.prod(case.kv_shape) + 2 * kv_repeated_elements(case)) * acc
    total += copies * (2 if bwd else 1)
    return total + (alibi_bias_bytes(case) if case.bias == "alibi" else dense_mask_bytes(case) * (1 + acc))


def fused_workspace_bytes_with_mask(case: Case) -> int:
    """A fused backend, plus the mask it is given as a tensor.

    A sliding window or block-sparse mask reaches the kernel as a boolean
    ``Sq x Skv`` tensor, built once by ``build`` and held by its call, that
    torch converts to the input dtype on every call (measured on CPU: exactly
    that). A causal mask with ``seq_q != seq_kv`` is counted the same way: it
    is that tensor wherever no kernel takes ``causal_lower_right`` as is (every
    CPU case, cuDNN; see ``lower_right_is_native``). ALiBi replaces that mask by its float terms and
    bias (``alibi_bias_bytes``).
    """
    total = fused_workspace_bytes(case)
    if case.bias == "alibi":
        return total + alibi_bias_bytes(case)
    if case.mask in ("sliding_window", "block_sparse") or (case.mask == "causal" and case.seq_q != case.seq_kv):
        # The memory-efficient kernel pads the key axis of the mask to a multiple of 16.
        padded_kv = -(-case.seq_kv // 16) * 16
        total += case.seq_q * (case.seq_kv + padded_kv * case.dtype.itemsize)
    return total


def dispatched_workspace_bytes(case: Case) -> int:
    """``sdpa`` (torch choosing): a fused backend's, but the math backend's for float32 with GQA on CUDA.

    Not every torch version's memory-efficient kernel takes GQA, and the flash
    kernel takes no float32, so that case is assumed to fall back to math; on the CPU, so is a value
    head dim of its own.
    """
    if case.device == "cuda" and case.dtype == torch.float32 and case.gqa:
        return math_workspace_bytes(case)
    if case.device == "cpu" and case.value_dim != case.head_dim:
        return math_workspace_bytes(case)  # the CPU flash kernel takes one head dim for q, k and v
    return fused_workspace_bytes_with_mask(case)


@hookimpl
def attnbench_implementations() -> list[Implementation]:
    common = dict(masks=frozenset(MASKS), gqa=True, backward=True, head_dim_v=True, score_mods=frozenset({"alibi"}))
    return [
        Implementation(name="sdpa", build=_builder(None), memory=per_sequence_workspace(dispatched_workspace_bytes),
                       description=("torch.nn.functional.scaled_dot_product_attention, torch choosing the backend "
                                    "(ragged and paged batches as per-sequence calls, pages gathered)."),
                       ragged=True, paged=True, **common),
        Implementation(name="sdpa.math", build=_builder("math"), memory=math_workspace_bytes,
                       description="SDPA pinned to the math backend (composite ops, any device).", **common),
        Implementation(name="sdpa.flash", build=_builder("flash"), memory=fused_workspace_bytes_with_mask,
                       description="SDPA pinned to the FlashAttention backend (CUDA kernel; a fused kernel on CPU too).", **common),
        Implementation(name="sdpa.efficient", build=_builder("efficient"), devices=frozenset({"cuda"}),
                       memory=fused_workspace_bytes_with_mask,
                       description="SDPA pinned to the memory-efficient (xformers-derived) backend; CUDA only.", **common),
        Implementation(name="sdpa.cudnn", build=_builder("cudnn"), devices=frozenset({"cuda"}),
                       memory=fused_workspace_bytes_with_mask,
                       description="SDPA pinned to the cuDNN attention backend; CUDA only.", **common),
    ]
