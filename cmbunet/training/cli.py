"""``cmbunet_train DATASET FOLD``: train the screening FCN, the discrimination CNN and the segmentation U-Net."""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import time
from pathlib import Path

import torch

from cmbunet.errors import CMBUNetError, PlansMismatchError
from cmbunet.model_folder import DATASET_FILES, STAGE_SUMMARY_FILE, ModelFolder, model_subfolder
from cmbunet.paths import (DEFAULT_PLANS_NAME, check_plans_name, get_root, plans_file_name, preprocessed_case_root,
                           resolve_dataset_name)
from cmbunet.plans.plans_io import load_plans, plans_hash, preprocessing_hash
from cmbunet.plans.schema import STAGES, Plans, device_kind
from cmbunet.preprocessing.preprocessor import recorded_hash_matches
from cmbunet.preprocessing.splits import SPLITS_FILE, get_fold_cases, load_splits
from cmbunet.training.progress import format_duration
from cmbunet.utilities.cpu_features import PRECISIONS
from cmbunet.utilities.cli import (DATASET_HELP, add_device_option, add_plans_option, command_parser, deprecated_alias,
                                   resolve_device_choice, run_cli)
from cmbunet.utilities.file_io import atomic_path, load_json, remove_stale_temp_files
from cmbunet.utilities.locks import exclusive_lock

STAGE_CHOICES = (*STAGES, "all")


