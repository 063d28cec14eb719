"""One pair's measurement inside the worker: layouts converted outside the measured region, memory let go
after a case, clocks read around the timed region."""

import torch

from attnbench import measurement
from attnbench.case import Case
from attnbench.implementation import Implementation
from attnbench.impls.eager import build as eager_build
from attnbench.measurement import Request, measure
from attnbench.telemetry import throttling

CASE = Case(1, 4, 4, 512, 512, 64)


def eager_in_bshd(case):
    """eager's arithmetic on (batch, seq, heads, dim) tensors, through views: the same true peak as eager."""
    def attend(q, k, v):
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        scores = (q * case.softmax_scale) @ k.transpose(-2, -1)
        return (torch.softmax(scores, dim=-1) @ v).transpose(1, 2)
    return attend


def _peak(impl: Implementation) -> int:
    reply = measure(impl, Request(impl=impl.name, case=CASE, seed=0, check_correctness=True, measure_memory=True,
                                  measure_time=False))
    assert reply["status"] == "ok", reply["reason"]
    return reply["metrics"]["peak_bytes"]


def test_a_bshd_implementation_is_not_charged_for_the_harness_transposes():
    eager = _peak(Implementation("eager", eager_build))
    bshd = _peak(Implementation("bshd.eager", eager_in_bshd, layout="bshd"))
    # Before, q, k and v were transposed inside the measured call: 3 q-sized copies on top (+17% here).
    assert abs(bshd / eager - 1) < 0.05, (bshd, eager)


def test_the_last_request_of_a_case_lets_go_of_its_references():
    impl = Implementation("eager", eager_build)
    case = Case(1, 2, 2, 32, 32, 16)
    keep = Request(impl="eager", case=case, seed=0, check_correctness=True, measure_memory=False, measure_time=False)
    assert measure(impl, keep)["status"] == "ok"
    assert measurement._REFERENCES.trials
    done = Request(impl="eager", case=case, seed=0, check_correctness=True, measure_memory=False, measure_time=False,
                   release=True)
    assert measure(impl, done)["status"] == "ok"
    assert not measurement._REFERENCES.trials and measurement._REFERENCES.key is None


def test_release_travels_in_the_request():
    request = Request(impl="eager", case=CASE, seed=0, check_correctness=False, measure_memory=False,
                      measure_time=True, release=True)
    assert Request.from_json({**request.to_json(), "id": "abc"}) == request


def test_throttling_names_what_slowed_the_card():
    calm = {"sm_clock_mhz": 1980, "throttle_reasons": ["gpu_idle"]}
    assert throttling(calm, {"sm_clock_mhz": 1980, "throttle_reasons": ["applications_clocks_setting"]}) == []
    hot = {"sm_clock_mhz": 1500, "throttle_reasons": ["sw_thermal_slowdown", "sw_power_cap"]}
    assert throttling(calm, hot) == ["sw_power_cap", "sw_thermal_slowdown", "SM clock fell from 1980 to 1500 MHz"]
    assert throttling({"error": "NVML: not found"}, {"error": "NVML: not found"}) == []
