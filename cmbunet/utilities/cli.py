"""Shared command-line plumbing: user errors print one clear line and exit non-zero, no traceback."""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Callable

from cmbunet.errors import CMBUNetError
from cmbunet.paths import DEFAULT_PLANS_NAME

#: What Ctrl-C prints for commands whose plain re-run skips finished work (prediction, preprocessing, conversion).
INTERRUPTED = "interrupted; finished outputs are kept and a re-run continues where this one stopped"

Main = Callable[[list[str] | None], int | None]


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` of every cmbunet command: each option's default is shown exactly once.

    ``(default: X)`` is appended to an option's help unless the text already says what the default is (it
    contains "default", e.g. ``default: $CMBUNET_RESULTS``), or the default is None, False or empty (a switch
    that is off, an option that is required or whose absence means "not set"). Used instead of
    ``ArgumentDefaultsHelpFormatter``, which printed ``(default: None)`` and a second default after hand-written
    ones."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or "default" in text or default is None or default is False
                or default is argparse.SUPPRESS or (isinstance(default, (list, tuple)) and not default)):
            return text
        return f"{text} (default: %(default)s)"


def command_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The parser every cmbunet command starts from, so that all share one ``--help`` layout (:class:`HelpFormatter`)."""
    return argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)


#: Help of ``-p`` on the commands that find a trained model by dataset.
MODEL_PLANS_HELP = (f"plans name of the model (default {DEFAULT_PLANS_NAME}: CMBUNET_RESULTS/DatasetXXX_Name/cmbunet; "
                    "another name: cmbunet__NAME)")


#: Help of a dataset argument that takes an id or a full name.
DATASET_HELP = "dataset id (e.g. 1) or name (Dataset001_Name)"


def add_dataset_option(parser: argparse.ArgumentParser) -> None:
    """``-d/--dataset`` (required, into ``dataset``), the same on every command that reads one trained dataset."""
    parser.add_argument("-d", "--dataset", dest="dataset", required=True, help=DATASET_HELP)


#: ``-device``: ``auto`` runs on a CUDA GPU when one is visible, else on the CPU.
DEVICE_CHOICES = ("auto", "cpu", "cuda")


def add_device_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``-device/--device {auto,cpu,cuda}`` (default auto), the same on every command that runs networks."""
    parser.add_argument("-device", "--device", choices=DEVICE_CHOICES, default="auto",
                        help=f"{what}: auto = cuda when a CUDA GPU is visible, else cpu (default: auto)")


def resolve_device_choice(choice: str) -> tuple[str, str]:
    """``(device, why)``: ``cpu`` or ``cuda`` for a ``-device`` value, and the reason to print; ``cuda`` without a
    visible GPU is an error rather than a silent fall back to the CPU."""
    import torch  # every command imports this module: --help loads no torch

    available = torch.cuda.is_available()
    if choice == "auto":
        return ("cuda", "auto: a CUDA GPU is visible") if available else ("cpu", "auto: no CUDA GPU is visible")
    if choice == "cuda" and not available:
        raise CMBUNetError("-device cuda was requested but no CUDA GPU is available; use -device cpu or auto")
    return choice, f"-device {choice}"


def add_folds_option(parser: argparse.ArgumentParser, help: str) -> None:
    """``-f/--folds F [F ...]`` (into ``folds``, None when absent): ``help`` says which folds the command then takes."""
    parser.add_argument("-f", "--folds", nargs="+", default=None, help=help)


class _PlansNameAction(argparse.Action):
    """Stores ``-p NAME`` and sets ``plans_name_given``: some commands fall back to another source than the default
    name when ``-p`` is absent (the name recorded in a model zip), or refuse ``-p`` where it cannot apply."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001
        setattr(namespace, self.dest, values)
        namespace.plans_name_given = True


def add_plans_option(parser: argparse.ArgumentParser, help: str = MODEL_PLANS_HELP) -> None:
    """``-p/--plans PLANS_NAME`` (into ``plans_name``), the same on every command that plans, trains or reads a model.

    ``plans_name_given`` tells whether ``-p`` was on the command line (``plans_name`` holds the default otherwise)."""
    parser.add_argument("-p", "--plans", dest="plans_name", default=DEFAULT_PLANS_NAME, metavar="PLANS_NAME",
                        action=_PlansNameAction, help=help)
    parser.set_defaults(plans_name_given=False)


def deprecated_alias(replacement: str) -> type[argparse.Action]:
    """An argparse action for an old option spelling that still works but is hidden from ``--help``: it stores
    the value like ``replacement`` and prints a one-line deprecation warning. Declare it with
    ``help=argparse.SUPPRESS, default=argparse.SUPPRESS`` and the ``dest`` of ``replacement``."""

    class DeprecatedAlias(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001
            print(f"warning: {option_string} is deprecated; use {replacement}", file=sys.stderr)
            setattr(namespace, self.dest, values)

    return DeprecatedAlias


def run_cli(main: Main | None = None, *, interrupted: str = INTERRUPTED) -> Callable:
    """Decorator for CLI entry points: turn :class:`CMBUNetError` and ``OSError`` (e.g. an unwritable output folder)
    into ``error: ...`` on stderr and exit code 2; Ctrl-C prints ``interrupted`` and exits 130.

    Use as ``@run_cli``, or ``@run_cli(interrupted="...")`` for a command whose re-run needs more than the same
    command line (``cmbunet_train`` continues only with ``--c``)."""
    if main is None:
        return functools.partial(run_cli, interrupted=interrupted)

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            code = main(argv)
        except CMBUNetError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except OSError as e:  # unwritable output folder, a path through a regular file, disk full, ...
            where = f"{e.filename}: " if e.filename else ""
            print(f"error: {where}{e.strerror or e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(interrupted, file=sys.stderr)
            return 130
        return int(code or 0)

    return wrapper
