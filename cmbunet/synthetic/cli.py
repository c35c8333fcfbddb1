"""``cmbunet_synthetic``: write a synthetic microbleed dataset (nnU-Net raw or VALDO layout) with its ground truth."""

from __future__ import annotations

import argparse
from pathlib import Path

from cmbunet.paths import dataset_name_from_id
from cmbunet.synthetic.generator import ANATOMIES, MODALITIES, SIZES, WORLDS
from cmbunet.synthetic.sites import SITES
from cmbunet.synthetic.writer import LAYOUTS, TRUTH_FILE, write_dataset
from cmbunet.utilities.cli import command_parser, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "cmbunet_synthetic",
        "Generate synthetic skull-stripped T2*-weighted scans with labelled cerebral microbleeds and "
        "unlabelled mimics (veins, calcifications, iron-rich nuclei, non-round dark spots).")
    p.add_argument("-o", "--output", required=True, type=Path,
                   help="raw layout: the dataset folder itself (or the raw root when --dataset-id is given); "
                   "valdo layout: the folder that receives sub-XXX/ (test subjects go to OUTPUT_test)")
    p.add_argument("--cases", type=int, required=True, help="number of training cases")
    p.add_argument("--test-cases", type=int, default=0, help="number of test cases, written with their labels")
    p.add_argument("--layout", choices=LAYOUTS, default="raw",
                   help="raw: an nnU-Net-style raw dataset (dataset.json, imagesTr, labelsTr, imagesTs, labelsTs); "
                   "valdo: VALDO task-2 subject folders sub-XXX/ with T1, T2 and T2S, for cmbunet_convert_valdo")
    p.add_argument("--seed", type=int, default=0, help="same seed, same data (default 0)")
    p.add_argument("--size", choices=SIZES, default="small",
                   help="small: ~64^3 shrunken brains for quick tests; realistic: full-size brains at 0.45-1 mm")
    p.add_argument("--dataset-id", type=int, default=None,
                   help="raw layout: write into OUTPUT/DatasetXXX_NAME instead of OUTPUT")
    p.add_argument("--name", default=None, help="dataset name (default Synthetic)")
    p.add_argument("--modalities", nargs="+", choices=MODALITIES, default=["T2S"],
                   help="channels of the raw layout, in order (default: T2S; the valdo layout always writes T1, T2 "
                   "and T2S)")
    p.add_argument("--anatomy", choices=ANATOMIES, default="auto",
                   help="brain model: warped MNI152 template (real anatomy), parametric phantom, or auto "
                   "(template for realistic cases, phantom for small ones; default auto)")
    p.add_argument("--sites", nargs="+", default=None, metavar="SITE",
                   help="acquisition sites each case is drawn from, or 'all'. Sites: "
                   + "; ".join(f"{s.name}: {s.description}" for s in SITES.values())
                   + ". Default: all for realistic cases, the quick-test world for small ones")
    p.add_argument("--world", choices=WORLDS, default="wide",
                   help="what cases drawn from a site hold: wide (default) adds veins of every kind, calcifications "
                        "of the choroid plexus, pineal and falx, lacunes and white-matter hyperintensities, small "
                        "microbleeds, slice profiles from box-shaped to sharp and CSF brightness per case; narrow is "
                        "the world before them, to reproduce figures measured on it")
    return p


@run_cli
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = args.output
    if args.layout == "raw" and args.dataset_id is not None:
        out = out / f"{dataset_name_from_id(args.dataset_id)}_{args.name or 'Synthetic'}"
    folder = write_dataset(out, args.cases, layout=args.layout, seed=args.seed, size=args.size,
                           num_test_cases=args.test_cases, modalities=args.modalities, dataset_name=args.name,
                           anatomy=args.anatomy, sites=args.sites, world=args.world)
    print(f"wrote {args.cases} training + {args.test_cases} test cases to {folder} (truth: {folder / TRUTH_FILE})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
