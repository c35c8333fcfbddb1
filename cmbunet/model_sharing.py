"""Moving a trained model between machines: ``cmbunet_export_model`` packs a model folder into one zip, and
``cmbunet_install_model`` checks such a zip and installs it as ``CMBUNET_RESULTS/DatasetXXX_Name/cmbunet``.

The zip holds what prediction needs (``plans.json``, ``dataset.json``, ``inference_settings.json`` when
present, ``fold_F/<stage>/checkpoint_final.pth`` of the chosen folds) and ``manifest.json``: the format, the
dataset name, the plans name (when known) and hash, the cmbunet version that exported it, and the size and
sha256 of every file. Installing uses the recorded plans name unless ``-p`` names another; zips without one
install as the default plans name.
Installing refuses, naming the file and the problem, any zip that is not exactly that: a file whose checksum
or size differs, an entry missing from or absent in the manifest, a path that is absolute or leaves the model
folder, a checkpoint of other plans. The model is extracted into a temporary folder beside the target and
renamed into place only once everything is verified, so an existing model is never left half-replaced.

A zip bomb is refused before anything is read or written: the sizes the zip's directory declares are checked
first (the manifest at most :data:`MAX_MANIFEST_BYTES`, a JSON file at most :data:`MAX_JSON_BYTES`, a checkpoint
at most :data:`MAX_CHECKPOINT_BYTES`, no entry above 1 MiB inflating more than :data:`MAX_RATIO` times, each size
equal to the manifest's, all of them together fitting on the disk). The temporary folders of an install that
was killed are removed by the next one (:func:`remove_stale_installs`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any, Sequence

from cmbunet import __version__
from cmbunet.errors import CMBUNetError, InputError, MissingStageError
from cmbunet.model_folder import (CHECKPOINT_KINDS, DATASET_JSON_FILE, INFERENCE_SETTINGS_FILE, MODEL_SUBFOLDER,
                                  PLANS_FILE, STAGES, ModelFolder, load_checkpoint, other_plans_hint,
                                  plans_name_of)
from cmbunet.paths import DEFAULT_PLANS_NAME, check_plans_name, get_root, is_dataset_name, resolve_dataset_name
from cmbunet.utilities.cli import MODEL_PLANS_HELP, add_folds_option, add_plans_option, command_parser, run_cli
from cmbunet.utilities.file_io import (HOST, STALE_TEMP_SECONDS, atomic_path, process_gone, write_checksum)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "cmbunet-model"
MANIFEST_VERSION = 1
_CHUNK = 1 << 20
#: The only files a model zip may hold besides the manifest.
_MODEL_FILE_RE = re.compile(
    rf"^({re.escape(PLANS_FILE)}|{re.escape(DATASET_JSON_FILE)}|{re.escape(INFERENCE_SETTINGS_FILE)}"
    rf"|fold_(\d+|all)/({'|'.join(STAGES)})/checkpoint_({'|'.join(CHECKPOINT_KINDS)})\.pth)$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

#: Limits on what a model zip's directory declares, checked before anything is read or extracted (zip bombs).
#: A manifest of five folds is about 3 kB; plans.json, dataset.json and inference_settings.json a few kB; a
#: checkpoint of the default plans a few MB.
MAX_MANIFEST_BYTES = 1 << 20
MAX_JSON_BYTES = 16 << 20
MAX_CHECKPOINT_BYTES = 4 << 30
#: Most an entry may inflate (uncompressed / compressed size): checkpoints are stored uncompressed and JSON
#: compresses about 5 times; deflate itself reaches 1032. Checked for entries above :data:`_RATIO_FROM_BYTES`.
MAX_RATIO = 100
_RATIO_FROM_BYTES = 1 << 20


# ------------------------------------------------------------------------------------------------ export
def export_files(model: ModelFolder, folds: Sequence[str]) -> list[str]:
    """Paths (relative, ``/``-separated) of what prediction with ``folds`` needs."""
    names = [PLANS_FILE] + [n for n in (DATASET_JSON_FILE, INFERENCE_SETTINGS_FILE) if (model.path / n).is_file()]
    return names + [model.checkpoint(f, s).relative_to(model.path).as_posix() for f in folds for s in STAGES]


def _zip_problem(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
            return f"has a damaged entry {bad}" if bad else None
    except (OSError, zipfile.BadZipFile) as e:
        return f"is an incomplete zip file ({e})"


def export_model(model_dir: str | Path, output: str | Path, folds: Sequence[int | str] | None = None,
                 dataset_name: str | None = None, plans_name: str | None = None) -> dict[str, Any]:
    """Write the model of ``model_dir`` (``folds``: default every fold with all three stages trained) to the zip
    ``output`` atomically; returns the manifest. ``dataset_name`` defaults to the folder around the model,
    ``plans_name`` to the one the model folder's name stands for (``cmbunet__NAME``: NAME); it is recorded so that
    installing recreates the same folder, and left out when unknown."""
    model, output = ModelFolder(Path(model_dir)), Path(output)
    if not model.path.is_dir():
        raise InputError(model.path, "model folder does not exist" + other_plans_hint(model.path))
    plans_name = check_plans_name(plans_name) if plans_name else plans_name_of(model.path.resolve())
    name = dataset_name or model.path.resolve().parent.name
    if not is_dataset_name(name):
        raise CMBUNetError(f"{model.path}: cannot tell the dataset name (DatasetXXX_Name) from the folder; give it "
                           "with -n DatasetXXX_Name")
    if output.is_dir():
        raise InputError(output, "is a folder; give the name of the zip file to write, e.g. model.zip")
    plans_hash = model.plans_hash()
    model.inference_settings()  # a broken settings file is refused here, not on the other machine
    fold_names = [str(f) for f in folds] if folds else model.complete_folds()
    if not fold_names:
        raise MissingStageError(f"{model.path}: no fold_* folder has all three stages trained (checkpoint_final.pth)")
    missing = model.missing_checkpoints(fold_names)
    if missing:
        raise MissingStageError("cannot export, checkpoint(s) missing:\n  " + "\n  ".join(map(str, missing)))
    for f in fold_names:
        for s in STAGES:
            load_checkpoint(model.checkpoint(f, s), expected_plans_hash=plans_hash)
    files: dict[str, dict[str, Any]] = {}
    with atomic_path(output, suffix=".zip", verify=_zip_problem) as tmp, zipfile.ZipFile(tmp, "w") as z:
        for rel in export_files(model, fold_names):
            src = model.path / rel
            info = zipfile.ZipInfo(rel, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED if rel.endswith(".pth") else zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            digest, size = hashlib.sha256(), 0
            with open(src, "rb") as f, z.open(info, "w", force_zip64=src.stat().st_size > 2**31) as dst:
                while block := f.read(_CHUNK):
                    digest.update(block)
                    dst.write(block)
                    size += len(block)
            files[rel] = {"sha256": digest.hexdigest(), "size": size}
        manifest = {"format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "dataset": name,
                    **({"plans_name": plans_name} if plans_name else {}), "plans_hash": plans_hash,
                    "folds": fold_names, "cmbunet_version": __version__, "files": files}
        z.writestr(zipfile.ZipInfo(MANIFEST, date_time=(1980, 1, 1, 0, 0, 0)), json.dumps(manifest, indent=2) + "\n",
                   compress_type=zipfile.ZIP_DEFLATED)
    return manifest


# ------------------------------------------------------------------------------------------------ install
def _unsafe(name: str) -> str | None:
    """Why an entry name may not be written under the model folder, or None."""
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    if "\\" in name or any(part in ("", ".", "..") for part in name.rstrip("/").split("/")):
        return "leaves the model folder (a '..', '.', empty or backslash path component)"
    return None


def _mib(size: int) -> str:
    if size >= 2**20:
        return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"
    return f"{size / 2**10:.1f} kB" if size >= 2**10 else f"{size} bytes"


def size_limit(name: str) -> tuple[int, str]:
    """The most bytes an entry of this name may declare, and what it is."""
    if name == MANIFEST:
        return MAX_MANIFEST_BYTES, "a model manifest"
    if name.endswith(".pth"):
        return MAX_CHECKPOINT_BYTES, "a checkpoint"
    return MAX_JSON_BYTES, "a model's JSON file"


def check_declared_sizes(z: zipfile.ZipFile, where: Path) -> None:
    """Refuse a zip bomb from the zip's directory alone, before any entry is read: every entry's declared
    uncompressed size within the limit for its kind, and no large entry inflating more than :data:`MAX_RATIO`
    times its compressed size."""
    for info in z.infolist():
        limit, kind = size_limit(info.filename)
        if info.file_size > limit:
            raise InputError(where, f"{info.filename}: declares {_mib(info.file_size)} uncompressed, more than the "
                                    f"{_mib(limit)} {kind} can need; refusing to read or extract anything (a zip "
                                    "bomb or a damaged zip)")
        if info.file_size > _RATIO_FROM_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise InputError(where, f"{info.filename}: would inflate {info.file_size / max(info.compress_size, 1):.0f}"
                                    f" times, from {_mib(info.compress_size)} to {_mib(info.file_size)}; model files "
                                    f"inflate at most {MAX_RATIO} times, so nothing is extracted (a zip bomb?)")


def check_disk_space(manifest: dict[str, Any], folder: Path, where: Path) -> None:
    """The files of the manifest (their declared sizes, equal to the zip's: :func:`check_entries`) fit on the
    disk of ``folder``, with room to spare, before anything is extracted."""
    need = sum(entry["size"] for entry in manifest["files"].values())
    existing = next((p for p in (folder, *folder.parents) if p.is_dir()), None)
    if existing is None:
        return
    try:
        stat = os.statvfs(existing)
    except (OSError, AttributeError):  # no statvfs on this system: extraction reports a full disk itself
        return
    free = stat.f_bavail * stat.f_frsize
    if need + (64 << 20) > free:
        raise InputError(where, f"needs {_mib(need)} of disk space to install, but only {_mib(free)} are free on "
                                f"{existing}; nothing was extracted")


def read_manifest(z: zipfile.ZipFile, where: Path) -> dict[str, Any]:
    """The zip's ``manifest.json``, checked for its format; :class:`InputError` naming the zip otherwise. Its
    declared size must be checked first (:func:`check_declared_sizes`); it is read no further than the limit."""
    if MANIFEST not in z.namelist():
        raise InputError(where, f"has no {MANIFEST}: not a model exported with cmbunet_export_model")
    try:
        with z.open(MANIFEST) as f:
            text = f.read(MAX_MANIFEST_BYTES + 1)
        if len(text) > MAX_MANIFEST_BYTES:
            raise InputError(where, f"{MANIFEST} holds more than {_mib(MAX_MANIFEST_BYTES)}; refusing to read it")
        m = json.loads(text)
    except (ValueError, UnicodeDecodeError, zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise InputError(where, f"{MANIFEST} is not valid JSON ({e})") from None
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT:
        raise InputError(where, f"{MANIFEST} is not a cmbunet model manifest (format must be '{MANIFEST_FORMAT}')")
    if m.get("format_version") != MANIFEST_VERSION:
        raise InputError(where, f"{MANIFEST} has format_version {m.get('format_version')!r}; this cmbunet "
                                f"({__version__}) reads version {MANIFEST_VERSION}")
    files, folds = m.get("files"), m.get("folds")
    problems = []
    if not isinstance(m.get("dataset"), str) or not is_dataset_name(m["dataset"]):
        problems.append(f"dataset {m.get('dataset')!r} is not a dataset name (DatasetXXX_Name)")
    if not isinstance(m.get("plans_hash"), str):
        problems.append("plans_hash is missing")
    if "plans_name" in m and not _usable_plans_name(m["plans_name"]):
        problems.append(f"plans_name {m['plans_name']!r} is not a usable plans name")
    if not isinstance(folds, list) or not folds or not all(isinstance(f, str) for f in folds):
        problems.append("folds must be a non-empty list of fold names")
    if not isinstance(files, dict) or PLANS_FILE not in files:
        problems.append(f"files must map every file, {PLANS_FILE} included, to its sha256 and size")
    else:
        for rel, entry in files.items():
            if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and _HEX64.match(entry["sha256"])
                    and isinstance(entry.get("size"), int) and entry["size"] >= 0):
                problems.append(f"the entry of {rel} needs a sha256 (64 hex digits) and a size")
    if problems:
        raise InputError(where, f"{MANIFEST} is malformed: " + "; ".join(problems))
    return m


def _usable_plans_name(value: Any) -> bool:
    """A manifest's plans name becomes part of a folder name: only names ``-p`` would accept."""
    try:
        return isinstance(value, str) and check_plans_name(value) == value
    except CMBUNetError:
        return False


def check_entries(z: zipfile.ZipFile, manifest: dict[str, Any], where: Path) -> None:
    """Every entry is listed, safe and a model file; every listed file is in the zip, once."""
    files = manifest["files"]
    seen: set[str] = set()
    for info in z.infolist():
        name = info.filename
        problem = _unsafe(name)
        if problem is None and name in seen:
            problem = "appears twice in the zip"
        elif problem is None and name.endswith("/"):
            problem = None if any(f.startswith(name) for f in files) else "is a folder holding no listed file"
        elif problem is None and name != MANIFEST and name not in files:
            problem = f"is in the zip but not listed in {MANIFEST}"
        elif problem is None and name != MANIFEST and not _MODEL_FILE_RE.match(name):
            problem = "is not a file of a model folder"
        elif problem is None and name != MANIFEST and info.file_size != files[name]["size"]:
            problem = (f"declares {info.file_size} bytes uncompressed but {MANIFEST} lists {files[name]['size']}; "
                       "the zip is damaged or was changed after export")
        if problem:
            raise InputError(where, f"{name}: {problem}; refusing to install")
        seen.add(name)
    for rel in files:
        if rel not in seen:
            raise InputError(where, f"{rel}: listed in {MANIFEST} but missing from the zip")
    for fold in manifest["folds"]:
        absent = [s for s in STAGES if f"fold_{fold}/{s}/checkpoint_final.pth" not in files]
        if absent:
            raise InputError(where, f"{MANIFEST} lists fold {fold} but the zip lacks its {', '.join(absent)} stage(s)")


def extract_verified(z: zipfile.ZipFile, manifest: dict[str, Any], folder: Path, where: Path) -> None:
    """Extract the listed files into ``folder``, each checked against its size and sha256 while it is read."""
    for rel, entry in manifest["files"].items():
        dest = folder.joinpath(*rel.split("/"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        try:
            with z.open(rel) as src, open(dest, "wb") as dst:
                while block := src.read(_CHUNK):
                    size += len(block)
                    if size > entry["size"]:
                        break
                    digest.update(block)
                    dst.write(block)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
            raise InputError(where, f"{rel}: cannot be read, the zip is damaged ({e})") from None
        if size != entry["size"]:
            found = f"more than {entry['size']}" if size > entry["size"] else str(size)
            raise InputError(where, f"{rel}: holds {found} bytes but {MANIFEST} lists {entry['size']}; the file is "
                                    "damaged or was changed after export")
        if digest.hexdigest() != entry["sha256"]:
            raise InputError(where, f"{rel}: sha256 {digest.hexdigest()} differs from {entry['sha256']} in "
                                    f"{MANIFEST}; the file is damaged or was changed after export")
        if rel.endswith(".pth"):  # the installed checkpoint is checked on every load, as a trained one
            write_checksum(dest, entry["sha256"])


def check_model(folder: Path, manifest: dict[str, Any], where: Path) -> None:
    """The extracted files form a usable model of the manifest's plans."""
    model = ModelFolder(folder)
    try:
        found = model.plans_hash()
        model.inference_settings()
    except CMBUNetError as e:  # name the file inside the zip, not the temporary folder
        raise InputError(where, str(e).replace(f"{folder}{os.sep}", "")) from None
    if found != manifest["plans_hash"]:
        raise InputError(where, f"{PLANS_FILE}: hashes to {found}, not to the plans hash {manifest['plans_hash']} "
                                f"of {MANIFEST}")
    for rel in manifest["files"]:
        if rel.endswith(".pth"):
            try:
                ckpt = load_checkpoint(folder / rel)
            except InputError as e:
                raise InputError(where, f"{rel}: {e.problem}") from None
            if ckpt.get("plans_hash") != found:
                raise InputError(where, f"{rel}: was trained with plans {ckpt.get('plans_hash')}, not with the "
                                        f"{PLANS_FILE} of the zip ({found})")


def holds_model(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def install_model(zip_path: str | Path, results_root: str | Path | None = None, force: bool = False,
                  plans_name: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Verify ``zip_path`` and install it as ``RESULTS/DatasetXXX_Name/cmbunet`` (``cmbunet__PLANS`` for another
    plans name than the default); returns that folder and the manifest. ``plans_name`` defaults to the one the
    manifest records, else the default name. An existing model is replaced only with ``force``, and only once the
    new one is verified."""
    where = Path(zip_path)
    try:
        root = get_root("results", results_root)
    except CMBUNetError:  # no results root given: the zip is checked first, the root is asked for below
        root = None
    for message in remove_stale_installs(root) if root is not None else []:  # whatever becomes of this install
        print(message, file=sys.stderr)
    if not where.is_file():
        raise InputError(where, "model zip does not exist")
    try:
        z = zipfile.ZipFile(where)
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(where, f"is not a zip file ({e}); expected a model exported with cmbunet_export_model") from None
    with z:
        check_declared_sizes(z, where)
        manifest = read_manifest(z, where)
        check_entries(z, manifest, where)
        plans_name = plans_name or manifest.get("plans_name", DEFAULT_PLANS_NAME)
        target = ModelFolder.of_dataset(manifest["dataset"], get_root("results", results_root), plans_name).path
        if holds_model(target) and not force:
            raise InputError(target, "already holds a model; add --force to replace it (its folds, validation "
                                     "results and settings are all removed), or install into another --results-root")
        check_disk_space(manifest, target.parent, where)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target, "install"), dir=target.parent))
        try:
            extract_verified(z, manifest, tmp, where)
            check_model(tmp, manifest, where)
            os.chmod(tmp, 0o777 & ~_umask())
            replace_folder(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target, manifest


#: Temporary folders of an install: ``.MODEL.install-HOST-PID-XXXXXXXX`` (the extracted model) and
#: ``.MODEL.replaced-HOST-PID-XXXXXXXX`` (the old model moved aside while the new one is renamed into place);
#: older versions wrote no host.
_INSTALL_TEMP_RE = re.compile(r"^\.(?P<model>.+)\.(?P<kind>install|replaced)-(?:(?P<host>[A-Za-z0-9]*)-)?(?P<pid>\d+)-")


def _temp_prefix(target: Path, kind: str) -> str:
    return f".{target.name}.{kind}-{HOST}-{os.getpid()}-"


def remove_stale_installs(results_root: Path) -> list[str]:
    """Remove the temporary folders that killed installs left in the dataset folders of ``results_root``, and
    return a message for each. A folder is stale when the install that made it no longer runs (same host, pid
    gone) or was not touched for :data:`STALE_TEMP_SECONDS`. An old model that a killed ``--force`` install had
    moved aside, with nothing installed in its place, is put back instead of deleted."""
    messages: list[str] = []
    if not results_root.is_dir():
        return messages
    for path in sorted(results_root.glob("*/.*")):
        m = _INSTALL_TEMP_RE.match(path.name)
        if not m or not path.is_dir() or not is_dataset_name(path.parent.name):
            continue
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            continue
        pid, host = int(m.group("pid")), m.group("host")
        gone = (host in (None, HOST) and process_gone(pid)) or age > STALE_TEMP_SECONDS
        if not gone:
            continue
        target, old = path.parent / m.group("model"), path / MODEL_SUBFOLDER
        if m.group("kind") == "replaced" and holds_model(old) and not holds_model(target):
            try:
                if target.is_dir():
                    target.rmdir()
                os.replace(old, target)
                messages.append(f"restored the model {target} that an interrupted install (pid {pid}) had moved "
                                f"aside into {path.name}")
            except OSError as e:
                messages.append(f"warning: could not restore the model in {path} to {target}: {e.strerror or e}")
                continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            messages.append(f"removed {path}, left by an interrupted install (pid {pid})")
    return messages


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_folder(new: Path, target: Path) -> None:
    """Rename ``new`` onto ``target``; an existing ``target`` is moved aside first and deleted afterwards (put
    back if the rename fails)."""
    if not holds_model(target):
        if target.is_dir():
            target.rmdir()
        os.replace(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=_temp_prefix(target, "replaced"), dir=target.parent))
    os.replace(target, old / MODEL_SUBFOLDER)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old / MODEL_SUBFOLDER, target)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ commands
def export_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "cmbunet_export_model",
        "Pack a trained model (plans, settings and the final checkpoints of the chosen folds) into one "
        "zip with a manifest of sha256 checksums, for cmbunet_install_model on another machine.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-d", "--dataset", help="dataset id or name; the model is CMBUNET_RESULTS/DatasetXXX_Name/cmbunet")
    src.add_argument("-m", "--model", help="a trained model folder (holding plans.json and fold_F/)")
    p.add_argument("-n", "--name", default=None,
                   help="dataset name recorded in the zip (default: the folder around the model, DatasetXXX_Name)")
    add_folds_option(p, "folds to export, e.g. 0 1 2 3 4 or all (default: every fold with all three stages trained)")
    p.add_argument("-o", "--output", required=True, help="the zip file to write, e.g. model.zip")
    p.add_argument("--results-root", default=None, help="results root (default: $CMBUNET_RESULTS)")
    add_plans_option(p, help=f"with -d: {MODEL_PLANS_HELP}. Recorded in the zip as the plans name "
                             "cmbunet_install_model installs it under; with -m it is taken from the folder name "
                             "(cmbunet__NAME) unless given")
    return p


@run_cli
def export_main(argv: list[str] | None = None) -> int:
    args = export_parser().parse_args(argv)
    if args.model:
        model_dir = Path(args.model)
    else:
        root = get_root("results", args.results_root)
        model_dir = ModelFolder.of_dataset(resolve_dataset_name(args.dataset, root), root, args.plans_name).path
    given = args.plans_name if (args.plans_name_given or not args.model) else None
    manifest = export_model(model_dir, args.output, args.folds, args.name, given)
    size = Path(args.output).stat().st_size / 2**20
    print(f"exported {manifest['dataset']} (folds {' '.join(manifest['folds'])}, plans "
          f"{manifest.get('plans_name', '(name unknown)')} {manifest['plans_hash']}, {len(manifest['files'])} files) "
          f"to {args.output} ({size:.1f} MiB)")
    return 0


def install_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "cmbunet_install_model",
        "Verify a model zip written by cmbunet_export_model (every checksum) and install it as "
        "CMBUNET_RESULTS/DatasetXXX_Name/cmbunet, ready for cmbunet_predict -d.")
    p.add_argument("zip", help="the model zip")
    p.add_argument("--results-root", default=None, help="results root (default: $CMBUNET_RESULTS)")
    p.add_argument("--force", action="store_true", help="replace a model already installed for that dataset")
    add_plans_option(p, help="install as the model of this plans name (CMBUNET_RESULTS/DatasetXXX_Name/cmbunet for "
                             f"{DEFAULT_PLANS_NAME}, cmbunet__NAME for another name); default: the plans name "
                             f"recorded in the zip, {DEFAULT_PLANS_NAME} for zips that record none")
    return p


@run_cli
def install_main(argv: list[str] | None = None) -> int:
    args = install_parser().parse_args(argv)
    target, manifest = install_model(args.zip, args.results_root, args.force,
                                     args.plans_name if args.plans_name_given else None)
    print(f"installed {manifest['dataset']} as the model of plans name {plans_name_of(target)} (folds "
          f"{' '.join(manifest['folds'])}, plans {manifest['plans_hash']}, exported with cmbunet "
          f"{manifest.get('cmbunet_version', '?')}) into {target}")
    print(f"predict with: cmbunet_predict -i INPUT -o OUTPUT -m {target}")
    return 0
