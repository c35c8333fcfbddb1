"""Find the cases to predict in the INPUT of ``cmbunet_predict``.

Four layouts are understood, so that the same command runs on the VALDO test release, on a BIDS dataset, on an
nnU-Net style ``imagesTs`` folder and on a single scan:

* a VALDO tree: ``sub-XXX/sub-XXX_space-T2S_desc-masked_{T2S,T1,T2}.nii.gz`` (the subject folders may also be
  flattened into INPUT, or hold BIDS ``ses-*/anat`` folders); the prediction is named
  ``sub-XXX_space-T2S_prediction.nii.gz`` as VALDO requires, BIDS entities kept (``sub-XXX_ses-1_space-T2S_...``);
* a BIDS dataset: ``sub-XXX/[ses-YYY/]anat/sub-XXX[_ses-YYY][_acq-...]_T2starw.nii.gz`` (the model's channel
  names decide the suffixes read, see :func:`bids_suffixes`); the case id is the file's entities
  (``sub-XXX_ses-YYY``), and every image under ``sub-*`` that is not read is listed with the reason;
* a folder of ``CASE_0000.nii.gz`` files (one per channel, 4-digit channel suffix);
* one image file (a VALDO T2S file, a BIDS image, a ``CASE_0000`` file or, for one-channel models, any image).

A case whose channels are incomplete is returned with an ``error`` instead of being dropped, and every other
entry of the input folder can be returned with the reason it is not predicted, so the caller accounts for
every entry next to the cases that did run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from cmbunet.errors import InputError
from cmbunet.imageio.reader_writer import SUPPORTED_ENDINGS
from cmbunet.utilities.case_names import CHANNEL_STEM_PATTERN, SUBJECT_PATTERN, channel_file_name, image_stem

VALDO_IMAGE_RE = re.compile(rf"^({SUBJECT_PATTERN})_space-T2S_desc-masked_([A-Za-z0-9]+)\.nii(?:\.gz)?$")
VALDO_LABEL_RE = re.compile(rf"^({SUBJECT_PATTERN})_space-T2S_CMB\.nii(?:\.gz)?$")
VALDO_PREDICTION_SUFFIX = "_space-T2S_prediction"
#: A BIDS image: entities (``sub-`` first), then the suffix (``T2starw``, ``T1w``, ...); NIfTI only, as BIDS says.
BIDS_IMAGE_RE = re.compile(rf"^({SUBJECT_PATTERN})_([A-Za-z0-9]+)\.nii(?:\.gz)?$")
#: Files and folders at the top of a BIDS dataset that are metadata or not raw data, with the reason shown.
BIDS_TOP_FILES = ("dataset_description.json", "participants.tsv", "participants.json", "README", "README.md",
                  "README.rst", "README.txt", "CHANGES", "LICENSE", "CITATION.cff", "genetic_info.json",
                  "samples.tsv", "samples.json")
BIDS_TOP_FOLDERS = ("derivatives", "sourcedata", "code", "stimuli", "phenotype")
CHANNEL_RE = re.compile(rf"^{CHANNEL_STEM_PATTERN}(" + "|".join(re.escape(e) for e in SUPPORTED_ENDINGS) + ")$")


@dataclass(frozen=True)
class InputCase:
    """One case to predict: its identifier, its channel files in model order, and the output file stem.

    An entry of the input that is not predicted is an ``InputCase`` too, named after the entry, with either an
    ``error`` (a case that cannot run, e.g. a missing channel) or an ``ignored`` reason (not an input image),
    so that the caller lists every entry of the input folder.
    """

    case: str
    images: tuple[Path, ...] = field(default_factory=tuple)
    output_stem: str = ""
    error: str | None = None
    ignored: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.ignored is None


def valdo_contrast(channel_name: str) -> str:
    """Map a model channel name to the VALDO file contrast (``T2*``, ``t2star`` and ``T2S`` all mean ``T2S``)."""
    name = channel_name.strip().upper().replace("*", "S").replace(" ", "")
    return {"T2STAR": "T2S", "T2SW": "T2S", "SWI": "T2S"}.get(name, name)


def bids_suffixes(channel_name: str) -> tuple[str, ...]:
    """The BIDS suffixes read for a model channel: T2*-weighted channels (``T2S``, ``T2*``, ``T2starw``...) read
    ``T2starw`` and its deprecated name ``T2star``; a channel named ``SWI`` reads ``swi`` (a different contrast,
    so a T2* model does not read SWI files, nor the reverse); ``T1``/``T2``/``FLAIR`` read ``T1w``/``T2w``/
    ``FLAIR``; any other name is taken as the suffix itself."""
    name = channel_name.strip()
    if name.upper() == "SWI":
        return ("swi",)
    contrast = valdo_contrast(name)
    return {"T2S": ("T2starw", "T2star"), "T2STARW": ("T2starw", "T2star"), "T1": ("T1w",), "T2": ("T2w",),
            "FLAIR": ("FLAIR",)}.get(contrast, (name,))


def bids_channel_of(channel_names: Sequence[str]) -> dict[str, int]:
    """BIDS suffix -> model channel index, for the ordered channel names of a model."""
    return {suffix: index for index, name in enumerate(channel_names) for suffix in bids_suffixes(name)}


def is_bids_root(folder: Path) -> bool:
    """A BIDS dataset root holds ``dataset_description.json`` (its ``sub-*`` folders are read either way)."""
    return (Path(folder) / "dataset_description.json").is_file()


def ordered_channel_names(channel_names: Mapping[str, str]) -> list[str]:
    """Channel names in channel-index order (the plans store them as ``{"0": "T2S", "1": "T1"}``)."""
    return [channel_names[k] for k in sorted(channel_names, key=lambda k: int(k))]


def strip_ending(name: str, endings: Sequence[str] = SUPPORTED_ENDINGS) -> str:
    """File name without its image ending (``.nii.gz`` counts as one ending); the name itself without one."""
    stem = image_stem(name, endings)
    return name if stem is None else stem


def _one_file(files: Sequence[Path], what: str) -> tuple[Path | None, str | None]:
    """The single file of a channel, or an error naming the duplicates (``a.nii`` next to ``a.nii.gz``)."""
    if len(files) == 1:
        return files[0], None
    return None, f"{len(files)} files for {what}: {', '.join(str(f) for f in files)}; keep one"


def _valdo_case(subject: str, files: Mapping[str, Sequence[Path]], contrasts: Sequence[str], folder: Path) -> InputCase:
    """Assemble one VALDO subject, naming the missing or duplicated contrast files when there are any."""
    stem = subject + VALDO_PREDICTION_SUFFIX
    missing = [c for c in contrasts if c not in files]
    if missing:
        expected = ", ".join(f"{subject}_space-T2S_desc-masked_{c}.nii.gz" for c in missing)
        return InputCase(subject, (), stem, f"missing channel file(s) {expected} in {folder}")
    images = []
    for c in contrasts:
        path, error = _one_file(files[c], f"contrast {c} of {subject}")
        if error:
            return InputCase(subject, (), stem, error)
        images.append(path)
    return InputCase(subject, tuple(images), stem)


def _bids_case(case: str, chans: Mapping[int, Sequence[Path]], names: Sequence[str], folder: Path) -> InputCase:
    """Assemble one BIDS case (its entities) from one image per model channel, naming missing or duplicated ones."""
    missing = [f"{case}_{bids_suffixes(n)[0]}.nii.gz" for c, n in enumerate(names) if c not in chans]
    if missing:
        return InputCase(case, (), case, f"missing channel file(s) {', '.join(missing)} in {folder}")
    images = []
    for c, n in enumerate(names):
        path, error = _one_file(chans[c], f"channel {n} ({' or '.join(bids_suffixes(n))}) of {case}")
        if error:
            return InputCase(case, (), case, error)
        images.append(path)
    return InputCase(case, tuple(images), case)


def _channel_case(case: str, chans: Mapping[int, Sequence[Path]], num_channels: int, folder: Path,
                  file_ending: str) -> InputCase:
    """Assemble one ``CASE_000C`` case, naming missing or duplicated channel files."""
    missing = [channel_file_name(case, c, file_ending) for c in range(num_channels) if c not in chans]
    if missing:
        return InputCase(case, (), case, f"missing channel file(s) {', '.join(missing)} in {folder}")
    images = []
    for c in range(num_channels):
        path, error = _one_file(chans[c], f"channel {c:04d} of {case}")
        if error:
            return InputCase(case, (), case, error)
        images.append(path)
    return InputCase(case, tuple(images), case)


def _bids_problem(entities: str, suffix: str, bids: Mapping[str, int]) -> str | None:
    """Why a BIDS image is not read (a suffix the model does not use, a phase or complex part), or None."""
    if suffix not in bids:
        return (f"BIDS suffix {suffix} is not an input of the model (it reads "
                f"{', '.join('*_' + s + '.nii.gz' for s in bids)})")
    part = re.search(r"_part-([^_]+)", entities)
    if part and part.group(1) != "mag":
        return f"part-{part.group(1)} image; only magnitude images (no part- entity, or part-mag) are read"
    return None


def _classify(path: Path, contrasts: Sequence[str], file_ending: str,
              bids: Mapping[str, int] | None = None) -> tuple[str, Any]:
    """What one file of the input is: ``("valdo", (subject, contrast))``, ``("bids", (entities, channel))``,
    ``("channel", (case, index))`` or ``("ignored", reason)``. ``bids`` maps BIDS suffixes to channels."""
    name = path.name
    if name.startswith("."):
        return "ignored", "hidden file"
    m = VALDO_IMAGE_RE.match(name)
    if m:
        contrast = m.group(2).upper()
        if contrast not in contrasts:
            return "ignored", f"contrast {contrast} is not an input of the model (channels: {', '.join(contrasts)})"
        return "valdo", (m.group(1), contrast)
    if VALDO_LABEL_RE.match(name):
        return "ignored", "a reference label, not an input image"
    m = CHANNEL_RE.match(name)
    if m:
        return "channel", (m.group(1), int(m.group(2)))
    m = BIDS_IMAGE_RE.match(name)
    if m and bids is not None:
        problem = _bids_problem(m.group(1), m.group(2), bids)
        return ("ignored", problem) if problem else ("bids", (m.group(1), bids[m.group(2)]))
    if name.endswith(SUPPORTED_ENDINGS):
        return "ignored", (f"image without a 4-digit channel suffix; name it {strip_ending(name)}_0000{file_ending} "
                           "or use the VALDO naming sub-XXX_space-T2S_desc-masked_T2S.nii.gz or the BIDS naming "
                           "sub-XXX_T2starw.nii.gz")
    if name.lower().endswith(SUPPORTED_ENDINGS):
        return "ignored", f"upper-case file ending; rename it to end in lower case ({', '.join(SUPPORTED_ENDINGS)})"
    if name.endswith((".raw", ".zraw")) and path.with_name(name.rsplit(".", 1)[0] + ".mhd").is_file():
        return "ignored", "voxel data of the .mhd image beside it"
    return "ignored", f"not an input image (expected {', '.join(SUPPORTED_ENDINGS)} files)"


def _listed_in_subject(path: Path, relative: Path) -> bool:
    """Whether a file under a ``sub-*`` folder that is not read gets its own ignored line: images do, except the
    VALDO release's own files (labels, contrasts the model does not read); sidecars, tables and hidden files not."""
    return (not any(part.startswith(".") for part in relative.parts) and path.name.endswith(SUPPORTED_ENDINGS)
            and not VALDO_IMAGE_RE.match(path.name) and not VALDO_LABEL_RE.match(path.name))


