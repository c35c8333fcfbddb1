"""Hostile and unlucky files: zip bombs, image headers that lie or claim more than memory holds, installs that
were killed, Ctrl-C during parallel preprocessing, full disks, BIDS sessions and whole numbers written as floats.

Each case expects either a correct result or a clear error naming the file and the problem, with no traceback
and nothing the user had lost or overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from cmbunet import model_sharing
from cmbunet.model_sharing import MANIFEST, install_main
from cmbunet.utilities import file_io
from test_model_export import CKPT, DATASET, exported, refused, rewrite, source, tree  # noqa: F401


# ---------------------------------------------------------------------------------------------------- zip bombs
def with_entry(src: Path, dest: Path, name: str, data: bytes, listed: int | None = None,
               compress: int = zipfile.ZIP_DEFLATED) -> Path:
    """A copy of the model zip ``src`` whose entry ``name`` holds ``data`` (deflated), listed in the manifest with
    its true sha256 and ``listed`` (default: its true size), so that only the size limits can refuse it."""
    with zipfile.ZipFile(src) as z:
        manifest = json.loads(z.read(MANIFEST))
        entries = {i.filename: z.read(i.filename) for i in z.infolist() if i.filename not in (MANIFEST, name)}
    if name != MANIFEST:
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(),
                                   "size": len(data) if listed is None else listed}
    with zipfile.ZipFile(dest, "w") as z:
        for entry, content in entries.items():
            z.writestr(entry, content)
        z.writestr(name, data, compress_type=compress)
        if name != MANIFEST:
            z.writestr(MANIFEST, json.dumps(manifest))
    return dest


def nothing_written(res: Path) -> bool:
    return not res.exists() or not [p for p in res.rglob("*") if p.is_file()]


def test_a_checkpoint_that_inflates_1000_times_is_refused_before_extraction(exported, tmp_path, capsys):
    """64 MiB of zeros deflate to 64 kB: the checkpoint entry's sizes are listed truthfully in the manifest, so
    only the ratio limit can stop it, and it does so before a byte is written."""
    bomb = with_entry(exported, tmp_path / "bomb.zip", CKPT, bytes(64 << 20))
    with zipfile.ZipFile(bomb) as z:
        assert z.getinfo(CKPT).compress_size < 100_000
    res = tmp_path / "res"
    refused(capsys, [str(bomb), "--results-root", str(res)], f"{bomb}: {CKPT}: would inflate", "64.0 MiB",
            f"at most {model_sharing.MAX_RATIO} times", "nothing is extracted")
    assert nothing_written(res)


def test_a_huge_manifest_is_refused_without_reading_it(exported, tmp_path, capsys):
    """A manifest declaring 2 MiB (the limit is 1 MiB; a real one is a few kB) is refused from the zip's
    directory: its bytes are a broken deflate stream, which reading would report instead."""
    big = with_entry(exported, tmp_path / "manifest.zip", MANIFEST, b" " * (2 << 20))
    data = bytearray(big.read_bytes())
    with zipfile.ZipFile(big) as z:
        info = z.getinfo(MANIFEST)
    start = info.header_offset + 30 + len(MANIFEST.encode())
    data[start:start + 16] = b"\xff" * 16  # not deflate any more
    big.write_bytes(bytes(data))
    res = tmp_path / "res"
    refused(capsys, [str(big), "--results-root", str(res)], f"{big}: {MANIFEST}: declares 2.0 MiB uncompressed",
            "more than the 1.0 MiB a model manifest can need")
    assert nothing_written(res)


def test_a_checkpoint_larger_than_its_kind_can_be_is_refused(exported, tmp_path, capsys, monkeypatch):
    """Each kind of entry has a size limit (4 GiB for a checkpoint, 16 MiB for JSON); here the checkpoint limit
    is lowered to 1 kB, below the size of the real checkpoint, which is stored uncompressed."""
    monkeypatch.setattr(model_sharing, "MAX_CHECKPOINT_BYTES", 1024)
    res = tmp_path / "res"
    refused(capsys, [str(exported), "--results-root", str(res)], f"{CKPT}: declares", "more than the 1024 bytes a "
            "checkpoint can need")
    assert nothing_written(res)


def test_an_entry_whose_declared_size_differs_from_the_manifest_is_refused(exported, tmp_path, capsys):
    bad = with_entry(exported, tmp_path / "lying.zip", "plans.json", _plans_of(exported), listed=100)
    res = tmp_path / "res"
    refused(capsys, [str(bad), "--results-root", str(res)], "plans.json: declares", "but manifest.json lists 100")
    assert nothing_written(res)


def _plans_of(zip_path: Path) -> bytes:
    with zipfile.ZipFile(zip_path) as z:
        return z.read("plans.json")


def test_a_model_larger_than_the_free_disk_space_is_refused(exported, tmp_path, capsys, monkeypatch):
    class Full:
        f_bavail, f_frsize = 10, 4096

    monkeypatch.setattr(model_sharing.os, "statvfs", lambda path: Full())
    res = tmp_path / "res"
    refused(capsys, [str(exported), "--results-root", str(res)], f"{exported}: needs", "of disk space to install, "
            "but only 40960 bytes are free", "nothing was extracted")
    assert nothing_written(res)


# ---------------------------------------------------------------------------------------------------- killed installs
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_next_install_removes_what_killed_installs_left(exported, tmp_path, capsys):
    """Temporary folders of installs that no longer run (this host, pid gone; another host, untouched for two
    hours; an older version's name without a host) are removed by the next install, refused or not, which says
    so; one of an install that still runs is kept. An old model that a killed --force install had moved aside,
    with nothing in its place, is put back."""
    res = tmp_path / "res"
    assert install_main([str(exported), "--results-root", str(res)]) == 0
    dataset = res / DATASET
    model = dataset / "cmbunet"
    before = tree(model)
    dead = dead_pid()
    stale = [dataset / f".cmbunet.install-{file_io.HOST}-{dead}-abcd1234",
             dataset / f".cmbunet.install-{dead}-efgh5678",
             dataset / ".cmbunet__Other.install-otherhost-12-ijkl9012"]
    for folder in stale:
        (folder / "fold_0" / "screening").mkdir(parents=True)
        (folder / "fold_0" / "screening" / "checkpoint_final.pth").write_bytes(b"half")
    os.utime(stale[2], (time.time() - 7200,) * 2)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    live = dataset / f".cmbunet.install-{file_io.HOST}-{sleeper.pid}-mnop3456"
    try:
        live.mkdir()
        capsys.readouterr()
        err = refused(capsys, [str(exported), "--results-root", str(res)], "already holds a model")
        for folder in stale:
            assert not folder.exists()
            assert f"removed {folder}, left by an interrupted install" in err
        assert live.is_dir() and tree(model) == before

        # killed between moving the old model aside and renaming the new one into place
        aside = dataset / f".cmbunet.replaced-{file_io.HOST}-{dead}-qrst7890"
        aside.mkdir()
        os.replace(model, aside / "cmbunet")
        (dataset / f".cmbunet.install-{file_io.HOST}-{dead}-uvwx1234").mkdir()
        err = refused(capsys, [str(exported), "--results-root", str(res)], "already holds a model")
        assert f"restored the model {model} that an interrupted install (pid {dead}) had moved aside" in err
        assert tree(model) == before
        assert sorted(p.name for p in dataset.iterdir()) == sorted(["cmbunet", live.name])
    finally:
        sleeper.kill()
        sleeper.wait()
    assert install_main([str(exported), "--results-root", str(res), "--force"]) == 0
    assert f"removed {live}, left by an interrupted install (pid {sleeper.pid})" in capsys.readouterr().err
    assert [p.name for p in dataset.iterdir()] == ["cmbunet"]
