import pytest
import torch

from attnbench import Case
from attnbench.masks import count_visible_pairs, dense_mask


def test_causal_flops_bottom_right_aligned():
    # seq_q=2, seq_kv=5: rows sit at key positions 3 and 4 -> 4 + 5 visible keys.
    case = Case(1, 1, 1, 2, 5, 8, mask="causal")
    assert case.visible_pairs() == 9
    assert case.forward_flops() == 9 * 4 * 8


def test_count_matches_dense_mask():
    for mask, window in (("causal", None), ("sliding_window", 3), ("none", None)):
        allowed = dense_mask(mask, window, 7, 11)
        expected = 77 if allowed is None else int(allowed.sum())
        assert count_visible_pairs(mask, window, 7, 11) == expected


def test_case_rejects_impossible_shapes():
    with pytest.raises(ValueError, match="multiple"):
        Case(1, 3, 2, 4, 4, 8)
    with pytest.raises(ValueError, match="head_dim"):
        Case(1, 1, 1, 4, 4, 0)
    with pytest.raises(ValueError, match="no key"):
        Case(1, 1, 1, 8, 4, 8, mask="causal")


def test_case_round_trips_through_dict():
    case = Case(2, 8, 2, 16, 32, 64, dtype=torch.bfloat16, mask="sliding_window", window=4, pass_="fwd+bwd")
    data = case.to_dict()
    assert data["dtype"] == "bfloat16" and data["pass"] == "fwd+bwd"
    assert Case.from_dict(data) == case
