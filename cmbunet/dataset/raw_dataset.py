"""The raw dataset layer: reading ``dataset.json``, listing cases, the label rule and the integrity check.

A raw dataset follows the nnU-Net v2 layout (see ``documentation/dataset_format.md``)::

    DatasetXXX_Name/
      dataset.json
      imagesTr/CASE_0000.nii.gz   one file per channel, 4-digit channel suffix
      labelsTr/CASE.nii.gz
      imagesTs/CASE_0000.nii.gz   optional

Everything downstream (fingerprint, preprocessing, training, prediction) lists cases through this module so
that one set of naming rules holds everywhere.
"""

from __future__ import annotations

import gzip
import json
import multiprocessing
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cmbunet.errors import DatasetIntegrityError, InputError
from cmbunet.imageio.reader_writer import ImageProperties, SimpleITKIO, geometry_mismatch
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
    return len(dataset_json["channel_names"])


# ----------------------------------------------------------------------------------------------- listing


def _scan_folder(folder: Path, file_ending: str, n_channels: int | None) -> tuple[dict[str, dict[int, Path]], list[Problem]]:
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


def _channel_list(channels: dict[int, Path]) -> list[Path]:
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
    cases, problems = _scan_folder(folder, file_ending, num_channels)
    if problems:
        path, problem = problems[0]
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise InputError(path, problem + more)
    return {case: _channel_list(ch) for case, ch in cases.items()}


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
    labels, problems = _scan_folder(labels_dir, ending, None)
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


# ----------------------------------------------------------------------------------------------- NaN/inf


#: NIfTI datatype codes of the float types that can hold NaN/inf.
_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}


def _nifti_header(head: bytes) -> tuple[str, int, int, list[int]] | None:
    """(byte order, datatype, vox_offset, dims) of a NIfTI-1 or NIfTI-2 header, or None if it is not one."""
    # field offsets: (sizeof_hdr, dim type, dim offset, datatype offset, vox_offset type, vox_offset offset)
    layouts = {348: ("i2", 40, 70, "f4", 108), 540: ("i8", 16, 12, "i8", 168)}
    for order in "<>":
        if len(head) < 4:
            return None
        size = int(np.frombuffer(head, f"{order}i4", 1, 0)[0])
        if size not in layouts or len(head) < size:
            continue
        dim_t, dim_at, type_at, off_t, off_at = layouts[size]
        dim = np.frombuffer(head, f"{order}{dim_t}", 8, dim_at)
        datatype = int(np.frombuffer(head, f"{order}i2", 1, type_at)[0])
        offset = int(np.frombuffer(head, f"{order}{off_t}", 1, off_at)[0])
        return order, datatype, offset, [int(d) for d in dim[1:1 + max(0, min(int(dim[0]), 7))]]
    return None


def count_nonfinite_nifti(path: str | Path) -> int | None:
    """Count NaN/inf voxels stored in a float NIfTI file by reading its raw voxel bytes.

    Needed because SimpleITK's NIfTI reader silently turns NaN and inf into 0, so they cannot be seen in the
    array it returns. Returns None for files that are not NIfTI (their reader keeps NaN, count the array) or
    cannot be parsed, and 0 for integer data, which cannot hold NaN.
    """
    path = Path(path)
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        return None
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError):
        return None
    header = _nifti_header(raw[:540])
    if header is None:
        return None
    order, datatype, offset, dims = header
    if datatype not in _NIFTI_FLOAT_TYPES:
        return 0
    dtype = np.dtype(f"{order}{_NIFTI_FLOAT_TYPES[datatype]}")
    count = int(np.prod(dims)) if dims else 0
    if count <= 0 or offset + count * dtype.itemsize > len(raw):
        return None
    return int(np.count_nonzero(~np.isfinite(np.frombuffer(raw, dtype, count, offset))))


def count_nonfinite(path: str | Path, arr: np.ndarray) -> int:
    """NaN/inf voxels of an image file: from the raw bytes for NIfTI, else from the array as read."""
    n = count_nonfinite_nifti(path)
    if n is not None:
        return n
    return int(np.count_nonzero(~np.isfinite(arr))) if np.issubdtype(arr.dtype, np.floating) else 0


# ----------------------------------------------------------------------------------------------- integrity


def _read(path: Path, as_label: bool) -> tuple[np.ndarray | None, ImageProperties | None, Problem | None]:
    """Read one file, turning a reader error into a problem instead of an exception."""
    try:
        arr, props = SimpleITKIO.read_seg(path) if as_label else SimpleITKIO._read_one(path)
    except InputError as e:
        return None, None, (str(path), e.problem)
    return arr, props, None


def _check_image(path: Path, arr: np.ndarray) -> list[Problem]:
    problems: list[Problem] = []
    bad = count_nonfinite(path, arr)
    if bad:
        problems.append((str(path), f"contains {bad} NaN/inf voxel(s); replace them (cmbunet_convert_valdo sets them to 0)"))
    if not np.any(arr):
        problems.append((str(path), "image is all zero"))
    return problems


def _check_label(path: Path, arr: np.ndarray) -> list[Problem]:
    if count_nonfinite(path, arr):
        return [(str(path), "label contains NaN/inf; labels must contain only 0 and 1")]
    values = np.unique(arr)
    extra = values[(values != 0) & (values != 1)]
    if extra.size:
        shown = ", ".join(f"{v:g}" for v in extra[:8].tolist()) + (", ..." if extra.size > 8 else "")
        return [(str(path), f"label is not binary: contains value(s) {shown}; labels must contain only 0 and 1")]
    return []


