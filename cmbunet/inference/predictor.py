"""The whole prediction of one case, and of a folder of cases: screening -> discrimination -> segmentation.

Per case (in the preprocessed space of training, so the networks see what they were trained on):

1. screening score map of the whole volume (fully convolutional, or an explicit sliding window);
2. candidates: threshold, 3D non-maximum suppression, exact mapping to input voxels;
3. discrimination of every candidate at shifted centres; candidates above the threshold are kept and moved to
   their best centre;
4. U-Net segmentation of a patch around each kept candidate, merged with Gaussian weights;
5. with several folds, the folds' probabilities are averaged at each stage;
6. the probability map goes back to the native grid of the input, then is binarised.

Models are loaded once for all cases, and the next case is read and preprocessed in a background thread
while the networks run on the current one.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from cmbunet.errors import CMBUNetError, InputError, MissingStageError
from cmbunet.imageio.reader_writer import ImageProperties, SimpleITKIO
from cmbunet.inference import bids
from cmbunet.inference.brain_mask import apply_brain_mask, find_brain_mask, unstripped_problem
from cmbunet.inference.candidates import decision_boxes, find_candidates
from cmbunet.inference.discrimination import discriminate_candidates
from cmbunet.inference.input_cases import InputCase, find_input_cases, select_part
from cmbunet.inference.options import FolderOptions, InferenceOptions
from cmbunet.inference.record import build_record, check_record, model_section, write_record
from cmbunet.inference.outputs import (CMB_COLUMNS, CaseOutputs,  # noqa: F401 - CMB_COLUMNS re-exported
                                      CasePrediction, cmb_table, drop_small_components, preprocessed_to_native,
                                      refuse_overwriting_inputs, skipped_row, summary_name, summary_row, write_case,
                                      write_csv)
from cmbunet.inference.screening import score_boxes, screening_score_map
from cmbunet.inference.segmentation import add_unsegmented_spots, components_at_candidates, segment_candidates
from cmbunet.inference.decision import kept_candidates, measure_candidates
from cmbunet.inference.shape import dark_spots, susceptibility_channel
from cmbunet.model_folder import INFERENCE_SETTINGS_FILE, ModelFolder, other_plans_hint
from cmbunet.plans.plans_io import plans_hash
from cmbunet.plans.schema import SETTING_KEYS, STAGES, InferenceSettings, Plans
from cmbunet.preprocessing.preprocessor import export_segmentation, native_geometry, preprocess_case
from cmbunet.utilities.file_io import remove_stale_temp_files
from cmbunet.utilities.geometry import voxel_to_world


# ------------------------------------------------------------------------------------------------ settings
def resolve_settings(plans: Plans, model_dir: Path | None = None,
                     overrides: Mapping[str, Any] | None = None) -> InferenceSettings:
    """Inference settings: the plans' defaults, then ``inference_settings.json``, then explicit overrides."""
    settings = plans.inference
    if model_dir is not None:
        folder = ModelFolder(model_dir)
        settings = settings.merged(folder.inference_settings(), folder.inference_settings_file)
    unknown = sorted(set(overrides or {}) - set(SETTING_KEYS))
    if unknown:
        raise CMBUNetError(f"unknown inference setting(s) {unknown}; known: {', '.join(SETTING_KEYS)}")
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    return settings.merged(given, "command-line inference settings")


