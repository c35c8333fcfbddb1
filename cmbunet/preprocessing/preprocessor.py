"""Preprocess one case (crop, normalise, resample) and map predictions back to its native geometry.

The order matters: the non-zero mask is computed on the *original* image, before any spline touches it. The
reference implementation cropped after cubic resampling, where ringing leaves tiny non-zero values everywhere,
so its crop silently kept the whole volume. Here the crop, the normalisation mask and the brain mask all come
from the same pre-resampling mask, and image voxels outside the resampled brain mask are set back to exactly 0.
"""

from __future__ import annotations

import functools
import zipfile
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from cmbunet.errors import InputError, PlansMismatchError
from cmbunet.imageio.reader_writer import ImageProperties
from cmbunet.plans.plans_io import load_plans, plans_hash, preprocessing_hash
from cmbunet.plans.schema import Plans
from cmbunet.preprocessing.resampling import (
    compute_new_shape,
    linear_owner,
    map_points_to_new_grid,
    resample_array,
    resample_image,
    resample_mask,
    separate_axis,
    spacing_equal,
)
from cmbunet.utilities.components import component_centres, component_maxima, find_components, label_components
from cmbunet.utilities.file_io import load_json, save_json, save_npz
from cmbunet.utilities.geometry import BoundingBox, bounding_box_to_slice, mask_bbox

#: Smallest standard deviation used for z-scoring, so a constant image does not divide by zero.
MIN_STD = 1e-8


class PreprocessedCase(NamedTuple):
    """One case in the preprocessed space: what :func:`preprocess_case` returns and ``data/CASE.npz`` with
    ``data/CASE.json`` hold. A tuple, so ``data, seg, brain, properties = ...`` reads it too."""

    data: np.ndarray  # (C, X, Y, Z) float32
    seg: np.ndarray | None  # (X, Y, Z) uint8; None when preprocessed without a label (stored as zeros)
    brain: np.ndarray  # (X, Y, Z) bool
    properties: dict[str, Any]  # the case properties of architecture.md


def replace_nonfinite(images: np.ndarray) -> tuple[np.ndarray, int]:
    """Replace NaN/inf by 0 (VALDO images contain NaNs) and return how many voxels were replaced."""
    bad = ~np.isfinite(images)
    count = int(bad.sum())
    if count:
        images = images.copy()
        images[bad] = 0.0
    return images, count


def nonzero_mask(images: np.ndarray) -> np.ndarray:
    """Voxels where any channel is non-zero: the skull-stripped brain, since the background is exactly 0."""
    return np.any(images != 0, axis=0)


def cmbs_outside_box(seg: np.ndarray, bbox: BoundingBox) -> int:
    """How many 26-connected CMBs of a binary label have a voxel outside the half-open ``bbox``.

    The crop box comes from the non-zero image voxels; a CMB labelled beyond it (a label on background, or an
    image masked too tightly) would be cut away silently, so the caller keeps it and reports it."""
    inside = np.zeros(seg.shape, dtype=bool)
    inside[bounding_box_to_slice(bbox)] = True
    if not (seg & ~inside).any():
        return 0
    labels, _ = label_components(seg)
    return int(len(np.unique(labels[seg & ~inside])))


def zscore_foreground(images: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, list[dict[str, float]]]:
    """Z-score each channel over the mask voxels of this case; background becomes exactly 0."""
    out = np.zeros_like(images, dtype=np.float32)
    stats = []
    for c in range(images.shape[0]):
        values = images[c][mask].astype(np.float64)
        mean, std = float(values.mean()), float(values.std())
        out[c][mask] = ((values - mean) / max(std, MIN_STD)).astype(np.float32)
        stats.append({"mean": mean, "std": std})
    return out, stats


def describe_cmbs(seg: np.ndarray) -> list[dict[str, Any]]:
    """Centre of mass, half-open bbox and voxel count of every 26-connected CMB, in one labelling pass."""
    cmbs = find_components(seg)
    return [
        {
            "center": [float(v) for v in ctr],
            "bbox": [[int(a), int(b)] for a, b in box],
            "volume_voxels": int(vol),
        }
        for ctr, box, vol in zip(cmbs.centres, cmbs.boxes(), cmbs.num_voxels)
    ]


