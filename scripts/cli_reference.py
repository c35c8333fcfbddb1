#!/usr/bin/env python
"""Write documentation/cli_reference.md from the commands' own argparse parsers.

Every console command of setup.py's ``COMMANDS`` is listed with its description, its usage line and a table of
its arguments: the option strings, the default and the help text as ``--help`` prints them. The parser of
``package.module:main`` is ``package.module.build_parser()``; that of ``package.module:NAME_main`` is
``package.module.NAME_parser()``.

    python scripts/cli_reference.py            # rewrite documentation/cli_reference.md
    python scripts/cli_reference.py --check    # exit 1 if the file differs from what the parsers give

``tests/test_cli_reference.py`` fails when the committed file and the parsers disagree.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import sys
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "documentation" / "cli_reference.md"
REGENERATE = "python scripts/cli_reference.py"


def commands() -> dict[str, str]:
    """``{"cmbunet_train": "cmbunet.training.cli:main", ...}`` from setup.py, read without running it."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "COMMANDS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise SystemExit("setup.py defines no COMMANDS")


def build_parser(target: str, cpus: int = 8) -> argparse.ArgumentParser:
    """The parser of one command, built as if the machine had ``cpus`` CPUs."""
    module, func = target.split(":")
    name = "build_parser" if func == "main" else func.removesuffix("_main") + "_parser"
    with mock.patch.object(os, "cpu_count", return_value=cpus):
        return getattr(importlib.import_module(module), name)()


def cell(text: str) -> str:
    """Text for one table cell: one line, ``|`` escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help:
        return ""
    return parser._get_formatter()._expand_help(action)


def default_text(action: argparse.Action, machine_dependent: bool, help: str) -> str:
    """The default as a table cell; the description's own words where the value alone would mislead (it depends
    on the machine, or the help names a default that is not the stored value)."""
    if machine_dependent:
        return "depends on the machine (see description)"
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction,
                           argparse._CountAction)):
        return "off" if action.default in (False, None, 0) else f"`{action.default}`"
    default = action.default
    if default is None or default is argparse.SUPPRESS:
        return "required" if action.required else "—"
    if isinstance(default, (list, tuple)):
        if not default:
            return "none"
        default = " ".join(str(d) for d in default)
    if "default" in help and str(default) not in help:
        return "see description"
    return f"`{cell(default)}`"


def names(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}` (positional)"
    metavar = ""
    if action.nargs != 0:
        if action.choices is not None and action.metavar is None:
            metavar = " {" + ",".join(str(c) for c in action.choices) + "}"
        else:
            metavar = f" {action.metavar or action.dest.upper()}"
            if action.nargs in ("+", "*"):
                metavar += " ..."
    return ", ".join(f"`{cell(option + metavar)}`" for option in action.option_strings)


def command_section(name: str, target: str) -> list[str]:
    parser = build_parser(target)
    other = build_parser(target, cpus=1)
    defaults_elsewhere = {a.dest: a.default for a in other._actions}
    usage = " ".join(parser.format_usage().split())
    lines = [f"## {name}", ""]
    if parser.description:
        lines += [" ".join(parser.description.split()), ""]
    lines += ["```text", usage, "```", "", f"Entry point: `{target}`.", "",
              "| argument | default | description |", "|---|---|---|"]
    for action in parser._actions:
        if action.help is argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        machine = defaults_elsewhere.get(action.dest) != action.default
        text = help_text(parser, action)
        lines.append(f"| {names(action)} | {default_text(action, machine, text)} | {cell(text)} |")
    return lines + [""]


def render() -> str:
    lines = [
        "# Command-line reference",
        "",
        "<!-- Generated from the argparse parsers by scripts/cli_reference.py; do not edit by hand. -->",
        "",
        f"Every console command, its options and their defaults, as `--help` gives them. Generated by `{REGENERATE}`",
        "from the parsers themselves, and checked by `tests/test_cli_reference.py`. Options spelled with underscores",
        "(nnU-Net's spellings) are aliases of the dashed ones; deprecated spellings are not listed. Defaults that",
        "depend on the number of CPUs are described in the text. What the commands are for:",
        "[getting_started.md](getting_started.md).",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    table = commands()
    for name, target in table.items():
        parser = build_parser(target)
        first = " ".join((parser.description or "").split()).split(". ")[0].rstrip(".")
        lines.append(f"| [`{name}`](#{name}) | {cell(first)} |")
    lines.append("")
    for name, target in table.items():
        lines += command_section(name, target)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs; write nothing")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("COLUMNS", "100")
    text = render()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT.relative_to(REPO)} is out of date; run: {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
