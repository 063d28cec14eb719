"""``attnbench new-plugin NAME``: a plugin package to start from, correct and tested from the first commit.

``scaffold_plugin("mylib", Path("."))`` writes::

    attnbench-mylib/
      pyproject.toml                     PEP 621; entry point group "attnbench"; a test extra
      README.md
      src/attnbench_mylib/__init__.py    mylib.attention: a working placeholder (torch SDPA), declared truthfully
      tests/conftest.py                  `pytest` alone runs the conformance kit on mylib.attention
      tests/test_conformance.py          a registration test and an example test on the kit's fixtures

The implementation passes attnbench's conformance kit as written, so an author
replaces its body with their kernel and finds out at once what they broke.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

from attnbench.errors import UserError

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
"""A plugin name: a lower-case Python identifier (it names the package, the entry point and the implementation)."""

PYPROJECT = """\
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "attnbench-$name"
version = "0.1.0"
description = "The $name.attention implementation for attnbench."
readme = "README.md"
requires-python = ">=3.10"
# attnbench brings torch; pin torch yourself if your kernel needs a particular build.
dependencies = ["attnbench"]

[project.optional-dependencies]
# attnbench[pytest]: pytest and pytest-benchmark, for the conformance kit (`pytest --attnbench-impl NAME`).
test = ["attnbench[pytest]"]

# What attnbench looks for: entry points of group "attnbench", naming a module whose
# @hookimpl functions register implementations.
[project.entry-points.attnbench]
$name = "attnbench_$name"

[tool.setuptools.packages.find]
where = ["src"]

[tool.pytest.ini_options]
testpaths = ["tests"]
"""

MODULE = '''\
"""attnbench-$name: the ``$name.attention`` implementation for attnbench.

A working placeholder: torch's ``scaled_dot_product_attention`` with the case's
mask, correct and declared truthfully. Put your kernel in ``build`` in its place
and keep the declarations in ``attnbench_implementations`` true: attnbench holds
you to them. ``workspace_bytes`` tells attnbench how much memory a call needs,
so a run skips what would not fit its budget.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench import Case, Implementation, Unsupported, hookimpl
from attnbench.measure.memory import fused_workspace_bytes

MASKS = {"none", "causal", "sliding_window"}


def visible(case: Case) -> torch.Tensor | None:
    """True where query row i may see key j; None when every key is visible.

    Bottom-right aligned: query i sits at key position ``i + seq_kv - seq_q``,
    so with fewer queries than keys (decoding) the last query sees every key.
    """
    if case.mask == "none":
        return None
    query_pos = torch.arange(case.seq_kv - case.seq_q, case.seq_kv, device=case.device)[:, None]
    key_pos = torch.arange(case.seq_kv, device=case.device)[None, :]
    allowed = key_pos <= query_pos
    if case.mask == "sliding_window":
        allowed &= key_pos > query_pos - case.window  # the window includes the query's own position
    return allowed


def build(case: Case):
    """Return ``(q, k, v) -> out`` for ``case``; q is (B, Hq, Sq, D), k and v are (B, Hkv, Skv, D).

    Called once per case and never timed: per-case work (masks, compilation,
    workspace) belongs here, so the returned function only computes.
    """
    if case.mask not in MASKS:
        # attnbench never asks (the declared masks rule it out), but build is public: say why.
        raise Unsupported(f"mask {case.mask} is not implemented by $name.attention")
    allowed = visible(case)  # built once here: a boolean (Sq, Skv) mask, broadcast over batch and heads
    scale = case.softmax_scale

    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # The placeholder kernel: replace this call with yours.
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale, enable_gqa=case.gqa)

    return attention


def workspace_bytes(case: Case) -> int:
    """Memory a call needs beyond q, k, v and the output (and their gradients), which attnbench adds.

    The placeholder is a fused kernel given the mask as a tensor, which torch
    turns into an additive mask in the input dtype. Change it with the kernel:
    a close upper bound, as too low lets a case crash and too high skips one that fits.
    """
    mask = 0 if case.mask == "none" else case.seq_q * case.seq_kv * (1 + case.dtype.itemsize)
    return fused_workspace_bytes(case) + mask


@hookimpl
def attnbench_implementations() -> list[Implementation]:
    return [
        Implementation(
            name="$name.attention",
            build=build,
            description="torch's scaled_dot_product_attention, a placeholder for your kernel (attnbench-$name).",
            devices={"cpu", "cuda"},
            dtypes={torch.float32, torch.float16, torch.bfloat16},
            masks=MASKS,  # block_sparse is not declared: attnbench skips those cases without building
            gqa=True,  # accepts heads_kv < heads_q
            cross=True,  # accepts seq_q != seq_kv
            backward=True,  # differentiable w.r.t. q, k and v (autograd through SDPA)
            exact=True,  # exact attention: judged by the pass rule (False: error reported, no verdict)
            memory=workspace_bytes,  # for the memory budget (None: attnbench assumes a fused kernel's workspace)
        )
    ]
