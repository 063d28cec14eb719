"""Peak memory of one call above its inputs, measured or predicted.

Measured:

- ``peak_bytes_cpu(fn)``: exact, from the allocator events the PyTorch
  profiler records with ``profile_memory=True``.
- ``peak_bytes_cuda(fn)``: from the CUDA caching allocator's statistics.
- ``vm_hwm_bytes_during(fn)``: the OS high-water mark, a coarse cross-check.

Predicted, before running: ``predict_peak_bytes(case, impl)`` (the call,
``call_peak_bytes``, and what the worker holds for the correctness references,
``reference_bytes``) against ``budget_bytes(...)`` lets a runner skip a case
that would not fit instead of being killed by the OS or running out of device memory.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch.profiler import ProfilerActivity, profile

from attnbench.case import Case
from attnbench.hardware import available_memory_bytes
from attnbench.implementation import Implementation, MemoryModel
from attnbench.measure.correctness import chunking
from attnbench.options import Correctness

# --- measurement -----------------------------------------------------------


def peak_bytes_cpu(fn: Callable[[], object]) -> int:
    """Peak CPU bytes allocated by one call of ``fn`` above the level at its start.

    Tensors allocated before the call (the inputs) are not counted; tensors
    ``fn`` returns are, as they are alive at its end. The figure is exact
    allocator bytes (c10's CPU allocator, which every torch CPU tensor goes
    through), not OS pages. One-time allocations (oneDNN caches, lazy
    initialisation) count too: call ``fn`` once before measuring.
    Allocations by other Python threads meanwhile are not counted.
    Cannot be used while another torch profiler is active.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False) as prof:
        result = fn()
    del result
    results = getattr(prof.profiler, "kineto_results", None)
    if results is None:
        raise RuntimeError(f"torch {torch.__version__}: the profiler exposes no kineto results to read memory events from")
    # Each "[memory]" event is one allocation (+bytes) or free (-bytes). The per-op
    # cpu_memory_usage totals cancel out (allocs and frees within an op); the
    # running sum over the time-ordered events does not, and its maximum is the peak.
    # Allocations sort before frees at equal timestamps, so ties never hide a peak.
    deltas = sorted(
        (event.start_ns(), -event.nbytes(), event.nbytes())
        for event in results.events()
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
    )
    live = peak = 0
    for _, _, nbytes in deltas:
        live += nbytes
        peak = max(peak, live)
    return peak


def vm_hwm_bytes_during(fn: Callable[[], object]) -> int | None:
    """Growth of the process's resident-set high-water mark (VmHWM) during ``fn``; None off Linux.

    A coarse cross-check of ``peak_bytes_cpu``: it counts pages the process
    touched, so memory the allocator kept from earlier calls is not seen
    again, untouched allocations are not seen at all, anything else in the
    process (other threads, Python objects) is, and sizes are page-granular.
    """
    if sys.platform != "linux":
        return None
    try:
        # Writing "5" resets VmHWM to the current RSS (proc(5), clear_refs).
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        start = _proc_status_bytes("VmRSS")
    except OSError:
        return None
    result = fn()
    peak = _proc_status_bytes("VmHWM")
    del result
    return peak - start


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise OSError(f"/proc/self/status has no {field}")


def peak_bytes_cuda(fn: Callable[[], object], device: torch.device | str | int | None = None) -> int:
    """Peak CUDA bytes allocated by one call of ``fn`` above the level at its start.

    Reads the caching allocator's ``max_memory_allocated``, which counts
    tensors (rounded to the allocator's 512-byte blocks), not memory it
    reserved from the driver, nor workspaces libraries allocate themselves.
    Returned tensors count. One-time allocations (cuBLAS workspaces) count
    too: call ``fn`` once before measuring. Resets the device's peak statistics.
    """
    torch.cuda.synchronize(device)
    baseline = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = fn()
    # Kernels are asynchronous, but allocation happens at launch: synchronising
    # makes sure every launch (and free) of fn has happened before the read.
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del result
    return peak - baseline


def eager_analytic_peak_bytes(case: Case) -> int:
    """What ``eager``'s forward must hold at its peak, in the case dtype.

    Scores and probabilities (two ``B x Hq x Sq x Skv`` tensors) plus the
    output being written, and under GQA the key and value repeated to the
    query heads. The mask is built outside the call. Forward only: the
    figure ``peak_bytes_cpu`` should read for a no-grad call.
    """
    if case.needs_backward:
        raise ValueError(f"the analytic eager peak is for the forward pass, not {case.pass_}")
    elem = case.dtype.itemsize
    total = 2 * score_elements(case) * elem + math.prod(case.q_shape) * elem
    if case.gqa:
        total += 2 * case.batch * case.heads_q * case.seq_kv * case.head_dim * elem
    return total


