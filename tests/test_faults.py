"""Faults and hostile files: two runs of one training fold or one preprocessing at once, bit rot in a checkpoint,
file names at the file system's length limit, predictions aimed at a model or a data root, and errors that
reach the user from deep inside a command.

Each case expects either a correct result or a clear error naming the file and the problem, with no traceback
and nothing the user had lost or overwritten.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import shutil
import signal
import socket
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from cmbunet import errors
from cmbunet.errors import ChecksumError
from cmbunet.imageio.reader_writer import SimpleITKIO
from cmbunet.inference.cli import main as predict_main
from cmbunet.model_folder import ModelFolder
from cmbunet.plan_and_preprocess import PREPROCESS_LOCK
from cmbunet.plan_and_preprocess import main as plan_main
from cmbunet.plans import apply_overrides
from cmbunet.training.checkpoint import CHECKPOINT_KEYS, load_checkpoint, save_checkpoint
from cmbunet.training.cli import main as train_main
from cmbunet.utilities import file_io
from cmbunet.utilities.cli import run_cli
from test_bad_input import BASE, env, run_and_check, tree_state, write_fake_model  # noqa: F401


@contextlib.contextmanager
def lock_held_elsewhere(path: Path) -> Iterator[subprocess.Popen]:
    """Another process that holds the lock ``path`` (through the real lock module) until it is killed."""
    code = ("import sys, time\nfrom cmbunet.utilities.locks import exclusive_lock\n"
            "with exclusive_lock(sys.argv[1], 'a test'):\n    print('held', flush=True)\n    time.sleep(300)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------------- locks
def test_second_training_of_a_fold_is_refused_and_a_stale_lock_is_taken_over(env, tmp_path, capsys):
    """While another run trains fold 0, cmbunet_train of fold 0 is refused naming that run and the lock and writes
    nothing. Once that run is killed (-9), its lock is stale: the next run says so, takes it, and releases it
    again when it stops with an error (here: the model folder holds models of other plans)."""
    res = tmp_path / "res"
    other_plans = apply_overrides(env["plans"], ["target_spacing=[2,2,3]"])
    model = ModelFolder(write_fake_model(res / BASE / "cmbunet", other_plans))
    lock = model.train_lock_file(0)
    argv = [BASE, "0", "-npp", "0", "--preprocessed-root", str(env["pre"]), "--results-root", str(res)]
    with lock_held_elsewhere(lock) as holder:
        run_and_check(capsys, train_main, argv, inputs=[env["pre"]], outputs=[res],
                      expect=[f"training of {BASE} fold 0", "is already running", f"pid {holder.pid} on "
                              f"{socket.gethostname()}", str(lock)])
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert lock.is_file()  # a killed run leaves its lock behind
        capsys.readouterr()
        assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert (f"removing the stale lock {lock} (its holder, pid {holder.pid} on {socket.gethostname()}, no longer "
            "runs)") in err
    assert "other plans" in err and "Traceback" not in err
    assert not lock.exists()  # released on the error


def test_second_preprocessing_of_a_dataset_is_refused(env, tmp_path, capsys):
    pre = tmp_path / "pre"
    shutil.copytree(env["pre"], pre)
    lock = pre / BASE / PREPROCESS_LOCK
    with lock_held_elsewhere(lock) as holder:
        run_and_check(capsys, plan_main, ["-d", BASE, "--preset", "tiny", "--raw-root", str(env["raw"]),
                                          "--preprocessed-root", str(pre), "-np", "1", "--clean"],
                      inputs=[env["raw"]], outputs=[pre],
                      expect=[f"preprocessing of {BASE} is already running", f"pid {holder.pid}", str(lock)])


# ---------------------------------------------------------------------------------------------------- temp names
def test_a_240_byte_file_name_is_written_atomically(tmp_path):
    """The temporary name does not grow with the target's name, so any legal name (here 240 bytes, many dots)
    can be written; nothing but the targets is left in the folder."""
    stem = "sub-" + "x.y-" * 29 + "z" * 112  # 232 bytes with many dots
    image, table = tmp_path / f"{stem}.nii.gz", tmp_path / f"{stem}.json"
    assert len(image.name.encode()) == 239 and len(table.name.encode()) == 237
    long_name = tmp_path / ("n" * 236 + ".npz")
    assert len(long_name.name.encode()) == 240
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    props = {"spacing": [1.0, 1.0, 2.0], "origin": [0.0, 0.0, 0.0], "direction": list(np.eye(3).ravel()),
             "shape": [4, 5, 6]}
    SimpleITKIO.write(array, image, props)
    file_io.save_json({"case": stem}, table)
    file_io.save_npz(long_name, data=array)
    assert np.array_equal(SimpleITKIO.read_image(image)[0], array)
    assert file_io.load_json(table) == {"case": stem}
    assert np.array_equal(np.load(long_name)["data"], array)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([image.name, table.name, long_name.name])
    # the short temporary name of a killed writer is still recognised and removed by the next run
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / f".part-{file_io._HOST}-{int(dead.stdout)}-abcd1234.nii.gz"
    left.write_bytes(b"half")
    assert file_io.remove_stale_temp_files(tmp_path) == [left]


# ---------------------------------------------------------------------------------------------------- checksums
def largest_entry_data(path: Path) -> tuple[int, int]:
    """Offset and size of the bytes of the largest entry (a weight tensor) of a torch zip checkpoint."""
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    assert info.compress_type == zipfile.ZIP_STORED
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), dtype="<u2")
    return info.header_offset + 30 + int(name_len) + int(extra_len), info.file_size


def test_bit_rot_in_a_checkpoint_is_found_and_names_the_file(env, tmp_path, capsys):
    """64 inverted bytes inside a weight tensor keep the file size and a loadable zip (torch.load does not check
    the zip's CRC); the checksum written with the checkpoint finds them, in load_checkpoint and in cmbunet_predict."""
    model = tmp_path / "model"
    shutil.copytree(env["model"], model)
    ckpt = model / "fold_0" / "screening" / "checkpoint_final.pth"
    old = torch.load(ckpt, weights_only=True)
    save_checkpoint(ckpt, {k: old.get(k) for k in CHECKPOINT_KEYS})
    assert file_io.checksum_file(ckpt).read_text() == f"{file_io.file_sha256(ckpt)}  checkpoint_final.pth\n"
    assert torch.equal(next(iter(load_checkpoint(ckpt)["weights"].values())), next(iter(old["weights"].values())))

    start, size = largest_entry_data(ckpt)
    data = bytearray(ckpt.read_bytes())
    at = start + size // 2
    data[at:at + 64] = bytes(b ^ 0xFF for b in data[at:at + 64])
    ckpt.write_bytes(bytes(data))
    assert torch.load(ckpt, weights_only=True)["weights"].keys() == old["weights"].keys()  # loads silently

    with pytest.raises(ChecksumError, match=f"^{ckpt}: is damaged: its sha256 is"):
        load_checkpoint(ckpt)
    run_and_check(capsys, predict_main, ["-i", str(env["ds"] / "imagesTs"), "-o", str(tmp_path / "out"), "-m",
                                         str(model), "-npp", "0"],
                  inputs=[env["ds"], model], outputs=[tmp_path],
                  expect=[str(ckpt), "is damaged", "checkpoint_final.pth.sha256"])


# ---------------------------------------------------------------------------------------------------- output folders
@pytest.mark.parametrize("where", ["model", "inside the model", "model copied elsewhere", "results root",
                                   "preprocessed root", "raw root"])
def test_predict_refuses_an_output_folder_in_a_model_or_a_data_root(env, tmp_path, capsys, monkeypatch, where):
    """-o naming the model folder, a folder inside it, or a data root (results, preprocessed, raw) is refused
    before anything is written, naming the folder and what it is."""
    model = env["model"]
    if where == "model copied elsewhere":  # a model folder of any name is recognised by its folds
        model = tmp_path / "my model"
        shutil.copytree(env["model"], model)
    monkeypatch.setenv("CMBUNET_PREPROCESSED", str(env["pre"]))
    monkeypatch.setenv("CMBUNET_RAW", str(env["raw"]))
    out, what = {"model": (model, "model folder"), "inside the model": (model / "fold_0" / "preds", "model folder"),
                 "model copied elsewhere": (model, "model folder"),
                 "results root": (env["res"], "results root (CMBUNET_RESULTS)"),
                 "preprocessed root": (env["pre"], "preprocessed root (CMBUNET_PREPROCESSED)"),
                 "raw root": (env["raw"], "raw root (CMBUNET_RAW)")}[where]
    protected = {"results root": env["res"], "preprocessed root": env["pre"], "raw root": env["raw"]}.get(where, model)
    run_and_check(capsys, predict_main, ["-i", str(env["ds"] / "imagesTs"), "-o", str(out), "-m", str(model),
                                         "--results-root", str(env["res"]), "-npp", "0"],
                  inputs=[env["raw"], env["pre"], env["res"], model], outputs=[env["raw"], env["pre"], env["res"], model],
                  expect=[str(out), f"output folder lies inside the {what} {protected.resolve()}"])
    assert where != "inside the model" or not out.exists()


# ---------------------------------------------------------------------------------------------------- error classes
#: The bare ``raise ValueError/RuntimeError/TypeError`` that remain: each states a programming contract that no
#: user input reaches (the value was checked before: argparse choices, the plans schema and its consistency check,
#: the geometry checks of evaluation), so a traceback there is a bug report. Everything a user's files or
#: options can reach raises a class of ``cmbunet/errors.py``, which every command prints as one line.
CONTRACTS = {
    ("imageio/reader_writer.py", "SimpleITKIO.to_sitk"): "array and geometry come from the pipeline",
    ("networks/discrimination.py", "DiscriminationCNN.shifted_logits"): "called in eval mode by inference",
    ("utilities/file_io.py", "_json_default"): "json.dump's default hook must raise TypeError",
}


BUILTIN_ERRORS = ("ValueError", "RuntimeError", "TypeError")


def bare_raises() -> set[tuple[str, str]]:
    """(file, function) of every ``raise ValueError/RuntimeError/TypeError(...)`` in the package."""
    package = Path(errors.__file__).parent
    found = set()

    def visit(node: ast.AST, names: list[str], rel: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = names + [child.name] if isinstance(child, (ast.FunctionDef, ast.ClassDef)) else names
            exc = child.exc if isinstance(child, ast.Raise) else None
            if isinstance(exc, ast.Call) and getattr(exc.func, "id", None) in BUILTIN_ERRORS:
                found.add((rel, ".".join(names)))
            visit(child, inner, rel)

    for path in package.rglob("*.py"):
        visit(ast.parse(path.read_text()), [], path.relative_to(package).as_posix())
    return found


def test_errors_users_can_reach_are_cmbunet_errors_printed_without_a_traceback(capsys):
    """No bare built-in error outside the reviewed contracts; and every class of errors.py, raised in a command,
    is printed as one ``error:`` line with exit code 2."""
    assert bare_raises() <= set(CONTRACTS), sorted(bare_raises() - set(CONTRACTS))
    examples = {errors.CMBUNetError: errors.CMBUNetError("a problem"),
                errors.InputError: errors.InputError("/data/scan.nii.gz", "a problem"),
                errors.InvalidValueError: errors.InvalidValueError("a problem"),
                errors.DatasetIntegrityError: errors.DatasetIntegrityError([("/data/scan.nii.gz", "a problem")]),
                errors.MissingStageError: errors.MissingStageError("a problem"),
                errors.PlansMismatchError: errors.PlansMismatchError("a problem"),
                errors.LockedError: errors.LockedError("a problem"),
                errors.ChecksumError: errors.ChecksumError("a problem"),
                errors.PredictionRecordError: errors.PredictionRecordError("a problem")}
    classes = {c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, errors.CMBUNetError)}
    assert classes == set(examples)
    for error in examples.values():
        @run_cli
        def command(argv):
            raise error

        capsys.readouterr()
        assert command([]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "a problem" in err and "Traceback" not in err
