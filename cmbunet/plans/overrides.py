"""``--override dotted.key=VALUE``: change a planned value, re-derive what follows from it, check the result.

Overrides act on the JSON of the plans (the keys a user sees in plans.json) and give back checked
:class:`~cmbunet.plans.schema.Plans`; the overrides applied are recorded in ``plans.overrides``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from cmbunet.errors import CMBUNetError
from cmbunet.plans.schema import STAGES, Plans, validate_plans
from cmbunet.plans.topology import (DISCRIMINATION_EXTRA_VOX, FCN_STRIDE, last_kernel_for_block, needs_separate_z,
                                    nms_size, segmentation_foreground_prior, segmentation_patch_size, tile_size)

#: Keys that are consequences of others: overriding them directly is refused with a pointer to the source.
DERIVED_KEYS = {
    "plans_version": "it is fixed by cmbunet",
    "preset": "re-plan with --preset instead",
    "overrides": "it records the overrides themselves",
    "num_input_channels": "it follows channel_names in dataset.json",
    "cmb_box": "it records the fingerprint's CMB statistics; override screening.block_size instead",
    "rules": "it documents the planning rules",
    "screening.fcn_stride": "the screening FCN has one 2x pool, so its stride is 2",
    "screening.fcn_offset": "it is screening.block_size // 2",
    "screening.network.last_kernel": "it follows screening.block_size and first_kernels",
    "screening.network.in_channels": "it follows channel_names in dataset.json",
    "discrimination.network.in_channels": "it follows channel_names in dataset.json",
    "segmentation.network.in_channels": "it follows channel_names in dataset.json",
}

_BARE_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``dotted.key=JSON`` into key and value; a bare word that is not JSON is taken as a string."""
    if "=" not in item:
        raise CMBUNetError(f"override '{item}' is not of the form dotted.key=VALUE")
    key, text = item.split("=", 1)
    key, text = key.strip(), text.strip()
    if not key:
        raise CMBUNetError(f"override '{item}' has an empty key")
    try:
        return key, json.loads(text)
    except json.JSONDecodeError:
        if _BARE_WORD.match(text):
            return key, text
        raise CMBUNetError(f"override {key}: value '{text}' is neither JSON nor a bare word") from None


def _same_kind(old: Any, new: Any) -> bool:
    """Whether ``new`` may replace ``old``: numbers for numbers, lists for lists, and so on; null is open."""
    if old is None or new is None:
        return True
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    if isinstance(old, (int, float)):
        return isinstance(new, (int, float))
    return isinstance(new, type(old))


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    """Set ``a.b.c`` in the plans' JSON ``tree`` (list items by integer index); raise naming the key if it does not
    exist."""
    parts = key.split(".")
    node: Any = tree
    for i, part in enumerate(parts):
        where = ".".join(parts[: i + 1])
        if isinstance(node, dict):
            if part not in node:
                close = ", ".join(sorted(str(k) for k in node)[:20])
                raise CMBUNetError(f"override {key}: '{where}' does not exist in the plans (available here: {close})")
            if i == len(parts) - 1:
                if not _same_kind(node[part], value):
                    raise CMBUNetError(f"override {key}: expected a value like {json.dumps(node[part])}, got {json.dumps(value)}")
                node[part] = value
                return
            node = node[part]
        elif isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise CMBUNetError(f"override {key}: '{where}' is not an index of a list of length {len(node)}")
            if i == len(parts) - 1:
                if not _same_kind(node[int(part)], value):
                    raise CMBUNetError(f"override {key}: expected a value like {json.dumps(node[int(part)])}, got {json.dumps(value)}")
                node[int(part)] = value
                return
            node = node[int(part)]
        else:
            raise CMBUNetError(f"override {key}: '{'.'.join(parts[:i])}' is a value, not a group of settings")


