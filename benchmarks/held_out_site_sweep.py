"""Quick held-out-site detection sweep: which discrimination settings hold on a site the model never saw.

A cheap proxy for ``leave_one_site_out.py`` to choose between levers before a full run. For each
(training sites -> held-out site) combination it trains screening and discrimination the way the learning test
``tests/test_site_generalisation.py`` does (small synthetic subjects, ``tiny`` preset, the learning schedule),
then scores the held-out subjects' candidates in preprocessed space at several discrimination thresholds and
with both shift aggregations (``max``, ``mean``) and with test-time mirroring, without retraining. Each false positive is put down to the
nearest unlabelled mimic of the synthetic truth (``background`` when none is near), so the table says which
mimics fool the detector. Segmentation is not trained: this measures detection only.

    python benchmarks/held_out_site_sweep.py --work /tmp/sweep --out benchmarks/results/held_out_site_sweep.json
    python benchmarks/held_out_site_sweep.py --work /tmp/sweep --override training.cpu.discrimination.epochs=30

Every combination is cached in ``--work`` (delete its folder to retrain it); the combinations differ from the
learning test's, so the test stays a held-out check of what is chosen here.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from _common import base_parser, loadavg, machine_info, print_machine, print_table, write_json  # noqa: E402

#: (training sites, held-out site): every held-out site differs in slice thickness or field from its trainers.
COMBINATIONS = (
    (("thick3T", "swi3T"), "mid15T"),
    (("mid15T", "iso3T"), "thin15T"),
    (("thin15T", "coarse3T"), "swi3T"),
)
THRESHOLDS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99)
#: Discrimination variants scored on the same candidates: (shift aggregation, test-time mirroring).
VARIANTS = {"max": ("max", False), "mean": ("mean", False), "max_mirror": ("max", True)}
#: Shape rules applied on top of ``max_mirror`` (the plans' ``inference.shape_*``, see
#: cmbunet.inference.shape.decision_scores): a spot longer than ``shape_max_elongation`` times its width or wider
#: than ``shape_max_diameter_mm`` is dropped; a round one (``shape_round_elongation``) above
#: ``shape_round_threshold`` is kept at any threshold. The elongation limit is scaled by each scan's
#: ``round_spot_elongation`` (thick slices stretch a small round spot), as ``cmbunet_predict`` does.
NO_ROUND = {"shape_round_elongation": None, "shape_round_threshold": 0.5}
SHAPE_RULES = {
    "shape_e3": {"shape_max_elongation": 3.0, "shape_max_diameter_mm": None, **NO_ROUND},
    "shape_e3_d10": {"shape_max_elongation": 3.0, "shape_max_diameter_mm": 10.0, **NO_ROUND},
    "shape_e2.5_d8": {"shape_max_elongation": 2.5, "shape_max_diameter_mm": 8.0, **NO_ROUND},
    "shape_e3_d10_round1.5": {"shape_max_elongation": 3.0, "shape_max_diameter_mm": 10.0,
                              "shape_round_elongation": 1.5, "shape_round_threshold": 0.5},
    "shape_e2_d10_round1.5 (default)": {"shape_max_elongation": 2.0, "shape_max_diameter_mm": 10.0,
                                        "shape_round_elongation": 1.5, "shape_round_threshold": 0.5},
}


def mimic_reach_mm(mimic: dict) -> float:
    """How far from its recorded centre a mimic reaches: half a vein's length, a lobe's radius, plus 3 mm."""
    size = [mimic.get("length_mm", 0.0) / 2, mimic.get("max_radius_mm", 0.0), mimic.get("radius_mm", 0.0),
            max(mimic.get("semi_axes_mm", [0.0]))]
    return max(size) + 3.0


def cause_of(point_mm: np.ndarray, mimics: list[dict], spacing: np.ndarray) -> str:
    """The kind of the nearest mimic whose reach covers ``point_mm`` (native voxel index x spacing)."""
    if not mimics:
        return "background"
    centres = np.array([m["center_voxel"] for m in mimics], dtype=float) * spacing
    d = np.linalg.norm(centres - point_mm, axis=1)
    near = np.flatnonzero(d <= np.array([mimic_reach_mm(m) for m in mimics]))
    return mimics[int(near[np.argmin(d[near])])]["kind"] if near.size else "background"


def build(base: Path, train_sites: tuple[str, ...], held_out: str, overrides: list[str], data_seed: int) -> dict:
    import test_site_generalisation as T

    T.TRAIN_SITES, T.HELD_OUT_SITE = train_sites, held_out
    T.DATA_SEED = data_seed
    T.DATASET = f"Dataset713_{held_out}"
    if (base / "done.json").is_file():
        from cmbunet.plans.plans_io import load_plans
        from cmbunet.utilities.file_io import load_json

        info = load_json(base / "done.json")
        model_dir = Path(info["model_dir"])
        return {"pre": Path(info["pre"]), "model_dir": model_dir, "held_out": info["held_out"],
                "plans": load_plans(model_dir / "plans.json")}
    trained = T.build_and_train(base, overrides)
    (base / "done.json").write_text(json.dumps({"pre": str(trained["pre"]), "model_dir": str(trained["model_dir"]),
                                                "held_out": trained["held_out"]}))
    return trained


def score(trained: dict, truth_dir: Path) -> list[dict]:
    """Candidates of every held-out case with their discrimination probabilities (both aggregations), whether
    they hit a CMB, and the cause of each false positive."""
    from cmbunet.inference.candidates import find_candidates
    from cmbunet.inference.discrimination import discriminate_candidates
    from cmbunet.inference.outputs import preprocessed_to_native
    from cmbunet.inference.screening import screening_score_map
    from cmbunet.inference.shape import round_spot_elongation, spot_shapes, susceptibility_channel
    from cmbunet.model_folder import ModelFolder
    from cmbunet.training.samples import build_bank

    from cmbunet.utilities.components import label_components
    from cmbunet.utilities.patches import extract_patches
    from cmbunet.utilities.file_io import load_json

    plans, model = trained["plans"], ModelFolder(trained["model_dir"])
    screening = model.load_network(0, "screening", plans)
    discrimination = model.load_network(0, "discrimination", plans)
    truth = load_json(truth_dir / "synthetic_truth.json")["cases"]
    rows = []
    for case in build_bank(trained["pre"], trained["held_out"]).cases:
        props = load_json(trained["pre"] / "data" / f"{case.name}.json")
        entry = truth[case.name.split("_", 1)[1]]
        centres, _ = find_candidates(screening_score_map(screening, case.data, plans), plans)
        n_cmbs = len(case.cmb_centres)
        spacing = np.asarray(props["original_spacing"] if "original_spacing" in props else props["spacing"], float)
        record = {"case": case.name, "cmbs": n_cmbs, "round_spot_elongation": round_spot_elongation(spacing),
                  "candidates": []}
        if len(centres):
            probs = {}
            for how in VARIANTS:
                aggregate, mirror = VARIANTS[how]
                probs[how], moved = discriminate_candidates([discrimination], case.data, centres, plans,
                                                            aggregate=aggregate, mirror=mirror)
                if how == "max":  # the CMB (component id, 0 = none) each candidate reaches, as candidate_hits rules
                    labels, _ = label_components(case.seg > 0)
                    reached = extract_patches(labels, moved, (4, 4, 4)).reshape(len(moved), -1).max(axis=1)
                    native = preprocessed_to_native(moved, props)
                    shapes = spot_shapes(case.data[susceptibility_channel(plans.channel_names)], moved,
                                         plans.target_spacing)
                    elongation, diameter = shapes.elongation, shapes.diameter_mm
            for k in range(len(centres)):
                record["candidates"].append({
                    **{how: float(probs[how][k]) for how in VARIANTS}, "cmb": int(reached[k]),
                    "elongation": float(elongation[k]), "diameter_mm": float(diameter[k]),
                    "cause": "" if reached[k] else cause_of(native[k] * spacing, entry["mimics"], spacing)})
        rows.append(record)
    return rows


def add_shape_variants(cases: list[dict], plans) -> None:
    """Score each candidate under every shape rule: the decision score the predictor compares with the threshold
    (its ``max_mirror`` probability, below every threshold when dropped, above every one when round)."""
    from cmbunet.inference.shape import decision_scores

    for name, rule in SHAPE_RULES.items():
        settings = plans.inference.merged(rule)
        for c in cases:
            xs = c["candidates"]
            scores = decision_scores(np.array([x["max_mirror"] for x in xs], float),
                                     np.array([x["elongation"] for x in xs], float),
                                     np.array([x["diameter_mm"] for x in xs], float), settings,
                                     c.get("round_spot_elongation", 1.0))
            for x, v in zip(xs, scores):
                x[name] = float(v)


def shape_summary(cases: list[dict], threshold: float = 0.5) -> list[dict]:
    """Quartiles of the spot-shape measures of hits and of each false-positive cause above ``threshold``."""
    groups: dict[str, list[dict]] = {}
    for c in cases:
        for x in c["candidates"]:
            if x["max_mirror"] > threshold:
                groups.setdefault("CMB" if x["cmb"] else x["cause"], []).append(x)
    rows = []
    for name, xs in sorted(groups.items()):
        row = {"group": name, "n": len(xs)}
        for key in ("elongation", "diameter_mm"):
            v = np.array([x[key] for x in xs], float)
            row[key] = "/".join(f"{q:.2f}" for q in np.nanpercentile(v, (10, 50, 90))) if np.isfinite(v).any() else "nan"
        rows.append(row)
    return rows


CANDIDATE_FIELDS = ["case", "cmb", "cause", "max", "mean", "max_mirror", "elongation", "diameter_mm"]


def compact_candidates(cases: list[dict], above: float = 0.5) -> dict:
    """The candidates any variant could keep (a probability above ``above``) as rows of :data:`CANDIDATE_FIELDS`, so
    that other shape rules can be scored from the JSON without retraining."""
    rows = [[c["case"], x["cmb"], x["cause"], *(round(x[k], 4) for k in CANDIDATE_FIELDS[3:])]
            for c in cases for x in c["candidates"] if max(x[k] for k in VARIANTS) > above]
    return {"fields": CANDIDATE_FIELDS, "cmbs_per_case": {c["case"]: c["cmbs"] for c in cases}, "rows": rows}


def operating_points(cases: list[dict]) -> list[dict]:
    """Pooled sensitivity, FP per case and F1 per (aggregation, threshold); a CMB counts as found when a
    kept candidate lies on it."""
    out = []
    total = sum(c["cmbs"] for c in cases)
    for how in (*VARIANTS, *SHAPE_RULES):
        for t in THRESHOLDS:
            fp = sum(1 for c in cases for x in c["candidates"] if not x["cmb"] and x[how] > t)
            tp = sum(len({x["cmb"] for x in c["candidates"] if x["cmb"] and x[how] > t}) for c in cases)
            out.append({"aggregate": how, "threshold": t, "tp": tp, "fp": fp, "fn": total - tp,
                        "sensitivity": tp / max(total, 1), "fp_per_case": fp / max(len(cases), 1),
                        "f1": 2 * tp / max(2 * tp + (total - tp) + fp, 1)})
    return out


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--override", nargs="+", default=[], help="extra plan overrides for training")
    p.add_argument("--data-seed", type=int, default=50, help="seed of the first site's subjects (the learning test's "
                   "is 50); another seed gives other subjects, CMBs and mimics")
    p.add_argument("--only", nargs="+", default=None, help="held-out sites to run (default: all combinations)")
    args = p.parse_args()
    info = machine_info()
    print_machine(info)
    t0 = time.perf_counter()
    results = []
    for train_sites, held_out in COMBINATIONS:
        if args.only and held_out not in args.only:
            continue
        base = args.work.resolve() / held_out
        trained = build(base, train_sites, held_out, args.override, args.data_seed)
        settings = trained["model_dir"] / "inference_settings.json"
        prior = json.loads(settings.read_text())["discrimination_threshold"] if settings.is_file() else None
        cases = score(trained, base / "sites" / held_out)
        add_shape_variants(cases, trained["plans"])
        causes: dict[str, dict[str, int]] = {}
        for t in (0.5, 0.95):
            counts: dict[str, int] = {}
            for c in cases:
                for x in c["candidates"]:
                    if not x["cmb"] and x["max"] > t:
                        counts[x["cause"]] = counts.get(x["cause"], 0) + 1
            causes[f"max>{t}"] = dict(sorted(counts.items(), key=lambda kv: -kv[1]))
        points = operating_points(cases)
        print(f"\n# held out {held_out} (trained on {' + '.join(train_sites)}); prior threshold {prior}")
        print(f"false positives by cause: {causes}")
        print("spot shape (10th/50th/90th percentile) of candidates with max_mirror > 0.5:")
        print_table(shape_summary(cases), ["group", "n", "elongation", "diameter_mm"])
        print_table(points, ["aggregate", "threshold", "tp", "fp", "fn", "sensitivity", "fp_per_case", "f1"])
        results.append({"held_out": held_out, "train_sites": list(train_sites), "prior_threshold": prior,
                        "fp_causes": causes, "points": points, "candidates": compact_candidates(cases)})
    pooled = {}
    for r in results:
        for pt in r["points"]:
            key = (pt["aggregate"], pt["threshold"])
            acc = pooled.setdefault(key, {"aggregate": key[0], "threshold": key[1], "tp": 0, "fp": 0, "fn": 0})
            for k in ("tp", "fp", "fn"):
                acc[k] += pt[k]
    n_cases = sum(len(r.get("points", [])) and 1 for r in results)
    for acc in pooled.values():
        acc["f1"] = 2 * acc["tp"] / max(2 * acc["tp"] + acc["fp"] + acc["fn"], 1)
        acc["sensitivity"] = acc["tp"] / max(acc["tp"] + acc["fn"], 1)
    if len(results) > 1:
        print(f"\n# pooled over {n_cases} held-out sites")
        print_table(list(pooled.values()), ["aggregate", "threshold", "tp", "fp", "fn", "sensitivity", "f1"])
    write_json(args.out, {"machine": info, "loadavg_end": loadavg(), "overrides": args.override,
                          "data_seed": args.data_seed, "sites": results,
                          "pooled": list(pooled.values()), "seconds": time.perf_counter() - t0})


if __name__ == "__main__":
    main()
