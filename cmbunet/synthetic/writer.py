"""Write synthetic cases to disk in the nnU-Net raw layout or in the VALDO challenge layout, with a truth file."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from cmbunet.errors import InputError
from cmbunet.imageio import SimpleITKIO
from cmbunet.synthetic.generator import ANATOMIES, MODALITIES, SIZES, SyntheticCase, synthesize_case
from cmbunet.synthetic.sites import parse_sites
from cmbunet.utilities.case_names import channel_file_name
from cmbunet.utilities.file_io import save_json

LAYOUTS = ("raw", "valdo")
TRUTH_FILE = "synthetic_truth.json"
#: Share of VALDO-layout cases that carry NaN voxels outside the brain, as some real VALDO images do.
NAN_CASE_FRACTION = 0.15


def case_seed(seed: int, index: int) -> int:
    """Independent, reproducible seed of case ``index`` of a dataset generated with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def case_ids(layout: str, num_cases: int, num_test_cases: int) -> tuple[list[str], list[str]]:
    """Training and test case ids: ``synth_000``... (raw) or ``sub-101``... (valdo), test ids continue the count."""
    n = num_cases + num_test_cases
    ids = [f"synth_{i:03d}" for i in range(n)] if layout == "raw" else [f"sub-{101 + i}" for i in range(n)]
    return ids[:num_cases], ids[num_cases:]


def _nan_cases(seed: int, n: int) -> set[int]:
    """Indices of the VALDO cases that get NaNs: a few, at least one when there are three or more cases."""
    k = int(round(NAN_CASE_FRACTION * n)) or (1 if n >= 3 else 0)
    rng = np.random.default_rng([int(seed), 7919])
    return set(rng.choice(n, size=k, replace=False).tolist()) if k else set()


