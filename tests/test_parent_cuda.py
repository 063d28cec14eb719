"""The runner's own process never touches CUDA: device names and free memory come from a subprocess."""

import pytest
import torch

from attnbench import hardware
from attnbench.cli import build_parser
from attnbench.run_command import CUDA_CONTEXT_BYTES, build_spec

SUITE = """\
name: parent-cuda
implementations: {include: [eager]}
matrix: {seq: [64]}
memory_budget: 0.5
"""
GPU = {"index": 0, "name": "NVIDIA H200 NVL", "uuid": "GPU-00000000-0000-0000-0000-000000000000",
       "memory_bytes": 150 * 2**30, "free_bytes": 140 * 2**30, "capability": "9.0", "multiprocessors": 132,
       "l2_cache_bytes": 60 * 2**20, "peak": None}


def test_a_cuda_run_is_planned_without_a_cuda_context_in_the_parent(tmp_path, monkeypatch):
    def tripwire(*args, **kwargs):
        raise AssertionError("the parent process touched CUDA")

    for name in ("get_device_name", "get_device_properties", "mem_get_info", "init", "_lazy_init", "current_device",
                 "memory_reserved", "memory_allocated", "synchronize"):
        monkeypatch.setattr(torch.cuda, name, tripwire)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(hardware, "_probe", lambda visible: [GPU])
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    args = build_parser().parse_args(["run", str(suite), "--device", "cuda", "--output", str(tmp_path / "out"),
                                     "--no-measure-peaks"])
    spec, _ = build_spec(args)
    assert spec.options.device_name == "NVIDIA H200 NVL"
    processes = spec.options.timing.processes
    assert spec.options.memory_budget_bytes == pytest.approx(0.5 * (GPU["free_bytes"] - processes * CUDA_CONTEXT_BYTES),
                                                             rel=1e-9)
