"""Leave-one-site-out: train on all sites but one, test on the one left out, for every site in turn.

A detector is used on scanners it never saw, so this, not a split of one synthetic world, is the figure that
matters. For each held-out site the script builds a raw dataset whose ``imagesTr`` holds the other sites'
subjects and whose ``imagesTs``/``labelsTs`` hold the held-out site's, then runs cmbunet's own commands as a
user would: ``cmbunet_plan_and_preprocess`` (planned on the training sites only) -> ``cmbunet_train D all``
-> ``cmbunet_predict`` -> ``cmbunet_evaluate`` (VALDO rule, 5 mm). It reports pooled F1, sensitivity, precision,
FP per subject and Dice per held-out site, and pooled over all of them.

Every step is skipped when its output exists, so an interrupted run continues where it stopped.

    python benchmarks/leave_one_site_out.py --work /tmp/loso --sites iso3T mid15T swi3T --cases-per-site 12
    python benchmarks/leave_one_site_out.py --work /tmp/loso --preset fast --size small   # quicker proxy
    python benchmarks/leave_one_site_out.py --work /tmp/loso_t1t2 --hold-out swi3T --modalities T2S T1 T2

``--fresh-seed N --fresh SITE:HELD_OUT ...`` tests the trained fold models once more on new subjects (data seed
N) without training again: subjects of SITE go to the model that never saw HELD_OUT's site, e.g. ``thick3T:swi3T``
sends 3 mm-slice subjects of a site no model trained on to the model trained on ``iso3T`` + ``mid15T``.

``--cv`` runs, on the same subjects, the within-cohort comparison: one dataset of every site's subjects,
``cmbunet_train D 0`` .. ``4`` (five-fold cross-validation; after the last fold ``cmbunet_find_thresholds`` runs on
the pooled validation predictions), then each fold's validation subjects predicted by its model at the candidate
prior's thresholds (as the held-out folds are) and scored per site. The gap between a site's CV row and its
held-out row is what the site shift costs. ``--hold-out`` with no site and ``--cv`` runs the CV only:

    python benchmarks/leave_one_site_out.py --work /tmp/loso --cv --hold-out

``--fresh SITE:cv`` then sends new subjects of SITE (a site of the cohort or one no model saw) to the CV's five
fold models, twice: with the thresholds CV chose and with the candidate prior's (before CV), which says whether
thresholds chosen within the cohort carry over to new subjects and sites.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import base_parser, loadavg, machine_info, print_machine, print_table, write_json  # noqa: E402

def _run(title: str, main, argv: list[str]) -> float:
    print(f"\n## {title}\n$ {main.__module__} {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    code = main(argv)
    if code != 0:
        raise SystemExit(f"step '{title}' failed with exit code {code}")
    return time.perf_counter() - t0


def generate_sites(work: Path, sites: list[str], n: int, seed: int, size: str, anatomy: str,
                   modalities: tuple[str, ...] = ("T2S",)) -> dict[str, Path]:
    """One raw-layout folder of ``n`` labelled subjects per site (seeded per site, so adding a site changes none),
    with the channels ``modalities``."""
    from cmbunet.synthetic import write_dataset

    folders = {}
    for k, site in enumerate(sites):
        folder = work / "sites" / site
        if not (folder / "synthetic_truth.json").is_file():
            write_dataset(folder, n, layout="raw", seed=seed * 1000 + sum(map(ord, site)), size=size,
                          anatomy=anatomy, sites=[site], dataset_name=f"site_{site}", modalities=modalities)
        folders[site] = folder
    return folders


def fold_dataset_name(dataset_id: int, held_out: str) -> str:
    """The raw dataset (and model) name of the fold that holds out ``held_out``."""
    return f"Dataset{dataset_id:03d}_LOSO{held_out}"


def cv_dataset_name(dataset_id: int) -> str:
    """The raw dataset (and model) name of the cross-validation over every site's subjects."""
    return f"Dataset{dataset_id:03d}_CVAllSites"