def rescue_vanished_components(old_labels: np.ndarray, n: int, new_binary: np.ndarray) -> np.ndarray:
    """Components of ``old_labels`` (``n`` of them) that own no voxel of ``new_binary`` after a linear resampling.

    Returns ``(k, 4)`` int rows ``(component id, x, y, z)``: for every vanished component, the new-grid voxel
    nearest its centre of mass, which the caller sets. Ownership follows :func:`linear_owner`.
    """
    if n == 0:
        return np.zeros((0, 4), dtype=np.int64)
    new_shape = new_binary.shape
    owners = linear_owner(old_labels, np.argwhere(new_binary), new_shape)
    kept = np.zeros(n + 1, dtype=bool)
    kept[owners] = True
    lost = np.flatnonzero(~kept[1:]) + 1
    if not len(lost):
        return np.zeros((0, 4), dtype=np.int64)
    centers = component_centres(old_labels, n)[0][lost - 1]
    target = np.rint(map_points_to_new_grid(centers, old_labels.shape, new_shape)).astype(np.int64)
    target = np.clip(target, 0, np.asarray(new_shape) - 1)
    return np.column_stack([lost, target])


def resample_label(seg: np.ndarray, new_shape: list[int]) -> tuple[np.ndarray, int]:
    """Linear interpolation of the binary label, threshold 0.5, keeping every CMB.

    A CMB smaller than a target voxel can drop below 0.5 everywhere. Such a CMB (a 26-connected component of
    the original label that owns no voxel of the resampled one) keeps the voxel nearest its original centre of
    mass, because losing lesions silently would bias training and evaluation. Returns the label and the number
    of rescued CMBs.
    """
    binary = seg > 0
    if tuple(seg.shape) == tuple(new_shape):
        return binary.astype(np.uint8), 0
    out = resample_mask(binary, new_shape)
    labels, n = label_components(binary)
    rescued = rescue_vanished_components(labels, n, out)
    out[rescued[:, 1], rescued[:, 2], rescued[:, 3]] = True
    return out.astype(np.uint8), int(len(rescued))


def preprocess_case(
    images: np.ndarray,
    props: ImageProperties,
    plans: Plans,
    seg: np.ndarray | None = None,
    case: str = "",
) -> PreprocessedCase:
    """Crop, normalise and resample one case to the plans' target spacing.

    ``images`` is ``(C, X, Y, Z)`` with geometry ``props`` (from :class:`SimpleITKIO`), ``seg`` an optional
    binary ``(X, Y, Z)`` label. Returns the :class:`PreprocessedCase` ``(data float32 (C, X', Y', Z'), seg
    uint8 or None, brain bool, properties)`` where ``properties`` follows the contract in ``architecture.md`` and
    is all that :func:`export_to_native` needs to go back.
    """
    images = np.asarray(images, dtype=np.float32)
    where = case or None
    if images.ndim != 4:
        raise InputError(where, f"expected images of shape (C, X, Y, Z), got {images.shape}")
    if list(images.shape[1:]) != list(props["shape"]):
        raise InputError(where, f"image shape {images.shape[1:]} does not match its geometry {props['shape']}")
    if seg is not None and seg.shape != images.shape[1:]:
        raise InputError(where, f"label shape {seg.shape} does not match image shape {images.shape[1:]}")
    expected_c = int(plans.num_input_channels)
    if images.shape[0] != expected_c:
        raise InputError(where, f"has {images.shape[0]} channel(s); the plans expect {expected_c}")

    images, n_nonfinite = replace_nonfinite(images)
    mask = nonzero_mask(images)
    if not mask.any():
        nan = f" (its {n_nonfinite} NaN/inf voxels count as 0)" if n_nonfinite else ""
        raise InputError(where, f"image is entirely zero{nan} (no brain voxels); is it empty or wrongly masked?")
    bbox = mask_bbox(mask)
    outside = 0 if seg is None else cmbs_outside_box(np.asarray(seg) > 0, bbox)
    if outside:  # a labelled CMB beyond the non-zero box: grow the crop so that no label is cut away
        bbox = mask_bbox(mask | (np.asarray(seg) > 0))
    slicer = bounding_box_to_slice(bbox)
    images = images[(slice(None),) + slicer]
    mask = mask[slicer]
    seg_c = None if seg is None else np.asarray(seg)[slicer] > 0

    data, stats = zscore_foreground(images, mask)
    del images

    spacing = [float(s) for s in props["spacing"]]
    target = [float(s) for s in plans.target_spacing]
    shape_crop = [int(s) for s in mask.shape]
    rs = plans.resampling
    if spacing_equal(spacing, target):
        new_shape, brain, vanished = shape_crop, mask, 0
        seg_out = None if seg_c is None else seg_c.astype(np.uint8)
    else:
        new_shape = compute_new_shape(shape_crop, spacing, target)
        axis = separate_axis(spacing, target, bool(rs.separate_z), float(rs.anisotropy_threshold))
        order, order_z = int(rs.image_order), int(rs.image_order_z)
        data = np.stack([resample_image(ch, new_shape, order, order_z, axis) for ch in data])
        brain = resample_mask(mask, new_shape)
        data[:, ~brain] = 0.0
        seg_out, vanished = (None, 0) if seg_c is None else resample_label(seg_c, new_shape)

    properties: dict[str, Any] = {
        "case": case,
        "original_spacing": spacing,
        "original_origin": [float(v) for v in props["origin"]],
        "original_direction": [float(v) for v in props["direction"]],
        "original_shape": [int(v) for v in props["shape"]],
        "crop_bbox": bbox,
        "shape_after_crop": shape_crop,
        "target_spacing": target,
        "shape_after_resampling": [int(v) for v in new_shape],
        "channel_stats": stats,
        "nonfinite_replaced": n_nonfinite,
        "cmbs": [] if seg_out is None else describe_cmbs(seg_out),
        "vanished_cmbs": int(vanished),
        "cmbs_outside_nonzero_box": int(outside),
    }
    return PreprocessedCase(data.astype(np.float32, copy=False), seg_out, np.asarray(brain, dtype=bool), properties)


