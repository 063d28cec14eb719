"""Ragged and paged implementations with planted defects: each must come out `incorrect`
(loaded via ATTNBENCH_PLUGIN_MODULES=planted_packed).

Each is eager attention, right on every dense sequence, wrong only in how it reads a packed batch:
the defects a varlen or paged kernel really has.
"""

from dataclasses import replace

import torch

from attnbench import Implementation, hookimpl
from attnbench.impls.eager import build as eager_build
from attnbench.packing import offsets, per_sequence, unpad


def _dense(case, seq_q, seq_kv):
    """The batch-1 dense case of these lengths, with the packed case's heads, mask and dtype."""
    return replace(case, batch=1, seq_q=seq_q, seq_kv=seq_kv, seqlens_q=None, seqlens_kv=None, page_size=None)


def ignores_cu_seqlens(case):
    """Attends over the whole packed batch as one long sequence: across sequence boundaries, the causal
    mask over the whole batch (bottom-right aligned), as a kernel that drops cu_seqlens does."""
    one = eager_build(_dense(case, case.total_q, case.total_kv))

    def attend(q, k, v, **_keywords):
        return unpad(one(*(t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))))
    return attend


def pool_order_table(case):
    """The table of a kernel that assumes each sequence's pages lie one after another in the pool."""
    pages = case.pages_per_sequence
    table = torch.zeros(case.batch, max(pages), dtype=torch.int32)
    for i, (start, stop) in enumerate(zip(offsets(pages), offsets(pages)[1:])):
        table[i, : stop - start] = torch.arange(start, stop, dtype=torch.int32)
    return table.to(case.device)


def ignores_block_table(case):
    """Reads each sequence's pages contiguously in pool order instead of through block_table."""
    packed, table = per_sequence(case, eager_build), pool_order_table(case)

    def attend(q, k_cache, v_cache, *, block_table, seqlens_kv, cu_seqlens_q, max_seqlen_q):
        return packed(q, k_cache, v_cache, block_table=table)
    return attend


def reads_padding(case):
    """Reads every slot of each sequence's last page, ignoring seqlens_kv: the padding keys are attended too."""
    starts = offsets(case.seqlens_q)
    built = {}
    for lq, pages in zip(case.seqlens_q, case.pages_per_sequence):
        shape = (lq, pages * case.page_size)
        if shape not in built:
            built[shape] = eager_build(_dense(case, *shape))

    def attend(q, k_cache, v_cache, *, block_table, seqlens_kv, cu_seqlens_q, max_seqlen_q):
        outs = []
        for i, pages in enumerate(case.pages_per_sequence):
            lq, rows = case.seqlens_q[i], block_table[i, :pages].long()
            ki, vi = (t[rows].reshape(-1, case.heads_kv, case.head_dim) for t in (k_cache, v_cache))
            qi = q[starts[i]:starts[i + 1]]
            outs.append(unpad(built[(lq, ki.shape[0])](*(t.transpose(0, 1).unsqueeze(0) for t in (qi, ki, vi)))))
        return torch.cat(outs)
    return attend


MASKS = frozenset({"none", "causal"})


@hookimpl
def attnbench_implementations():
    return [
        Implementation(name="planted.ignores_cu_seqlens", build=ignores_cu_seqlens, ragged=True, gqa=True, masks=MASKS,
                       backward=True, description="planted defect: attends across the packed batch's sequences"),
        Implementation(name="planted.ignores_block_table", build=ignores_block_table, paged=True, gqa=True, masks=MASKS,
                       description="planted defect: reads pages in pool order, not through block_table"),
        Implementation(name="planted.reads_padding", build=reads_padding, paged=True, gqa=True, masks=MASKS,
                       description="planted defect: attends the unused slots of each sequence's last page"),
    ]