def _top_level_bids_reason(entry: Path) -> str | None:
    """The reason for an entry at the top of a BIDS dataset that is metadata or no raw data, or None."""
    if entry.is_dir() and entry.name in BIDS_TOP_FOLDERS:
        return f"BIDS {entry.name} folder; only sub-* subject folders are read"
    if entry.is_file() and (entry.name in BIDS_TOP_FILES or entry.name.endswith((".json", ".tsv"))):
        return "BIDS metadata, not an image"
    return None


def _scan_folder(folder: Path, contrasts: Sequence[str], file_ending: str,
                 names: Sequence[str] | None = None) -> list[InputCase]:
    """Every entry of ``folder``: VALDO subjects (flat, or in ``sub-*`` folders at any depth, as in BIDS trees
    with ``ses-*/anat``), BIDS images, ``CASE_000C`` cases, and one ignored entry, with its reason, for everything
    else at the top of ``folder`` and for every image under ``sub-*`` that is not read (VALDO release files aside)."""
    names = list(names) if names is not None else list(contrasts)
    bids_map = bids_channel_of(names)
    valdo: dict[str, dict[str, list[Path]]] = {}
    bids: dict[str, dict[int, list[Path]]] = {}
    where: dict[str, Path] = {}
    channels: dict[str, dict[int, list[Path]]] = {}
    ignored: list[InputCase] = []
    bids_root = is_bids_root(folder)

    def take(path: Path, shown: str) -> bool:
        kind, what = _classify(path, contrasts, file_ending, bids_map)
        if kind == "valdo":
            valdo.setdefault(what[0], {}).setdefault(what[1], []).append(path)
            where[what[0]] = path.parent
        elif kind == "bids":
            bids.setdefault(what[0], {}).setdefault(what[1], []).append(path)
            where.setdefault(what[0], path.parent)
        elif kind == "channel" and path.parent == folder:
            channels.setdefault(what[0], {}).setdefault(what[1], []).append(path)
        else:
            if kind == "channel":
                what = "CASE_000C files are read only at the top of the input folder"
            if shown:
                ignored.append(InputCase(shown, (), shown, ignored=what))
            return False
        return True

    for entry in sorted(folder.iterdir()):
        reason = _top_level_bids_reason(entry) if bids_root else None
        if reason:
            ignored.append(InputCase(entry.name, (), entry.name, ignored=reason))
        elif entry.is_dir():
            if entry.name.startswith("sub-") and not entry.name.startswith("."):
                used = []
                for p in sorted(entry.rglob("*")):
                    if p.is_file():
                        relative = p.relative_to(folder)
                        used.append(take(p, relative.as_posix() if _listed_in_subject(p, relative) else ""))
                if not any(used):
                    ignored.append(InputCase(entry.name, (), entry.name, ignored=(
                        "subject folder holds no image the model reads: sub-XXX_space-T2S_desc-masked_<contrast>.nii.gz "
                        f"of its contrasts ({', '.join(contrasts)}) or BIDS "
                        f"{' / '.join('sub-XXX_' + s + '.nii.gz' for s in bids_map)}")))
            else:
                ignored.append(InputCase(entry.name, (), entry.name, ignored=(
                    "folder; only sub-* subject folders are searched")))
        elif entry.is_file():
            take(entry, entry.name)
        else:
            ignored.append(InputCase(entry.name, (), entry.name, ignored="not a file (broken link?)"))
    found = [(_valdo_case(s, valdo[s], contrasts, where[s]), "VALDO") for s in valdo]
    found += [(_bids_case(c, bids[c], names, where[c]), "BIDS") for c in bids]
    found += [(_channel_case(c, channels[c], len(contrasts), folder, file_ending), "CASE_000C") for c in channels]
    ignored += [InputCase(p.name, (), p.name, ignored=f"channel {index:04d} but the model has {len(contrasts)} "
                                                      "channel(s)")
                for chans in channels.values() for index, paths in chans.items() if index >= len(contrasts)
                for p in paths]
    layouts: dict[str, list[str]] = {}
    for c, layout in found:
        layouts.setdefault(c.case, []).append(layout)
    cases = [InputCase(c.case, (), c.output_stem, f"case id {c.case} is given both as "
                                                   f"{' and as '.join(layouts[c.case])} files; keep one naming")
             if len(layouts[c.case]) > 1 else c for c, _ in found]
    return sorted(cases, key=lambda c: c.case) + sorted(ignored, key=lambda c: c.case)


