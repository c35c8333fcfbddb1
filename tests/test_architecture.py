"""The import graph of cmbunet follows its data flow: no import cycles, and no module imports a layer above its own.

Layers, lowest first (``documentation/architecture.md``):

    base (errors, paths, utilities, imageio) < raw data (dataset, synthetic) < plans (fingerprint, planner,
    schema) < preprocessing < networks < model folder < inference < training < evaluation < report < commands

That is the data flow ``raw -> fingerprint -> plans -> preprocessed -> trained stages -> predictions ->
evaluation``, with one deliberate swap: ``inference`` sits below ``training``, because training's false-positive
mining runs the screening score map and the candidate finder of ``inference``, while prediction must never
import training code. Commands (the console scripts' modules that only parse arguments and call the layers)
may import anything.

The graph is read from the source with ``ast``: module-level imports (outside ``if TYPE_CHECKING:``) for the
first cycle check, and also the imports inside functions for the layer check; a second cycle check counts every
import, those under ``if TYPE_CHECKING:`` and inside functions included.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cmbunet"

#: (layer, module prefixes); the longest matching prefix decides a module's layer.
LAYERS = [
    ("base", ["cmbunet", "cmbunet.errors", "cmbunet.paths", "cmbunet.utilities", "cmbunet.imageio"]),
    ("raw data", ["cmbunet.dataset", "cmbunet.synthetic"]),
    ("plans", ["cmbunet.plans"]),
    ("preprocessing", ["cmbunet.preprocessing"]),
    ("networks", ["cmbunet.networks"]),
    ("model folder", ["cmbunet.model_folder"]),
    ("inference", ["cmbunet.inference"]),
    ("training", ["cmbunet.training"]),
    ("evaluation", ["cmbunet.evaluation"]),
    ("report", ["cmbunet.report"]),
    # cmbunet.report.cli stays in the report layer: it also holds write_report, which cmbunet.report exports
    ("commands", ["cmbunet.synthetic.cli", "cmbunet.plan_and_preprocess", "cmbunet.training.cli", "cmbunet.inference.cli",
                  "cmbunet.evaluation.cli", "cmbunet.model_sharing", "cmbunet.demo"]),
]

#: Upward imports that exist for now, each with why it is not fixed here.
KNOWN_UPWARD: set[tuple[str, str]] = set()


def module_files() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = module_files()


def _resolve(name: str) -> str | None:
    """The cmbunet module that ``import name`` loads (a package, or the module ``name`` itself)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [t for a in node.names if (t := _resolve(a.name))]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    out = []
    for alias in node.names:  # `from cmbunet.plans import schema` imports the module cmbunet.plans.schema
        full = f"{base}.{alias.name}"
        target = full if full in MODULES else _resolve(base)
        if target:
            out.append(target)
    return out


def module_imports(tree: ast.AST, module: str, is_package: bool,
                   type_checking: bool = False) -> tuple[set[str], set[str]]:
    """``(module-level imports, all imports)`` of one parsed module, as cmbunet modules; ``type_checking`` also
    counts the imports under ``if TYPE_CHECKING:`` (as module-level ones), which type checkers and import linters
    follow."""
    top: set[str] = set()
    every: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test) and not type_checking:
                continue  # annotations only: never imported at run time
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in _targets(child, module, is_package):
                    if target != module:
                        every.add(target)
                        if not in_function:
                            top.add(target)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return top, every


def import_graph(type_checking: bool = False) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """``(module-level edges, all edges)`` between cmbunet modules (see :func:`module_imports`)."""
    top: dict[str, set[str]] = defaultdict(set)
    every: dict[str, set[str]] = defaultdict(set)
    for module, path in MODULES.items():
        top[module], every[module] = module_imports(ast.parse(path.read_text(), str(path)), module,
                                                    path.name == "__init__.py", type_checking)
    return top, every


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best is not None, f"{module} belongs to no layer; add it to LAYERS"
    return best


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(MODULES):
        if start not in state and (cycle := dfs(start)):
            return cycle
    return None


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_import_cycles():
    top, every = import_graph()
    cycle = find_cycle(top)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
    plans = {m: {t for t in ts if t.startswith("cmbunet.plans")} for m, ts in every.items() if m.startswith("cmbunet.plans")}
    cycle = find_cycle(plans)  # the plans package has none even counting imports inside functions
    assert cycle is None, "import cycle in cmbunet.plans: " + " -> ".join(cycle)


def test_no_import_cycles_counting_every_import():
    """No circle either counting the imports under ``if TYPE_CHECKING:`` (type checkers and import linters follow
    them) and those inside functions: two modules that need each other's names belong together, or the names
    they share belong in a third."""
    _, every = import_graph(type_checking=True)
    cycle = find_cycle(every)
    assert cycle is None, "import cycle (counting `if TYPE_CHECKING:` and function imports): " + " -> ".join(cycle)


def test_no_upward_imports():
    _, every = import_graph()
    upward = {(m, t) for m, targets in every.items() for t in targets if layer_of(t) > layer_of(m)}
    unexpected = sorted(upward - KNOWN_UPWARD)
    assert not unexpected, "upward imports:\n" + "\n".join(
        f"  {m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})" for m, t in unexpected)
    assert not KNOWN_UPWARD - upward, f"fixed, remove from KNOWN_UPWARD: {sorted(KNOWN_UPWARD - upward)}"


def test_the_graph_is_read():
    """The checks above see real edges (a parser that found none would pass them trivially)."""
    top, every = import_graph()
    assert "cmbunet.plans.schema" in top["cmbunet.plans.plans_io"]
    assert "cmbunet.networks" in every["cmbunet.model_folder"] - top["cmbunet.model_folder"]  # inside a function
    assert find_cycle({"cmbunet.errors": {"cmbunet.paths"}, "cmbunet.paths": {"cmbunet.errors"}}) is not None
    typed = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cmbunet.plans.schema import Plans\n")
    assert module_imports(typed, "cmbunet.plans.topology", False) == (set(), set())
    assert module_imports(typed, "cmbunet.plans.topology", False, type_checking=True)[1] == {"cmbunet.plans.schema"}
