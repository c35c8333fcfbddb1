"""How ball-like the dark spots under a trained model's candidates curve: the measure the curvature rule thresholds.

Generates subjects of the training sites' wide world with data seeds no training or test subject had (7000xxx),
predicts them with a trained model (``--model``, e.g. a fold of ``held_out_world.py``), puts every screening
candidate down to the microbleed or mimic of the synthetic truth it lies on, and measures its
:func:`cmbunet.inference.blob.relative_blob_ratios` on the preprocessed image, as prediction does. The table
gives, per object kind, the ratio's percentiles among the candidates the model kept (without the curvature rule)
and how many of them each limit drops, and how many microbleed candidates with probability above 0.2 lie below
each limit. The plans' ``shape_min_blob_ratio`` (0.4) was chosen from this on held_out_world.py's seed-0 model
(sites iso3T, mid15T, thin15T, 6 subjects each); held-out data was never looked at for it.

    python benchmarks/blob_ratio.py --work /tmp/blob --model /tmp/how/results_seed0/Dataset990_WideWorld/cmbunet
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import base_parser, machine_info, print_machine, print_table, write_json  # noqa: E402
from held_out_world import generate  # noqa: E402
from leave_one_site_out import _mimic_reach_mm  # noqa: E402

from cmbunet.inference.blob import relative_blob_ratios  # noqa: E402
from cmbunet.inference.predictor import CMBPredictor  # noqa: E402
from cmbunet.inference.shape import susceptibility_channel  # noqa: E402
from cmbunet.plans.planner import SHAPE_MIN_BLOB_RATIO  # noqa: E402

LIMITS = (0.2, 0.3, 0.4, 0.5, 0.6)


def object_kinds(native_mm: np.ndarray, entry: dict, spacing: np.ndarray) -> list[str]:
    """The truth object each candidate (native positions in mm, ``(N, 3)``) lies on: ``cmb`` within its radius
    + 2.5 mm, else the nearest mimic within its reach, else ``background``."""
    kinds = []
    for p in native_mm:
        kind, best = "background", np.inf
        for c in entry["cmbs"]:
            d = float(np.linalg.norm(np.asarray(c["center_voxel"]) * spacing - p))
            if d <= c["radius_mm"] + 2.5 and d < best:
                kind, best = "cmb", d
        if kind == "background":
            for m in entry["mimics"]:
                d = float(np.linalg.norm(np.asarray(m["center_voxel"]) * spacing - p))
                if d <= _mimic_reach_mm(m) and d < best:
                    kind, best = m["kind"], d
        kinds.append(kind)
    return kinds


def labelled_candidates(predictor: CMBPredictor, work: Path, sites: list[str], cases_per_site: int,
                        data_seed: int):
    """Yield ``(prepared case, candidate table, object kind of each candidate)`` for new subjects of ``sites``
    (wide world, MNI152 anatomy, seeds ``data_seed * 1000 + site``), predicted by ``predictor``."""
    for site in sites:
        folder = generate(work / site, cases_per_site, data_seed * 1000 + sum(map(ord, site)), site, "template")
        truth = json.loads((folder / "synthetic_truth.json").read_text())["cases"]
        for image_path in sorted((folder / "imagesTr").glob("*_0000.nii.gz")):
            case = image_path.name[: -len("_0000.nii.gz")]
            prepared = predictor.load_and_preprocess([image_path], case)
            cand = predictor.predict_preprocessed(prepared.data, prepared.properties).candidates
            spacing = np.asarray(prepared.properties["original_spacing"], dtype=float)
            kinds = object_kinds(cand[["native_i", "native_j", "native_k"]].to_numpy(float) * spacing, truth[case],
                                 spacing)
            print(f"{site} {case}: {len(cand)} candidates, {int(cand['kept'].sum())} kept", flush=True)
            yield prepared, cand, kinds


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True, help="a trained model folder (fold all is used)")
    p.add_argument("--sites", nargs="+", default=["iso3T", "mid15T", "thin15T"])
    p.add_argument("--cases-per-site", type=int, default=6)
    p.add_argument("--data-seed", type=int, default=7000)
    args = p.parse_args()
    info = machine_info()
    print_machine(info)
    predictor = CMBPredictor.from_model_folder(args.model, ["all"], settings_overrides={"shape_min_blob_ratio": None})
    kept: dict[str, list[float]] = {}
    cmb_candidates: list[float] = []
    for prepared, cand, kinds in labelled_candidates(predictor, args.work, args.sites, args.cases_per_site,
                                                     args.data_seed):
        ratio = relative_blob_ratios(prepared.data[susceptibility_channel(predictor.channel_names)],
                                     cand[["x", "y", "z"]].to_numpy(int), predictor.plans.target_spacing,
                                     prepared.properties["original_spacing"])
        for kind, r, k, prob in zip(kinds, ratio, cand["kept"], cand["discrimination_score"]):
            if k:
                kept.setdefault(kind, []).append(float(r))
            if kind == "cmb" and prob > 0.2:
                cmb_candidates.append(float(r))
    rows = []
    for kind, values in sorted(kept.items()):
        v = np.nan_to_num(np.array(values), nan=-1.0)
        rows.append({"kept_kind": kind, "n": len(v), "p5": float(np.percentile(v, 5)), "median": float(np.median(v)),
                     **{f"below_{lim:g}": int(np.sum(v < lim)) for lim in LIMITS}})
    c = np.array(cmb_candidates)
    rows.append({"kept_kind": "cmb candidates p>0.2", "n": len(c), "p5": float(np.percentile(c, 5)),
                 "median": float(np.median(c)), **{f"below_{lim:g}": int(np.sum(c < lim)) for lim in LIMITS}})
    print(f"plans: shape_min_blob_ratio {SHAPE_MIN_BLOB_RATIO}; lowest microbleed candidate {c.min():.3f}")
    print_table(rows)
    write_json(args.out, {"machine": info, "model": str(args.model), "sites": args.sites, "world": "wide",
                          "data_seed": args.data_seed, "cases_per_site": args.cases_per_site, "rows": rows})


if __name__ == "__main__":
    main()
