"""``attnbench run``: suite and flags in, progress and tables out, results on disk."""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import subprocess
from collections.abc import Callable
from dataclasses import fields as dataclass_fields
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from attnbench.case import Case
from attnbench.ceilings import measured_ceilings
from attnbench.errors import UserError
from attnbench.executors import ExecutorConfig
from attnbench.hardware import cpu_model, cuda_devices, software_fields
from attnbench.measure.memory import budget_bytes, free_bytes, parse_bytes, predict_peak_bytes
from attnbench.models import lookup
from attnbench.plugins import load_registry
from attnbench.quality.runner import EAGER
from attnbench.report.html import render
from attnbench.report.runs import load_runs
from attnbench.report.terminal import print_run
from attnbench.results import FAILURES, write_text_atomic
from attnbench.runner import RunOptions, worker_env
from attnbench.session import (
    DISK_FULL,
    JOURNAL_NAME,
    RunLock,
    RunPaths,
    RunSpec,
    journal_header,
    naming,
    new_run_id,
    read_for_resume,
    run,
)
from attnbench.suite import SuiteError, load_suite
from attnbench.textsafe import markup

EXIT_OK, EXIT_STRICT = 0, 3


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but torch sees no CUDA device "
                        f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'})")
    return requested


def filter_cases(cases: list[Case], wheres: list[str]) -> list[Case]:
    """Keep cases whose fields match every ``FIELD=V1,V2`` filter; a packed batch's lengths are written
    joined by ``:`` (``seqlens_q=37:100:5``), an unset field is ``None``."""
    known = sorted("pass" if f.name == "pass_" else f.name for f in dataclass_fields(Case))
    for where in wheres:
        field, sep, values = where.partition("=")
        field = field.strip()
        if not sep or field not in known:
            raise UserError(f"--where {where!r}: expected FIELD=VALUE[,VALUE...] with FIELD one of {', '.join(known)}")
        wanted = {v.strip() for v in values.split(",")}
        cases = [c for c in cases if _field_text(c, field) in wanted]
    return cases


def _field_text(case: Case, field: str) -> str:
    """A case field as ``--where`` matches it."""
    value = case.to_dict().get(field)
    if isinstance(value, (list, tuple)):
        return ":".join(map(str, value))
    return str(False if value is None and field == "sinks" else value)


def with_model(cases: list[Case], name: str | None) -> list[Case]:
    """The cases with model preset ``name``'s heads_q, heads_kv and head_dim, its variants, one per form of its
    layers (duplicates this makes dropped); the cases as they are without one."""
    if name is None:
        return cases
    try:
        model = lookup(name)
    except ValueError as exc:
        raise UserError(f"--model {name}: {exc}") from None
    made = []
    for c in cases:
        for fields in model.case_fields({f.name: getattr(c, f.name) for f in dataclass_fields(c)}):
            try:
                made.append(Case(**fields))
            except ValueError as exc:
                raise UserError(f"--model {name}: case {c.label()} cannot take the model's attention: {exc}") from None
    return list(dict.fromkeys(made))


def output_dir(args: argparse.Namespace, suite_name: str) -> RunPaths:
    """The run's files: ``--resume``'s (which must hold a journal), ``--output``'s, or a new directory under reports/."""
    if args.resume:
        paths = _resumed(Path(args.resume))
        if not paths.journal.exists():
            where = "there" if paths.target != paths.results else "beside it"
            raise UserError(f"--resume {args.resume}: no {paths.journal.name} {where}; "
                            "give the run directory or results file of an earlier run")
        if args.output and RunPaths.of(args.output).results.resolve() != paths.results.resolve():
            raise UserError(f"--output {args.output} and --resume {args.resume} name different runs; give --resume alone")
        return paths
    if args.output:
        return RunPaths.of(args.output)
    return RunPaths.of(Path("reports") / suite_name / new_run_id(suite_name))


def _resumed(path: Path) -> RunPaths:
    """``--resume`` takes the run directory or the results file, and also the journal itself."""
    if path.name == JOURNAL_NAME:
        return RunPaths.of(path.parent)
    if path.name.endswith(".journal.jsonl"):
        return RunPaths.of(path.with_name(path.name.removesuffix(".journal.jsonl") + ".json"))
    return RunPaths.of(path)


def _check_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".attnbench-write-test-{os.getpid()}"  # its own: two runs starting at once must not share it
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write results to {path}: {exc.strerror or exc}") from None


