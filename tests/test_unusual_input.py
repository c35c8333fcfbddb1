"""Nothing lost, nothing silently skipped: failed writes are caught before they replace anything, every entry
of a prediction input is predicted or listed with a reason, geometry is checked before scoring, plans and
settings values are checked when loaded, and training data problems name the subject or file.

Same style as ``test_bad_input.py``: small synthetic cases, the real commands, assertions on what they print
and on the files they leave.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from cmbunet.dataset.convert_valdo import main as convert_main
from cmbunet.inference.cli import main as predict_main
from cmbunet.synthetic.writer import write_dataset
from cmbunet.utilities import file_io
from test_bad_input import BASE, BIN, env, like, read, run_and_check, tree_state, write, write_fake_model  # noqa: F401


def hidden_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*")) if folder.exists() else []


def run_script(script: str, args: list[str], fsize_limit: int | None = None) -> subprocess.CompletedProcess:
    """A console script in a child process, optionally under a file size limit (``ulimit -f``): SimpleITK's NIfTI
    writer does not fail there but leaves a truncated file, exactly as on a full disk."""

    def limit() -> None:
        if fsize_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, resource.RLIM_INFINITY))

    run_env = {k: v for k, v in os.environ.items() if not k.startswith("CMBUNET_")}
    return subprocess.run([str(BIN / script), *args], capture_output=True, text=True, env=run_env, timeout=300,
                          preexec_fn=limit)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def temp_name(target: str, pid: int, suffix: str = ".nii.gz") -> str:
    return f".{target}.part-{file_io._HOST}-{pid}-abcd1234{suffix}"


# ---------------------------------------------------------------------------------------------------- 1. writes
def test_predict_on_a_full_disk_writes_nothing_and_the_rerun_predicts_again(env, tmp_path):
    """Under a 20 kB file size limit the probability maps (>100 kB) cannot be written: each case fails naming
    its file, nothing half-written is left, and the re-run predicts every case instead of skipping it."""
    out = tmp_path / "out"
    args = ["-i", str(env["ds"] / "imagesTs"), "-o", str(out), "-m", str(env["model"]), "--save_probabilities",
            "-npp", "0"]
    proc = run_script("cmbunet_predict", args, fsize_limit=20_000)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "synth_003_probabilities.nii.gz: was not written completely" in proc.stdout
    summary = pd.read_csv(out / "summary.csv")
    assert summary["status"].tolist() == ["failed"] * 3
    assert summary["error"].str.contains("_probabilities.nii.gz: was not written completely").all()
    assert sorted(p.name for p in out.iterdir()) == ["summary.csv"]  # no truncated file in place, no temp file

    proc = run_script("cmbunet_predict", args)
    assert proc.returncode == 0, proc.stderr
    summary = pd.read_csv(out / "summary.csv")
    assert summary["status"].tolist() == ["ok"] * 3
    for case in ("synth_003", "synth_004", "synth_005"):
        assert sitk.ReadImage(str(out / f"{case}_probabilities.nii.gz")).GetSize() == read(
            env["ds"] / "imagesTs" / f"{case}_0000.nii.gz").GetSize()


def test_convert_valdo_on_a_full_disk_names_the_file_and_leaves_no_partial_file(tmp_path):
    valdo = write_dataset(tmp_path / "valdo", 2, layout="valdo", seed=3)
    raw = tmp_path / "raw"
    args = ["-i", str(valdo), "-d", "5", "--raw-root", str(raw)]
    before = tree_state(valdo)
    proc = run_script("cmbunet_convert_valdo", args, fsize_limit=20_000)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "_0000.nii.gz: was not written completely" in proc.stderr, proc.stderr
    written = [p for p in raw.rglob("*") if p.is_file()]
    assert all(sitk.ReadImage(str(p)) for p in written)  # whatever is in place is complete
    assert not (raw / "Dataset005_VALDO" / "dataset.json").exists()
    assert not hidden_files(raw)
    assert tree_state(valdo) == before
    proc = run_script("cmbunet_convert_valdo", args)
    assert proc.returncode == 0, proc.stderr
    assert len(list((raw / "Dataset005_VALDO" / "imagesTr").glob("*.nii.gz"))) == 2


def test_temp_files_of_a_killed_run_are_removed_on_the_next_run(env, tmp_path, capsys):
    """A temp file whose writer is gone is removed; one of a writer that still runs (another part) is kept."""
    out = tmp_path / "out"
    out.mkdir()
    stale = out / temp_name("synth_003.nii.gz", dead_pid())
    stale.write_bytes(b"\x1f\x8b half")
    old = out / ".synth_004.nii.gz.part-otherhost-12-abcd1234.nii.gz"  # another machine, untouched for 2 hours
    old.write_bytes(b"x")
    os.utime(old, (old.stat().st_mtime - 7200,) * 2)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = out / temp_name("synth_005.nii.gz", sleeper.pid)
        live.write_bytes(b"x")
        assert predict_main(["-i", str(env["ds"] / "imagesTs"), "-o", str(out), "-m", str(env["model"]),
                             "-npp", "0"]) == 0
        assert hidden_files(out) == [live.name]
    finally:
        sleeper.kill()
        sleeper.wait()
    assert pd.read_csv(out / "summary.csv")["status"].tolist() == ["ok"] * 3


def test_a_write_that_fails_verification_replaces_nothing(tmp_path):
    """The check sits in the one atomic writer: a writer that leaves a short gzip file never reaches the target."""
    target = tmp_path / "table.csv.gz"
    target.write_bytes(b"old")
    with pytest.raises(file_io.InputError, match=r"table.csv.gz: was not written completely .*incomplete gzip"):
        with file_io.atomic_path(target) as tmp:
            import gzip

            tmp.write_bytes(gzip.compress(b"a,b\n1,2\n" * 100)[:-10])
    assert target.read_bytes() == b"old"
    assert not hidden_files(tmp_path)