def settings_sources(model_dir: Path | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Where each inference setting in force comes from (``command line``, ``inference_settings.json`` or
    ``plans``), in the order :func:`resolve_settings` applies them, so a run can say which thresholds hold."""
    from_file = ModelFolder(model_dir).inference_settings() if model_dir is not None else {}
    given = {k for k, v in (overrides or {}).items() if v is not None}
    return {k: "command line" if k in given else INFERENCE_SETTINGS_FILE if k in from_file else "plans"
            for k in SETTING_KEYS}


#: The thresholds printed by every prediction run, with their names on that line.
THRESHOLD_NAMES = {"screening_threshold": "screening", "discrimination_threshold": "discrimination",
                   "shape_round_threshold": "round spots", "location_max_csf_share": "CSF share",
                   "shape_min_blob_ratio": "blob ratio", "shape_max_inplane_elongation": "in-plane elongation",
                   "segmentation_threshold": "segmentation"}


def default_folds(complete: Sequence[str]) -> tuple[list[str], str]:
    """The folds a model predicts with when none are asked for, and why: the numbered cross-validation folds when
    any is complete, else ``all``. Never both: ``all`` was trained on the cases of every numbered fold, so
    averaging it in would weigh those cases twice and make an ensemble the documentation does not describe."""
    numbered = [f for f in complete if f.isdigit()]
    if numbered:
        left = [f for f in complete if not f.isdigit()]
        note = f"; fold(s) {', '.join(left)} left out (pass -f {' '.join(left)} to use them)" if left else ""
        return numbered, "default: every numbered fold with all three stages trained" + note
    return list(complete), "default: no numbered fold is trained, so the model trained on all cases"


def cheaper_boxes(boxes: Sequence[tuple[slice, ...]], plans: Plans) -> list[tuple[slice, ...]]:
    """``boxes`` of score voxels, or their one bounding box where that costs the FCN less input.

    Each box costs the FCN its own receptive-field border, so many small boxes can cost more than their union.
    """
    if len(boxes) < 2:
        return list(boxes)
    scr = plans.screening
    block = np.asarray(scr.block_size, dtype=np.int64)
    stride = np.asarray(scr.fcn_stride, dtype=np.int64)
    lo = np.array([[s.start for s in b] for b in boxes])
    hi = np.array([[s.stop for s in b] for b in boxes])
    cost = np.prod((hi - lo - 1) * stride + block, axis=1).sum()
    lo_all, hi_all = lo.min(axis=0), hi.max(axis=0)
    if np.prod((hi_all - lo_all - 1) * stride + block) <= cost:
        return [tuple(slice(int(a), int(b)) for a, b in zip(lo_all, hi_all))]
    return list(boxes)


def prefetch(fn: Callable[[InputCase], Any], items: Sequence[InputCase], workers: int) -> Iterator[tuple[InputCase, Future | Any]]:
    """Yield ``(item, future)`` with up to ``workers`` items prepared ahead in background threads
    (``workers=0``: run inline). Bounded look-ahead keeps memory at a few cases."""
    if workers <= 0:
        for item in items:
            yield item, _Done(fn, item)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cmbunet-preprocess") as pool:
        queue: deque[tuple[InputCase, Future]] = deque()
        it = iter(items)
        for item in it:
            queue.append((item, pool.submit(fn, item)))
            if len(queue) > workers:
                yield queue.popleft()
        while queue:
            yield queue.popleft()


class PreparedCase(NamedTuple):
    """A case read and preprocessed for prediction."""

    data: np.ndarray  # (C, X', Y', Z') float32, preprocessed
    properties: dict[str, Any]  # the preprocessing properties (architecture.md)
    geometry: ImageProperties  # the input's own header, which the outputs are written with
    timings: dict[str, float]  # seconds reading and preprocessing


class _Done:
    """Lazy stand-in for a Future when preprocessing runs inline."""

    def __init__(self, fn: Callable[[InputCase], Any], item: InputCase):
        self.fn, self.item = fn, item

    def result(self) -> Any:
        return self.fn(self.item)


# ------------------------------------------------------------------------------------------------ predictor
class CMBPredictor:
    """Trained screening, discrimination and segmentation networks (one or more folds) and their settings."""

    def __init__(self, plans: Plans, networks: Mapping[str, Sequence[nn.Module]],
                 options: InferenceOptions | None = None, settings: InferenceSettings | None = None,
                 folds: Sequence[str] = (), model_dir: Path | None = None):
        """``options``: how the networks run (:class:`~cmbunet.inference.options.InferenceOptions`; default: the
        CPU in float32). ``settings``: the thresholds and rules (default: the plans')."""
        missing = [s for s in STAGES if not networks.get(s)]
        if missing:
            raise MissingStageError(f"no network given for stage(s) {missing}")
        self.plans = plans
        self.options = InferenceOptions() if options is None else options
        self.networks = {s: [n.to(self.device).eval() for n in networks[s]] for s in STAGES}
        for stage, nets in self.networks.items():
            if self.options.forward(stage).channels_last:
                self.networks[stage] = [n.to(memory_format=torch.channels_last_3d) for n in nets]
        self.last_screening_stats: dict[str, Any] = {}
        self.settings = resolve_settings(plans, None, None) if settings is None else settings
        self.folds = list(folds)
        self.folds_reason = "given"
        self.model_dir = model_dir
        self.checkpoint = "final"
        self.settings_sources = {k: "plans" for k in SETTING_KEYS} if settings is None else \
            {k: "given" for k in SETTING_KEYS}

    @classmethod
    def from_model_folder(cls, model_dir: str | Path, folds: Sequence[int | str] | None = None,
                          checkpoint: str = "final", settings_overrides: Mapping[str, Any] | None = None,
                          options: InferenceOptions | None = None) -> "CMBPredictor":
        """Load ``plans.json`` and the checkpoints of ``folds`` (default: every complete fold) once, onto the
        device of ``options`` (default: :class:`~cmbunet.inference.options.InferenceOptions`, the CPU)."""
        model = ModelFolder(Path(model_dir))
        model_dir = model.path
        if not model_dir.is_dir():
            raise InputError(model_dir, "model folder does not exist" + other_plans_hint(model_dir))
        plans = model.load_plans()
        fold_names, reason = ([str(f) for f in folds], "-f") if folds else default_folds(model.complete_folds(checkpoint))
        if not fold_names:
            raise MissingStageError(f"{model_dir}: no fold_* folder has all three stages trained "
                                    f"(checkpoint_{checkpoint}.pth for screening, discrimination and segmentation)")
        missing = model.missing_checkpoints(fold_names, checkpoint)
        if missing:
            raise MissingStageError("cannot predict, checkpoint(s) missing (train these stages first, or choose "
                                    "other folds with -f):\n  " + "\n  ".join(map(str, missing)))
        options = InferenceOptions() if options is None else options
        networks = {s: [model.load_network(f, s, plans, options.device, checkpoint) for f in fold_names]
                    for s in STAGES}
        settings = resolve_settings(plans, model_dir, settings_overrides)
        predictor = cls(plans, networks, options, settings, fold_names, model_dir)
        predictor.folds_reason, predictor.checkpoint = reason, checkpoint
        predictor.settings_sources = settings_sources(model_dir, settings_overrides)
        return predictor

    def folds_line(self) -> str:
        """Which folds are averaged and why (printed by ``cmbunet_predict`` and recorded)."""
        return f"folds: {' '.join(self.folds) or 'none'} ({self.folds_reason}); checkpoint_{self.checkpoint}.pth"

    def thresholds_line(self) -> str:
        """The thresholds in force and where each comes from: plans, inference_settings.json or command line."""
        s = self.settings.to_dict()
        shown = {key: "off" if s[key] is None else f"{s[key]:g}" for key in THRESHOLD_NAMES}
        return "thresholds: " + ", ".join(f"{name} {shown[key]} ({self.settings_sources.get(key, 'plans')})"
                                          for key, name in THRESHOLD_NAMES.items())

    def record(self, brain_mask: str | Path | None = None) -> dict[str, Any]:
        """``prediction_record.json`` of a run of this predictor (:mod:`cmbunet.inference.record`)."""
        model = model_section(self.model_dir, plans_hash(self.plans), self.folds, self.checkpoint)
        settings = {"inference": self.settings.to_dict(), "mode": self.options.mode,
                    "precision": self.stage_precision,
                    "brain_mask": None if brain_mask is None else str(Path(brain_mask).resolve())}
        about = {"model_folder": None if self.model_dir is None else str(Path(self.model_dir).resolve()),
                 "folds_chosen": self.folds_reason, "setting_sources": dict(self.settings_sources),
                 "device": str(self.device), "precision_reason": self.options.precision_reason,
                 "screening_skips_empty_tiles": self.options.skip_empty}
        return build_record(model, settings, about)

    def precision_line(self) -> str:
        """One line saying which arithmetic path runs and why (printed by ``cmbunet_predict``)."""
        stages = ", ".join(f"{s} {p}" for s, p in self.stage_precision.items())
        return (f"precision: {self.precision} on {self.device.type} ({self.options.precision_reason}); {stages}; "
                f"screening skips empty tiles: {'yes' if self.options.skip_empty else 'no'}")

    @property
    def channel_names(self) -> dict[str, str]:
        return dict(self.plans.channel_names)

    @property
    def device(self) -> torch.device:
        """Where the networks run (``options.device``)."""
        return self.options.device

    @property
    def precision(self) -> str:
        """The precision of the reduced-precision stages (``options.precision``)."""
        return self.options.precision

    @property
    def stage_precision(self) -> dict[str, str]:
        """The precision of each stage (``options.stage_precision``)."""
        return self.options.stage_precision

    # ---------------------------------------------------------------------------------------- one case
    def screening(self, data: np.ndarray) -> np.ndarray:
        """Fold-averaged screening score map, with the float32 recomputation of :meth:`refine_screening`."""
        return self.refine_screening(data, self.screening_pass(data))

    def screening_pass(self, data: np.ndarray) -> np.ndarray:
        """Fold-averaged screening score map in the screening stage's precision (no recomputation)."""
        stats: dict[str, Any] = {}
        maps = [screening_score_map(net, data, self.plans, self.options.forward("screening"), self.settings.tile_size,
                                    self.options.mode, self.options.skip_empty, stats)
                for net in self.networks["screening"]]
        self.last_screening_stats = {**stats, "positions_refined": 0}
        return np.mean(maps, axis=0) if len(maps) > 1 else maps[0]

    def refine_screening(self, data: np.ndarray, score: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Recompute a reduced-precision (bf16, fp16) score map in float32 wherever it can decide a candidate.

        That is within ``options.screening_margin`` of the screening threshold, grown by the NMS window
        (:func:`decision_boxes`), so the candidates and their scores are those of float32 while the rest of the
        volume ran in reduced precision. A float32 map is returned as it is.
        """
        if not self.options.refines_screening:
            return score
        threshold = self.settings.screening_threshold if threshold is None else threshold
        boxes = decision_boxes(score, self.plans, threshold, self.settings.nms_size_vox, self.options.screening_margin)
        boxes = cheaper_boxes(boxes, self.plans)
        float32 = replace(self.options.forward("screening"), precision="fp32")
        exact = [score_boxes(net, data, self.plans, boxes, float32, self.settings.tile_size)
                 for net in self.networks["screening"]]
        refined = 0
        for i, box in enumerate(boxes):
            score[box] = np.mean([e[i] for e in exact], axis=0) if len(exact) > 1 else exact[0][i]
            refined += int(exact[0][i].size)
        self.last_screening_stats["positions_refined"] = refined
        return score

    @torch.inference_mode()
    def predict_preprocessed(self, data: np.ndarray, properties: Mapping[str, Any]) -> CasePrediction:
        """Predict a preprocessed case ``(C, X, Y, Z)``; maps go back to the native grid described by ``properties``.

        The :class:`CasePrediction` holds ``probabilities`` and ``binary`` (native), ``probabilities_preprocessed``,
        ``cmbs`` (one row per CMB), ``candidates`` (every screening candidate, preprocessed voxels), ``geometry``
        (from ``properties``) and ``timings``.
        """
        s, t = self.settings, {}
        data = np.asarray(data, dtype=np.float32)
        clock = time.perf_counter()
        score_map = self.screening(data)
        centres, scores = find_candidates(score_map, self.plans, s.screening_threshold, s.nms_size_vox,
                                          s.max_candidates)
        t["screening"], clock = time.perf_counter() - clock, time.perf_counter()

        disc, moved = discriminate_candidates(
            self.networks["discrimination"], data, centres, self.plans, self.options.forward("discrimination"),
            s.discrimination_shift_vox, s.discrimination_aggregate, s.discrimination_mirror)
        measures = measure_candidates(data, moved, disc, s, self.plans.channel_names, self.plans.target_spacing,
                                      properties["original_spacing"])
        kept = kept_candidates(disc, measures, s)
        diameter = measures.diameter_mm
        t["discrimination"], clock = time.perf_counter() - clock, time.perf_counter()

        prob_pre = segment_candidates(self.networks["segmentation"], data, moved[kept], self.plans,
                                      self.options.forward("segmentation"))
        if s.unsegmented_spot_max_diameter_mm is not None:  # small spots the U-Net left empty
            with np.errstate(invalid="ignore"):
                small = np.flatnonzero(kept & (diameter <= float(s.unsegmented_spot_max_diameter_mm)))
            spots = dark_spots(data[susceptibility_channel(self.plans.channel_names)], moved[small],
                               self.plans.target_spacing)
            prob_pre, _ = add_unsegmented_spots(prob_pre, spots, moved[small], disc[small],
                                                float(s.segmentation_threshold))
        if s.components_need_candidate:  # what the U-Net segmented around a kept candidate, not beside it
            prob_pre, _ = components_at_candidates(prob_pre, moved[kept], float(s.segmentation_threshold))
        t["segmentation"], clock = time.perf_counter() - clock, time.perf_counter()

        native, binary, _ = export_segmentation(prob_pre, properties, float(s.segmentation_threshold))
        binary, native = drop_small_components(binary, native, int(s.min_component_voxels or 0))  # None: keep all
        geometry = native_geometry(properties)
        native_pos = preprocessed_to_native(moved, properties)
        candidates = pd.DataFrame({
            "x": moved[:, 0], "y": moved[:, 1], "z": moved[:, 2], "screening_score": scores,
            "discrimination_score": disc, "spot_elongation": measures.elongation, "spot_diameter_mm": diameter,
            "round_spot_elongation": np.full(len(moved), measures.elongation_scale), "csf_share": measures.csf_share,
            "blob_ratio": measures.blob_ratio, "inplane_elongation": measures.inplane_elongation,
            "kept": kept,
            "native_i": native_pos[:, 0], "native_j": native_pos[:, 1], "native_k": native_pos[:, 2]})
        world = voxel_to_world(native_pos, geometry)
        candidates[["x_mm", "y_mm", "z_mm"]] = world if len(world) else np.zeros((0, 3))
        cmbs = cmb_table(binary, native, geometry, candidates)
        t["export"] = time.perf_counter() - clock
        return CasePrediction(probabilities=native, binary=binary, cmbs=cmbs, geometry=geometry, candidates=candidates,
                              probabilities_preprocessed=prob_pre, timings=t, properties=dict(properties))

    def load_and_preprocess(self, image_paths: Sequence[str | Path], case: str = "", brain_mask: Path | None = None,
                            check_stripped: bool = False) -> PreparedCase:
        """Read the channel files (one geometry) and preprocess them exactly as for training.

        ``brain_mask``: a mask on the images' grid; voxels outside it are set to 0 first (in memory). Without one,
        ``check_stripped`` refuses an image that does not look skull-stripped (:mod:`cmbunet.inference.brain_mask`),
        naming the file, since its scalp and background would be taken for brain."""
        clock = time.perf_counter()
        paths = [Path(p) for p in image_paths]
        images, props = SimpleITKIO.read_images(paths)
        if brain_mask is not None:
            images = apply_brain_mask(images, props, brain_mask)
        elif check_stripped:
            for path, channel in zip(paths, images):
                if problem := unstripped_problem(channel, props["spacing"]):
                    raise InputError(path, problem)
        t_read = time.perf_counter() - clock
        try:
            case_data = preprocess_case(images, props, self.plans, case=case)
        except InputError as e:  # e.g. an all-zero scan: name the file, not only the case id
            raise InputError(image_paths[0], e.problem) from None
        timings = {"read": t_read, "preprocess": time.perf_counter() - clock - t_read}
        return PreparedCase(case_data.data, case_data.properties, props, timings)

    def predict_case(self, image_paths: Sequence[str | Path], case: str = "") -> CasePrediction:
        """Read, preprocess and predict one case given its channel files in model channel order."""
        return self.predict_prepared(self.load_and_preprocess(image_paths, case))

    def predict_prepared(self, prepared: PreparedCase) -> CasePrediction:
        """Predict a case from :meth:`load_and_preprocess`: the outputs get the input's own header (bit-exact)
        as geometry, and the reading and preprocessing times join the timings."""
        result = self.predict_preprocessed(prepared.data, prepared.properties)
        return replace(result, geometry=dict(prepared.geometry), timings={**prepared.timings, **result.timings})

    # ---------------------------------------------------------------------------------------- a folder
    def predict_folder(self, input_path: str | Path, output_dir: str | Path,
                       run: FolderOptions | None = None) -> pd.DataFrame:
        """Predict every case of ``input_path`` (a VALDO tree, a BIDS dataset, a ``CASE_0000`` folder or one file)
        into ``output_dir``; ``run`` (:class:`~cmbunet.inference.options.FolderOptions`) says which files, which
        share of the cases and how the input is checked.

        Failing cases are reported in the returned summary (also ``summary.csv``) and do not stop the others;
        entries of the input that are not input images are listed there as ``ignored``, with the reason;
        finished cases are skipped unless ``run.overwrite``, and only when ``prediction_record.json`` there says
        they were made with this model and these settings (else :class:`PredictionRecordError`, before anything is
        written; :mod:`cmbunet.inference.record`). With ``output_format`` ``bids``, cases whose id is not made of
        BIDS entities fail. ``save_candidates`` also writes every screening candidate with its scores, spot shape
        and whether it was kept. ``brain_mask`` is applied before preprocessing
        (:func:`~cmbunet.inference.brain_mask.find_brain_mask`); without it a case whose image is not
        skull-stripped fails, naming the file, unless ``allow_unstripped``.
        """
        run = FolderOptions() if run is None else run
        brain_mask, bids_output = run.brain_mask, run.output_format == "bids"
        if brain_mask is not None and not Path(brain_mask).is_dir():
            raise InputError(brain_mask, "brain mask folder does not exist" if not Path(brain_mask).exists()
                             else "--brain-mask must be a folder with one mask per case")
        output_dir = Path(output_dir)
        cases = select_part(find_input_cases(input_path, self.channel_names, run.file_ending, with_ignored=True),
                            run.num_parts, run.part_id)
        if bids_output:
            cases = [replace(c, error=bids.not_bids_problem(c.case)) if c.ok else c for c in cases]
        summary_path = output_dir / summary_name(run.num_parts, run.part_id)
        refuse_overwriting_inputs(cases, output_dir, run.save_probabilities, summary_path, run.output_format,
                                  run.save_candidates)
        previous = pd.read_csv(summary_path, dtype={"case": str}, keep_default_na=False, na_values=[""]) if summary_path.is_file() else None
        finished = {case.case: outputs for case in cases if case.ok and case.ignored is None
                    and (outputs := run.case_outputs(output_dir, case)).finished()}
        record = self.record(brain_mask)
        check_record(output_dir, record, bool(finished), run.overwrite)
        rows: list[dict[str, Any]] = []
        todo: list[InputCase] = []
        for case in cases:
            if case.ignored is not None:  # every entry of the input is accounted for, with its reason
                rows.append(summary_row(case.case, "ignored", error=case.ignored))
            elif not case.ok:
                rows.append(summary_row(case.case, "failed", error=case.error or ""))
            elif case.case in finished and not run.overwrite:
                rows.append(skipped_row(case, finished[case.case], previous))
            else:
                todo.append(case)
        output_dir.mkdir(parents=True, exist_ok=True)
        if bids_output:
            bids.write_dataset_description(output_dir)
        write_record(output_dir, record)
        # left by a killed run; never mistaken for outputs, but clutter
        remove_stale_temp_files(output_dir, recursive=bids_output)

        def prepare(case: InputCase) -> PreparedCase:
            mask = None if brain_mask is None else find_brain_mask(brain_mask, case.case)
            return self.load_and_preprocess(case.images, case.case, mask, check_stripped=not run.allow_unstripped)

        for case, future in tqdm(prefetch(prepare, todo, run.num_workers), total=len(todo), desc="predicting",
                                 unit="case", disable=None if run.progress is None else not run.progress):
            rows.append(self._run_one(case, future, run.case_outputs(output_dir, case)))
            self._write_summary(rows, cases, summary_path)
        return self._write_summary(rows, cases, summary_path)

    def _run_one(self, case: InputCase, future: Any, outputs: CaseOutputs) -> dict[str, Any]:
        """Predict and write one case; any error becomes a ``failed`` summary line naming the problem."""
        try:
            result = self.predict_prepared(future.result())
            clock = time.perf_counter()
            write_case(result, outputs)
            result = replace(result, timings={**result.timings, "write": time.perf_counter() - clock})
            return summary_row(case.case, "ok", result)
        except CMBUNetError as e:
            print(f"error: case {case.case}: {e}", file=sys.stderr)
            return summary_row(case.case, "failed", error=str(e))
        except Exception as e:  # noqa: BLE001 - one broken case must not stop a run over 100 others
            traceback.print_exc(file=sys.stderr)
            return summary_row(case.case, "failed", error=f"{type(e).__name__}: {e}")

    @staticmethod
    def _write_summary(rows: Iterable[dict[str, Any]], cases: Sequence[InputCase], path: Path) -> pd.DataFrame:
        """Summary in case order, rewritten after every case so a long run shows its progress."""
        table = pd.DataFrame(list(rows))
        order = {c.case: i for i, c in enumerate(cases)}
        table = table.sort_values("case", key=lambda s: s.map(order)).reset_index(drop=True)
        write_csv(table, path)
        return table
