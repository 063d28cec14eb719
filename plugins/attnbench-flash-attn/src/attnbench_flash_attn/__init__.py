"""attnbench adapter for FlashAttention: ``flash_attn2`` and ``flash_attn3``.

- ``flash_attn2``: ``flash_attn.flash_attn_func`` (FlashAttention 2, Ampere and newer).
- ``flash_attn3``: ``flash_attn_interface.flash_attn_func`` (FlashAttention 3, Hopper).

Both take ``(batch, seq, heads, head_dim)`` (``layout="bshd"``), float16 or
bfloat16 on CUDA, and key/value heads dividing the query heads (GQA and MQA
natively, query head ``h`` on key/value head ``h // group`` as attnbench
does). ``causal=True`` is bottom-right aligned from FlashAttention 2.1 on,
as attnbench's masks are; a sliding window of ``W`` keys is
``window_size=(W - 1, 0)`` (FlashAttention 2.3 and later). Each raises
``Unsupported`` with the reason when its library does not import, the device
is not CUDA or too old, or the case is beyond the kernel (head_dim > 256).

``flash_attn2`` also takes packed batches (``attnbench.packing``):

- ragged: ``flash_attn.flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k,
  max_seqlen_q, max_seqlen_k, softmax_scale=, causal=, window_size=)`` on the packed
  ``(total, heads, head_dim)`` tensors, forward and backward, GQA natively; attnbench's
  ``cu_seqlens_kv``/``max_seqlen_kv`` are its ``cu_seqlens_k``/``max_seqlen_k``.
- paged: when every sequence has as many queries, ``flash_attn_with_kvcache`` on q
  viewed as ``(batch, seqlen_q, heads, head_dim)`` with the page pools as
  ``k_cache``/``v_cache``, ``block_table`` and ``cache_seqlens=seqlens_kv`` (causal
  bottom-right against each cache length); otherwise (a mixed prefill and decode batch)
  ``flash_attn_varlen_func`` with ``block_table=`` and ``cu_seqlens_k`` made from
  ``seqlens_kv`` in the call, where the installed release takes ``block_table`` there.
  FlashAttention 2 reads a paged cache only in pages of a multiple of 256 tokens
  (flash_api.cpp checks ``page_block_size % 256 == 0`` in both ``mha_fwd_kvcache`` and
  ``mha_varlen_fwd``), so page sizes such as 16 or 64 are ``Unsupported`` with that reason.

Unverified here: these argument mappings are written from FlashAttention 2's
``flash_attn_interface.py`` and ``csrc/flash_attn/flash_api.cpp`` and checked on the CPU
only as keyword translations; the kernels themselves are judged by the adapter's CUDA
tests (``PACKED_GPU_SHAPES``), which have not run on a GPU with flash-attn installed yet.
``flash_attn3`` takes dense batches only.
"""

from __future__ import annotations

import importlib
import inspect
import re

import torch

from attnbench import Case, Implementation, Unsupported, hookimpl

MAX_HEAD_DIM = 256
VARIANTS = {
    # name: (module, minimum compute capability, description)
    "flash_attn2": ("flash_attn", (8, 0), "FlashAttention 2: flash_attn.flash_attn_func (Ampere or newer); ragged "
                    "batches through flash_attn_varlen_func, paged caches (pages of a multiple of 256) through "
                    "flash_attn_with_kvcache or flash_attn_varlen_func's block_table."),
    "flash_attn3": ("flash_attn_interface", (9, 0), "FlashAttention 3: flash_attn_interface.flash_attn_func (Hopper)."),
}
PAGE_MULTIPLE = 256
"""FlashAttention 2's paged KV cache takes pages of a multiple of this many tokens (flash_api.cpp:
"Paged KV cache block size must be divisible by 256")."""
FIRST_VERSION = {"causal": (2, 1), "sliding_window": (2, 3)}
"""FlashAttention 2 releases that first did the mask as attnbench means it: causal bottom-right
aligned (2.0 aligned it top-left), sliding windows (window_size)."""


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


