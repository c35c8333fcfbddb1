"""The raw dataset layer: reading ``dataset.json``, listing cases and the label rule.

A raw dataset follows the nnU-Net v2 layout (see ``documentation/dataset_format.md``)::

    DatasetXXX_Name/
      dataset.json
      imagesTr/CASE_0000.nii.gz   one file per channel, 4-digit channel suffix
      labelsTr/CASE.nii.gz
      imagesTs/CASE_0000.nii.gz   optional

Everything downstream (fingerprint, preprocessing, training, prediction) lists cases through this module so
that one set of naming rules holds everywhere; :mod:`cmbunet.dataset.integrity` checks a whole dataset against
the same rules.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from cmbunet.errors import InputError
from cmbunet.utilities.case_names import CHANNEL_STEM_RE, channel_file_name

#: The only label definition cmbunet accepts: binary CMB segmentation.
EXPECTED_LABELS = {"background": 0, "CMB": 1}
REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")

Problem = tuple[str, str]


# ----------------------------------------------------------------------------------------------- dataset.json


def validate_dataset_json(dataset_json: Any, path: str | Path = "dataset.json") -> list[Problem]:
    """Return every problem of a parsed ``dataset.json`` (empty list when valid), each naming the file."""
    p = str(path)
    if not isinstance(dataset_json, dict):
        return [(p, "must contain a JSON object")]
    problems: list[Problem] = []
    missing = [k for k in REQUIRED_KEYS if k not in dataset_json]
    if missing:
        problems.append((p, f"missing required key(s): {', '.join(missing)}"))
    channels = dataset_json.get("channel_names")
    if "channel_names" in dataset_json:
        if not isinstance(channels, dict) or not channels:
            problems.append((p, "channel_names must be a non-empty object such as {\"0\": \"T2S\"}"))
        elif set(channels) != {str(i) for i in range(len(channels))}:
            problems.append((p, f"channel_names keys must be \"0\"..\"{len(channels) - 1}\", got {sorted(channels)}"))
    if "labels" in dataset_json and dataset_json.get("labels") != EXPECTED_LABELS:
        problems.append((p, f"labels must be {json.dumps(EXPECTED_LABELS)}, got {json.dumps(dataset_json.get('labels'))}"))
    n = dataset_json.get("numTraining")
    if "numTraining" in dataset_json and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
        problems.append((p, f"numTraining must be a non-negative integer, got {n!r}"))
    ending = dataset_json.get("file_ending")
    if "file_ending" in dataset_json and (not isinstance(ending, str) or not ending.startswith(".")):
        problems.append((p, f"file_ending must be a string such as \".nii.gz\", got {ending!r}"))
    return problems


def load_dataset_json(raw_dir: str | Path) -> dict:
    """Read and validate ``raw_dir/dataset.json``; raise :class:`InputError` naming it on any problem."""
    path = Path(raw_dir) / "dataset.json"
    if not Path(raw_dir).is_dir():
        raise InputError(raw_dir, "raw dataset folder does not exist")
    if not path.is_file():
        raise InputError(path, "dataset.json is missing; every raw dataset needs one (see documentation/dataset_format.md)")
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, f"is not valid JSON: {e}") from None
    problems = validate_dataset_json(data, path)
    if problems:
        raise InputError(path, "; ".join(problem for _, problem in problems))
    return data


def num_channels(dataset_json: dict) -> int:
    """Number of image channels a case has: one file per ``channel_names`` entry."""
    return len(dataset_json["channel_names"])


# ----------------------------------------------------------------------------------------------- listing


def scan_folder(folder: Path, file_ending: str, n_channels: int | None) -> tuple[dict[str, dict[int, Path]], list[Problem]]:
    """Group ``CASE_XXXX<ending>`` files by case; collect naming problems instead of stopping at the first.

    ``n_channels=None`` means label files (``CASE<ending>``, no channel suffix). Hidden files are ignored.
    """
    cases: dict[str, dict[int, Path]] = defaultdict(dict)
    problems: list[Problem] = []
    for f in sorted(folder.iterdir()):
        if f.name.startswith("."):
            continue
        if f.is_dir():
            problems.append((str(f), "unexpected sub-folder"))
            continue
        if not f.name.endswith(file_ending):
            problems.append((str(f), f"unexpected file: does not end with the dataset's file_ending '{file_ending}'"))
            continue
        stem = f.name[: -len(file_ending)]
        if n_channels is None:
            cases[stem][0] = f
            continue
        m = CHANNEL_STEM_RE.match(stem)
        if m is None:
            problems.append((str(f), f"unexpected file: image names must be CASE_XXXX{file_ending} (4-digit channel index)"))
            continue
        channel = int(m["channel"])
        if channel >= n_channels:
            problems.append((str(f), f"unexpected file: channel index {channel:04d} but dataset.json declares {n_channels} channel(s)"))
            continue
        cases[m["case"]][channel] = f
    for case, channels in cases.items():
        if n_channels is not None:
            for c in range(n_channels):
                if c not in channels:
                    problems.append((str(folder / channel_file_name(case, c, file_ending)), f"case '{case}' is missing channel {c}"))
    return dict(sorted(cases.items())), problems


def channel_list(channels: dict[int, Path]) -> list[Path]:
    """A case's channel files in channel order, the order every reader stacks them in."""
    return [channels[c] for c in sorted(channels)]


