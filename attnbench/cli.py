"""Command line: ``attnbench run | validate | list | plugins | env``.

Exit codes: 0 done (whatever the records' statuses), 1 usage or input error,
2 internal error, 3 ``--strict`` and some record is incorrect, crashed,
error or timeout.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

EXIT_OK, EXIT_INPUT, EXIT_INTERNAL, EXIT_STRICT = 0, 1, 2, 3


class UserError(Exception):
    """A problem with what the user asked for: shown as one paragraph, no traceback."""


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

    registry = load_registry()
    caps = [impl.capabilities() for impl in registry.implementations.values()]
    if args.json:
        print(json.dumps(caps, indent=2))
        return EXIT_OK
    table = Table(title="attnbench implementations")
    table.add_column("name", no_wrap=True)
    for col in ("kind", "devices", "dtypes", "masks", "GQA", "bwd"):
        table.add_column(col)
    table.add_column("description", ratio=1, overflow="fold")
    short = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "sliding_window": "window"}
    for c in caps:
        kind = ("exact" if c["exact"] else "approx") + ("" if c["ranked"] else ", unranked")
        table.add_row(*(_escape(x) for x in (
            c["name"], kind, ",".join(c["devices"]), ",".join(short[d] for d in c["dtypes"]),
            ",".join(short.get(m, m) for m in c["masks"]), "yes" if c["gqa"] else "no",
            "yes" if c["backward"] else "no", c["description"],
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


def _escape(text: str) -> str:
    """Plugin-supplied text is shown as text, never as rich markup."""
    from rich.markup import escape

    return escape(str(text))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnbench", description="Benchmark attention implementations.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("plugins", help="list loaded plugins and load failures")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_plugins)

    p = sub.add_parser("list", help="list implementations and their declared capabilities")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("env", help="print the hardware and environment fingerprint")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_env)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attnbench`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console(stderr=False)
    try:
        return args.func(args, console)
    except UserError as exc:
        if args.debug:
            traceback.print_exc()
        Console(stderr=True).print(f"[bold red]error:[/] {_escape(str(exc))}")
        return EXIT_INPUT
    except KeyboardInterrupt:
        return 130
    except Exception:  # noqa: BLE001 - anything else is our bug: say so, with the traceback
        traceback.print_exc()
        print("attnbench: internal error (the traceback above is a bug in attnbench; please report it)", file=sys.stderr)
        return EXIT_INTERNAL
