"""How prediction runs, in two frozen objects built once and handed down.

:class:`InferenceOptions` is how the networks run: the device, the precision of each stage, which stages run in
channels-last layout, the blocks per forward pass, whether screening skips empty tiles, the float32 recomputation
margin and the screening mode. The predictor keeps one; :meth:`InferenceOptions.forward` gives one stage's
:class:`~cmbunet.utilities.autocast.ForwardOptions`, which is all that screening, discrimination and segmentation
take. :class:`FolderOptions` is what a run over a folder reads and writes besides its input and output folders.

Requested values (``device="auto"``, ``precision=None``, ``channels_last_stages=None``) are resolved when the
object is made, so every object holds what actually runs, and ``precision_reason`` says why. Resolving is
idempotent: ``dataclasses.replace`` gives a consistent copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from cmbunet.errors import CMBUNetError
from cmbunet.inference.input_cases import InputCase
from cmbunet.inference.outputs import CaseOutputs
from cmbunet.plans.schema import STAGES
from cmbunet.utilities.autocast import ForwardOptions
from cmbunet.utilities.cli import DEVICE_CHOICES, resolve_device_choice
from cmbunet.utilities.cpu_features import resolve_precision

#: Stages that run in reduced precision (bf16 on the CPU, fp16 on CUDA). Screening is nearly all of the time;
#: discrimination and segmentation stay in float32 so that the kept candidates, their centres and the masks are
#: float32's.
REDUCED_PRECISION_STAGES = ("screening",)
#: Reduced-precision screening scores are recomputed in float32 where they lie within this margin of the screening
#: threshold (and in the NMS windows around them). bf16 moved scores by at most 0.02 in the measurements
#: (documentation/benchmarks.md), so the candidates are exactly those of float32.
SCREENING_MARGIN = 0.05
SCREENING_MODES = ("fcn", "sliding")
OUTPUT_FORMATS = ("flat", "bids")


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto``: CUDA when a GPU is visible, else the CPU; ``cuda`` without a GPU is an error
    (:func:`~cmbunet.utilities.cli.resolve_device_choice` makes both decisions, for every command)."""
    if isinstance(device, str) and device in DEVICE_CHOICES:
        return torch.device(resolve_device_choice(device)[0])
    dev = torch.device(device)
    if dev.type == "cuda":
        resolve_device_choice("cuda")
    return dev


def _stages(names: tuple[str, ...] | list[str], what: str) -> tuple[str, ...]:
    unknown = sorted(set(names) - set(STAGES))
    if unknown:
        raise CMBUNetError(f"unknown stage(s) {unknown} in {what}; known: {', '.join(STAGES)}")
    return tuple(names)


