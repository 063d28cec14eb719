import dataclasses
import hashlib
import pickle
import textwrap
from pathlib import Path

import pytest
import torch

from attnbench.case import Case
from attnbench.quality import TASKS, preset
from attnbench.suite import SCHEMA, TOP_KEYS, Hardware, MemoryBudget, SuiteError, load_suite, schema_markdown

SUITES = sorted((Path(__file__).parent.parent / "suites").glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def shapes(cases: list[Case]) -> list[tuple]:
    return [(c.batch, c.heads_q, c.heads_kv, c.seq_q, c.seq_kv, c.head_dim, c.dtype_name, c.mask, c.window, c.pass_)
            for c in cases]


# --- shipped suites ---------------------------------------------------------------


def test_suites_are_shipped():
    assert {p.stem for p in SUITES} >= {"smoke", "long_seq", "masks", "gqa", "decode", "backward"}


@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.stem)
def test_shipped_suite_loads_and_expands(path):
    suite = load_suite(path)
    assert suite.name == path.stem
    assert suite.description
    assert suite.file_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    for device in ("cpu", "cuda"):
        cases = suite.cases(device)
        assert (cases or suite.tasks(device)) and all(c.device == device for c in cases)
        assert len(set(cases)) == len(cases)
        assert suite.settings(device).device == device


def test_smoke_covers_every_feature_on_cpu():
    cases = load_suite(Path(__file__).parent.parent / "suites" / "smoke.yaml").cases("cpu")
    assert len(cases) <= 8
    assert any(c.batch > 1 for c in cases)
    assert any(c.gqa and c.heads_kv > 1 for c in cases)
    assert any(c.causal and c.seq_q < c.seq_kv for c in cases)
    assert {c.dtype for c in cases} >= {torch.float32, torch.bfloat16}
    assert any(c.mask == "sliding_window" for c in cases)
    assert any(c.needs_backward for c in cases)
    assert all(128 <= c.seq_q <= 256 and c.head_dim <= 64 for c in cases)


def test_long_seq_keeps_tokens_and_model_width_on_cuda():
    suite = load_suite(Path(__file__).parent.parent / "suites" / "long_seq.yaml")
    cpu = suite.cases("cpu")
    assert sorted({c.seq_q for c in cpu}) == [512, 1024, 2048, 4096, 8192, 16384]
    assert {(c.batch, c.heads_q, c.head_dim, c.pass_) for c in cpu} == {(1, 8, 64, "fwd")}
    cuda = suite.cases("cuda")
    assert sorted({c.seq_q for c in cuda}) == [1024 * 2**i for i in range(6)]
    assert all(c.batch * c.seq_q == 16384 or (c.batch, c.seq_q) == (1, 32768) for c in cuda)
    assert all(c.heads_q * c.head_dim == 2048 for c in cuda)
    assert {c.dtype_name for c in cuda} == {"bfloat16", "float16"}
    assert {c.pass_ for c in cuda} == {"fwd", "fwd+bwd"}
    assert {c.mask for c in cuda} == {"none", "causal"}


def test_decode_reaches_128k_on_cuda_and_8k_on_cpu():
    suite = load_suite(Path(__file__).parent.parent / "suites" / "decode.yaml")
    for device, longest in (("cpu", 8192), ("cuda", 131072)):
        cases = suite.cases(device)
        assert max(c.seq_kv for c in cases) == longest
        assert all(c.gqa and c.mask == "causal" for c in cases)
        assert any(c.seq_q == 1 and c.seq_kv == 512 for c in cases)
    # Decode calls are tens of microseconds: on CUDA they replay graphs, launch gaps left out.
    assert suite.settings("cuda").timing.cuda_graph and not suite.settings("cpu").timing.cuda_graph


# --- expansion ----------------------------------------------------------------------


