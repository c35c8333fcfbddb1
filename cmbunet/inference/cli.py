"""``cmbunet_predict``: detect and segment CMBs in new scans with a trained model.

Examples::

    cmbunet_predict -i valdo_test/ -o predictions/ -d 1
    cmbunet_predict -i imagesTs/ -o predictions/ -m $CMBUNET_RESULTS/Dataset001_VALDO/cmbunet -f 0 1 2 3 4
    cmbunet_predict -i imagesTs/ -o predictions/ -d 1 --num-parts 4 --part-id 0   # first of four machines
    cmbunet_predict -i bids_root/ -o bids_root/derivatives/cmbunet -d 1 --output-format bids
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cmbunet.errors import CMBUNetError, InputError
from cmbunet.model_folder import DATASET_JSON_FILE, PLANS_FILE, ModelFolder, model_subfolder, plans_name_of
from cmbunet.paths import ROOT_VARIABLES, get_root, resolve_dataset_name
from cmbunet.utilities.cli import (MODEL_PLANS_HELP, add_device_option, add_folds_option, add_plans_option,
                                   command_parser, resolve_device_choice, run_cli)
from cmbunet.utilities.cpu_features import BF16_CPU_FLAGS, PRECISIONS, cpu_has_bf16  # noqa: F401
from cmbunet.utilities.file_io import load_json

if TYPE_CHECKING:
    from cmbunet.inference.options import InferenceOptions


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "cmbunet_predict",
        "Detect and segment cerebral microbleeds: screening FCN -> discrimination CNN -> U-Net, "
        "written back in the geometry of each input scan.")
    for add_group in (_input_options, _model_options, _run_options, _decision_options, _speed_options):
        add_group(parser)
    return parser


def _input_options(parser: argparse.ArgumentParser) -> None:
    p = parser.add_argument_group("input and output")
    p.add_argument("-i", "--input", required=True,
                   help="skull-stripped T2*-weighted GRE magnitude or SWI images (see --brain-mask): a VALDO tree (sub-XXX/sub-XXX_space-T2S_desc-masked_T2S.nii.gz), a BIDS dataset "
                        "(sub-XXX/[ses-YYY/]anat/sub-XXX[_ses-YYY]_T2starw.nii.gz), a folder of CASE_0000.nii.gz "
                        "files, or one image file")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--brain-mask", default=None, metavar="FOLDER",
                   help="a folder with one brain mask per case, on the grid of its image: CASE.nii.gz (CASE as the "
                        "case id: sub-XXX for VALDO, the BIDS entities sub-XXX_ses-YYY for BIDS) or "
                        "CASE_desc-brain_mask.nii.gz, also in sub-XXX/[ses-YYY/]anat/ (a BIDS dataset or derivative). "
                        "Voxels outside the mask are set to 0 before preprocessing; the input files are not changed")
    p.add_argument("--allow-unstripped", action="store_true",
                   help="predict images that do not look skull-stripped (signal at the border of the field of view, "
                        "or more than a brain's volume) as they are; by default such a case fails, naming the file. "
                        "The model expects skull-stripped T2*-weighted GRE magnitude or SWI images")
    p.add_argument("--output-format", choices=("flat", "bids"), default="flat",
                   help="flat: every file in OUTPUT, named after the case (VALDO: sub-XXX_space-T2S_prediction.nii.gz); "
                        "bids: OUTPUT becomes a BIDS derivative dataset (sub-XXX/[ses-YYY/]anat/..._desc-cmb_mask.nii.gz, "
                        "_desc-cmb_probseg.nii.gz, _desc-cmb_cmbs.tsv)")


def _model_options(parser: argparse.ArgumentParser) -> None:
    p = parser.add_argument_group("model")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("-d", "--dataset", help="dataset id or name; the model is CMBUNET_RESULTS/DatasetXXX_Name/cmbunet")
    model.add_argument("-m", "--model",
                       help="a trained model folder (holding plans.json and fold_F/), e.g. one installed with "
                            "cmbunet_install_model or copied from another machine; the dataset's results folder "
                            "around it is accepted too (-p then picks the model in it)")
    add_plans_option(p, help="with -d, or with -m naming a dataset's results folder: " + MODEL_PLANS_HELP)
    p.add_argument("--results-root", default=None, help="results root (default: $CMBUNET_RESULTS)")
    add_folds_option(p, "folds to average, e.g. 0 1 2 3 4, or 'all' (the model trained on all cases), or both "
                        "(-f 0 1 2 3 4 all); default: every numbered fold with all three stages trained, or 'all' "
                        "when no numbered fold is; the folds used are printed and recorded")
    p.add_argument("--checkpoint", choices=("final", "best"), default="final", help="which checkpoint of each stage")


def _run_options(parser: argparse.ArgumentParser) -> None:
    p = parser.add_argument_group("running and writing")
    add_device_option(p, "where the networks run")
    p.add_argument("--mode", choices=("fcn", "sliding"), default="fcn",
                   help="screening as one fully convolutional pass (fast) or as an explicit sliding window (reference)")
    p.add_argument("--save-probabilities", "--save_probabilities", dest="save_probabilities", action="store_true",
                   help="also write CASE_probabilities.nii.gz")
    p.add_argument("--save-candidates", action="store_true",
                   help="also write every screening candidate of each case (CASE_candidates.csv): position, screening "
                        "and discrimination scores, spot shape, and whether it was kept")
    p.add_argument("--overwrite", action="store_true",
                   help="predict every case again even if its outputs exist. Without it a re-run continues the "
                        "folder (finished cases are skipped) only when prediction_record.json there names the same "
                        "model and settings, and stops naming what changed otherwise")
    p.add_argument("--num-parts", "-num_parts", "--num_parts", dest="num_parts", type=int, default=1, metavar="K",
                   help="split the cases over K machines or jobs")
    p.add_argument("--part-id", "-part_id", "--part_id", dest="part_id", type=int, default=0, metavar="I",
                   help="which share this run does (0-based)")
    p.add_argument("-npp", "--preprocessing-workers", "--npp", dest="npp", type=int, default=1, metavar="N",
                   help="background threads reading and preprocessing the next cases (0: no background work)")


def _decision_options(parser: argparse.ArgumentParser) -> None:
    p = parser.add_argument_group("thresholds and rules",
                                  "each defaults to inference_settings.json of the model, else the plans")
    p.add_argument("--screening-threshold", type=float, default=None,
                   help="default: inference_settings.json of the model, else the plans (0.5; 0.1 in the paper "
                        "preset and in plans written before 2026-12)")
    p.add_argument("--discrimination-threshold", type=float, default=None,
                   help="default: inference_settings.json of the model, else the plans (0.5)")
    p.add_argument("--segmentation-threshold", type=float, default=None,
                   help="binarisation of the probabilities (default: inference_settings.json of the model, else the "
                        "plans (0.5))")
    p.add_argument("--max-candidates", type=int, default=None,
                   help="at most this many screening candidates per scan, the most probable ones (default: "
                        "inference_settings.json of the model, else the plans (1000))")
    p.add_argument("--min-component-voxels", type=int, default=None,
                   help="drop predicted CMBs smaller than this many voxels of the input image (default: "
                        "inference_settings.json of the model, else 0: keep all)")
    p.add_argument("--shape-max-elongation", type=float, default=None, metavar="E",
                   help="drop a kept candidate whose dark spot is more than E times longer than wide, times the "
                        "elongation a round 3 mm spot shows on the scan's voxels (1 on isotropic voxels, about "
                        "1.6 on 3 mm slices): veins, flat partial-volume spots, clumps of calcification (default: "
                        "inference_settings.json of the model, else the plans (2))")
    p.add_argument("--shape-max-diameter-mm", type=float, default=None, metavar="D",
                   help="drop a kept candidate whose dark spot is wider than D mm (default: inference_settings.json "
                        "of the model, else the plans (10, the largest microbleed))")
    p.add_argument("--shape-round-elongation", type=float, default=None, metavar="E",
                   help="a dark spot at most E times longer than wide (and within --shape-max-diameter-mm) is round: "
                        "kept when its discrimination probability is above --shape-round-threshold, whatever the "
                        "discrimination threshold (default: inference_settings.json of the model, else the plans "
                        "(1.5))")
    p.add_argument("--shape-round-threshold", type=float, default=None, metavar="T",
                   help="discrimination threshold of round spots (default: inference_settings.json of the model, "
                        "else the plans (0.5))")
    p.add_argument("--shape-min-blob-ratio", type=float, default=None, metavar="B",
                   help="drop a kept candidate, round or not, whose dark spot curves less like a ball than B times a "
                        "small round microbleed on the scan's voxels (smallest over largest eigenvalue of the "
                        "image's Hessian): veins seen end-on or cut short by thick slices; a very negative value "
                        "drops nothing (default: inference_settings.json of the model, else the plans)")
    p.add_argument("--shape-max-inplane-elongation", type=float, default=None, metavar="E",
                   help="drop a kept candidate, round or not, whose dark spot is more than E times longer than wide "
                        "on the slice that holds most of it (slices as acquired): veins crossing thick slices; a "
                        "very large value drops nothing (default: inference_settings.json of the model, else the "
                        "plans)")
    p.add_argument("--location-max-csf-share", type=float, default=None, metavar="S",
                   help="drop a kept candidate, round or not, when more than this share of a thin shell around its "
                        "dark spot is CSF (brighter than the scan's CSF level) or outside the brain: calcifications "
                        "of the choroid plexus, pineal and falx, pial vessels; 1 drops nothing (default: "
                        "inference_settings.json of the model, else the plans (0.6))")
    p.add_argument("--unsegmented-spot-max-diameter-mm", type=float, default=None, metavar="D",
                   help="a kept candidate the U-Net leaves empty is written as its dark spot (voxels darker than half "
                        "its depth) when the spot is at most D mm wide: small microbleeds the U-Net misses; 0 writes "
                        "none (default: inference_settings.json of the model, else the plans (4))")
    p.add_argument("--components-need-candidate", choices=("yes", "no"), default=None,
                   help="yes: write only the segmented CMBs that reach within two voxels of a kept candidate (the "
                        "U-Net's patch also segments dark spots nearby that discrimination never judged); no: every "
                        "component (default: inference_settings.json of the model, else the plans (yes))")


def _speed_options(parser: argparse.ArgumentParser) -> None:
    p = parser.add_argument_group("speed", "how the networks run; the detections stay those of float32")
    p.add_argument("--batch-size", type=int, default=256, help="blocks per forward pass in discrimination "
                                                              "(segmentation uses an eighth of it)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="arithmetic of the screening pass (discrimination and segmentation run in float32). auto "
                        "(default): bfloat16 on CPUs with bfloat16 dot products (AVX-512 BF16, AMX), about 3x faster "
                        "there; float32 on other CPUs; float16 autocast on CUDA. Scores that can decide a candidate "
                        "are recomputed in float32, so the detections are those of float32")
    p.add_argument("--cpu-bf16", action="store_true", help="deprecated: same as --precision bf16")
    p.add_argument("--no-skip-empty", action="store_true",
                   help="screen every tile, also those outside the brain (same result, slower; for checking)")


def model_folder(args: argparse.Namespace) -> Path:
    """The model folder given by ``-m`` or derived from ``-d`` and the results root. ``-m`` may also name the
    dataset's results folder (``.../DatasetXXX_Name``) that holds the model folder; ``-p`` picks the model of
    that plans name in it. ``-p`` with ``-m`` naming a model folder is refused unless it names that very
    model: it would otherwise be ignored silently."""
    if args.model:
        path = Path(args.model)
        given = getattr(args, "plans_name_given", False)
        if (path / PLANS_FILE).is_file():
            if given and plans_name_of(path.resolve()) != args.plans_name:
                raise InputError(path, conflicting_plans_name(path, args.plans_name))
            return path
        inner = path / model_subfolder(args.plans_name)
        return inner if given or (inner / PLANS_FILE).is_file() else path
    root = get_root("results", args.results_root)
    return ModelFolder.of_dataset(resolve_dataset_name(args.dataset, root), root, args.plans_name).path


def conflicting_plans_name(model: Path, plans_name: str) -> str:
    """Why ``-p`` cannot go with ``-m`` naming a model folder: the folder is the model, whatever ``-p`` says."""
    own = plans_name_of(model.resolve())
    what = f"the model of plans name {own}" if own else "a model folder"
    return (f"is {what} (it holds {PLANS_FILE}), so -p {plans_name} cannot apply: -p and -m naming a model folder "
            "conflict, as -p only picks a model inside a dataset's results folder (CMBUNET_RESULTS/DatasetXXX_Name/"
            f"cmbunet__NAME). Drop -p to predict with this model, or give -m (or -d) the dataset whose model of plans "
            f"name {plans_name} is meant")


def data_roots(results_root: Path | None = None) -> dict[Path, str]:
    """The results root (``--results-root`` or the variable), the preprocessed and the raw root, where set."""
    roots = {}
    for kind, override in (("results", results_root), ("preprocessed", None), ("raw", None)):
        value = override or os.environ.get(ROOT_VARIABLES[kind])
        if value:
            roots[Path(value).resolve()] = f"{kind} root ({ROOT_VARIABLES[kind]})"
    return roots


def protected_folder_around(path: Path, results_root: Path | None = None) -> tuple[Path, str] | None:
    """The folder that ``path`` lies in (or is) and that predictions must never be written into, with what it is,
    or None: a raw or preprocessed dataset, a model folder, the results, preprocessed or raw root.

    A raw dataset holds ``dataset.json`` beside ``imagesTr``/``labelsTr``/``imagesTs``; a preprocessed one
    ``dataset.json`` beside ``plans.json`` and ``data/``; a model ``plans.json`` beside ``fold_*`` folders or in a
    folder named as a model (``cmbunet``, ``cmbunet__NAME``). Predictions written there would mix with the data
    that planning, training and prediction read, or with the model itself."""
    roots = data_roots(results_root)
    for folder in (path.resolve(), *path.resolve().parents):
        if folder in roots:
            return folder, roots[folder]
        if (folder / "dataset.json").is_file():
            if any((folder / sub).is_dir() for sub in ("imagesTr", "labelsTr", "imagesTs")):
                return folder, "raw dataset"
            if (folder / "plans.json").is_file() and (folder / "data").is_dir():
                return folder, "preprocessed dataset"
        if (folder / PLANS_FILE).is_file() and (plans_name_of(folder)
                                                 or any(f.is_dir() for f in folder.glob("fold_*"))):
            return folder, "model folder"
    return None


def refuse_dataset_output(output: Path, results_root: Path | None = None) -> None:
    """Stop before anything is written when ``-o`` points into a dataset, a model or a data root."""
    found = protected_folder_around(output, results_root)
    if found:
        folder, what = found
        raise InputError(output, f"output folder lies inside the {what} {folder}; datasets, models and the data "
                                 "roots are never written by cmbunet_predict, choose an output folder outside them")


def settings_overrides(args: argparse.Namespace) -> dict:
    return {"screening_threshold": args.screening_threshold, "discrimination_threshold": args.discrimination_threshold,
            "segmentation_threshold": args.segmentation_threshold, "max_candidates": args.max_candidates,
            "min_component_voxels": args.min_component_voxels, "shape_max_elongation": args.shape_max_elongation,
            "shape_max_diameter_mm": args.shape_max_diameter_mm, "shape_round_elongation": args.shape_round_elongation,
            "shape_round_threshold": args.shape_round_threshold,
            "location_max_csf_share": args.location_max_csf_share,
            "shape_min_blob_ratio": args.shape_min_blob_ratio,
            "shape_max_inplane_elongation": args.shape_max_inplane_elongation,
            "unsegmented_spot_max_diameter_mm": args.unsegmented_spot_max_diameter_mm,
            "components_need_candidate": None if args.components_need_candidate is None
            else args.components_need_candidate == "yes"}


def dataset_file_ending(model_dir: Path) -> str:
    """The raw data's file ending from the dataset.json saved with the model (``.nii.gz`` if absent)."""
    path = model_dir / DATASET_JSON_FILE
    try:
        return str(load_json(path).get("file_ending", ".nii.gz")) if path.is_file() else ".nii.gz"
    except ValueError:
        return ".nii.gz"


