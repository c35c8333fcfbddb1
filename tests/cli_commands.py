"""The console commands of setup.py (``COMMANDS``) and their argparse parsers; shared by the tests of ``--help``
and of the documentation. Read from setup.py's source, so a new command is covered without editing the tests."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]


def _cli_reference_script():
    """scripts/cli_reference.py as a module: its reading of setup.py's COMMANDS is the one the tests use."""
    spec = importlib.util.spec_from_file_location("cli_reference_script", REPO / "scripts" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: ``{"cmbunet_train": "cmbunet.training.cli:main", ...}`` from setup.py, without running it.
commands = _cli_reference_script().commands


def entry_point(command: str) -> Callable[[list[str] | None], int]:
    module, func = commands()[command].split(":")
    return getattr(importlib.import_module(module), func)


def build_parser(command: str) -> argparse.ArgumentParser:
    """A fresh parser of the command: ``build_parser()`` of the module of ``main``, ``export_parser()`` of
    ``export_main`` and so on."""
    module, func = commands()[command].split(":")
    name = "build_parser" if func == "main" else func.removesuffix("_main") + "_parser"
    return getattr(importlib.import_module(module), name)()
