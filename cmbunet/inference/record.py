"""``prediction_record.json``: what made the outputs of a prediction folder, so a re-run can tell whether it may
continue them.

The record names the model (the hash of its plans, the folds, the checkpoint kind and the sha256 of every
checkpoint) and every setting that changes the outputs (the merged inference settings, the screening mode, the
precision of each stage, the brain masks). A re-run into the same folder compares its own record with the one
there: the same record continues (finished cases are skipped); another one stops with a
:class:`~cmbunet.errors.PredictionRecordError` that names each difference, unless ``--overwrite`` asks for every
case to be predicted again. Where the model folder lies, the device and the time are written for the reader but
never compared: a model copied to another machine is the same model.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from cmbunet import __version__
from cmbunet.errors import InputError, PredictionRecordError
from cmbunet.model_folder import ModelFolder
from cmbunet.plans.schema import STAGES
from cmbunet.utilities.file_io import checksum_file, file_sha256, load_json, save_json

RECORD_FILE = "prediction_record.json"
#: The sections of the record that must agree for a re-run to continue a folder.
COMPARED = ("model", "settings")


def checkpoint_sha256(path: Path) -> str:
    """The checkpoint's sha256: from its ``.sha256`` file when it has one (checked when it was loaded), else
    computed (checkpoints of older versions)."""
    sidecar = checksum_file(path)
    if sidecar.is_file():
        text = sidecar.read_text().split()
        if text:
            return text[0].lower()
    return file_sha256(path)


def model_section(model_dir: Path | None, plans_hash: str, folds: Sequence[str], checkpoint: str) -> dict[str, Any]:
    """The model that predicts: plans hash, folds, checkpoint kind and the checksum of each checkpoint used."""
    section: dict[str, Any] = {"plans_hash": plans_hash, "folds": [str(f) for f in folds], "checkpoint": checkpoint}
    if model_dir is not None:
        model = ModelFolder(Path(model_dir))
        section["checkpoints"] = {
            f"fold_{f}/{s}/{model.checkpoint(f, s, checkpoint).name}": checkpoint_sha256(model.checkpoint(f, s, checkpoint))
            for f in folds for s in STAGES if model.checkpoint(f, s, checkpoint).is_file()}
    return section


def build_record(model: Mapping[str, Any], settings: Mapping[str, Any], about: Mapping[str, Any]) -> dict[str, Any]:
    """A record as written: the compared ``model`` and ``settings`` sections, then ``about`` (never compared)."""
    record = {"cmbunet_version": __version__, "model": dict(model), "settings": dict(settings),
              "about": {**about, "written": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}}
    return json.loads(json.dumps(record, default=str))  # tuples as lists, as the file will read back


def _leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted.key, value)`` for every leaf of nested dicts; lists are leaves."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _leaves(inner, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, value


def record_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for every compared value that differs (``absent`` where one record lacks it)."""
    before = dict(_leaves({k: old.get(k) for k in COMPARED}))
    after = dict(_leaves({k: new.get(k) for k in COMPARED}))
    return [f"{key}: {json.dumps(before.get(key, 'absent'))} -> {json.dumps(after.get(key, 'absent'))}"
            for key in sorted(set(before) | set(after)) if before.get(key, "absent") != after.get(key, "absent")]


def read_record(path: Path) -> dict[str, Any]:
    """The record in ``path``; an unreadable one is an error naming it (it is never silently replaced)."""
    try:
        record = load_json(path)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot be read ({e}); delete it and pass --overwrite to predict every case again")
    if not isinstance(record, dict):
        raise InputError(path, "is not a prediction record (no JSON object); delete it and pass --overwrite")
    return record


def check_record(output_dir: Path, record: Mapping[str, Any], has_outputs: bool, overwrite: bool) -> None:
    """Stop, before anything is written, when ``output_dir`` holds outputs made otherwise than ``record`` says.

    ``has_outputs``: some case of this run is already finished there. Those outputs may be continued only when
    the record there is this one; without ``overwrite`` another record (or none, with outputs present) is an error
    naming each difference and the option that predicts every case again."""
    path = Path(output_dir) / RECORD_FILE
    if overwrite or not has_outputs:
        return
    if not path.is_file():
        raise PredictionRecordError(
            f"{output_dir}: holds predictions but no {RECORD_FILE} (written by an older version), so the model "
            "and settings that made them are unknown; pass --overwrite to predict every case again with this "
            "model and these settings, or choose another output folder")
    changed = record_differences(read_record(path), record)
    if changed:
        raise PredictionRecordError(
            f"{path}: the predictions in {output_dir} were made with another model or other settings than this "
            "run's:\n  " + "\n  ".join(changed) + "\npass --overwrite to predict every case again with this "
            "run's model and settings, or choose another output folder")


def write_record(output_dir: Path, record: Mapping[str, Any]) -> Path:
    """Write ``record`` atomically into ``output_dir``; an equal record there is kept, with its first time."""
    path = Path(output_dir) / RECORD_FILE
    if path.is_file():
        try:
            old = load_json(path)
        except (OSError, ValueError, UnicodeDecodeError):
            old = None
        if isinstance(old, dict) and not record_differences(old, record) \
                and old.get("cmbunet_version") == record.get("cmbunet_version"):
            return path
    save_json(dict(record), path)
    return path