def test_product_order_and_builtin_defaults(tmp_path):
    suite = load_suite(write(tmp_path, """
        name: t
        matrix:
          seq: [16, 32]
          dtype: [float32, bfloat16]
    """))
    assert shapes(suite.cases("cpu")) == [
        (1, 8, 8, 16, 16, 64, "float32", "none", None, "fwd"),
        (1, 8, 8, 32, 32, 64, "float32", "none", None, "fwd"),
        (1, 8, 8, 16, 16, 64, "bfloat16", "none", None, "fwd"),
        (1, 8, 8, 32, 32, 64, "bfloat16", "none", None, "fwd"),
    ]


def test_seq_kv_and_heads_kv_default_to_the_query_side(tmp_path):
    suite = load_suite(write(tmp_path, """
        name: t
        defaults: {seq: 64, heads_q: 4}
        matrix:
          seq_q: [16, 64]
          seq_kv: [64, 128]
          heads_kv: [4, 1]
          scale: 0.5
    """))
    cases = suite.cases("cpu")
    assert [(c.seq_q, c.seq_kv) for c in cases[:4]] == [(16, 64), (16, 128), (64, 64), (64, 128)]
    assert [c.heads_kv for c in cases] == [4] * 4 + [1] * 4
    assert all(c.scale == 0.5 for c in cases)
    plain = load_suite(write(tmp_path, "name: t\nmatrix: {seq_q: 8, heads_q: 2}\n")).cases("cpu")
    assert shapes(plain) == [(1, 2, 2, 8, 8, 64, "float32", "none", None, "fwd")]


def test_tokens_and_model_dim(tmp_path):
    suite = load_suite(write(tmp_path, """
        name: t
        matrix:
          seq: [1024, 4096, 32768]
          tokens: 16384
          model_dim: 2048
          head_dim: [64, 128]
    """))
    got = [(c.batch, c.seq_q, c.heads_q, c.head_dim) for c in suite.cases("cpu")]
    assert got == [(16, 1024, 32, 64), (4, 4096, 32, 64), (1, 32768, 32, 64),
                   (16, 1024, 16, 128), (4, 4096, 16, 128), (1, 32768, 16, 128)]


def test_window_dropped_for_other_masks_and_duplicates_removed(tmp_path):
    suite = load_suite(write(tmp_path, """
        name: t
        matrix:
          seq: 64
          mask: [none, sliding_window, causal]
          window: [8, 16]
          dtype: [float32, float32]
    """))
    assert [(c.mask, c.window) for c in suite.cases("cpu")] == [
        ("none", None), ("sliding_window", 8), ("sliding_window", 16), ("causal", None)]


def test_include_cases_merge_over_defaults_not_matrix(tmp_path):
    suite = load_suite(write(tmp_path, """
        name: t
        defaults: {heads_q: 4, seq: 32}
        matrix:
          dtype: bfloat16
          seq: [32, 64]
        include_cases:
          - {seq_q: 1, seq_kv: 512, mask: causal}
          - {dtype: bfloat16}       # the product's first case again
          - {seq: 16}
    """))
    assert shapes(suite.cases("cpu")) == [
        (1, 4, 4, 32, 32, 64, "bfloat16", "none", None, "fwd"),
        (1, 4, 4, 64, 64, 64, "bfloat16", "none", None, "fwd"),
        (1, 4, 4, 1, 512, 64, "float32", "causal", None, "fwd"),
        (1, 4, 4, 16, 16, 64, "float32", "none", None, "fwd"),
    ]


def test_include_cases_alone(tmp_path):
    suite = load_suite(write(tmp_path, """
        name: t
        include_cases:
          - {seq: 8}
        cuda:
          include_cases:
            - {seq: 16}
            - {seq: 32}
    """))
    assert [c.seq_q for c in suite.cases("cpu")] == [8]
    assert [c.seq_q for c in suite.cases("cuda")] == [16, 32]


