"""Detection holds on a site the model never saw.

Screening and discrimination are trained on small synthetic subjects from two thin-slice sites and used on
subjects from a third, thick-slice 1.5 T site (3-3.5 mm slices, lower contrast, strong bias), which reaches the
networks as smeared, fainter microbleeds after resampling to the training sites' spacing. The bars hold on
the held-out site only, with the thresholds cmbunet_train sets (the discrimination threshold from the share of
CMBs among screening candidates on the training sites' validation cases) and the shape rule after
discrimination. Training as before those defaults (no intensity augmentation, discrimination threshold 0.5)
measured F1 0.565 with 6.4 false positives per subject here; with them but without the shape rule, F1 0.717 and
1.4 (documentation/benchmarks.md, section 6a); both fail. With the shape rule (round spots included): F1 0.742,
1.0 false positive per subject, sensitivity 0.69; with its elongation limit of 2 scaled for these 3-3.5 mm slices
(section 6f): F1 0.747, 1.125, sensitivity 0.71 (an unscaled limit of 2 would give 0.714 and sensitivity 0.63).
The subjects are of the synthetic generator's ``narrow`` world, the one these bars were set on (the ``wide``
world, with calcifications in CSF, pial veins and small microbleeds, is measured at realistic size by
benchmarks/held_out_world.py). About 3-5 minutes on 2 CPU cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cmbunet.inference.candidates import find_candidates
from cmbunet.inference.screening import screening_score_map
from cmbunet.inference.decision import kept_candidates, measure_candidates
from cmbunet.plans.plans_io import load_plans
from cmbunet.training import cli as train_cli
from cmbunet.training.checkpoint import load_stage_network
from cmbunet.training.samples import build_bank
from cmbunet.training.screening_validation import candidate_hits
from cmbunet.utilities.file_io import save_json
from tiny_schedule import LEARNING_OVERRIDES

DATASET = "Dataset712_Sites"
TRAIN_SITES, HELD_OUT_SITE = ("thin15T", "iso3T"), "thick15T"
CASES_PER_TRAIN_SITE, HELD_OUT_CASES = 6, 8
OVERRIDES = LEARNING_OVERRIDES


#: seed of the first site's subjects (the others follow); benchmarks/held_out_site_sweep.py changes it
DATA_SEED = 50


def build_and_train(base: Path, extra_overrides: list[str] = (), thresholds: bool = True, world: str = "narrow") -> dict:
    """Write the three sites of the generator's ``world``, train screening and discrimination on two of them (fold
    0: two of their cases validate), keep the third's cases for testing. ``thresholds=False`` keeps the plans'
    thresholds."""
    from cmbunet.plan_and_preprocess import main as plan_main
    from cmbunet.synthetic import write_dataset
    from cmbunet.utilities.file_io import load_json

    raw, pre, results = base / "raw", base / "preprocessed", base / "results"
    parts = {}
    for k, site in enumerate((*TRAIN_SITES, HELD_OUT_SITE)):
        n = HELD_OUT_CASES if site == HELD_OUT_SITE else CASES_PER_TRAIN_SITE
        parts[site] = write_dataset(base / "sites" / site, n, seed=DATA_SEED + k, size="small", sites=[site],
                                    world=world)
    # one raw dataset: every site's cases, prefixed with the site
    out = raw / DATASET
    for site, folder in parts.items():
        for sub in ("imagesTr", "labelsTr"):
            (out / sub).mkdir(parents=True, exist_ok=True)
            for f in (folder / sub).iterdir():
                (out / sub / f"{site}_{f.name}").write_bytes(f.read_bytes())
    ds = load_json(parts[HELD_OUT_SITE] / "dataset.json") | {"numTraining": sum(1 for _ in (out / "labelsTr").iterdir())}
    save_json(ds, out / "dataset.json")
    # the fingerprint sees every case's spacing (12 thin-slice of 20 cases: the target stays thin); labels and
    # training never see the held-out site (benchmarks/leave_one_site_out.py plans on the training sites only)
    cases = sorted(p.name[:-len(".nii.gz")] for p in (out / "labelsTr").iterdir())
    held_out = [c for c in cases if c.startswith(HELD_OUT_SITE)]
    train = [c for c in cases if c not in held_out]
    val = [train.pop(0), train.pop(-1)]  # one case of each training site validates (sets the candidate prior)
    assert plan_main(["-d", DATASET, "--preset", "tiny", "--raw-root", str(raw), "--preprocessed-root", str(pre),
                      "-np", "1", "--override", *OVERRIDES, *extra_overrides]) == 0
    save_json([{"train": train, "val": val}], pre / DATASET / "splits_final.json")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for stage in ("screening", "discrimination"):
            # float32 mining: the same false positives on CPUs with and without bfloat16 units
            assert train_cli.main([DATASET, "0", "-s", stage, "--seed", "0", "--num-workers", "1", "--precision", "fp32",
                                   "--preprocessed-root", str(pre), "--results-root", str(results)]
                                  + ([] if thresholds else ["--no-thresholds"])) == 0
    finally:
        torch.set_num_threads(threads)
    model_dir = results / DATASET / "cmbunet"
    return {"pre": pre / DATASET, "model_dir": model_dir, "held_out": held_out,
            "plans": load_plans(model_dir / "plans.json")}


def detection_scores(trained: dict) -> dict[str, float]:
    """Held-out screening sensitivity and FPs, then detection after discrimination (max over 27 shifts above the
    threshold cmbunet_predict would use: inference_settings.json, else the plans')."""
    from cmbunet.inference.discrimination import discriminate_candidates
    from cmbunet.preprocessing.preprocessor import case_files
    from cmbunet.utilities.file_io import load_json

    plans = trained["plans"]
    settings_file = trained["model_dir"] / "inference_settings.json"
    threshold = float(load_json(settings_file)["discrimination_threshold"] if settings_file.is_file()
                      else plans.inference.discrimination_threshold)
    settings = plans.inference.merged({"discrimination_threshold": threshold})
    screening = load_stage_network(trained["model_dir"], 0, "screening", plans)
    discrimination = load_stage_network(trained["model_dir"], 0, "discrimination", plans)
    bank = build_bank(trained["pre"], trained["held_out"])
    found = kept_found = total = fps = kept_fps = 0
    for case in bank.cases:
        centres, _ = find_candidates(screening_score_map(screening, case.data, plans), plans)
        hit, is_fp, n = candidate_hits(case.seg, centres, tolerance=1)
        total, found, fps = total + n, found + len(hit), fps + int(is_fp.sum())
        if len(centres):
            prob, moved = discriminate_candidates([discrimination], case.data, centres, plans)
            # the predictor's decision: threshold and shape rule
            spacing = load_json(case_files(trained["pre"], case.name)[1])["original_spacing"]
            measures = measure_candidates(case.data, moved, prob, settings, plans.channel_names,
                                          plans.target_spacing, spacing)
            keep = kept_candidates(prob, measures, settings)
            hit_k, fp_k, _ = candidate_hits(case.seg, moved[keep], tolerance=1)
            kept_found, kept_fps = kept_found + len(hit_k), kept_fps + int(fp_k.sum())
    cases = len(bank.cases)
    return {"cmbs": total, "screening_sensitivity": found / max(total, 1), "screening_fp_per_case": fps / cases,
            "sensitivity": kept_found / max(total, 1), "fp_per_case": kept_fps / cases,
            "f1": 2 * kept_found / max(2 * kept_found + (total - kept_found) + kept_fps, 1),
            "discrimination_threshold": threshold}


@pytest.fixture(scope="module")
def scores(tmp_path_factory) -> dict[str, float]:
    result = detection_scores(build_and_train(tmp_path_factory.mktemp("sites")))
    print(f"held-out site {HELD_OUT_SITE}: {result}")
    return result


def test_held_out_site_cmbs_are_found(scores):
    assert scores["cmbs"] >= 10
    assert scores["screening_sensitivity"] >= 0.85


def test_held_out_site_detection_after_discrimination(scores):
    assert scores["discrimination_threshold"] > 0.5  # set from the candidate prior, not the plans' default
    assert scores["f1"] >= 0.65
    assert scores["fp_per_case"] <= 1.25
    assert scores["sensitivity"] >= 0.6
