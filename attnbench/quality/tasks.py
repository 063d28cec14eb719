"""Synthetic long-range classification tasks, generated in-process from a seed.

Every task turns ``(count, seq_len, vocab, rng)`` into int64 tokens
``(count, seq_len)`` and int64 labels ``(count,)``. The token the model
classifies always sits at the last position (a CLS token, or recall's query),
so one model reads every task the same way. Nothing is downloaded: the same
numpy ``Generator`` state gives the same data on any machine.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Generate = Callable[[int, int, int, np.random.Generator], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class TaskSpec:
    """One synthetic task: what it asks, its classes, and the smallest vocabulary and length it needs."""

    name: str
    description: str
    num_classes: int
    generate: Generate
    min_vocab: Callable[[int], int]
    """Smallest ``vocab`` the generator accepts for a given ``seq_len``."""
    min_seq_len: int


# --- listops ------------------------------------------------------------------------------------------------------

LISTOPS_OPS: dict[str, Callable[[list[int]], int]] = {
    "MAX": max,
    "MIN": min,
    # The median of an even count is the mean of the middle two, rounded down (LRA's int(np.median)).
    "MED": lambda args: int(statistics.median(args)),
    "SUM_MOD": lambda args: sum(args) % 10,
}
"""ListOps' operators (Nangia & Bowman, 2018; LRA), each as the function of its digit arguments."""
LISTOPS_OPEN = {name: 10 + i for i, name in enumerate(LISTOPS_OPS)}
"""Token of each bracketed operator, ``[MAX`` ... ``[SUM_MOD``; digits 0-9 are their own tokens."""
LISTOPS_CLOSE = 14
LISTOPS_CLS = 15
LISTOPS_PAD = 16
LISTOPS_MAX_ARGS = 5
LISTOPS_MAX_DEPTH = 6
LISTOPS_LEAF_P = 0.15
"""Chance that a non-root node with room for an operator is a digit anyway: small, so trees fill their budget."""


def listops_value(tokens: list[int]) -> int:
    """Evaluate one expression written in listops tokens, e.g. ``[MAX 3 [MIN 4 7 ] ]`` -> 4."""
    names = {token: name for name, token in LISTOPS_OPEN.items()}
    stack: list[list] = [[]]
    for token in tokens:
        if token in names:
            stack.append([names[token]])
        elif token == LISTOPS_CLOSE:
            name, *args = stack.pop()
            stack[-1].append(LISTOPS_OPS[name](args))
        else:
            stack[-1].append(token)
    (value,) = stack[0]
    return value


def _listops_expression(rng: np.random.Generator, budget: int, depth: int) -> tuple[list[int], int]:
    """A random expression of at most ``budget`` tokens, and its value."""
    # An operator needs at least four tokens: itself, two digits, the closing bracket.
    if budget < 4 or depth == LISTOPS_MAX_DEPTH or (depth > 0 and rng.random() < LISTOPS_LEAF_P):
        digit = int(rng.integers(10))
        return [digit], digit
    name = list(LISTOPS_OPS)[rng.integers(len(LISTOPS_OPS))]
    inner = budget - 2
    count = int(rng.integers(2, min(LISTOPS_MAX_ARGS, inner) + 1))
    # Split the inner budget into `count` parts of at least one token each.
    cuts = np.sort(rng.choice(np.arange(1, inner), size=count - 1, replace=False))
    parts = np.diff(np.concatenate(([0], cuts, [inner])))
    tokens, args = [LISTOPS_OPEN[name]], []
    for part in parts:
        child, value = _listops_expression(rng, int(part), depth + 1)
        tokens += child
        args.append(value)
    tokens.append(LISTOPS_CLOSE)
    return tokens, LISTOPS_OPS[name](args)