def test_device_sections_override_the_suite(tmp_path):
    suite = load_suite(write(tmp_path, """
        name: t
        baseline: sdpa
        implementations: {include: ["sdpa*", eager, flex], exclude: sdpa.math}
        defaults: {batch: 2, heads_q: 4}
        matrix:
          seq: [16, 32]
          dtype: [float32, bfloat16]
          mask: [none, causal]
        correctness: {seeds: 5, floors: {float16: 1e-2}}
        timing: {warmup: 7}
        timeout_s: 60
        cuda:
          baseline: sdpa.flash
          implementations: {exclude: []}
          defaults: {batch: 8, dtype: float16}    # section defaults beat the suite's matrix
          matrix:
            seq_kv: [64, 128]                      # replaces seq_kv only; seq_q still comes from seq
          correctness: {floors: {bfloat16: 0.5}}
          timing: {cuda_repeats: 60, cuda_graph: true, cuda_time_ms: 50, warmup_ms: 5}
          memory_budget: 8GiB
    """))
    cpu, cuda = suite.cases("cpu"), suite.cases("cuda")
    assert len(cpu) == 8 and {c.batch for c in cpu} == {2}
    assert {(c.batch, c.dtype_name) for c in cuda} == {(8, "float16")}
    assert [(c.seq_q, c.seq_kv, c.mask) for c in cuda] == [
        (16, 64, "none"), (16, 128, "none"), (32, 64, "none"), (32, 128, "none"),
        (16, 64, "causal"), (16, 128, "causal"), (32, 64, "causal"), (32, 128, "causal")]

    s_cpu, s_cuda = suite.settings("cpu"), suite.settings("cuda")
    assert s_cpu.baseline == suite.defaults.baseline == "sdpa" and s_cuda.baseline == "sdpa.flash"
    assert s_cpu.include == s_cuda.include == ("sdpa*", "eager", "flex")
    assert s_cpu.exclude == ("sdpa.math",) and s_cuda.exclude == ()
    assert s_cpu.selects("sdpa.flash") and not s_cpu.selects("sdpa.math") and not s_cpu.selects("chunked")
    assert s_cuda.selects("sdpa.math")
    assert s_cpu.correctness.seeds == s_cuda.correctness.seeds == 5
    assert s_cpu.correctness.floors == {"float32": 1e-5, "float16": 1e-2, "bfloat16": 1e-2}
    assert s_cuda.correctness.floors == {"float32": 1e-5, "float16": 1e-2, "bfloat16": 0.5}
    assert (s_cuda.timing.warmup, s_cuda.timing.cuda_repeats, s_cuda.timing.cuda_graph) == (7, 60, True)
    assert (s_cuda.timing.cuda_time_ms, s_cuda.timing.warmup_ms, s_cuda.timing.cuda_max_repeats) == (50, 5, 10_000)
    assert (s_cpu.timing.cuda_repeats, s_cpu.timing.cuda_graph, s_cpu.timing.processes) == (10, False, 2)
    assert (s_cpu.timing.warmup_ms, s_cpu.timing.cuda_time_ms) == (25.0, 100.0)
    assert s_cpu.timeout_s == s_cuda.timeout_s == suite.defaults.timeout_s == 60.0
    assert s_cpu.memory_budget == suite.defaults.memory_budget == MemoryBudget(fraction=0.8)
    assert s_cuda.memory_budget.limit(10**12) == 8 * 2**30
    # The suite's own settings are the top level's alone: no device section reaches them.
    assert suite.defaults == dataclasses.replace(s_cpu, device="") and suite.defaults.exclude == ("sdpa.math",)


def test_quality_suite_trains_every_task_on_both_devices():
    suite = load_suite(Path(__file__).parent.parent / "suites" / "quality.yaml")
    for device in ("cpu", "cuda"):
        assert [t.task for t in suite.tasks(device)] == list(TASKS)
        assert all(t.device == device and len(t.seeds) >= 3 and t == dataclasses.replace(
            preset(t.task, device), seeds=t.seeds, threads=t.threads) for t in suite.tasks(device))
        settings = suite.settings(device)
        assert all(settings.selects(name) for name in ("eager", "sdpa", "chunked", "performer.m64", "linformer.r64",
                                                       "int8"))


