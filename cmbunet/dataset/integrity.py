"""The raw dataset's integrity check: every problem of a dataset, each naming its file, before anything is planned.

:func:`verify_dataset_integrity` reads every file once and checks the layout, names, geometry, label values and
NaN/inf voxels; the layout and naming rules it applies are those of :mod:`cmbunet.dataset.raw_dataset`. NaN/inf
are counted in the NIfTI bytes (:func:`count_nonfinite_nifti`) because SimpleITK's reader hides them.
"""

from __future__ import annotations

import gzip
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cmbunet.dataset.raw_dataset import (
    Problem,
    channel_list,
    load_dataset_json,
    num_channels,
    scan_folder,
)
from cmbunet.errors import DatasetIntegrityError, InputError
from cmbunet.imageio.reader_writer import ImageProperties, SimpleITKIO, geometry_mismatch
from cmbunet.utilities.case_names import CHANNEL_STEM_RE, channel_file_name
from cmbunet.utilities.pools import worker_pool


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
        arr, props = SimpleITKIO.read_seg(path) if as_label else SimpleITKIO.read_image(path)
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
        tr, p = scan_folder(images_tr, ending, n_ch)
        problems += p + _name_collisions(list(tr), images_tr)
    else:
        problems.append((str(images_tr), "imagesTr folder is missing"))
    if labels_tr.is_dir():
        lab, p = scan_folder(labels_tr, ending, None)
        problems += p
    else:
        problems.append((str(labels_tr), "labelsTr folder is missing"))
    for case, chans in tr.items():
        label = lab.get(case, {}).get(0)
        if label is None and labels_tr.is_dir():
            problems.append((str(labels_tr / f"{case}{ending}"), f"label of training case '{case}' is missing"))
        jobs.append((channel_list(chans), label))
    for case, files in lab.items():
        if case not in tr:
            problems.append((str(files[0]), f"label without images: no imagesTr/{channel_file_name(case, 0, ending)}"))
    if images_tr.is_dir() and not tr:
        problems.append((str(images_tr), "dataset is empty: no training images found"))
    if tr and dj["numTraining"] != len(tr):
        problems.append((str(raw_dir / "dataset.json"), f"numTraining is {dj['numTraining']} but imagesTr holds {len(tr)} case(s)"))
    images_ts = raw_dir / "imagesTs"
    if images_ts.is_dir():
        ts, p = scan_folder(images_ts, ending, n_ch)
        problems += p + _name_collisions(list(ts), images_ts)
        jobs += [(channel_list(chans), None) for chans in ts.values()]
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
        with worker_pool(min(num_processes, len(jobs))) as pool:
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
