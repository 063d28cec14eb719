"""The FLOP and byte model pinned to hand-computed and closed-form counts."""

import pytest
import torch

from attnbench.case import Case


def test_dense_forward_flops_by_hand():
    # 2 batches x 4 heads x 8 x 16 pairs x 4 x 32 flops per pair.
    assert Case(2, 4, 4, 8, 16, 32).forward_flops() == 2 * 4 * 8 * 16 * 4 * 32


def test_causal_square_counts_lower_triangle():
    assert Case(1, 1, 1, 4, 4, 1, mask="causal").visible_pairs() == 1 + 2 + 3 + 4


def test_causal_cross_is_bottom_right_aligned_not_halved():
    # seq_q=3 rows at key positions 5, 6, 7 of 8 keys: 6 + 7 + 8 = 21 pairs (top-left would be 1 + 2 + 3).
    assert Case(1, 1, 1, 3, 8, 1, mask="causal").visible_pairs() == 21


@pytest.mark.parametrize("seq_q,seq_kv", [(1, 1), (1, 4096), (100, 300), (257, 257), (512, 2048)])
def test_causal_closed_form(seq_q, seq_kv):
    expected = seq_q * (seq_kv - seq_q) + seq_q * (seq_q + 1) // 2
    assert Case(1, 1, 1, seq_q, seq_kv, 1, mask="causal").visible_pairs() == expected


@pytest.mark.parametrize("seq,window", [(10, 3), (1000, 128), (64, 64), (64, 100)])
def test_sliding_window_counted_per_row(seq, window):
    # Row i sees min(window, i + 1) keys.
    expected = sum(min(window, i + 1) for i in range(seq))
    assert Case(1, 1, 1, seq, seq, 1, mask="sliding_window", window=window).visible_pairs() == expected


def test_sliding_window_by_hand():
    # seq 5, window 2: rows see 1, 2, 2, 2, 2 keys.
    assert Case(1, 1, 1, 5, 5, 1, mask="sliding_window", window=2).visible_pairs() == 9


def test_decode_sees_the_whole_cache():
    assert Case(4, 32, 8, 1, 8192, 128, mask="causal").visible_pairs() == 4 * 32 * 8192


def test_gqa_counts_query_heads():
    assert Case(1, 8, 2, 16, 16, 8).visible_pairs() == 8 * 16 * 16


def test_backward_is_two_and_a_half_forward():
    fwd = Case(1, 2, 2, 64, 64, 16, mask="causal")
    bwd = Case(1, 2, 2, 64, 64, 16, mask="causal", pass_="bwd")
    both = Case(1, 2, 2, 64, 64, 16, mask="causal", pass_="fwd+bwd")
    assert bwd.flops() == 2.5 * fwd.flops()
    assert both.flops() == 3.5 * fwd.flops()


def test_io_bytes_reads_qkv_writes_out():
    case = Case(1, 8, 2, 128, 256, 64, dtype=torch.bfloat16)
    q = 8 * 128 * 64 * 2
    kv = 2 * 256 * 64 * 2
    assert case.io_bytes() == 2 * q + 2 * kv


@pytest.mark.parametrize("mask, window", [("none", None), ("causal", None), ("sliding_window", 16)])
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
def test_a_ragged_batch_counts_the_flops_of_its_sequences(mask, window, pass_):
    lengths_q, lengths_kv = (37, 100, 5, 64), (40, 100, 5, 300)
    ragged = Case(4, 8, 2, 100, 300, 64, mask=mask, window=window, pass_=pass_,
                  seqlens_q=lengths_q, seqlens_kv=lengths_kv)
    dense = [Case(1, 8, 2, lq, lkv, 64, mask=mask, window=window, pass_=pass_)
             for lq, lkv in zip(lengths_q, lengths_kv)]
    assert ragged.flops() == sum(c.flops() for c in dense)
    # Padding to the longest sequence would count more: the ragged count is the real work.
    assert ragged.flops() < Case(4, 8, 2, 100, 300, 64, mask=mask, window=window, pass_=pass_).flops()


def test_a_paged_batch_reads_whole_pages_and_its_real_query_tokens():
    case = Case(3, 8, 2, 4, 40, 64, mask="causal", seqlens_q=(4, 1, 1), seqlens_kv=(40, 17, 3), page_size=16,
                dtype=torch.bfloat16)
    pages = 3 + 2 + 1
    q_and_out = 2 * 6 * 8 * 64 * 2
    assert case.num_pages == pages and case.kv_shape == (pages, 16, 2, 64)
    assert case.io_bytes() == q_and_out + 2 * pages * 16 * 2 * 64 * 2
