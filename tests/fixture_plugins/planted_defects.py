"""Implementations with planted defects: each must come out `incorrect` (loaded via ATTNBENCH_PLUGIN_MODULES)."""

import torch

from attnbench import Implementation, hookimpl
from attnbench.impls.eager import build as eager_build
from attnbench.masks import dense_mask


def _with_scale(case, scale):
    return eager_build(type(case)(**{**case.__dict__, "scale": scale}))


def wrong_scale(case):
    return _with_scale(case, case.softmax_scale * 1.25)


def leaky_causal(case):
    allowed = dense_mask(case.mask, case.window, case.seq_q, case.seq_kv)
    if allowed is not None:
        # Let every query row see one key beyond its causal horizon.
        allowed = allowed | torch.roll(allowed, shifts=1, dims=1)
    hidden = None if allowed is None else ~allowed

    def leaky(q, k, v):
        k, v = (t.repeat_interleave(case.group_size, dim=1) for t in (k, v))
        scores = (q * case.softmax_scale) @ k.transpose(-2, -1)
        if hidden is not None:
            scores = scores.masked_fill(hidden, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v
    return leaky


def wrong_for_batch(case):
    good = eager_build(case)

    def batch_bug(q, k, v):
        # Uses the first batch's keys for every batch element.
        return good(q, k[:1].expand_as(k), v[:1].expand_as(v))
    return batch_bug


def all_zeros(case):
    return lambda q, k, v: torch.zeros_like(q)


def cached_output(case):
    good = eager_build(case)
    cache = {}

    def cached(q, k, v):
        key = tuple(q.shape)
        if key not in cache:
            cache[key] = good(q, k, v)
        return cache[key]
    return cached


def wrong_shape(case):
    good = eager_build(case)
    return lambda q, k, v: good(q, k, v)[:, :, :-1]


def returns_nan(case):
    good = eager_build(case)

    def nan(q, k, v):
        out = good(q, k, v)
        out[0, 0, 0, 0] = float("nan")
        return out
    return nan


def mutates_input(case):
    good = eager_build(case)

    def mutate(q, k, v):
        out = good(q, k, v)
        q.mul_(1.0)  # a no-op numerically...
        q[0, 0, 0, 0] += 1  # ...and a real write
        return out
    return mutate


def rare_input_bug(case):
    """Right on every input but one: the third correctness seed's (run seed 0), as a data-dependent bug would be."""
    from attnbench.measure.correctness import make_inputs

    good = eager_build(case)
    trigger = make_inputs(case, 2).q

    def rare(q, k, v):
        out = good(q, k, v)
        return out * 1.01 if q.shape == trigger.shape and torch.equal(q, trigger) else out
    return rare


DEFECTS = {
    "defect.wrong_scale": wrong_scale,
    "defect.leaky_causal": leaky_causal,
    "defect.batch_bug": wrong_for_batch,
    "defect.all_zeros": all_zeros,
    "defect.cached": cached_output,
    "defect.wrong_shape": wrong_shape,
    "defect.nan": returns_nan,
    "defect.mutates_input": mutates_input,
    "defect.rare_input": rare_input_bug,
}


@hookimpl
def attnbench_implementations():
    return [Implementation(name=name, build=build, description=f"planted defect: {name}", gqa=True)
            for name, build in DEFECTS.items()]
