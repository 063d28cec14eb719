"""Planted ragged and paged defects (tests/fixture_plugins/planted_packed.py) come out incorrect, with the
reason, on the cases where eager is ok: attending across sequences, reading pages in pool order, reading padding;
in process through ``measure`` and once through ``attnbench run``."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnbench.case import Case
from attnbench.measurement import Request, measure
from attnbench.packing import block_table
from attnbench.plugins import load_registry

FIXTURE_PLUGINS = Path(__file__).parent / "fixture_plugins"
RAGGED = {
    "self_causal": Case(3, 4, 4, 64, 64, 32, mask="causal", seqlens_q=(37, 64, 5), seqlens_kv=(37, 64, 5)),
    "gqa_cross_none": Case(3, 8, 2, 40, 48, 32, seqlens_q=(16, 1, 40), seqlens_kv=(48, 33, 40)),
    "self_none_fwd_bwd": Case(2, 2, 1, 70, 70, 32, seqlens_q=(1, 70), seqlens_kv=(1, 70), pass_="fwd+bwd"),
}
PAGED = {
    "decode_p16": Case(4, 8, 2, 1, 70, 32, mask="causal", seqlens_q=(1, 1, 1, 1), seqlens_kv=(37, 17, 70, 1),
                       page_size=16),
    "mixed_p16": Case(3, 4, 1, 20, 100, 32, mask="causal", seqlens_q=(20, 1, 3), seqlens_kv=(20, 45, 100),
                      page_size=16),
    "prefill_p64_none": Case(2, 4, 4, 7, 130, 32, seqlens_q=(7, 1), seqlens_kv=(130, 7), page_size=64),
}
EXPECT = {
    "planted.ignores_cu_seqlens": RAGGED,
    "planted.ignores_block_table": PAGED,
    "planted.reads_padding": PAGED,
}


@pytest.fixture(scope="module")
def registry():
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(FIXTURE_PLUGINS))
        registry = load_registry(environ={"ATTNBENCH_PLUGINS": "", "ATTNBENCH_PLUGIN_MODULES": "planted_packed"})
    assert not registry.failures, [(p.name, p.errors) for p in registry.failures]
    return registry


def _check(registry, name: str, case: Case) -> dict:
    impl = registry.get(name)
    assert impl.declines(case) is None, (name, impl.declines(case))
    return measure(impl, Request(name, case, 0, check_correctness=True, measure_memory=False, measure_time=False))


@pytest.mark.parametrize(("name", "shape"), [(name, shape) for name, cases in EXPECT.items() for shape in cases])
def test_planted_defect_is_incorrect_where_eager_is_ok(registry, name, shape):
    case = EXPECT[name][shape]
    assert _check(registry, "eager", case)["status"] == "ok"
    reply = _check(registry, name, case)
    assert reply["status"] == "incorrect", reply
    assert reply["reason"].startswith("out: rel-L2 error"), reply["reason"]


def test_the_cases_hold_what_the_defects_need(registry):
    from planted_packed import pool_order_table

    # Reading padding differs only where a cache is not whole pages, reading in pool order only where the
    # harness's table is not the pool-order one.
    for case in PAGED.values():
        assert any(n % case.page_size for n in case.seqlens_kv)
        assert not torch.equal(block_table(case, 0), pool_order_table(case))


def test_planted_plugins_decline_what_they_do_not_claim(registry):
    assert "paged" in registry.get("planted.ignores_cu_seqlens").declines(PAGED["decode_p16"])
    assert "ragged" in registry.get("planted.ignores_block_table").declines(RAGGED["self_causal"])


SUITE = """\
name: planted-packed
implementations:
  include: [eager, planted.*]
defaults: {heads_q: 4, heads_kv: 2, head_dim: 16, mask: causal}
include_cases:
  - {seqlens: [37, 5, 20]}
  - {batch_spec: "1q20_2q1s45", page_size: 16}
timing: {warmup: 1, min_time_s: 0.01, repeats: 1}
"""


def test_attnbench_run_judges_the_planted_defects_incorrect(fixture_plugins, tmp_path):
    env = fixture_plugins("planted_packed")
    suite = tmp_path / "planted.yaml"
    suite.write_text(SUITE)
    proc = subprocess.run([sys.executable, "-m", "attnbench", "run", str(suite), "--output", str(tmp_path / "out"),
                           "--quiet"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    records = json.loads((tmp_path / "out" / "results.json").read_text())["records"]
    status = {(r["impl"], r["case"].get("page_size")): r["status"] for r in records}
    assert status[("eager", None)] == status[("eager", 16)] == "ok"
    assert status[("planted.ignores_cu_seqlens", None)] == "incorrect"
    assert status[("planted.ignores_block_table", 16)] == status[("planted.reads_padding", 16)] == "incorrect"
    assert status[("planted.ignores_cu_seqlens", 16)] == status[("planted.ignores_block_table", None)] == "unsupported"