# --- prediction --------------------------------------------------------------
#
# call_peak_bytes = resident_bytes (what the call and its caller hold whatever
# the algorithm) + the implementation's own workspace model (``Implementation.memory``),
# else a fused kernel's; predict_peak_bytes adds the harness's share (below). The helpers below are what those models are built from;
# the built-ins' models live next to their kernels (attnbench.impls.*). Each is
# calibrated against peak_bytes_cpu on torch 2.13 and rounded up: the point is to
# never under-predict a case that would not fit, while staying within a small
# factor of the truth so that cases that do fit are not skipped.

# The CPU flash kernel's per-thread blocks (aten/native/cpu/FlashAttentionKernel.cpp
# splits queries by up to 256 rows and keys by up to 512 columns).
CPU_FLASH_Q_SPLIT = 256
CPU_FLASH_KV_SPLIT = 512


def resident_bytes(case: Case) -> int:
    """q, k, v and the output; with backward also dO, dq, dk and dv."""
    elem = case.dtype.itemsize
    inputs = (math.prod(case.q_shape) + math.prod(case.kv_shape) + math.prod(case.v_shape)) * elem
    total = inputs + math.prod(case.out_shape) * case.out_dtype.itemsize
    if case.needs_backward:
        total *= 2
    return total


def score_elements(case: Case) -> int:
    """Elements of one ``B x Hq x Sq x Skv`` score tensor."""
    return case.batch * case.heads_q * case.seq_q * case.seq_kv


def dense_mask_bytes(case: Case) -> int:
    """A boolean ``Sq x Skv`` mask, as the materialising implementations build one; 0 without a mask."""
    return 0 if case.mask == "none" else case.seq_q * case.seq_kv


def kv_repeated_elements(case: Case) -> int:
    """Elements of k (or v) repeated to the query heads; 0 without GQA, where nothing is repeated."""
    return case.batch * case.heads_q * case.seq_kv * case.head_dim if case.gqa else 0


def accumulation_itemsize(case: Case) -> int:
    """Bytes an element of the accumulation dtype takes: float32 for half-precision inputs, else the input's."""
    return max(case.dtype.itemsize, 4)


def fused_workspace_bytes(case: Case) -> int:
    """A fused kernel (FlashAttention-style): per-row softmax statistics and block buffers, never the scores.

    The model of any implementation that declares none. Statistics: float32
    max/sum (log-sum-exp) per query row, twice for backward (the delta term).
    Backward also gets a float32 dq accumulator and, on CUDA under GQA, dk/dv
    expanded to the query heads before they are summed (FlashAttention-2 does
    so; counted as float32). On CPU each thread holds a query-split x key-split
    block (float32, and a half-precision copy) and a query-split x head_dim
    accumulator, twice that in backward (measured on torch 2.13: 0.56 MiB a
    thread forward at head_dim 64, float32).
    """
    rows = case.batch * case.heads_q * case.seq_q
    bwd = case.needs_backward
    total = rows * 4 * (2 if bwd else 1)
    if bwd:
        total += rows * case.head_dim * 4
        if case.gqa and case.device == "cuda":
            total += 2 * case.batch * case.heads_q * case.seq_kv * case.head_dim * 4
    if case.device == "cpu":
        q_split = min(CPU_FLASH_Q_SPLIT, case.seq_q)
        kv_split = min(CPU_FLASH_KV_SPLIT, case.seq_kv)
        per_thread = q_split * kv_split * (4 + 2) + 2 * q_split * case.value_dim * 4 + 4 * q_split * 4
        total += torch.get_num_threads() * per_thread * (2 if bwd else 1)
    return total


def materialized_workspace_bytes(case: Case, itemsize: int) -> int:
    """Attention written out (matmul, softmax, matmul under autograd) with ``itemsize``-byte scores.

    Two score-sized tensors at once forward (scores and weights), three in
    backward (the saved weights and their gradients); copies of q, k, v and
    the output in that precision (and their gradients), k and v repeated
    under GQA in the input dtype, and the boolean mask and its negation.
    Measured on torch 2.13 for float32 arithmetic: 1.1x to 2x the peak.
    """
    bwd = case.needs_backward
    scores = score_elements(case) * itemsize * (3 if bwd else 2)
    kv = max(kv_repeated_elements(case), math.prod(case.kv_shape))
    copies = (2 * math.prod(case.q_shape) + 2 * kv) * itemsize + 2 * kv_repeated_elements(case) * case.dtype.itemsize
    return scores + copies * (2 if bwd else 1) + 2 * dense_mask_bytes(case)


