"""``cmbunet_convert_valdo``: turn a VALDO 2021 task-2 tree into a cmbunet raw dataset.

Input (never modified)::

    VALDO_DIR/sub-XXX/sub-XXX_space-T2S_desc-masked_{T1,T2,T2S}.nii.gz
    VALDO_DIR/sub-XXX/sub-XXX_space-T2S_CMB.nii.gz          (absent for test subjects)

``.nii`` files are read as well as ``.nii.gz``, and BIDS entities are kept: ``sub-XXX/ses-1/anat/sub-XXX_ses-1_
space-T2S_desc-masked_T2S.nii`` becomes case ``sub-XXX_ses-1``, as does ``sub-XXX/sub-XXX_ses-1_space-T2S_...``
(one case per subject and session). Images below a subject folder that bear no VALDO name are listed as ignored.

Output: ``RAW/DatasetIDD_NAME`` with ``imagesTr``/``labelsTr`` (subjects with a label) and ``imagesTs``
(subjects without one), channels in the order asked for, case id ``sub-XXX``. NaN/inf voxels become 0 (VALDO
images are skull-masked, so 0 is the background value) and labels are binarised with
:func:`cmbunet.dataset.raw_dataset.binarise_label`. Each file keeps its exact geometry.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from cmbunet.errors import CMBUNetError, InputError
from cmbunet.imageio.reader_writer import SUPPORTED_ENDINGS, SimpleITKIO, geometry_mismatch
from cmbunet.dataset.integrity import count_nonfinite, verify_dataset_integrity
from cmbunet.dataset.raw_dataset import EXPECTED_LABELS, binarise_label
from cmbunet.paths import dataset_name_from_id, get_root, is_dataset_name
from cmbunet.utilities.case_names import SUBJECT_PATTERN, channel_file_name
from cmbunet.utilities.cli import command_parser, run_cli
from cmbunet.utilities.file_io import load_json, remove_stale_temp_files, save_json
from cmbunet.utilities.pools import worker_pool

VALDO_MODALITIES = ("T2S", "T1", "T2")
FILE_ENDING = ".nii.gz"


def valdo_image_name(subject: str, modality: str) -> str:
    return f"{subject}_space-T2S_desc-masked_{modality}{FILE_ENDING}"


def valdo_label_name(subject: str) -> str:
    return f"{subject}_space-T2S_CMB{FILE_ENDING}"


@dataclass(frozen=True)
class SubjectJob:
    """Everything needed to convert one subject: where its files are and where they go."""

    case: str
    images: tuple[Path, ...]
    label: Path | None
    out_images: tuple[Path, ...]
    out_label: Path | None

    @property
    def outputs(self) -> tuple[Path, ...]:
        return self.out_images + ((self.out_label,) if self.out_label else ())

    @property
    def split(self) -> str:
        return "train" if self.label else "test"


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


#: VALDO image and label files of one subject, BIDS entities (``_ses-1``) and ``.nii`` allowed; the case id is
#: the subject with its entities, so two sessions of one subject stay two cases.
VALDO_FILE_RE = re.compile(rf"^({SUBJECT_PATTERN})_space-T2S_(?:desc-masked_([A-Za-z0-9]+)|(CMB))\.nii(?:\.gz)?$")


def _subject_files(folder: Path) -> dict[str, dict[str, list[Path]]]:
    """case id -> {modality or "CMB": [files]} for every VALDO file below one subject folder (``ses-*/anat`` too)."""
    found: dict[str, dict[str, list[Path]]] = {}
    for path in sorted(folder.rglob("*")):
        m = VALDO_FILE_RE.match(path.name)
        if m and path.is_file():
            found.setdefault(m.group(1), {}).setdefault(m.group(2) or "CMB", []).append(path)
    return found


def _single(files: list[Path] | None, what: str) -> Path | None:
    """The one file of a modality; ``a.nii`` next to ``a.nii.gz`` is ambiguous and refused."""
    if not files:
        return None
    if len(files) > 1:
        raise InputError(files[1], f"second file for {what} (first: {files[0]}); keep one")
    return files[0]


def ignored_entries(valdo_dir: Path) -> list[tuple[str, str]]:
    """(name, reason) for every entry of the VALDO folder that is not a subject folder, and every image below a
    subject folder whose name is no VALDO file name, so that nothing is skipped unmentioned."""
    ignored = []
    for entry in sorted(valdo_dir.iterdir()):
        if not (entry.is_dir() and entry.name.startswith("sub-")):
            ignored.append((entry.name, "not a sub-* subject folder"))
            continue
        for path in sorted(entry.rglob("*")):
            relative = path.relative_to(valdo_dir)
            if (path.is_file() and path.name.endswith(SUPPORTED_ENDINGS) and not VALDO_FILE_RE.match(path.name)
                    and not any(part.startswith(".") for part in relative.parts)):
                ignored.append((relative.as_posix(), "not a VALDO file name (SUBJECT[_ses-X]_space-T2S_desc-masked_"
                                                     "<contrast>.nii.gz, or _space-T2S_CMB.nii.gz for the label)"))
    return ignored


def find_subjects(valdo_dir: Path, out_dir: Path, modalities: Sequence[str]) -> list[SubjectJob]:
    """List the subjects to convert, checking every requested file exists before anything is written.

    A subject folder may hold its files directly or in BIDS ``ses-*/anat`` folders, as ``.nii.gz`` or ``.nii``;
    each subject-with-entities (``sub-101_ses-1``) becomes one case.
    """
    if not valdo_dir.is_dir():
        raise InputError(valdo_dir, "VALDO input folder does not exist")
    subjects = sorted(p for p in valdo_dir.iterdir() if p.is_dir() and p.name.startswith("sub-"))
    if not subjects:
        raise InputError(valdo_dir, "contains no sub-* subject folders; expected the VALDO task-2 layout sub-XXX/sub-XXX_space-T2S_...")
    jobs: list[SubjectJob] = []
    missing: list[Path] = []
    origin: dict[str, Path] = {}
    for sub in subjects:
        groups = _subject_files(sub) or {sub.name: {}}
        for case, files in sorted(groups.items()):
            if case in origin:
                raise InputError(sub, f"case {case} is also found in {origin[case]}; keep one")
            origin[case] = sub
            images = []
            for m in modalities:
                path = _single(files.get(m), f"{m} of {case}")
                if path is None:
                    folder = files[next(iter(files))][0].parent if files else sub
                    missing.append(folder / valdo_image_name(case, m))
                images.append(path)
            label = _single(files.get("CMB"), f"the label of {case}")
            img_dir = out_dir / ("imagesTr" if label else "imagesTs")
            jobs.append(SubjectJob(
                case=case,
                images=tuple(images),
                label=label,
                out_images=tuple(img_dir / channel_file_name(case, c, FILE_ENDING) for c in range(len(modalities))),
                out_label=out_dir / "labelsTr" / f"{case}{FILE_ENDING}" if label else None,
            ))
    if missing:
        more = f" (and {len(missing) - 1} more missing file(s))" if len(missing) > 1 else ""
        raise InputError(missing[0], f"requested modality file is missing{more}")
    return jobs


def replace_nonfinite(arr: np.ndarray) -> np.ndarray:
    """Set NaN/inf voxels to 0, the background value of skull-masked VALDO images.

    SimpleITK's NIfTI reader already returns them as 0; this keeps the rule explicit for any other reader.
    """
    bad = ~np.isfinite(arr)
    return np.where(bad, np.float32(0), arr) if bad.any() else arr


def convert_subject(job: SubjectJob, overwrite: bool = False) -> dict[str, Any]:
    """Convert one subject; skip it when all its outputs exist (each was written atomically) unless ``overwrite``."""
    report: dict[str, Any] = {"case": job.case, "split": job.split, "skipped": False,
                              "nonfinite_replaced": 0, "label_voxels_changed": 0, "label_values": [0, 1], "cmb_voxels": None}
    if not overwrite and all(p.is_file() for p in job.outputs):
        report["skipped"] = True
        return report
    images, props = SimpleITKIO.read_images(job.images)  # checks that the channels share one geometry
    label = label_props = None
    if job.label is not None and job.out_label is not None:  # checked before anything of this subject is written
        label, label_props = SimpleITKIO.read_seg(job.label)
        mismatch = geometry_mismatch(props, label_props)
        if mismatch:
            raise InputError(job.label, f"label geometry does not match {job.images[0].name}: {mismatch}")
    for path, channel, out in zip(job.images, images, job.out_images):
        report["nonfinite_replaced"] += count_nonfinite(path, channel)  # from the file: the reader hides NaN
        SimpleITKIO.write(replace_nonfinite(channel).astype(np.float32, copy=False), out, props)
    if label is not None:
        binary = binarise_label(label)
        with np.errstate(invalid="ignore"):
            report["label_voxels_changed"] = int(np.count_nonzero(binary != label))
        report["label_values"] = np.unique(label).tolist()[:10]  # the first few distinct values, for the summary
        report["cmb_voxels"] = int(np.count_nonzero(binary))
        SimpleITKIO.write(binary, job.out_label, label_props)
    return report


def _convert_subject_safe(args: tuple[SubjectJob, bool]) -> dict[str, Any]:
    """Pool worker: return user errors as data, because InputError does not survive pickling across processes."""
    try:
        return convert_subject(*args)
    except InputError as e:
        return {"error": (e.path, e.problem)}


def _stale_outputs(out_dir: Path, jobs: list[SubjectJob]) -> list[Path]:
    """Files in the output's image/label folders that this conversion would not produce (an earlier, different one)."""
    expected = {p.resolve() for job in jobs for p in job.outputs}
    found = [f for sub in ("imagesTr", "labelsTr", "imagesTs") if (out_dir / sub).is_dir()
             for f in sorted((out_dir / sub).iterdir()) if not f.name.startswith(".")]
    return [f for f in found if f.resolve() not in expected]


