"""The local executor: this machine's slots (one per GPU, or one on CPU) measuring cases side by side.

Each case is measured in rounds on one slot: round 0 (worker 0) builds,
checks correctness over fresh seeds, measures memory and times; rounds 1..
(workers 1..) build, check one more seed each (that call is also their
warm-up) and time again, with the implementations in another order, so
process-to-process noise and drift hit all implementations alike.
Samples from all rounds are pooled into the median and IQR. A slot times one
pair at a time and its workers see only its GPU, so no two timings ever share
a GPU. The same executor is the body of a Slurm job or a Ray task.
"""

from __future__ import annotations

import os
import queue
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Protocol

from attnbench.case import Case
from attnbench.executors.machine import compact_environment
from attnbench.executors.placement import Gpu, Slot, by_case, device_slots
from attnbench.hardware import cpu_model, cuda_devices, device_peak
from attnbench.implementation import Implementation
from attnbench.measure.timing import iqr
from attnbench.outcome import ERROR_KEYS, GRAD_NAMES, error_prefix
from attnbench.protocol import ProtocolViolation
from attnbench.results import MEASURED, Record
from attnbench.runner import (
    OnStart,
    Pair,
    RunOptions,
    WorkerDied,
    WorkerProcess,
    WorkerTimeout,
    call_or_failure,
    make_record,
    worker_env,
)
from attnbench.worker import Request


class KeptWorkers(Protocol):
    """Workers that outlive an executor (attnbench.executors.pool): taken at its start, given back after a clean end."""

    def take(self, env: dict[str, str], count: int) -> list[WorkerProcess]: ...

    def give_back(self, slots: list[list[WorkerProcess]]) -> None: ...


