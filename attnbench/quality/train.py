"""run_task: train a small transformer whose attention is one implementation, then score it on held-out data."""

from __future__ import annotations

import contextlib
import functools
import math
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from attnbench.case import Case
from attnbench.implementation import AttentionFn, Implementation, Unsupported
from attnbench.measure.memory import peak_bytes_cpu, peak_bytes_cuda
from attnbench.measure.timing import iqr, time_once
from attnbench.quality.config import TaskConfig
from attnbench.quality.metrics import classification_metrics
from attnbench.quality.model import TaskModel
from attnbench.quality.tasks import TASKS

TRAIN_STREAM, EVAL_STREAM = 0, 1
"""Second word of the data seeds: a run's training and held-out data come from different streams of its seed."""
WARMUP_STEPS = 5
"""Steps left out of the timing (first-call allocations, oneDNN and cuBLAS setup, Adam's state)."""
WARMUP_LR_FRACTION = 0.1
"""Share of the steps over which the learning rate ramps up linearly before its cosine decay to 0."""
CLIP_NORM = 1.0
LOSS_TAIL_FRACTION = 0.1
"""``train_loss_final`` is the mean loss over this last share of the steps (one step's loss is noisy)."""


def task_case(config: TaskConfig) -> Case:
    """The attention case a task's model calls: self-attention, no mask, float32, forward and backward."""
    return Case(
        batch=config.batch, heads_q=config.heads, heads_kv=config.heads, seq_q=config.seq_len, seq_kv=config.seq_len,
        head_dim=config.head_dim, dtype=torch.float32, device=config.device, mask="none", pass_="fwd+bwd",
    )


def build_attention(impl: Implementation, case: Case) -> AttentionFn:
    """``impl.build(case)``; Unsupported when its declared capabilities rule the case out, or its build does."""
    reason = impl.declines(case)
    if reason is not None:
        raise Unsupported(reason)
    return impl.build(case)


def run_task(impl: Implementation, config: TaskConfig, seed: int) -> dict:
    """Train on ``config.task`` with ``impl`` as the attention for one seed; return its figures.

    Every step trains on fresh examples (there is no fixed training set) from the
    seed's training stream; the ``eval_size`` held-out examples come from
    its evaluation stream. ``torch.manual_seed(seed)`` fixes the weights, so
    two implementations with one seed start and see data alike. A step with
    a non-finite loss updates nothing and is counted in ``skipped_steps``.
    Raises ``Unsupported`` when the implementation cannot run the case.

    Returns classification metrics (see ``classification_metrics``), the
    median and IQR of the per-step wall time in ms after ``WARMUP_STEPS``,
    the peak bytes one training step allocates above what was live before it
    (activations, gradients, temporaries), ``train_loss_final``, ``train_s``
    (the whole training loop, data generation included) and
    ``nonfinite_outputs`` (held-out rows whose probabilities were not finite,
    scored as a uniform guess).
    """
    with _threads(config.threads):
        return _train_and_score(impl, config, seed)


def _train_and_score(impl: Implementation, config: TaskConfig, seed: int) -> dict:
    spec = TASKS[config.task]
    attend = build_attention(impl, task_case(config))
    torch.manual_seed(seed)
    model = TaskModel(
        vocab=config.vocab, seq_len=config.seq_len, d_model=config.d_model, heads=config.heads, layers=config.layers,
        num_classes=spec.num_classes, attend=attend, layout=impl.layout,
    ).to(config.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(config.steps))
    train_rng = np.random.default_rng([seed, TRAIN_STREAM])

    losses: list[float] = []

    def train_step(tokens: torch.Tensor, labels: torch.Tensor) -> None:
        loss = F.cross_entropy(model(tokens), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        losses.append(loss.item())
        if math.isfinite(losses[-1]):
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
            optimizer.step()
        schedule.step()

    # The step right after the warm-up is profiled for memory (and not timed: the profiler slows it).
    memory_step = min(WARMUP_STEPS, config.steps - 2)
    step_ms: list[float] = []
    started = time.perf_counter()
    for step in range(config.steps):
        tokens, labels = _tensors(*spec.generate(config.batch, config.seq_len, config.vocab, train_rng), config.device)
        step_fn = functools.partial(train_step, tokens, labels)
        if step == memory_step:
            peak = _peak_bytes(step_fn, config.device)
            continue
        # Every other step is clocked the way measure.timing clocks a call (synchronised), warm-up ones discarded.
        seconds = time_once(step_fn, config.device)
        if step > memory_step:
            step_ms.append(seconds * 1e3)
    train_s = time.perf_counter() - started

    eval_tokens, eval_labels = spec.generate(
        config.eval_size, config.seq_len, config.vocab, np.random.default_rng([seed, EVAL_STREAM])
    )
    probs = _predict(model, torch.from_numpy(eval_tokens).to(config.device), config.batch)
    nonfinite = ~np.isfinite(probs).all(axis=1)
    probs[nonfinite] = 1.0 / spec.num_classes
    tail = losses[-max(1, round(LOSS_TAIL_FRACTION * len(losses))) :]
    return {
        "task": config.task,
        "implementation": impl.name,
        "seed": seed,
        **classification_metrics(eval_labels, probs),
        "step_ms_median": statistics.median(step_ms),
        "step_ms_iqr": iqr(step_ms),
        "peak_bytes": peak,
        "train_loss_final": statistics.fmean(tail),
        "train_s": train_s,
        "skipped_steps": sum(not math.isfinite(loss) for loss in losses),
        "nonfinite_outputs": int(nonfinite.sum()),
    }


@contextlib.contextmanager
def _threads(count: int | None):
    """torch's CPU threads set to ``count`` (None: unchanged) for the block, then restored."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _predict(model: TaskModel, tokens: torch.Tensor, batch: int) -> np.ndarray:
    """Class probabilities (float64) for every row, run in batches of the case's size."""
    out = []
    with torch.no_grad():
        for start in range(0, len(tokens), batch):
            chunk = tokens[start : start + batch]
            rows = len(chunk)
            # Pad the last chunk to the batch the implementation was built for: it may rely on it.
            if rows < batch:
                chunk = torch.cat([chunk, chunk[:1].expand(batch - rows, -1)])
            out.append(torch.softmax(model(chunk)[:rows].double(), dim=-1).cpu())
    return torch.cat(out).numpy()


def _warmup_cosine(steps: int):
    warmup = max(1, round(WARMUP_LR_FRACTION * steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return factor


def _tensors(tokens: np.ndarray, labels: np.ndarray, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(tokens).to(device), torch.from_numpy(labels).to(device)


def _peak_bytes(fn, device: str) -> int:
    return peak_bytes_cuda(fn, device) if device == "cuda" else peak_bytes_cpu(fn)