def check_case(images: list[Path], label: Path | None) -> tuple[list[Problem], int]:
    """Check one case, reading each file once. Return its problems and its number of CMB voxels."""
    problems: list[Problem] = []
    ref: ImageProperties | None = None
    ref_path: Path | None = None
    for path in images:
        arr, props, problem = _read(path, as_label=False)
        if problem:
            problems.append(problem)
            continue
        problems += _check_image(path, arr)
        if ref is None:
            ref, ref_path = props, path
        elif (mismatch := geometry_mismatch(ref, props)) is not None:
            problems.append((str(path), f"geometry does not match channel file {ref_path.name}: {mismatch}"))
        del arr
    cmb_voxels = 0
    if label is not None:
        arr, props, problem = _read(label, as_label=True)
        if problem:
            problems.append(problem)
        else:
            problems += _check_label(label, arr)
            if ref is not None and (mismatch := geometry_mismatch(ref, props)) is not None:
                problems.append((str(label), f"geometry does not match image {ref_path.name}: {mismatch}"))
            cmb_voxels = int(np.count_nonzero(arr))  # non-binary values are reported above
    return problems, cmb_voxels


def _check_case_star(args: tuple[list[Path], Path | None]) -> tuple[list[Problem], int]:
    return check_case(*args)


def _name_collisions(case_ids: list[str], folder: Path) -> list[Problem]:
    """Case ids that clash on case-insensitive file systems, or that read as another case's channel file."""
    problems: list[Problem] = []
    by_lower: dict[str, list[str]] = defaultdict(list)
    for c in case_ids:
        by_lower[c.lower()].append(c)
    for group in by_lower.values():
        if len(group) > 1:
            problems.append((str(folder), f"case names {', '.join(sorted(group))} differ only in letter case"))
    ids = set(case_ids)
    for c in case_ids:
        m = CHANNEL_STEM_RE.match(c)
        if m and m["case"] in ids:
            problems.append((str(folder), f"case name '{c}' is ambiguous with channel {m['channel']} of case '{m['case']}'"))
    return problems


def _scan_dataset(raw_dir: Path, dj: dict) -> tuple[list[tuple[list[Path], Path | None]], int, list[Problem]]:
    """List every case to read (training and test) and the naming/layout problems; no image is read here."""
    ending, n_ch = dj["file_ending"], num_channels(dj)
    problems: list[Problem] = []
    jobs: list[tuple[list[Path], Path | None]] = []
    images_tr, labels_tr = raw_dir / "imagesTr", raw_dir / "labelsTr"
    tr: dict[str, dict[int, Path]] = {}
    lab: dict[str, dict[int, Path]] = {}
    if images_tr.is_dir():
        tr, p = _scan_folder(images_tr, ending, n_ch)
        problems += p + _name_collisions(list(tr), images_tr)
    else:
        problems.append((str(images_tr), "imagesTr folder is missing"))
    if labels_tr.is_dir():
        lab, p = _scan_folder(labels_tr, ending, None)
        problems += p
    else:
        problems.append((str(labels_tr), "labelsTr folder is missing"))
    for case, chans in tr.items():
        label = lab.get(case, {}).get(0)
        if label is None and labels_tr.is_dir():
            problems.append((str(labels_tr / f"{case}{ending}"), f"label of training case '{case}' is missing"))
        jobs.append((_channel_list(chans), label))
    for case, files in lab.items():
        if case not in tr:
            problems.append((str(files[0]), f"label without images: no imagesTr/{channel_file_name(case, 0, ending)}"))
    if images_tr.is_dir() and not tr:
        problems.append((str(images_tr), "dataset is empty: no training images found"))
    if tr and dj["numTraining"] != len(tr):
        problems.append((str(raw_dir / "dataset.json"), f"numTraining is {dj['numTraining']} but imagesTr holds {len(tr)} case(s)"))
    images_ts = raw_dir / "imagesTs"
    if images_ts.is_dir():
        ts, p = _scan_folder(images_ts, ending, n_ch)
        problems += p + _name_collisions(list(ts), images_ts)
        jobs += [(_channel_list(chans), None) for chans in ts.values()]
    return jobs, len(tr), problems


def verify_dataset_integrity(raw_dir: str | Path, num_processes: int = 1) -> None:
    """Check a raw dataset and raise :class:`DatasetIntegrityError` listing every problem, each naming its file.

    Checks the layout and names, that every file is a readable 3D image, that the channels and label of a case
    share one geometry, that labels hold only 0/1, that images hold no NaN/inf and are not all zero, that
    ``numTraining`` matches, and that the dataset has at least one CMB. Each file is read once.
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DatasetIntegrityError([(str(raw_dir), "raw dataset folder does not exist")])
    dj_path = raw_dir / "dataset.json"
    try:
        dj = load_dataset_json(raw_dir)
    except InputError as e:
        raise DatasetIntegrityError([(str(dj_path), e.problem)]) from None
    jobs, n_training, problems = _scan_dataset(raw_dir, dj)
    results: list[tuple[list[Problem], int]]
    bar = dict(total=len(jobs), desc="verifying dataset", unit="case", disable=None)
    if num_processes > 1 and len(jobs) > 1:
        with multiprocessing.Pool(min(num_processes, len(jobs))) as pool:
            results = list(tqdm(pool.imap(_check_case_star, jobs), **bar))
    else:
        results = [check_case(*job) for job in tqdm(jobs, **bar)]
    total_cmb_voxels = 0
    for case_problems, cmb_voxels in results:
        problems += case_problems
        total_cmb_voxels += cmb_voxels
    if n_training and total_cmb_voxels == 0:
        problems.append((str(raw_dir / "labelsTr"), "no CMB in the whole dataset: every label is empty, nothing to learn from"))
    if problems:
        raise DatasetIntegrityError(problems)
