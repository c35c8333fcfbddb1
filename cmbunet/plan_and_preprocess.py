"""``cmbunet_plan_and_preprocess``: fingerprint a raw dataset, derive its plans, preprocess it and split it.

Everything goes to ``CMBUNET_PREPROCESSED/DatasetXXX_Name/``; the raw dataset is only read. A re-run skips the
cases already preprocessed with the same preprocessing (their ``CASE.json`` records the preprocessing hash: the
channels, target spacing, normalisation and resampling), so an interrupted run continues where it stopped, a
change of spacing redoes exactly the affected cases and a change of networks, schedules or inference redoes none.

``-p NAME`` keeps several plans side by side: ``plans.json`` and ``data/`` belong to the default name
``cmbunetPlans``; another name writes ``NAME.json`` and its cases to ``pp_<preprocessing hash>/data/``, shared by
every plans name with the same preprocessing. A re-plan of a name keeps that name's earlier ``--override``s
unless ``--clear-overrides`` is given.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cmbunet.dataset.integrity import verify_dataset_integrity
from cmbunet.dataset.raw_dataset import binarise_label, list_training_cases, load_dataset_json
from cmbunet.errors import CMBUNetError, InputError
from cmbunet.imageio.reader_writer import SimpleITKIO, geometry_mismatch
from cmbunet.paths import (DEFAULT_PLANS_NAME, check_plans_name, get_root, plans_file_name, preprocessed_case_root,
                           resolve_dataset_name)
from cmbunet.plans.fingerprint import extract_fingerprint, load_fingerprint, save_fingerprint
from cmbunet.plans.planner import PRESETS, plan_experiment
from cmbunet.plans.plans_io import plans_hash, preprocessing_hash, save_plans
from cmbunet.plans.schema import Plans
from cmbunet.preprocessing.preprocessor import (case_files, preprocess_case, recorded_hash_matches,
                                                save_preprocessed_case)
from cmbunet.preprocessing.splits import SPLITS_FILE, load_or_create_splits
from cmbunet.utilities.cli import DATASET_HELP, add_plans_option, command_parser, run_cli
from cmbunet.utilities.file_io import load_json, remove_stale_temp_files, save_json
from cmbunet.utilities.locks import exclusive_lock
from cmbunet.utilities.pools import worker_pool

FINGERPRINT_FILE = "dataset_fingerprint.json"
PLANS_FILE = "plans.json"
DATA_DIR = "data"
#: Held by the run that plans and preprocesses the dataset (see :mod:`cmbunet.utilities.locks`).
PREPROCESS_LOCK = ".preprocess.lock"


def default_num_processes() -> int:
    """At most 4 workers: each holds a whole volume and its float64 spline coefficients in memory."""
    return max(1, min(4, os.cpu_count() or 1))


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "cmbunet_plan_and_preprocess",
        "Fingerprint a raw dataset, write its plans and preprocess every training case "
        "(crop, z-score, resample to the target spacing), then write the cross-validation splits.")
    p.add_argument("-d", "--dataset", dest="d", required=True, metavar="ID", help=DATASET_HELP)
    p.add_argument("--verify-dataset-integrity", "--verify_dataset_integrity", dest="verify_dataset_integrity",
                   action="store_true",
                   help="check every raw file first and stop, writing nothing, if anything is wrong")
    p.add_argument("-np", "--num-processes", dest="np", type=int, default=default_num_processes(), metavar="N",
                   help="worker processes for fingerprinting and preprocessing (default: min(4, CPUs))")
    p.add_argument("--preset", choices=PRESETS, default="auto",
                   help="auto (default): everything derived from the dataset, Chen & Dou's network widths with a "
                        "half-width screening network; fast: quarter-width networks and a short schedule for a quick "
                        "trial; "
                        "paper: Chen & Dou's published 20x20x16 blocks, widths, screening threshold 0.1 and schedule; "
                        "tiny: tests only")
    p.add_argument("--override", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="set plans entries, e.g. target_spacing=[0.5,0.5,0.8] (value parsed as JSON)")
    add_plans_option(p, help=f"name of the plans to write (default {DEFAULT_PLANS_NAME}: plans.json and data/); another name "
                        "writes NAME.json beside them, so several configurations can be trained side by side")
    p.add_argument("--clear-overrides", action="store_true",
                   help="forget the --override values of the earlier plans of this name (by default a re-plan keeps "
                        "them and applies the new ones after them)")
    p.add_argument("--raw-root", type=Path, default=None, help="raw data root (default: $CMBUNET_RAW)")
    p.add_argument("--preprocessed-root", type=Path, default=None,
                   help="preprocessed data root (default: $CMBUNET_PREPROCESSED)")
    p.add_argument("--clean", action="store_true",
                   help="recompute the fingerprint and redo every case, ignoring earlier outputs")
    p.add_argument("--no-preprocess", action="store_true",
                   help="stop after writing the fingerprint, the plans and the splits")
    return p


def fingerprint_matches(fingerprint_path: Path, cases: list[str]) -> bool:
    """A saved fingerprint is reusable when it describes exactly the current training cases."""
    if not fingerprint_path.is_file():
        return False
    try:
        fp = load_json(fingerprint_path)
        return sorted(r["case"] for r in fp["cases"]) == sorted(cases)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def case_is_done(out_dir: Path, case: str, pp_hash: str, phash: str | None = None) -> bool:
    """Both files exist and the properties were written under the same preprocessing (``pp_hash``); cases of
    older versions, which record only the full plans hash, count when it equals ``phash``."""
    npz, js = case_files(out_dir, case)
    if not (npz.is_file() and js.is_file()):
        return False
    try:
        return recorded_hash_matches(load_json(js), pp_hash, phash)
    except (OSError, ValueError, AttributeError):
        return False


def _override_key(item: str) -> str:
    return item.split("=", 1)[0].strip()


def merge_overrides(earlier: list[str] | tuple[str, ...], new: list[str]) -> tuple[list[str], list[str]]:
    """The overrides to apply (earlier ones first, each key once, a new value winning) and the earlier ones kept."""
    new_keys = {_override_key(o) for o in new}
    kept: dict[str, str] = {}
    for item in earlier:
        if _override_key(item) not in new_keys:
            kept[_override_key(item)] = item
    return list(kept.values()) + list(new), list(kept.values())


def earlier_overrides(plans_path: Path) -> list[str]:
    """The ``overrides`` recorded in an existing plans file (``[]`` when it is absent or unreadable)."""
    try:
        found = load_json(plans_path).get("overrides", []) if plans_path.is_file() else []
    except (OSError, ValueError, AttributeError):
        return []
    return [str(o) for o in found] if isinstance(found, list) else []


def reuse_default_cases(out_dir: Path, case_root: Path, cases: list[str], pp_hash: str) -> list[str]:
    """Link (or copy) into ``case_root/data`` the cases of the default plans' ``data/`` that were preprocessed
    alike (same preprocessing hash), so another plans name does not preprocess them again; returns those cases."""
    reused = []
    for case in cases:
        if case_root == out_dir or not case_is_done(out_dir, case, pp_hash):
            continue
        for src, dst in zip(case_files(out_dir, case), case_files(case_root, case)):
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.unlink(missing_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
        reused.append(case)
    return reused


def preprocess_training_case(case: str, images: list[Path], label: Path, plans: Plans, out_dir: Path,
                             phash: str, pp_hash: str | None = None) -> dict[str, Any]:
    """Read, preprocess and save one training case; returns a short summary for the report."""
    data, props = SimpleITKIO.read_images(images)
    seg, seg_props = SimpleITKIO.read_seg(label)
    problem = geometry_mismatch(props, seg_props)
    if problem:
        raise InputError(label, f"label geometry does not match its image {images[0]}: {problem}")
    try:
        data, seg_pp, brain, properties = preprocess_case(data, props, plans, binarise_label(seg), case=case)
    except InputError as e:
        raise InputError(images[0], e.problem) from None
    properties["plans_hash"] = phash
    if pp_hash is not None:
        properties["preprocessing_hash"] = pp_hash
    save_preprocessed_case(out_dir, case, data, seg_pp, brain, properties)
    return summary_of(properties)


def summary_of(properties: dict[str, Any]) -> dict[str, Any]:
    return {"case": properties["case"], "cmbs": len(properties["cmbs"]), "vanished": properties["vanished_cmbs"],
            "shape": properties["shape_after_resampling"], "outside": properties.get("cmbs_outside_nonzero_box", 0)}


def _worker(job: tuple) -> dict[str, Any]:
    """Pool entry point: errors come back as data, because InputError does not survive pickling."""
    try:
        return preprocess_training_case(*job)
    except InputError as e:
        return {"case": job[0], "error": (e.path, e.problem)}
    except CMBUNetError as e:
        return {"case": job[0], "error": (None, str(e))}


def preprocess_cases(jobs: list[tuple], num_processes: int) -> list[dict[str, Any]]:
    """Run the jobs with a process pool (or in-process for one worker) behind a tqdm bar."""
    bar = {"total": len(jobs), "desc": "preprocessing", "unit": "case", "disable": None}
    if num_processes > 1 and len(jobs) > 1:
        with worker_pool(min(num_processes, len(jobs)), "spawn") as pool:  # Ctrl-C: no worker tracebacks
            results = list(tqdm(pool.imap_unordered(_worker, jobs), **bar))
    else:
        results = [_worker(job) for job in tqdm(jobs, **bar)]
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        path, problem = errors[0]
        more = f" (and {len(errors) - 1} more failing case(s))" if len(errors) > 1 else ""
        raise InputError(path, problem + more)
    return results


def format_summary(name: str, out_dir: Path, plans: Plans, done: list[dict], skipped: int) -> str:
    """A few lines a user reads to check the configuration before training."""
    vanished = sum(s["vanished"] for s in done)
    cmbs = sum(s["cmbs"] for s in done)
    return "\n".join([
        f"{name}: {len(done)} case(s) preprocessed, {skipped} already up to date -> {out_dir}",
        f"  target spacing (x, y, z) mm: {list(plans.target_spacing)}",
        f"  screening block {list(plans.screening.block_size)}, discrimination block "
        f"{list(plans.discrimination.block_size)}, segmentation patch {list(plans.segmentation.patch_size)}",
        f"  CMBs in the newly preprocessed cases: {cmbs}; too small for the target grid and kept as one voxel: "
        f"{vanished}",
    ] + [f"  warning: {s['case']}: {s['outside']} labelled CMB(s) lie outside the image's non-zero region; the crop "
         "was enlarged to keep them (check the label and the skull stripping of this case)"
         for s in done if s.get("outside")])


@run_cli
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.np < 1:
        raise CMBUNetError(f"-np must be at least 1, got {args.np}")
    plans_name = check_plans_name(args.plans_name)

    raw_root = get_root("raw", args.raw_root)
    pre_root = get_root("preprocessed", args.preprocessed_root)
    name = resolve_dataset_name(args.d, raw_root)
    raw_dir = raw_root / name
    if not raw_dir.is_dir():
        raise InputError(raw_dir, "raw dataset folder does not exist")
    if args.verify_dataset_integrity:
        verify_dataset_integrity(raw_dir, num_processes=args.np)
        print(f"{name}: dataset integrity check passed")
    out_dir = pre_root / name

    # Everything that can fail on bad input runs before the first write.
    dataset_json = load_dataset_json(raw_dir)
    cases = list_training_cases(raw_dir, dataset_json)
    if not cases:
        raise InputError(raw_dir / "imagesTr", "contains no training case")
    fp_path = out_dir / FINGERPRINT_FILE
    if not args.clean and fingerprint_matches(fp_path, list(cases)):
        fingerprint = load_fingerprint(fp_path)
    else:
        fingerprint = extract_fingerprint(raw_dir, num_processes=args.np)
    plans_path = out_dir / plans_file_name(plans_name)
    overrides, kept = merge_overrides([] if args.clear_overrides else earlier_overrides(plans_path), args.override)
    if kept:
        print(f"keeping the earlier overrides of {plans_path.name} (--clear-overrides forgets them): {' '.join(kept)}")
    plans = plan_experiment(fingerprint, dataset_json, preset=args.preset, overrides=overrides, dataset_name=name)
    phash = plans_hash(plans)
    pp_hash = preprocessing_hash(plans)
    case_root = preprocessed_case_root(out_dir, plans_name, pp_hash)

    out_dir.mkdir(parents=True, exist_ok=True)
    # one run per dataset: two would rewrite the same plans, splits and cases under each other
    with exclusive_lock(out_dir / PREPROCESS_LOCK, f"preprocessing of {name}"):
        for folder in (out_dir, case_root / DATA_DIR):
            remove_stale_temp_files(folder)  # left by a killed run
        save_fingerprint(fingerprint, fp_path)
        save_plans(plans, plans_path)
        save_json(dataset_json, out_dir / "dataset.json")
        if args.clean and (case_root / DATA_DIR).is_dir():
            shutil.rmtree(case_root / DATA_DIR)

        has_cmb = {r["case"]: r.get("num_cmbs", 0) > 0 for r in fingerprint["cases"]}
        if len(cases) >= 2:
            load_or_create_splits(out_dir, sorted(cases), has_cmb)
        else:
            print(f"only one training case: no {SPLITS_FILE} written; train with fold 'all'")
        if args.no_preprocess:
            print(f"{name}: plans written to {plans_path} (preprocessing skipped)")
            return 0

        todo = [c for c in cases if not case_is_done(case_root, c, pp_hash, phash)]
        reused = reuse_default_cases(out_dir, case_root, todo, pp_hash)
        if reused:
            print(f"{name}: {len(reused)} case(s) taken from {out_dir / DATA_DIR} (preprocessed alike)")
            todo = [c for c in todo if c not in reused]
        jobs = [(c, cases[c]["images"], cases[c]["label"], plans, case_root, phash, pp_hash) for c in todo]
        done = preprocess_cases(jobs, args.np) if jobs else []
        if not todo:
            print(f"{name}: preprocessed cases up to date (preprocessing {pp_hash}) in {case_root / DATA_DIR}")
        print(format_summary(name, case_root, plans, done, len(cases) - len(todo)))
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