def native_geometry(properties: dict[str, Any]) -> ImageProperties:
    """The original image geometry recorded in the properties, for :meth:`SimpleITKIO.write`."""
    return {
        "spacing": list(properties["original_spacing"]),
        "origin": list(properties["original_origin"]),
        "direction": list(properties["original_direction"]),
        "shape": list(properties["original_shape"]),
    }


def export_to_native(probabilities: np.ndarray, properties: dict[str, Any]) -> np.ndarray:
    """Map a preprocessed-space map back to the original ``(X, Y, Z)`` grid; outside the crop it is 0.

    Linear interpolation onto the cropped grid (same edge-aligned convention as preprocessing), then the crop
    is undone by placing it at ``crop_bbox`` in a zero volume of ``original_shape``.
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    expected = tuple(properties["shape_after_resampling"])
    if probabilities.shape != expected:
        raise InputError(
            properties.get("case") or None,
            f"map shape {probabilities.shape} does not match the preprocessed shape {expected}",
        )
    cropped = resample_array(probabilities, properties["shape_after_crop"], order=1)
    out = np.zeros(properties["original_shape"], dtype=np.float32)
    out[bounding_box_to_slice(properties["crop_bbox"])] = cropped
    return out


def export_segmentation(probabilities: np.ndarray, properties: dict[str, Any],
                        threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, int]:
    """Probabilities and binary segmentation on the original grid, keeping every predicted CMB.

    The probability map goes back by :func:`export_to_native` and is thresholded there. A CMB predicted over
    one or two preprocessed voxels can fall below the threshold at every original voxel when the original grid
    is coarser or shifted (linear interpolation lowers a small peak), and would be lost between a confident
    prediction and the written mask. As when the labels were resampled for training, each preprocessed
    component (probability >= ``threshold``) that owns no original foreground voxel keeps the original voxel
    nearest its centre, with the component's highest probability. Returns ``(probabilities, binary uint8,
    number of rescued CMBs)``; ``binary == probabilities >= threshold`` holds everywhere.
    """
    native = np.clip(export_to_native(probabilities, properties), 0.0, 1.0)
    binary = native >= threshold
    pre_binary = np.asarray(probabilities) >= threshold
    if tuple(pre_binary.shape) == tuple(properties["shape_after_crop"]):
        return native, binary.astype(np.uint8), 0
    labels, n = label_components(pre_binary)
    crop = bounding_box_to_slice(properties["crop_bbox"])
    rescued = rescue_vanished_components(labels, n, binary[crop])
    if len(rescued):
        peak = component_maxima(np.asarray(probabilities, dtype=np.float32), labels, n)[rescued[:, 0] - 1]
        idx = tuple(rescued[:, 1 + a] + crop[a].start for a in range(3))
        native[idx] = np.maximum(native[idx], np.asarray(peak, dtype=np.float32))
        binary[idx] = True
    return native, binary.astype(np.uint8), int(len(rescued))


def case_files(preprocessed_dataset_dir: str | Path, case: str) -> tuple[Path, Path]:
    """Paths of ``data/CASE.npz`` and ``data/CASE.json``."""
    folder = Path(preprocessed_dataset_dir) / "data"
    return folder / f"{case}.npz", folder / f"{case}.json"


def save_preprocessed_case(
    preprocessed_dataset_dir: str | Path,
    case: str,
    data: np.ndarray,
    seg: np.ndarray | None,
    brain: np.ndarray,
    properties: dict[str, Any],
) -> None:
    """Write ``CASE.npz`` then ``CASE.json`` atomically; the JSON last, so its presence marks a finished case."""
    npz, js = case_files(preprocessed_dataset_dir, case)
    if seg is None:
        seg = np.zeros(data.shape[1:], dtype=np.uint8)
    save_npz(npz, data=data.astype(np.float32), seg=seg.astype(np.uint8), brain=brain.astype(bool))
    save_json(properties, js)


def load_preprocessed_case(preprocessed_dataset_dir: str | Path, case: str) -> PreprocessedCase:
    """Read ``(data, seg, brain, properties)`` of one preprocessed case."""
    npz, js = case_files(preprocessed_dataset_dir, case)
    for f in (npz, js):
        if not f.is_file():
            raise InputError(f, "preprocessed file missing; run cmbunet_plan_and_preprocess first")
    try:
        with np.load(npz) as z:
            data, seg, brain = z["data"], z["seg"], z["brain"]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # truncated or corrupted
        detail = f"corrupt compressed data: {e}" if isinstance(e, zlib.error) else str(e)
        raise InputError(npz, f"cannot be read as a preprocessed case ({detail}); re-run "
                              "cmbunet_plan_and_preprocess with --clean to preprocess the cases again") from None
    try:
        properties = load_json(js)
    except ValueError as e:
        raise InputError(js, f"cannot be read as JSON ({e}); re-run with --clean") from None
    _check_case_plans(Path(preprocessed_dataset_dir), js, properties)
    return PreprocessedCase(data, seg, brain, properties)


@functools.lru_cache(maxsize=8)
def _plans_hashes_of_file(path: str, mtime_ns: int, size: int) -> tuple[str, str]:
    plans = load_plans(path)
    return preprocessing_hash(plans), plans_hash(plans)


def recorded_hash_matches(properties: Any, pp_hash: str, full_hash: str | None) -> bool:
    """Whether a case's properties were written under plans with preprocessing hash ``pp_hash``: cases record
    ``preprocessing_hash``; older ones only the full ``plans_hash``, accepted when it equals ``full_hash``."""
    if not isinstance(properties, dict):
        return False
    if "preprocessing_hash" in properties:
        return properties["preprocessing_hash"] == pp_hash
    return full_hash is not None and properties.get("plans_hash") == full_hash


def _check_case_plans(preprocessed_dataset_dir: Path, case_json: Path, properties: Any) -> None:
    """Refuse a case preprocessed under other plans than the dataset's current ``plans.json`` (e.g. re-planned
    with ``--no-preprocess``): its spacing or crop would silently disagree with what the plans promise. Cases of
    another plans name lie in ``pp_<preprocessing hash>/data`` and are checked against that hash."""
    if not isinstance(properties, dict) or ("plans_hash" not in properties and "preprocessing_hash" not in properties):
        return
    folder = preprocessed_dataset_dir.name
    if folder.startswith("pp_"):
        expected, full, source = folder[3:], None, str(preprocessed_dataset_dir)
    else:
        plans_file = preprocessed_dataset_dir / "plans.json"
        if not plans_file.is_file():
            return
        st = plans_file.stat()
        expected, full = _plans_hashes_of_file(str(plans_file), st.st_mtime_ns, st.st_size)
        source = str(plans_file)
    if not recorded_hash_matches(properties, expected, full):
        recorded = properties.get("preprocessing_hash", properties.get("plans_hash"))
        raise PlansMismatchError(
            f"{case_json} was preprocessed with plans {recorded} but {source} needs preprocessing {expected}; "
            "re-run cmbunet_plan_and_preprocess (without --no-preprocess) to preprocess the cases again"
        )