@dataclass(frozen=True)
class InferenceOptions:
    """How the predictor's networks run. Defaults: the CPU in float32, screening in channels-last layout there.

    ``device``: ``auto``, ``cpu``, ``cuda`` or a ``torch.device`` (a ``torch.device`` once made). ``precision``:
    ``auto``, ``fp32`` or ``bf16`` (``cpu_features.resolve_precision``); None is ``fp32`` on the CPU and ``auto``
    (float16 autocast) on CUDA. Reduced precision applies to ``reduced_precision_stages`` only; the others run in
    float32. ``channels_last_stages`` (None: screening on the CPU, measured faster in both precisions, none on
    CUDA) run in channels-last layout. The batch sizes count blocks (``screening``: sliding mode only;
    ``discrimination``: candidate and shift pairs) or U-Net patches. ``skip_empty`` skips screening tiles outside
    the brain (same map). ``screening_margin``: reduced-precision screening scores this close to the threshold are
    recomputed in float32 (None: never). ``mode``: screening fully convolutional (``fcn``) or by an explicit
    sliding window (``sliding``)."""

    device: torch.device | str = "cpu"
    precision: str | None = None
    reduced_precision_stages: tuple[str, ...] = REDUCED_PRECISION_STAGES
    channels_last_stages: tuple[str, ...] | None = None
    screening_batch_size: int = 256
    discrimination_batch_size: int = 256
    segmentation_batch_size: int = 32
    skip_empty: bool = True
    screening_margin: float | None = SCREENING_MARGIN
    mode: str = "fcn"
    precision_reason: str = field(init=False, default="")

    def __post_init__(self) -> None:
        if self.mode not in SCREENING_MODES:
            raise CMBUNetError(f"unknown screening mode '{self.mode}'; expected fcn or sliding")
        device = resolve_device(self.device)
        requested = self.precision or ("auto" if device.type == "cuda" else "fp32")
        if requested == "fp16" and device.type == "cuda":  # resolved already (a copy from dataclasses.replace)
            requested = "auto"
        precision, reason = resolve_precision(requested, device.type)
        channels_last = self.channels_last_stages
        if channels_last is None:
            channels_last = ("screening",) if device.type == "cpu" else ()
        resolved = {"device": device, "precision": precision, "precision_reason": reason,
                    "reduced_precision_stages": _stages(self.reduced_precision_stages, "reduced_precision_stages"),
                    "channels_last_stages": _stages(channels_last, "channels_last_stages"),
                    "screening_batch_size": int(self.screening_batch_size),
                    "discrimination_batch_size": int(self.discrimination_batch_size),
                    "segmentation_batch_size": int(self.segmentation_batch_size), "skip_empty": bool(self.skip_empty),
                    "screening_margin": None if self.screening_margin is None else float(self.screening_margin)}
        for name, value in resolved.items():
            object.__setattr__(self, name, value)

    @property
    def stage_precision(self) -> dict[str, str]:
        """The precision each stage runs in: ``precision`` for the reduced-precision stages, else ``fp32``."""
        return {s: self.precision if s in self.reduced_precision_stages else "fp32" for s in STAGES}

    def forward(self, stage: str) -> ForwardOptions:
        """How the networks of ``stage`` run: this device, the stage's precision, layout and batch size."""
        batch = {"screening": self.screening_batch_size, "discrimination": self.discrimination_batch_size,
                 "segmentation": self.segmentation_batch_size}[stage]
        return ForwardOptions(self.device, self.stage_precision[stage], stage in self.channels_last_stages, batch)

    @property
    def refines_screening(self) -> bool:
        """Whether a screening map is recomputed in float32 near the threshold: reduced precision, fcn mode and a
        margin."""
        return self.stage_precision["screening"] != "fp32" and self.mode == "fcn" and self.screening_margin is not None


@dataclass(frozen=True)
class FolderOptions:
    """What :meth:`~cmbunet.inference.predictor.CMBPredictor.predict_folder` reads and writes besides its folders.

    ``save_probabilities`` and ``save_candidates`` add those files; ``output_format``: ``flat`` (every file in the
    output folder) or ``bids`` (a BIDS derivative dataset). ``overwrite`` predicts finished cases again.
    ``num_parts``/``part_id`` select this machine's share of the cases; ``num_workers`` background threads read and
    preprocess the next cases (0: inline). ``file_ending`` of the input images. ``progress``: a progress bar (None:
    on a terminal). ``brain_mask``: a folder with one brain mask per case; without it an image that does not look
    skull-stripped fails unless ``allow_unstripped``."""

    save_probabilities: bool = False
    save_candidates: bool = False
    output_format: str = "flat"
    overwrite: bool = False
    num_parts: int = 1
    part_id: int = 0
    num_workers: int = 1
    file_ending: str = ".nii.gz"
    progress: bool | None = None
    brain_mask: str | Path | None = None
    allow_unstripped: bool = False

    def __post_init__(self) -> None:
        if self.output_format not in OUTPUT_FORMATS:
            raise CMBUNetError(f"unknown output format '{self.output_format}'; expected flat or bids")

    def case_outputs(self, output_dir: Path, case: InputCase) -> CaseOutputs:
        """The files written for ``case`` in ``output_dir``."""
        return CaseOutputs.for_case(output_dir, case, self.save_probabilities, self.output_format,
                                    self.save_candidates)
