"""``cmbunet_demo``: the whole pipeline end to end on built-in synthetic data, as a user would run it.

synthesize a VALDO-style training and test set -> convert to a raw dataset -> plan and preprocess ->
train fold ``all`` (three stages) -> predict the test set -> evaluate -> visual report.

Every step is one of cmbunet's own commands, called with the arguments printed before it runs, so the demo
doubles as a worked example. Re-running the demo reuses what is finished (all steps are idempotent).
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path
from typing import Callable

from cmbunet.errors import CMBUNetError
from cmbunet.model_folder import ModelFolder
from cmbunet.plans.planner import PRESETS
from cmbunet.utilities.cli import add_device_option, command_parser, run_cli

DEMO_DATASET_ID = 990
DEMO_DATASET_NAME = "SyntheticDemo"


def _step(title: str, command: str, main: Callable[[list[str]], int], argv: list[str]) -> float:
    """Run one cmbunet command in-process, print it first, fail loudly if it fails."""
    print(f"\n=== {title}\n$ {command} {shlex.join(argv)}", flush=True)
    start = time.perf_counter()
    code = main(argv)
    if code != 0:
        raise CMBUNetError(f"demo step '{title}' failed (exit code {code}); see the messages above")
    elapsed = time.perf_counter() - start
    print(f"--- {title}: done in {elapsed:.0f} s", flush=True)
    return elapsed


def build_parser() -> argparse.ArgumentParser:
    p = command_parser("cmbunet_demo", __doc__.splitlines()[0].replace("``", ""))
    p.add_argument("-o", "--output", type=Path, default=Path("cmbunet_demo_output"), help="folder for everything the demo writes")
    p.add_argument("--cases", type=int, default=60, help="synthetic training cases (default 60)")
    p.add_argument("--test-cases", type=int, default=16, help="synthetic test cases (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and of training")
    p.add_argument("--preset", choices=PRESETS, default="fast",
                   help="planner preset (default: %(default)s, quarter-width networks and a short CPU schedule: "
                        "557 s of training measured on two cores; auto: the self-configured plan with full-size networks)")
    p.add_argument("--override", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="plan overrides passed to cmbunet_plan_and_preprocess")
    p.add_argument("--full-size-networks", action="store_true",
                   help="same as --preset auto: full-size networks and the CPU budget schedule (23-30 minutes for 24 "
                        "realistic subjects on two cores; not measured on the demo's data)")
    add_device_option(p, "where training and prediction run")
    p.add_argument("--no-report", action="store_true", help="skip the visual report")
    return p


@run_cli
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # the commands load torch, the networks and matplotlib: only when the demo runs, not for --help
    from cmbunet.dataset.convert_valdo import main as convert_main
    from cmbunet.evaluation.cli import main as evaluate_main
    from cmbunet.inference.cli import main as predict_main
    from cmbunet.plan_and_preprocess import main as plan_main
    from cmbunet.synthetic.cli import main as synthetic_main
    from cmbunet.training.cli import main as train_main

    out = args.output.resolve()
    valdo_train, valdo_test = out / "valdo", out / "valdo_test"
    raw, pre, res = out / "raw", out / "preprocessed", out / "results"
    predictions = out / "predictions"
    evaluation = predictions / "evaluation"
    dataset = f"Dataset{DEMO_DATASET_ID:03d}_{DEMO_DATASET_NAME}"
    times: dict[str, float] = {}
    t0 = time.perf_counter()

    times["synthesize"] = _step("1/7 synthesize a VALDO-style training and test set", "cmbunet_synthetic", synthetic_main, [
        "-o", str(valdo_train), "--cases", str(args.cases), "--test-cases", str(args.test_cases),
        "--layout", "valdo", "--seed", str(args.seed), "--size", "small"])
    times["convert"] = _step("2/7 convert the VALDO tree to a raw dataset", "cmbunet_convert_valdo", convert_main, [
        "-i", str(valdo_train), "-d", str(DEMO_DATASET_ID), "-n", DEMO_DATASET_NAME, "--raw-root", str(raw)])
    plan_argv = ["-d", str(DEMO_DATASET_ID), "--raw-root", str(raw), "--preprocessed-root", str(pre),
                 "--verify_dataset_integrity", "--preset", "auto" if args.full_size_networks else args.preset, "-np", "2"]
    if args.override:
        plan_argv += ["--override", *args.override]
    times["plan_and_preprocess"] = _step("3/7 fingerprint, plan and preprocess", "cmbunet_plan_and_preprocess", plan_main, plan_argv)

    model = ModelFolder.of_dataset(dataset, res)
    model_dir, fold_dir = model.path, model.fold_dir("all")
    done = "all" in model.complete_folds()
    train_argv = [dataset, "all", "--preprocessed-root", str(pre), "--results-root", str(res),
                  "--seed", str(args.seed), "-device", args.device]
    if not done and model.is_trained("all", "screening", "latest"):
        train_argv.append("--c")
    if done:
        print(f"\n=== 4/7 train: already trained in {fold_dir}, skipping")
        times["train"] = 0.0
    else:
        times["train"] = _step("4/7 train screening, discrimination and segmentation (fold all)", "cmbunet_train", train_main, train_argv)

    times["predict"] = _step("5/7 predict the test set", "cmbunet_predict", predict_main, [
        "-i", str(valdo_test), "-o", str(predictions), "-m", str(model_dir), "-f", "all", "-device", args.device])
    times["evaluate"] = _step("6/7 evaluate with the official VALDO metrics", "cmbunet_evaluate", evaluate_main, [
        "-ref", str(valdo_test), "-pred", str(predictions), "-o", str(evaluation)])
    report_dir = out / "report"
    if not args.no_report:
        from cmbunet.report.cli import main as report_main  # matplotlib: only when the report is written

        extras = sorted(str(p) for p in fold_dir.glob("*/progress.png"))
        report_argv = ["-i", str(predictions), "-img", str(valdo_test), "-ref", str(valdo_test), "-o", str(report_dir)]
        if extras:
            report_argv += ["--extra-images", *extras]
        times["report"] = _step("7/7 visual report", "cmbunet_report", report_main, report_argv)

    summary = json.loads((evaluation / "summary.json").read_text())
    agg = summary["aggregate"]
    total = time.perf_counter() - t0
    print("\n=== cmbunet demo finished in %.0f s (%s)" % (total, ", ".join(f"{k} {v:.0f} s" for k, v in times.items())))
    print(f"  synthetic data      {valdo_train}  (test set: {valdo_test})")
    print(f"  raw dataset         {raw / dataset}")
    print(f"  plans               {pre / dataset / 'plans.json'}")
    print(f"  trained model       {model_dir}")
    print(f"  predictions         {predictions}")
    print(f"  evaluation          {evaluation / 'summary.json'}")
    if not args.no_report:
        print(f"  report              {report_dir / 'index.html'}")
    keys = [k for k in ("f1_pooled", "sensitivity", "precision", "fp_per_case", "dice_mean", "f1_mean") if k in agg]
    print("  test-set metrics:   " + ", ".join(f"{k} {agg[k]:.3f}" if isinstance(agg[k], (int, float)) else f"{k} {agg[k]}" for k in keys))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
