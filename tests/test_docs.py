"""The documentation runs: every command it shows parses with the real command's parser, the README's "Using it
on your own data" block runs end to end, and every relative link and repository path it names exists.

What is checked, in README.md and documentation/*.md:

1. **Options.** Every line of a fenced ```bash / ```sh / ```console / ```shell block, and every line of any
   other fenced block that starts with ``cmbunet_``, is split like the shell splits it (comments dropped,
   ``\\`` continuations joined, ``;``/``&&``/``|`` separating commands). Each ``cmbunet_*`` command found must
   be a command of setup.py's ``COMMANDS``, and its arguments are parsed by that command's own argparse parser
   (``build_parser()``): an unknown option or a value outside an option's choices fails, naming the file and
   line. Option values are not type-checked, so placeholders (``-d ID``, ``-np N``, ``/data/...``) are fine.
   A synopsis line (``cmbunet_train DATASET FOLD [-s screening|...] [--c]``) is checked option by option: each
   option must exist and each ``a|b|c`` alternative must be among its choices. A missing required argument
   fails too, unless the line is in ``EXCERPTS`` (a short, commented allow-list).
2. **The README's own-data flow runs.** Its ```bash block is executed by bash (``set -e -o pipefail``) with
   the worktree's commands on the PATH, after these substitutions only:

   - ``/data/`` becomes a temporary folder, and the VALDO input the flow reads is written first by
     ``cmbunet_synthetic --layout valdo --size small`` (6 training and 2 test subjects; the test subjects,
     labels included, are the prediction input and the reference);
   - ``cmbunet_plan_and_preprocess`` gets ``--preset tiny`` and the tests' shortest schedule
     (``tests/tiny_schedule.py``'s ``TINY_TRAINING_OVERRIDES``) appended, so that training takes seconds.

   Every command must exit 0, and the predictions, the evaluation, the report and the trained fold must exist.
3. **Links and paths.** Every relative markdown link points to an existing file (and a ``#anchor`` to a heading
   of the target document, or an ``<a id>`` set by hand), and every inline-code path into the repository
   (``cmbunet/...``, ``tests/...``, ``benchmarks/...``, ``scripts/...``, ``documentation/...``) and every
   ``NAME.md`` named in the text exists. A section cited by number or title ("benchmarks.md, 6h",
   'benchmarks.md, "Where a spot lies"'), in the docs or in code, is a section of that page, and benchmarks.md
   keeps the anchors it had before its experiment log moved to experiments.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_commands import REPO, build_parser, commands
from tiny_schedule import TINY_TRAINING_OVERRIDES

DOCS = [REPO / "README.md", *sorted((REPO / "documentation").glob("*.md"))]
SHELL_LANGUAGES = {"bash", "sh", "console", "shell"}
SEPARATORS = {";", "&&", "||", "|", "&", ";;", "(", ")", "do", "then", "else"}
REDIRECTIONS = {">", ">>", "<", ">&", "&>", "<&", ">|"}
REPO_FOLDERS = ("cmbunet/", "tests/", "benchmarks/", "scripts/", "documentation/")

#: Documented command lines that are deliberately incomplete excerpts: (document, command) -> why. A missing
#: required argument on any other line fails the test.
EXCERPTS: dict[tuple[str, str], str] = {}


# ------------------------------------------------------------------------------------------- reading the docs
@dataclass
class Block:
    path: Path
    language: str
    lines: list[tuple[int, str]]  # (1-based line number in the file, text)


def fenced_blocks(path: Path) -> list[Block]:
    blocks, current = [], None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            if current is None:
                current = Block(path, stripped[3:].strip().lower(), [])
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.lines.append((number, line))
    assert current is None, f"{path.name}: unclosed code fence"
    return blocks


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """Lines outside fenced blocks."""
    inside, lines = False, []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip().startswith("```"):
            inside = not inside
        elif not inside:
            lines.append((number, line))
    return lines


def logical_lines(block: Block) -> list[tuple[int, str]]:
    """Lines with ``\\`` continuations joined and a ``$ `` prompt removed, numbered by their first line."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, line in block.lines:
        if pending is not None:
            number, line = pending[0], pending[1] + " " + line.strip()
            pending = None
        if line.rstrip().endswith("\\"):
            pending = (number, line.rstrip()[:-1])
            continue
        out.append((number, re.sub(r"^\s*\$ ", "", line)))
    if pending is not None:
        out.append(pending)
    return out