def per_sequence_workspace(dense_model: MemoryModel) -> MemoryModel:
    """The memory model of an implementation that runs a dense kernel of ``dense_model`` a sequence at a
    time (``packing.per_sequence``) on packed cases, and the dense kernel itself on dense ones.

    Packed: the largest sequence's workspace beside its own q, k, v and output (slices are views, but
    gathered pages, a kernel's contiguous copies and each output are not), plus the outputs of all
    sequences, held until they are concatenated into the resident output.
    """
    def model(case: Case) -> int:
        if not case.packed:
            return dense_model(case)
        largest = max(dense_model(sequence) + resident_bytes(sequence) for sequence in case.sequences())
        return largest + math.prod(case.q_shape) * case.dtype.itemsize * (2 if case.needs_backward else 1)
    model.__doc__ = dense_model.__doc__
    return model


# --- the harness's share ------------------------------------------------------
#
# While implementations of a case run, the worker keeps each correctness seed's
# trial (measurement._References: inputs, float64 expected, same-dtype baseline),
# computes those references with the chunked math of measure.correctness, and
# times calls rotating over copies of several input sets. These models count that,
# calibrated like the ones above.

TIMING_INPUT_SETS = 2
"""Input sets timed calls rotate over at least: ``measurement.MIN_INPUT_SETS`` (which imports this module)."""
_MASK_TILE_BUILD = {"none": 0, "causal": 2, "sliding_window": 3, "block_sparse": 34}
"""Bytes per element of one mask tile while ``masks.mask_tile`` builds it: booleans, and for block_sparse
the int64 block distances (measured: 2, 3 and 33)."""
_SLACK_BYTES = 2**20


def reference_peak_bytes(case: Case, dtype: torch.dtype, max_rows: int | None = Correctness.max_rows) -> int:
    """Peak bytes of computing plain attention on ``case`` in ``dtype`` as ``measure.correctness`` does
    (``math_attention`` on the checked rows, or ``math_attention_grads``), its result included, its inputs not.

    Follows ``correctness.chunking``: the result (gradients of k and v in at least float32 until the
    end), and per chunk its scores and softmax weights (four score-sized tensors in backward: weights,
    their gradient, dS and its masked copy), its query rows, the copies of k and v it converts (and, for
    gradients under GQA, repeats to its query heads, with their gradients), and the mask tile of its rows.
    """
    elem = dtype.itemsize
    bwd = case.needs_backward
    rows = case.seq_q if bwd or max_rows is None else min(case.seq_q, max_rows)
    plan = chunking(case, rows, dtype, repeat=bwd and case.gqa)
    per_head = case.seq_kv * case.head_dim
    heads = plan.kv_heads * plan.group
    scores = heads * plan.rows * case.seq_kv
    q_rows = heads * plan.rows * case.head_dim
    converted = 2 * plan.kv_heads * per_head if dtype != case.dtype else 0
    tile = plan.rows * case.seq_kv
    if bwd:
        # out and dq in dtype; dk and dv accumulate in at least float32, converted one after the other at the end.
        kv = math.prod(case.kv_shape)
        held = 2 * math.prod(case.q_shape) + 2 * kv * max(elem, 4) // elem
        repeated = 2 * heads * per_head if case.gqa else 0
        chunk = converted + 2 * repeated + 2 * plan.kv_heads * per_head + 4 * scores + 4 * q_rows
        chunk = max(chunk, kv if elem < 4 else 0)
    else:
        held = case.batch * case.heads_q * rows * case.head_dim
        chunk = converted + 2 * scores + 4 * q_rows
    if elem == 2 and case.device == "cpu":
        # oneDNN's 16-bit matmul packs its right-hand side: up to 1.4x one head's k (measured on torch 2.13).
        chunk += 3 * per_head // 2
    mask = case.mask != "none"
    # The tile's position aranges are int64; small buffers (16-bit softmax rows, indices) get the slack.
    build = tile * _MASK_TILE_BUILD[case.mask] + 8 * (plan.rows + case.seq_kv) * mask
    return held * elem + max(build, chunk * elem + tile * mask) + _SLACK_BYTES