def _dataset_json(name: str, modalities: Sequence[str], num_training: int, num_test: int) -> dict[str, Any]:
    return {
        "name": name,
        "description": "VALDO 2021 task 2 (cerebral microbleeds), converted by cmbunet_convert_valdo",
        "channel_names": {str(i): m for i, m in enumerate(modalities)},
        "labels": dict(EXPECTED_LABELS),
        "numTraining": num_training,
        "numTest": num_test,
        "file_ending": FILE_ENDING,
    }


def _check_output_folder(valdo_dir: Path, out_dir: Path, jobs: list[SubjectJob], modalities: Sequence[str], overwrite: bool) -> None:
    """Refuse to write into the input tree or over a different earlier conversion (unless ``overwrite``)."""
    if _is_within(out_dir, valdo_dir):
        raise InputError(out_dir, f"output folder lies inside the VALDO input folder {valdo_dir}; the input tree is never modified")
    if overwrite:
        for f in _stale_outputs(out_dir, jobs):
            if f.is_file():
                f.unlink()
        return
    old_json = out_dir / "dataset.json"
    if old_json.is_file():
        old = load_json(old_json).get("channel_names")
        new = {str(i): m for i, m in enumerate(modalities)}
        if old != new:
            raise InputError(old_json, f"this dataset was converted with channels {old}, now {new} was asked for; "
                                       "pass --overwrite to rebuild it or choose another dataset id")
    stale = _stale_outputs(out_dir, jobs)
    if stale:
        raise InputError(stale[0], f"file does not belong to this conversion ({len(stale)} such file(s)); "
                                   "pass --overwrite to rebuild the dataset or choose another dataset id")