@dataclass
class DocCommand:
    where: str  # "README.md:52"
    doc: str
    command: str
    args: list[str]


#: A usage synopsis rather than a command line: ``[-s a|b]``, ``[options]``.
SYNOPSIS = re.compile(r"\[-|\w\|\w|\[options\]")


def split_commands(text: str) -> list[tuple[str, list[str]]]:
    """The ``cmbunet_*`` commands on one shell line and their arguments (up to a separator or redirection). A
    synopsis line is one command with every word an argument (its ``|`` separates choices, not commands)."""
    if SYNOPSIS.search(text) and text.lstrip().startswith("cmbunet_"):
        words = shlex.split(text, comments=True)
        return [(words[0], words[1:])]
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    found: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    words_before = 0  # words of the current simple command before its command name
    for token in lexer:
        if token in SEPARATORS or token in REDIRECTIONS:
            current, words_before = None, 0
            continue
        if current is not None:
            current.append(token)
            continue
        name = token.rsplit("/", 1)[-1]
        if words_before == 0 and re.fullmatch(r"cmbunet_\w+", name):
            current = []
            found.append((name, current))
        elif not (re.fullmatch(r"[A-Za-z_]\w*=.*", token) or token in ("time", "nohup", "exec")):
            words_before += 1  # a command that is not cmbunet's: its arguments are not commands
    return found


def documented_commands() -> list[DocCommand]:
    found = []
    for path in DOCS:
        for block in fenced_blocks(path):
            lines = logical_lines(block)
            for i in range(len(lines) - 1, 0, -1):  # a synopsis wrapped onto indented lines: "    [--seed S] ..."
                if lines[i][1].lstrip().startswith("[") and SYNOPSIS.search(lines[i - 1][1]):
                    lines[i - 1] = (lines[i - 1][0], lines[i - 1][1] + " " + lines.pop(i)[1].strip())
            for number, line in lines:
                if block.language not in SHELL_LANGUAGES and not line.lstrip().startswith("cmbunet_"):
                    continue
                try:
                    parsed = split_commands(line)
                except ValueError as e:
                    raise AssertionError(f"{path.name}:{number}: cannot be split like a shell line ({e}): {line}")
                found += [DocCommand(f"{path.name}:{number}", path.name, name, args) for name, args in parsed]
    return found


# --------------------------------------------------------------------------------------- 1. options and choices
class ParseError(Exception):
    pass


def placeholder_parser(command: str) -> argparse.ArgumentParser:
    """The command's parser with value types switched off (placeholders such as ``N`` parse), no abbreviated
    options (the docs spell options out) and errors raised."""
    parser = build_parser(command)
    parser.allow_abbrev = False
    for action in parser._actions:
        action.type = None

    def error(message: str):
        raise ParseError(message)

    parser.error = error  # type: ignore[method-assign]
    return parser


def is_synopsis(args: list[str]) -> bool:
    return any(a.startswith("[") or a == "..." or ("|" in a and a != "|") for a in args)


def check_synopsis(command: str, args: list[str]) -> list[str]:
    parser = build_parser(command)
    options = parser._option_string_actions
    problems, previous = [], None
    for raw in args:
        token = raw.strip("[]").removesuffix("...").strip("[]")
        if re.match(r"^--?[A-Za-z]", token):
            name = token.split("=")[0]
            if name not in options:
                problems.append(f"unknown option {name}")
            elif options[name].help is argparse.SUPPRESS:
                problems.append(f"{name} is deprecated and hidden from --help; document its new name")
            previous = options.get(name)
        elif "|" in token and previous is not None and previous.choices is not None:
            problems += [f"{'/'.join(previous.option_strings)}: '{choice}' is not one of {list(previous.choices)}"
                         for choice in token.split("|") if choice and choice not in previous.choices]
            previous = None
        else:
            previous = None
    return problems