def test_tasks_with_device_sections(tmp_path):
    suite = load_suite(write(tmp_path, """
        name: t
        tasks:
          names: [recall, compare, recall]
          steps: 50
        cpu:
          tasks: {size: tiny, seeds: 4}
        cuda:
          tasks: {names: listops, threads: null}
    """))
    assert suite.cases("cpu") == [] == suite.cases("cuda")
    cpu, cuda = suite.tasks("cpu"), suite.tasks("cuda")
    assert cpu == [dataclasses.replace(preset(task, "cpu", "tiny"), steps=50, seeds=(0, 1, 2, 3), threads=1)
                   for task in ("recall", "compare")]
    assert cuda == [dataclasses.replace(preset("listops", "cuda"), steps=50, threads=None)]
    mixed = load_suite(write(tmp_path, "name: t\nmatrix: {seq: 8}\ntasks: {}\n", "mixed.yaml"))
    assert len(mixed.cases("cpu")) == 1 and mixed.tasks("cpu") == [
        dataclasses.replace(preset(task, "cpu"), threads=1) for task in TASKS]
    assert load_suite(write(tmp_path, "name: t\nmatrix: {seq: 8}\n", "plain.yaml")).tasks("cuda") == []


def test_settings_helpers(tmp_path):
    suite = load_suite(write(tmp_path, "name: t\nmatrix: {seq: 8}\nmemory_budget: 0.5\n"))
    settings = suite.settings("cpu")
    assert settings.selects("anything")
    assert settings.memory_budget.limit(1000) == 500
    assert settings.correctness.tolerance(torch.bfloat16, 0.01) == pytest.approx(2.0 * 0.01 + 1e-2)
    assert settings.correctness.tolerance("float32", 0.0) == 1e-5
    with pytest.raises(ValueError, match="device 'tpu'"):
        suite.cases("tpu")


def test_anchors_and_merge_keys_work(tmp_path):
    suite = load_suite(write(tmp_path, """
        name: t
        defaults: &shape {heads_q: 4, head_dim: 16, seq: 32}
        matrix: {mask: [none, causal]}
        cuda:
          defaults:
            <<: *shape
            dtype: bfloat16
          memory_budget: 1.5 GB
    """))
    assert {(c.heads_q, c.head_dim, c.seq_q, c.dtype_name) for c in suite.cases("cuda")} == {(4, 16, 32, "bfloat16")}
    assert suite.settings("cuda").memory_budget == MemoryBudget(nbytes=1_500_000_000)


def test_exponent_floats_without_a_dot(tmp_path):
    suite = load_suite(write(tmp_path, "name: t\nmatrix: {seq: 8}\ncorrectness: {floors: {float32: 3e-6}}\n"))
    assert suite.defaults.correctness.floors["float32"] == 3e-6


def test_cases_returns_a_fresh_list(tmp_path):
    suite = load_suite(write(tmp_path, "name: t\nmatrix: {seq: 8}\n"))
    suite.cases("cpu").clear()
    assert len(suite.cases("cpu")) == 1


def test_hardware_section(tmp_path):
    suite = load_suite(write(tmp_path, """
        name: t
        matrix: {seq: 8}
        hardware:
          gpu_type: A100-80G
          gpus_per_job: 4
          partition: gpu_long
    """))
    assert suite.hardware == Hardware(gpu_type="A100-80G", gpus_per_job=4, partition="gpu_long")
    assert load_suite(write(tmp_path, "name: t\nmatrix: {seq: 8}\n", "plain.yaml")).hardware == Hardware()


# --- errors -------------------------------------------------------------------------


