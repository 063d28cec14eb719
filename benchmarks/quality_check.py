"""Task-level quality of exact and approximate attention: train, score, compare with eager.

Runs every task of ``attnbench.quality`` with eager, sdpa, chunked and each
registered approximate implementation (``exact=False``) over the preset's
seeds; prints per task and implementation the held-out accuracy (mean ±
std and range over seeds), macro F1, ROC-AUC, chance accuracy, median
training-step time, peak training-step memory, the kernel-level relative
error against float64 on the model's attention case (standard-normal
inputs), and for exact implementations whether their accuracies agree with
eager's (``agrees_with``). Needs scikit-learn (``pip install 'attnbench[quality]'``).

    python benchmarks/quality_check.py [--size cpu] [--tasks compare,recall] [--impls 'eager,performer*'] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from attnbench import Implementation, Unsupported
from attnbench.plugins import load_registry
from attnbench.quality import TASKS, agrees_with, preset, run_task, summarize, task_case
from attnbench.quality.work import kernel_error

EXACT_IMPLS = ("eager", "sdpa", "chunked")


def chosen_impls(registry, patterns: str | None) -> list[Implementation]:
    """The implementations to run, eager first: the others' agreement is judged against it."""
    if patterns:
        chosen = registry.select(include=patterns.split(","))
    else:
        approximate = [impl for impl in registry.implementations.values() if not impl.exact]
        chosen = [registry.get(name) for name in EXACT_IMPLS] + approximate
    return sorted(chosen, key=lambda impl: impl.name != "eager")


def save(path: str | None, records: list[dict]) -> None:
    """Rewrite the JSON file after every implementation, so an interrupted run keeps what it measured."""
    if path:
        with open(path, "w") as f:
            json.dump(records, f, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default=None, help="preset size: tiny, cpu or cuda (default: the device's)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task names")
    parser.add_argument("--impls", default=None, help="comma-separated name globs (default: eager, sdpa, chunked and every approximate one)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: the preset's)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared small machine more threads contend and time erratically)")
    parser.add_argument("--json", default=None, help="write every run's figures and each summary here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    registry = load_registry()
    impls = chosen_impls(registry, args.impls)
    started = time.perf_counter()
    records = []
    header = (f"{'task':8} {'impl':16} {'kind':6} {'accuracy mean±std [min,max]':30} {'F1':>6} {'AUC':>6} {'chance':>6} "
              f"{'step ms':>8} {'peak MiB':>8} {'kernel err':>10} {'run s':>6}  agrees with eager")
    print(header)
    for task in args.tasks.split(","):
        config = preset(task, args.device, args.size)
        if args.seeds:
            config = dataclasses.replace(config, seeds=tuple(int(s) for s in args.seeds.split(",")))
        case = dataclasses.replace(task_case(config), pass_="fwd")
        eager_accuracies = None
        for impl in impls:
            run_started = time.perf_counter()
            error = kernel_error(impl, case)
            kind = "exact" if impl.exact else "approx"
            err = "-" if error is None else f"{error:.2e}"
            try:
                per_seed = [run_task(impl, config, seed) for seed in config.seeds]
            except Unsupported as exc:
                print(f"{task:8} {impl.name:16} {kind:6} unsupported: {exc.reason} (kernel err {err})", flush=True)
                records.append({"task": task, "implementation": impl.name, "unsupported": exc.reason, "kernel_rel_err": error})
                save(args.json, records)
                continue
            summary = summarize(per_seed)
            accuracies = [result["accuracy"] for result in per_seed]
            if impl.name == "eager":
                eager_accuracies = accuracies
            verdict = ""
            if impl.exact and impl.name != "eager" and eager_accuracies is not None:
                ok, why = agrees_with(eager_accuracies, accuracies)
                verdict = f"{'yes' if ok else 'NO'}: {why}"
            acc = summary["accuracy"]
            accuracy = f"{acc['mean']:.3f}±{acc['std']:.3f} [{acc['min']:.3f},{acc['max']:.3f}]"
            print(
                f"{task:8} {impl.name:16} {kind:6} {accuracy:30} "
                f"{summary['f1']['mean']:6.3f} {summary['roc_auc']['mean']:6.3f} {summary['chance_accuracy']['mean']:6.3f} "
                f"{summary['step_ms_median']['mean']:8.1f} {summary['peak_bytes']['mean'] / 2**20:8.1f} {err:>10} "
                f"{time.perf_counter() - run_started:6.0f}  {verdict}",
                flush=True,
            )
            records.append({"task": task, "implementation": impl.name, "exact": impl.exact, "config": config.to_dict(),
                            "per_seed": per_seed, "summary": summary, "kernel_rel_err": error, "agrees_with_eager": verdict})
            save(args.json, records)
    print(f"wall time {time.perf_counter() - started:.0f} s ({torch.get_num_threads()} torch thread(s))")


if __name__ == "__main__":
    main()