def requested_precision(args: argparse.Namespace) -> str:
    """``--precision`` (``auto`` when absent), or ``bf16`` for the deprecated ``--cpu-bf16``, with a warning."""
    if not args.cpu_bf16:
        return args.precision or "auto"
    if args.precision not in (None, "bf16"):
        raise CMBUNetError(f"--cpu-bf16 (deprecated, = --precision bf16) contradicts --precision {args.precision}")
    print("warning: --cpu-bf16 is deprecated; use --precision bf16", file=sys.stderr)
    return "bf16"


def inference_options(args: argparse.Namespace) -> tuple[InferenceOptions, str]:
    """How the networks run, from the command line, and why on that device: ``-device``, the precision,
    ``--batch-size`` (discrimination; segmentation an eighth of it), ``--no-skip-empty`` and ``--mode``."""
    from cmbunet.inference.options import InferenceOptions  # torch: not for --help

    precision = requested_precision(args)
    device, device_reason = resolve_device_choice(args.device)
    if precision == "bf16" and device == "cpu" and cpu_has_bf16() is False:
        print(f"warning: bfloat16 on a CPU without bfloat16 instructions (none of {', '.join(BF16_CPU_FLAGS)} in "
              "/proc/cpuinfo): PyTorch emulates them and prediction runs many times slower than float32 "
              "(about 90x for the convolutions on such a CPU; documentation/benchmarks.md)", file=sys.stderr)
    options = InferenceOptions(device=device, precision=precision, discrimination_batch_size=args.batch_size,
                               segmentation_batch_size=max(1, args.batch_size // 8),
                               skip_empty=not args.no_skip_empty, mode=args.mode)
    return options, device_reason


@run_cli
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1 or args.npp < 0:
        raise CMBUNetError("--batch-size must be >= 1 and -npp (--preprocessing-workers) >= 0")
    refuse_dataset_output(Path(args.output), args.results_root)
    from cmbunet.inference.options import FolderOptions  # torch and the networks: not for --help
    from cmbunet.inference.predictor import CMBPredictor

    options, device_reason = inference_options(args)
    model_dir = model_folder(args)
    predictor = CMBPredictor.from_model_folder(model_dir, args.folds, args.checkpoint, settings_overrides(args),
                                               options)
    print(f"device: {options.device} ({device_reason})")
    print(predictor.precision_line())
    print(predictor.folds_line())
    print(predictor.thresholds_line())
    run = FolderOptions(save_probabilities=args.save_probabilities, save_candidates=args.save_candidates,
                        output_format=args.output_format, overwrite=args.overwrite, num_parts=args.num_parts,
                        part_id=args.part_id, num_workers=args.npp, file_ending=dataset_file_ending(model_dir),
                        brain_mask=args.brain_mask, allow_unstripped=args.allow_unstripped)
    summary = predictor.predict_folder(args.input, args.output, run)
    failed = summary[summary["status"] == "failed"]
    ignored = summary[summary["status"] == "ignored"]
    done = int((summary["status"] == "ok").sum())
    skipped = int(summary["status"].str.startswith("skipped").sum())
    print(f"{done} case(s) predicted, {skipped} skipped (already done), {len(failed)} failed, {len(ignored)} input "
          f"entr{'y' if len(ignored) == 1 else 'ies'} ignored; outputs in {args.output}")
    for _, row in failed.iterrows():
        print(f"  failed: {row['case']}: {row['error']}")
    for _, row in ignored.iterrows():
        print(f"  ignored: {row['case']}: {row['error']}")
    return 1 if len(failed) else 0


if __name__ == "__main__":
    raise SystemExit(main())
