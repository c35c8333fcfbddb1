"""Plans names (``-p NAME``): several configurations of one dataset side by side, overrides kept on re-plan,
preprocessed cases shared by plans that preprocess alike."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cmbunet.errors import CMBUNetError, PlansMismatchError
from cmbunet.inference import cli as predict_cli
from cmbunet.model_folder import ModelFolder
from cmbunet.plan_and_preprocess import case_is_done, main as plan_main, merge_overrides
from cmbunet.plans.plans_io import load_plans, plans_hash, preprocessing_hash
from cmbunet.preprocessing.preprocessor import load_preprocessed_case
from cmbunet.training import cli as train_cli
from cmbunet.utilities.file_io import load_json, save_json
from tiny_schedule import TINY_TRAINING_OVERRIDES

DATASET = "Dataset711_PlansName"
WIDE = "screening.network.features=[8,8,16,16,48]"


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    """Four small synthetic cases planned with the default plans name (tiny preset, tiny schedule)."""
    from cmbunet.synthetic import write_dataset

    base = tmp_path_factory.mktemp("plans_name")
    raw, pre = base / "raw", base / "preprocessed"
    write_dataset(raw / DATASET, 4, seed=5, size="small")
    roots = {"raw": raw, "pre": pre, "base": base}
    assert _plan(roots) == 0
    return roots


def _plan(roots: dict[str, Path], *extra: str, pre: Path | None = None) -> int:
    return plan_main(["-d", DATASET, "--preset", "tiny", "--raw-root", str(roots["raw"]), "--preprocessed-root",
                      str(pre or roots["pre"]), "-np", "1", *extra])


def _npz_stamps(folder: Path) -> dict[str, int]:
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.npz")}
    assert stamps
    return stamps


def test_default_plans_name_keeps_the_original_layout(roots, tmp_path):
    pre_dir = roots["pre"] / DATASET
    assert (pre_dir / "plans.json").is_file() and len(list((pre_dir / "data").glob("*.npz"))) == 4
    assert not list(pre_dir.glob("pp_*")) and not list(pre_dir.glob("cmbunetPlans*"))
    assert ModelFolder.of_dataset(DATASET, tmp_path).path == tmp_path / DATASET / "cmbunet"
    assert ModelFolder.of_dataset(DATASET, tmp_path, "cmbunetPlans").path == tmp_path / DATASET / "cmbunet"
    assert ModelFolder.of_dataset(DATASET, tmp_path, "Wide").path == tmp_path / DATASET / "cmbunet__Wide"
    props = load_json(next((pre_dir / "data").glob("*.json")))
    plans = load_plans(pre_dir / "plans.json")
    assert props["preprocessing_hash"] == preprocessing_hash(plans) and props["plans_hash"] == plans_hash(plans)


def test_two_plans_names_are_planned_and_trained_side_by_side(roots, capsys):
    pre_dir = roots["pre"] / DATASET
    default_before = (pre_dir / "plans.json").read_bytes()
    assert _plan(roots, "-p", "Wide", "--override", *TINY_TRAINING_OVERRIDES, WIDE) == 0
    assert (pre_dir / "plans.json").read_bytes() == default_before
    wide = load_plans(pre_dir / "Wide.json")
    assert list(wide.screening.network.features) == [8, 8, 16, 16, 48]
    wide_data = pre_dir / f"pp_{preprocessing_hash(wide)}" / "data"
    assert len(list(wide_data.glob("*.npz"))) == 4
    # preprocessed like the default plans: the cases of data/ are taken over, not preprocessed again
    assert "4 case(s) taken from" in capsys.readouterr().out
    for npz in wide_data.glob("*.npz"):
        assert npz.read_bytes() == (pre_dir / "data" / npz.name).read_bytes()

    results = roots["base"] / "results"
    assert _plan(roots, "--override", *TINY_TRAINING_OVERRIDES) == 0  # the default plans with the tiny schedule
    for name in ("cmbunetPlans", "Wide"):
        assert train_cli.main([DATASET, "0", "-s", "screening", "-p", name, "--seed", "1", "--num-workers", "0",
                               "--preprocessed-root", str(roots["pre"]), "--results-root", str(results)]) == 0
    default_model = ModelFolder.of_dataset(DATASET, results)
    wide_model = ModelFolder.of_dataset(DATASET, results, "Wide")
    assert default_model.path.name == "cmbunet" and wide_model.path.name == "cmbunet__Wide"
    assert default_model.is_trained(0, "screening") and wide_model.is_trained(0, "screening")
    assert wide_model.plans_hash() == plans_hash(wide)
    assert default_model.plans_hash() == plans_hash(load_plans(pre_dir / "plans.json")) != plans_hash(wide)

    # predict -p NAME reads cmbunet__NAME; without -p the default model
    args = predict_cli.build_parser().parse_args(["-i", "in", "-o", "out", "-d", DATASET, "-p", "Wide",
                                                  "--results-root", str(results)])
    assert predict_cli.model_folder(args) == wide_model.path
    args = predict_cli.build_parser().parse_args(["-i", "in", "-o", "out", "-d", DATASET, "--results-root",
                                                  str(results)])
    assert predict_cli.model_folder(args) == default_model.path


def test_replanning_keeps_earlier_overrides_unless_cleared(roots, capsys):
    pre_dir = roots["pre"] / DATASET
    assert _plan(roots, "-p", "Keep", "--no-preprocess", "--override", "inference.max_candidates=77") == 0
    capsys.readouterr()
    assert _plan(roots, "-p", "Keep", "--no-preprocess", "--override", "inference.screening_threshold=0.2") == 0
    out = capsys.readouterr().out
    assert "keeping the earlier overrides of Keep.json" in out and "inference.max_candidates=77" in out
    plans = load_plans(pre_dir / "Keep.json")
    assert plans.inference.max_candidates == 77 and plans.inference.screening_threshold == 0.2
    # a new value of the same key wins and is recorded once
    assert _plan(roots, "-p", "Keep", "--no-preprocess", "--override", "inference.max_candidates=88") == 0
    plans = load_plans(pre_dir / "Keep.json")
    assert plans.inference.max_candidates == 88 and plans.inference.screening_threshold == 0.2
    assert sorted(plans.overrides) == ["inference.max_candidates=88", "inference.screening_threshold=0.2"]
    assert _plan(roots, "-p", "Keep", "--no-preprocess", "--clear-overrides") == 0
    assert list(load_plans(pre_dir / "Keep.json").overrides) == []


def test_merge_overrides_orders_earlier_first_and_new_values_win():
    merged, kept = merge_overrides(["a=1", "b=2"], ["b=3", "c=4"])
    assert merged == ["a=1", "b=3", "c=4"] and kept == ["a=1"]


def test_network_only_override_does_not_preprocess_again(roots, tmp_path, capsys):
    pre = tmp_path / "pre"
    shutil.copytree(roots["pre"] / DATASET, pre / DATASET)
    data = pre / DATASET / "data"
    stamps = _npz_stamps(data)
    before = load_plans(pre / DATASET / "plans.json")
    capsys.readouterr()
    assert _plan(roots, "--override", WIDE, pre=pre) == 0
    out = capsys.readouterr().out
    assert "preprocessed cases up to date" in out and "0 case(s) preprocessed, 4 already up to date" in out
    assert _npz_stamps(data) == stamps
    after = load_plans(pre / DATASET / "plans.json")
    assert plans_hash(after) != plans_hash(before) and preprocessing_hash(after) == preprocessing_hash(before)
    case = sorted(data.glob("*.json"))[0].stem
    load_preprocessed_case(pre / DATASET, case)  # the old cases stay valid for the new plans

    # a plans name with the same preprocessing shares the pp_ folder of another name: no case is redone
    assert _plan(roots, "-p", "NetA", "--override", WIDE, pre=pre) == 0
    shared = pre / DATASET / f"pp_{preprocessing_hash(after)}" / "data"
    shared_stamps = _npz_stamps(shared)
    capsys.readouterr()
    assert _plan(roots, "-p", "NetB", "--override", "screening.network.features=[8,8,16,16,40]", pre=pre) == 0
    assert "preprocessed cases up to date" in capsys.readouterr().out
    assert _npz_stamps(shared) == shared_stamps
    assert len(list((pre / DATASET).glob("pp_*"))) == 1


def test_cases_of_older_versions_are_accepted_by_the_full_plans_hash(roots, tmp_path):
    pre = tmp_path / "pre"
    shutil.copytree(roots["pre"] / DATASET, pre / DATASET)
    plans = load_plans(pre / DATASET / "plans.json")
    js = sorted((pre / DATASET / "data").glob("*.json"))[0]
    props = load_json(js)
    del props["preprocessing_hash"]  # written by versions before plans names: the full plans hash only
    props["plans_hash"] = plans_hash(plans)
    save_json(props, js)
    assert case_is_done(pre / DATASET, js.stem, preprocessing_hash(plans), plans_hash(plans))
    load_preprocessed_case(pre / DATASET, js.stem)
    assert not case_is_done(pre / DATASET, js.stem, preprocessing_hash(plans), "0" * 16)
    props["plans_hash"] = "0" * 16
    save_json(props, js)
    with pytest.raises(PlansMismatchError):
        load_preprocessed_case(pre / DATASET, js.stem)


def test_unusable_plans_name_is_refused(roots):
    assert _plan(roots, "-p", "a__b", "--no-preprocess") == 2
    assert not (roots["pre"] / DATASET / "a__b.json").exists()
    with pytest.raises(CMBUNetError):
        ModelFolder.of_dataset(DATASET, roots["base"], "../x")


def test_install_model_under_a_plans_name(tmp_path):
    from cmbunet.model_sharing import install_parser

    args = install_parser().parse_args(["model.zip", "-p", "Wide"])
    assert args.plans_name == "Wide"
    assert install_parser().parse_args(["model.zip"]).plans_name == "cmbunetPlans"


def test_training_after_replanning_says_how_to_keep_the_old_model(roots, tmp_path, capsys):
    """Re-planning the default plans with another network: training refuses the trained model folder, leaves it
    as it was, and names the commands that keep it (or train the new plans beside it)."""
    pre, results = tmp_path / "pre", tmp_path / "results"
    shutil.copytree(roots["pre"] / DATASET, pre / DATASET)
    model = ModelFolder.of_dataset(DATASET, results)
    model.path.mkdir(parents=True)
    shutil.copy(pre / DATASET / "plans.json", model.plans_file)  # a model trained with the plans before
    before = model.plans_file.read_bytes()
    assert _plan(roots, "--no-preprocess", "--override", WIDE, pre=pre) == 0
    capsys.readouterr()
    assert train_cli.main([DATASET, "0", "-s", "screening", "--num-workers", "0", "--preprocessed-root", str(pre),
                           "--results-root", str(results)]) == 2
    err = capsys.readouterr().err
    assert f"{model.path} was trained with plans" in err and "never deletes a trained model" in err
    assert f"mv {model.path} {results / DATASET / 'cmbunet__previous'}" in err
    assert f"cmbunet_predict -d {DATASET} -p previous" in err
    assert f"cmbunet_plan_and_preprocess -d {DATASET} -p NAME" in err and f"cmbunet_train {DATASET} FOLD -p NAME" in err
    assert model.plans_file.read_bytes() == before and [p.name for p in model.path.iterdir()] == ["plans.json"]
    # what the message says works: the moved model is the model of plans name "previous"
    model.path.rename(results / DATASET / "cmbunet__previous")
    args = predict_cli.build_parser().parse_args(["-i", "in", "-o", "out", "-d", DATASET, "-p", "previous",
                                                  "--results-root", str(results)])
    assert predict_cli.model_folder(args) == results / DATASET / "cmbunet__previous"
