"""The trained-model folder: the one place that knows its layout, which folds and stages it holds, how a stage
network is loaded from a checkpoint, which plans it was trained with and which inference settings it carries.

Layout (``CMBUNET_RESULTS/DatasetXXX_Name/cmbunet``, ``cmbunet__PLANS`` for the plans name ``PLANS`` other than the
default ``cmbunetPlans``, or any folder given to ``cmbunet_predict -m``)::

    plans.json, dataset.json, dataset_fingerprint.json     copied from the preprocessed dataset by cmbunet_train
    inference_settings.json                                optional: thresholds chosen on validation data or by hand
    cv_table.csv, cv_summary.json, froc*.{csv,png}         cmbunet_evaluate_cv
    fold_F/<stage>/checkpoint_{latest,best,final}.pth      stage = screening, discrimination, segmentation
    fold_F/<stage>/checkpoint_*.pth.sha256                 its checksum, checked when it is loaded
    fold_F/<stage>/training_log.txt, progress.png, ...
    fold_F/<stage>/stage_summary.json                      wall time and validation metrics of the finished stage
    fold_F/screening/validation_candidates.json            screening's whole-volume validation (candidate prior)
    fold_F/validation/                                     predictions and metrics of the fold's held-out cases
    fold_F/validation/validation_settings.json             the inference settings those predictions used
    .fold_F.lock                                           held while cmbunet_train trains fold F

``checkpoint_final.pth`` is written last by training, so its presence means the stage is complete. Every
checkpoint records the hash of the plans it was trained with; a checkpoint or a model folder of other plans is
refused (:class:`PlansMismatchError`) instead of silently used. This module depends on nothing above it
(neither training nor inference); torch is imported only when a checkpoint is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence, overload

from cmbunet.errors import CMBUNetError, InputError, InvalidValueError, MissingStageError, PlansMismatchError
from cmbunet.paths import DEFAULT_PLANS_NAME, check_plans_name, results_dataset_dir
from cmbunet.plans.plans_io import load_plans, plans_hash
from cmbunet.plans.schema import SETTING_KEYS, STAGES, Plans, validate_settings  # noqa: F401 - re-exported
from cmbunet.utilities.file_io import load_json, verify_checksum

if TYPE_CHECKING:
    import torch
    from torch import nn

#: The model folder inside ``CMBUNET_RESULTS/DatasetXXX_Name``.
MODEL_SUBFOLDER = "cmbunet"
PLANS_FILE = "plans.json"
DATASET_JSON_FILE = "dataset.json"
FINGERPRINT_FILE = "dataset_fingerprint.json"
INFERENCE_SETTINGS_FILE = "inference_settings.json"
#: Copied from the preprocessed dataset next to the folds by ``cmbunet_train``.
DATASET_FILES = (PLANS_FILE, DATASET_JSON_FILE, FINGERPRINT_FILE)
VALIDATION_DIR = "validation"
VALIDATION_SETTINGS_FILE = "validation_settings.json"
VALIDATION_CANDIDATES_FILE = "validation_candidates.json"
#: Written by cmbunet_train when a stage finishes: its wall time and validation metrics (the end-of-run summary).
STAGE_SUMMARY_FILE = "stage_summary.json"
CV_TABLE_FILE = "cv_table.csv"
CV_SUMMARY_FILE = "cv_summary.json"
CHECKPOINT_KINDS = ("latest", "best", "final")
_FOLD_RE = re.compile(r"^fold_(?P<fold>.+)$")


def model_subfolder(plans_name: str = DEFAULT_PLANS_NAME) -> str:
    """``cmbunet`` for the default plans name, ``cmbunet__PLANS`` for another (nnU-Net's ``Trainer__Plans``)."""
    if plans_name == DEFAULT_PLANS_NAME:
        return MODEL_SUBFOLDER
    return f"{MODEL_SUBFOLDER}__{check_plans_name(plans_name)}"


def plans_name_of(model_dir: str | Path) -> str | None:
    """The plans name a model folder's name stands for (``cmbunet``: the default, ``cmbunet__NAME``: NAME), or
    None for a folder named otherwise (a model copied to a folder of the user's choosing). The reverse of
    :func:`model_subfolder`: only names it would produce count (``cmbunet__cmbunetPlans`` does not)."""
    name = Path(model_dir).name
    candidate = DEFAULT_PLANS_NAME if name == MODEL_SUBFOLDER else name.removeprefix(f"{MODEL_SUBFOLDER}__")
    try:
        return candidate if model_subfolder(candidate) == name else None
    except CMBUNetError:
        return None


def plans_names_in(dataset_results_dir: str | Path) -> list[str]:
    """Plans names of the models (folders holding ``plans.json``) in a dataset's results folder, sorted, so that a
    command asked for a model that is not there can name the ``-p`` values that would find one."""
    folder = Path(dataset_results_dir)
    if not folder.is_dir():
        return []
    found = {plans_name_of(p) for p in folder.iterdir() if (p / PLANS_FILE).is_file()}
    return sorted(name for name in found if name is not None)


def other_plans_hint(missing: str | Path) -> str:
    """For a model folder that does not exist: ``; ... pass -p NAME`` when models of other plans names lie beside
    it (trained with ``-p``, asked for without it), else nothing."""
    others = plans_names_in(Path(missing).parent)
    if not others:
        return ""
    return (f"; this dataset has the model(s) of plans name(s) {', '.join(others)}: pass -p NAME to use one "
            f"(e.g. -p {others[0]})")


def fold_sort_key(fold: str) -> tuple[bool, int, str]:
    """Numeric folds first, in numeric order, then the others (``all``) by name."""
    return (not fold.isdigit(), int(fold) if fold.isdigit() else 0, fold)


def require_plans_hash(found: str | None, expected: str, what: str | Path, remedy: str) -> None:
    """The one plans-hash check: raise :class:`PlansMismatchError` when ``what`` was made with other plans."""
    if found != expected:
        raise PlansMismatchError(f"{what} was trained with plans {found} but the plans in use hash to {expected}; "
                                 f"{remedy}")


def load_checkpoint(path: str | Path, expected_plans_hash: str | None = None) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no code runs on load) after checking it against its sha256
    (``.pth.sha256``, absent for checkpoints of older versions), and check which plans made it."""
    import torch  # only here and in load_network: the commands that read model folders load no torch for --help

    path = Path(path)
    if not path.is_file():
        raise MissingStageError(f"checkpoint {path} does not exist")
    verify_checksum(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user-facing input problem
        raise InputError(path, f"cannot be read as a cmbunet checkpoint ({e})") from None
    if not isinstance(ckpt, dict) or "weights" not in ckpt:
        raise InputError(path, "not a cmbunet checkpoint (no 'weights' entry)")
    if expected_plans_hash is not None:
        require_plans_hash(ckpt.get("plans_hash"), expected_plans_hash, path,
                           "use the plans.json saved next to the model, or retrain after re-planning")
    return ckpt


class _FileInFolder:
    """A read-only attribute ``folder.path / name``: the files directly in the model folder, one line each."""

    def __init__(self, name: str):
        self.name = name

    @overload
    def __get__(self, folder: None, owner: type) -> _FileInFolder: ...

    @overload
    def __get__(self, folder: ModelFolder, owner: type) -> Path: ...

    def __get__(self, folder: ModelFolder | None, owner: type | None = None) -> Path | _FileInFolder:
        return self if folder is None else folder.path / self.name


@dataclass(frozen=True)
class ModelFolder:
    """Paths and contents of one model folder; cheap to create, nothing is read until asked."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def of_dataset(cls, dataset_name: str, results_root: Path | None = None,
                   plans_name: str = DEFAULT_PLANS_NAME) -> "ModelFolder":
        """``CMBUNET_RESULTS/DatasetXXX_Name/cmbunet`` (``cmbunet__PLANS`` for another plans name than the
        default; ``results_root`` overrides the variable)."""
        return cls(results_dataset_dir(dataset_name, results_root) / model_subfolder(plans_name))

    # ------------------------------------------------------------------------------------------ paths
    plans_file = _FileInFolder(PLANS_FILE)
    dataset_json_file = _FileInFolder(DATASET_JSON_FILE)
    fingerprint_file = _FileInFolder(FINGERPRINT_FILE)
    inference_settings_file = _FileInFolder(INFERENCE_SETTINGS_FILE)
    cv_table_file = _FileInFolder(CV_TABLE_FILE)
    cv_summary_file = _FileInFolder(CV_SUMMARY_FILE)

    def fold_dir(self, fold: int | str) -> Path:
        """``fold_F`` (``fold_all`` for the model trained on every case)."""
        return self.path / f"fold_{fold}"

    def stage_dir(self, fold: int | str, stage: str) -> Path:
        return self.fold_dir(fold) / stage

    def checkpoint(self, fold: int | str, stage: str, which: str = "final") -> Path:
        """``fold_F/<stage>/checkpoint_<which>.pth``; ``which`` is latest, best or final."""
        return checkpoint_file(self.stage_dir(fold, stage), which)

    def train_lock_file(self, fold: int | str) -> Path:
        """``.fold_F.lock``: held by the ``cmbunet_train`` run of fold F (see :mod:`cmbunet.utilities.locks`); beside
        the fold folder, so that taking it creates no fold folder."""
        return self.path / f".fold_{fold}.lock"

    def validation_dir(self, fold: int | str) -> Path:
        return self.fold_dir(fold) / VALIDATION_DIR

    def validation_candidates_file(self, fold: int | str) -> Path:
        """Screening's whole-volume validation of the fold (read for the candidate-prior threshold)."""
        return self.stage_dir(fold, "screening") / VALIDATION_CANDIDATES_FILE

    # ------------------------------------------------------------------------------------------ listing
    def folds(self) -> list[str]:
        """Every ``fold_*`` folder present, numeric folds first."""
        found = [m.group("fold") for p in self.path.glob("fold_*") if p.is_dir() and (m := _FOLD_RE.match(p.name))]
        return sorted(found, key=fold_sort_key)

    def is_trained(self, fold: int | str, stage: str, which: str = "final") -> bool:
        return self.checkpoint(fold, stage, which).is_file()

    def complete_folds(self, which: str = "final", stages: Sequence[str] = STAGES) -> list[str]:
        """Folds in which every stage of ``stages`` has a ``checkpoint_<which>.pth``, numeric folds first."""
        return [f for f in self.folds() if all(self.is_trained(f, s, which) for s in stages)]

    def missing_checkpoints(self, folds: Iterable[int | str], which: str = "final",
                            stages: Sequence[str] = STAGES) -> list[Path]:
        return [self.checkpoint(f, s, which) for f in folds for s in stages if not self.is_trained(f, s, which)]

    def evaluated_folds(self, marker: str) -> list[str]:
        """Folds whose ``fold_F/validation`` holds the file ``marker`` (e.g. the per-case metrics)."""
        return [f for f in self.folds() if (self.validation_dir(f) / marker).is_file()]

    # ------------------------------------------------------------------------------------------ contents
    def load_plans(self) -> Plans:
        """``plans.json`` read and checked (:class:`InputError` naming it when missing or invalid)."""
        return load_plans(self.plans_file)

    def plans_hash(self) -> str:
        return plans_hash(self.load_plans())

    def check_plans(self, expected_hash: str, source: str | Path, remedy: str | None = None) -> None:
        """Refuse a model folder whose ``plans.json`` differs from the plans in use (``source`` names them);
        a folder without ``plans.json`` is new and passes. ``remedy`` replaces the generic advice, so a command
        can say exactly what to run."""
        if self.plans_file.is_file():
            require_plans_hash(self.plans_hash(), expected_hash, self.path,
                               remedy or f"it holds models of other plans than {source}: move or delete {self.path} "
                                         "to train with the new plans")

    def inference_settings(self) -> dict[str, Any]:
        """Settings saved next to the model (e.g. picked on validation data); flat or under an ``inference`` key.
        Only :data:`SETTING_KEYS` are read, each checked; ``{}`` when the file is absent."""
        path = self.inference_settings_file
        if not path.is_file():
            return {}
        try:
            raw = load_json(path)
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(path, f"is not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise InputError(path, "must contain a JSON object of inference settings")
        raw = raw.get("inference", raw) if isinstance(raw.get("inference"), dict) else raw
        settings = {k: v for k, v in raw.items() if k in SETTING_KEYS}
        validate_settings(settings, path)
        return settings

    def load_network(self, fold: int | str, stage: str, plans: Plans, device: "str | torch.device" = "cpu",
                     which: str = "final") -> "nn.Module":
        """Build the ``stage`` network from ``plans``, load its ``checkpoint_<which>.pth`` (plans hash checked),
        move it to ``device`` in eval mode."""
        import torch  # as in load_checkpoint

        from cmbunet.networks import build_network  # torch, as above

        path = self.checkpoint(fold, stage, which)
        if not path.is_file():
            raise MissingStageError(f"the {stage} stage of fold {fold} is not trained: {path} is missing "
                                    f"(run cmbunet_train DATASET {fold} -s {stage})")
        ckpt = load_checkpoint(path, expected_plans_hash=plans_hash(plans))
        network = build_network(stage, plans)
        network.load_state_dict(ckpt["weights"])
        return network.to(torch.device(device)).eval()


def checkpoint_file(stage_dir: str | Path, which: str) -> Path:
    """``stage_dir/checkpoint_<which>.pth``; ``which`` is latest, best or final."""
    if which not in CHECKPOINT_KINDS:
        raise InvalidValueError(f"unknown checkpoint '{which}'; expected one of {CHECKPOINT_KINDS}")
    return Path(stage_dir) / f"checkpoint_{which}.pth"


def load_stage_network(model_dir: str | Path, fold: int | str, stage: str, plans: Plans,
                       device: "str | torch.device" = "cpu", which: str = "final") -> "nn.Module":
    """:meth:`ModelFolder.load_network` of the folder ``model_dir``."""
    return ModelFolder(Path(model_dir)).load_network(fold, stage, plans, device, which)