def default_num_workers() -> int:
    """Data-loading workers: leave one core to the training process, at most 4."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "cmbunet_train",
        "Train the three cmbunet stages (screening FCN -> discrimination CNN -> segmentation U-Net) "
        "on one cross-validation fold of a preprocessed dataset.")
    p.add_argument("dataset", help=DATASET_HELP)
    p.add_argument("fold", help="cross-validation fold (0-4) or 'all' to train on every case")
    p.add_argument("-s", "--stage", choices=STAGE_CHOICES, default="all",
                   help="stage to train (default all: the three stages in order)")
    add_plans_option(p, help=f"plans to train with (default {DEFAULT_PLANS_NAME}: plans.json, model in "
                        "CMBUNET_RESULTS/DatasetXXX_Name/cmbunet); another name reads NAME.json and trains into "
                        "cmbunet__NAME")
    add_device_option(p, "where training runs; the plans' training.gpu schedule runs on cuda, training.cpu on the "
                         "CPU (the command prints which)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="arithmetic of the whole-volume screening passes during training (false-positive mining, "
                   "validation): auto = bf16 where the CPU has bfloat16 dot products, fp16 on CUDA, fp32 elsewhere "
                   "(default auto); fp32 gives the same mined false positives on every CPU. Training steps are "
                   "unaffected (fp32 on CPU, mixed precision on CUDA)")
    p.add_argument("--c", "--continue", dest="resume", action="store_true",
                   help="continue from checkpoint_latest.pth; finished stages are skipped")
    p.add_argument("--num-gpus", type=int, default=1, metavar="N",
                   help="train with N DistributedDataParallel processes (GPUs with -device cuda, CPU processes otherwise)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed for weights and sampling (default: a random one); with a seed, a resumed run ends with "
                   "the same weights as an uninterrupted one (on CPU)")
    p.add_argument("--preprocessed-root", type=Path, default=None,
                   help="preprocessed data root (default: $CMBUNET_PREPROCESSED)")
    p.add_argument("--results-root", type=Path, default=None, help="results root (default: $CMBUNET_RESULTS)")
    p.add_argument("--no-validation", action="store_true",
                   help="do not predict and evaluate the fold's validation cases after training")
    p.add_argument("--no-thresholds", action="store_true",
                   help="do not set the thresholds automatically: neither the discrimination threshold from the "
                   "share of CMBs among screening candidates after training, nor the thresholds chosen on the pooled "
                   "validation predictions (cmbunet_find_thresholds) once every fold is validated")
    p.add_argument("--raw-root", type=Path, default=None,
                   help="raw data root holding the reference labels for validation (default: $CMBUNET_RAW)")
    p.add_argument("--num-workers", type=int, default=default_num_workers(), metavar="N",
                   help="data-loading worker processes per training process (0: build batches in the training "
                   "process; default: min(4, CPUs - 1))")
    # -npp was this option's old name; cmbunet_predict's -npp (as nnU-Net's) counts preprocessing workers instead
    p.add_argument("-npp", dest="num_workers", type=int, default=argparse.SUPPRESS, metavar="N",
                   action=deprecated_alias("--num-workers"), help=argparse.SUPPRESS)
    return p


def parse_fold(text: str) -> int | str:
    """``0``..``N`` or ``all``; anything else is a clear error."""
    if text == "all":
        return "all"
    if not text.isdigit():
        raise CMBUNetError(f"fold must be a number (0-4) or 'all', got '{text}'")
    return int(text)


def stages_to_run(choice: str) -> list[str]:
    return list(STAGES) if choice == "all" else [choice]


def plans_mismatch_remedy(model: ModelFolder, dataset: str, plans_name: str, plans_src: Path) -> str:
    """What to run when the model folder holds models of other plans (typically the plans were re-planned with
    another network after training). Training never deletes a trained model and has no option that overwrites
    one, so the choices are: keep the old model under a plans name of its own, delete it, or train the new plans
    under a new plans name."""
    keep = "previous" if plans_name == DEFAULT_PLANS_NAME else f"{plans_name}-previous"
    kept = model.path.parent / model_subfolder(keep)
    return (f"it holds models of other plans than {plans_src} (were the plans re-planned after training?). "
            "cmbunet_train never deletes a trained model and has no option to overwrite one; either\n"
            f"  - keep it as the model of plans name {keep}: mv {model.path} {kept} (cmbunet_predict -d {dataset} "
            f"-p {keep} still predicts with it), then run this command again; or\n"
            f"  - delete {model.path} if it is no longer needed, then run this command again; or\n"
            f"  - leave it and train the new plans under a new plans name: cmbunet_plan_and_preprocess -d {dataset} "
            f"-p NAME (with the same --override), then cmbunet_train {dataset} FOLD -p NAME")


def prepare_model_folder(preprocessed_dir: Path, model: ModelFolder, plans_hash: str,
                         plans_name: str = DEFAULT_PLANS_NAME) -> None:
    """Copy the plans (as plans.json), dataset.json and dataset_fingerprint.json next to the folds; refuse other
    plans, saying what to do."""
    plans_src = preprocessed_dir / plans_file_name(plans_name)
    model.check_plans(plans_hash, plans_src, plans_mismatch_remedy(model, preprocessed_dir.name, plans_name, plans_src))
    for name in DATASET_FILES:
        src = plans_src if name == "plans.json" else preprocessed_dir / name
        if src.is_file():
            with atomic_path(model.path / name) as tmp:
                tmp.write_bytes(src.read_bytes())


def check_preprocessed_cases(pre_dir: Path, cases: list[str], phash: str, pp_hash: str | None = None,
                             plans_file: str = "plans.json") -> None:
    """Refuse, before anything is written, preprocessed cases that are missing or were made with another
    preprocessing (``pp_hash``; cases of older versions record only the full plans hash ``phash``)."""
    for case in cases:
        props_path = pre_dir / "data" / f"{case}.json"
        if not props_path.is_file() or not (pre_dir / "data" / f"{case}.npz").is_file():
            raise CMBUNetError(f"{props_path.with_suffix('.npz')}: preprocessed case is missing; run "
                               "cmbunet_plan_and_preprocess first")
        props = load_json(props_path)
        recorded = props.get("preprocessing_hash", props.get("plans_hash")) if isinstance(props, dict) else None
        if recorded is None:
            continue
        if not (recorded_hash_matches(props, pp_hash, phash) if pp_hash is not None else recorded == phash):
            what = "plans" if pp_hash is None else "preprocessing of the plans"
            raise PlansMismatchError(f"{props_path}: was preprocessed with plans {recorded} but {plans_file} hashes to "
                                     f"{pp_hash or phash} ({what}); re-run cmbunet_plan_and_preprocess")


def schedule_line(plans: Plans, device: str, stages: list[str]) -> str:
    """Which of the plans' two training schedules runs on ``device``, why, and how the other differs, so that
    choosing a device never changes the training recipe unnoticed."""
    kind = device_kind(device)
    other = "cpu" if kind == "gpu" else "gpu"
    line = f"training schedule: training.{kind} of the plans (the device is {device})"
    changed = []
    for stage in stages:
        ours, theirs = (plans.training.of_kind(k).stage(stage) for k in (kind, other))
        if ours != theirs:
            changed.append(f"{stage} {ours.epochs} x {ours.samples_per_epoch} samples (training.{other}: "
                           f"{theirs.epochs} x {theirs.samples_per_epoch}"
                           + (", other settings too" if (ours.epochs, ours.samples_per_epoch) ==
                              (theirs.epochs, theirs.samples_per_epoch) else "") + ")")
    if not changed:
        return line + f"; training.{other} is the same"
    return (line + f"; it differs from training.{other}: " + "; ".join(changed)
            + f". -device {'cpu' if kind == 'gpu' else 'cuda'} trains with training.{other}")


#: Ctrl-C: a plain re-run starts the interrupted stage from scratch; only --c continues from checkpoint_latest.pth.
INTERRUPTED = ("interrupted; the checkpoints saved so far are kept. Run the same command with --c to continue where "
               "training stopped (finished stages are skipped); without --c every requested stage is trained again "
               "from scratch")


@run_cli(interrupted=INTERRUPTED)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # the training loop, its stages and DDP load the networks, mining and inference: not for --help
    from cmbunet.training import distributed as D
    from cmbunet.training.loop import require_stages, run_stages
    from cmbunet.training.stages import STAGE_TABLE
    from cmbunet.training.state import TrainConfig

    if args.num_gpus < 1:
        raise CMBUNetError(f"--num-gpus must be at least 1, got {args.num_gpus}")
    if args.num_workers < 0:
        raise CMBUNetError(f"--num-workers must be 0 or more, got {args.num_workers}")
    args.device, device_reason = resolve_device_choice(args.device)
    if args.device == "cuda":
        if args.num_gpus > torch.cuda.device_count():
            raise CMBUNetError(f"--num-gpus {args.num_gpus} but only {torch.cuda.device_count()} GPU(s) are visible")
    fold = parse_fold(args.fold)
    pre_root = get_root("preprocessed", args.preprocessed_root)
    name = resolve_dataset_name(args.dataset, pre_root)
    pre_dir = pre_root / name
    plans_name = check_plans_name(args.plans_name)
    plans = load_plans(pre_dir / plans_file_name(plans_name))
    phash = plans_hash(plans)
    pp_hash = preprocessing_hash(plans)
    case_root = preprocessed_case_root(pre_dir, plans_name, pp_hash)
    train_cases, val_cases = get_fold_cases(load_splits(pre_dir / SPLITS_FILE), fold)
    model = ModelFolder.of_dataset(name, get_root("results", args.results_root), plans_name)
    model_dir = model.path
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)

    configs = [TrainConfig(stage=s, fold=fold, plans=plans, plans_hash=phash, preprocessed_dir=case_root,
                           model_dir=model_dir, train_cases=train_cases, val_cases=val_cases, device=args.device,
                           seed=seed, resume=args.resume, num_workers=args.num_workers, precision=args.precision)
               for s in stages_to_run(args.stage)]
    # refuse early, before any process starts: the first stage's prerequisites must already be trained
    first = configs[0]
    if not (first.resume and model.is_trained(fold, first.stage)):
        require_stages(first, STAGE_TABLE[first.stage])
    check_preprocessed_cases(case_root, train_cases + val_cases, phash, pp_hash, plans_file_name(plans_name))
    # one run per fold: a second one would delete this run's logs and mix its checkpoints into this run's. Under
    # torchrun, rank 0 takes the lock and prepares the folder; the other ranks only train (after the rendezvous).
    primary = D.is_primary_process()
    lock = exclusive_lock(model.train_lock_file(fold), f"training of {name} fold {fold} ({model.path.name})")
    with lock if primary else contextlib.nullcontext():
        if primary:
            prepare_model_folder(pre_dir, model, phash, plans_name)
            remove_stale_temp_files(model.fold_dir(fold), recursive=True)  # checkpoints a killed run left half-written
            print(f"training {', '.join(c.stage for c in configs)} on {name} fold {fold}: {len(train_cases)} training, "
                  f"{len(val_cases)} validation cases -> {model.fold_dir(fold)}")
            print(f"device: {args.device} ({device_reason})")
            print(schedule_line(plans, args.device, [c.stage for c in configs]))
        started = time.time()
        D.launch(run_stages, args.num_gpus, args.device, configs)
        if not primary:  # thresholds, validation and the summary are rank 0's
            return 0
        if not args.no_thresholds and any(c.stage == "discrimination" for c in configs):
            from cmbunet.evaluation.thresholds import threshold_from_candidate_prior
            trained = [str(f) for f in ["all", *range(len(load_splits(pre_dir / SPLITS_FILE)))]
                       if model.is_trained(f, "discrimination")]
            threshold_from_candidate_prior(model_dir, trained)
        if fold != "all" and val_cases and not args.no_validation and configs[-1].stage == "segmentation":
            # the fold is complete: predict its validation cases with the whole pipeline and score them
            # (fold_F/validation)
            from cmbunet.evaluation.cross_validation import validate_fold

            out = validate_fold(name, fold, pre_root, get_root("results", args.results_root), args.device,
                                args.raw_root, plans_name=plans_name)
            print(f"validation predictions and metrics of fold {fold}: {out}")
            if not args.no_thresholds:
                from cmbunet.evaluation.thresholds import thresholds_after_cross_validation
                thresholds_after_cross_validation(model_dir, len(load_splits(pre_dir / SPLITS_FILE)))
        print(run_summary(model, fold, [c.stage for c in configs], time.time() - started))
    return 0


def run_summary(model: ModelFolder, fold: int | str, stages: list[str], seconds: float) -> str:
    """What the run did, for the end of the console output: per stage its wall time, epochs and validation
    metrics (``stage_summary.json``), then the fold's whole-pipeline validation and the thresholds in force."""
    lines = [f"== cmbunet_train summary: fold {fold}, {format_duration(seconds)} in all =="]
    for stage in stages:
        path = model.stage_dir(fold, stage) / STAGE_SUMMARY_FILE
        if not path.is_file():
            lines.append(f"  {stage:<15} not finished")
            continue
        info = load_json(path)
        last = info.get("last_validation", {})
        shown = " ".join(f"{k[4:]}={v:.3f}" for k, v in last.items()
                         if k[4:] in ("sensitivity", "precision", "f1", "auc", "dice") and isinstance(v, float))
        lines.append(f"  {stage:<15} {format_duration(info['seconds']):>7}  {info['epochs']} epochs  "
                     f"best {info['monitor']} {info['best']:.3f}  last epoch: {shown}"
                     + ("  (resumed: time of this run only)" if info.get("resumed") else ""))
    summary = model.validation_dir(fold) / "summary.json"
    if fold != "all" and summary.is_file():
        agg = load_json(summary).get("aggregate", {})
        num = lambda key: f"{agg[key]:.3f}" if isinstance(agg.get(key), (int, float)) else "n/a"  # noqa: E731
        lines.append(f"  validation cases (whole pipeline, VALDO rule): F1 {num('f1_pooled')}, sensitivity "
                     f"{num('sensitivity')}, {num('fp_per_case')} FP per case, Dice {num('dice_mean')}")
    settings = model.inference_settings()
    if settings:
        lines.append("  inference settings: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                                          for k, v in settings.items())
                     + f" ({model.inference_settings_file})")
    return "\n".join(lines)


if __name__ == "__main__":  # torchrun --nproc_per_node N -m cmbunet.training.cli DATASET FOLD ...
    raise SystemExit(main())
