"""Scoring: classification metrics (scikit-learn), the spread over seeds, and agreement with eager."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import numpy as np

SUMMARIZED = (
    "accuracy", "precision", "recall", "f1", "roc_auc", "chance_accuracy",
    "step_ms_median", "step_ms_iqr", "peak_bytes", "train_loss_final", "train_s", "skipped_steps", "nonfinite_outputs",
)
"""The per-seed figures ``summarize`` aggregates."""
AGREEMENT_FACTOR = 2.0
AGREEMENT_FLOOR = 0.02
"""Accuracy difference always tolerated: near-identical seeds (std ~0) must not flag a rounding-level change."""


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Accuracy, macro precision, recall and F1, ROC-AUC, and chance accuracy of predicted probabilities.

    ``probs`` is ``(n, num_classes)``; the prediction is its argmax. ROC-AUC
    is binary for two classes and macro one-vs-rest otherwise, over the
    classes present in ``labels`` (a class with no example has no AUC);
    NaN when fewer than two are present. ``chance_accuracy`` is the share of
    the most common label: what always guessing it scores.
    """
    try:
        from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score
    except ImportError:
        raise ImportError("task-level quality metrics need scikit-learn: pip install 'attnbench[quality]'") from None
    predicted = probs.argmax(axis=1)
    precision, recall, f1, _ = precision_recall_fscore_support(labels, predicted, average="macro", zero_division=0)
    present = np.unique(labels)
    if len(present) < 2:
        auc = math.nan
    elif probs.shape[1] == 2:
        auc = roc_auc_score(labels, probs[:, 1])
    else:
        # One-vs-rest as binary indicator columns: sklearn's own multi_class="ovr" wants every class present.
        auc = roc_auc_score(labels[:, None] == present[None, :], probs[:, present], average="macro")
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "roc_auc": float(auc),
        "chance_accuracy": float(np.bincount(labels).max() / len(labels)),
    }


def summarize(per_seed: Sequence[dict]) -> dict:
    """Mean, std (sample; 0 for one seed), min and max over seeds of every figure in ``SUMMARIZED``.

    Returns ``{"seeds": [...], "accuracy": {"mean": .., "std": .., "min": .., "max": ..}, ...}``;
    a figure absent from the results is left out.
    """
    if not per_seed:
        raise ValueError("summarize needs at least one seed's results")
    out: dict = {"seeds": [result.get("seed") for result in per_seed]}
    for name in SUMMARIZED:
        values = [float(result[name]) for result in per_seed if name in result]
        if values:
            out[name] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "min": min(values),
                "max": max(values),
            }
    return out


def agrees_with(
    eager_accuracies: Sequence[float], accuracies: Sequence[float], *,
    factor: float = AGREEMENT_FACTOR, floor: float = AGREEMENT_FLOOR,
) -> tuple[bool, str]:
    """Whether an exact implementation's accuracies match eager's within the spread over seeds.

    The rule: ``|mean - eager mean| <= max(factor x pooled std, floor)``, the
    pooled std being ``sqrt((var_eager + var) / 2)`` with sample variances
    (0 for a single seed). With 3 independent seeds each, the means'
    difference has a standard error of 0.82 pooled std, so factor 2 is 2.45
    standard errors: 7% false alarms (t, 4 degrees of freedom). But
    ``run_task`` gives every implementation the same weights and data for a
    seed, so an exact one tracks eager seed by seed and its difference is
    far below the limit, while a broken backward pass, which trains towards
    chance, is tens of points off. Returns the verdict and a sentence saying why.
    """
    if not eager_accuracies or not accuracies:
        raise ValueError("agrees_with needs at least one accuracy on each side")
    if any(math.isnan(a) for a in (*eager_accuracies, *accuracies)):
        return False, "an accuracy is NaN"
    mean_eager, mean = statistics.fmean(eager_accuracies), statistics.fmean(accuracies)
    pooled = math.sqrt((_variance(eager_accuracies) + _variance(accuracies)) / 2)
    limit = max(factor * pooled, floor)
    difference = abs(mean - mean_eager)
    ok = difference <= limit
    why = (
        f"|{mean:.4f} - eager {mean_eager:.4f}| = {difference:.4f} {'<=' if ok else '>'} {limit:.4f} "
        f"(max of {factor:g} x pooled std {pooled:.4f} and floor {floor:g})"
    )
    return ok, why


def _variance(values: Sequence[float]) -> float:
    return statistics.variance(values) if len(values) > 1 else 0.0