def build_dataset(raw_root: Path, name: str, folders: dict[str, Path], test_site: str | None = None) -> str:
    """Raw dataset ``name`` of every site's subjects, each prefixed with its site: ``test_site``'s in
    imagesTs/labelsTs, the others in imagesTr/labelsTr (all of them when ``test_site`` is None)."""
    from cmbunet.utilities.file_io import load_json, save_json

    out = raw_root / name
    if (out / "dataset.json").is_file():
        return name
    tmp = raw_root / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    n_train = n_test = 0
    channels = load_json(next(iter(folders.values())) / "dataset.json")["channel_names"]
    for site, folder in folders.items():
        test = site == test_site
        for img in sorted((folder / "imagesTr").glob("*_0000.nii.gz")):
            case = img.name[: -len("_0000.nii.gz")]
            dst_img, dst_lab = ("imagesTs", "labelsTs") if test else ("imagesTr", "labelsTr")
            (tmp / dst_img).mkdir(parents=True, exist_ok=True)
            (tmp / dst_lab).mkdir(parents=True, exist_ok=True)
            for c in range(len(channels)):
                name_c = f"{case}_{c:04d}.nii.gz"
                shutil.copy2(folder / "imagesTr" / name_c, tmp / dst_img / f"{site}_{name_c}")
            shutil.copy2(folder / "labelsTr" / f"{case}.nii.gz", tmp / dst_lab / f"{site}_{case}.nii.gz")
            n_test, n_train = n_test + test, n_train + (not test)
    what = f"leave-one-site-out fold: test site {test_site}" if test_site else \
        f"cross-validation over the sites {', '.join(folders)}"
    save_json({"name": name, "description": what, "channel_names": channels, "labels": {"background": 0, "CMB": 1},
               "numTraining": n_train, "numTest": n_test, "file_ending": ".nii.gz"}, tmp / "dataset.json")
    tmp.rename(out)
    return name


#: Extent (mm) of a mimic from its recorded size, so that an FP anywhere on a long vein is put down to the vein.
def _mimic_reach_mm(mimic: dict) -> float:
    size = [mimic.get("length_mm", 0.0) / 2, mimic.get("max_radius_mm", 0.0), mimic.get("radius_mm", 0.0),
            max(mimic.get("semi_axes_mm", [0.0]))]
    return max(size) + 3.0


def attribute_false_positives(pred_dir: Path, ref_dir: Path, truth_file: Path, site_prefixed: bool = True,
                              site: str = "") -> dict:
    """Put each false positive down to the nearest unlabelled mimic of the synthetic truth within its reach
    (``background`` when none): which mimics fool the detector on the held-out site, and which CMBs it misses
    (by radius). With ``site``, only that site's subjects (``SITE_*``) of ``ref_dir`` count."""
    from cmbunet.evaluation.valdo_metrics import case_metrics
    from cmbunet.imageio.reader_writer import SimpleITKIO

    truth = json.loads(truth_file.read_text())["cases"]
    causes: dict[str, int] = {}
    missed_radius, found_radius = [], []
    for ref_path in sorted(ref_dir.glob(f"{site}_*.nii.gz" if site else "*.nii.gz")):
        case = ref_path.name[: -len(".nii.gz")]
        pred_path = pred_dir / ref_path.name
        if not pred_path.is_file():
            continue
        cid = case.split("_", 1)[1] if site_prefixed else case  # SITE_synth_XXX in a fold's dataset
        entry = truth.get(cid, {})
        ref, props = SimpleITKIO.read_seg(ref_path)
        pred, _ = SimpleITKIO.read_seg(pred_path)
        spacing = np.asarray(props["spacing"], dtype=np.float64)
        m = case_metrics(ref, pred, tuple(spacing))
        fps = m["pred_components"][~m["pred_components"]["is_tp"]]
        mimics = entry.get("mimics", [])
        centres = np.array([mm["center_voxel"] for mm in mimics], dtype=np.float64).reshape(-1, 3) * spacing
        reach = np.array([_mimic_reach_mm(mm) for mm in mimics])
        for _, row in fps.iterrows():
            cause = "background"
            if len(centres):
                d = np.linalg.norm(centres - row[["x_mm", "y_mm", "z_mm"]].to_numpy(float), axis=1)
                near = np.flatnonzero(d <= reach)
                if near.size:
                    cause = mimics[int(near[np.argmin(d[near])])]["kind"]
            causes[cause] = causes.get(cause, 0) + 1
        refs = m["ref_components"]
        cmb_centres = np.array([c["center_voxel"] for c in entry.get("cmbs", [])], dtype=np.float64).reshape(-1, 3) * spacing
        for _, row in refs.iterrows():
            if not len(cmb_centres):
                break
            k = int(np.argmin(np.linalg.norm(cmb_centres - row[["x_mm", "y_mm", "z_mm"]].to_numpy(float), axis=1)))
            (found_radius if row["detected"] else missed_radius).append(entry["cmbs"][k]["radius_mm"])
    return {"fp_causes": dict(sorted(causes.items(), key=lambda kv: -kv[1])),
            "missed_cmb_radius_mm": sorted(round(r, 2) for r in missed_radius),
            "found_cmb_radius_median_mm": float(np.median(found_radius)) if found_radius else float("nan")}


