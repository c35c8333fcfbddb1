"""Dataset fingerprint: what the planner needs to know about a raw dataset, measured once.

Per case: spacing, shape, shape after cropping to the non-zero region, number of CMBs. Per channel:
foreground intensity statistics from voxels sampled evenly over the cases (nnU-Net style; foreground here is
the non-zero region, i.e. the skull-stripped brain, which is what cmbunet z-scores). Per CMB (26-connected
component of the binarised label): size, bounding-box extent in voxels and mm, centre. The CMB extents are
what sizes the screening block.

Non-finite voxels (VALDO images contain NaNs) are set to 0 and so count as background.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from cmbunet.dataset.raw_dataset import binarise_label, list_training_cases, load_dataset_json
from cmbunet.errors import InputError
from cmbunet.imageio import SimpleITKIO, geometry_mismatch
from cmbunet.utilities.components import find_components
from cmbunet.utilities.file_io import load_json_input, save_json
from cmbunet.utilities.geometry import mask_bbox
from cmbunet.utilities.pools import worker_pool

FINGERPRINT_VERSION = 1


def cmb_components(cmb_mask: np.ndarray, spacing: Sequence[float]) -> list[dict]:
    """One record per 26-connected CMB: volume, bounding box, extent (voxels and mm), centre of mass (voxels)."""
    cmbs = find_components(cmb_mask)
    sp = np.asarray(spacing, dtype=float)
    boxes = cmbs.boxes()
    extents = boxes[:, :, 1] - boxes[:, :, 0]
    voxel_mm3 = float(np.prod(sp))
    return [
        {
            "volume_vox": int(volume),
            "volume_mm3": float(volume * voxel_mm3),
            "bbox": box.tolist(),
            "extent_vox": extent.tolist(),
            "extent_mm": (extent * sp).tolist(),
            "center_vox": centre.tolist(),
        }
        for volume, box, extent, centre in zip(cmbs.num_voxels, boxes, extents, cmbs.centres)
    ]


def case_fingerprint(case: str, images: Sequence[Path], label: Path, num_samples: int, seed: int) -> dict:
    """Measure one case; returns its record, its CMBs and up to ``num_samples`` foreground intensities per channel.

    The sample is a uniform draw without replacement from the case's foreground, seeded by ``seed`` and the
    case id, so the fingerprint does not depend on the number of worker processes.
    """
    data, props = SimpleITKIO.read_images(images)
    seg, seg_props = SimpleITKIO.read_seg(label)
    problem = geometry_mismatch(props, seg_props)
    if problem:
        raise InputError(label, f"label geometry does not match its image {images[0]}: {problem}")
    finite = np.isfinite(data)
    nonfinite = int(data.size - np.count_nonzero(finite))
    if nonfinite:
        data = np.where(finite, data, np.float32(0))
    brain = np.any(data != 0, axis=0)
    bbox = mask_bbox(brain)
    fg_index = np.flatnonzero(brain)
    rng = np.random.default_rng([seed, *case.encode()])
    take = min(len(fg_index), max(0, int(num_samples)))
    chosen = np.sort(rng.choice(fg_index, size=take, replace=False)) if take < len(fg_index) else fg_index
    samples = data.reshape(data.shape[0], -1)[:, chosen]
    cmbs = cmb_components(binarise_label(seg), props["spacing"])
    for c in cmbs:
        c["case"] = case
    record = {
        "case": case,
        "spacing": [float(s) for s in props["spacing"]],
        "shape": [int(s) for s in props["shape"]],
        "crop_bbox": bbox,
        "shape_after_crop": [int(b - a) for a, b in bbox],
        "foreground_voxels": int(len(fg_index)),
        "nonfinite_voxels": nonfinite,
        "num_cmbs": len(cmbs),
    }
    return {"record": record, "cmbs": cmbs, "samples": samples.astype(np.float32, copy=False)}


def _case_fingerprint_star(args: tuple) -> dict:
    return case_fingerprint(*args)


def intensity_statistics(samples: np.ndarray) -> dict:
    """Mean, std, median, min, max and 0.5/99.5 percentiles of one channel's foreground samples."""
    if samples.size == 0:
        return {"mean": None, "std": None, "median": None, "min": None, "max": None,
                "percentile_00_5": None, "percentile_99_5": None, "num_samples": 0}
    s = samples.astype(np.float64, copy=False)
    p005, p50, p995 = np.percentile(s, [0.5, 50.0, 99.5])
    return {"mean": float(s.mean()), "std": float(s.std()), "median": float(p50), "min": float(s.min()),
            "max": float(s.max()), "percentile_00_5": float(p005), "percentile_99_5": float(p995),
            "num_samples": int(s.size)}