def check_command(doc_command: DocCommand) -> list[str]:
    if doc_command.command not in commands():
        return [f"{doc_command.command} is not a command of setup.py"]
    if is_synopsis(doc_command.args):
        return check_synopsis(doc_command.command, doc_command.args)
    parser = placeholder_parser(doc_command.command)
    options = parser._option_string_actions
    hidden = [a for a in doc_command.args if a.split("=")[0] in options and options[a.split("=")[0]].help is argparse.SUPPRESS]
    if hidden:
        return [f"{', '.join(hidden)}: deprecated and hidden from --help; document the new name"]
    try:
        parser.parse_args(doc_command.args)
    except ParseError as e:
        message = str(e)
        required = "required" in message and not any(w in message for w in ("unrecognized", "invalid choice"))
        if required and (doc_command.doc, doc_command.command) in EXCERPTS:
            return []
        return [message]
    except SystemExit as e:  # --help, --version
        return [] if e.code == 0 else [f"exit {e.code}"]
    return []


def test_documented_commands_use_real_options_and_choices():
    found = documented_commands()
    assert len({c.command for c in found}) >= 8, "the documentation should show most commands"
    problems = [f"{c.where}: {c.command} {shlex.join(c.args)}\n    -> {p}" for c in found for p in check_command(c)]
    assert not problems, "documented commands the parsers refuse:\n" + "\n".join(problems)


def test_documented_command_check_catches_mistakes():
    """The check itself: an unknown option, a wrong choice and a missing required argument are caught."""
    bad = [DocCommand("x.md:1", "x.md", "cmbunet_train", ["1", "0", "--no-such-option"]),
           DocCommand("x.md:2", "x.md", "cmbunet_predict", ["-i", "a", "-o", "b", "-d", "1", "-device", "tpu"]),
           DocCommand("x.md:3", "x.md", "cmbunet_evaluate", ["-pred", "p"]),
           DocCommand("x.md:4", "x.md", "cmbunet_train", ["DATASET", "FOLD", "[-s", "screening|pruning]"]),
           DocCommand("x.md:5", "x.md", "cmbunet_trian", ["1", "0"]),
           DocCommand("x.md:8", "x.md", "cmbunet_train", ["1", "0", "--num-work", "2"])]  # abbreviated
    assert all(check_command(c) for c in bad)
    good = DocCommand("x.md:6", "x.md", "cmbunet_plan_and_preprocess", ["-d", "ID", "-np", "N", "--preset", "tiny"])
    assert check_command(good) == []
    assert split_commands("for f in 0 1; do cmbunet_train 1 $f --c; done  # all folds") == [("cmbunet_train", ["1", "$f", "--c"])]
    assert split_commands("export CMBUNET_RAW=/x/cmbunet_raw; A=1 cmbunet_evaluate -np 2 | tee log") == [
        ("cmbunet_evaluate", ["-np", "2"])]
    assert check_command(DocCommand("x.md:7", "x.md", "cmbunet_train", ["1", "0", "-npp", "2"]))  # deprecated


# ----------------------------------------------------------------------------------- 2. the README's own-data flow
def own_data_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Using it on your own data", 1)
    assert len(section) == 2, "README.md has no '## Using it on your own data' section"
    match = re.search(r"```bash\n(.*?)```", section[1].split("\n## ", 1)[0], re.S)
    assert match, "the 'Using it on your own data' section has no ```bash block"
    return match.group(1)


