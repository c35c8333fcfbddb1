"""The plans as typed, frozen objects: one dataclass per section of ``plans.json``, every value checked once.

``plans.json`` stays the file format and the input of the plans hash; :class:`Plans` is how code reads it.
``Plans.from_dict(d)`` checks every value (type and range with the check named by its field, unknown keys, then
the consistency of the network sizes) and names the offending key; ``Plans.from_dict(d).to_dict() == d``.
Readers take the typed section they need (``plans.screening.block_size``, ``plans.augmentation``,
``plans.screening_schedule(device)``) and use it as it is; the planner is the one source of planned values, and no
reader has defaults of its own.

**Older plans files.** Keys added to the planner after ``plans_version`` 1 first shipped may be absent from a
plans file. :data:`FILLED_FOR_OLDER_PLANS` lists them with the value that reproduces what such a file meant
(the behaviour of the cmbunet that wrote it); :meth:`Plans.from_dict` fills them in, in this one place, and
records them in ``Plans.filled``. :meth:`Plans.to_dict` leaves filled keys out again, so an older file is saved
and hashed exactly as it was read, and its checkpoints and preprocessed data stay valid.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Union

from cmbunet.errors import CMBUNetError, InputError, InvalidValueError
from cmbunet.plans.section import Section, as_json, build, leaf, subsection, unplanned, value_problems
from cmbunet.plans.topology import FCN_STRIDE, discrimination_feature_size, last_kernel_for_block
from cmbunet.plans.validation import (boolean, channel_names, choice, integer, listing, number, optional, proportions,
                                      raise_problems, string, text, text_table, triple)

STAGES = ("screening", "discrimination", "segmentation")
#: ``plans["training"]`` holds one schedule per stage for each kind of device.
DEVICE_KINDS = ("gpu", "cpu")
PLANS_VERSION = 1

#: Keys absent from plans files written before they existed, and the value that means what those files meant.
FILLED_FOR_OLDER_PLANS: dict[str, Any] = {
    "augmentation.rotation_probability": 0.5,  # always 0.5 before the planner wrote it
    "augmentation.intensity": None,  # intensity augmentation off
    "segmentation.network.foreground_prior": 0.01,  # the U-Net output started at a generic 1%
    "cmb_box.median_cmb_voxels": None,  # not measured
    **{f"training.{d}.screening.mining_cases": None for d in DEVICE_KINDS},  # every mining pass screened all cases
    **{f"training.{d}.screening.mining_keep": "all" for d in DEVICE_KINDS},  # mined FPs were all kept
    **{f"training.{d}.discrimination.fp_sampling": "uniform" for d in DEVICE_KINDS},  # FPs drawn evenly
    "inference.discrimination_mirror": False,  # no test-time mirroring
    "inference.shape_max_elongation": None,  # no shape rule
    "inference.shape_max_diameter_mm": None,
    "inference.shape_round_elongation": None,  # no lower threshold for round spots
    "inference.shape_round_threshold": 0.5,
    "inference.unsegmented_spot_max_diameter_mm": None,  # the U-Net alone decided what was written
    "inference.components_need_candidate": False,  # every component the U-Net segmented was written
    "inference.location_max_csf_share": None,  # where a spot lies was not looked at
    "inference.shape_min_blob_ratio": None,  # how the spot curves was not looked at
    "inference.shape_max_inplane_elongation": None,  # the spot's shape within its slice was not looked at
}

_SIZE = triple(integer(1))


# ------------------------------------------------------------------------------------------------ sections
@dataclass(frozen=True)
class Normalization(Section):
    PREFIX = "normalization"
    scheme: str = leaf(choice("zscore_foreground_per_case"))
    background_value: float = leaf(number())


@dataclass(frozen=True)
class Resampling(Section):
    PREFIX = "resampling"
    image_order: int = leaf(integer(0, 5))
    image_order_z: int = leaf(integer(0, 5))
    separate_z: bool = leaf(boolean)
    anisotropy_threshold: float = leaf(number(1))
    label_rule: str = leaf(text)


@dataclass(frozen=True)
class CMBBox(Section):
    """What the planner measured of the CMBs (a record; nothing reads it but the overrides' re-derivation)."""
    PREFIX = "cmb_box"
    quantile: float = leaf(number(0, 1, lo_open=True))
    box_vox: tuple[int, int, int] = leaf(triple(integer(0)))
    num_cmbs: int = leaf(integer(0))
    extent_vox: tuple[int, int, int] = leaf(triple(integer(0)))
    coverage: float = leaf(number(0, 1))
    context_vox: int = leaf(integer(0))
    median_cmb_voxels: float | None = leaf(optional(number(0)))
    rule: str = leaf(text)


@dataclass(frozen=True)
class NetworkSection(Section):
    """What every stage network's section starts with: its input channels and the features of each level."""
    in_channels: int = leaf(integer(1))
    features: tuple[int, ...] = leaf(listing(integer(1), min_length=1))


@dataclass(frozen=True)
class BlockStage(Section):
    """A stage that classifies blocks (screening, discrimination): its section starts with the block size."""
    block_size: tuple[int, int, int] = leaf(_SIZE)

    @property
    def input_size(self) -> tuple[int, int, int]:
        """The block the network classifies."""
        return self.block_size


@dataclass(frozen=True)
class ScreeningNetwork(NetworkSection):
    PREFIX = "screening.network"
    first_kernels: tuple[int, int, int] = leaf(_SIZE)
    last_kernel: tuple[int, int, int] = leaf(_SIZE)
    num_classes: int = leaf(integer(2, 2))
    negative_slope: float = leaf(number(0))


@dataclass(frozen=True)
class ScreeningConfig(BlockStage):
    PREFIX = "screening"
    fcn_stride: tuple[int, int, int] = leaf(_SIZE)
    fcn_offset: tuple[int, int, int] = leaf(triple(integer(0)))
    network: ScreeningNetwork = subsection(ScreeningNetwork)


@dataclass(frozen=True)
class DiscriminationNetwork(NetworkSection):
    PREFIX = "discrimination.network"
    first_kernels: tuple[int, int, int] = leaf(_SIZE)
    fc_features: int = leaf(integer(1))
    dropout: float = leaf(number(0, 1, hi_open=True))
    num_classes: int = leaf(integer(2, 2))
    negative_slope: float = leaf(number(0))


@dataclass(frozen=True)
class DiscriminationConfig(BlockStage):
    PREFIX = "discrimination"
    network: DiscriminationNetwork = subsection(DiscriminationNetwork)


@dataclass(frozen=True)
class SegmentationNetwork(NetworkSection):
    PREFIX = "segmentation.network"
    num_classes: int = leaf(integer(2, 2))
    negative_slope: float = leaf(number(0))
    foreground_prior: float = leaf(number(0, 1, lo_open=True, hi_open=True))


@dataclass(frozen=True)
class SegmentationConfig(Section):
    PREFIX = "segmentation"
    patch_size: tuple[int, int, int] = leaf(_SIZE)
    network: SegmentationNetwork = subsection(SegmentationNetwork)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return self.patch_size


StageConfig = Union[ScreeningConfig, DiscriminationConfig, SegmentationConfig]

Range = tuple[float, float]
_RANGE = listing(number(0), length=2)
_PROBABILITY = number(0, 1)


@dataclass(frozen=True)
class Intensity(Section):
    """``augmentation.intensity``: each transform's range (a pair of numbers >= 0; per axis for the zoom) and its
    per-patch probability (:mod:`cmbunet.training.intensity_augmentation` applies them)."""
    PREFIX = "augmentation.intensity"
    low_resolution_zoom: tuple[Range, Range, Range] = leaf(triple(_RANGE))
    low_resolution_probability: float = leaf(_PROBABILITY)
    blur_sigma: Range = leaf(_RANGE)
    blur_probability: float = leaf(_PROBABILITY)
    noise_variance: Range = leaf(_RANGE)
    noise_probability: float = leaf(_PROBABILITY)
    brightness: Range = leaf(_RANGE)
    brightness_probability: float = leaf(_PROBABILITY)
    contrast: Range = leaf(_RANGE)
    contrast_probability: float = leaf(_PROBABILITY)
    gamma: Range = leaf(_RANGE)
    gamma_probability: float = leaf(_PROBABILITY)


@dataclass(frozen=True)
class Augmentation(Section):
    PREFIX = "augmentation"
    max_translation_vox: int = leaf(integer(0))
    max_rotation_deg: float = leaf(number(0, 180))
    flip_axes: tuple[int, ...] = leaf(listing(integer(0, 2)))
    flip_probability: float = leaf(number(0, 1))
    rotation_probability: float = leaf(number(0, 1))
    #: None: off (plans written before intensity augmentation existed)
    intensity: Intensity | None = subsection(Intensity, nullable=True)


@dataclass(frozen=True)
class Schedule(Section):
    """One stage's training schedule on one kind of device."""
    PREFIX = "training.<device>.<stage>"
    epochs: int = leaf(integer(1))
    samples_per_epoch: int = leaf(integer(1))
    batch_size: int = leaf(integer(1))
    optimizer: str = leaf(choice("sgd", "adam"))
    lr: float = leaf(number(0, lo_open=True))
    momentum: float = leaf(number(0, 1))
    nesterov: bool = leaf(boolean)
    weight_decay: float = leaf(number(0))
    loss: str = leaf(choice("weighted_ce", "ce", "dice", "dice_ce"))
    class_weights: tuple[float, float] | None = leaf(optional(listing(number(0), length=2)))
    lr_schedule: str = leaf(choice("poly"))
    poly_exponent: float = leaf(number(0))
    proportions: dict[str, float] = leaf(proportions)
    val_samples: int = leaf(integer(1))


@dataclass(frozen=True)
class ScreeningSchedule(Schedule):
    """The screening schedule also says when and how false positives are mined."""
    PREFIX = "training.<device>.screening"
    mining_epochs: tuple[int, ...] = leaf(listing(integer(0)))
    mining_threshold: float = leaf(number(0, 1))
    mining_cases: int | None = leaf(optional(integer(1)))  # None: every pass screens all cases
    mining_keep: str = leaf(choice("all", "hard"))


@dataclass(frozen=True)
class DiscriminationSchedule(Schedule):
    """The discrimination schedule also says how its false positives are drawn."""
    PREFIX = "training.<device>.discrimination"
    #: uniform; candidates: mostly those the final screening model keeps at inference; hard: in proportion to the
    #: current CMB probability (cmbunet.training.hard_sampling)
    fp_sampling: str = leaf(choice("uniform", "candidates", "hard"))


@dataclass(frozen=True)
class DeviceSchedules(Section):
    PREFIX = "training.<device>"
    screening: ScreeningSchedule = subsection(ScreeningSchedule)
    discrimination: DiscriminationSchedule = subsection(DiscriminationSchedule)
    segmentation: Schedule = subsection(Schedule)

    def stage(self, name: str) -> Schedule:
        """The schedule of stage ``name`` (the fields give each stage's own schedule type)."""
        return {"screening": self.screening, "discrimination": self.discrimination,
                "segmentation": self.segmentation}[name]


@dataclass(frozen=True)
class Training(Section):
    PREFIX = "training"
    gpu: DeviceSchedules = subsection(DeviceSchedules)
    cpu: DeviceSchedules = subsection(DeviceSchedules)

    def of_kind(self, kind: str) -> DeviceSchedules:
        """The schedules of one of :data:`DEVICE_KINDS` (see :func:`device_kind`)."""
        return self.gpu if kind == "gpu" else self.cpu


@dataclass(frozen=True)
class InferenceSettings(Section):
    """``plans["inference"]``, and the settings prediction runs with (see :meth:`merged`)."""
    PREFIX = "inference"
    screening_threshold: float = leaf(number(0, 1))
    nms_size_vox: tuple[int, int, int] = leaf(_SIZE)
    max_candidates: int = leaf(integer(1))
    discrimination_threshold: float = leaf(number(0, 1))
    discrimination_shift_vox: int = leaf(integer(0))
    discrimination_aggregate: str = leaf(choice("max", "mean"))
    discrimination_mirror: bool = leaf(boolean)  # also score every block mirrored along the flip axes
    #: a kept candidate whose dark spot is longer than this many times its width is dropped (None: no limit)
    shape_max_elongation: float | None = leaf(optional(number(1)))
    #: ... or whose dark spot is wider than this ball-equivalent diameter in mm (None: no limit)
    shape_max_diameter_mm: float | None = leaf(optional(number(0, lo_open=True)))
    #: a spot at most this elongated (and within the diameter limit) is round: kept above shape_round_threshold
    shape_round_elongation: float | None = leaf(optional(number(1)))
    shape_round_threshold: float = leaf(number(0, 1))
    #: a kept candidate whose surroundings are more than this share CSF or outside the brain is dropped, round or
    #: not: calcifications of the choroid plexus, pineal and falx lie in CSF, microbleeds in parenchyma (None: no
    #: limit; 1 drops nothing)
    location_max_csf_share: float | None = leaf(optional(number(0, 1)))
    #: a kept candidate whose dark spot curves less like a ball than this share of what a small round microbleed
    #: shows on the scan's voxels (smallest over largest Hessian eigenvalue) is dropped, round or not: veins seen
    #: end-on or cut short by thick slices are tubes (None: no limit; 0 drops only saddles and lines)
    shape_min_blob_ratio: float | None = leaf(optional(number(hi=1)))
    #: a kept candidate whose dark spot, on the slice that holds most of it, is longer than this many times its
    #: width is dropped, round or not: a vein crossing a thick slice is a streak within it (None: no limit)
    shape_max_inplane_elongation: float | None = leaf(optional(number(1)))
    #: a kept candidate the U-Net leaves empty is written as its dark spot when the spot is at most this wide (mm);
    #: None: only what the U-Net segments is written
    unsegmented_spot_max_diameter_mm: float | None = leaf(optional(number(0)))
    #: write only the segmented components within two voxels of a kept candidate's centre
    components_need_candidate: bool = leaf(boolean)
    segmentation_threshold: float = leaf(number(0, 1, lo_open=True))
    tile_size: tuple[int, int, int] = leaf(_SIZE)
    #: not planned: set by inference_settings.json or the command line; None keeps every component
    min_component_voxels: int | None = unplanned(integer(0))

    def merged(self, changes: Mapping[str, Any], where: str | Path | None = None) -> InferenceSettings:
        """These settings with ``changes`` (a subset of :data:`SETTING_KEYS`) checked and applied."""
        validate_settings(changes, where)
        return InferenceSettings.from_dict({**self.to_dict(), **changes}, where)


#: Settings that inference_settings.json and the command line may change (the rest of the plans may not).
SETTING_KEYS = tuple(f.name for f in fields(InferenceSettings))


def settings_problems(settings: Mapping[str, Any]) -> list[str]:
    """``key = value: problem`` for every given inference setting of the wrong type or out of range."""
    checks = {f.name: f.metadata["check"] for f in fields(InferenceSettings)}
    return [f"{k} = {json.dumps(v)}: {p}" for k, v in settings.items() if k in checks and (p := checks[k](v))]


def validate_settings(settings: Mapping[str, Any], where: str | Path | None = None) -> None:
    """Raise naming ``where`` (inference_settings.json, or the command line) and every bad setting."""
    raise_problems(settings_problems(settings), where, "inference setting(s)")


def device_kind(device: object) -> str:
    """``gpu`` for ``cuda`` (any ``cuda:N``), ``cpu`` for anything else: which schedules train on ``device``."""
    return "gpu" if str(device).startswith("cuda") else "cpu"


# ------------------------------------------------------------------------------------------------ the plans
@dataclass(frozen=True)
class Plans(Section):
    """Everything cmbunet derives from a dataset (see ``documentation/plans.md`` for each field's rule)."""
    plans_version: int = leaf(integer(1))
    dataset_name: str = leaf(string)
    preset: str = leaf(text)
    channel_names: dict[str, str] = leaf(channel_names)
    num_input_channels: int = leaf(integer(1))
    target_spacing: tuple[float, float, float] = leaf(triple(number(0, lo_open=True)))
    target_spacing_rule: str = leaf(text)
    normalization: Normalization = subsection(Normalization)
    resampling: Resampling = subsection(Resampling)
    cmb_box: CMBBox = subsection(CMBBox)
    screening: ScreeningConfig = subsection(ScreeningConfig)
    discrimination: DiscriminationConfig = subsection(DiscriminationConfig)
    segmentation: SegmentationConfig = subsection(SegmentationConfig)
    augmentation: Augmentation = subsection(Augmentation)
    training: Training = subsection(Training)
    inference: InferenceSettings = subsection(InferenceSettings)
    rules: dict[str, str] = leaf(text_table)
    overrides: tuple[str, ...] = leaf(listing(text))
    #: dotted keys of :data:`FILLED_FOR_OLDER_PLANS` that the file lacked (left out of :meth:`to_dict`)
    filled: frozenset[str] = field(default=frozenset(), compare=False, repr=False, metadata={"internal": True})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str | Path | None = None) -> Plans:
        """Check ``data`` (the JSON of plans.json) and type it; raise naming ``where`` and every bad key.

        ``where`` is the plans file (errors are :class:`InputError` naming it) or a description (such as the
        overrides), or None.
        """
        if not isinstance(data, Mapping):
            _fail(where, "is not a plans file (expected a JSON object)")
        version = data.get("plans_version")
        if version != PLANS_VERSION:
            _fail(where, f"has plans_version {version!r}; this cmbunet reads version {PLANS_VERSION}; re-run "
                         "cmbunet_plan_and_preprocess")
        validate_plans(data, where)
        data, filled = fill_older_plans(data)
        plans = replace(build(cls, data), filled=frozenset(filled))
        problems = consistency_problems(plans)
        if problems:
            _fail(where, "is inconsistent: " + "; ".join(problems))
        return plans

    def to_dict(self) -> dict[str, Any]:
        """The JSON of these plans: what ``from_dict`` read (keys it filled in are left out again)."""
        return as_json(self, "", self.filled)

    def stage(self, name: str) -> StageConfig:
        """The ``screening``, ``discrimination`` or ``segmentation`` section."""
        if name not in STAGES:
            raise CMBUNetError(f"unknown stage '{name}'; expected one of {STAGES}")
        return getattr(self, name)

    def schedule(self, stage: str, device: object) -> Schedule:
        """The training schedule of ``stage`` for ``device``: ``cuda`` (any ``cuda:N``) -> gpu, anything else ->
        cpu. What only one stage's schedule holds is read through :meth:`screening_schedule` or
        :meth:`discrimination_schedule`."""
        self.stage(stage)
        return self.training.of_kind(device_kind(device)).stage(stage)

    def screening_schedule(self, device: object) -> ScreeningSchedule:
        """The screening schedule for ``device``, with when and how false positives are mined."""
        return self.training.of_kind(device_kind(device)).screening

    def discrimination_schedule(self, device: object) -> DiscriminationSchedule:
        """The discrimination schedule for ``device``, with how its false positives are drawn."""
        return self.training.of_kind(device_kind(device)).discrimination

    def candidate_count_threshold(self, device: object = "cpu") -> float:
        """Screening threshold at which training counts and keeps candidates for the later steps: the lower of
        the inference threshold and the mining threshold.

        Why: the candidate prior (false positives per CMB among screening candidates, which sets the
        discrimination threshold) and the validation candidates that the threshold search sweeps are counted
        here, not at the inference threshold. Predicting at screening 0.5 keeps the same microbleeds as 0.1 with
        2.5-4x fewer candidates, and the discrimination threshold read at 0.1 held on sites no model saw
        (documentation/benchmarks.md, 6g); counted at 0.5 the prior would lower it.
        """
        mining = self.screening_schedule(device).mining_threshold
        return min(float(self.inference.screening_threshold), float(mining))