def _single_file_case(path: Path, contrasts: Sequence[str], file_ending: str,
                      names: Sequence[str] | None = None) -> InputCase:
    """The case that one given file belongs to, with its sibling channel files (``.nii`` or ``.nii.gz``)."""
    m = VALDO_IMAGE_RE.match(path.name)
    if m:
        subject = m.group(1)
        files = {c: [p for e in (".nii.gz", ".nii") if (p := path.parent / f"{subject}_space-T2S_desc-masked_{c}{e}").is_file()]
                 for c in contrasts}
        return _valdo_case(subject, {c: f for c, f in files.items() if f}, contrasts, path.parent)
    m = CHANNEL_RE.match(path.name)
    if m:
        case = m.group(1)
        chans = {c: [p for e in SUPPORTED_ENDINGS if (p := path.parent / channel_file_name(case, c, e)).is_file()]
                 for c in range(len(contrasts))}
        return _channel_case(case, {c: f for c, f in chans.items() if f}, len(contrasts), path.parent, file_ending)
    names = list(names) if names is not None else list(contrasts)
    bids_map = bids_channel_of(names)
    m = BIDS_IMAGE_RE.match(path.name)
    if m and not _bids_problem(m.group(1), m.group(2), bids_map):
        case, given = m.group(1), bids_map[m.group(2)]
        sibling = {c: [path] if c == given else
                   [p for s in bids_suffixes(n) for e in (".nii.gz", ".nii") if (p := path.parent / f"{case}_{s}{e}").is_file()]
                   for c, n in enumerate(names)}
        return _bids_case(case, {c: f for c, f in sibling.items() if f}, names, path.parent)
    if len(contrasts) != 1:
        raise InputError(path, f"the model needs {len(contrasts)} channels; name the files CASE_0000{file_ending}, "
                               f"CASE_0001{file_ending}, ... or use the VALDO naming")
    case = strip_ending(path.name)
    return InputCase(case, (path,), case)