def _check_overridable(key: str) -> None:
    for derived, why in DERIVED_KEYS.items():
        if key == derived or key.startswith(derived + "."):
            raise CMBUNetError(f"override {key}: cannot be set directly, {why}")
    if key.endswith("_rule") or key.endswith(".rule"):
        raise CMBUNetError(f"override {key}: rules describe how a value was derived and cannot be set")


def _touched(explicit: set[str], key: str) -> bool:
    """True when an override set ``key``, one of its parents or one of its children."""
    return any(e == key or e.startswith(key + ".") or key.startswith(e + ".") for e in explicit)


def rederive(p: dict, explicit: set[str]) -> None:
    """Recompute, in place, the values of the plans JSON ``p`` that depend on overridden ones (unless also
    overridden); raise when the screening block cannot be mapped to 1x1x1.

    Block size and first kernels are the source of truth for the screening FCN: ``last_kernel``,
    ``fcn_offset`` follow always; the discrimination block, segmentation patch, NMS size and tile size follow
    the screening block unless given explicitly. ``separate_z`` follows the target spacing.
    """
    scr, disc, seg, inf = p["screening"], p["discrimination"], p["segmentation"], p["inference"]
    n_in = int(p["num_input_channels"])
    for stage in STAGES:
        p[stage]["network"]["in_channels"] = n_in
    block, first = scr["block_size"], scr["network"]["first_kernels"]
    scr["network"]["last_kernel"] = last_kernel_for_block(block, first)
    scr["fcn_stride"] = [FCN_STRIDE] * 3
    scr["fcn_offset"] = [int(b) // 2 for b in block]
    screening_changed = _touched(explicit, "screening.block_size") or _touched(explicit, "screening.network.first_kernels")
    if screening_changed:
        if not _touched(explicit, "discrimination.block_size"):
            disc["block_size"] = [int(b) + DISCRIMINATION_EXTRA_VOX for b in block]
        if not _touched(explicit, "discrimination.network.first_kernels"):
            disc["network"]["first_kernels"] = list(first)
    if _touched(explicit, "screening.block_size"):
        if not _touched(explicit, "segmentation.patch_size"):
            seg["patch_size"] = segmentation_patch_size(block, len(seg["network"]["features"]))
        if not _touched(explicit, "inference.nms_size_vox"):
            inf["nms_size_vox"] = nms_size(block)
        if not _touched(explicit, "inference.tile_size"):
            inf["tile_size"] = tile_size(block)
    median_vox = p["cmb_box"].get("median_cmb_voxels")  # not measured by the planners of older plans files
    patch_changed = _touched(explicit, "segmentation.patch_size") or _touched(explicit, "screening.block_size")
    if median_vox is not None and patch_changed and not _touched(explicit, "segmentation.network.foreground_prior"):
        seg["network"]["foreground_prior"] = segmentation_foreground_prior(median_vox, seg["patch_size"])
    if _touched(explicit, "target_spacing") and not _touched(explicit, "resampling.separate_z"):
        p["resampling"]["separate_z"] = needs_separate_z(p["target_spacing"], p["resampling"]["anisotropy_threshold"])


def apply_overrides(plans: Plans, overrides: list[str] | None) -> Plans:
    """``plans`` with ``dotted.key=JSON`` overrides applied and dependent values re-derived.

    Values that follow from an overridden one (e.g. the last screening kernel from the block size) are
    recomputed unless also overridden; the result is checked (types and ranges, then consistency), and the
    overrides are recorded in ``overrides``.
    """
    if not overrides:
        return plans
    out = plans.to_dict()
    explicit: set[str] = set()
    for item in overrides:
        key, value = parse_override(item)
        _check_overridable(key)
        _set_dotted(out, key, value)
        explicit.add(re.sub(r"(\.-?\d+)+$", "", key))  # an item of a list counts as the list
    where = f"overrides {list(overrides)}"
    validate_plans(out, where)
    out["overrides"] = list(plans.overrides) + [str(o) for o in overrides]
    try:
        rederive(out, explicit)
        return Plans.from_dict(out)
    except CMBUNetError as e:
        raise CMBUNetError(f"{where} give unusable plans: {e}") from None