def plan_dataset(pre: Path, raw: Path, name: str, preset: str, overrides: list[str], num_processes: int) -> dict:
    """``cmbunet_plan_and_preprocess`` unless done; its seconds."""
    from cmbunet.plan_and_preprocess import main as plan_main

    if (pre / name / "plans.json").is_file():
        return {}
    plan = ["-d", name, "--raw-root", str(raw), "--preprocessed-root", str(pre), "-np", str(num_processes),
            "--preset", preset, *(["--override", *overrides] if overrides else [])]
    return {"plan_and_preprocess": _run(f"{name}: plan and preprocess", plan_main, plan)}


def train_fold(pre: Path, res: Path, raw: Path, name: str, fold: str, seed: int, title: str) -> dict:
    """``cmbunet_train NAME FOLD`` unless its three stages are trained (continuing a stopped run); its seconds."""
    from cmbunet.training.cli import main as train_main

    model = res / name / "cmbunet"
    final = [model / f"fold_{fold}" / s / "checkpoint_final.pth" for s in ("screening", "discrimination", "segmentation")]
    if all(p.is_file() for p in final):
        return {}
    train = [name, fold, "--preprocessed-root", str(pre), "--results-root", str(res), "--raw-root", str(raw),
             "--seed", str(seed), "-device", "cpu"]
    if (model / f"fold_{fold}" / "screening" / "checkpoint_latest.pth").is_file():
        train.append("--c")
    return {f"train_{fold}": _run(title, train_main, train)}


def run_fold(work: Path, dataset_id: int, held_out: str, folders: dict[str, Path], preset: str,
             overrides: list[str], seed: int, num_processes: int, predict_options: list[str] = (),
             tag: str = "") -> dict:
    from cmbunet.evaluation.cli import main as evaluate_main
    from cmbunet.inference.cli import main as predict_main

    raw, pre, res = work / "raw", work / "preprocessed", work / "results"
    name = build_dataset(raw, fold_dataset_name(dataset_id, held_out), folders, test_site=held_out)
    times = plan_dataset(pre, raw, name, preset, overrides, num_processes)
    times |= train_fold(pre, res, raw, name, "all", seed, f"{held_out}: train on the other sites")
    model = res / name / "cmbunet"
    pred = work / (f"predictions_{tag}" if tag else "predictions") / held_out
    times["predict"] = _run(f"{held_out}: predict the held-out site", predict_main,
                            ["-i", str(raw / name / "imagesTs"), "-o", str(pred), "-m", str(model), "-f", "all",
                             *predict_options])
    _run(f"{held_out}: evaluate", evaluate_main, ["-ref", str(raw / name / "labelsTs"), "-pred", str(pred),
                                                  "-o", str(pred / "evaluation")])
    summary = json.loads((pred / "evaluation" / "summary.json").read_text())
    causes = attribute_false_positives(pred, raw / name / "labelsTs", folders[held_out] / "synthetic_truth.json")
    print(f"{held_out}: false positives by cause {causes['fp_causes']}; missed CMBs of radius (mm) "
          f"{causes['missed_cmb_radius_mm']}", flush=True)
    logs = sorted((model / "fold_all").glob("*/training_log.txt"))
    return {"held_out": held_out, "train_sites": [s for s in folders if s != held_out], **summary["aggregate"],
            "seconds": times, **causes, "training_logs": [str(p) for p in logs]}