def write_command_wrappers(folder: Path) -> None:
    """An executable per command of setup.py that runs this checkout's code with this interpreter."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, target in commands().items():
        module, func = target.split(":")
        script = folder / name
        script.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
                          f"from {module} import {func}\nif __name__ == '__main__':\n    sys.exit({func}())\n")
        script.chmod(0o755)


def parsed(block: str, command: str) -> list[argparse.Namespace]:
    return [build_parser(command).parse_args(args) for line in block.splitlines()
            for name, args in split_commands(line) if name == command]


def test_readme_own_data_flow_runs_end_to_end(tmp_path):
    from cmbunet.synthetic.cli import main as synthetic_main

    original = own_data_block()
    assert "/data/" in original
    block = original.replace("/data/", f"{tmp_path}/data/")
    # the one documented substitution: the tiny preset and the tests' shortest schedule
    extra = " --preset tiny --override " + " ".join(shlex.quote(o) for o in TINY_TRAINING_OVERRIDES)
    block, count = re.subn(r"^(cmbunet_plan_and_preprocess\b[^#\n]*?)(\s*(?:#.*)?)$", rf"\1{extra}\2", block, flags=re.M)
    assert count == 1, "expected one cmbunet_plan_and_preprocess line in the own-data block"
    assert not re.search(r"(?<![\w/])/data/", block)

    # the VALDO input the flow reads: training subjects for the conversion, test subjects (with labels) for the rest
    (valdo_train,) = [a.input for a in parsed(block, "cmbunet_convert_valdo")]
    assert synthetic_main(["-o", str(valdo_train), "--layout", "valdo", "--size", "small", "--cases", "6",
                           "--test-cases", "2", "--seed", "0"]) == 0
    valdo_test = valdo_train.parent / f"{valdo_train.name}_test"
    (predict,) = parsed(block, "cmbunet_predict")
    (evaluate,) = parsed(block, "cmbunet_evaluate")
    report = parsed(block, "cmbunet_report")
    for needed in {Path(predict.input), evaluate.ref, *(Path(p) for r in report for p in (r.images, r.reference) if p)}:
        if not needed.exists():
            needed.parent.mkdir(parents=True, exist_ok=True)
            needed.symlink_to(valdo_test, target_is_directory=True)

    bin_dir = tmp_path / "bin"
    write_command_wrappers(bin_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMBUNET_")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", MPLBACKEND="Agg")
    run = subprocess.run(["bash", "-e", "-o", "pipefail", "-x", "-c", block], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=1200)
    log = (run.stdout + run.stderr)[-6000:]
    assert run.returncode == 0, f"the README's own-data block failed (exit {run.returncode}):\n{block}\n...\n{log}"
    ran = [line for line in run.stderr.splitlines() if re.match(r"^\++ cmbunet_", line)]
    expected = [name for line in block.splitlines() for name, _ in split_commands(line)]
    assert [line.lstrip("+ ").split()[0] for line in ran] == expected, log

    # the outputs the flow promises
    subjects = sorted(p.name for p in valdo_test.glob("sub-*") if p.is_dir())
    assert len(subjects) == 2
    out = Path(predict.output)
    assert all((out / f"{s}_space-T2S_prediction.nii.gz").is_file() for s in subjects)
    summary = json.loads(((evaluate.out_dir or evaluate.pred / "evaluation") / "summary.json").read_text())
    assert summary["aggregate"]["num_cases"] == 2 and summary["aggregate"]["num_missing_predictions"] == 0
    assert all((Path(r.report_dir) / "index.html").is_file() for r in report)
    trained = list(tmp_path.glob("data/**/cmbunet/fold_*/segmentation/checkpoint_final.pth"))
    assert trained, "no trained fold"


# ----------------------------------------------------------------------------------------------- 3. links and paths
def github_anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, a link counted by its text, every character but letters, digits,
    ``_``, ``-`` and spaces dropped, spaces made ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())  # a link in a heading counts by its text
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


#: An anchor set by hand, where a section moved to another page and its old links should still land: ``<a id="x"></a>``.
EXPLICIT_ANCHOR = re.compile(r"""<a\s+(?:id|name)=["']([^"']+)["']""")


def anchors(path: Path) -> set[str]:
    """The anchors of a document: GitHub's heading anchors and the ``<a id>`` anchors written in the text."""
    seen: dict[str, int] = {}
    result = set()
    for _, line in prose_lines(path):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = github_anchor(match.group(1))
            result.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
        result.update(EXPLICIT_ANCHOR.findall(line))
    return result


