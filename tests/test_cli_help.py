"""``--help`` of every command of setup.py: exits 0, every option has help text, defaults are shown once and
correctly, every long option has a dashed spelling (the nnU-Net spellings stay as aliases), ``-f``/``--folds``
wherever folds are taken, and ``-npp`` means one thing."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from cli_commands import build_parser, commands, entry_point

#: Options whose default depends on the machine, so the help names the rule instead of the value.
MACHINE_DEPENDENT_DEFAULTS = {("cmbunet_plan_and_preprocess", "np"), ("cmbunet_train", "num_workers")}


def visible_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.help is not argparse.SUPPRESS]


@pytest.mark.parametrize("command", sorted(commands()))
def test_help_runs_and_shows_each_default_once(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        entry_point(command)(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {command}")
    assert "(default: None)" not in out

    parser = build_parser(command)
    formatter = parser._get_formatter()
    for action in visible_actions(parser):
        name = f"{command} {'/'.join(action.option_strings) or action.dest}"
        assert action.help and action.help.strip(), f"{name}: no help text"
        text = formatter._expand_help(action)
        assert len(re.findall(r"\bdefault\b", text)) <= 1, f"{name}: default given more than once: {text!r}"
        default = action.default
        if ("default" in text and isinstance(default, (int, float, str, Path)) and not isinstance(default, bool)
                and (command, action.dest) not in MACHINE_DEPENDENT_DEFAULTS):
            assert str(default) in text, f"{name}: help names a default, but not the real one ({default}): {text!r}"


@pytest.mark.parametrize("command", sorted(commands()))
def test_long_options_have_dashed_spellings(command):
    for action in visible_actions(build_parser(command)):
        strings = action.option_strings
        for option in strings:
            name = option.lstrip("-")
            if "_" in name:  # --save_probabilities, -num_parts: nnU-Net spellings, kept as aliases
                assert f"--{name.replace('_', '-')}" in strings, f"{command} {option}: no dashed spelling"
            if not option.startswith("--") and len(name) > 1:  # -device, -npp, -ref: nnU-Net style
                assert any(s.startswith("--") for s in strings), f"{command} {option}: no --long spelling"
        if action.dest == "folds":
            assert {"-f", "--folds"} <= set(strings), f"{command}: folds need both -f and --folds"
        if "-npp" in strings:  # as in nnU-Net: the workers that read and preprocess the next cases
            assert "preprocess" in action.help, f"{command} -npp: means something other than preprocessing workers"


def test_old_spellings_still_work(capsys):
    predict = build_parser("cmbunet_predict").parse_args(
        ["-i", "x", "-o", "y", "-d", "1", "--save_probabilities", "-num_parts", "2", "-part_id", "1", "--npp", "0"])
    assert (predict.save_probabilities, predict.num_parts, predict.part_id, predict.npp) == (True, 2, 1, 0)
    dashed = build_parser("cmbunet_predict").parse_args(
        ["-i", "x", "-o", "y", "-d", "1", "--save-probabilities", "--num-parts", "2", "--part-id", "1",
         "--preprocessing-workers", "0"])
    assert vars(dashed) == vars(predict)
    plan = build_parser("cmbunet_plan_and_preprocess").parse_args(["-d", "1", "--verify_dataset_integrity", "-np", "1"])
    assert plan.verify_dataset_integrity and plan.np == 1 and plan.d == "1"
    assert vars(build_parser("cmbunet_plan_and_preprocess").parse_args(
        ["--dataset", "1", "--verify-dataset-integrity", "--num-processes", "1"])) == vars(plan)
    evaluate = build_parser("cmbunet_evaluate").parse_args(["--reference", "r", "--predictions", "p", "--output", "o"])
    assert (str(evaluate.ref), str(evaluate.pred), str(evaluate.out_dir)) == ("r", "p", "o")

    # cmbunet_train's data-loading workers: --num-workers; the old -npp still works, hidden, with a warning
    train = build_parser("cmbunet_train")
    assert train.parse_args(["1", "0", "--num-workers", "0", "--c"]).num_workers == 0
    capsys.readouterr()
    old = train.parse_args(["1", "0", "-npp", "0", "--continue"])
    assert old.num_workers == 0 and old.resume
    assert "-npp is deprecated; use --num-workers" in capsys.readouterr().err
    assert "-npp" not in train.format_help()
    assert train.parse_args(["1", "0"]).num_workers >= 0  # the default survives the hidden alias
