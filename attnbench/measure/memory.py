"""Peak memory of one call above its inputs, measured or predicted.

Measured:

- ``peak_bytes_cpu(fn)``: exact, from the allocator events the PyTorch
  profiler records with ``profile_memory=True``.
- ``peak_bytes_cuda(fn)``: from the CUDA caching allocator's statistics.
- ``vm_hwm_bytes_during(fn)``: the OS high-water mark, a coarse cross-check.

Predicted, before running: ``predict_peak_bytes(case, impl)`` against
``budget_bytes(...)`` lets a runner skip a case that would not fit instead of
being killed by the OS or running out of device memory.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from attnbench.case import Case
from attnbench.hardware import available_memory_bytes
from attnbench.implementation import Implementation
from attnbench.impls import chunked, int8, linformer, performer, sliding_window

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
    total = 2 * _score_elems(case) * elem + math.prod(case.q_shape) * elem
    if case.gqa:
        total += 2 * case.batch * case.heads_q * case.seq_kv * case.head_dim * elem
    return total


# --- prediction --------------------------------------------------------------
#
# predict_peak_bytes = resident_bytes (what the call and its caller hold whatever
# the algorithm) + a workspace model chosen by implementation name. Each model
# is calibrated against peak_bytes_cpu on torch 2.13 and rounded up: the point
# is to never under-predict a case that would not fit, while staying within a
# small factor of the truth so that cases that do fit are not skipped.

WorkspaceModel = Callable[[Case, Implementation], int]
"""Bytes an implementation needs beyond ``resident_bytes`` for one case, forward and backward included."""

# The CPU flash kernel's per-thread blocks (aten/native/cpu/FlashAttentionKernel.cpp
# splits queries by up to 256 rows and keys by up to 512 columns).
_CPU_FLASH_Q_SPLIT = 256
_CPU_FLASH_KV_SPLIT = 512


def resident_bytes(case: Case) -> int:
    """q, k, v and the output; with backward also dO, dq, dk and dv."""
    elem = case.dtype.itemsize
    q = math.prod(case.q_shape) * elem
    kv = math.prod(case.kv_shape) * elem
    total = 2 * q + 2 * kv
    if case.needs_backward:
        total *= 2
    return total


def fused_workspace_bytes(case: Case, impl: Implementation) -> int:
    """A fused kernel (FlashAttention-style): per-row softmax statistics and block buffers, never the scores.

    Statistics: float32 max/sum (log-sum-exp) per query row, twice for
    backward (the delta term). Backward also gets a float32 dq accumulator
    and, on CUDA under GQA, dk/dv expanded to the query heads before they are
    summed (FlashAttention-2 does so; counted as float32). On CPU each thread
    holds a query-split x key-split block (float32, and a half-precision copy)
    and a query-split x head_dim accumulator, twice that in backward
    (measured on torch 2.13: 0.56 MiB a thread forward at head_dim 64, float32).
    """
    rows = case.batch * case.heads_q * case.seq_q
    bwd = case.needs_backward
    total = rows * 4 * (2 if bwd else 1)
    if bwd:
        total += rows * case.head_dim * 4
        if case.gqa and case.device == "cuda":
            total += 2 * case.batch * case.heads_q * case.seq_kv * case.head_dim * 4
    if case.device == "cpu":
        q_split = min(_CPU_FLASH_Q_SPLIT, case.seq_q)
        kv_split = min(_CPU_FLASH_KV_SPLIT, case.seq_kv)
        per_thread = q_split * kv_split * (4 + 2) + 2 * q_split * case.head_dim * 4 + 4 * q_split * 4
        total += torch.get_num_threads() * per_thread * (2 if bwd else 1)
    return total


def eager_workspace_bytes(case: Case, impl: Implementation) -> int:
    """Matmul-softmax-matmul in the input dtype: two score-sized tensors forward, three in backward.

    Forward holds the scores and the probabilities at once (measured: exactly
    that). Backward holds the saved probabilities plus dP and dS. Also the
    scaled q (saved for backward), under GQA k and v repeated to the query
    heads (and their gradients in backward), and the boolean mask it keeps.
    """
    elem = case.dtype.itemsize
    bwd = case.needs_backward
    total = _score_elems(case) * elem * (3 if bwd else 2)
    total += math.prod(case.q_shape) * elem + _dense_mask_bytes(case)
    if case.gqa:
        total += 2 * _kv_repeated_elems(case) * elem * (2 if bwd else 1)
    return total


def reference_workspace_bytes(case: Case, impl: Implementation) -> int:
    """The float64 oracle: ``eager``'s two (three in backward) score tensors at 8 bytes an element.

    Plus float64 copies of q, k, v and the output before its cast, k and v
    repeated to the query heads under GQA, gradients of all of those in
    backward, and the boolean mask and its negation it builds.
    """
    bwd = case.needs_backward
    total = _score_elems(case) * 8 * (3 if bwd else 2)
    copies = (2 * math.prod(case.q_shape) + 2 * math.prod(case.kv_shape) + 2 * _kv_repeated_elems(case)) * 8
    return total + copies * (2 if bwd else 1) + 2 * _dense_mask_bytes(case)


def math_workspace_bytes(case: Case, impl: Implementation) -> int:
    """SDPA's math backend: ``eager``'s score tensors, computed in float32 for half-precision inputs.

    torch upcasts half inputs in the math backend (unless
    ``allow_fp16_bf16_reduction_math_sdp``), so scores are float32 there, and
    its safe softmax adds a boolean score-sized tensor. Adds the upcast and
    scaled q, k and v, k and v repeated under GQA, and, when the case is
    masked, a boolean ``Sq x Skv`` mask and its additive float version.
    """
    acc = _accumulation_itemsize(case)
    bwd = case.needs_backward
    total = _score_elems(case) * (acc * (3 if bwd else 2) + 1)
    copies = (2 * math.prod(case.q_shape) + 3 * math.prod(case.kv_shape) + 2 * _kv_repeated_elems(case)) * acc
    total += copies * (2 if bwd else 1)
    return total + _dense_mask_bytes(case) * (1 + acc)


def sdpa_workspace_bytes(case: Case, impl: Implementation) -> int:
    """SDPA with a fused backend, plus the additive mask it is given as a tensor.

    A sliding window reaches the kernel as a boolean ``Sq x Skv`` tensor that
    torch converts to the input dtype (measured on CPU: exactly that). A
    causal mask with ``seq_q != seq_kv`` is counted the same way, as
    ``causal_lower_right`` materialises it where no kernel takes it as is
    (torch 2.13's CPU flash kernel does).
    For ``sdpa`` (torch choosing) on CUDA, float32 with GQA is assumed to fall
    back to the math backend: not every torch version's memory-efficient
    kernel takes GQA, and the flash kernel takes no float32.
    """
    if impl.name == "sdpa" and case.device == "cuda" and case.dtype == torch.float32 and case.gqa:
        return math_workspace_bytes(case, impl)
    total = fused_workspace_bytes(case, impl)
    if case.mask == "sliding_window" or (case.mask == "causal" and case.seq_q != case.seq_kv):
        # The memory-efficient kernel pads the key axis of the mask to a multiple of 16.
        padded_kv = -(-case.seq_kv // 16) * 16
        total += case.seq_q * (case.seq_kv + padded_kv * case.dtype.itemsize)
    return total


def chunked_workspace_bytes(case: Case, impl: Implementation) -> int:
    """Online softmax over ``q_block x kv_block`` score tiles (``impl.params``, else ``chunked``'s defaults).

    Forward holds about three tiles at once (the scores, updated in place,
    the probabilities' sum and the product's temporaries, with margin) plus
    three output-sized tensors (the per-chunk results, their concatenation,
    the cast) and the upcast k and v, all in the accumulation dtype (float32
    for half inputs), and a boolean mask per tile the mask cuts through.
    Plain autograd saves every visited tile's probabilities and the
    accumulator it rescaled, so backward holds O(visible pairs) after all:
    the tiles visited, counted from ``chunked.plan``, plus the tiles in flight.
    """
    acc = _accumulation_itemsize(case)
    q_block = min(int(impl.params.get("q_block", chunked.Q_BLOCK)), case.seq_q)
    kv_block = min(int(impl.params.get("kv_block", chunked.KV_BLOCK)), case.seq_kv)
    heads = case.batch * case.heads_q
    tiles = [(c.q1 - c.q0, t.k1 - t.k0, t.hidden is not None)
             for c in chunked.plan(case, q_block, kv_block, with_masks=False) for t in c.tiles]
    upcast = 2 * math.prod(case.kv_shape) * acc if case.dtype.itemsize < acc else 0
    mask_bytes = sum(rows * keys for rows, keys, cut in tiles if cut)
    total = 4 * heads * q_block * kv_block * acc + 3 * math.prod(case.q_shape) * acc + upcast + mask_bytes
    if case.needs_backward:
        area = sum(rows * keys for rows, keys, _ in tiles)
        # Per visited tile: its probabilities and the accumulator it rescaled.
        total += heads * area * acc + len(tiles) * heads * q_block * case.head_dim * acc
    return total


WORKSPACE_MODELS: dict[str, WorkspaceModel] = {
    "eager": eager_workspace_bytes,
    "reference": reference_workspace_bytes,
    "sdpa.math": math_workspace_bytes,
    "sdpa": sdpa_workspace_bytes,
    "sdpa.flash": sdpa_workspace_bytes,
    "sdpa.efficient": sdpa_workspace_bytes,
    "sdpa.cudnn": sdpa_workspace_bytes,
    "chunked": chunked_workspace_bytes,
    "sliding_window": sliding_window.workspace_bytes,
    **dict.fromkeys(linformer.RANKS, linformer.workspace_bytes),
    **dict.fromkeys(int8.VARIANTS, int8.workspace_bytes),
    **dict.fromkeys(performer.FEATURES, performer.workspace_bytes),
    # The corrected seed code is eager's matmul, softmax, matmul (without a mask).
    "seed.self_attention_fixed": eager_workspace_bytes,
}
"""Workspace models by implementation name; a plugin may add its own entry."""


def workspace_model(impl: Implementation) -> WorkspaceModel:
    """The model for ``impl``: its entry in ``WORKSPACE_MODELS``, else a fused kernel's."""
    # Were Implementation to declare its own estimate, it would be looked up here first.
    return WORKSPACE_MODELS.get(impl.name, fused_workspace_bytes)


def predict_peak_bytes(case: Case, impl: Implementation) -> int:
    """Conservative peak bytes of running ``case`` with ``impl``, inputs included.

    ``resident_bytes`` (q, k, v, output, and dO and the gradients when the
    case runs backward) + ``workspace_model(impl)``:
    score-sized tensors for implementations that materialise scores (eager,
    reference in float64, sdpa.math in float32 or wider), blocks for chunked,
    statistics and per-thread blocks for fused kernels (sdpa's and any
    implementation the table does not know). The whole call is covered,
    forward and backward together, whichever pass the case times.
    """
    return resident_bytes(case) + workspace_model(impl)(case, impl)


def _score_elems(case: Case) -> int:
    return case.batch * case.heads_q * case.seq_q * case.seq_kv


def _dense_mask_bytes(case: Case) -> int:
    """A boolean ``Sq x Skv`` mask, as the materialising implementations build one."""
    return 0 if case.mask == "none" else case.seq_q * case.seq_kv


def _kv_repeated_elems(case: Case) -> int:
    """Elements of k (or v) repeated to the query heads; 0 without GQA, where nothing is repeated."""
    return case.batch * case.heads_q * case.seq_kv * case.head_dim if case.gqa else 0


def _accumulation_itemsize(case: Case) -> int:
    return max(case.dtype.itemsize, 4)


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


def budget_bytes(fraction_or_bytes: float | int | str, device: str = "cpu") -> int:
    """Memory a case may use on ``device``: a fraction of what is free now, or a fixed size.

    A float in (0, 1], or a string holding one or a percentage (``"0.8"``,
    ``"80%"``), is a fraction of the free memory (see ``free_bytes``). An
    int, a whole number above 1, or a size string (``"8GiB"``) is bytes.
    """
    spec = fraction_or_bytes
    if isinstance(spec, str):
        text = spec.strip()
        if text.endswith("%"):
            percent = _number(text[:-1], fraction_or_bytes)
            if not 0 < percent <= 100:
                raise ValueError(f"budget percentage must be in (0, 100], got {fraction_or_bytes!r}")
            return int(percent / 100 * free_bytes(device))
        try:
            spec = float(text)
        except ValueError:
            spec = parse_bytes(text)
    if isinstance(spec, bool) or not isinstance(spec, (int, float)) or not 0 < spec < math.inf:
        raise ValueError(f"budget must be a positive fraction, size or number of bytes, got {fraction_or_bytes!r}")
    if isinstance(spec, float) and spec <= 1:
        return int(spec * free_bytes(device))
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
