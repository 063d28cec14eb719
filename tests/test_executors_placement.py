"""Placement and configuration as pure functions: GPU slots from fake device lists, jobs, Ray feasibility, telemetry."""

import argparse

import pytest

from attnbench.errors import UserError
from attnbench.executors import ExecutorConfig
from attnbench.executors.placement import Gpu, by_case, chunk, device_slots, gres_gpus, ray_request, unfit_reason
from attnbench.suite import Hardware
from attnbench.telemetry import parse_smi_line, throttle_names


def gpus(n, name="NVIDIA H100 80GB HBM3"):
    return [Gpu(i, name, f"GPU-0000000{i}-0000-0000-0000-000000000000") for i in range(n)]


def test_cpu_is_one_unpinned_slot_whatever_gpus_exist():
    (slot,) = device_slots("cpu", "0,1", gpus(2))
    assert slot.cuda_visible_devices is None and slot.gpu is None


def test_one_slot_per_gpu_pinned_by_index():
    slots = device_slots("cuda", None, gpus(4))
    assert [s.cuda_visible_devices for s in slots] == ["0", "1", "2", "3"]
    assert [s.gpu_index for s in slots] == [0, 1, 2, 3]
    assert len({s.cuda_visible_devices for s in slots}) == len(slots)  # never two slots on one GPU


def test_a_confined_run_stays_on_its_gpus():
    slots = device_slots("cuda", "2, 5", gpus(2))
    assert [s.cuda_visible_devices for s in slots] == ["2", "5"]
    assert [s.gpu_index for s in slots] == [2, 5]


def test_uuid_pins_are_kept_and_numbered_by_ordinal():
    visible = "GPU-aaaaaaaa-0000-0000-0000-000000000000,MIG-GPU-bbbbbbbb-0000-0000-0000-000000000000/1/0"
    slots = device_slots("cuda", visible, gpus(2))
    assert [s.cuda_visible_devices for s in slots] == visible.split(",")
    assert [s.gpu_index for s in slots] == [0, 1]


def test_cuda_without_gpus_falls_back_to_one_slot():
    assert device_slots("cuda", "", []) == device_slots("cpu", None, [])


def test_cases_stay_together_and_jobs_take_one_case_per_gpu():
    class P:
        def __init__(self, case, impl):
            self.case, self.impl = case, impl

    pairs = [P(c, i) for c in "abc" for i in (1, 2)]
    groups = by_case(pairs)
    assert [[p.case for p in g] for g in groups] == [["a", "a"], ["b", "b"], ["c", "c"]]
    assert [len(c) for c in chunk(groups, 2)] == [4, 2]
    assert [len(c) for c in chunk(groups, 0)] == [2, 2, 2]


@pytest.mark.parametrize("gres, n", [("gpu:h100:4", 4), ("gpu:2", 2), ("gpu:h100", 1), ("gpu", 1),
                                     ("shard:2,gpu:a100:3", 3), ("shard:2", 0), (None, 0)])
def test_gres_gpu_count(gres, n):
    assert gres_gpus(gres) == n


def test_ray_feasibility_against_fake_nodes():
    h100 = {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 2.0, "accelerator_type:H100": 1.0}}
    dead_b200 = {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 8.0, "accelerator_type:B200": 1.0}}
    cpu_only = {"Alive": True, "Resources": {"CPU": 64.0}}
    nodes = [h100, dead_b200, cpu_only]
    assert unfit_reason(ray_request(1, "H100"), nodes) is None
    assert unfit_reason(ray_request(0, None), nodes) is None
    assert unfit_reason(ray_request(4, None), nodes) is not None  # no single node has 4 GPUs
    why = unfit_reason(ray_request(1, "B200"), nodes)  # only on a dead node
    assert "accelerator_type:B200" in why and "accelerator_type:H100=1" in why


def test_nvidia_smi_line_and_throttle_bits():
    reading = parse_smi_line("1980, 2619, 47, 0x0000000000000024")
    assert reading == {"sm_clock_mhz": 1980, "mem_clock_mhz": 2619, "temperature_c": 47,
                       "throttle_reasons": ["sw_power_cap", "sw_thermal_slowdown"]}
    assert parse_smi_line("[N/A], [N/A], 30, [N/A]")["sm_clock_mhz"] is None
    assert throttle_names(0) == [] and throttle_names(0x1000) == ["0x1000"]


def run_args(**flags):
    base = {"executor": "local", "slurm_partition": None, "slurm_gres": None, "slurm_constraint": None,
            "slurm_time": None, "ray_address": None, "ray_accelerator_type": None}
    return argparse.Namespace(**(base | flags))


def test_flags_of_another_executor_are_refused():
    with pytest.raises(UserError, match="--slurm-gres: not a flag of --executor ray"):
        ExecutorConfig.from_args(run_args(executor="ray", slurm_gres="gpu:1"))
    assert ExecutorConfig.from_args(run_args()).to_dict() == {"kind": "local"}


SUITE_HARDWARE = Hardware(gpu_type="H100", gpus_per_job=4, partition="gpu")


def test_the_suites_hardware_fills_what_no_flag_sets():
    # from_args refuses an executor whose extra is missing, before it reads the suite.
    pytest.importorskip("ray", reason="needs attnbench[ray]")
    pytest.importorskip("submitit", reason="needs attnbench[slurm]")
    ray = ExecutorConfig.from_args(run_args(executor="ray"), SUITE_HARDWARE)
    assert ray.to_dict() == {"kind": "ray", "ray_accelerator_type": "H100"} and ray.device("auto") == "cuda"
    slurm = ExecutorConfig.from_args(run_args(executor="slurm"), SUITE_HARDWARE)
    assert slurm.to_dict() == {"kind": "slurm", "slurm_partition": "gpu", "slurm_constraint": "H100",
                               "slurm_gpus_per_job": 4}
    # A GPU type alone asks for a GPU per job, so `--device auto` is cuda.
    typed = ExecutorConfig.from_args(run_args(executor="slurm"), Hardware(gpu_type="H100"))
    assert typed.slurm_gpus_per_job == 1 and typed.device("auto") == "cuda"
    assert ExecutorConfig.from_args(run_args(), SUITE_HARDWARE).to_dict() == {"kind": "local"}


def test_flags_replace_the_suites_hardware():
    # from_args refuses an executor whose extra is missing, before it reads the suite.
    pytest.importorskip("ray", reason="needs attnbench[ray]")
    pytest.importorskip("submitit", reason="needs attnbench[slurm]")
    ray = ExecutorConfig.from_args(run_args(executor="ray", ray_accelerator_type="A100"), SUITE_HARDWARE)
    assert ray.ray_accelerator_type == "A100"
    slurm = ExecutorConfig.from_args(run_args(executor="slurm", slurm_partition="debug", slurm_gres="gpu:a100:2",
                                              slurm_constraint="a100"), SUITE_HARDWARE)
    assert slurm.to_dict() == {"kind": "slurm", "slurm_partition": "debug", "slurm_gres": "gpu:a100:2",
                               "slurm_constraint": "a100"}


def test_fleet_device_follows_the_flags():
    assert ExecutorConfig(kind="slurm", slurm_gres="gpu:h100:1").device("auto") == "cuda"
    assert ExecutorConfig(kind="ray").device("auto") == "cpu"
    assert ExecutorConfig(kind="ray").device("cuda") == "cuda"
