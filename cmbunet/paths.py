"""Data roots and dataset name resolution, following nnU-Net's environment-variable convention.

``CMBUNET_RAW``, ``CMBUNET_PREPROCESSED`` and ``CMBUNET_RESULTS`` point to the three roots; a command-line
flag always wins over the variable. A dataset is named ``DatasetXXX_Name`` and may be referred to by its
integer id (``1``, ``001``) or its full name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cmbunet.errors import CMBUNetError

ROOT_VARIABLES = {"raw": "CMBUNET_RAW", "preprocessed": "CMBUNET_PREPROCESSED", "results": "CMBUNET_RESULTS"}
_NAME_RE = re.compile(r"^Dataset(\d{3})_([A-Za-z0-9_\-]+)$")


def get_root(kind: str, override: str | Path | None = None) -> Path:
    """Return the ``raw``/``preprocessed``/``results`` root: ``override`` if given, else the environment variable."""
    if override is not None:
        return Path(override)
    var = ROOT_VARIABLES[kind]
    value = os.environ.get(var)
    if not value:
        raise CMBUNetError(
            f"the environment variable {var} is not set; export {var}=/path/to/{kind} or pass the folder on the command line"
        )
    return Path(value)


def dataset_name_from_id(dataset_id: int) -> str:
    return f"Dataset{int(dataset_id):03d}"


def is_dataset_name(name: str) -> bool:
    return _NAME_RE.match(name) is not None


def resolve_dataset_name(dataset: str | int, *search_roots: Path) -> str:
    """Turn ``1``, ``"001"`` or ``"Dataset001_Foo"`` into the full folder name found under any of ``search_roots``."""
    text = str(dataset)
    if _NAME_RE.match(text):
        return text
    if not text.isdigit():
        raise CMBUNetError(f"'{text}' is neither a dataset id (e.g. 1) nor a dataset name (e.g. Dataset001_Name)")
    prefix = f"{dataset_name_from_id(int(text))}_"
    found: set[str] = set()
    for root in search_roots:
        if root is not None and Path(root).is_dir():
            found.update(p.name for p in Path(root).iterdir() if p.is_dir() and p.name.startswith(prefix))
    if not found:
        roots = ", ".join(str(r) for r in search_roots if r is not None)
        raise CMBUNetError(f"no dataset with id {int(text)} (folder {prefix}*) found in {roots}")
    if len(found) > 1:
        raise CMBUNetError(f"dataset id {int(text)} is ambiguous: {sorted(found)}")
    return found.pop()


#: The plans name of ``cmbunet_plan_and_preprocess``/``cmbunet_train``/``cmbunet_predict -p`` when none is given; it
#: keeps the original layout (``plans.json``, ``data/``, ``results/DatasetXXX_Name/cmbunet``).
DEFAULT_PLANS_NAME = "cmbunetPlans"
_PLANS_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


def check_plans_name(plans_name: str) -> str:
    """``plans_name`` if usable as a file and folder name part, else a :class:`CMBUNetError`."""
    if not _PLANS_NAME_RE.match(plans_name) or "__" in plans_name or plans_name in ("plans", "dataset",
                                                                                     "dataset_fingerprint"):
        raise CMBUNetError(f"plans name '{plans_name}' is not usable: use letters, digits, '-' and single '_' "
                           "(not 'plans', 'dataset' or 'dataset_fingerprint')")
    return plans_name


def plans_file_name(plans_name: str = DEFAULT_PLANS_NAME) -> str:
    """``plans.json`` for the default plans name, ``NAME.json`` for another."""
    return "plans.json" if plans_name == DEFAULT_PLANS_NAME else f"{check_plans_name(plans_name)}.json"


def preprocessed_case_root(preprocessed_dir: Path, plans_name: str, preprocessing_hash: str) -> Path:
    """The folder holding ``data/`` (and ``unpacked/``) of the cases preprocessed under ``plans_name``: the dataset
    folder itself for the default plans name, else ``pp_<preprocessing hash>``, shared by every plans name whose
    preprocessing (spacing, normalisation, resampling, channels) is the same."""
    if plans_name == DEFAULT_PLANS_NAME:
        return Path(preprocessed_dir)
    return Path(preprocessed_dir) / f"pp_{preprocessing_hash}"


def preprocessed_dataset_dir(dataset_name: str, preprocessed_root: Path | None = None) -> Path:
    return get_root("preprocessed", preprocessed_root) / dataset_name


def results_dataset_dir(dataset_name: str, results_root: Path | None = None) -> Path:
    return get_root("results", results_root) / dataset_name