def build_spec(args: argparse.Namespace) -> tuple[RunSpec, RunPaths]:
    try:
        suite = load_suite(args.suite)
    except SuiteError as exc:
        raise UserError(str(exc)) from None
    executor = ExecutorConfig.from_args(args, suite.hardware)
    # A fleet's devices are on its nodes: this machine's torch has no say.
    device = executor.device(args.device) if executor.remote else resolve_device(args.device)
    settings = suite.settings(device)
    cases = filter_cases(with_model(suite.cases(device), getattr(args, "model", None)), args.where)
    tasks = [replace(t, seeds=tuple(args.seed + s for s in t.seeds)) for t in suite.tasks(device)]
    if not cases and not tasks:
        raise UserError(f"{args.suite}: no {device} cases left to run" + (" after --where" if args.where else ""))
    if tasks and executor.remote:
        raise UserError(f"{args.suite}: quality tasks train on this machine only; run them with --executor local")
    if tasks and importlib.util.find_spec("sklearn") is None:
        raise UserError(f"{args.suite}: quality tasks are scored with scikit-learn: pip install 'attnbench[quality]'")

    registry = load_registry()
    include = list(args.impl) or list(settings.include)
    exclude = list(settings.exclude) + list(args.exclude)
    for pattern in args.impl + args.exclude:
        if not registry.select(include=[pattern]):
            raise UserError(f"implementation pattern {pattern!r} matches nothing; installed: {', '.join(registry.implementations)}")
    impls = registry.select(include=include, exclude=exclude)
    baseline = settings.baseline
    # Speedups need their baseline measured in the same run; on quality tasks, exact implementations'
    # accuracies are judged against eager's. Either is added unless --exclude names it.
    for needed in (baseline, EAGER if tasks else None):
        if needed in registry.implementations and all(i.name != needed for i in impls) and needed not in args.exclude:
            impls.insert(0, registry.get(needed))
    if not impls:
        raise UserError("no implementation selected: check the suite's implementations section and --impl/--exclude")

    timing = replace(settings.timing, processes=args.processes or settings.timing.processes,
                     flush_l2=settings.timing.flush_l2 and not args.warm_l2,
                     cuda_graph=settings.timing.cuda_graph or args.cuda_graph)
    gpu = None if executor.remote or device != "cuda" else cuda_devices()[0]
    budget_spec = args.memory_budget
    if executor.remote:
        budget = _fleet_budget(budget_spec, settings.memory_budget.nbytes, executor.kind)
    else:
        free = free_bytes("cpu") if gpu is None else _free_for_workers(gpu, timing.processes)
        try:
            budget = (settings.memory_budget.limit(free) if budget_spec is None else
                      budget_bytes(float(budget_spec) if _is_number(budget_spec) else parse_bytes(budget_spec),
                                   device, free=free))
        except ValueError as exc:
            raise UserError(f"--memory-budget {budget_spec!r}: {exc}") from None

    options = RunOptions(
        seed=args.seed, correctness=settings.correctness, timing=timing,
        timeout_s=args.timeout or settings.timeout_s, memory_budget_bytes=budget,
        device_name="" if executor.remote else gpu["name"] if gpu is not None else cpu_model(),
        peak_tflops=args.peak_tflops, peak_gbps=args.peak_gbps,
        worker_memory_bytes=budget if device == "cpu" else None,
        plugins=tuple(sorted({impl.plugin for impl in impls})),
    )
    ceilings, remeasure = (None, None) if executor.remote else _ceilings(args, device, options,
                                                                         sorted({c.dtype_name for c in cases}))
    options = replace(options, ceilings=ceilings)
    spec = RunSpec(
        suite_name=suite.name, suite_path=str(args.suite), suite_hash=suite.file_hash, device=device,
        cases=cases, impls=impls, options=options, baseline=baseline, registry=registry,
        # The prediction counts what the worker keeps beside the call: references for the run's seeds and rows.
        predict=functools.partial(predict_peak_bytes, seeds=options.correctness.seeds,
                                  max_rows=options.correctness.max_rows),
        executor=executor, tasks=tasks, remeasure_ceilings=remeasure,
    )
    out = output_dir(args, suite.name)
    _check_writable(out.folder)
    return spec, out