ERRORS = {
    "bad dtype": ("""
        name: t
        matrix:
          seq: 8
          dtype: [float32, bf32]
    """, 4, "matrix.dtype", "matrix.dtype 'bf32' is not one of float32, float16, bfloat16"),
    "unknown axis": ("""
        name: t
        matrix:
          seq: 8
          head_dims: 64
    """, 4, "matrix.head_dims", "unknown key 'head_dims' in matrix (did you mean 'head_dim'?); allowed: batch,"),
    "unknown top-level key": ("""
        name: t
        matrix: {seq: 8}
        timeing: {warmup: 1}
    """, 3, "timeing", "unknown key 'timeing' at the top level (did you mean 'timing'?); allowed: name,"),
    "unknown key in a section": ("""
        name: t
        matrix: {seq: 8}
        cuda:
          timing:
            cuda_repeat: 60
    """, 5, "cuda.timing.cuda_repeat", "unknown key 'cuda_repeat' in cuda.timing (did you mean 'cuda_repeats'?)"),
    "wrong type": ("""
        name: t
        matrix: {seq: 8}
        timing:
          warmup: three
    """, 4, "timing.warmup", "timing.warmup must be an integer >= 0, got string 'three'"),
    "boolean for an integer": ("""
        name: t
        matrix: {seq: 8, batch: [2, true]}
    """, 2, "matrix.batch", "matrix.batch must be an integer >= 1, got boolean true"),
    "below minimum": ("""
        name: t
        matrix: {seq: 8}
        timing: {processes: 1}
    """, 3, "timing.processes", "timing.processes must be an integer >= 2, got 1"),
    "list in defaults": ("""
        name: t
        defaults:
          seq: [8, 16]
    """, 3, "defaults.seq", "defaults.seq must be a single value, got a list; lists belong in matrix"),
    "matrix not a mapping": ("""
        name: t
        matrix: [seq, 8]
    """, 2, "matrix", "matrix must be a mapping, got a list"),
    "two spellings of seq_q": ("""
        name: t
        matrix:
          seq: 8
          seq_q: 4
    """, 4, "matrix.seq_q", "matrix sets both seq and seq_q, which both set seq_q; use one"),
    "missing name": ("""
        # a comment
        matrix: {seq: 8}
    """, 2, "name", "missing required key 'name'"),
    "no cases": ("""
        name: t
        defaults: {seq: 8}
    """, 1, "matrix", "the suite defines no cases on cpu: add a matrix or include_cases"),
    "no sequence length": ("""
        name: t
        matrix: {batch: 2}
    """, 2, "matrix", "matrix sets no sequence length: give seq (or seq_q) in matrix or defaults"),
    "bad memory budget": ("""
        name: t
        matrix: {seq: 8}
        memory_budget: 8G
    """, 3, "memory_budget", "memory_budget must be a fraction in (0, 1] of free memory, or a size such as '8GiB'"),
    "memory budget above 1": ("""
        name: t
        matrix: {seq: 8}
        memory_budget: 2
    """, 3, "memory_budget", "memory_budget 2 is not a fraction in (0, 1]; write a size with a unit, e.g. '8GiB'"),
    "floors dtype": ("""
        name: t
        matrix: {seq: 8}
        correctness:
          floors: {bf16: 0.1}
    """, 4, "correctness.floors.bf16", "correctness.floors: 'bf16' is not one of float32, float16, bfloat16 "
        "(did you mean 'bfloat16'?)"),
    "bad name": ("""
        name: my suite/1
        matrix: {seq: 8}
    """, 1, "name", "name 'my suite/1' must be letters, digits, '.', '_' and '-'"),
    "bad baseline": ("""
        name: t
        matrix: {seq: 8}
        baseline: SDPA
    """, 3, "baseline", "baseline 'SDPA' is not an implementation name"),
    "duplicate key": ("""
        name: t
        matrix: {seq: 8}
        matrix: {seq: 16}
    """, 3, "", "duplicate key 'matrix' (first at line 2)"),
    "malformed YAML": ("""
        name: t
        matrix: [seq
          dtype: float32
    """, 3, "", "malformed YAML: expected ',' or ']', but got ':' (while parsing a flow sequence at line 2)"),
    "bad indentation": ("""
        name: t
        matrix:
          seq: 8
         dtype: float32
    """, 4, "", "malformed YAML: "),
    "top level not a mapping": ("""
        - name: t
        - matrix: {seq: 8}
    """, 1, "", "the top level must be a mapping of suite keys (name, description,"),
    "scalar top level": ("""
        # just words
        smoke
    """, 2, "", f"the top level must be a mapping of suite keys ({', '.join(TOP_KEYS)}), found string"),
    "empty file": ("", 1, "", "the file is empty"),
    "comments only": ("# nothing yet\n", 1, "", "the file is empty"),
    # Impossible shapes: the line is the matrix item (or include_cases entry) responsible.
    "heads not a multiple": ("""
        name: t
        defaults: {heads_q: 6}
        matrix:
          seq: 8
          heads_kv:
            - 3
            - 4
    """, 7, "matrix.heads_kv", "matrix.heads_kv: impossible case batch=1 heads_q=6 heads_kv=4 seq_q=8 seq_kv=8 "
        "head_dim=64 dtype=float32 mask=none pass=fwd: heads_q (6) must be a multiple of heads_kv (4); heads_q from "
        "defaults.heads_q (line 2), heads_kv from matrix.heads_kv (line 7)"),
    "causal with seq_q > seq_kv": ("""
        name: t
        matrix:
          seq_q: [4, 16]
          seq_kv: 8
          mask: [none, causal]
    """, 5, "matrix.mask", "matrix.mask: impossible case batch=1 heads_q=8 heads_kv=8 seq_q=16 seq_kv=8 head_dim=64 "
        "dtype=float32 mask=causal pass=fwd: mask causal with seq_q (16) > seq_kv (8)"),
    "sliding window without window": ("""
        name: t
        matrix: {seq: 8, mask: sliding_window}
    """, 2, "matrix.mask", "matrix.mask: impossible case"),
    "head_dim 0": ("""
        name: t
        matrix:
          seq: 8
          head_dim: [64, 0]
    """, 4, "matrix.head_dim", "matrix.head_dim must be an integer >= 1, got 0"),
    "seq 0": ("""
        name: t
        matrix:
          seq: 0
    """, 3, "matrix.seq", "matrix.seq must be an integer >= 1, got 0"),
    "model_dim not a multiple": ("""
        name: t
        matrix: {seq: 8, model_dim: 1000}
    """, 2, "matrix.model_dim", "matrix.model_dim: model_dim 1000 is not a multiple of head_dim 64"),
    "impossible include case": ("""
        name: t
        include_cases:
          - {seq: 8}
          - {seq_q: 9, seq_kv: 8, mask: causal}
    """, 4, "include_cases[1].mask", "include_cases[1].mask: impossible case"),
    "error in the cuda section": ("""
        name: t
        matrix: {seq: 8}
        cuda:
          defaults: {heads_q: 16}
          matrix:
            heads_kv: [16, 3]
    """, 6, "cuda.matrix.heads_kv", "cuda.matrix.heads_kv: impossible case batch=1 heads_q=16 heads_kv=3"),
    "section inside a section": ("""
        name: t
        matrix: {seq: 8}
        cpu:
          cuda: {}
    """, 4, "cpu.cuda", "unknown key 'cuda' in cpu"),
    "unknown hardware key": ("""
        name: t
        matrix: {seq: 8}
        hardware:
          gpu_typ: H100
    """, 4, "hardware.gpu_typ", "unknown key 'gpu_typ' in hardware (did you mean 'gpu_type'?); allowed: gpu_type, "
                               "gpus_per_job, partition"),
    "gpu type alternatives": ("""
        name: t
        matrix: {seq: 8}
        hardware: {gpu_type: "h100|a100"}
    """, 3, "hardware.gpu_type", "hardware.gpu_type 'h100|a100' must be letters, digits, '.', '_' and '-'"),
    "no gpus per job": ("""
        name: t
        matrix: {seq: 8}
        hardware:
          partition: gpu
          gpus_per_job: 0
    """, 5, "hardware.gpus_per_job", "hardware.gpus_per_job must be an integer >= 1, got 0"),
    "hardware not a mapping": ("""
        name: t
        matrix: {seq: 8}
        hardware: H100
    """, 3, "hardware", "hardware must be a mapping, got string 'H100'"),
    "hardware in a device section": ("""
        name: t
        matrix: {seq: 8}
        cuda:
          hardware: {gpu_type: H100}
    """, 4, "cuda.hardware", "unknown key 'hardware' in cuda"),
    "unknown task key": ("""
        name: t
        tasks:
          step: 10
    """, 3, "tasks.step", "unknown key 'step' in tasks (did you mean 'steps'?); allowed: names, size, seeds"),
    "unknown task": ("""
        name: t
        tasks:
          names:
            - listops
            - recal
    """, 5, "tasks.names", "tasks.names: string 'recal' is not one of listops, recall, compare (did you mean "
                         "'recall'?)"),
    "no task named": ("""
        name: t
        tasks: {names: []}
    """, 2, "tasks.names", "tasks.names must be a task name or a non-empty list of them (listops, recall, "
                         "compare), got a list"),
    "too few seeds": ("""
        name: t
        tasks: {seeds: 2}
    """, 2, "tasks.seeds", "tasks.seeds must be an integer >= 3, got 2"),
    "too few steps": ("""
        name: t
        tasks: {steps: 2}
    """, 2, "tasks.steps", "tasks.steps must be an integer >= 3, got 2"),
    "no threads": ("""
        name: t
        tasks: {threads: 0}
    """, 2, "tasks.threads", "tasks.threads must be an integer >= 1 or null, got 0"),
    "unknown task size": ("""
        name: t
        tasks: {}
        cuda:
          tasks: {size: huge}
    """, 4, "cuda.tasks.size", "cuda.tasks.size 'huge' is not one of tiny, cpu, cuda"),
    "tasks not a mapping": ("""
        name: t
        tasks: [listops]
    """, 2, "tasks", "tasks must be a mapping, got a list"),
    "tasks on one device only": ("""
        name: t
        cpu:
          tasks: {}
    """, 1, "matrix", "the suite defines no cases on cuda: add a matrix or include_cases, or declare tasks"),
    "too many cases": ("""
        name: t
        matrix:
          seq: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
          batch: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
          heads_q: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
          head_dim: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
          scale: [0.1, 0.2]
    """, 2, "matrix", "matrix expands to 20000 cases on cpu, more than 10000"),
}