def without_code_spans(line: str) -> str:
    return re.sub(r"`[^`]*`", "", line)


def test_relative_links_and_anchors_exist():
    problems = []
    for path in DOCS:
        for number, line in prose_lines(path):
            for target in re.findall(r"\]\(([^)\s]+)\)", without_code_spans(line)):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                    continue
                file_part, _, anchor = target.partition("#")
                linked = (path.parent / file_part).resolve() if file_part else path
                if not linked.exists():
                    problems.append(f"{path.name}:{number}: link to a missing file: {target}")
                elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                    problems.append(f"{path.name}:{number}: no heading '#{anchor}' in {linked.name}")
    assert not problems, "\n".join(problems)


def test_named_repository_files_exist():
    problems = []
    for path in DOCS:
        for number, line in prose_lines(path):
            for span in re.findall(r"`([^`]+)`", line):
                name = span.split()[0].rstrip(".,:;") if span.split() else ""
                if name.startswith(REPO_FOLDERS) and not re.search(r"[*{}<>]|XXX|_F/", name):
                    if not (REPO / name).exists():
                        problems.append(f"{path.name}:{number}: `{span}` is not in the repository")
            for name in re.findall(r"(?<![\w/.-])([\w.-]+\.md)\b", without_code_spans(line)):
                if not any((folder / name).exists() for folder in (path.parent, REPO, REPO / "documentation")):
                    problems.append(f"{path.name}:{number}: {name} is not in the repository")
    assert not problems, "\n".join(problems)


#: benchmarks.md's anchors before its experiment log moved to experiments.md: links from outside the repository
#: (issues, papers, bookmarks) still land, on the section or on the line that leads to its new page.
BENCHMARKS_ANCHORS_BEFORE_THE_SPLIT = [
    "the-machine", "summary-against-the-goals-cpu", "1-fcn-screening-vs-sliding-window",
    "2-end-to-end-one-realistic-case", "2b-discrimination-at-27-shifted-centres", "3-training-throughput",
    "4-cmbunet-vs-nnu-net-v2", "4b-per-case-speed-at-realistic-size", "5-scaling-with-volume-size", "performance-notes",
    "6-detection-on-sites-the-model-never-saw", "6a-small-held-out-site-experiment-what-chose-the-defaults",
    "6b-leave-one-site-out-at-realistic-size",
    "6c-three-held-out-sites-threshold-shift-aggregation-test-time-mirroring-hard-false-positives",
    "6d-the-shape-rule-microbleeds-are-round", "6e-the-default-plan-at-realistic-size-a-site-left-out",
    "6f-calcification-clumps-small-microbleeds-the-u-net-misses-and-a-second-cohort",
    "6g-five-fold-cross-validation-next-to-leave-one-site-out-and-thresholds-chosen-by-cv-on-new-sites",
    "6h-a-half-width-screening-network", "6i-five-fold-cross-validation-at-realistic-size-with-the-default-plan",
    "where-a-spot-lies-held-out-sites-and-anatomy-of-the-wider-world", "7-precision-and-empty-tile-skipping",
    "dense-convolution-and-one-screening-tile", "empty-tiles-in-a-cropped-case",
    "whole-case-fp32-against-bf16-with-skipping", "batched-float32-recomputation-median-of-3-runs",
    "detections-bf16-against-fp32", "not-measured-yet",
]


def test_old_benchmarks_anchors_still_resolve():
    missing = sorted(set(BENCHMARKS_ANCHORS_BEFORE_THE_SPLIT) - anchors(REPO / "documentation" / "benchmarks.md"))
    assert not missing, f"benchmarks.md lost anchors that links outside the repository may use: {missing}"


#: Files whose comments, docstrings and text cite documentation sections ("benchmarks.md, 6g", "experiments.md,
#: section 6e", 'benchmarks.md, "Where a spot lies"').
CITING_FILES = ("cmbunet/**/*.py", "benchmarks/*.py", "benchmarks/*.sh", "tests/*.py", "scripts/*.py", "*.md",
                "documentation/*.md")
