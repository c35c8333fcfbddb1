"""How elongated the dark spots under a trained model's candidates are within their slice: the measure the
in-plane elongation rule thresholds.

Generates subjects with data seeds no training or test subject had (7000xxx), predicts them with a trained model
(``--model``, e.g. a fold of ``held_out_world.py``) with the in-plane rule off, puts every candidate down to the
microbleed or mimic of the synthetic truth it lies on, and measures its
:func:`cmbunet.inference.shape.inplane_elongations` on the preprocessed image, as prediction does. The table gives,
per object kind, the measure's median and 90th percentile among the candidates the model kept, how many of them
each limit drops, and how many microbleed candidates with probability above 0.5 each limit drops (kept or not:
a limit must not drop what a looser threshold would keep). The default site, thick15T (3-3.5 mm slices, 1.5 T),
is trained on and held out by no benchmark; ``--sites iso3T mid15T thin15T`` checks the training sites.

    python benchmarks/inplane_elongation.py --work /tmp/inplane --sites thick15T \
        --model /tmp/how/results_seed0/Dataset990_WideWorld/cmbunet
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import base_parser, machine_info, print_machine, print_table, write_json  # noqa: E402
from blob_ratio import labelled_candidates  # noqa: E402

from cmbunet.inference.predictor import CMBPredictor  # noqa: E402
from cmbunet.inference.shape import dark_spots, inplane_elongations, susceptibility_channel  # noqa: E402

LIMITS = (1.6, 1.8, 2.0, 2.2, 2.5)


def group(kind: str) -> str:
    """The row a truth object's kind is counted in: microbleeds, veins (every kind), calcifications lying in CSF
    (choroid plexus, pineal, falx: the generator's ``calcification_*`` kinds), and every other kind by name."""
    if kind.startswith("vein"):
        return "veins"
    if kind.startswith("calcification_"):
        return "calcifications in CSF"
    return kind


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
                                               settings_overrides={"shape_max_inplane_elongation": None})
    spacing = predictor.plans.target_spacing
    kept: dict[str, list[float]] = {}
    cmb_candidates: list[float] = []
    for prepared, cand, kinds in labelled_candidates(predictor, args.work, args.sites, args.cases_per_site,
                                                     args.data_seed):
        image = prepared.data[susceptibility_channel(predictor.channel_names)]
        spots = dark_spots(image, cand[["x", "y", "z"]].to_numpy(int), spacing)
        slice_axis = int(np.argmax(prepared.properties["original_spacing"]))
        measure = inplane_elongations(spots, spacing, slice_axis)
        for kind, e, k, prob in zip(kinds, measure, cand["kept"], cand["discrimination_score"]):
            if k:
                kept.setdefault(group(kind), []).append(float(e))
            if kind == "cmb" and prob > 0.5:
                cmb_candidates.append(float(e))
    rows = []
    for name, values in [*sorted(kept.items()), ("cmb candidates p>0.5", cmb_candidates)]:
        v = np.nan_to_num(np.array(values), nan=1.0)  # no spot: never dropped
        rows.append({"kind": name if name.startswith("cmb candidates") else f"kept {name}", "n": len(v),
                     "median": float(np.median(v)) if len(v) else np.nan,
                     "p90": float(np.percentile(v, 90)) if len(v) else np.nan,
                     **{f"above_{lim:g}": int(np.sum(v > lim)) for lim in LIMITS}})
    print_table(rows)
    write_json(args.out, {"machine": info, "model": str(args.model), "sites": args.sites, "world": "wide",
                          "data_seed": args.data_seed, "cases_per_site": args.cases_per_site, "rows": rows})


if __name__ == "__main__":
    main()
