"""Find the cases to predict in the INPUT of ``cmbunet_predict``.

Three layouts are understood, so that the same command runs on the VALDO test release, on an nnU-Net style
``imagesTs`` folder and on a single scan:

* a VALDO tree: ``sub-XXX/sub-XXX_space-T2S_desc-masked_{T2S,T1,T2}.nii.gz`` (the subject folders may also be
  flattened into INPUT); the prediction is named ``sub-XXX_space-T2S_prediction.nii.gz`` as VALDO requires;
* a folder of ``CASE_0000.nii.gz`` files (one per channel, 4-digit channel suffix);
* one image file (a VALDO T2S file, a ``CASE_0000`` file or, for one-channel models, any image).

A case whose channels are incomplete is returned with an ``error`` instead of being dropped, so the caller
can report it next to the cases that did run.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from cmbunet.errors import InputError
from cmbunet.imageio.reader_writer import SUPPORTED_ENDINGS

VALDO_IMAGE_RE = re.compile(r"^(sub-[A-Za-z0-9]+)_space-T2S_desc-masked_([A-Za-z0-9]+)\.nii(?:\.gz)?$")
VALDO_PREDICTION_SUFFIX = "_space-T2S_prediction"


@dataclass(frozen=True)
class InputCase:
    """One case to predict: its identifier, its channel files in model order, and the output file stem."""

    case: str
    images: tuple[Path, ...] = field(default_factory=tuple)
    output_stem: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def valdo_contrast(channel_name: str) -> str:
    """Map a model channel name to the VALDO file contrast (``T2*``, ``t2star`` and ``T2S`` all mean ``T2S``)."""
    name = channel_name.strip().upper().replace("*", "S").replace(" ", "")
    return {"T2STAR": "T2S", "T2SW": "T2S", "SWI": "T2S"}.get(name, name)


def ordered_channel_names(channel_names: Mapping[str, str]) -> list[str]:
    """Channel names in channel-index order (the plans store them as ``{"0": "T2S", "1": "T1"}``)."""
    return [channel_names[k] for k in sorted(channel_names, key=lambda k: int(k))]


def strip_ending(name: str, endings: Sequence[str] = SUPPORTED_ENDINGS) -> str:
    """File name without its image ending (``.nii.gz`` counts as one ending)."""
    for ending in sorted(endings, key=len, reverse=True):
        if name.endswith(ending):
            return name[: -len(ending)]
    return name


def _valdo_case(subject: str, files: Mapping[str, Path], contrasts: Sequence[str], folder: Path) -> InputCase:
    """Assemble one VALDO subject, naming the missing contrast files when there are any."""
    stem = subject + VALDO_PREDICTION_SUFFIX
    missing = [c for c in contrasts if c not in files]
    if missing:
        expected = ", ".join(f"{subject}_space-T2S_desc-masked_{c}.nii.gz" for c in missing)
        return InputCase(subject, (), stem, f"missing channel file(s) {expected} in {folder}")
    return InputCase(subject, tuple(files[c] for c in contrasts), stem)


def _find_valdo(folder: Path, contrasts: Sequence[str]) -> list[InputCase] | None:
    """VALDO cases in ``folder`` (subject folders or flat), or ``None`` when the folder is not a VALDO tree."""
    found: dict[str, dict[str, Path]] = {}
    where: dict[str, Path] = {}
    for path in sorted(list(folder.glob("sub-*_space-T2S_desc-masked_*")) + list(folder.glob("sub-*/sub-*_space-T2S_desc-masked_*"))):
        m = VALDO_IMAGE_RE.match(path.name)
        if m and path.is_file():
            found.setdefault(m.group(1), {})[m.group(2).upper()] = path
            where[m.group(1)] = path.parent
    if not found:
        return None
    return [_valdo_case(s, found[s], contrasts, where[s]) for s in sorted(found)]


def _find_channel_suffixed(folder: Path, num_channels: int, file_ending: str) -> list[InputCase]:
    """``CASE_0000<ending>`` cases; a case missing one of the ``num_channels`` files gets an error."""
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(file_ending) + "$")
    groups: dict[str, dict[int, Path]] = {}
    ignored: list[str] = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        m = pattern.match(path.name)
        if m:
            groups.setdefault(m.group(1), {})[int(m.group(2))] = path
        elif path.name.endswith(file_ending):
            ignored.append(path.name)
    if ignored:
        warnings.warn(f"{folder}: ignoring {len(ignored)} file(s) without a 4-digit channel suffix, e.g. {ignored[0]} "
                      f"(name channel files CASE_0000{file_ending}, CASE_0001{file_ending}, ...)", stacklevel=2)
    cases = []
    for case in sorted(groups):
        chans = groups[case]
        missing = [f"{case}_{c:04d}{file_ending}" for c in range(num_channels) if c not in chans]
        if missing:
            cases.append(InputCase(case, (), case, f"missing channel file(s) {', '.join(missing)} in {folder}"))
        else:
            cases.append(InputCase(case, tuple(chans[c] for c in range(num_channels)), case))
    return cases


def _single_file_case(path: Path, contrasts: Sequence[str], file_ending: str) -> InputCase:
    """The case that one given file belongs to, with its sibling channel files."""
    m = VALDO_IMAGE_RE.match(path.name)
    if m:
        subject = m.group(1)
        files = {c: path.parent / f"{subject}_space-T2S_desc-masked_{c}.nii.gz" for c in contrasts}
        return _valdo_case(subject, {c: p for c, p in files.items() if p.is_file()}, contrasts, path.parent)
    m = re.match(r"^(.+)_(\d{4})" + re.escape(file_ending) + "$", path.name)
    if m:
        case = m.group(1)
        files = [path.parent / f"{case}_{c:04d}{file_ending}" for c in range(len(contrasts))]
        missing = [p.name for p in files if not p.is_file()]
        if missing:
            return InputCase(case, (), case, f"missing channel file(s) {', '.join(missing)} in {path.parent}")
        return InputCase(case, tuple(files), case)
    if len(contrasts) != 1:
        raise InputError(path, f"the model needs {len(contrasts)} channels; name the files CASE_0000{file_ending}, "
                               f"CASE_0001{file_ending}, ... or use the VALDO naming")
    case = strip_ending(path.name)
    return InputCase(case, (path,), case)


def find_input_cases(input_path: str | Path, channel_names: Mapping[str, str], file_ending: str = ".nii.gz") -> list[InputCase]:
    """All cases found in ``input_path`` (a folder or one file), sorted by case id.

    ``channel_names`` are the model's (``plans["channel_names"]``); they decide which VALDO contrasts are read
    and how many ``_000C`` files each case needs. Raises :class:`InputError` when nothing usable is found.
    """
    path = Path(input_path)
    names = ordered_channel_names(channel_names)
    contrasts = [valdo_contrast(n) for n in names]
    if not path.exists():
        raise InputError(path, "input does not exist")
    if path.is_file():
        return [_single_file_case(path, contrasts, file_ending)]
    cases = _find_valdo(path, contrasts)
    if cases is None:
        cases = _find_channel_suffixed(path, len(names), file_ending)
    if not cases:
        raise InputError(path, f"no input images found; expected a VALDO tree (sub-XXX/sub-XXX_space-T2S_desc-masked_T2S.nii.gz) "
                               f"or files named CASE_0000{file_ending}")
    return cases


def select_part(cases: Sequence[InputCase], num_parts: int, part_id: int) -> list[InputCase]:
    """The share of ``part_id`` when the sorted case list is split over ``num_parts`` machines (round robin),
    so that every case is predicted by exactly one part."""
    if num_parts < 1:
        raise InputError(None, f"-num_parts must be at least 1, got {num_parts}")
    if not 0 <= part_id < num_parts:
        raise InputError(None, f"-part_id must be in [0, {num_parts - 1}], got {part_id}")
    ordered = sorted(cases, key=lambda c: c.case)
    return ordered[part_id::num_parts]