def run_cross_validation(work: Path, dataset_id: int, folders: dict[str, Path], preset: str, overrides: list[str],
                         seed: int, num_processes: int) -> dict:
    """Five-fold CV over every site's subjects with cmbunet's own commands (the planner's splits, ``cmbunet_train D
    0`` .. ``4``). Each fold's validation subjects are then predicted once more by ``cmbunet_predict`` with that
    fold's model at the thresholds a model has before CV chooses any (the candidate prior's, as the held-out folds
    use; ``cmbunet_train``'s own validation keeps candidates down to screening 0.1 with discrimination at 0.5 so
    that ``cmbunet_find_thresholds`` can sweep them) and scored per site. Also returns the thresholds
    ``cmbunet_find_thresholds`` chose after the last fold."""
    from cmbunet.evaluation.cli import main as evaluate_main
    from cmbunet.evaluation.cross_validation import load_fold_summary, validation_cases
    from cmbunet.evaluation import aggregate_metrics
    from cmbunet.inference.cli import main as predict_main
    from cmbunet.model_folder import ModelFolder
    from cmbunet.preprocessing.splits import SPLITS_FILE, load_splits

    raw, pre, res = work / "raw", work / "preprocessed", work / "results"
    name = build_dataset(raw, cv_dataset_name(dataset_id), folders)
    times = plan_dataset(pre, raw, name, preset, overrides, num_processes)
    folds = [str(f) for f in range(len(load_splits(pre / name / SPLITS_FILE)))]
    for fold in folds:
        times |= train_fold(pre, res, raw, name, fold, seed, f"cross-validation: fold {fold}")
    model = res / name / "cmbunet"
    options = prior_threshold_options(model)
    pred = work / "predictions_cv"
    for fold in folds:
        inputs = work / "cv_inputs" / f"fold_{fold}"
        if not inputs.is_dir():
            inputs.mkdir(parents=True)
            for case in validation_cases(pre / name, fold):
                for image in (raw / name / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9].nii.gz"):
                    (inputs / image.name).symlink_to(image.resolve())
        _run(f"cross-validation: fold {fold}'s validation subjects at the candidate prior's thresholds", predict_main,
             ["-i", str(inputs), "-o", str(pred), "-m", str(model), "-f", fold, *options])
    _run("cross-validation: evaluate", evaluate_main, ["-ref", str(raw / name / "labelsTr"), "-pred", str(pred),
                                                       "-o", str(pred / "evaluation")])
    _, per_case = load_fold_summary(pred / "evaluation" / "summary.json")
    per_case["missing"] = per_case["missing"].fillna(False).astype(bool) if "missing" in per_case else False
    rows = []
    for site in folders:
        causes = attribute_false_positives(pred, raw / name / "labelsTr", folders[site] / "synthetic_truth.json",
                                           site=site)
        rows.append({"held_out": f"{site} (CV)", **aggregate_metrics(per_case[per_case["case"].str.startswith(f"{site}_")]),
                     **causes})
    return {"dataset": name, "folds": folds, "predict_options": options, "sites": rows,
            "pooled": {"held_out": "pooled (CV)", **aggregate_metrics(per_case)}, "seconds": times,
            "inference_settings_after_cv": ModelFolder(model).inference_settings()}


def prior_threshold_options(model_dir: Path) -> list[str]:
    """cmbunet_predict options for the thresholds a model has before cross-validation chooses any: the plans'
    screening threshold, the candidate prior's discrimination threshold, every component kept."""
    from cmbunet.evaluation.thresholds import candidate_prior_threshold
    from cmbunet.model_folder import ModelFolder

    model = ModelFolder(model_dir)
    folds = [f.name.split("_", 1)[1] for f in sorted(model_dir.glob("fold_*"))]
    found = candidate_prior_threshold(model_dir, folds)
    inference = model.load_plans().inference
    return ["--screening-threshold", f"{inference.screening_threshold:g}", "--min-component-voxels", "0",
            "--discrimination-threshold", f"{found[0] if found else inference.discrimination_threshold:.4f}"]


