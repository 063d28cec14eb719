"""Correctness: seeded inputs, the float64 reference, error metrics and the pass rule.

The pass rule for exact implementations follows FlashAttention's tests: an
error may be at most ``factor`` times the error of plain attention computed in
the same dtype (matmul, softmax, matmul), plus a small floor. So bfloat16 is
judged as bfloat16, and an implementation that is no worse than the obvious
code passes. Non-finite values never pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from attnbench.case import Case
from attnbench.masks import dense_mask

DEFAULT_FACTOR = 2.0
DEFAULT_REL_FLOOR = {"float32": 1e-5, "float16": 1e-3, "bfloat16": 4e-3}
"""Relative-L2 floors: well above each dtype's rounding, far below any real defect."""
DEFAULT_ABS_FLOOR = {"float32": 1e-5, "float16": 1e-3, "bfloat16": 1e-2}
"""Max-abs error always allowed per dtype: about one unit in the last place at 1.0 for the
16-bit types, so an unusually exact baseline does not fail everyone else."""
CHUNK_ELEMENTS = 2**25
"""Score elements per chunk of the float64 math (256 MiB), so the reference fits in memory at any length."""


@dataclass(frozen=True)
class Inputs:
    """One trial's tensors: q, k, v, and the upstream gradient for backward cases."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    grad_out: torch.Tensor | None = None


@dataclass
class Tolerance:
    """The pass rule's parameters."""

    factor: float = DEFAULT_FACTOR
    rel_floor: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_REL_FLOOR))
    abs_floor: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_ABS_FLOOR))


def make_inputs(case: Case, seed: int) -> Inputs:
    """Standard-normal q, k, v (and dO for backward) from ``seed``: never zeros, fresh for every trial."""
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def draw(shape):
        # Drawn on the CPU so a seed means the same numbers on every device.
        return torch.randn(shape, generator=gen, dtype=torch.float32).to(device=case.device, dtype=case.dtype)

    q, k, v = draw(case.q_shape), draw(case.kv_shape), draw(case.kv_shape)
    grad_out = draw(case.q_shape) if case.needs_backward else None
    return Inputs(q, k, v, grad_out)


def sample_rows(case: Case, max_rows: int | None, seed: int) -> torch.Tensor | None:
    """Query rows to check: all (None) up to ``max_rows``; beyond, a fresh random sample that keeps the first and last."""
    if max_rows is None or case.seq_q <= max_rows:
        return None
    gen = torch.Generator().manual_seed(seed + 7919)
    middle = torch.randperm(case.seq_q - 2, generator=gen)[: max_rows - 2] + 1
    return torch.cat([torch.tensor([0, case.seq_q - 1]), middle]).sort().values


def math_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case, *, dtype: torch.dtype, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Plain attention in ``dtype`` (float64: the reference; the case dtype: the baseline for the pass rule).

    Computed over chunks of query rows so that memory stays bounded; ``rows``
    restricts it to those query rows. Each row's result equals the unchunked one.
    """
    q, k, v = (t.to(dtype) for t in (q, k, v))
    if case.gqa:
        k = k.repeat_interleave(case.group_size, dim=1)
        v = v.repeat_interleave(case.group_size, dim=1)
    allowed = dense_mask(case.mask, case.window, case.seq_q, case.seq_kv, device=q.device, block=case.block)
    row_index = torch.arange(case.seq_q, device=q.device) if rows is None else rows.to(q.device)
    chunk = max(1, CHUNK_ELEMENTS // max(1, case.batch * case.heads_q * case.seq_kv))
    outputs = []
    for start in range(0, len(row_index), chunk):
        idx = row_index[start : start + chunk]
        scores = (q[:, :, idx] * case.softmax_scale) @ k.transpose(-2, -1)
        if allowed is not None:
            scores = scores.masked_fill(~allowed[idx], float("-inf"))
        outputs.append(torch.softmax(scores, dim=-1) @ v)
    return torch.cat(outputs, dim=2)


def math_attention_grads(inputs: Inputs, case: Case, *, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Output and (dQ, dK, dV) of plain attention in ``dtype``, by autograd over row chunks."""
    q, k, v = (t.detach().to(dtype).requires_grad_(True) for t in (inputs.q, inputs.k, inputs.v))
    grad_out = inputs.grad_out.to(dtype)
    chunk = max(1, CHUNK_ELEMENTS // max(1, case.batch * case.heads_q * case.seq_kv))
    outputs = []
    for start in range(0, case.seq_q, chunk):
        rows = torch.arange(start, min(start + chunk, case.seq_q), device=q.device)
        out = math_attention(q, k, v, case, dtype=dtype, rows=rows)
        # Backward per chunk: dK and dV accumulate in .grad, memory stays one chunk's graph.
        out.backward(grad_out[:, :, rows])
        outputs.append(out.detach())
    return torch.cat(outputs, dim=2), q.grad, k.grad, v.grad


def error_metrics(actual: torch.Tensor, expected: torch.Tensor) -> dict:
    """rel-L2 and max-abs error in float64; None for both when ``actual`` holds NaN or Inf."""
    actual = actual.detach().to(torch.float64)
    expected = expected.detach().to(device=actual.device, dtype=torch.float64)
    nonfinite = int((~torch.isfinite(actual)).sum())
    if nonfinite:
        return {"rel_err": None, "max_abs_err": None, "nonfinite": nonfinite}
    diff = actual - expected
    denom = expected.norm().item()
    rel = diff.norm().item() / denom if denom > 0 else math.inf
    return {"rel_err": rel, "max_abs_err": diff.abs().max().item(), "nonfinite": 0}


def judge(errors: dict, baseline: dict, dtype_name: str, tolerance: Tolerance) -> str | None:
    """None when ``errors`` pass against ``baseline`` (the same-dtype plain attention's), else the reason."""
    if errors["nonfinite"]:
        return f"{errors['nonfinite']} NaN/Inf values"
    rel_limit = tolerance.factor * baseline["rel_err"] + tolerance.rel_floor[dtype_name]
    abs_limit = tolerance.factor * baseline["max_abs_err"] + tolerance.abs_floor[dtype_name]
    if errors["rel_err"] > rel_limit:
        return f"rel-L2 error {errors['rel_err']:.3g} > limit {rel_limit:.3g} ({tolerance.factor:g} x plain {dtype_name} {baseline['rel_err']:.3g} + floor)"
    if errors["max_abs_err"] > abs_limit:
        return f"max-abs error {errors['max_abs_err']:.3g} > limit {abs_limit:.3g} ({tolerance.factor:g} x plain {dtype_name} {baseline['max_abs_err']:.3g} + floor)"
    return None


def output_problem(out: object, case: Case, like: torch.Tensor) -> str | None:
    """Why ``out`` is not an acceptable output tensor for the case, or None."""
    if not isinstance(out, torch.Tensor):
        return f"returned {type(out).__name__}, not a tensor"
    if tuple(out.shape) != tuple(like.shape):
        return f"output shape {tuple(out.shape)} != expected {tuple(like.shape)}"
    if out.dtype != like.dtype:
        return f"output dtype {out.dtype} != input dtype {like.dtype}"
    if out.device.type != like.device.type:
        return f"output on {out.device}, inputs on {like.device}"
    return None