def _ceilings(args: argparse.Namespace, device: str, options: RunOptions,
              dtypes: list[str]) -> tuple[dict | None, Callable[[dict], dict] | None]:
    """This machine's measured ceilings (cached; measured in a worker-like process) and how to measure them again,
    or (None, None) when skipped or unmeasurable (said on stderr: the run goes on, without a roofline)."""
    if args.no_measure_peaks:
        return None, None
    env = worker_env(options)
    if device == "cuda":
        env["CUDA_VISIBLE_DEVICES"] = cuda_devices()[0]["uuid"] or "0"
    software = software_fields()

    def measure(refresh: bool, keep_higher: dict | None = None) -> dict:
        return measured_ceilings(device, options.device_name, software, dtypes, refresh=refresh, env=env,
                                 keep_higher=keep_higher)

    def again(previous: dict) -> dict:
        try:
            return measure(True, previous)
        except (RuntimeError, OSError, ValueError, subprocess.SubprocessError):
            return previous

    try:
        return measure(args.measure_peaks), again
    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
        Console(stderr=True).print(f"[yellow]warning:[/] ceilings not measured: {markup(str(exc))}")
        return None, None


CUDA_CONTEXT_BYTES = 768 * 2**20
"""What each worker process's CUDA context (and the libraries it loads) holds on the card, measured or not:
free memory is read before the workers start, and every one of a slot's processes keeps its context."""


def _free_for_workers(gpu: dict, processes: int) -> int:
    """GPU 0's free memory (read by a subprocess) less the contexts the run's worker processes will hold."""
    return max(0, gpu["free_bytes"] - max(1, processes) * CUDA_CONTEXT_BYTES)


def _fleet_budget(spec: str | None, suite_bytes: int | None, executor: str) -> int | None:
    """A fleet run plans against a fixed size only: a fraction is of free memory that only the measuring node knows."""
    if spec is None:
        return suite_bytes
    if spec.strip().endswith("%") or (_is_number(spec) and float(spec) <= 1):
        raise UserError(f"--memory-budget {spec!r}: with --executor {executor}, give a size (e.g. 40GiB)")
    try:
        return parse_bytes(spec)
    except ValueError as exc:
        raise UserError(f"--memory-budget {spec!r}: {exc}") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def run_command(args: argparse.Namespace, console: Console) -> int:
    spec, out = build_spec(args)
    try:
        with RunLock(out):
            return _run_locked(args, console, spec, out)
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            raise
        # Journal lines are written whole or not at all, so what it holds is what --resume continues from.
        raise UserError(f"disk full writing {exc.filename or out.target}; the journal is intact, "
                        f"continue with --resume {out.target} once there is room") from None


def _run_locked(args: argparse.Namespace, console: Console, spec: RunSpec, out: RunPaths) -> int:
    header = journal_header(spec, args.memory_budget)
    if args.resume:
        for problem in read_for_resume(out, header).skipped:
            Console(stderr=True, soft_wrap=True).print(f"[yellow]warning:[/] {markup(str(out.journal))} {markup(problem)}: skipped")
    else:
        out.refuse_used()
    quiet = args.quiet or args.json
    for failure in spec.registry.failures if spec.registry else []:
        if not quiet:
            console.print(f"[yellow]plugin {markup(failure.name)} failed to load:[/] {markup('; '.join(failure.errors))}")
    if not quiet:
        work = f"{len(spec.cases)} cases" + (f" + {len(spec.tasks)} quality tasks" if spec.tasks else "")
        console.print(f"[bold]{markup(spec.suite_name)}[/] on {spec.device} ({markup(spec.options.device_name or 'executor ' + spec.executor.kind)}): "
                      f"{work} x {len(spec.impls)} implementations -> {markup(str(out.target))}")
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("ETA"), TimeRemainingColumn(), console=console, disable=quiet, transient=False)
    task = progress.add_task("planning", total=None)
    with progress:
        run_info, records, interrupted = run(
            spec, out, resume=bool(args.resume), header=header,
            on_plan=lambda n: progress.update(task, total=n, description="measuring"),
            on_start=lambda pair: progress.update(task, description=f"{markup(pair.impl.name)} · {markup(pair.case.label())}"),
            on_record=lambda rec: progress.advance(task),
        )
        progress.update(task, description="done" if not interrupted else "interrupted")
    results_path = out.results
    try:
        write_text_atomic(out.page, render(load_runs([results_path])))
    except OSError as exc:
        raise naming(exc, out.page) from exc
    if args.json:
        print(results_path.read_text())
    elif not args.quiet:
        print_run(console, records, spec.baseline)
        console.print(f"results: {markup(str(results_path))}")
        console.print(f"leaderboard: {markup(str(out.page))}")
    if interrupted:
        console.print(f"[yellow]interrupted[/]: {len(records)} records kept; continue with "
                      f"attnbench run {markup(args.suite)} --resume {markup(str(out.target))}")
        return 130
    if args.strict and any(r.status in FAILURES for r in records):
        return EXIT_STRICT
    return EXIT_OK