'''

CONFTEST = '''\
"""Plain ``pytest`` runs attnbench's conformance kit on this package's implementation."""

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # Before attnbench's own pytest_configure, which adds the kit's tests when an implementation is named.
    if not config.getoption("attnbench_impl"):
        config.option.attnbench_impl = ["$name.attention"]
'''

TEST = '''\
"""$name.attention under attnbench's conformance kit.

    pip install -e '.[test]'
    pytest                                          # the kit on $name.attention (see conftest.py)
    pytest --attnbench-impl $name.attention -k float32 --benchmark-disable

For every case of its grid the implementation declares, the kit checks that it
builds and passes attnbench's correctness rule against float64 (output, and
dQ, dK, dV for backward) with its inputs untouched; a case it refuses must
raise ``Unsupported`` with a reason. With pytest-benchmark the cases are timed
too (``--benchmark-json out.json``: the case fields are in ``extra_info``).
Tests of your own get the kit's fixtures: ``attnbench_impl``,
``attnbench_case``, ``attnbench_inputs`` and ``attnbench_step``.
"""

import torch

from attnbench.plugins import load_registry

IMPL = "$name.attention"


def test_registered_through_its_entry_point():
    registry = load_registry(environ={"ATTNBENCH_PLUGINS": "$name"})
    assert not registry.failures, [(p.name, p.errors) for p in registry.failures]
    assert IMPL in registry.implementations, "not installed? pip install -e '.[test]'"


def test_repeated_calls_give_identical_results(attnbench_step):
    """An example check of your own: same inputs, same output (and gradients), bit for bit."""
    first, second = attnbench_step(), attnbench_step()
    for a, b in zip(_tensors(first), _tensors(second), strict=True):
        assert torch.equal(a, b)


def _tensors(result):
    return result if isinstance(result, tuple) else (result,)
'''

README = """\
# attnbench-$name

An attnbench plugin: the implementation
`$name.attention`, a working placeholder (torch's SDPA) to be replaced by your kernel.

## Install and see it

```bash
pip install -e '.[test]'
attnbench list       # $name.attention appears next to the built-ins
attnbench plugins    # plugin "$name", distribution attnbench-$name 0.1.0
```

## Test it

```bash
pytest                                               # attnbench's conformance kit on $name.attention
pytest --attnbench-impl $name.attention -k float32 --benchmark-disable
pytest --attnbench-impl $name.attention --benchmark-json timings.json
```

Every case the implementation declares must build and pass attnbench's correctness
rule against float64; a case it cannot run must raise `Unsupported("reason")` from
`build`. `tests/test_conformance.py` shows a test of your own on the kit's fixtures.

## Measure it

```bash
attnbench run path/to/suite.yaml --impl '$name.*' --impl sdpa
```

## Make it yours

1. Put your kernel in `build(case)` in `src/attnbench_$name/__init__.py`: per-case work
   (masks, compilation, workspace) there, never timed; return a function of `(q, k, v)`.
2. Declare what it supports (`devices`, `dtypes`, `masks`, `gqa`, `cross`, `backward`,
   `layout`, `out`, `exact`), truthfully: attnbench skips anything else without building,
   and holds you to what you declare.
3. Update `workspace_bytes`, the memory a call needs beyond its inputs and output, so that
   `attnbench run --memory-budget` skips the cases that would not fit (or drop `memory=`
   for a fused kernel's estimate).
4. Run `pytest` after every change.
"""

FILES = {
    "pyproject.toml": PYPROJECT,
    "README.md": README,
    "src/attnbench_$name/__init__.py": MODULE,
    "tests/conftest.py": CONFTEST,
    "tests/test_conformance.py": TEST,
}


def check_plugin_name(name: str) -> None:
    """Raise UserError unless ``name`` is a lower-case Python identifier."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise UserError(
            f"plugin name {name!r} is invalid: use a lower-case Python identifier (letters, digits and "
            "underscores, starting with a letter), e.g. 'mylib'; it names the package attnbench_NAME, "
            "the entry point and the implementation NAME.attention"
        )


def scaffold_plugin(name: str, dest: Path) -> Path:
    """Create the plugin package ``dest/attnbench-<name>/`` and return its path.

    Raises UserError for an invalid name or when that directory already exists
    (nothing is overwritten); ``dest`` is created if missing.
    """
    check_plugin_name(name)
    root = Path(dest) / f"attnbench-{name}"
    try:
        root.mkdir(parents=True)
    except FileExistsError:
        raise UserError(f"{root} already exists; choose another name or directory (nothing was written)") from None
    for template_path, template in FILES.items():
        path = root / Template(template_path).substitute(name=name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(template).substitute(name=name), encoding="utf-8")
    return root
