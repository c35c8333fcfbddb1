"""documentation/cli_reference.md is what scripts/cli_reference.py makes of the commands' argparse parsers: a
changed option, default or help text fails here until the reference is regenerated."""

from __future__ import annotations

import difflib
import importlib.util

from cli_commands import REPO, commands

SCRIPT = REPO / "scripts" / "cli_reference.py"
REFERENCE = REPO / "documentation" / "cli_reference.md"


def load_script():
    spec = importlib.util.spec_from_file_location("cli_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_matches_the_parsers():
    script = load_script()
    expected = script.render()
    committed = REFERENCE.read_text() if REFERENCE.exists() else ""
    if committed != expected:
        diff = "".join(list(difflib.unified_diff(committed.splitlines(True), expected.splitlines(True),
                                                 "documentation/cli_reference.md (committed)",
                                                 "from the parsers", n=0))[:60])
        raise AssertionError("documentation/cli_reference.md differs from the commands' parsers. Regenerate it "
                             f"with `{script.REGENERATE}` and commit it.\n{diff}")


def test_cli_reference_covers_every_command_and_option():
    script = load_script()
    text = script.render()
    for name in commands():
        assert f"## {name}\n" in text, name
    predict = script.build_parser(commands()["cmbunet_predict"])
    for action in predict._actions:
        if action.help != "==SUPPRESS==" and action.option_strings and action.dest != "help":
            assert f"`{action.option_strings[0]}" in text, action.option_strings


def test_machine_dependent_defaults_are_described_not_printed():
    text = load_script().render()
    line = next(l for l in text.splitlines() if l.startswith("| `-np N`, `--num-processes N`"))
    assert "depends on the machine" in line and "min(4, CPUs)" in line
