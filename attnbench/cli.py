"""Command line: ``attnbench run | validate | list | models | plugins | env | report | compare | recommend | export |
new-plugin``.

Exit codes: 0 done (whatever the records' statuses), 1 usage or input error,
2 internal error, 3 ``--strict`` and some record is incorrect, crashed,
error or timeout, 4 ``compare --fail-on-regression`` found a regression.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from attnbench.errors import UserError

EXIT_OK, EXIT_INPUT, EXIT_INTERNAL, EXIT_STRICT = 0, 1, 2, 3


def _cmd_plugins(args: argparse.Namespace, console: Console) -> int:
    from attnbench.plugins import load_registry

    registry = load_registry()
    if args.json:
        print(json.dumps([p.to_dict() for p in registry.plugins], indent=2))
        return EXIT_OK
    table = Table(title="attnbench plugins")
    for col in ("plugin", "distribution", "version", "implementations", "status"):
        table.add_column(col)
    for p in registry.plugins:
        status = "[green]ok[/]" if p.ok else "[red]failed:[/] " + _escape("; ".join(p.errors))
        table.add_row(_escape(p.name), _escape(p.distribution), _escape(p.version),
                      _escape(", ".join(p.implementations) or "-"), status)
    console.print(table)
    return EXIT_OK


def _cmd_list(args: argparse.Namespace, console: Console) -> int:
    from attnbench.plugins import load_registry
    from attnbench.textsafe import plain

    registry = load_registry()
    caps = [impl.capabilities() for impl in registry.implementations.values()]
    if args.json:
        print(json.dumps(caps, indent=2))
        for p in registry.failures:
            print(plain(f"attnbench: plugin {p.name} failed: {'; '.join(p.errors)}"), file=sys.stderr)
        return EXIT_OK
    table = Table(title="attnbench implementations")
    table.add_column("name", no_wrap=True)
    for col in ("kind", "devices", "dtypes", "masks", "GQA", "bwd", "batches", "variants"):
        table.add_column(col)
    table.add_column("description", ratio=1, overflow="fold")
    short = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float8_e4m3fn": "e4m3", "float8_e5m2": "e5m2",
             "sliding_window": "window"}
    for c in caps:
        kind = ("exact" if c["exact"] else "approx") + ("" if c["ranked"] else ", unranked")
        batches = [name for name in ("dense", "ragged", "paged") if c[name]]
        variants = (["dv"] if c["head_dim_v"] else []) + c["score_mods"]
        table.add_row(*(_escape(x) for x in (
            c["name"], kind, ",".join(c["devices"]), ",".join(short.get(d, d) for d in c["dtypes"]),
            ",".join(short.get(m, m) for m in c["masks"]), "yes" if c["gqa"] else "no",
            "yes" if c["backward"] else "no", ",".join(batches), ",".join(variants) or "-", c["description"],
        )))
    console.print(table)
    for p in registry.failures:
        console.print(f"[red]plugin {_escape(p.name)} failed:[/] {_escape('; '.join(p.errors))}")
    return EXIT_OK


def _cmd_env(args: argparse.Namespace, console: Console) -> int:
    from attnbench.hardware import fingerprint

    info = fingerprint()
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    table = Table(title="attnbench environment", show_header=False)
    table.add_column("key")
    table.add_column("value", overflow="fold")
    for key, value in info.items():
        if key == "cuda_devices":
            value = "; ".join(f"{d['index']}: {d['name']} ({d['memory_bytes'] / 2**30:.1f} GiB, sm {d['capability']})" for d in value) or "none"
        elif key == "memory_bytes" and value:
            value = f"{value / 2**30:.1f} GiB"
        table.add_row(key, _escape("-" if value is None else str(value)))
    console.print(table)
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace, console: Console) -> int:
    from attnbench.suite import SuiteError, load_suite

    failed = False
    for path in args.suites:
        try:
            suite = load_suite(path)
        except SuiteError as exc:
            Console(stderr=True, soft_wrap=True).print(f"[bold red]invalid:[/] {_escape(str(exc))}")
            failed = True
            continue
        counts = ", ".join(f"{len(suite.cases(d))} {d} cases" + (f" + {len(suite.tasks(d))} tasks" if suite.tasks(d) else "")
                           for d in ("cpu", "cuda"))
        console.print(f"[green]ok[/] {_escape(path)}: suite {_escape(suite.name)}, {counts}")
        # A case has no field for the model it came from: say here which cases each preset made.
        lines = {d: _model_counts(suite.models(d)) for d in ("cpu", "cuda")}
        if lines["cpu"] == lines["cuda"]:
            lines = {"cpu and cuda": lines["cpu"]}
        for device, text in lines.items():
            if text:
                console.print(f"  models on {device}: {_escape(text)}")
    return EXIT_INPUT if failed else EXIT_OK


def _model_counts(models: dict) -> str:
    """``llama-3.1-8b 4 cases, mistral-7b 4 cases (those of llama-3.1-8b)``."""
    parts, seen = [], {}
    for name, cases in models.items():
        same = seen.setdefault(tuple(cases), name)
        count = f"{len(cases)} case" + ("" if len(cases) == 1 else "s")
        parts.append(f"{name} {count}" + (f" (those of {same})" if same != name else ""))
    return ", ".join(parts)


def _cmd_models(args: argparse.Namespace, console: Console) -> int:
    from attnbench.models import MODELS

    if args.json:
        print(json.dumps([m.to_dict() for m in MODELS.values()], indent=2))
        return EXIT_OK
    table = Table(title="attnbench model presets (suite key model, run --model, recommend --model)")
    for col in ("name", "heads_q", "heads_kv", "head_dim"):
        table.add_column(col, justify="left" if col == "name" else "right", no_wrap=True)
    table.add_column("variants, forms", overflow="fold")
    table.add_column("note", ratio=1, overflow="fold")
    table.add_column("source", overflow="fold")
    for m in MODELS.values():
        note = f"[yellow]not a case yet:[/] {_escape(m.note)}" if m.pending else _escape(m.note)
        variants = [f"{k}={v}" for k, v in m.variants.items()] + [f.name for f in m.forms]
        table.add_row(_escape(m.name), str(m.heads_q), str(m.heads_kv), "pending" if m.head_dim is None else
                      str(m.head_dim), _escape(", ".join(variants) or "-"), note, _escape(m.source))
    console.print(table)
    return EXIT_OK


def _cmd_run(args: argparse.Namespace, console: Console) -> int:
    from attnbench.run_command import run_command

    return run_command(args, console)


def _cmd_report(args: argparse.Namespace, console: Console) -> int:
    from attnbench.report.runs import find_results, load_runs

    paths = find_results(args.results)
    if args.output:
        from attnbench.report.html import write_report

        page = write_report(paths, args.output)
        console.print(f"report: {_escape(str(page))}")
        return EXIT_OK
    from attnbench.report.board import print_leaderboards
    from attnbench.report.quality import kernel_runs, print_task_boards, task_boards
    from attnbench.report.rank import leaderboard
    from attnbench.report.runs import group_runs

    runs = load_runs(paths)
    print_leaderboards(console, [leaderboard(g) for g in group_runs(kernel_runs(runs))])
    print_task_boards(console, task_boards(runs))
    return EXIT_OK


def _cmd_compare(args: argparse.Namespace, console: Console) -> int:
    from attnbench.compare import EXIT_REGRESSION, compare_by, compare_runs, print_comparison, print_steps
    from attnbench.report.runs import load_runs, load_tree

    if args.by:
        steps, notes = compare_by(load_tree([args.base, *args.new]), args.by)
        print_steps(console, steps, notes, args.by, args.fail_on_regression, every_pair=args.all)
        failed = args.fail_on_regression is not None and any(
            c.regresses(args.fail_on_regression) for step in steps for c in step.changes)
        return EXIT_REGRESSION if failed else EXIT_OK
    if len(args.new) != 1:
        raise UserError(f"compare takes BASE and one NEW ({1 + len(args.new)} results given); "
                        "to compare several runs along torch versions, add --by torch")
    base, new = load_runs([args.base, args.new[0]])
    changes = compare_runs(base, new)
    print_comparison(console, base, new, changes, args.fail_on_regression, every_pair=args.all)
    if args.fail_on_regression is not None and any(c.regresses(args.fail_on_regression) for c in changes):
        return EXIT_REGRESSION
    return EXIT_OK


def _cmd_recommend(args: argparse.Namespace, console: Console) -> int:
    from attnbench.recommend import model_shape, print_recommendations, recommend
    from attnbench.report.runs import load_tree

    shape = model_shape(args.model) if args.model else None
    print_recommendations(console, recommend(load_tree(args.results), args.phase, shape))
    return EXIT_OK


def _cmd_export(args: argparse.Namespace, console: Console) -> int:
    from attnbench.export import export

    count = export(args.results, args.format, args.output)
    unit = {"pyperf": "benchmarks", "dispatch": "case signatures"}.get(args.format, "rows")
    console.print(f"{count} {unit} -> {_escape(args.output)}")
    return EXIT_OK


def _cmd_new_plugin(args: argparse.Namespace, console: Console) -> int:
    from pathlib import Path

    from attnbench.scaffold import scaffold_plugin

    root = scaffold_plugin(args.name, Path(args.dir))
    console.print(_escape(f"created {root}: cd {root} && pip install -e '.[test]' && pytest"))
    return EXIT_OK


def _escape(text: object) -> str:
    """Foreign text (plugins, suites, results files, paths) is shown as text: no rich markup, no control characters."""
    from attnbench.textsafe import markup

    return markup(text, keep_lines=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnbench", description="Benchmark attention implementations.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="measure a suite on this machine, or on a Slurm or Ray fleet")
    p.add_argument("suite", help="suite YAML file, e.g. suites/long_seq.yaml")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda when available")
    p.add_argument("--impl", action="append", default=[], metavar="PATTERN",
                   help="only implementations matching this glob (repeatable; replaces the suite's include)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help="leave out matching implementations (repeatable)")
    p.add_argument("--where", action="append", default=[], metavar="FIELD=V1,V2",
                   help="only cases whose FIELD (batch, seq_q, dtype, mask, pass, softcap, ...) is one of the values; "
                   "a packed batch's lengths joined by : (seqlens_q=37:100:5) (repeatable)")
    p.add_argument("--output", metavar="PATH", help="a run directory (journal.jsonl, results.json, index.html), or FILE.json "
                   "(with FILE.journal.jsonl and FILE.html beside it); must not hold an earlier run; "
                   "default reports/<suite>/<run-id>/")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run (its directory or FILE.json), made with the "
                   "same suite, attnbench and options: measure only what its journal lacks")
    p.add_argument("--seed", type=int, default=0, help="base seed for inputs (default 0)")
    p.add_argument("--model", metavar="NAME", help="every case takes this model preset's heads_q, heads_kv and "
                   "head_dim (attnbench models lists them)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="per-pair timeout (default: the suite's)")
    p.add_argument("--memory-budget", metavar="FRACTION|BYTES", help="skip cases predicted to need more (e.g. 0.8 or 16GiB)")
    p.add_argument("--processes", type=int, help="CPU worker processes that each time every pair (default: the suite's)")
    p.add_argument("--warm-l2", action="store_true", help="CUDA: do not flush L2 between repeats")
    p.add_argument("--cuda-graph", action="store_true", help="CUDA: replay the timed call from a CUDA graph")
    p.add_argument("--peak-tflops", type=float, metavar="TFLOPS", help="compute ceiling for %% of peak (default: the published table, CUDA only)")
    p.add_argument("--peak-gbps", type=float, metavar="GBPS", help="bandwidth ceiling for %% of peak (default: the published table, CUDA only)")
    peaks = p.add_mutually_exclusive_group()
    peaks.add_argument("--measure-peaks", action="store_true",
                       help="measure this machine's matmul and copy ceilings again instead of using the cached ones")
    peaks.add_argument("--no-measure-peaks", action="store_true",
                       help="skip measuring the ceilings: no roofline and no implausible-time check")
    p.add_argument("--strict", action="store_true", help="exit 3 when any pair is incorrect, error, timeout or crashed")
    p.add_argument("--quiet", action="store_true", help="no progress bar or tables")
    p.add_argument("--json", action="store_true", help="print results.json to stdout at the end")
    p.add_argument("--executor", choices=("local", "slurm", "ray"), default="local",
                   help="where pairs are measured: this machine, one slot per GPU (default); a Slurm job array; "
                        "a Ray task per case (docs/executors.md)")
    p.add_argument("--slurm-partition", metavar="NAME", help="slurm: partition to submit to")
    p.add_argument("--slurm-gres", metavar="GRES", help="slurm: generic resources per job, e.g. gpu:h100:1 "
                   "(a job gets one case per GPU; default for CUDA: one GPU of any type)")
    p.add_argument("--slurm-constraint", metavar="FEATURES", help="slurm: node features, e.g. h100|a100")
    p.add_argument("--slurm-time", type=int, metavar="MINUTES", help="slurm: time limit per job (default: the "
                   "worst case the per-pair timeout allows)")
    p.add_argument("--ray-address", metavar="ADDRESS", help="ray: cluster to connect to (default: RAY_ADDRESS, "
                   "else a local Ray)")
    p.add_argument("--ray-accelerator-type", metavar="TYPE", help="ray: only nodes advertising this accelerator, "
                   "e.g. H100; unavailable means infeasible records, not waiting")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("validate", help="check suite files without running them")
    p.add_argument("suites", nargs="+", metavar="SUITE")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("plugins", help="list loaded plugins and load failures")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_plugins)

    p = sub.add_parser("list", help="list implementations and their declared capabilities")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("models", help="list the model presets: their heads and the config each is transcribed from")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("env", help="print the hardware and environment fingerprint")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_env)

    p = sub.add_parser("report", help="leaderboard of one or more results files: HTML with -o, else tables")
    p.add_argument("results", nargs="+", metavar="RESULTS", help="results.json files, run directories, or directories "
                   "searched at any depth for results files (machines, dates, torch versions)")
    p.add_argument("-o", "--output", metavar="DIR", help="write DIR/index.html, a self-contained page")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("compare", help="time ratio per case and implementation between two results, with significance")
    p.add_argument("base", metavar="BASE", help="results.json or run directory to compare against")
    p.add_argument("new", metavar="NEW", nargs="*", help="results.json or run directory to judge; with --by, any "
                   "number of results files and directories (searched at any depth), BASE among them")
    p.add_argument("--by", choices=("torch",), help="compare the latest run of each torch version with the latest of "
                   "the next version, per suite and hardware")
    p.add_argument("--fail-on-regression", type=float, metavar="PCT",
                   help="exit 4 when a pair broke (ok -> failing) or got significantly slower by more than PCT percent")
    p.add_argument("--all", action="store_true", help="list every pair, within-noise ones included, not only the changes")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("new-plugin", help="write a plugin package to start from: attnbench-NAME/")
    p.add_argument("name", metavar="NAME", help="lower-case identifier; the implementation is NAME.attention")
    p.add_argument("--dir", default=".", metavar="DIR", help="where to create attnbench-NAME/ (default: here)")
    p.set_defaults(func=_cmd_new_plugin)

    from attnbench.export import FORMATS  # pandas and pyperf load only when exporting
    from attnbench.recommend import PHASES

    p = sub.add_parser("recommend", help="per case, the fastest correct implementation, its speedup and peak memory")
    p.add_argument("results", nargs="+", metavar="RESULTS", help="results.json files, run directories, or directories "
                   "searched at any depth")
    p.add_argument("--phase", choices=PHASES, help="only training (backward), prefill (forward, more than 16 queries) "
                   "or decode (forward, at most 16 queries) cases")
    p.add_argument("--model", metavar="NAME", help="only the cases with this model preset's heads_q, heads_kv and head_dim")
    p.set_defaults(func=_cmd_recommend)

    p = sub.add_parser("export", help="write results as CSV, Parquet, pyperf JSON, or a dispatch table for serving")
    p.add_argument("results", metavar="RESULTS", nargs="+", help="results.json or run directory; dispatch: any number "
                   "of results files and directories (searched at any depth)")
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("-o", "--output", metavar="PATH", required=True, help="file to write")
    p.set_defaults(func=_cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attnbench`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Piped output (CI logs, files) gets a wide table instead of rich's 80-column default, or COLUMNS when set.
    columns = os.environ.get("COLUMNS", "")
    console = Console(width=None if sys.stdout.isatty() else int(columns) if columns.isdigit() else 160)
    try:
        return args.func(args, console)
    except UserError as exc:
        if args.debug:
            traceback.print_exc()
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {_escape(str(exc))}")
        return EXIT_INPUT
    except KeyboardInterrupt:
        return 130
    except Exception:  # noqa: BLE001 - anything else is our bug: say so, with the traceback
        traceback.print_exc()
        print("attnbench: internal error (the traceback above is a bug in attnbench; please report it)", file=sys.stderr)
        return EXIT_INTERNAL
