"""attnbench.quality: the synthetic tasks, TaskConfig and presets, training, metrics and the agreement rule."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from attnbench import Implementation, Unsupported
from attnbench.impls import eager
from attnbench.plugins import load_registry
from attnbench.quality import (
    PRESETS,
    TASKS,
    TaskConfig,
    agrees_with,
    classification_metrics,
    preset,
    run_task,
    summarize,
)
from attnbench.quality.tasks import (
    COMPARE_CLS,
    COMPARE_FIRST,
    COMPARE_SECOND,
    LISTOPS_CLOSE,
    LISTOPS_CLS,
    LISTOPS_OPEN,
    LISTOPS_PAD,
    listops_value,
)

needs_sklearn = pytest.mark.skipif(
    importlib.util.find_spec("sklearn") is None, reason="scikit-learn not installed (the quality extra)"
)
REGISTRY = load_registry(environ={"ATTNBENCH_PLUGINS": ""})
LEARNED = ("accuracy", "precision", "recall", "f1", "roc_auc", "train_loss_final", "skipped_steps", "nonfinite_outputs")
"""What a run learned, as opposed to what it measured (time, memory)."""


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine threads wait on each other (10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(task: str, **changes) -> TaskConfig:
    return dataclasses.replace(preset(task, "cpu", "tiny"), **changes)


def _impl(name: str, build, **kwargs) -> Implementation:
    return Implementation(name=name, build=build, backward=True, **kwargs)


# --- tasks ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_generators_are_seeded_and_well_formed(task):
    spec = TASKS[task]
    config = preset(task, "cpu")
    tokens, labels = spec.generate(200, config.seq_len, config.vocab, np.random.default_rng(3))
    again, _ = spec.generate(200, config.seq_len, config.vocab, np.random.default_rng(3))
    other, _ = spec.generate(200, config.seq_len, config.vocab, np.random.default_rng(4))
    assert (tokens == again).all() and not (tokens == other).all()
    assert tokens.shape == (200, config.seq_len) and labels.shape == (200,)
    assert tokens.dtype == labels.dtype == np.int64
    assert tokens.min() >= 0 and tokens.max() < config.vocab
    assert labels.min() >= 0 and labels.max() < spec.num_classes
    assert len(np.unique(labels)) == spec.num_classes


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("[MAX 3 [MIN 4 7 ] ]", 4),
        ("[MED 1 9 2 8 ]", 5),  # even count: the mean of the middle two, rounded down
        ("[SUM_MOD 5 7 [MAX 1 0 ] ]", 3),
        ("[MIN [MED 3 3 9 ] [SUM_MOD 9 9 ] ]", 3),
    ],
)
def test_listops_value(expression, value):
    names = {f"[{name}": token for name, token in LISTOPS_OPEN.items()}
    tokens = [names[word] if word in names else LISTOPS_CLOSE if word == "]" else int(word) for word in expression.split()]
    assert listops_value(tokens) == value


def test_listops_labels_are_the_expressions_values():
    tokens, labels = TASKS["listops"].generate(300, 128, 17, np.random.default_rng(0))
    assert (tokens[:, -1] == LISTOPS_CLS).all()
    lengths = []
    for row, label in zip(tokens.tolist(), labels):
        expression = [t for t in row[:-1] if t != LISTOPS_PAD]
        # Left-padded: padding, then one expression, then CLS.
        assert row[: 127 - len(expression)] == [LISTOPS_PAD] * (127 - len(expression))
        assert listops_value(expression) == label
        lengths.append(len(expression))
    assert max(lengths) <= 127 and np.mean(lengths) > 32


def test_recall_asks_for_the_value_after_the_query_key():
    tokens, labels = TASKS["recall"].generate(100, 65, 64, np.random.default_rng(0))
    for row, label in zip(tokens, labels):
        keys, values, query = row[0:-1:2], row[1:-1:2], row[-1]
        assert len(set(keys.tolist())) == len(keys) == 32
        assert values.max() < 10 and keys.min() > 10
        assert values[keys.tolist().index(query)] == label


def test_compare_marks_two_distant_digits():
    seq_len = 128
    tokens, labels = TASKS["compare"].generate(500, seq_len, 64, np.random.default_rng(0))
    assert (tokens[:, -1] == COMPARE_CLS).all()
    for row, label in zip(tokens, labels):
        first = np.flatnonzero((row >= COMPARE_FIRST) & (row < COMPARE_SECOND))
        second = np.flatnonzero((row >= COMPARE_SECOND) & (row < COMPARE_SECOND + 10))
        assert len(first) == len(second) == 1
        assert second[0] - first[0] >= seq_len // 2
        a, b = row[first[0]] - COMPARE_FIRST, row[second[0]] - COMPARE_SECOND
        assert a != b and label == (a > b)
    assert 0.4 < labels.mean() < 0.6


# --- config --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", PRESETS)
@pytest.mark.parametrize("task", TASKS)
def test_presets_round_trip(task, size):
    config = preset(task, "cpu", size)
    data = json.loads(json.dumps(config.to_dict()))
    assert TaskConfig.from_dict(data) == config
    assert preset(task, "cuda").device == "cuda"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"task": "sorting"}, "task 'sorting'"),
        ({"d_model": 30, "heads": 4}, "multiple of 2 x heads"),
        ({"d_model": 12, "heads": 4}, "head_dim must be even"),
        ({"vocab": 10}, "needs vocab >="),
        ({"seq_len": 4}, "needs seq_len >="),
        ({"steps": 2}, "steps must be at least"),
        ({"batch": 0}, "batch must be a positive integer"),
        ({"lr": 0.0}, "lr must be"),
        ({"seeds": ()}, "seeds must be"),
        ({"device": "tpu"}, "device 'tpu'"),
    ],
)
def test_config_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(preset("recall", "cpu"), **changes)


def test_config_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown task config field"):
        TaskConfig.from_dict(preset("compare").to_dict() | {"dropout": 0.1})


# --- metrics -------------------------------------------------------------------------------------------------------


@needs_sklearn
def test_classification_metrics():
    labels = np.array([0, 0, 1, 1, 1])
    perfect = np.eye(2)[labels] * 0.8 + 0.1
    assert classification_metrics(labels, perfect) == pytest.approx(
        {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "roc_auc": 1.0, "chance_accuracy": 0.6}
    )
    # Multiclass with a class (2) that never occurs: AUC over the classes present.
    labels = np.array([0, 1, 3, 3])
    probs = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.6, 0.2, 0.1], [0.2, 0.2, 0.2, 0.4], [0.4, 0.1, 0.1, 0.4]])
    metrics = classification_metrics(labels, probs)
    assert metrics["accuracy"] == 0.75 and math.isfinite(metrics["roc_auc"])


def test_summarize():
    per_seed = [{"seed": s, "accuracy": a, "peak_bytes": 100, "task": "compare"} for s, a in enumerate([0.5, 0.7, 0.9])]
    summary = summarize(per_seed)
    assert summary["seeds"] == [0, 1, 2]
    assert summary["accuracy"] == pytest.approx({"mean": 0.7, "std": 0.2, "min": 0.5, "max": 0.9})
    assert summary["peak_bytes"]["std"] == 0.0 and "f1" not in summary
    assert summarize(per_seed[:1])["accuracy"]["std"] == 0.0


def test_agrees_with():
    ok, why = agrees_with([0.80, 0.82, 0.84], [0.81, 0.83, 0.82])
    assert ok and "<=" in why
    ok, why = agrees_with([0.80, 0.82, 0.84], [0.52, 0.50, 0.55])
    assert not ok and ">" in why
    # Identical seeds: the floor decides.
    assert agrees_with([0.9] * 3, [0.885] * 3)[0]
    assert not agrees_with([0.9] * 3, [0.87] * 3)[0]
    assert not agrees_with([0.9], [math.nan])[0]


# --- training --------------------------------------------------------------------------------------------------------


@needs_sklearn
def test_tiny_eager_learns_compare():
    config = _tiny("compare")
    result = run_task(REGISTRY.get("eager"), config, seed=0)
    assert result["accuracy"] >= result["chance_accuracy"] + 0.3
    assert result["roc_auc"] > 0.9
    assert result["skipped_steps"] == result["nonfinite_outputs"] == 0
    assert result["step_ms_median"] > 0 and result["step_ms_iqr"] >= 0 and result["peak_bytes"] > 0
    assert result["train_loss_final"] < 0.4


@needs_sklearn
@pytest.mark.parametrize("impl", ["sdpa", "chunked"])
@pytest.mark.parametrize("task", TASKS)
def test_every_task_runs(task, impl):
    result = run_task(REGISTRY.get(impl), _tiny(task, steps=3, eval_size=40), seed=1)
    assert result["task"] == task and result["implementation"] == impl and result["seed"] == 1
    assert 0 <= result["accuracy"] <= 1 and math.isfinite(result["train_loss_final"])


@needs_sklearn
def test_runs_are_deterministic_and_layout_aware():
    config = _tiny("recall", steps=20, eval_size=64)
    first = run_task(REGISTRY.get("eager"), config, seed=5)
    again = run_task(REGISTRY.get("eager"), config, seed=5)
    assert {key: again[key] for key in LEARNED} == {key: first[key] for key in LEARNED}

    def build_bshd(case):
        attend = eager.build(case)
        return lambda q, k, v: attend(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)

    bshd = run_task(_impl("eager-bshd", build_bshd, layout="bshd"), config, seed=5)
    assert bshd["train_loss_final"] == pytest.approx(first["train_loss_final"], rel=1e-4)


def test_unsupported_is_raised():
    config = _tiny("compare", steps=3)
    with pytest.raises(Unsupported, match="backward not supported"):
        run_task(REGISTRY.get("int8"), config, seed=0)

    def build(case):
        raise Unsupported("needs head_dim 64")

    with pytest.raises(Unsupported, match="needs head_dim 64"):
        run_task(_impl("picky", build), config, seed=0)


@needs_sklearn
@pytest.mark.slow
def test_a_broken_backward_disagrees_with_eager():
    """Attention whose output carries no gradient to q, k and v: the model cannot learn where to look."""

    def build_detached(case):
        attend = eager.build(case)
        return lambda q, k, v: attend(q.detach(), k.detach(), v.detach())

    config = _tiny("compare")
    accuracies = {
        name: [run_task(impl, config, seed)["accuracy"] for seed in config.seeds]
        for name, impl in {
            "eager": REGISTRY.get("eager"),
            "sdpa": REGISTRY.get("sdpa"),
            "detached": _impl("detached", build_detached),
        }.items()
    }
    assert agrees_with(accuracies["eager"], accuracies["sdpa"])[0]
    ok, why = agrees_with(accuracies["eager"], accuracies["detached"])
    assert not ok, why
