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
"""

from __future__ import annotations

import importlib
import re

import torch

from attnbench import Case, Implementation, Unsupported, hookimpl

MAX_HEAD_DIM = 256
VARIANTS = {
    # name: (module, minimum compute capability, description)
    "flash_attn2": ("flash_attn", (8, 0), "FlashAttention 2: flash_attn.flash_attn_func (Ampere or newer)."),
    "flash_attn3": ("flash_attn_interface", (9, 0), "FlashAttention 3: flash_attn_interface.flash_attn_func (Hopper)."),
}
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
        func = module.flash_attn_func
        kwargs = {"softmax_scale": case.softmax_scale, **mask_arguments(case)}

        def flash_attn(q, k, v):
            out = func(q, k, v, **kwargs)
            # Some FlashAttention 3 releases also return the log-sum-exp.
            return out[0] if isinstance(out, tuple) else out

        return flash_attn

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
            layout="bshd",
        )
        for name, (_, _, description) in VARIANTS.items()
    ]