def consistency_problems(plans: Plans) -> list[str]:
    """Every inconsistency between values of ``plans`` whose types and ranges are already checked (empty when the
    three networks can be built, the screening block maps to 1x1x1 and the screening tiles abut)."""
    problems: list[str] = []
    scr, disc, seg, inf = plans.screening, plans.discrimination, plans.segmentation, plans.inference
    block, first = list(scr.block_size), list(scr.network.first_kernels)
    try:
        last = last_kernel_for_block(block, first)
        if list(scr.network.last_kernel) != last:
            problems.append(f"screening.network.last_kernel {list(scr.network.last_kernel)} should be {last} for "
                            f"block {block}")
    except CMBUNetError as e:
        problems.append(str(e))
    if list(scr.fcn_offset) != [b // 2 for b in block]:
        problems.append(f"screening.fcn_offset {list(scr.fcn_offset)} should be block_size // 2 = "
                        f"{[b // 2 for b in block]}")
    if len(scr.network.features) != 5:
        problems.append("screening.network.features needs 5 entries (C1, C2, C3, C4, C5)")
    if len(disc.network.features) != 4:
        problems.append("discrimination.network.features needs 4 entries (C1, C2, C3, C4)")
    try:
        discrimination_feature_size(disc.block_size, disc.network.first_kernels)
    except CMBUNetError as e:
        problems.append(str(e))
    levels = len(seg.network.features)
    divisor = 2 ** (levels - 1)
    if levels < 2:
        problems.append("segmentation.network.features needs at least 2 entries")
    elif any(int(s) % divisor for s in seg.patch_size):
        problems.append(f"segmentation.patch_size {list(seg.patch_size)} must be a multiple of {divisor} "
                        f"({levels - 1} downsamplings) on every axis")
    for b, t in zip(block, inf.tile_size):
        if t < b or (t - b) % FCN_STRIDE:
            problems.append(f"inference.tile_size {list(inf.tile_size)} must be >= the screening block {block} "
                            f"and differ from it by a multiple of {FCN_STRIDE}")
            break
    for name, config in (("screening", scr), ("discrimination", disc), ("segmentation", seg)):
        if int(config.network.in_channels) != int(plans.num_input_channels):
            problems.append(f"{name}.network.in_channels differs from num_input_channels")
    return problems


def plans_value_problems(data: Mapping[str, Any]) -> list[str]:
    """``key = value: problem`` for every missing, unknown or unusable value of the plans JSON ``data`` (keys of
    older plans files filled in first)."""
    return value_problems(Plans, fill_older_plans(data)[0], "")


def validate_plans(data: Mapping[str, Any], where: str | Path | None = None) -> None:
    """Raise naming ``where`` (the plans file, or a description such as the overrides) and every bad key."""
    raise_problems(plans_value_problems(data), where, "plans value(s)")


def _fail(where: str | Path | None, problem: str) -> None:
    if isinstance(where, Path):
        raise InputError(where, problem)
    raise InvalidValueError(f"{where}: plans {problem}" if where else f"plans {problem}")


def fill_older_plans(data: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A deep copy of ``data`` with the :data:`FILLED_FOR_OLDER_PLANS` keys it lacks filled in, and those keys.

    A key is filled only where its parent exists; a missing section is an error, not an older file.
    """
    out = copy.deepcopy(dict(data))
    filled = []
    for dotted, value in FILLED_FOR_OLDER_PLANS.items():
        *parents, last = dotted.split(".")
        node: Any = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and last not in node:
            node[last] = copy.deepcopy(value)
            filled.append(dotted)
    return out, filled