def summarise(records: list[dict], cmbs: list[dict]) -> dict:
    """Dataset-level numbers a user checks first: CMB counts, cases with CMBs, median spacing and size."""
    spacings = np.array([r["spacing"] for r in records], dtype=float)
    crops = np.array([r["shape_after_crop"] for r in records], dtype=float)
    volumes = np.array([c["volume_mm3"] for c in cmbs], dtype=float)
    return {
        "num_cases": len(records),
        "cmbs_per_case": {r["case"]: r["num_cmbs"] for r in records},
        "total_cmbs": len(cmbs),
        "cases_with_cmbs": int(sum(r["num_cmbs"] > 0 for r in records)),
        "median_spacing": np.median(spacings, axis=0).tolist(),
        "median_shape_after_crop": np.median(crops, axis=0).tolist(),
        "median_cmb_volume_mm3": float(np.median(volumes)) if len(volumes) else None,
        "nonfinite_voxels": int(sum(r["nonfinite_voxels"] for r in records)),
    }


def extract_fingerprint(
    raw_dir: str | Path,
    num_processes: int = 1,
    max_foreground_samples: int = 10**8,
    seed: int = 0,
) -> dict:
    """Fingerprint every training case of a raw dataset (``imagesTr``/``labelsTr``)."""
    raw_dir = Path(raw_dir)
    dataset_json = load_dataset_json(raw_dir)
    cases = list_training_cases(raw_dir, dataset_json)
    if not cases:
        raise InputError(raw_dir / "imagesTr", "contains no training case")
    per_case = int(max_foreground_samples) // len(cases)
    jobs = [(case, files["images"], files["label"], per_case, seed) for case, files in cases.items()]
    bar = {"total": len(jobs), "desc": "fingerprint", "unit": "case", "disable": None}
    if num_processes > 1 and len(jobs) > 1:
        with worker_pool(min(num_processes, len(jobs)), "spawn") as pool:
            results = list(tqdm(pool.imap(_case_fingerprint_star, jobs), **bar))
    else:
        results = [case_fingerprint(*job) for job in tqdm(jobs, **bar)]
    records = [r["record"] for r in results]
    cmbs = [c for r in results for c in r["cmbs"]]
    channel_names = {str(k): v for k, v in dataset_json["channel_names"].items()}
    intensities = {
        ch: intensity_statistics(np.concatenate([r["samples"][i] for r in results]))
        for i, ch in enumerate(sorted(channel_names, key=int))
    }
    return {
        "fingerprint_version": FINGERPRINT_VERSION,
        "channel_names": channel_names,
        "foreground_definition": "voxels non-zero in any channel (non-finite values count as 0)",
        "max_foreground_samples": int(max_foreground_samples),
        "seed": int(seed),
        "summary": summarise(records, cmbs),
        "foreground_intensity_properties_per_channel": intensities,
        "cases": records,
        "cmbs": cmbs,
    }


def save_fingerprint(fp: dict, path: str | Path) -> None:
    """Write the fingerprint atomically as JSON."""
    save_json(fp, path)


def load_fingerprint(path: str | Path) -> dict:
    """Read a fingerprint written by :func:`save_fingerprint`; raise :class:`InputError` naming the file if unusable."""
    path = Path(path)
    fp = load_json_input(path, "fingerprint file does not exist; run cmbunet_plan_and_preprocess")
    if not isinstance(fp, dict) or fp.get("fingerprint_version") != FINGERPRINT_VERSION or "cases" not in fp:
        raise InputError(path, f"is not a cmbunet fingerprint of version {FINGERPRINT_VERSION}; re-run planning")
    return fp