def score_fresh_subjects(work: Path, dataset_ids: dict[str, int], fresh: list[str], n: int, seed: int, size: str,
                         anatomy: str, predict_options: list[str], tag: str) -> list[dict]:
    """Predict and score new subjects (data seed ``seed``) of each ``SITE:HELD_OUT`` pair with the fold model that
    held out ``HELD_OUT``; the models are not trained again. ``SITE:cv`` uses the cross-validation's five fold
    models (averaged) twice: with the thresholds chosen on their pooled validation predictions, and with those of
    before (the candidate prior), which says whether choosing thresholds within the cohort helps on new sites."""
    from cmbunet.evaluation.cli import main as evaluate_main
    from cmbunet.inference.cli import main as predict_main

    pairs = [spec.split(":", 1) for spec in fresh]
    folders = generate_sites(work / f"fresh_seed{seed}", [site for site, _ in pairs], n, seed, size, anatomy)
    runs = []
    for site, held_out in pairs:
        if held_out == "cv":
            model = work / "results" / cv_dataset_name(dataset_ids["cv"]) / "cmbunet"
            runs += [(site, held_out, model, "", "thresholds chosen by CV"),
                     (site, held_out, model, "_prior", "candidate prior (before CV)")]
        else:
            runs.append((site, held_out, work / "results" / fold_dataset_name(dataset_ids[held_out], held_out) / "cmbunet",
                         "", ""))
    rows = []
    for site, held_out, model, suffix, what in runs:
        pred = work / f"fresh_seed{seed}" / (f"predictions_{tag}" if tag else "predictions") / f"{site}{suffix}"
        options = [*predict_options, *(prior_threshold_options(model) if suffix == "_prior" else [])]
        _run(f"fresh {site} (seed {seed}): predict with the model " +
             (f"of the cross-validation, {what}" if held_out == "cv" else f"that never saw {held_out}"), predict_main,
             ["-i", str(folders[site] / "imagesTr"), "-o", str(pred), "-m", str(model), *options])
        _run(f"fresh {site}: evaluate", evaluate_main, ["-ref", str(folders[site] / "labelsTr"), "-pred", str(pred),
                                                        "-o", str(pred / "evaluation")])
        summary = json.loads((pred / "evaluation" / "summary.json").read_text())
        causes = attribute_false_positives(pred, folders[site] / "labelsTr", folders[site] / "synthetic_truth.json",
                                           site_prefixed=False)
        rows.append({"held_out": f"{site} (seed {seed})" + (f", CV models, {what}" if what else ""),
                     "model_without": held_out, "models": what or "fold models", "options": options,
                     **summary["aggregate"], **causes})
    return rows


def pooled_per_model(rows: list[dict]) -> list[dict]:
    """One pooled row per kind of model (the fold models; the CV models with either threshold choice)."""
    kinds = dict.fromkeys(r["models"] for r in rows)
    return [pooled([r for r in rows if r["models"] == k]) | {"held_out": f"pooled, {k}"} for k in kinds]