SECTION_NUMBER_CITATION = re.compile(r"([\w-]+\.md)`?,?\s+(?:sections?\s+)?(\d{1,2}[a-z]?)(?!\w|\.\d)")
SECTION_TITLE_CITATION = re.compile(r"([\w-]+\.md)`?,?\s+(?:section\s+)?\"([^\"\n]+)\"")


def cited_sections(text: str) -> list[tuple[str, str, str]]:
    """``(document, "number" or "title", value)`` for every section citation in ``text``; comment markers at the
    start of continued lines are dropped, so a citation wrapped over two comment lines is found."""
    text = re.sub(r"\n\s*(?:#:?)?\s*", " ", text)
    return ([(m.group(1), "number", m.group(2)) for m in SECTION_NUMBER_CITATION.finditer(text)]
            + [(m.group(1), "title", m.group(2)) for m in SECTION_TITLE_CITATION.finditer(text)])


def has_section(doc: Path, kind: str, value: str) -> bool:
    if kind == "number":
        headings = any(re.match(rf"^#{{1,6}}\s+{re.escape(value)}\.?\s", line) for _, line in prose_lines(doc))
        return headings or any(a.startswith(f"{value}-") for a in anchors(doc))
    return any(re.match(r"^#{1,6}\s", line) and value.lower() in line.lower() for _, line in prose_lines(doc))


def test_cited_sections_exist():
    """A section cited by number or title, in code or docs, is a heading (or a hand-set anchor) of that page."""
    problems, checked = [], 0
    files = sorted({f for pattern in CITING_FILES for f in REPO.glob(pattern) if f.is_file()})
    for path in files:
        for doc_name, kind, value in cited_sections(path.read_text(errors="replace")):
            doc = next((d for d in (REPO / "documentation" / doc_name, REPO / doc_name) if d.exists()), None)
            if doc is None:
                continue  # a missing file is the business of test_named_repository_files_exist
            checked += 1
            if not has_section(doc, kind, value):
                problems.append(f"{path.relative_to(REPO)}: cites {doc_name}, section {value!r}, which it does not have")
    assert checked >= 20, f"only {checked} section citations found: has their wording changed?"
    assert not problems, "\n".join(problems)


def test_section_citations_are_found():
    text = """see (documentation/benchmarks.md, 6g) and benchmarks.md, section
    #: 6e; experiments.md 6a, benchmarks.md, "Where a spot lies" and `benchmarks.md`, section "Precision"."""
    assert cited_sections(text) == [("benchmarks.md", "number", "6g"), ("benchmarks.md", "number", "6e"),
                                    ("experiments.md", "number", "6a"), ("benchmarks.md", "title", "Where a spot lies"),
                                    ("benchmarks.md", "title", "Precision")]
    assert cited_sections("method.md, 2016 and plans.md, 1.5 mm") == []


@pytest.mark.parametrize("heading, anchor", [
    ("## Presets: time and what they reach", "presets-time-and-what-they-reach"),
    ("## 2. End to end: one realistic case", "2-end-to-end-one-realistic-case"),
    ("# Training: `cmbunet_train`", "training-cmbunet_train"),
    ("### 6a. Small held-out-site experiment (what chose the defaults)",
     "6a-small-held-out-site-experiment-what-chose-the-defaults"),
])
def test_github_anchor(heading, anchor):
    assert github_anchor(heading.lstrip("# ")) == anchor


# ------------------------------------------------------------------------------- 4. defaults quoted in the docs
def default_inference_settings() -> dict:
    """The ``inference`` section the planner writes with every default (preset ``auto``) for VALDO-like data
    (0.49 x 0.49 x 0.8 mm, CMBs that give the 20 x 20 x 16 screening block)."""
    from cmbunet.plans import plan_experiment

    fingerprint = {"cases": [{"spacing": [0.49, 0.49, 0.8], "shape_after_crop": [400, 400, 150]}] * 3,
                   "cmbs": [{"extent_mm": [6.86, 6.86, 8.0]}] * 5}
    plans = plan_experiment(fingerprint, {"channel_names": {"0": "T2S"}}, preset="auto")
    return plans.to_dict()["inference"]


