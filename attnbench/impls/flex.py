"""``flex``: FlexAttention, with its block mask built and the kernel compiled in ``build``."""

from __future__ import annotations

import functools

import torch

from attnbench.case import Case
from attnbench.hookspecs import hookimpl
from attnbench.implementation import Implementation, Unsupported
from attnbench.masks import MASKS, mask_mod


@functools.cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    # One compiled function per process; torch.compile specialises it per shape and mask, and
    # every case is a new mask_mod closure, so each case recompiles. Past dynamo's default limit
    # of 8 recompiles per function it would silently run flex_attention unfused from then on.
    # (The pre-2.7 names, still aliases, keep torch 2.5 and 2.6 working.)
    config = torch._dynamo.config
    config.cache_size_limit = max(config.cache_size_limit, 4096)
    config.accumulated_cache_size_limit = max(config.accumulated_cache_size_limit, 4096)
    return torch.compile(flex_attention, dynamic=False)


def build(case: Case):
    try:
        from torch.nn.attention.flex_attention import create_block_mask
    except ImportError as exc:  # torch < 2.5
        raise Unsupported(f"FlexAttention is not in torch {torch.__version__}: {exc}") from None
    if case.needs_backward and case.device == "cpu":
        # Said up front: torch raises this only after compiling the forward.
        raise Unsupported(f"FlexAttention has no CPU backward (torch {torch.__version__})")
    mod = mask_mod(case.mask, case.window, case.seq_q, case.seq_kv, block=case.block)
    block_mask = None
    if mod is not None:
        block_mask = create_block_mask(mod, None, None, case.seq_q, case.seq_kv, device=case.device)
    flex_attention = _compiled_flex_attention()
    kwargs = {"block_mask": block_mask, "scale": case.scale, "enable_gqa": case.gqa}

    def flex(q, k, v):
        return flex_attention(q, k, v, **kwargs)

    _compile_now(case, flex)
    return flex


def _compile_now(case: Case, fn) -> None:
    """Trigger compilation on inputs of the case's shape, so no timed call pays for it."""
    gen = torch.Generator(device=case.device).manual_seed(0)
    q = torch.randn(case.q_shape, device=case.device, dtype=case.dtype, generator=gen)
    k, v = (torch.randn(case.kv_shape, device=case.device, dtype=case.dtype, generator=gen) for _ in range(2))
    try:
        if case.needs_backward:
            for t in (q, k, v):
                t.requires_grad_(True)
            fn(q, k, v).sum().backward()
        else:
            with torch.no_grad():
                fn(q, k, v)
    except Exception as exc:
        # Dynamo skips a frame whose compiled call raised, from then on: without this reset every
        # later flex case in the process would silently run flex_attention's unfused fallback.
        from torch.nn.attention.flex_attention import flex_attention

        torch._dynamo.reset_code(flex_attention.__code__)
        if isinstance(exc, torch.OutOfMemoryError):
            raise
        # Inductor raises its own error types for lowering failures: report them as the reason.
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Unsupported(f"FlexAttention could not compile this case: {type(exc).__name__}: {first_line}") from exc


@hookimpl
def attnbench_implementations() -> list[Implementation]:
    return [
        Implementation(
            name="flex",
            build=build,
            description="torch FlexAttention (torch.compile'd), masks as block masks that skip empty tiles.",
            masks=frozenset(MASKS),
            gqa=True,
            backward=True,
        )
    ]
