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

Variants (``attnbench.variants``):

- ``flash_attn2`` (``score_mods`` softcap and alibi): ``softcap=`` (flash-attn 2.6 and later) and
  ``alibi_slopes=`` (float32 ``(heads,)``, as the call passes it; FlashAttention 2 adds
  ``-slope * |i + seqlen_k - seqlen_q - j|``, attnbench's bottom-right convention) go to
  ``flash_attn_func``, ``flash_attn_varlen_func`` and ``flash_attn_with_kvcache`` alike; ``build`` checks
  that the installed entry point takes them (``takes``) and raises ``Unsupported`` naming the release
  otherwise. No sinks; no value head dim of its own (FlashAttention 2 wants v's head dim equal to q's).
- ``flash_attn3`` (``score_mods`` softcap, ``head_dim_v``, fp8): ``softcap=``; float8_e4m3fn q, k, v with
  ``q_descale=``/``k_descale=``/``v_descale=`` float32 ``(batch, heads_kv)`` as the call passes them
  (hopper/flash_api.cpp: "(b, h_k), not (b, h)"), output bfloat16; a value head dim other than q's where
  hopper/flash_api.cpp allows it (q/k in (128, 192] with v in (96, 128], or q/k <= 64 with v <= 512, on
  Hopper; head dims multiples of 8, of 16 for fp8), else ``Unsupported`` with that constraint. A dense
  variant case is also run once at short lengths in ``build`` so that what a build leaves out (hdims,
  fp8, softcap compiled away) is ``Unsupported`` with the library's message. FlashAttention 3 has no
  float8_e5m2, no ALiBi and no sinks in this interface.

Unverified here: these argument mappings are written from FlashAttention 2's
``flash_attn_interface.py`` and ``csrc/flash_attn/flash_api.cpp`` and checked on the CPU
only as keyword translations; the kernels themselves are judged by the adapter's CUDA
tests (``PACKED_GPU_SHAPES``), which have not run on a GPU with flash-attn installed yet.
``flash_attn3`` takes dense batches only. The variant arguments are written from
``flash_attn/flash_attn_interface.py`` (FlashAttention 2) and ``hopper/flash_attn_interface.py`` and
``hopper/flash_api.cpp`` (FlashAttention 3) and are likewise unrun on a GPU here.
"""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import replace

import torch

from attnbench import Case, Implementation, Unsupported, hookimpl
from attnbench.measure.correctness import make_inputs

MAX_HEAD_DIM = 256
VARIANTS = {
    # name: (module, minimum compute capability, description)
    "flash_attn2": ("flash_attn", (8, 0), "FlashAttention 2: flash_attn.flash_attn_func (Ampere or newer); ragged "
                    "batches through flash_attn_varlen_func, paged caches (pages of a multiple of 256) through "
                    "flash_attn_with_kvcache or flash_attn_varlen_func's block_table."),
    "flash_attn3": ("flash_attn_interface", (9, 0), "FlashAttention 3: flash_attn_interface.flash_attn_func (Hopper)."),
}
SCORE_MODS = {"flash_attn2": frozenset({"softcap", "alibi"}), "flash_attn3": frozenset({"softcap"})}
"""The score variants each takes: FlashAttention 2 softcap (2.6 on) and ALiBi slopes, FlashAttention 3 softcap."""
PAGE_MULTIPLE = 256
"""FlashAttention 2's paged KV cache takes pages of a multiple of this many tokens (flash_api.cpp:
"Paged KV cache block size must be divisible by 256")."""
CALL_VARIANTS = ("alibi_slopes", "q_descale", "k_descale", "v_descale")
"""The call's variant keywords FlashAttention takes under the same names (``attnbench.variants``)."""
PROBE_SEQ = 32
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


def variant_arguments(case: Case, funcs, library: str) -> dict:
    """The build-time keywords of the case's variants (``softcap=``), once every entry point in ``funcs``
    takes them and the call's ``alibi_slopes=`` / descales; Unsupported naming ``library`` otherwise."""
    needed = {"softcap": case.softcap is not None, "alibi_slopes": case.bias == "alibi", "q_descale": case.fp8}
    for func in funcs:
        for argument in (name for name, used in needed.items() if used):
            if not takes(func, argument):
                hint = " (FlashAttention 2 took softcap from 2.6)" if argument == "softcap" else ""
                raise Unsupported(f"{library}: {getattr(func, '__name__', 'its entry point')} takes no "
                                  f"{argument}={hint}")
    return {"softcap": float(case.softcap)} if case.softcap is not None else {}


def call_variants(keywords: dict) -> dict:
    """The call's variant keywords (ALiBi slopes, fp8 descales) that FlashAttention takes as they are."""
    return {name: keywords[name] for name in CALL_VARIANTS if name in keywords}