class ReferenceBytes(NamedTuple):
    """The harness's memory for one case in one worker process (see ``reference_bytes``)."""

    cached: int
    """Held from the first reference to the last implementation: each seed's inputs, expected and baseline."""
    computing: int
    """Peak above ``cached`` of computing one seed's references, or of checking a result against them."""
    timing: int
    """Held while timing beyond the one input set and output ``resident_bytes`` counts."""
    timing_inputs: int
    """The copies of the inputs timing rotates over, all of its sets together."""


def reference_bytes(case: Case, seeds: int = Correctness.seeds, max_rows: int | None = Correctness.max_rows
                    ) -> ReferenceBytes:
    """What a worker holds for the correctness references of ``case`` with ``seeds`` seeds, and its peaks
    (packed cases: summed and maxed over their sequences; see ``_dense_reference_bytes``)."""
    if case.packed:
        return _packed_reference_bytes(case, seeds, max_rows)
    return _dense_reference_bytes(case, seeds, max_rows)


def _packed_reference_bytes(case: Case, seeds: int, max_rows: int | None) -> ReferenceBytes:
    """A packed case's references are computed a sequence at a time: what is held adds up over the
    sequences, the peak of computing is the largest sequence's, beside its gathered (or sliced) q, k, v."""
    parts = [_dense_reference_bytes(sequence, seeds, None) for sequence in case.sequences()]
    largest = max(resident_bytes(sequence) + part.computing for sequence, part in zip(case.sequences(), parts))
    # A paged pool holds the unused slots of the last pages too: the dense parts count only real tokens.
    padding = (math.prod(case.kv_shape) - case.total_kv * case.heads_kv * case.head_dim) * case.dtype.itemsize
    # Each part's timing counts its own slack for small buffers: the case needs it once.
    timing = sum(p.timing for p in parts) - (len(parts) - 1) * _SLACK_BYTES
    return ReferenceBytes(sum(p.cached for p in parts) + 2 * padding * max(1, seeds), largest, timing,
                          sum(p.timing_inputs for p in parts) + 2 * padding)


def _dense_reference_bytes(case: Case, seeds: int, max_rows: int | None) -> ReferenceBytes:
    """What a worker holds for the correctness references of a dense ``case`` with ``seeds`` seeds, and its peaks.

    ``cached``: per seed (a process checks at most all of them) a trial: q, k, v (and dO) in the case
    dtype, the float64 expected output on the checked rows (and gradients), and the same-dtype baseline;
    with fewer trials than ``TIMING_INPUT_SETS``, the twins with v negated that make up the difference.
    ``computing``: the larger of ``reference_peak_bytes`` in float64 and in the case dtype, and of
    checking: a result and its copy of the inputs, and float64 copies of the largest checked tensor
    (its conversion, the difference and its absolute value). ``timing``: the further input sets
    timed calls rotate over, each a copy of the inputs with its last outputs kept, and the outputs of
    the call in progress beside those of the previous call on its set. Not counted: what an
    implementation's ``build`` keeps while the references are computed, and in a backward-only case
    the forward graph each input set keeps.
    """
    elem = case.dtype.itemsize
    bwd = case.needs_backward
    q, kv = math.prod(case.q_shape), math.prod(case.kv_shape)
    rows = case.seq_q if bwd or max_rows is None else min(case.seq_q, max_rows)
    checked = (2 * q + 2 * kv) if bwd else case.batch * case.heads_q * rows * case.head_dim
    inputs = (2 * q + 2 * kv) if bwd else q + 2 * kv
    trial = inputs * elem + checked * (8 + elem)
    # The twin shares q and k (and dq, dk): v, its output (and dO, dv) are negated copies.
    negated = (q + kv) if bwd else kv
    twin = negated * elem + (q + kv if bwd else checked) * (8 + elem)
    trials = max(1, seeds)
    cached = trials * trial + max(0, TIMING_INPUT_SETS - trials) * twin
    largest = max(q, kv) if bwd else checked
    checking = resident_bytes(case) + largest * (3 * 8 + 2)
    computing = max(reference_peak_bytes(case, torch.float64, max_rows),
                    reference_peak_bytes(case, case.dtype, max_rows), checking)
    outputs = (2 * q + 2 * kv) * elem if bwd else q * elem
    sets = max(trials, TIMING_INPUT_SETS)
    timing = (sets - 1) * resident_bytes(case) + outputs + _SLACK_BYTES
    return ReferenceBytes(cached, computing, timing, sets * inputs * elem)


