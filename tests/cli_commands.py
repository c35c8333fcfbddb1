"""The console commands of setup.py (``COMMANDS``) and their argparse parsers; shared by the tests of ``--help``
and of the documentation. Read from setup.py's source, so a new command is covered without editing the tests."""

from __future__ import annotations

import argparse
import ast
import importlib
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]


def commands() -> dict[str, str]:
    """``{"cmbunet_train": "cmbunet.training.cli:main", ...}`` from setup.py, without running it."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "COMMANDS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py defines no COMMANDS")


def entry_point(command: str) -> Callable[[list[str] | None], int]:
    module, func = commands()[command].split(":")
    return getattr(importlib.import_module(module), func)


def build_parser(command: str) -> argparse.ArgumentParser:
    """A fresh parser of the command: ``build_parser()`` of the module of ``main``, ``export_parser()`` of
    ``export_main`` and so on."""
    module, func = commands()[command].split(":")
    name = "build_parser" if func == "main" else func.removesuffix("_main") + "_parser"
    return getattr(importlib.import_module(module), name)()