def convert_valdo(
    valdo_dir: str | Path,
    out_dir: str | Path,
    modalities: Sequence[str] = ("T2S",),
    num_processes: int = 1,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Convert a VALDO task-2 tree into the raw dataset folder ``out_dir``; return a per-case report.

    Idempotent: cases whose files all exist are skipped unless ``overwrite`` (which also removes files of an
    earlier, different conversion from imagesTr/labelsTr/imagesTs). ``dataset.json`` is written last.
    """
    valdo_dir, out_dir = Path(valdo_dir), Path(out_dir)
    modalities = tuple(modalities)
    bad = [m for m in modalities if m not in VALDO_MODALITIES]
    if bad or not modalities or len(set(modalities)) != len(modalities):
        raise InputError(None, f"modalities must be distinct names among {', '.join(VALDO_MODALITIES)}; got {list(modalities)}")
    jobs = find_subjects(valdo_dir, out_dir, modalities)
    _check_output_folder(valdo_dir, out_dir, jobs, modalities, overwrite)
    for folder in (out_dir, out_dir / "imagesTr", out_dir / "labelsTr", out_dir / "imagesTs"):
        remove_stale_temp_files(folder)  # left by a killed run
    args = [(job, overwrite) for job in jobs]
    bar = dict(total=len(jobs), desc="converting VALDO", unit="case", disable=None)
    if num_processes > 1 and len(jobs) > 1:
        with worker_pool(min(num_processes, len(jobs))) as pool:
            results = list(tqdm(pool.imap(_convert_subject_safe, args), **bar))
    else:
        results = [_convert_subject_safe(a) for a in tqdm(args, **bar)]
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise InputError(*errors[0])
    cases = {r["case"]: r for r in results}
    n_train = sum(r["split"] == "train" for r in results)
    n_test = len(results) - n_train
    save_json(_dataset_json(out_dir.name, modalities, n_train, n_test), out_dir / "dataset.json")
    return {
        "dataset_dir": str(out_dir),
        "modalities": list(modalities),
        "num_training": n_train,
        "num_test": n_test,
        "num_skipped": sum(r["skipped"] for r in results),
        "nonfinite_replaced": sum(r["nonfinite_replaced"] for r in results),
        "labels_binarised": sum(r["label_voxels_changed"] > 0 for r in results),
        "cases": cases,
        "ignored": ignored_entries(valdo_dir),
    }


def format_summary(report: dict[str, Any]) -> str:
    """Human-readable summary: totals plus one line per case that needed NaN replacement or binarisation."""
    lines = [
        f"wrote {report['dataset_dir']} (channels: {', '.join(report['modalities'])})",
        f"  training cases: {report['num_training']}, test cases (no label, in imagesTs): {report['num_test']}, "
        f"skipped as already converted: {report['num_skipped']}",
        f"  NaN/inf voxels replaced by 0: {report['nonfinite_replaced']}",
        f"  labels binarised (values other than 0/1 found): {report['labels_binarised']}",
    ]
    lines += [f"  ignored: {name}: {reason}" for name, reason in report.get("ignored", [])]
    for case, r in report["cases"].items():
        if r["nonfinite_replaced"]:
            lines.append(f"    {case}: {r['nonfinite_replaced']} NaN/inf voxel(s) set to 0")
        if r["label_voxels_changed"]:
            lines.append(f"    {case}: label values {r['label_values']} binarised, {r['label_voxels_changed']} voxel(s) changed")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "cmbunet_convert_valdo",
        "Convert a VALDO 2021 task-2 folder (sub-XXX/...) into a cmbunet raw dataset "
        "RAW/DatasetXXX_NAME. The input folder is never modified.")
    p.add_argument("-i", "--input", required=True, type=Path, help="VALDO task-2 folder holding the sub-XXX folders")
    p.add_argument("-d", "--dataset-id", required=True, type=int, help="integer id of the new dataset (e.g. 1 -> Dataset001_NAME)")
    p.add_argument("-n", "--name", default="VALDO", help="dataset name (default VALDO)")
    p.add_argument("--modalities", nargs="+", default=["T2S"], choices=VALDO_MODALITIES,
                   help="channels in order (default: T2S only, as in the reference method)")
    p.add_argument("--raw-root", type=Path, default=None, help="raw data root (default: $CMBUNET_RAW)")
    p.add_argument("-np", "--num-processes", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--overwrite", action="store_true", help="reconvert cases that already exist and remove files of an earlier conversion")
    p.add_argument("--skip-verify", action="store_true", help="do not run the dataset integrity check after converting")
    return p


@run_cli
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.dataset_id <= 999:
        raise CMBUNetError(f"dataset id must be between 0 and 999, got {args.dataset_id}")
    name = f"{dataset_name_from_id(args.dataset_id)}_{args.name}"
    if not is_dataset_name(name):
        raise CMBUNetError(f"dataset name '{args.name}' may only contain letters, digits, '_' and '-'")
    out_dir = get_root("raw", args.raw_root) / name
    report = convert_valdo(args.input, out_dir, args.modalities, max(1, args.num_processes), args.overwrite)
    print(format_summary(report))
    if not args.skip_verify:
        verify_dataset_integrity(out_dir, num_processes=max(1, args.num_processes))
        print("  dataset integrity check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
