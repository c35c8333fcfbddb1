"""cmbunet against nnU-Net v2 (3d_fullres) on the same synthetic T2* dataset, on the CPU.

(a) prediction seconds per case: nnU-Net with and without test-time mirroring, cmbunet (FCN screening ->
    discrimination -> segmentation);
(b) detection F1, sensitivity, FP per case and Dice from ``cmbunet_evaluate`` when both are trained on the same
    cases with the same wall-clock budget.

nnU-Net is installed into its own virtualenv ``benchmarks/.nnunet_venv``: ``torch==2.13.0`` first (the CPU build),
then ``nnunetv2`` with a constraints file holding ``torch==2.13.0`` so that pip cannot replace that build.
nnU-Net trains with ``nnUNetTrainerCMBBench``, a subclass of ``nnUNetTrainer`` written by this script into the
installed package (``nnunetv2/training/nnUNetTrainer/nnUNetTrainerCMBBench.py``): the default 3d_fullres plans, loss and augmentation, but it stops after the first epoch that
ends past the budget (``--budget-min``) and saves ``checkpoint_final.pth`` (``--iters-per-epoch`` iterations per
epoch, 2 validation iterations). cmbunet trains all three stages with its ``auto`` plans and the CPU schedule's
epochs scaled to the same budget (``--override training.cpu.<stage>.epochs=...``, from the measured length of the
default schedule in ``training_throughput.py``: about 100 minutes for full-width networks on 2 cores). Both use
fold ``all`` (every training case), and both are evaluated on the test cases with ``cmbunet_evaluate``.

Phases (each resumable; ``all`` runs them in order; each skips what is already done):

    setup       virtualenv + nnunetv2
    data        synthetic dataset (raw nnU-Net v2 layout, shared by both tools), ``--cases`` + ``--test-cases``
    preprocess  nnUNetv2_plan_and_preprocess -c 3d_fullres; cmbunet_plan_and_preprocess
    train       both trainings (``--budget-min`` each)
    predict     timed prediction of the test cases (nnU-Net with/without mirroring, cmbunet)
    evaluate    cmbunet_evaluate on every prediction folder; table

    python benchmarks/vs_nnunet.py --phase all --budget-min 20 --out benchmarks/results/vs_nnunet.json
    python benchmarks/vs_nnunet.py --quick          # setup + data + preprocess + 1-minute trainings, predict 1 case

Per-case speed at realistic size, with a cmbunet model trained elsewhere (``--cmbunet-model``, e.g. a fold of
``leave_one_site_out.py``) and that fold's raw dataset (``--dataset-from``: nnU-Net plans and trains on the same
``imagesTr``, both predict the first ``--max-test-cases`` of its ``imagesTs``). nnU-Net's prediction time depends on
its plans (network, patch, resampling), not on its weights, so ``--budget-min 0 --iters-per-epoch 2`` (one short
epoch) is enough for timing; its detection scores then mean nothing:

    python benchmarks/vs_nnunet.py --work /tmp/vs_nnunet_realistic --phase setup data preprocess train predict \
        --dataset-from LOSO/raw/Dataset961_LOSOmid15T --cmbunet-model LOSO/results/Dataset961_LOSOmid15T/cmbunet \
        --budget-min 0 --iters-per-epoch 2 --max-test-cases 3 --no-mirroring-run --out result.json
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

HERE = Path(__file__).resolve().parent
VENV = HERE / ".nnunet_venv"
WORK = HERE / ".nnunet_work"
DATASET_ID = 501
DATASET = f"Dataset{DATASET_ID:03d}_CMBBench"
TRAINER = "nnUNetTrainerCMBBench"
#: length of cmbunet's default CPU schedule for full-width networks on this machine (training_throughput.py, and
#: documentation/training.md: about 1 h 40 min), used to scale its epochs to the budget.
CMBUNET_DEFAULT_SCHEDULE_MIN = 100.0
CMBUNET_DEFAULT_EPOCHS = {"screening": 20, "discrimination": 15, "segmentation": 10}

TRAINER_CODE = '''
import time
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerCMBBench(nnUNetTrainer):
    """nnUNetTrainer that stops after the first epoch ending past a wall-clock budget (cmbunet benchmark)."""

    BUDGET_S = float(__import__("os").environ.get("CMBBENCH_BUDGET_S", "1200"))
    ITERS = int(__import__("os").environ.get("CMBBENCH_ITERS", "25"))

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        # same signature as nnUNetTrainer: it saves its init arguments by inspecting the signature
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_iterations_per_epoch = self.ITERS
        self.num_val_iterations_per_epoch = 2
        self.num_epochs = 1000

    def run_training(self):
        start = time.time()
        self.on_train_start()
        for epoch in range(self.current_epoch, self.num_epochs):
            self.on_epoch_start()
            self.on_train_epoch_start()
            outs = [self.train_step(next(self.dataloader_train)) for _ in range(self.num_iterations_per_epoch)]
            self.on_train_epoch_end(outs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                vals = [self.validation_step(next(self.dataloader_val)) for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(vals)
            self.on_epoch_end()
            if time.time() - start > self.BUDGET_S:
                self.print_to_log_file(f"CMBBench: wall-clock budget reached after {epoch + 1} epochs")
                break
        self.on_train_end()
'''

DRIVER_CODE = '''
import sys, time, json, torch
from nnunetv2.run.run_training import get_trainer_from_args
torch.set_num_threads(int(sys.argv[3]))
t = time.time()
trainer = get_trainer_from_args(sys.argv[1], "3d_fullres", "all", sys.argv[2], "nnUNetPlans", device=torch.device("cpu"))
trainer.run_training()
print("RESULT " + json.dumps({"seconds": time.time() - t, "epochs": trainer.current_epoch}))
'''


def sh(cmd: list[str], env: dict | None = None, timeout: float | None = None, log: Path | None = None) -> float:
    """Run a command, return its wall time; raise with the output tail on failure."""
    t = time.perf_counter()
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)
    if log:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(proc.stdout + "\n" + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t


def env_paths() -> dict[str, str]:
    return {"nnUNet_raw": str(WORK / "raw"), "nnUNet_preprocessed": str(WORK / "nnunet_preprocessed"),
            "nnUNet_results": str(WORK / "nnunet_results"), "CMBUNET_RAW": str(WORK / "raw"),
            "CMBUNET_PREPROCESSED": str(WORK / "cmbunet_preprocessed"), "CMBUNET_RESULTS": str(WORK / "cmbunet_results"),
            "nnUNet_n_proc_DA": "1", "nnUNet_compile": "false", "OMP_NUM_THREADS": "2"}


def vbin(name: str) -> str:
    return str(VENV / "bin" / name)


def cbin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


# ------------------------------------------------------------------------------------------------ phases
def phase_setup(a) -> dict:
    if (VENV / "bin" / "nnUNetv2_predict").exists():
        print("# setup: nnU-Net venv exists")
    else:
        py = shutil.which("python3.11") or sys.executable
        sh([py, "-m", "venv", str(VENV)])
        sh([vbin("python"), "-m", "pip", "install", "-q", "torch==2.13.0"], timeout=1800)
        cons = VENV / "constraints.txt"
        cons.write_text("torch==2.13.0\n")
        sh([vbin("python"), "-m", "pip", "install", "-q", "-c", str(cons), "nnunetv2"], timeout=3000)
    out = subprocess.run([vbin("python"), "-c", "import torch, nnunetv2, importlib.metadata as m, os;"
                          "print(torch.__version__, m.version('nnunetv2'), os.path.dirname(nnunetv2.__file__))"],
                         capture_output=True, text=True, check=True).stdout.split()
    tv, nv, pkg = out
    # nnU-Net finds trainers by importing every module under training/nnUNetTrainer, top-level modules first:
    # a top-level file is found before the subpackages, some of which import timm/torchvision, whose PyPI build
    # does not load against the CPU build of torch ("operator torchvision::nms does not exist").
    (Path(pkg) / "training" / "nnUNetTrainer" / f"{TRAINER}.py").write_text(TRAINER_CODE)
    (WORK / "train_nnunet.py").parent.mkdir(parents=True, exist_ok=True)
    (WORK / "train_nnunet.py").write_text(DRIVER_CODE)
    print(f"# nnU-Net venv: torch {tv}, nnunetv2 {nv}")
    if not tv.endswith("+cpu"):
        print("# WARNING: the nnU-Net venv's torch is not the CPU build")
    return {"nnunet_torch": tv, "nnunetv2": nv}


def link_dataset(source: Path, ds: Path) -> dict:
    """``ds`` (nnU-Net's raw layout) as links to the image and label folders of the raw dataset ``source``."""
    src = json.loads((source / "dataset.json").read_text())
    ds.mkdir(parents=True, exist_ok=True)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        if (source / sub).is_dir() and not (ds / sub).exists():
            (ds / sub).symlink_to((source / sub).resolve(), target_is_directory=True)
    (ds / "dataset.json").write_text(json.dumps({
        "channel_names": src["channel_names"], "labels": src.get("labels", {"background": 0, "CMB": 1}),
        "numTraining": len(list((source / "labelsTr").glob("*.nii.gz"))), "file_ending": ".nii.gz",
        "name": DATASET, "description": f"links to {source}"}, indent=2))
    return {"dataset": str(ds), "dataset_from": str(source), "cases": json.loads((ds / "dataset.json").read_text())["numTraining"],
            "test_cases": len(list((source / "imagesTs").glob("*_0000.nii.gz"))), "size": "from " + source.name}


def phase_data(a) -> dict:
    ds = WORK / "raw" / DATASET
    if (ds / "dataset.json").exists():
        print("# data: exists")
    elif a.dataset_from:
        return link_dataset(a.dataset_from, ds)
    else:
        sh([cbin("cmbunet_synthetic"), "-o", str(ds), "--cases", str(a.cases), "--test-cases", str(a.test_cases),
            "--size", a.size, "--seed", "7"], timeout=1800)
    return {"dataset": str(ds), "cases": a.cases, "test_cases": a.test_cases, "size": a.size}


def phase_preprocess(a) -> dict:
    e, r = env_paths(), {}
    if not (WORK / "nnunet_preprocessed" / DATASET / "nnUNetPlans.json").exists():
        r["nnunet_preprocess_s"] = sh([vbin("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres",
                                       "-np", "2", "--verify_dataset_integrity"], env=e, timeout=3000,
                                      log=WORK / "logs" / "nnunet_preprocess.txt")
    if not a.cmbunet_model and not (WORK / "cmbunet_preprocessed" / DATASET / "plans.json").exists() and \
            not any((WORK / "cmbunet_preprocessed").glob(f"{DATASET}*/**/plans.json")):
        r["cmbunet_preprocess_s"] = sh([cbin("cmbunet_plan_and_preprocess"), "-d", str(DATASET_ID),
                                        "--verify_dataset_integrity", "-np", "2"], env=e, timeout=3000,
                                       log=WORK / "logs" / "cmbunet_preprocess.txt")
    return r


def train_cmbunet_demo_config(e: dict) -> dict:
    """cmbunet with the demo's configuration (preset fast: quarter-width networks, ~10 min schedule): re-plan and
    re-preprocess (the widths are part of the plans hash), then train; returns its preset and training seconds."""
    shutil.rmtree(WORK / "cmbunet_preprocessed" / DATASET, ignore_errors=True)
    sh([cbin("cmbunet_plan_and_preprocess"), "-d", str(DATASET_ID), "-np", "2", "--preset", "fast"], env=e,
       timeout=3000, log=WORK / "logs" / "cmbunet_replan.txt")
    secs = sh([cbin("cmbunet_train"), str(DATASET_ID), "all", "-device", "cpu", "--no-validation"], env=e,
              log=WORK / "logs" / "cmbunet_train.txt")
    return {"cmbunet_preset": "fast", "cmbunet_train_s": secs}


def phase_train(a) -> dict:
    e, r = env_paths(), {}
    budget_s = a.budget_min * 60
    model = WORK / "cmbunet_results" / DATASET / "cmbunet"
    if a.cmbunet_config == "demo":
        # cmbunet trains first; nnU-Net then gets the wall time cmbunet took
        state_file = WORK / "state.json"
        previous = json.loads(state_file.read_text()).get("train", {}) if state_file.exists() else {}
        if not (model / "fold_all" / "segmentation" / "checkpoint_final.pth").exists():
            r.update(train_cmbunet_demo_config(e))
        else:
            r.update({k: previous[k] for k in ("cmbunet_preset", "cmbunet_overrides", "cmbunet_train_s") if k in previous})
        budget_s = float(r.get("cmbunet_train_s", budget_s))
    nn_final = WORK / "nnunet_results" / DATASET / f"{TRAINER}__nnUNetPlans__3d_fullres" / "fold_all" / "checkpoint_final.pth"
    if not nn_final.exists():
        t = time.perf_counter()
        proc = subprocess.run([vbin("python"), str(WORK / "train_nnunet.py"), str(DATASET_ID), TRAINER, "2"],
                              env={**os.environ, **e, "CMBBENCH_BUDGET_S": str(budget_s),
                                   "CMBBENCH_ITERS": str(a.iters_per_epoch)},
                              capture_output=True, text=True)
        (WORK / "logs").mkdir(parents=True, exist_ok=True)
        (WORK / "logs" / "nnunet_train.txt").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise RuntimeError(f"nnU-Net training failed:\n{proc.stderr[-3000:]}")
        r["nnunet_train_s"] = time.perf_counter() - t
        r.update(next((json.loads(l[7:]) for l in proc.stdout.splitlines() if l.startswith("RESULT ")), {}))
    if not a.cmbunet_model and not (model / "fold_all" / "segmentation" / "checkpoint_final.pth").exists():
        over = cmbunet_budget_overrides(a.budget_min)
        sh([cbin("cmbunet_plan_and_preprocess"), "-d", str(DATASET_ID), "--no-preprocess", "--override", *over], env=e,
           timeout=600, log=WORK / "logs" / "cmbunet_replan.txt")
        r["cmbunet_overrides"] = over
        r["cmbunet_train_s"] = sh([cbin("cmbunet_train"), str(DATASET_ID), "all", "-device", "cpu", "--no-validation"],
                                  env=e, log=WORK / "logs" / "cmbunet_train.txt")
    r["budget_min"] = budget_s / 60
    return r


def cmbunet_budget_overrides(budget_min: float) -> list[str]:
    """Scale cmbunet's default CPU schedule (about CMBUNET_DEFAULT_SCHEDULE_MIN minutes) to ``budget_min``: the
    samples of every stage shrink by the same factor (fewer epochs first, then fewer samples per epoch)."""
    from cmbunet.plans.planner import cpu_schedules

    f = min(1.0, budget_min / CMBUNET_DEFAULT_SCHEDULE_MIN)
    over = []
    for stage, sch in cpu_schedules().items():
        total = sch["epochs"] * sch["samples_per_epoch"] * f
        epochs = max(1, round(sch["epochs"] * f))
        samples = max(sch["batch_size"], round(total / epochs))
        over += [f"training.cpu.{stage}.epochs={epochs}", f"training.cpu.{stage}.samples_per_epoch={samples}",
                 f"training.cpu.{stage}.val_samples={max(16, round(sch['val_samples'] * f))}"]
        if stage == "screening":
            mining = sorted({m for m in (max(1, round(e * f)) for e in sch["mining_epochs"]) if m < epochs})
            over.append(f"training.cpu.screening.mining_epochs={json.dumps(mining)}")
    return over


def test_subset(ds: Path, n: int) -> tuple[Path, Path, int]:
    """The first ``n`` test cases (images and labels) as a folder of links; all of them when ``n`` is 0."""
    cases = sorted(p.name[: -len(".nii.gz")] for p in (ds / "labelsTs").glob("*.nii.gz"))
    if not n or n >= len(cases):
        return ds / "imagesTs", ds / "labelsTs", len(cases)
    img, lab = WORK / f"imagesTs_first{n}", WORK / f"labelsTs_first{n}"
    if {p.name for p in lab.glob("*.nii.gz")} == {f"{c}.nii.gz" for c in cases[:n]}:
        return img, lab, n  # made by an earlier phase (predict, then evaluate)
    for folder in (img, lab):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    for case in cases[:n]:
        (lab / f"{case}.nii.gz").symlink_to((ds / "labelsTs" / f"{case}.nii.gz").resolve())
        for f in (ds / "imagesTs").glob(f"{case}_[0-9][0-9][0-9][0-9].nii.gz"):
            (img / f.name).symlink_to(f.resolve())
    return img, lab, n


def phase_predict(a) -> dict:
    e, r = env_paths(), {}
    inp, _, n = test_subset(WORK / "raw" / DATASET, 1 if a.quick else a.max_test_cases)
    model = ["-m", str(a.cmbunet_model)] if a.cmbunet_model else ["-d", str(DATASET_ID)]
    nnunet = [vbin("nnUNetv2_predict"), "-i", str(inp), "-d", str(DATASET_ID), "-c", "3d_fullres", "-f", "all", "-tr",
              TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1"]
    cmbunet = [cbin("cmbunet_predict"), "-i", str(inp), *model, "-f", "all", "-device", "cpu", "--overwrite",
               *a.cmbunet_predict_options]
    runs = {
        "nnU-Net 3d_fullres, mirroring": [*nnunet, "-o", str(WORK / "pred_nnunet_tta")],
        "nnU-Net 3d_fullres, no mirroring": [*nnunet, "-o", str(WORK / "pred_nnunet"), "--disable_tta"],
        "cmbunet": [*cmbunet, "-o", str(WORK / "pred_cmbunet")],
        "cmbunet fp32, no skipping": [*cmbunet, "-o", str(WORK / "pred_cmbunet_fp32"), "--precision", "fp32",
                                      "--no-skip-empty"],
    }
    if a.no_mirroring_run:
        del runs["nnU-Net 3d_fullres, mirroring"]
    for name, cmd in runs.items():
        out_dir = Path(cmd[cmd.index("-o") + 1])
        shutil.rmtree(out_dir, ignore_errors=True)
        load = C.loadavg()
        secs = sh(cmd, env=e, log=WORK / "logs" / f"predict_{out_dir.name}.txt")
        r[name] = {"seconds_total": secs, "cases": n, "seconds_per_case": secs / n, "load_start": load,
                   "load_end": C.loadavg(), "pred_dir": str(out_dir)}
        print(f"# {name}: {secs / n:.1f} s per case ({n} cases, command wall time incl. model loading), load {load}")
    return r


def phase_evaluate(a, predict: dict) -> dict:
    _, ref, _ = test_subset(WORK / "raw" / DATASET, 1 if a.quick else a.max_test_cases)
    r = {}
    for name, info in predict.items():
        if not isinstance(info, dict) or "pred_dir" not in info:
            continue
        out = Path(info["pred_dir"] + "_eval")
        sh([cbin("cmbunet_evaluate"), "-ref", str(ref), "-pred", info["pred_dir"], "-o", str(out)],
           log=WORK / "logs" / f"eval_{out.name}.txt")
        s = json.loads((out / "summary.json").read_text())
        agg = s.get("aggregate", s)
        r[name] = {k: agg.get(k) for k in ("f1_mean", "f1_pooled", "sensitivity", "fp_per_case", "dice_mean",
                                           "num_cases", "num_missing_predictions")}
    return r


def per_case_ratios(predict: dict) -> list[dict]:
    """Per test case: cmbunet's own seconds (``summary.csv``: read to write) and the ratio to nnU-Net without
    mirroring, whose per-case time is its command's wall time over its cases (nnU-Net reports no per-case times)."""
    nn = predict.get("nnU-Net 3d_fullres, no mirroring")
    cm = predict.get("cmbunet")
    if not nn or not cm or not (Path(cm["pred_dir"]) / "summary.csv").is_file():
        return []
    import pandas as pd

    summary = pd.read_csv(Path(cm["pred_dir"]) / "summary.csv")
    nn_s = float(nn["seconds_per_case"])
    return [{"case": r["case"], "cmbunet s": float(r["seconds_total"]), "nnU-Net s (mean)": nn_s,
             "nnU-Net / cmbunet": nn_s / float(r["seconds_total"])}
            for _, r in summary.iterrows() if r["status"] == "ok"]


def main() -> None:
    global WORK
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--phase", nargs="+", default=["all"],
                   choices=["all", "setup", "data", "preprocess", "train", "predict", "evaluate"])
    p.add_argument("--cases", type=int, default=20)
    p.add_argument("--test-cases", type=int, default=5)
    p.add_argument("--size", choices=["small", "realistic"], default="small")
    p.add_argument("--budget-min", type=float, default=20.0, help="training wall-clock budget of each tool (minutes)")
    p.add_argument("--iters-per-epoch", type=int, default=25, help="nnU-Net iterations per (short) epoch")
    p.add_argument("--cmbunet-config", choices=["scaled", "demo"], default="scaled",
                   help="scaled: full-width cmbunet with its CPU schedule scaled to --budget-min; demo: cmbunet_demo's "
                        "quarter-width networks and schedule, trained first, and nnU-Net gets the same wall time")
    p.add_argument("--work", type=Path, default=WORK, help=f"working folder (default {WORK})")
    p.add_argument("--dataset-from", type=Path, default=None,
                   help="use this raw dataset (imagesTr/labelsTr/imagesTs/labelsTs, e.g. a leave_one_site_out.py fold) "
                        "instead of generating one")
    p.add_argument("--cmbunet-model", type=Path, default=None,
                   help="a trained cmbunet model folder (with fold_all) to predict with; cmbunet is then not trained")
    p.add_argument("--cmbunet-predict-option", dest="cmbunet_predict_options", action="append", default=[],
                   help="an extra cmbunet_predict option, repeatable (e.g. --cmbunet-predict-option=--components-need-candidate=yes)")
    p.add_argument("--max-test-cases", type=int, default=0, help="predict only the first N test cases (0: all)")
    p.add_argument("--no-mirroring-run", action="store_true",
                   help="leave out the nnU-Net run with test-time mirroring (about 8 times the time of the run without)")
    a = p.parse_args()
    WORK = a.work.resolve()
    if a.quick:
        a.cases, a.test_cases, a.budget_min, a.iters_per_epoch = min(a.cases, 6), min(a.test_cases, 2), 1.0, 2
    info = C.machine_info()
    C.print_machine(info)
    phases = ["setup", "data", "preprocess", "train", "predict", "evaluate"] if "all" in a.phase else a.phase
    state_file = WORK / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    for ph in phases:
        t = time.perf_counter()
        if ph == "evaluate":
            state["evaluate"] = phase_evaluate(a, state.get("predict", {}))
        else:
            state[ph] = {**state.get(ph, {}), **globals()[f"phase_{ph}"](a)}
        state.setdefault("phase_seconds", {})[ph] = time.perf_counter() - t
        WORK.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps(state, indent=2))
    rows = []
    for name, pr in state.get("predict", {}).items():
        ev = state.get("evaluate", {}).get(name, {})
        rows.append({"method": name, "s per case": pr["seconds_per_case"], "cases": pr["cases"],
                     "F1 (mean)": ev.get("f1_mean", float("nan")), "sensitivity": ev.get("sensitivity", float("nan")),
                     "FP/case": ev.get("fp_per_case", float("nan")), "Dice (mean)": ev.get("dice_mean", float("nan")),
                     "load": pr["load_start"]})
    per_case = per_case_ratios(state.get("predict", {}))
    if rows:
        C.print_table(rows)
    if per_case:
        print("\nper-case prediction time, nnU-Net 3d_fullres without mirroring / cmbunet (defaults), from summary.csv "
              "and nnU-Net's command time divided by its cases:")
        C.print_table(per_case)
    print(f"# training: {json.dumps(state.get('train', {}))}")
    C.write_json(a.out, {"script": "vs_nnunet", "machine": info, "argv": sys.argv, "state": state, "rows": rows,
                         "per_case": per_case})


if __name__ == "__main__":
    main()