def pooled(rows: list[dict]) -> dict:
    tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
    n = sum(r["num_cases"] for r in rows)
    ratio = lambda a, b: a / b if b else float("nan")  # noqa: E731
    return {"held_out": "pooled", "num_cases": n, "tp": tp, "fp": fp, "fn": fn,
            "f1_pooled": ratio(2 * tp, 2 * tp + fp + fn), "sensitivity": ratio(tp, tp + fn),
            "precision": ratio(tp, tp + fp), "fp_per_case": ratio(fp, n),
            "dice_mean": ratio(sum(r["dice_mean"] * r["num_cases_with_cmb"] for r in rows if r["dice_mean"] == r["dice_mean"]),
                               sum(r["num_cases_with_cmb"] for r in rows if r["dice_mean"] == r["dice_mean"]))}


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="working folder (data, models, predictions)")
    p.add_argument("--sites", nargs="+", default=["iso3T", "mid15T", "swi3T"],
                   help="sites of the cohort; each is held out once (see cmbunet_synthetic --help)")
    p.add_argument("--hold-out", nargs="*", default=None,
                   help="hold out only these sites (default: every site; none with --cv: the CV only)")
    p.add_argument("--cv", action="store_true",
                   help="also five-fold cross-validation over every site's subjects (dataset id --dataset-id + "
                        "number of sites), reported per site")
    p.add_argument("--cases-per-site", type=int, default=12)
    p.add_argument("--size", choices=("small", "realistic"), default="realistic")
    p.add_argument("--anatomy", choices=("auto", "phantom", "template"), default="template")
    p.add_argument("--preset", "--config", choices=("auto", "default", "fast"), default="auto",
                   help="planner preset: auto (= default) is the CPU plan a user gets; fast the quick-trial preset")
    p.add_argument("--override", nargs="+", default=[], help="extra plan overrides")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and of training")
    p.add_argument("--predict-option", dest="predict_options", action="append", default=[],
                   help="an extra cmbunet_predict option, repeatable, e.g. --predict-option=--shape-max-elongation=1000 "
                        "(the trained models are reused; use with --tag)")
    p.add_argument("--tag", default="", help="predictions go to WORK/predictions_TAG instead of WORK/predictions")
    p.add_argument("--dataset-id", type=int, default=960, help="first dataset id (one per held-out site)")
    p.add_argument("-np", "--num-processes", type=int, default=2)
    p.add_argument("--modalities", nargs="+", default=["T2S"], choices=("T2S", "T1", "T2"),
                   help="channels of the cohort (default: T2S only, the reference method's input)")
    p.add_argument("--fresh", nargs="+", default=[], metavar="SITE:HELD_OUT",
                   help="after the folds, predict new subjects of SITE with the model of the fold that held out "
                        "HELD_OUT (any site of cmbunet_synthetic, e.g. thick3T:swi3T), or with the --cv models (SITE:cv); "
                        "needs --fresh-seed")
    p.add_argument("--fresh-seed", type=int, default=None, help="data seed of the --fresh subjects (not --seed)")
    p.add_argument("--fresh-cases", type=int, default=None, help="subjects per --fresh site (default --cases-per-site)")
    args = p.parse_args()
    if args.fresh and (args.fresh_seed is None or args.fresh_seed == args.seed):
        p.error("--fresh needs --fresh-seed, different from --seed (new subjects)")
    bad = [f for f in args.fresh if f.count(":") != 1 or f.split(":")[1] not in [*args.sites, "cv"]]
    if bad:
        p.error(f"--fresh takes SITE:HELD_OUT with HELD_OUT among --sites, or SITE:cv; got {' '.join(bad)}")
    if any(f.endswith(":cv") for f in args.fresh) and not args.cv:
        p.error("--fresh SITE:cv needs --cv")
    info = machine_info()
    print_machine(info)
    work = args.work.resolve()
    t0 = time.perf_counter()
    folders = generate_sites(work, args.sites, args.cases_per_site, args.seed, args.size, args.anatomy,
                             tuple(args.modalities))
    preset = "auto" if args.preset == "default" else args.preset
    rows = []
    for k, site in enumerate(args.sites):
        if args.hold_out is not None and site not in args.hold_out:
            continue
        rows.append(run_fold(work, args.dataset_id + k, site, folders, preset, args.override, args.seed,
                             args.num_processes, args.predict_options, args.tag))
    columns = ["held_out", "num_cases", "tp", "fp", "fn", "f1_pooled", "sensitivity", "precision", "fp_per_case",
               "dice_mean"]
    cv = run_cross_validation(work, args.dataset_id + len(args.sites), folders, preset, args.override, args.seed,
                              args.num_processes) if args.cv else None
    ids = {site: args.dataset_id + k for k, site in enumerate(args.sites)} | {"cv": args.dataset_id + len(args.sites)}
    fresh = score_fresh_subjects(work, ids, args.fresh,
                                args.fresh_cases or args.cases_per_site, args.fresh_seed, args.size, args.anatomy,
                                args.predict_options, args.tag) if args.fresh else []
    if fresh:
        print("\n# new subjects, models of the folds above")
        print_table(fresh + pooled_per_model(fresh), columns)
    if cv:
        print("\n# five-fold cross-validation over every site's subjects, per site")
        print_table(cv["sites"] + [cv["pooled"]], columns)
    table = rows + ([pooled(rows)] if len(rows) > 1 else [])
    print(f"\n# leave-one-site-out, {args.cases_per_site} {args.size} subjects per site, preset {preset}, "
          f"data seed {args.seed}")
    print_table(table, columns)
    write_json(args.out, {"machine": info, "loadavg_end": loadavg(), "args": {k: str(v) for k, v in vars(args).items()},
                          "preset": preset, "overrides": args.override, "folds": rows, "pooled": pooled(rows) if rows else None,
                          "fresh": fresh, "fresh_pooled": pooled_per_model(fresh), "cross_validation": cv,
                          "seconds": time.perf_counter() - t0})


if __name__ == "__main__":
    main()