class SlotWorkers:
    """One slot's worker processes and the rounds that measure a case on them."""

    def __init__(self, slot: Slot, options: RunOptions, env: dict[str, str], context: dict,
                 kept: KeptWorkers | None = None) -> None:
        env = dict(env)
        if slot.cuda_visible_devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.cuda_visible_devices
        self.slot = slot
        # A GPU slot names its own card: a machine may hold different GPUs, and the peak table follows the name.
        self.options = replace(options, device_name=slot.gpu.name if slot.gpu else options.device_name or cpu_model())
        count = max(1, options.timing.processes)
        self.workers = kept.take(env, count) if kept is not None else [WorkerProcess(i, env) for i in range(count)]
        self._starting: list[WorkerProcess] = []
        self.where = {
            **context,
            "node": socket.gethostname(),
            "gpu_index": slot.gpu_index,
            "gpu_uuid": slot.gpu.uuid if slot.gpu else None,
            "cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES"),
            "environment": compact_environment(),
        }

    def start(self) -> None:
        # A kept worker still running answered its ready line for an earlier executor.
        self._starting = [w for w in self.workers if w.proc is None or w.proc.poll() is not None]
        for w in self._starting:
            w.start()

    def wait_ready(self) -> None:
        for w in self._starting:
            try:
                w.wait_ready()
            except (WorkerDied, WorkerTimeout, ProtocolViolation):
                w.proc = None  # restarted on first use; the failure surfaces as that pair's record

    def kill(self) -> None:
        for w in self.workers:
            w.kill()

    def interrupt(self) -> None:
        for w in self.workers:
            w.interrupt()

    def measure_case(self, case: Case, impls: list[Implementation], on_start: OnStart | None,
                     abandoned: threading.Event | None = None) -> list[Record]:
        """One record per implementation; none once ``abandoned`` is set (the run is being torn down)."""
        state = {impl.name: {"status": None, "reason": "", "metrics": {}, "samples": [], "process_medians": [],
                             "pids": [], "telemetry": [], "started": None, "finished": None} for impl in impls}
        for r, worker in enumerate(self.workers):
            order = impls if r % 2 == 0 else list(reversed(impls))
            # Later rounds time only what round 0 measured; the round's last call tells the worker to let go of
            # the case, so it holds no memory while the next process measures it on the same GPU.
            callees = [impl for impl in order if r == 0 or state[impl.name]["status"] in MEASURED]
            for impl in callees:
                s = state[impl.name]
                if abandoned is not None and abandoned.is_set():
                    return []
                if r == 0 and on_start is not None:
                    on_start(Pair(case, impl))
                s["started"] = s["started"] or time.time()
                reply = self._call(worker, impl, case, r == 0, release=impl is callees[-1])
                s["finished"] = time.time()
                if reply.get("telemetry"):  # read by the worker just before and after it timed the pair
                    s["telemetry"].append(reply["telemetry"])
                s["pids"].append(reply.get("pid"))
                if r == 0:
                    s["status"], s["reason"] = reply["status"], reply["reason"]
                    s["metrics"].update(reply.get("metrics", {}))
                elif reply["status"] not in MEASURED:
                    # A later round failed: keep what round 0 measured, but say what happened.
                    s["status"] = reply["status"]
                    s["reason"] = f"timing process {r + 1}: {reply['reason']}"
                else:
                    merge_correctness(s["metrics"], reply.get("metrics", {}))
                    if reply["status"] == "incorrect" and s["status"] == "ok":
                        s["status"], s["reason"] = "incorrect", f"process {r + 1}: {reply['reason']}"
                for notes in ("torch_state_changed", "throttled"):  # what any of the pair's processes saw
                    if reply.get("metrics", {}).get(notes):
                        s["metrics"][notes] = sorted({*s["metrics"].get(notes, ()), *reply["metrics"][notes]})
                if reply.get("samples_ms"):
                    s["samples"].extend(reply["samples_ms"])
                    s["process_medians"].append(statistics.median(reply["samples_ms"]))
                    for key in ("timing_method", "timing_inner", "timing_notes"):
                        if key in reply.get("metrics", {}):
                            s["metrics"][key] = reply["metrics"][key]
        if abandoned is not None and abandoned.is_set():
            return []
        records = []
        for impl in impls:
            s = state[impl.name]
            metrics = s["metrics"]
            if s["samples"]:
                metrics.update(self._timing_metrics(case, s["samples"], s["process_medians"]))
            where = {**self.where, "pids": s["pids"], "started": s["started"], "finished": s["finished"]}
            if s["telemetry"]:
                where["gpu_telemetry"] = s["telemetry"]
            records.append(make_record(impl, case, s["status"], s["reason"], self.options, metrics=metrics,
                                       where=where))
        return records

    def _call(self, worker: WorkerProcess, impl: Implementation, case: Case, first_round: bool,
              release: bool) -> dict:
        o = self.options
        trials = trials_for_process(worker.index, o.correctness.seeds, len(self.workers))
        request = Request(impl=impl.name, case=case, seed=o.seed, check_correctness=bool(trials),
                          measure_memory=first_round, measure_time=True, trials=trials,
                          correctness=o.correctness, timing=o.timing, release=release)
        return call_or_failure(worker, request.to_json(), o.timeout_s)

    def _timing_metrics(self, case: Case, samples: list[float], process_medians: list[float]) -> dict:
        median = statistics.median(samples)
        seconds = median / 1e3
        metrics = {
            "time_ms_median": median,
            "time_ms_iqr": iqr(samples),
            "time_ms_n": len(samples),
            "time_ms_process_medians": process_medians,
            "tflops": case.flops() / seconds / 1e12,
            "gbps": case.io_bytes() / seconds / 1e9,
        }
        if len(process_medians) > 1:
            metrics["process_spread"] = max(process_medians) / min(process_medians) - 1
        peak_tflops, peak_gbps = self.options.peak_tflops, self.options.peak_gbps
        table = device_peak(self.options.device_name) if case.device == "cuda" else None
        if table is not None:
            peak_tflops = peak_tflops or table.tflops.get(case.dtype_name)
            peak_gbps = peak_gbps or table.gbps
        if peak_tflops:
            metrics["pct_peak_tflops"] = 100 * metrics["tflops"] / peak_tflops
        if peak_gbps:
            metrics["pct_peak_gbps"] = 100 * metrics["gbps"] / peak_gbps
        return metrics


def trials_for_process(process: int, seeds: int, processes: int) -> list[int]:
    """The correctness trials process ``process`` checks: each later process takes one from the end.

    A checked call is a full call on fresh inputs, so it is also that process's warm-up: on long
    sequences this saves a bare warm-up call per process. Process 0 keeps at least the first two
    trials (the cold call and the memory measurement).
    """
    keep = min(seeds, 2)
    given = [seeds - 1 - i for i in range(min(processes - 1, seeds - keep))]
    if process == 0:
        return [t for t in range(seeds) if t not in given]
    return [given[process - 1]] if process - 1 < len(given) else []


