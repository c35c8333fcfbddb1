"""Skull-stripped input: an unstripped scan (a synthetic brain with a bright scalp and background noise added)
is refused naming the file; ``--brain-mask`` (flat, or BIDS ``desc-brain_mask``) makes it the stripped scan
again, in memory; ``--allow-unstripped`` predicts it as it is."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage

from cmbunet.inference.brain_mask import MAX_SHELL_SHARE, find_brain_mask, shell_share, unstripped_problem
from cmbunet.inference.cli import main
from cmbunet.synthetic.generator import synthesize_case
from cmbunet.synthetic.writer import write_dataset
from test_bad_input import tree_state
from test_predict_cli import write_model

IMAGE = "sub-101_space-T2S_desc-masked_T2S.nii.gz"


def unstrip(image: np.ndarray, seed: int = 0) -> np.ndarray:
    """A whole-head version of a stripped image (X, Y, Z): dark skull and bright scalp around the brain, and
    magnitude noise (the absolute value of Gaussian noise) in the background, as a scanner writes it."""
    rng = np.random.default_rng(seed)
    brain = np.isfinite(image) & (image != 0)
    level = float(np.percentile(image[brain], 90))
    skull = ndimage.binary_dilation(brain, iterations=2) & ~brain
    scalp = ndimage.binary_dilation(brain, iterations=5) & ~brain & ~skull
    head = np.abs(rng.normal(0, 0.03 * level, image.shape)).astype(np.float32)
    head[skull] = 0.1 * level
    head[scalp] = 1.4 * level
    head[brain] = image[brain]
    return head


def stripped_images() -> list[tuple[np.ndarray, tuple[float, ...]]]:
    """The generator's stripped images, whole and cropped to the brain's bounding box."""
    out = []
    for seed in range(4):
        case = synthesize_case(seed=seed, size="small")
        image, spacing = case.images["T2S"], tuple(case.props["spacing"])
        box = tuple(slice(a.min(), a.max() + 1) for a in np.nonzero(case.brain))
        out += [(image, spacing), (image[box], spacing)]
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """sub-101 stripped (VALDO), the same scan unstripped (VALDO and BIDS with a session), its brain mask as
    sub-101.nii.gz and as a BIDS derivative, and a tiny model."""
    root = tmp_path_factory.mktemp("brain")
    valdo = write_dataset(root / "valdo", 1, layout="valdo", seed=0)
    src = sitk.ReadImage(str(valdo / "sub-101" / IMAGE))
    arr = sitk.GetArrayFromImage(src).transpose(2, 1, 0)
    head = sitk.GetImageFromArray(unstrip(arr).transpose(2, 1, 0))
    head.CopyInformation(src)
    mask = sitk.GetImageFromArray((np.isfinite(arr) & (arr != 0)).astype(np.uint8).transpose(2, 1, 0))
    mask.CopyInformation(src)
    whole = root / "whole" / "sub-101"
    whole.mkdir(parents=True)
    sitk.WriteImage(head, str(whole / IMAGE))
    masks = root / "masks"
    masks.mkdir()
    sitk.WriteImage(mask, str(masks / "sub-101.nii.gz"))
    bids, deriv = root / "bids", root / "bids" / "derivatives" / "brains"
    (bids / "sub-101/ses-1/anat").mkdir(parents=True)
    (deriv / "sub-101/ses-1/anat").mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "whole head", "BIDSVersion": "1.10.0"}))
    sitk.WriteImage(head, str(bids / "sub-101/ses-1/anat/sub-101_ses-1_T2starw.nii.gz"))
    sitk.WriteImage(mask, str(deriv / "sub-101/ses-1/anat/sub-101_ses-1_space-T2starw_desc-brain_mask.nii.gz"))
    model = write_model(root / "results" / "Dataset001_Synth" / "cmbunet", ("T2S",))
    return {"root": root, "valdo": valdo, "whole": root / "whole", "masks": masks, "bids": bids, "deriv": deriv,
            "model": model}


def predict(inp: Path, out: Path, model: Path, *extra: str) -> int:
    return main(["-i", str(inp), "-o", str(out), "-m", str(model), "-npp", "0", *extra])


def read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_the_check_tells_stripped_from_whole_head_images():
    stripped = stripped_images()
    shares = [shell_share(np.nan_to_num(image) != 0) for image, _ in stripped]
    assert max(shares) < 0.1 < MAX_SHELL_SHARE  # measured: 0 whole, at most ~0.07 cropped to the brain
    assert all(unstripped_problem(image, spacing) is None for image, spacing in stripped)
    for image, spacing in stripped[::2]:
        head = unstrip(np.nan_to_num(image))
        assert shell_share(head != 0) > 0.95
        assert unstripped_problem(head, spacing).startswith("does not look skull-stripped: 100% of the outer 5%")
    # a head without background noise, but more than a brain's volume, is found by its volume
    big = np.zeros((200, 200, 100), np.float32)
    big[10:190, 10:190, 5:95] = 1.0
    assert "more than a brain" in unstripped_problem(big, (1.0, 1.0, 1.5))
    # a field of view smaller than a head along every axis is not judged
    assert unstripped_problem(np.ones((4, 4, 4), np.float32), (1.0, 1.0, 1.0)) is None


def test_unstripped_scan_fails_naming_the_file_and_what_to_do(data, tmp_path, capsys):
    before = tree_state(data["whole"])
    out = tmp_path / "out"
    assert predict(data["whole"], out, data["model"]) == 1
    printed = capsys.readouterr().out
    summary = pd.read_csv(out / "summary.csv").set_index("case")
    error = summary.loc["sub-101", "error"]
    assert summary.loc["sub-101", "status"] == "failed"
    assert error.startswith(f"{data['whole'] / 'sub-101' / IMAGE}: does not look skull-stripped")
    assert "--brain-mask" in error and "--allow-unstripped" in error and "T2*-weighted GRE magnitude or SWI" in error
    assert f"failed: sub-101: {data['whole'] / 'sub-101' / IMAGE}: does not look skull-stripped" in printed
    assert not (out / "sub-101_space-T2S_prediction.nii.gz").exists() and tree_state(data["whole"]) == before


def test_brain_mask_makes_the_whole_head_scan_the_stripped_one(data, tmp_path):
    before = tree_state(data["whole"], data["masks"])
    stripped, masked = tmp_path / "stripped", tmp_path / "masked"
    assert predict(data["valdo"], stripped, data["model"]) == 0
    assert predict(data["whole"], masked, data["model"], "--brain-mask", str(data["masks"])) == 0
    assert tree_state(data["whole"], data["masks"]) == before  # the input and the masks are read only
    name = "sub-101_space-T2S_prediction.nii.gz"
    np.testing.assert_array_equal(read(stripped / name), read(masked / name))
    pd.testing.assert_frame_equal(pd.read_csv(stripped / "sub-101_cmbs.csv"), pd.read_csv(masked / "sub-101_cmbs.csv"))
    record = json.loads((masked / "prediction_record.json").read_text())
    assert record["settings"]["brain_mask"] == str(data["masks"].resolve())


def test_masks_change_the_record_and_allow_unstripped_predicts_as_is(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict(data["whole"], out, data["model"], "--brain-mask", str(data["masks"])) == 0
    capsys.readouterr()
    assert predict(data["whole"], out, data["model"], "--allow-unstripped") == 2  # no mask now: other results
    assert "settings.brain_mask:" in capsys.readouterr().err
    assert predict(data["whole"], tmp_path / "as_is", data["model"], "--allow-unstripped") == 0


def test_bids_desc_brain_mask_of_a_session(data, tmp_path):
    out = tmp_path / "derivatives" / "cmbunet"
    assert predict(data["bids"], out, data["model"], "--output-format", "bids", "--brain-mask", str(data["deriv"])) == 0
    summary = pd.read_csv(out / "summary.csv").set_index("case")
    assert summary.loc["sub-101_ses-1", "status"] == "ok"
    assert find_brain_mask(data["deriv"], "sub-101_ses-1").name == "sub-101_ses-1_space-T2starw_desc-brain_mask.nii.gz"
    assert (out / "sub-101/ses-1/anat/sub-101_ses-1_desc-cmb_mask.nii.gz").is_file()


def test_missing_empty_or_misplaced_masks_fail_their_case(data, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    out = tmp_path / "out"
    assert predict(data["whole"], out, data["model"], "--brain-mask", str(masks)) == 1
    error = pd.read_csv(out / "summary.csv").set_index("case").loc["sub-101", "error"]
    assert f"{masks}: no brain mask for case sub-101; expected sub-101.nii.gz" in error
    shifted = sitk.ReadImage(str(data["masks"] / "sub-101.nii.gz"))
    shifted.SetOrigin([o + 5.0 for o in shifted.GetOrigin()])
    sitk.WriteImage(shifted, str(masks / "sub-101.nii.gz"))
    assert predict(data["whole"], tmp_path / "out2", data["model"], "--brain-mask", str(masks)) == 1
    error = pd.read_csv(tmp_path / "out2" / "summary.csv").set_index("case").loc["sub-101", "error"]
    assert error.startswith(f"{masks / 'sub-101.nii.gz'}: brain mask does not lie on the grid of its image: origin")
    assert predict(data["whole"], tmp_path / "out3", data["model"], "--brain-mask", str(tmp_path / "none")) == 2
    shutil.rmtree(masks)