def quoted_values(text: str) -> list:
    """``"0.5 (Chen & Dou: 0.1)"`` -> ``[0.5]``; ``"1, `max`"`` -> ``[1, "max"]``; ``"[160, 160, 80]"`` -> a list:
    the cell's values before any parenthesis, split at commas outside brackets, backticks removed."""
    text = re.split(r"\s\(", text.strip(), maxsplit=1)[0]
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char == "["
        depth -= char == "]"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    values = []
    for part in (p.strip().strip("`").strip() for p in parts):
        try:
            values.append(json.loads(part))
        except ValueError:
            values.append(part)
    return values


def same_value(quoted, actual) -> bool:
    if isinstance(actual, bool) or isinstance(quoted, bool):
        return quoted is actual
    if isinstance(actual, (int, float)) and isinstance(quoted, (int, float)):
        return abs(float(quoted) - float(actual)) < 1e-9
    return quoted == actual


def test_inference_defaults_quoted_in_the_docs_are_the_planners():
    """The defaults of the plans' ``inference`` section, where plans.md and inference.md quote them: plans.md's
    table, ```field` (value)`` in the prose, and the ``(default V)`` of inference.md's option table."""
    inference = default_inference_settings()
    problems, checked = [], 0

    plans_md = REPO / "documentation" / "plans.md"
    text = plans_md.read_text()
    section = text.split("### Inference", 1)[1].split("\n## ", 1)[0]
    for row in section.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")] if row.startswith("| `") else []
        if len(cells) < 3:
            continue
        fields = re.findall(r"`([a-z_]+)`", cells[0])
        values = quoted_values(cells[-1])
        if all(f in inference for f in fields) and len(values) == len(fields):
            for field, value in zip(fields, values):
                checked += 1
                if not same_value(value, inference[field]):
                    problems.append(f"plans.md, inference table: {field} is quoted as {value!r}, the planner "
                                    f"writes {inference[field]!r}")

    for path in (plans_md, REPO / "documentation" / "inference.md"):
        for number, line in prose_lines(path):
            for field, value in re.findall(r"`([a-z_]+)` \((-?\d+(?:\.\d+)?)", line):
                if field in inference and not isinstance(inference[field], (list, bool)):
                    checked += 1
                    if not same_value(float(value), inference[field]):
                        problems.append(f"{path.name}:{number}: `{field}` ({value}), but the planner writes "
                                        f"{inference[field]!r}")

    inference_md = REPO / "documentation" / "inference.md"
    for number, line in prose_lines(inference_md):
        if not line.startswith("| `--"):
            continue
        options = re.findall(r"`(--[a-z-]+)", line.split("|")[1])
        fields = [o[2:].replace("-", "_") for o in options]
        match = re.search(r"\(default (-?\d+(?:\.\d+)?)(?: and (-?\d+(?:\.\d+)?))?", line)
        if not match or not all(f in inference for f in fields):
            continue
        values = [float(v) for v in match.groups() if v is not None]
        for field, value in zip(fields, values):
            checked += 1
            if not same_value(value, inference[field]):
                problems.append(f"inference.md:{number}: {options} default quoted as {value}, the planner writes "
                                f"{inference[field]!r}")

    assert checked >= 20, f"only {checked} quoted defaults found: has the format of the tables changed?"
    assert not problems, "defaults quoted in the docs differ from the planner's:\n" + "\n".join(problems)


def test_quoted_values_parses_the_table_cells():
    assert quoted_values("0.5 (Chen & Dou: 0.1)") == [0.5]
    assert quoted_values("1, `max`") == [1, "max"]
    assert quoted_values("[160, 160, 80]") == [[160, 160, 80]]
    assert quoted_values("`true`") == [True]
    assert quoted_values("2, 10 (not in Chen & Dou)") == [2, 10]