def merge_correctness(into: dict, other: dict) -> None:
    """Fold another process's error metrics into ``into``: the worse trial per tensor wins, seeds add up."""
    for prefix in map(error_prefix, GRAD_NAMES):
        if f"{prefix}rel_err" not in other:
            continue
        mine = (into.get(f"{prefix}nonfinite", 0), into.get(f"{prefix}rel_err", -1.0))
        theirs = (other.get(f"{prefix}nonfinite", 0), other[f"{prefix}rel_err"])
        if f"{prefix}rel_err" not in into or theirs > mine:
            for key in ERROR_KEYS:
                into.pop(f"{prefix}{key}", None)
                if f"{prefix}{key}" in other:
                    into[f"{prefix}{key}"] = other[f"{prefix}{key}"]
    if "correctness_seeds" in other:
        into["correctness_seeds"] = into.get("correctness_seeds", 0) + other["correctness_seeds"]


_SLOT_DONE = object()


class LocalExecutor:
    """Measures pairs on this machine: cases spread over its slots, which run side by side.

    ``device`` is the device of the cases: ``"cuda"`` gives one slot per GPU
    this process sees, ``"cpu"`` one slot (CPU timings would disturb each
    other); ``slots`` replaces that choice. ``context`` is merged into every
    record's ``where`` (the executor and attempt, and a Slurm job's or Ray
    task's identity when this runs inside one). With ``kept``, the workers
    come from it and go back to it when the executor ends without an
    exception (else they are killed, as without it).
    """

    def __init__(self, options: RunOptions, env: dict[str, str] | None = None, *, device: str = "cpu",
                 context: dict | None = None, slots: list[Slot] | None = None,
                 kept: KeptWorkers | None = None) -> None:
        self.options = options
        env = worker_env(options, env)
        if slots is None:
            # Read by a subprocess: the runner's process never holds a CUDA context (EXCLUSIVE_PROCESS cards).
            gpus = [Gpu(d["index"], d["name"], d["uuid"]) for d in cuda_devices()] if device == "cuda" else []
            slots = device_slots(device, os.environ.get("CUDA_VISIBLE_DEVICES"), gpus)
        context = {"executor": "local", "attempt": 1, **(context or {})}
        self.kept = kept
        self.slots = [SlotWorkers(slot, options, env, context, kept) for slot in slots]

    def __enter__(self) -> LocalExecutor:
        # Start every worker before waiting for any: their torch imports overlap.
        try:
            for slot in self.slots:
                slot.start()
            for slot in self.slots:
                slot.wait_ready()
        except BaseException:  # a signal while starting: __exit__ will not run, so no worker may outlive this
            for slot in self.slots:
                slot.kill()
            raise
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.kept is not None and exc_type is None:
            self.kept.give_back([slot.workers for slot in self.slots])
            return
        # Killed, not asked to exit: a worker holds nothing once it has answered, torch makes its interpreter
        # shutdown take over a second (paid by every Ray task), and leaving on an exception (Ctrl-C, SIGTERM,
        # a job's preemption) must not wait for a measurement to end.
        for slot in self.slots:
            slot.kill()

    def submit(self, pairs: list[Pair], on_start: OnStart | None = None) -> Iterator[Record]:
        """Yield one record per pair, a case's records together when the case is done."""
        groups = by_case(pairs)
        if len(self.slots) == 1:
            for group in groups:
                yield from self.slots[0].measure_case(group[0].case, [p.impl for p in group], on_start)
            return
        yield from self._side_by_side(groups, on_start)

    def _side_by_side(self, groups: list[list[Pair]], on_start: OnStart | None) -> Iterator[Record]:
        todo: queue.SimpleQueue = queue.SimpleQueue()
        for group in groups:
            todo.put(group)
        done: queue.SimpleQueue = queue.SimpleQueue()
        abandoned = threading.Event()

        def drive(slot: SlotWorkers) -> None:
            try:
                while not abandoned.is_set():
                    try:
                        group = todo.get_nowait()
                    except queue.Empty:
                        return
                    done.put(slot.measure_case(group[0].case, [p.impl for p in group], on_start, abandoned))
            except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread, which raises it
                done.put(exc)
            finally:
                done.put(_SLOT_DONE)

        threads = [threading.Thread(target=drive, args=(slot,), name=f"attnbench-slot-{slot.slot.index}", daemon=True)
                   for slot in self.slots]
        for t in threads:
            t.start()
        running = len(threads)
        try:
            while running:
                try:
                    item = done.get(timeout=1.0)  # a timeout keeps the thread responsive to signals
                except queue.Empty:
                    continue
                if item is _SLOT_DONE:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield from item
        finally:
            if running:
                abandoned.set()
            for t in threads:
                while t.is_alive():
                    # Again and again: a slot may have started a fresh worker just before it saw the flag.
                    if abandoned.is_set():
                        for slot in self.slots:
                            slot.interrupt()
                    t.join(0.5)
