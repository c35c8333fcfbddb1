"""Held-out sites and a held-out anatomy, two training seeds: the figure that says whether a change generalises.

Trains the default plan with cmbunet's own commands on subjects of some sites of the synthetic generator's wider
world (MNI152 anatomy), once per training seed, then predicts subjects of test groups that differ from training
in the site (a 3 mm-slice site, an SWI-like site no subject came from) or in the anatomy (the parametric phantom
brain, which no training subject had), and scores them with the VALDO rule at 5 mm. Each group is predicted once
per ``--variant`` (a name and extra ``cmbunet_predict`` options, e.g. a rule turned off), with the same models.

Per group and pooled: F1, sensitivity, FP per subject, Dice; false positives by the mimic that caused them
(calcifications by place, veins by kind) and microbleeds found/missed by radius bin. Every row names the
generator settings of its data (site, anatomy, data seed). Steps whose outputs exist are skipped, so an
interrupted run continues.

    python benchmarks/held_out_world.py --work /tmp/how --train-seeds 0 1 \\
        --variant default= --variant "no_curvature=--shape-min-blob-ratio -1000" --out results.json
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import base_parser, machine_info, print_machine, print_table, write_json  # noqa: E402
from leave_one_site_out import _run, attribute_false_positives, build_dataset, plan_dataset, pooled, train_fold  # noqa: E402

#: Test groups: name -> (site, anatomy). thick3T and coarse3T are sites no training subject came from (3 mm
#: slices); the phantom groups also hold out the anatomy.
TEST_GROUPS = {
    "thick3T": ("thick3T", "template"),
    "coarse3T-phantom": ("coarse3T", "phantom"),
    "swi3T-phantom": ("swi3T", "phantom"),
}
#: Radius bins (mm) for sensitivity: the small bleeds thick slices hide, typical ones, large ones.
RADIUS_BINS = ((0.0, 1.2), (1.2, 2.0), (2.0, 9.9))


def generate(folder: Path, n: int, seed: int, site: str, anatomy: str) -> Path:
    from cmbunet.synthetic import write_dataset

    if not (folder / "synthetic_truth.json").is_file():
        write_dataset(folder, n, layout="raw", seed=seed, size="realistic", anatomy=anatomy, sites=[site],
                      dataset_name=folder.name)
    return folder


def radius_bins(found: list[float], missed: list[float]) -> dict[str, str]:
    """``found/total`` per radius bin."""
    out = {}
    for lo, hi in RADIUS_BINS:
        f = sum(lo <= r < hi for r in found)
        m = sum(lo <= r < hi for r in missed)
        out[f"r {lo:g}-{hi:g} mm"] = f"{f}/{f + m}"
    return out


def found_radii(pred: Path, ref: Path, truth: Path) -> tuple[list[float], list[float]]:
    """Radii (mm) of the found and the missed microbleeds of a group."""
    causes = attribute_false_positives(pred, ref, truth, site_prefixed=False)
    missed = list(causes["missed_cmb_radius_mm"])
    entries = json.loads(truth.read_text())["cases"]
    every = sorted(round(c["radius_mm"], 2) for e in entries.values() for c in e["cmbs"])
    found = list(every)
    for r in missed:
        found.remove(r)
    return found, missed


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--train-sites", nargs="+", default=["iso3T", "mid15T", "thin15T"])
    p.add_argument("--cases-per-site", type=int, default=8)
    p.add_argument("--test-cases", type=int, default=6, help="subjects per test group")
    p.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--data-seed", type=int, default=0, help="seed of the training subjects (test subjects: +100)")
    p.add_argument("--preset", default="auto")
    p.add_argument("--override", nargs="+", default=[])
    p.add_argument("--variant", action="append", default=[],
                   help="NAME=OPTIONS: predict every group also with these cmbunet_predict options (repeatable)")
    p.add_argument("--dataset-id", type=int, default=990)
    p.add_argument("--train-only", action="store_true", help="generate, plan and train, then stop")
    p.add_argument("-np", "--num-processes", type=int, default=2)
    args = p.parse_args()
    info = machine_info()
    print_machine(info)
    from cmbunet.evaluation.cli import main as evaluate_main
    from cmbunet.inference.cli import main as predict_main

    work = args.work
    raw, pre = work / "raw", work / "preprocessed"
    folders = {s: generate(work / "sites" / s, args.cases_per_site, args.data_seed * 1000 + sum(map(ord, s)), s,
                           "template") for s in args.train_sites}
    tests = {g: generate(work / "tests" / g, args.test_cases, (args.data_seed + 100) * 1000 + sum(map(ord, g)), site,
                         anatomy) for g, (site, anatomy) in TEST_GROUPS.items()}
    name = build_dataset(raw, f"Dataset{args.dataset_id:03d}_WideWorld", folders)
    seconds = plan_dataset(pre, raw, name, args.preset, args.override, args.num_processes)
    variants = dict(v.split("=", 1) for v in (args.variant or ["default="]))
    for train_seed in args.train_seeds:  # one preprocessed dataset, one results root per training seed
        seconds |= {f"{k}_seed{train_seed}": v for k, v in train_fold(
            pre, work / f"results_seed{train_seed}", raw, name, "all", train_seed, f"train (seed {train_seed})").items()}
    if args.train_only:
        return
    rows = []
    for train_seed in args.train_seeds:
        model = work / f"results_seed{train_seed}" / name / "cmbunet"
        for variant, options in variants.items():
            for group, folder in tests.items():
                pred = work / "predictions" / f"seed{train_seed}" / variant / group
                if not (pred / "evaluation" / "summary.json").is_file():
                    _run(f"{group}: predict (seed {train_seed}, {variant})", predict_main,
                         ["-i", str(folder / "imagesTr"), "-o", str(pred), "-m", str(model), "-f", "all",
                          *shlex.split(options)])
                    _run(f"{group}: evaluate", evaluate_main, ["-ref", str(folder / "labelsTr"), "-pred", str(pred),
                                                               "-o", str(pred / "evaluation")])
                summary = json.loads((pred / "evaluation" / "summary.json").read_text())
                causes = attribute_false_positives(pred, folder / "labelsTr", folder / "synthetic_truth.json",
                                                   site_prefixed=False)
                found, missed = found_radii(pred, folder / "labelsTr", folder / "synthetic_truth.json")
                site, anatomy = TEST_GROUPS[group]
                rows.append({"held_out": group, "site": site, "anatomy": anatomy, "train_seed": train_seed,
                             "variant": variant, **summary["aggregate"], "fp_causes": causes["fp_causes"],
                             "found_radii": found, "missed_radii": missed, **radius_bins(found, missed)})
    table = []
    for train_seed in args.train_seeds:
        for variant in variants:
            sel = [r for r in rows if r["train_seed"] == train_seed and r["variant"] == variant]
            table += sel
            pool = pooled(sel) | {"held_out": "pooled", "train_seed": train_seed, "variant": variant}
            pool |= radius_bins(sum((r["found_radii"] for r in sel), []), sum((r["missed_radii"] for r in sel), []))
            causes: dict[str, int] = {}
            for r in sel:
                for k, v in r["fp_causes"].items():
                    causes[k] = causes.get(k, 0) + v
            pool["fp_causes"] = dict(sorted(causes.items(), key=lambda kv: -kv[1]))
            table.append(pool)
    cols = ["held_out", "train_seed", "variant", "num_cases", "tp", "fp", "fn", "f1_pooled", "sensitivity",
            "fp_per_case", "dice_mean", *[f"r {lo:g}-{hi:g} mm" for lo, hi in RADIUS_BINS]]
    print_table(table, cols)
    for r in table:
        print(f"{r['held_out']:>18} seed {r['train_seed']} {r['variant']:>12}: FPs by cause {r['fp_causes']}")
    generator = {"world": "wide (cmbunet.synthetic, realistic size)", "train_sites": args.train_sites,
                 "train_anatomy": "template", "cases_per_site": args.cases_per_site, "data_seed": args.data_seed,
                 "test_groups": TEST_GROUPS, "test_cases": args.test_cases, "test_data_seed": args.data_seed + 100}
    write_json(args.out, {"machine": info, "generator": generator, "preset": args.preset, "variants": variants,
                          "rows": table, "seconds": seconds})


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
