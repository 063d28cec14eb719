"""Synthetic records and results files for the report, compare and export tests (no torch, no measuring)."""

from __future__ import annotations

from pathlib import Path

from attnbench.results import Record, write_results


def case(seq: int = 128, dtype: str = "float32", mask: str = "none", pass_: str = "fwd", seq_q: int | None = None) -> dict:
    return {"batch": 1, "heads_q": 4, "heads_kv": 4, "seq_q": seq_q or seq, "seq_kv": seq, "head_dim": 32,
            "dtype": dtype, "device": "cpu", "mask": mask, "window": None, "scale": None, "pass": pass_}


CEILINGS = {"measured": {"tflops": {"float32": {"best": 2.0, "median": 1.9, "spread": 0.02},
                                    "bfloat16": {"best": 8.0, "median": 7.8, "spread": 0.03}},
                         "gbps": {"best": 40.0, "median": 38.0, "spread": 0.05}, "cached": False},
            "published": {"name": "Synthetic", "tflops": {"float32": 3.0, "bfloat16": 12.0}, "gbps": 50.0}}
"""``run.ceilings`` as attnbench.ceilings (measured: best, median, spread) and hardware (published) write it."""


def record(impl: str, case_: dict, ms: float | None = 1.0, status: str = "ok", *, noise: float = 0.0,
           peak: int | None = 1000, rel_err: float | None = 1e-6, exact: bool = True, ranked: bool = True,
           reason: str = "", plugin: str = "", version: str = "1.0", process_medians: list[float] | None = None,
           hardware: str = "Synthetic CPU", intensity: float | None = None) -> Record:
    """A record; ``ms`` None (or a status that is not measured) leaves the timing out. ``noise`` is IQR/median.
    ``intensity`` adds the roofline metrics (arithmetic intensity, bound, roofline fraction) against CEILINGS."""
    metrics: dict = {}
    if ms is not None and status in ("ok", "incorrect", "implausible"):
        medians = process_medians or [ms, ms]
        metrics = {"time_ms_median": ms, "time_ms_iqr": noise * ms, "time_ms_n": 10,
                   "time_ms_process_medians": medians, "process_spread": max(medians) / min(medians) - 1,
                   "tflops": 1.0 / ms, "timing_method": "cpu-perf_counter"}
        if peak is not None:
            metrics["peak_bytes"] = peak
        if rel_err is not None:
            metrics["rel_err"] = rel_err
        if intensity is not None:
            peak_tflops, gbps = CEILINGS["measured"]["tflops"]["float32"]["best"], CEILINGS["measured"]["gbps"]["best"]
            roof = min(peak_tflops, intensity * gbps / 1000)
            metrics |= {"arithmetic_intensity": intensity, "roofline_fraction": metrics["tflops"] / roof,
                        "bound": "compute" if roof == peak_tflops else "memory"}
    if status not in ("ok",) and not reason:
        reason = f"synthetic {status}"
    return Record(impl=impl, case=case_, status=status, reason=reason, plugin=plugin or f"plugin.{impl}",
                  version=version, exact=exact, ranked=ranked, metrics=metrics, hardware=hardware)


def run_info(run_id: str = "run-a", hardware: str = "Synthetic CPU (2 threads)", baseline: str = "base",
             started: str = "2026-01-01T00:00:00+00:00", hostname: str = "host-a", torch: str = "2.13.0", **extra) -> dict:
    info = {"id": run_id, "suite": {"name": "synthetic", "path": "synthetic.yaml", "sha256": "0" * 64}, "device": "cpu",
            "hardware": hardware, "baseline": baseline, "started": started, "finished": started, "attnbench": "0.1.0",
            "command": ["attnbench", "run", "synthetic.yaml"],
            "environment": {"hostname": hostname, "torch": torch, "cpu": hardware, "cuda_devices": []},
            "plugins": [{"name": "plugin.base", "distribution": "base-dist", "version": "1.0", "builtin": False,
                         "implementations": ["base"], "errors": [], "ok": True}],
            "options": {"seed": 0}, "resumed_records": 0, "interrupted": False}
    info.update(extra)
    return info


def write_run(directory: Path, records: list[Record], **info) -> Path:
    """Write ``directory/results.json``; keyword arguments go to ``run_info``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "results.json"
    write_results(path, run_info(run_id=info.pop("run_id", directory.name), **info), records)
    return path


def task_case(task: str = "compare", steps: int = 300) -> dict:
    """A quality task's record case (TaskConfig without its seeds)."""
    return {"task": task, "seq_len": 128, "vocab": 64, "d_model": 64, "heads": 4, "layers": 2, "batch": 32,
            "steps": steps, "eval_size": 1024, "lr": 0.003, "device": "cpu", "threads": 1}


def task_record(impl: str, accuracies: list[float] | None, step_ms: float = 10.0, status: str = "ok", *,
                case_: dict | None = None, exact: bool = True, agrees: bool | None = True, reason: str = "",
                chance: float = 0.5, hardware: str = "Synthetic CPU") -> Record:
    """A task record as attnbench.quality.runner writes it; ``accuracies`` None: no seed trained to the end."""
    metrics: dict = {"seeds": [0, 1, 2], "per_seed": []}
    if accuracies is not None:
        per_seed = [{"seed": s, "accuracy": a, "precision": a, "recall": a, "f1": a, "roc_auc": a,
                     "chance_accuracy": chance, "step_ms_median": step_ms, "peak_bytes": 2**20}
                    for s, a in enumerate(accuracies)]
        metrics["per_seed"] = per_seed
        for name in per_seed[0]:
            if name != "seed":
                values = [entry[name] for entry in per_seed]
                mean = sum(values) / len(values)
                std = (sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)) ** 0.5
                metrics |= {f"{name}_mean": mean, f"{name}_std": std, f"{name}_min": min(values),
                            f"{name}_max": max(values)}
        metrics |= {"kernel_rel_err": 1e-7 if exact else 0.3, "agrees_with_eager": None if impl == "eager" else agrees,
                    "agreement": "synthetic rule"}
    if status != "ok" and not reason:
        reason = f"synthetic {status}"
    return Record(impl=impl, case=case_ or task_case(), status=status, reason=reason, plugin=f"plugin.{impl}",
                  version="1.0", exact=exact, metrics=metrics, hardware=hardware)