def generate_listops(count: int, seq_len: int, vocab: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Nested MAX/MIN/MED/SUM_MOD expressions over digits; the label is the value (10 classes).

    Each expression gets a budget drawn between half and all of the
    sequence, so the answer depends on tokens spread over most of it. Left
    padded; the CLS token is last.
    """
    tokens = np.full((count, seq_len), LISTOPS_PAD, dtype=np.int64)
    labels = np.empty(count, dtype=np.int64)
    room = seq_len - 1
    for row in range(count):
        expression, labels[row] = _listops_expression(rng, int(rng.integers(room // 2, room + 1)), 0)
        tokens[row, room - len(expression) : room] = expression
    tokens[:, -1] = LISTOPS_CLS
    return tokens, labels


# --- associative recall --------------------------------------------------------------------------------------------

RECALL_VALUES = 10
"""Values are tokens 0-9 and the classes; keys follow the padding token."""
RECALL_PAD = RECALL_VALUES


def recall_pairs(seq_len: int) -> int:
    """Key-value pairs that fit before the query."""
    return (seq_len - 1) // 2


def generate_recall(count: int, seq_len: int, vocab: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``k1 v1 k2 v2 ... kn vn q``: distinct keys, then one of them again; the label is its value (10 classes).

    The queried pair is uniform over the sequence, so the answer is on
    average half a sequence away. An even ``seq_len`` starts with one pad.
    """
    pairs = recall_pairs(seq_len)
    first_key = RECALL_PAD + 1
    # Distinct keys per row: the first `pairs` columns of a random permutation of all keys.
    keys = rng.permuted(np.tile(np.arange(first_key, vocab), (count, 1)), axis=1)[:, :pairs]
    values = rng.integers(RECALL_VALUES, size=(count, pairs))
    asked = rng.integers(pairs, size=count)
    rows = np.arange(count)
    tokens = np.full((count, seq_len), RECALL_PAD, dtype=np.int64)
    start = seq_len - 1 - 2 * pairs
    tokens[:, start:-1:2] = keys
    tokens[:, start + 1 : -1 : 2] = values
    tokens[:, -1] = keys[rows, asked]
    return tokens, values[rows, asked]


# --- compare -------------------------------------------------------------------------------------------------------

COMPARE_CLS = 0
COMPARE_FIRST = 1
"""Digits 0-9 marked in the first quarter are tokens 1-10; in the last quarter, 11-20; filler is the rest."""
COMPARE_SECOND = 11
COMPARE_FIRST_FILLER = 21


def generate_compare(count: int, seq_len: int, vocab: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Filler with a marked digit in the first quarter and another in the last; label 1 if the first is greater.

    The two digits differ and are at least half a sequence apart; half the
    rows are 1 (the pairs are symmetric).
    """
    tokens = rng.integers(COMPARE_FIRST_FILLER, vocab, size=(count, seq_len))
    first = rng.integers(10, size=count)
    # A different digit: shift by 1..9 around the circle of digits.
    second = (first + rng.integers(1, 10, size=count)) % 10
    quarter = (seq_len - 1) // 4
    rows = np.arange(count)
    tokens[rows, rng.integers(quarter, size=count)] = COMPARE_FIRST + first
    tokens[rows, rng.integers(seq_len - 1 - quarter, seq_len - 1, size=count)] = COMPARE_SECOND + second
    tokens[:, -1] = COMPARE_CLS
    return tokens, (first > second).astype(np.int64)


TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (
    TaskSpec("listops", "ListOps: nested MAX/MIN/MED/SUM_MOD expressions over digits, bracketed; predict the value.",
             num_classes=10, generate=generate_listops, min_vocab=lambda seq_len: LISTOPS_PAD + 1, min_seq_len=8),
    TaskSpec("recall", "Associative recall: distinct key-value pairs, then a key; predict its value.",
             num_classes=RECALL_VALUES, generate=generate_recall,
             min_vocab=lambda seq_len: RECALL_PAD + 1 + recall_pairs(seq_len), min_seq_len=5),
    TaskSpec("compare",
             "Binary: is the digit marked in the first quarter of a filler sequence greater than the one in the last?",
             num_classes=2, generate=generate_compare,
             min_vocab=lambda seq_len: COMPARE_FIRST_FILLER + 2, min_seq_len=9),
)}
"""The tasks by name (each spec names itself, so the key is not written twice)."""
