"""How far the dark spots under a trained model's candidates go on across thick slices: the measure the
through-slice rule thresholds.

Generates subjects of a site with data seeds no training or test subject had (7000xxx; by default thick15T, 3-3.5
mm slices at 1.5 T, a site that ``held_out_world.py`` neither trains on nor holds out), predicts them with a
trained model (``--model``) with the rule measuring but dropping nothing, puts every screening candidate down to
the microbleed or mimic of the synthetic truth it lies on (:func:`blob_ratio.object_kinds`), and reads the
``continuation`` column of the candidate table, as prediction computes it. The table gives, per object kind, the
measure's percentiles among the candidates the model kept without the rule and how many each limit drops, and how
many microbleed candidates with probability above 0.5 (the ones that can be kept, so measured) each limit drops. The plans' ``slice_max_continuation``
(0.6) was chosen from this on held_out_world.py's seed-0 model; held-out data was never looked at for it.

    python benchmarks/through_slice.py --work /tmp/slices --model /tmp/how/results_seed0/Dataset990_WideWorld/cmbunet
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import base_parser, machine_info, print_machine, print_table, write_json  # noqa: E402
from blob_ratio import object_kinds  # noqa: E402
from held_out_world import generate  # noqa: E402

from cmbunet.inference.predictor import CMBPredictor  # noqa: E402
from cmbunet.plans.planner import SLICE_MAX_CONTINUATION  # noqa: E402

LIMITS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
#: Measured by the rule but never above it: every candidate is kept as without the rule.
MEASURE_ONLY = 1000.0


def group(kind: str) -> str:
    """Veins of every kind together, CSF calcifications together: the rule is meant for the first."""
    if kind.startswith("vein"):
        return "vein (all kinds)"
    if kind.startswith("calcification_"):
        return "calcification in CSF"
    return kind


def percentile_row(name: str, values: list[float]) -> dict:
    v = np.nan_to_num(np.array(values, dtype=float), nan=-1.0)  # not measured (NaN): never dropped
    return {"kept_kind": name, "n": len(v), "p10": float(np.percentile(v, 10)), "median": float(np.median(v)),
            "p90": float(np.percentile(v, 90)), **{f"above_{lim:g}": int(np.sum(v > lim)) for lim in LIMITS}}


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True, help="a trained model folder (fold all is used)")
    p.add_argument("--sites", nargs="+", default=["thick15T"])
    p.add_argument("--cases-per-site", type=int, default=6)
    p.add_argument("--data-seed", type=int, default=7000)
    args = p.parse_args()
    info = machine_info()
    print_machine(info)
    predictor = CMBPredictor.from_model_folder(args.model, ["all"],
                                               settings_overrides={"slice_max_continuation": MEASURE_ONLY})
    kept: dict[str, list[float]] = {}
    cmb_candidates: list[float] = []
    for site in args.sites:
        folder = generate(args.work / site, args.cases_per_site, args.data_seed * 1000 + sum(map(ord, site)), site,
                          "template")
        truth = json.loads((folder / "synthetic_truth.json").read_text())["cases"]
        for image_path in sorted((folder / "imagesTr").glob("*_0000.nii.gz")):
            case = image_path.name[: -len("_0000.nii.gz")]
            prepared = predictor.load_and_preprocess([image_path], case)
            cand = predictor.predict_preprocessed(prepared.data, prepared.properties).candidates
            spacing = np.asarray(prepared.properties["original_spacing"], dtype=float)
            kinds = object_kinds(cand[["native_i", "native_j", "native_k"]].to_numpy(float) * spacing, truth[case],
                                 spacing)
            for kind, c, k, prob in zip(kinds, cand["continuation"], cand["kept"], cand["discrimination_score"]):
                if k:
                    kept.setdefault(group(kind), []).append(float(c))
                if kind == "cmb" and prob > 0.5:  # measured above the round-spot threshold
                    cmb_candidates.append(float(c))
            print(f"{site} {case}: {len(cand)} candidates, {int(cand['kept'].sum())} kept", flush=True)
    rows = [percentile_row(kind, values) for kind, values in sorted(kept.items())]
    rows.append(percentile_row("cmb candidates p>0.5", cmb_candidates))
    print(f"plans: slice_max_continuation {SLICE_MAX_CONTINUATION}")
    print_table(rows)
    write_json(args.out, {"machine": info, "model": str(args.model), "sites": args.sites, "world": "wide",
                          "data_seed": args.data_seed, "cases_per_site": args.cases_per_site, "rows": rows})


if __name__ == "__main__":
    main()