def value_dim_problem(case: Case, capability: tuple[int, int]) -> str | None:
    """Why FlashAttention 3 cannot take the case's head dims (hopper/flash_api.cpp's checks), or None."""
    d, dv = case.head_dim, case.value_dim
    alignment = 16 if case.fp8 else 8
    if d % alignment or dv % alignment:
        return f"FlashAttention 3 wants head dims that are multiples of {alignment} (head_dim {d}, head_dim_v {dv})"
    if dv == d:
        return None
    if not ((128 < d <= 192 and 96 < dv <= 128) or (d <= 64 and dv <= 512)):
        return ("FlashAttention 3 takes a V head dim other than Q/K's only for Q/K in (128, 192] with V in "
                f"(96, 128], or Q/K <= 64 with V <= 512 (hopper/flash_api.cpp), not {d}/{dv}")
    if capability[0] != 9:
        return "FlashAttention 3 supports a different V head dim on Hopper only (hopper/flash_api.cpp)"
    if dv > 256 and case.fp8:
        return "FlashAttention 3: a V head dim over 256 needs fp16 or bf16 (hopper/flash_api.cpp)"
    return None


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
    def flash_attn(q, k, v, **keywords):
        out = func(q, k, v, **call_variants(keywords), **kwargs)
        # Some FlashAttention 3 releases also return the log-sum-exp.
        return out[0] if isinstance(out, tuple) else out

    return flash_attn


def _packed_call(module, case: Case, kwargs):
    if not case.paged:
        func = module.flash_attn_varlen_func

        def flash_attn_varlen(q, k, v, **keywords):
            return func(q, k, v, **varlen_arguments(keywords), **call_variants(keywords), **kwargs)

        return flash_attn_varlen
    if paged_route(case, module) == "varlen":
        func = module.flash_attn_varlen_func

        def flash_attn_paged_varlen(q, k_cache, v_cache, **keywords):
            return func(q, k_cache, v_cache, **paged_varlen_arguments(keywords, case.seq_kv), **call_variants(keywords),
                        **kwargs)

        return flash_attn_paged_varlen
    func, per_sequence = module.flash_attn_with_kvcache, case.seqlens_q[0]

    def flash_attn_kvcache(q, k_cache, v_cache, **keywords):
        # Every sequence has per_sequence queries: the packed rows are (batch, per_sequence) in order.
        q4 = q.view(case.batch, per_sequence, case.heads_q, case.head_dim)
        out = func(q4, k_cache, v_cache, **kvcache_arguments(keywords), **call_variants(keywords), **kwargs)
        return out.view(case.total_q, case.heads_q, case.head_dim)

    return flash_attn_kvcache


def _entry_points(module, case: Case) -> list:
    """The library functions a case's call goes through."""
    if not case.packed:
        return [module.flash_attn_func]
    if not case.paged:
        return [module.flash_attn_varlen_func]
    return [module.flash_attn_varlen_func if paged_route(case, module) == "varlen" else module.flash_attn_with_kvcache]


def _probe(fn, case: Case, library: str) -> None:
    """Run a dense case once at short lengths so that what this build of the library leaves out is
    Unsupported with its own message, not an error in the timed run."""
    seq_q = min(case.seq_q, PROBE_SEQ)
    # Keep the case's shape: as many more keys than queries (up to PROBE_SEQ), so bottom-right masks stay valid.
    seq_kv = seq_q + min(case.seq_kv - case.seq_q, PROBE_SEQ) if case.seq_kv >= case.seq_q else min(case.seq_kv, PROBE_SEQ)
    small = replace(case, batch=1, seq_q=seq_q, seq_kv=seq_kv, pass_="fwd")
    inputs = make_inputs(small, 0)
    try:
        fn(*(t.transpose(1, 2).contiguous() for t in (inputs.q, inputs.k, inputs.v)), **inputs.keywords)
    except RuntimeError as exc:  # TORCH_CHECK failures: "FlashAttention only supports ..."
        raise Unsupported(f"{library}: " + " ".join(str(exc).split())[:300]) from None


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
        if name == "flash_attn3":
            problem = value_dim_problem(case, torch.cuda.get_device_capability())
            if problem:
                raise Unsupported(problem)
        library = f"{module_name} {version or ''}".strip()
        kwargs = {"softmax_scale": case.softmax_scale, **mask_arguments(case),
                  **variant_arguments(case, _entry_points(module, case), library)}
        if case.packed:
            return _packed_call(module, case, kwargs)
        fn = _dense_call(module.flash_attn_func, kwargs)
        if name == "flash_attn3" and (case.score_mods or case.fp8 or case.value_dim != case.head_dim):
            _probe(fn, case, library)
        return fn

    return build


@hookimpl
def attnbench_implementations() -> list[Implementation]:
    return [
        Implementation(
            name=name,
            build=_builder(name),
            description=description,
            devices=frozenset({"cuda"}),
            dtypes=frozenset({torch.float16, torch.bfloat16, *((torch.float8_e4m3fn,) if name == "flash_attn3" else ())}),
            masks=frozenset({"none", "causal", "sliding_window"}),
            gqa=True,
            backward=True,
            ragged=name == "flash_attn2",
            paged=name == "flash_attn2",
            head_dim_v=name == "flash_attn3",
            score_mods=SCORE_MODS[name],
            layout="bshd",
        )
        for name, (_, _, description) in VARIANTS.items()
    ]