def list_image_cases(folder: str | Path, file_ending: str, num_channels: int) -> dict[str, list[Path]]:
    """Map case id -> channel files (channel order) for a folder of ``CASE_XXXX`` images, sorted by case id.

    Used for ``imagesTr``, ``imagesTs`` and prediction input. Raises :class:`InputError` naming the file when a
    case lacks a channel or a file does not follow the naming rule, since a silently skipped file would go
    unpredicted.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "image folder does not exist")
    cases, problems = scan_folder(folder, file_ending, num_channels)
    if problems:
        path, problem = problems[0]
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise InputError(path, problem + more)
    return {case: channel_list(ch) for case, ch in cases.items()}


def list_training_cases(raw_dir: str | Path, dataset_json: dict | None = None) -> dict[str, dict]:
    """Map case id -> ``{"images": [Path per channel], "label": Path}`` for ``imagesTr``/``labelsTr``, sorted.

    Raises :class:`InputError` naming the first offending file; ``verify_dataset_integrity`` lists them all.
    """
    raw_dir = Path(raw_dir)
    dj = load_dataset_json(raw_dir) if dataset_json is None else dataset_json
    ending = dj["file_ending"]
    images = list_image_cases(raw_dir / "imagesTr", ending, num_channels(dj))
    labels_dir = raw_dir / "labelsTr"
    if not labels_dir.is_dir():
        raise InputError(labels_dir, "labelsTr folder does not exist")
    labels, problems = scan_folder(labels_dir, ending, None)
    if problems:
        raise InputError(*problems[0])
    for case in images:
        if case not in labels:
            raise InputError(labels_dir / f"{case}{ending}", f"label of training case '{case}' is missing")
    for case, files in labels.items():
        if case not in images:
            raise InputError(files[0], f"label without images: no imagesTr/{channel_file_name(case, 0, ending)}")
    return {case: {"images": chans, "label": labels[case][0]} for case, chans in images.items()}


# ----------------------------------------------------------------------------------------------- labels


def binarise_label(arr: np.ndarray) -> np.ndarray:
    """Return a uint8 0/1 mask: a voxel is CMB when its value rounded to one decimal is >= 0.5.

    This mirrors the official VALDO task-2 metric, which rounds the reference to one decimal before use, so
    a label that was resampled or stored as float counts the same here as in the evaluation. NaN is
    background. Rounding is numpy's (half to even): 0.45 -> 0.4 (background), 0.46 -> 0.5 (CMB).
    """
    a = np.asarray(arr)
    if a.dtype == bool:
        return a.astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        return (a >= 1).astype(np.uint8)
    with np.errstate(invalid="ignore"):
        return (np.round(a.astype(np.float64, copy=False), 1) >= 0.5).astype(np.uint8)