@pytest.mark.parametrize("text,line,field,message", ERRORS.values(), ids=ERRORS.keys())
def test_errors_name_file_line_and_field(tmp_path, text, line, field, message):
    path = write(tmp_path, text)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    err = info.value
    assert str(err).startswith(f"{path}:{line}: {message}"), str(err)
    assert (err.path, err.line) == (str(path), line)
    if field:
        assert err.field == field


def test_python_tags_are_rejected_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = write(tmp_path, f"""
        name: t
        matrix:
          seq: !!python/object/apply:os.system ["touch {marker}"]
    """)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    assert str(info.value).startswith(f"{path}:3: tag '!!python/object/apply:os.system' is not allowed")
    assert not marker.exists()


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    assert str(info.value) == f"{path}: no such suite file"
    assert info.value.line is None


def test_not_utf8(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_bytes(b"name: t\ndescription: \xff\n")
    with pytest.raises(SuiteError, match=r"s\.yaml:2: the file is not UTF-8 text"):
        load_suite(path)


def test_suite_error_survives_pickling():
    err = pickle.loads(pickle.dumps(SuiteError("x.yaml", 3, "matrix.seq", "bad")))
    assert (str(err), err.line, err.field) == ("x.yaml:3: bad", 3, "matrix.seq")


# --- schema -------------------------------------------------------------------------


def test_schema_markdown_documents_every_key():
    text = schema_markdown()
    for title, keys in SCHEMA.items():
        assert f"### {title}" in text
        for name, key in keys.items():
            assert key.doc and key.describe()
            assert f"| `{name}` |" in text
    assert "one of fwd, bwd, fwd+bwd" in text


# --- model presets ----------------------------------------------------------------


def test_model_axis_expands_one_set_of_cases_per_model(tmp_path):
    suite = load_suite(write(tmp_path, """
        name: m
        defaults: {seq: 64, model: qwen2.5-7b}
        matrix:
          model: [gemma-2-9b, llama-3.1-8b, mistral-7b]
          dtype: [float32, bfloat16]
        cuda:
          include_cases:
            - {model: gpt-oss-20b, seq: 128}
            - {head_dim: 64}
    """))
    heads = [(c.heads_q, c.heads_kv, c.head_dim, c.dtype_name) for c in suite.cases("cpu")]
    # llama-3.1-8b and mistral-7b share a shape: one set of cases, which both name.
    assert heads == [(16, 8, 256, "float32"), (32, 8, 128, "float32"), (16, 8, 256, "bfloat16"),
                     (32, 8, 128, "bfloat16")]
    models = suite.models("cpu")
    assert list(models) == ["gemma-2-9b", "llama-3.1-8b", "mistral-7b"]
    assert models["llama-3.1-8b"] == models["mistral-7b"] == suite.cases("cpu")[1::2]
    cuda = suite.cases("cuda")
    assert (cuda[-2].heads_q, cuda[-2].head_dim, cuda[-2].seq_q) == (64, 64, 128)
    # A more specific axis replaces the default preset's head_dim: the case keeps its other heads but is not qwen's.
    assert (cuda[-1].heads_q, cuda[-1].heads_kv, cuda[-1].head_dim) == (28, 4, 64)
    assert "qwen2.5-7b" not in suite.models("cuda") and suite.models("cuda")["gpt-oss-20b"] == [cuda[-2]]


def test_validate_names_the_models_of_a_suite(tmp_path, capsys):
    from attnbench.cli import main

    path = write(tmp_path, """
        name: m
        matrix: {seq: 64, model: [llama-3.1-8b, mistral-7b]}
    """)
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2 cpu cases" not in out and "1 cpu cases" in out
    assert "models on cpu and cuda: llama-3.1-8b 1 case, mistral-7b 1 case (those of llama-3.1-8b)" in out


MODEL_ERRORS = {
    "unknown model in a matrix list": ("""
        name: m
        matrix:
          seq: 64
          model:
            - llama-3.1-8b
            - lama-3.1-8b
    """, 6, "matrix.model", "matrix.model: unknown model 'lama-3.1-8b' (did you mean 'llama-3.1-8b'"),
    "unknown model in an include_cases entry": ("""
        name: m
        include_cases:
          - {seq: 64, model: gpt-oss}
    """, 3, "include_cases[0].model", "include_cases[0].model: unknown model 'gpt-oss' (did you mean"),
    "model and heads_q in one mapping": ("""
        name: m
        matrix: {seq: 64, model: mistral-7b, heads_q: 8}
    """, 2, "matrix.heads_q", "matrix sets both model and heads_q, which both set heads_q; use one"),
    "model not a string": ("""
        name: m
        matrix: {seq: 64, model: 7}
    """, 2, "matrix.model", "matrix.model must be a preset name, got integer 7"),
}


@pytest.mark.parametrize("text,line,field,message", MODEL_ERRORS.values(), ids=MODEL_ERRORS.keys())
def test_model_errors_name_file_line_and_field(tmp_path, text, line, field, message):
    path = write(tmp_path, text)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    assert str(info.value).startswith(f"{path}:{line}: {message}"), str(info.value)
    assert info.value.field == field
