"""How much CSF surrounds microbleeds and their mimics: the measure the location rule thresholds.

For subjects of the synthetic generator's wide world (realistic size, the given sites, MNI152 anatomy unless
``--anatomy``), the dark spot under every microbleed and under every calcification, flow void and pial vein of the
truth file is measured as prediction measures it (:func:`cmbunet.inference.location.csf_shares` at the object's
centre, on the native image) for a few shells, and the table gives, per object kind, the share's percentiles and
how many lie above the 98th percentile of microbleeds' share. The plans' ``location_max_csf_share`` (0.6) and
shell (0.5-2.5 mm) were chosen from this on the training sites' world (seeds 7000-7017); held-out data was never
looked at for it.

    python benchmarks/location_share.py --sites iso3T mid15T thin15T --seeds 7000 7018
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import base_parser, machine_info, print_machine, print_table, write_json  # noqa: E402

from cmbunet.inference.location import SHELL_MM, csf_level, csf_shares  # noqa: E402
from cmbunet.inference.shape import dark_spots  # noqa: E402
from cmbunet.plans.planner import LOCATION_MAX_CSF_SHARE  # noqa: E402
from cmbunet.synthetic.generator import synthesize_case  # noqa: E402

SHELLS = ((0.5, 2.5), (1.0, 3.0), (1.5, 4.0))
MIMIC_KINDS = ("calcification", "flow_void", "vein_pial")


def object_kind(cmb_radius: float | None, kind: str = "") -> str:
    if cmb_radius is not None:
        return "cmb r<1.2 mm" if cmb_radius < 1.2 else "cmb r>=1.2 mm"
    return kind


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--sites", nargs="+", default=["iso3T", "mid15T", "thin15T"])
    p.add_argument("--seeds", type=int, nargs=2, default=[7000, 7018], help="first and last+1 data seed")
    p.add_argument("--anatomy", default="template")
    args = p.parse_args()
    info = machine_info()
    print_machine(info)
    shares: dict[tuple[float, float], dict[str, list[float]]] = {s: defaultdict(list) for s in SHELLS}
    for i, seed in enumerate(range(*args.seeds)):
        case = synthesize_case(seed, "realistic", sites=[args.sites[i % len(args.sites)]], anatomy=args.anatomy)
        image, spacing = case.images["T2S"], case.props["spacing"]
        objects = [(object_kind(c["radius_mm"]), c["center_voxel"]) for c in case.cmbs]
        objects += [(m["kind"], m["center_voxel"]) for m in case.mimics if m["kind"].startswith(MIMIC_KINDS)]
        if not objects:
            continue
        at = np.clip(np.rint([v for _, v in objects]).astype(int), 0, np.array(image.shape) - 1)
        spots, level = dark_spots(image, at, spacing), csf_level(image)
        for shell in SHELLS:
            for (kind, _), s in zip(objects, csf_shares(image, spots, at, spacing, level, shell)):
                shares[shell][kind].append(float(s))
    rows = []
    for shell, per_kind in shares.items():
        cmb = np.array(per_kind["cmb r<1.2 mm"] + per_kind["cmb r>=1.2 mm"])
        p98 = float(np.percentile(cmb, 98)) if cmb.size else float("nan")
        for kind, values in sorted(per_kind.items()):
            v = np.array(values)
            rows.append({"shell_mm": f"{shell[0]:g}-{shell[1]:g}", "kind": kind, "n": len(v),
                         "median": float(np.median(v)), "p95": float(np.percentile(v, 95)),
                         "above_cmb_p98": float(np.mean(v > p98)), "cmb_p98": p98,
                         f"above_{LOCATION_MAX_CSF_SHARE:g}": float(np.mean(v > LOCATION_MAX_CSF_SHARE))})
    print(f"plans: shell {SHELL_MM} mm, limit {LOCATION_MAX_CSF_SHARE}")
    print_table(rows)
    write_json(args.out, {"machine": info, "sites": args.sites, "seeds": args.seeds, "anatomy": args.anatomy,
                          "world": "wide", "rows": rows})


if __name__ == "__main__":
    main()