def call_peak_bytes(case: Case, impl: Implementation) -> int:
    """Conservative peak bytes of one call of ``impl`` on ``case``, inputs included.

    ``resident_bytes`` (q, k, v, output, and dO and the gradients when the case runs backward) +
    ``impl.memory(case)``, the workspace the implementation declares, or ``fused_workspace_bytes`` when
    it declares none. The whole call is covered, forward and backward together, whichever pass the
    case times.
    """
    workspace = impl.memory or fused_workspace_bytes
    return resident_bytes(case) + workspace(case)


def predict_peak_bytes(case: Case, impl: Implementation, seeds: int = Correctness.seeds,
                       max_rows: int | None = Correctness.max_rows) -> int:
    """Conservative peak bytes of measuring ``case`` with ``impl`` in a worker: the call and the harness.

    The larger of computing a reference and of the call (``call_peak_bytes``) beside timing's further
    input sets, on top of the references cached meanwhile (``reference_bytes`` with ``seeds`` and
    ``max_rows``, the run's ``Correctness`` settings). An implementation taking another layout than
    bhsd gets its input sets as transposed copies, made while the bhsd ones are alive.
    """
    harness = reference_bytes(case, seeds, max_rows)
    relayout = harness.timing_inputs if impl.layout != "bhsd" and not case.packed else 0
    return harness.cached + max(harness.computing, call_peak_bytes(case, impl) + harness.timing + relayout)


# --- budget --------------------------------------------------------------------

_UNITS = {
    "": 1, "b": 1,
    "k": 2**10, "kib": 2**10, "kb": 10**3,
    "m": 2**20, "mib": 2**20, "mb": 10**6,
    "g": 2**30, "gib": 2**30, "gb": 10**9,
    "t": 2**40, "tib": 2**40, "tb": 10**12,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """``"8GiB"`` -> 8589934592. Binary units (KiB..TiB, and bare K/M/G/T as ``free`` uses them),
    decimal units (KB..TB), B or none for bytes; case-insensitive; fractions allowed (``"1.5GiB"``)."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"cannot read {text!r} as a size: use e.g. 8GiB, 512MiB, 2GB or a number of bytes")
    return int(float(match.group(1)) * _UNITS[unit])


def budget_bytes(fraction_or_bytes: float | int | str, device: str = "cpu", free: int | None = None) -> int:
    """Memory a case may use on ``device``: a fraction of what is free now, or a fixed size.

    A float in (0, 1], or a string holding one or a percentage (``"0.8"``,
    ``"80%"``), is a fraction of the free memory (see ``free_bytes``). An
    int, a whole number above 1, or a size string (``"8GiB"``) is bytes.
    ``free`` replaces the free memory read now (a caller that must not touch the device measured it elsewhere).
    """
    spec = fraction_or_bytes
    if isinstance(spec, str):
        text = spec.strip()
        if text.endswith("%"):
            percent = _number(text[:-1], fraction_or_bytes)
            if not 0 < percent <= 100:
                raise ValueError(f"budget percentage must be in (0, 100], got {fraction_or_bytes!r}")
            return int(percent / 100 * (free_bytes(device) if free is None else free))
        try:
            spec = float(text)
        except ValueError:
            spec = parse_bytes(text)
    if isinstance(spec, bool) or not isinstance(spec, (int, float)) or not 0 < spec < math.inf:
        raise ValueError(f"budget must be a positive fraction, size or number of bytes, got {fraction_or_bytes!r}")
    if isinstance(spec, float) and spec <= 1:
        return int(spec * (free_bytes(device) if free is None else free))
    if isinstance(spec, float) and not spec.is_integer():
        raise ValueError(f"budget above 1 is bytes and must be whole, got {fraction_or_bytes!r}")
    return int(spec)


def _number(text: str, spec: object) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"budget {spec!r} is not a percentage") from None


def free_bytes(device: str = "cpu") -> int:
    """Memory free for tensors on ``device`` now (``"cpu"``, ``"cuda"`` or ``"cuda:N"``).

    CPU: the kernel's MemAvailable. CUDA: the driver's free memory plus what
    torch's caching allocator holds unused, which it would reuse first.
    """
    if torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    available = available_memory_bytes()
    if available is None:
        raise RuntimeError("cannot tell free memory here (no /proc/meminfo): give the budget in bytes, e.g. 8GiB")
    return available