def _library(module_name: str, case: Case):
    """The imported module, once the device can run it; Unsupported with the reason otherwise."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise Unsupported(f"{module_name} is not importable: {exc}") from None
    if case.device != "cuda" or not torch.cuda.is_available():
        raise Unsupported(f"{module_name} runs on CUDA only")
    return module


def _check_gpu(name: str, minimum: tuple[int, int]) -> None:
    capability = torch.cuda.get_device_capability()
    if capability < minimum:
        raise Unsupported(f"{name} needs compute capability {minimum[0]}.{minimum[1]} or newer, this GPU has "
                          f"{capability[0]}.{capability[1]}")


def mask_arguments(case: Case) -> dict:
    """flash_attn_func's causal and window_size for the case's mask."""
    window = (case.window - 1, 0) if case.mask == "sliding_window" else (-1, -1)
    return {"causal": case.mask != "none", "window_size": window}


def varlen_arguments(keywords: dict) -> dict:
    """flash_attn_varlen_func's length arguments for a ragged call's keywords (``attnbench.packing``)."""
    return {"cu_seqlens_q": keywords["cu_seqlens_q"], "cu_seqlens_k": keywords["cu_seqlens_kv"],
            "max_seqlen_q": keywords["max_seqlen_q"], "max_seqlen_k": keywords["max_seqlen_kv"]}


def paged_varlen_arguments(keywords: dict, max_seqlen_k: int) -> dict:
    """flash_attn_varlen_func's arguments for a paged call's keywords: the cumulative key offsets it
    wants made from ``seqlens_kv``, the table passed on."""
    seqlens = keywords["seqlens_kv"]
    cu_seqlens_k = torch.nn.functional.pad(torch.cumsum(seqlens, 0, dtype=torch.int32), (1, 0))
    return {"cu_seqlens_q": keywords["cu_seqlens_q"], "cu_seqlens_k": cu_seqlens_k,
            "max_seqlen_q": keywords["max_seqlen_q"], "max_seqlen_k": max_seqlen_k,
            "block_table": keywords["block_table"]}


def kvcache_arguments(keywords: dict) -> dict:
    """flash_attn_with_kvcache's paging arguments for a paged call's keywords."""
    return {"cache_seqlens": keywords["seqlens_kv"], "block_table": keywords["block_table"]}


def takes(func, argument: str) -> bool:
    """Whether ``func`` (a release's Python entry point) has a parameter ``argument``."""
    try:
        return argument in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def paged_route(case: Case, module) -> str:
    """Which entry point reads the case's paged cache: ``"kvcache"`` (every sequence has as many
    queries) or ``"varlen"``; raises Unsupported with the library's constraint otherwise."""
    if case.page_size % PAGE_MULTIPLE:
        raise Unsupported(f"FlashAttention 2 reads a paged KV cache only in pages of a multiple of {PAGE_MULTIPLE} "
                          f"tokens (flash_api.cpp: page_block_size % {PAGE_MULTIPLE} == 0), not page_size "
                          f"{case.page_size}")
    if len(set(case.seqlens_q)) == 1 and takes(module.flash_attn_with_kvcache, "block_table"):
        return "kvcache"
    if takes(module.flash_attn_varlen_func, "block_table"):
        return "varlen"
    version = getattr(module, "__version__", "?")
    raise Unsupported(f"flash_attn {version}: flash_attn_varlen_func takes no block_table, and "
                      "flash_attn_with_kvcache needs as many queries in every sequence "
                      f"(this batch has {min(case.seqlens_q)}..{max(case.seqlens_q)})")


def _dense_call(func, kwargs):
    def flash_attn(q, k, v):
        out = func(q, k, v, **kwargs)
        # Some FlashAttention 3 releases also return the log-sum-exp.
        return out[0] if isinstance(out, tuple) else out

    return flash_attn


def _packed_call(module, case: Case, kwargs):
    if not case.paged:
        func = module.flash_attn_varlen_func

        def flash_attn_varlen(q, k, v, **keywords):
            return func(q, k, v, **varlen_arguments(keywords), **kwargs)

        return flash_attn_varlen
    if paged_route(case, module) == "varlen":
        func = module.flash_attn_varlen_func

        def flash_attn_paged_varlen(q, k_cache, v_cache, **keywords):
            return func(q, k_cache, v_cache, **paged_varlen_arguments(keywords, case.seq_kv), **kwargs)

        return flash_attn_paged_varlen
    func, per_sequence = module.flash_attn_with_kvcache, case.seqlens_q[0]

    def flash_attn_kvcache(q, k_cache, v_cache, **keywords):
        # Every sequence has per_sequence queries: the packed rows are (batch, per_sequence) in order.
        q4 = q.view(case.batch, per_sequence, case.heads_q, case.head_dim)
        out = func(q4, k_cache, v_cache, **kvcache_arguments(keywords), **kwargs)
        return out.view(case.total_q, case.heads_q, case.head_dim)

    return flash_attn_kvcache


def _builder(name: str):
    module_name, minimum, _ = VARIANTS[name]

    def build(case: Case):
        module = _library(module_name, case)
        _check_gpu(name, minimum)
        if case.head_dim > MAX_HEAD_DIM:
            raise Unsupported(f"head_dim {case.head_dim} > {MAX_HEAD_DIM}")
        version = getattr(module, "__version__", None)
        needed = FIRST_VERSION.get(case.mask)
        if name == "flash_attn2" and needed and version and _version(version) < needed:
            raise Unsupported(f"flash_attn {version} predates {needed[0]}.{needed[1]}, the first to do mask "
                              f"{case.mask} as attnbench means it")
        kwargs = {"softmax_scale": case.softmax_scale, **mask_arguments(case)}
        if case.packed:
            return _packed_call(module, case, kwargs)
        return _dense_call(module.flash_attn_func, kwargs)

    return build


@hookimpl
def attnbench_implementations() -> list[Implementation]:
    return [
        Implementation(
            name=name,
            build=_builder(name),
            description=description,
            devices=frozenset({"cuda"}),
            dtypes=frozenset({torch.float16, torch.bfloat16}),
            masks=frozenset({"none", "causal", "sliding_window"}),
            gqa=True,
            backward=True,
            ragged=name == "flash_attn2",
            paged=name == "flash_attn2",
            layout="bshd",
        )
        for name, (_, _, description) in VARIANTS.items()
    ]