def find_input_cases(input_path: str | Path, channel_names: Mapping[str, str], file_ending: str = ".nii.gz",
                     with_ignored: bool = False) -> list[InputCase]:
    """All cases found in ``input_path`` (a folder or one file), sorted by case id.

    ``channel_names`` are the model's (``plans["channel_names"]``); they decide which VALDO contrasts and BIDS
    suffixes are read and how many ``_000C`` files each case needs. Image files may end in any supported
    ending (``.nii`` as well as ``.nii.gz``). With ``with_ignored``, every other entry of the folder follows as an ignored
    :class:`InputCase` with its reason. Raises :class:`InputError` when nothing usable is found.
    """
    path = Path(input_path)
    names = ordered_channel_names(channel_names)
    contrasts = [valdo_contrast(n) for n in names]
    if not path.exists():
        raise InputError(path, "input does not exist")
    if path.is_file():
        return [_single_file_case(path, contrasts, file_ending, names)]
    entries = _scan_folder(path, contrasts, file_ending, names)
    cases = [c for c in entries if c.ignored is None]
    if not cases:
        reasons = "; ".join(f"{c.case}: {c.ignored}" for c in entries[:3])
        raise InputError(path, f"no input images found; expected a VALDO tree (sub-XXX/sub-XXX_space-T2S_desc-masked_T2S.nii.gz), "
                               "a BIDS dataset (sub-XXX/[ses-YYY/]anat/sub-XXX[_ses-YYY]_T2starw.nii.gz) "
                               f"or files named CASE_0000{file_ending}" + (f" (found {reasons})" if reasons else ""))
    return entries if with_ignored else cases


def select_part(cases: Sequence[InputCase], num_parts: int, part_id: int) -> list[InputCase]:
    """The share of ``part_id`` when the sorted case list is split over ``num_parts`` machines (round robin),
    so that every case is predicted by exactly one part."""
    if num_parts < 1:
        raise InputError(None, f"--num-parts must be at least 1, got {num_parts}")
    if not 0 <= part_id < num_parts:
        raise InputError(None, f"--part-id must be in [0, {num_parts - 1}] for --num-parts {num_parts}, got {part_id}")
    ordered = sorted(cases, key=lambda c: c.case)
    return ordered[part_id::num_parts]