def _with_nans(img: np.ndarray, brain: np.ndarray, seed: int) -> np.ndarray:
    """Set a slab of background (outside the brain) to NaN, like failed masking at the edge of the field of view."""
    rng = np.random.default_rng([int(seed), 104729])
    out = img.copy()
    ax = int(rng.integers(3))
    k = max(1, img.shape[ax] // 6)
    sl = [slice(None)] * 3
    sl[ax] = slice(0, k) if rng.random() < 0.5 else slice(img.shape[ax] - k, img.shape[ax])
    region = np.zeros(img.shape, dtype=bool)
    region[tuple(sl)] = True
    out[region & ~brain] = np.nan
    return out


def _truth_entry(case: SyntheticCase, split: str, index: int) -> dict:
    return {"split": split, "index": index, "seed": case.meta["seed"], "spacing": case.props["spacing"],
            "shape": case.props["shape"], "site": case.meta["site"], "anatomy": case.meta["anatomy"],
            "world": case.meta["world"], "slice_profile": case.meta["slice_profile"], "num_cmbs": len(case.cmbs),
            "cmbs": case.cmbs, "mimics": case.mimics}


def _write_raw_case(case: SyntheticCase, out: Path, case_id: str, split: str, modalities: Sequence[str]) -> None:
    img_dir, lab_dir = ("imagesTr", "labelsTr") if split == "train" else ("imagesTs", "labelsTs")
    for ch, m in enumerate(modalities):
        SimpleITKIO.write(case.images[m], out / img_dir / channel_file_name(case_id, ch, ".nii.gz"), case.props)
    SimpleITKIO.write(case.label, out / lab_dir / f"{case_id}.nii.gz", case.props)


def _write_valdo_case(case: SyntheticCase, folder: Path, case_id: str, nan: bool) -> None:
    sub = folder / case_id
    for m in MODALITIES:
        img = case.images[m]
        if nan:
            img = _with_nans(img, case.brain, case.meta["seed"])
        SimpleITKIO.write(img, sub / f"{case_id}_space-T2S_desc-masked_{m}.nii.gz", case.props)
    SimpleITKIO.write(case.label, sub / f"{case_id}_space-T2S_CMB.nii.gz", case.props)


@dataclass(frozen=True)
class CaseRecipe:
    """What every case of a dataset is drawn as: the keywords of
    :func:`~cmbunet.synthetic.generator.synthesize_case` that are not per case (seed, microbleed count)."""

    size: str = "small"
    modalities: Sequence[str] = ("T2S",)
    anatomy: str = "auto"
    sites: Sequence[str] | str | None = None
    world: str = "wide"

    def checked(self, out: Path) -> CaseRecipe:
        """This recipe with its sites resolved (``all``: every site); raise :class:`InputError` naming ``out``."""
        modalities = tuple(self.modalities)
        bad = [m for m in modalities if m not in MODALITIES] + (["(none)"] if not modalities else [])
        if bad or len(set(modalities)) != len(modalities):
            raise InputError(out, f"modalities must be distinct names among {', '.join(MODALITIES)}; got "
                                  f"{list(modalities)}")
        if self.anatomy not in ANATOMIES:
            raise InputError(out, f"unknown anatomy {self.anatomy!r}; choose one of {', '.join(ANATOMIES)}")
        try:
            sites = None if self.sites is None else parse_sites(self.sites)
        except ValueError as e:
            raise InputError(out, str(e)) from None
        return replace(self, modalities=modalities, sites=sites)

    def synthesize(self, seed: int, modalities: Sequence[str]) -> SyntheticCase:
        return synthesize_case(seed, size=self.size, modalities=modalities, anatomy=self.anatomy, sites=self.sites,
                               world=self.world)


def _check_dataset(out: Path, layout: str, num_cases: int, num_test_cases: int, recipe: CaseRecipe) -> CaseRecipe:
    if layout not in LAYOUTS:
        raise InputError(out, f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if recipe.size not in SIZES:
        raise InputError(out, f"unknown size {recipe.size!r}; choose one of {', '.join(SIZES)}")
    if num_cases < 0 or num_test_cases < 0 or num_cases + num_test_cases == 0:
        raise InputError(out, "need at least one case (training + test), and no negative counts")
    recipe = recipe.checked(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    return recipe


def write_dataset(out_dir: str | Path, num_cases: int, layout: str = "raw", seed: int = 0, num_test_cases: int = 0,
                  dataset_name: str | None = None, **recipe: Any) -> Path:
    """Generate and write a dataset; returns the folder written (``out_dir``).

    ``raw``: ``out_dir`` is the dataset folder (dataset.json, imagesTr/labelsTr, imagesTs/labelsTs).
    ``valdo``: ``out_dir/sub-XXX/...`` with all three contrasts; test subjects go to the sibling ``<out_dir>_test``.
    Either way ``out_dir/synthetic_truth.json`` lists every microbleed and mimic of every case, with its site.
    ``recipe``: the fields of :class:`CaseRecipe` (``size``, ``modalities``, ``anatomy``, ``sites``, ``world``),
    passed to :func:`~cmbunet.synthetic.generator.synthesize_case`.
    """
    out = Path(out_dir)
    case_recipe = _check_dataset(out, layout, num_cases, num_test_cases, CaseRecipe(**recipe))
    modalities = case_recipe.modalities
    render = MODALITIES if layout == "valdo" else modalities
    train_ids, test_ids = case_ids(layout, num_cases, num_test_cases)
    test_dir = out.parent / f"{out.name}_test"
    nan_idx = _nan_cases(seed, num_cases + num_test_cases) if layout == "valdo" else set()
    truth: dict = {"generator": {"seed": seed, "size": case_recipe.size, "layout": layout, "modalities": list(render),
                                 "anatomy": case_recipe.anatomy,
                                 "sites": None if case_recipe.sites is None else list(case_recipe.sites),
                                 "coordinates": "center_voxel is (x, y, z) in voxel indices; center_world_mm "
                                                "is the physical point (origin + direction * index * spacing)"},
                   "cases": {}}
    for i, cid in enumerate(tqdm(train_ids + test_ids, desc="synthesising", unit="case", disable=None)):
        split = "train" if i < num_cases else "test"
        case = case_recipe.synthesize(case_seed(seed, i), render)
        if layout == "raw":
            _write_raw_case(case, out, cid, split, modalities)
        else:
            _write_valdo_case(case, out if split == "train" else test_dir, cid, nan=i in nan_idx)
        truth["cases"][cid] = _truth_entry(case, split, i)
        truth["cases"][cid]["has_nan"] = i in nan_idx
    if layout == "raw":
        save_json({"name": dataset_name or out.name, "description": "synthetic T2*-weighted MRI with cerebral microbleeds",
                   "channel_names": {str(i): m for i, m in enumerate(modalities)},
                   "labels": {"background": 0, "CMB": 1}, "numTraining": num_cases, "numTest": num_test_cases,
                   "file_ending": ".nii.gz"}, out / "dataset.json")
    out.mkdir(parents=True, exist_ok=True)
    save_json(truth, out / TRUTH_FILE)
    if layout == "valdo" and test_ids:
        save_json({"generator": truth["generator"], "cases": {c: truth["cases"][c] for c in test_ids}}, test_dir / TRUTH_FILE)
    return out
