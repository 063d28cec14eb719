"""The device peak table: which entry a CUDA device name picks."""

import pytest

from attnbench.hardware import DEVICE_PEAKS, device_peak

# Names as torch.cuda.get_device_name reports them, and the card each one is.
REPORTED = {
    "NVIDIA H100 80GB HBM3": "NVIDIA H100 SXM",
    "NVIDIA H100 PCIe": "NVIDIA H100 PCIe",
    "NVIDIA H100 NVL": "NVIDIA H100 NVL",
    "NVIDIA H200": "NVIDIA H200 SXM",
    "NVIDIA H200 NVL": "NVIDIA H200 NVL",
    "NVIDIA GH200 480GB": "NVIDIA GH200 96GB HBM3",
    "NVIDIA B200": "NVIDIA B200",
    "NVIDIA L40S": "NVIDIA L40S",
    "NVIDIA A100-SXM4-80GB": "NVIDIA A100 SXM 80GB",
    "NVIDIA A100-SXM4-40GB": "NVIDIA A100 SXM 40GB",
    "NVIDIA A100-PCIE-40GB": "NVIDIA A100 PCIe 40GB",
    "NVIDIA A100 80GB PCIe": "NVIDIA A100 PCIe 80GB",
    "AMD Instinct MI300X": "AMD Instinct MI300X",
    "NVIDIA L4": "NVIDIA L4",
}


@pytest.mark.parametrize("reported,card", REPORTED.items())
def test_reported_name_picks_its_own_card(reported, card):
    assert device_peak(reported).name == card


def test_longer_match_wins_whatever_the_order():
    # "H200" is in both names; the NVL and the Grace Hopper parts have their own (lower or other) peaks.
    nvl, gh200, sxm = device_peak("NVIDIA H200 NVL"), device_peak("NVIDIA GH200 480GB"), device_peak("NVIDIA H200")
    assert nvl.tflops["bfloat16"] < sxm.tflops["bfloat16"]
    assert gh200.gbps != sxm.gbps


def test_every_entry_is_reachable_by_its_own_match():
    for entry in DEVICE_PEAKS:
        assert device_peak(f"NVIDIA {entry.match}") is entry, entry.match


def test_matches_whole_words_only():
    assert device_peak("NVIDIA L40") is None  # not an L4, nor the L40S
    assert device_peak("NVIDIA H20") is None  # a different, much slower Hopper part
    assert device_peak("Tesla T4") is None


def test_every_entry_has_16_bit_and_fp32_peaks_and_bandwidth():
    for entry in DEVICE_PEAKS:
        assert set(entry.tflops) == {"bfloat16", "float16", "float32"}, entry.name
        # Dense 16-bit tensor cores outrun plain FP32 on every card in the table.
        assert entry.tflops["bfloat16"] > entry.tflops["float32"] > 0, entry.name
        assert entry.gbps > 0, entry.name
