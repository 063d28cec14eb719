"""Task-level quality: does a model whose attention is an implementation still learn?

A small transformer, with the implementation under test as its attention,
is trained on synthetic long-range tasks generated in-process (ListOps,
associative recall, and ``compare``: a binary comparison of two distant
digits) and scored on held-out data with scikit-learn's metrics (the
``quality`` extra)::

    from attnbench.quality import preset, run_task, summarize, agrees_with

    config = preset("compare", "cpu")
    per_seed = [run_task(impl, config, seed) for seed in config.seeds]
    summary = summarize(per_seed)

Exact implementations should agree with ``eager`` (``agrees_with``): a
broken backward pass shows up as a model that learns less.
"""

from attnbench.quality.config import PRESETS, TaskConfig, preset
from attnbench.quality.metrics import agrees_with, classification_metrics, summarize
from attnbench.quality.tasks import TASKS, TaskSpec
from attnbench.quality.train import run_task, task_case

__all__ = [
    "PRESETS", "TASKS", "TaskConfig", "TaskSpec",
    "agrees_with", "classification_metrics", "preset", "run_task", "summarize", "task_case",
]
