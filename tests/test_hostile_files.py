"""Hostile and unlucky files: zip bombs, image headers that lie or claim more than memory holds, installs that
were killed, Ctrl-C during parallel preprocessing, full disks, BIDS sessions and whole numbers written as floats.

Each case expects either a correct result or a clear error naming the file and the problem, with no traceback
and nothing the user had lost or overwritten.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import pytest
import SimpleITK as sitk

from cmbunet import model_sharing
from cmbunet.dataset.convert_valdo import main as convert_main
from cmbunet.errors import InputError
from cmbunet.imageio import reader_writer
from cmbunet.imageio.reader_writer import SimpleITKIO
from cmbunet.inference.input_cases import find_input_cases
from cmbunet.model_sharing import MANIFEST, install_main
from cmbunet.plans.plans_io import load_plans, plans_hash, save_plans
from cmbunet.synthetic.writer import write_dataset
from cmbunet.utilities import file_io
from plan_helpers import make_plans
from test_bad_input import BIN
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
    refused(capsys, [str(exported), "--results-root", str(res)], f"{CKPT}: declares", "more than the 1.0 kB a "
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
            "but only 40.0 kB are free", "nothing was extracted")
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

        # killed between moving the old model aside and renaming the new one into place; the next install is
        # refused for another reason (its zip does not exist) and cleans up all the same
        aside = dataset / f".cmbunet.replaced-{file_io.HOST}-{dead}-qrst7890"
        aside.mkdir()
        os.replace(model, aside / "cmbunet")
        (dataset / f".cmbunet.install-{file_io.HOST}-{dead}-uvwx1234").mkdir()
        err = refused(capsys, [str(tmp_path / "missing.zip"), "--results-root", str(res)], "does not exist")
        assert f"restored the model {model} that an interrupted install (pid {dead}) had moved aside" in err
        assert tree(model) == before
        assert sorted(p.name for p in dataset.iterdir()) == sorted(["cmbunet", live.name])
    finally:
        sleeper.kill()
        sleeper.wait()
    assert install_main([str(exported), "--results-root", str(res), "--force"]) == 0
    assert f"removed {live}, left by an interrupted install (pid {sleeper.pid})" in capsys.readouterr().err
    assert [p.name for p in dataset.iterdir()] == ["cmbunet"]


# ---------------------------------------------------------------------------------------------------- image headers
def nifti_with_dims(src: Path, dest: Path, dims: tuple[int, ...], voxel_data: bytes | None = None) -> Path:
    """``src`` (a .nii.gz) with the dimensions in its header replaced by ``dims``, and its voxel bytes by
    ``voxel_data`` when given: a header that lies about the size of the image."""
    data = bytearray(gzip.decompress(src.read_bytes()))
    data[40:56] = struct.pack("<8h", len(dims), *dims, *[1] * (7 - len(dims)))
    if voxel_data is not None:
        offset = int(struct.unpack("<f", data[108:112])[0])
        data = data[:offset] + voxel_data
    dest.write_bytes(gzip.compress(bytes(data)) if dest.name.endswith(".gz") else bytes(data))
    return dest


def sparse_1024_cube(dest: Path) -> Path:
    """A legitimate 1024^3 uint8 NIfTI of zeros (1 GiB of voxels) written as a 1 MiB .nii.gz without holding the
    gigabyte: one deflated MiB of zeros, repeated (each block ends with a full flush, so the blocks are equal)."""
    img = sitk.Image([4, 4, 4], sitk.sitkUInt8)
    small = dest.with_name("header.nii")
    sitk.WriteImage(img, str(small))
    header = bytearray(small.read_bytes()[:352])
    small.unlink()
    header[40:56] = struct.pack("<8h", 3, 1024, 1024, 1024, 1, 1, 1, 1)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = deflate.compress(bytes(header)) + deflate.flush(zlib.Z_FULL_FLUSH)
    zeros = bytes(1 << 20)
    block = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    assert deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH) == block
    crc = zlib.crc32(bytes(header))
    for _ in range(1024):
        crc = zlib.crc32(zeros, crc)
    dest.write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + head + block * 1024 + deflate.flush()
                     + struct.pack("<II", crc, (len(header) + (1 << 30)) & 0xFFFFFFFF))
    return dest


@pytest.fixture(scope="module")
def valdo_scan(tmp_path_factory) -> Path:
    """One synthetic subject in the VALDO layout; returns its T2S scan."""
    valdo = write_dataset(tmp_path_factory.mktemp("valdo") / "valdo", 1, layout="valdo", seed=5)
    return next(valdo.rglob("*_desc-masked_T2S.nii.gz"))


@pytest.fixture
def no_voxels_read(monkeypatch):
    """Fail the test if any image's voxels are read (only headers may be)."""
    def refuse(self):
        raise AssertionError("voxels were read")

    monkeypatch.setattr(sitk.ImageFileReader, "Execute", refuse)


def test_a_header_claiming_900_cubed_floats_is_refused_before_reading(valdo_scan, tmp_path, no_voxels_read):
    """A scan of a few hundred kB whose header claims 900^3 float32 voxels (2.7 GiB; the file could hold 1032
    times its size at most, even compressed) is refused from the header, before anything is allocated."""
    liar = nifti_with_dims(valdo_scan, tmp_path / "liar.nii.gz", (900, 900, 900))
    assert liar.stat().st_size < 1 << 20
    with pytest.raises(InputError) as error:
        SimpleITKIO.read_image(liar)
    assert error.value.path == str(liar)
    assert ("is truncated or its header is wrong: its header declares 900 x 900 x 900 voxels of 32-bit float "
            "(2.7 GiB), more than a file of") in error.value.problem
    assert "(at most 1032 times)" in error.value.problem


def test_an_uncompressed_nifti_smaller_than_its_voxels_is_refused_before_reading(valdo_scan, tmp_path,
                                                                                no_voxels_read):
    short = nifti_with_dims(valdo_scan, tmp_path / "short.nii", (64, 64, 64), voxel_data=bytes(1000))
    with pytest.raises(InputError, match=rf"^{short}: is truncated or its header is wrong: its header declares 64 x "
                                         r"64 x 64 voxels of 32-bit float \(1.0 MiB\), 1.0 MiB with the header, but "
                                         r"the file holds 1.3 kB"):
        SimpleITKIO.read_image(short)


def test_a_scan_larger_than_the_available_memory_is_refused_naming_file_and_size(tmp_path, monkeypatch):
    """A legitimate sparse 1024^3 uint8 scan (1 GiB of voxels in a 1 MiB file, within what deflate can do) is not
    taken for a lying header; where less than the 2 GiB that reading needs is available, it is refused from its
    header, naming the file and the size."""
    cube = sparse_1024_cube(tmp_path / "sub-1_T2starw.nii.gz")
    assert cube.stat().st_size < 1_100_000
    monkeypatch.setattr(reader_writer, "available_memory", lambda: 1 << 30)
    with pytest.raises(InputError) as error:
        SimpleITKIO.read_image(cube)
    assert error.value.path == str(cube)
    assert error.value.problem == ("is too large for the memory of this machine: its header declares 1024 x 1024 x "
                                   "1024 voxels of 8-bit unsigned integer (1.0 GiB); reading it needs about 2.0 GiB "
                                   "but 1.0 GiB are available")


def test_running_out_of_memory_while_reading_names_the_file(tmp_path):
    """Where the available memory cannot be told (or was misjudged), the allocation itself fails: here under an
    address-space limit of 256 MiB more than the process uses. The failure is one error naming the file and the
    size, not a MemoryError traceback."""
    cube = sparse_1024_cube(tmp_path / "cube.nii.gz")
    script = ("import resource, sys\nfrom cmbunet.imageio import reader_writer as rw\n"
              "from cmbunet.errors import InputError\nrw.available_memory = lambda: None\n"
              "vm = int(next(l for l in open('/proc/self/status') if l.startswith('VmSize:')).split()[1]) * 1024\n"
              "resource.setrlimit(resource.RLIMIT_AS, (vm + (256 << 20), resource.RLIM_INFINITY))\n"
              "try:\n    rw.SimpleITKIO.read_image(sys.argv[1])\nexcept InputError as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(cube)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.strip() == (f"{cube}: could not be read for lack of memory: it holds 1024 x 1024 x 1024 voxels "
                                   "of 8-bit unsigned integer (1.0 GiB); free memory, or read it on a machine with "
                                   "more")


def test_convert_valdo_names_a_scan_with_a_lying_header(valdo_scan, tmp_path, capsys):
    valdo = tmp_path / "valdo"
    shutil.copytree(valdo_scan.parent.parent, valdo)
    target = valdo / valdo_scan.parent.name / valdo_scan.name
    nifti_with_dims(valdo_scan, target, (900, 900, 900))
    raw = tmp_path / "raw"
    assert convert_main(["-i", str(valdo), "-d", "7", "--raw-root", str(raw)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {target}: is truncated or its header is wrong: its header declares 900 x 900 x 900")
    assert "Traceback" not in err
    assert not [p for p in raw.rglob("*") if p.is_file()]


# ---------------------------------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_during_parallel_preprocessing_stops_without_worker_tracebacks(tmp_path):
    """Ctrl-C reaches the whole foreground process group, the pool's workers included. Sent while the two workers
    of ``-np 2`` start up (where a worker that took it printed a KeyboardInterrupt traceback from the middle of
    its imports), it ends the command with the one 'interrupted' line and exit code 130: no traceback, and no
    worker left running."""
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    # enough cases that the work outlasts the pool's start-up on a loaded machine: with 6 small cases the command
    # once finished before its workers could be seen listening
    write_dataset(raw / "Dataset809_CtrlC", 16, seed=2, size="small")
    args = [str(BIN / "cmbunet_plan_and_preprocess"), "-d", "809", "--raw-root", str(raw), "--preprocessed-root",
            str(pre), "-np", "2", "--preset", "tiny"]

    def workers_of(proc: subprocess.Popen) -> list[int]:
        return [pid for pid in children(proc.pid) if b"spawn_main" in command_line(pid)]

    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    end = time.monotonic() + 240
    while len(workers_of(proc)) < 2 or ignores_sigint(proc.pid):  # the pool is up and Ctrl-C is heard again
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end
        time.sleep(0.005)
    time.sleep(0.3)
    workers = workers_of(proc)
    assert len(workers) == 2
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip() == "interrupted; finished outputs are kept and a re-run continues where this one stopped", err
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]  # terminated and reaped


def children(pid: int) -> list[int]:
    """Pids of the live child processes of ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def ignores_sigint(pid: int) -> bool:
    """Whether ``pid`` ignores SIGINT now (``SigIgn`` in /proc): the command does while it starts its workers, so
    a Ctrl-C sent then is lost, which on a loaded machine can be well after the workers appear."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # ended meanwhile
        return False
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")), 16)
    return bool(mask & (1 << (signal.SIGINT - 1)))


def command_line(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # ended meanwhile
        return b""


# ---------------------------------------------------------------------------------------------------- whole numbers
def test_a_whole_number_written_as_a_float_is_an_integer(tmp_path):
    """JSON has one kind of number: ``1e3`` or ``1000.0`` where an integer is expected (a count, a size, a list of
    sizes, an optional count) is read as the integer 1000, in a plans file, an override and inference settings;
    2.5 is still refused. The plans hash does not change."""
    plans = make_plans()
    edited = plans.to_dict()
    edited["inference"]["max_candidates"] = 1e3
    edited["screening"]["block_size"] = [float(v) for v in edited["screening"]["block_size"]]
    edited["training"]["cpu"]["screening"]["mining_cases"] = 4.0
    path = tmp_path / "plans.json"
    path.write_text(json.dumps(edited).replace("1000.0", "1e3"))
    assert '"max_candidates": 1e3' in path.read_text()
    loaded = load_plans(path)
    assert loaded.inference.max_candidates == 1000 and type(loaded.inference.max_candidates) is int
    assert loaded.screening.block_size == plans.screening.block_size
    assert all(type(v) is int for v in loaded.screening.block_size)
    assert type(loaded.training.cpu.screening.mining_cases) is int
    assert plans_hash(loaded) == plans_hash(plans)
    save_plans(loaded, path)
    assert json.loads(path.read_text())["inference"]["max_candidates"] == 1000 and "1e3" not in path.read_text()

    overridden = make_plans(overrides=["inference.max_candidates=1e3"])
    assert overridden.inference.max_candidates == 1000 and type(overridden.inference.max_candidates) is int

    settings = plans.inference.merged({"max_candidates": 2e2, "min_component_voxels": 5.0}, tmp_path / "s.json")
    assert (settings.max_candidates, settings.min_component_voxels) == (200, 5)
    assert type(settings.max_candidates) is int and type(settings.min_component_voxels) is int
    with pytest.raises(InputError, match=r"max_candidates = 2.5: must be an integer >= 1"):
        plans.inference.merged({"max_candidates": 2.5}, tmp_path / "s.json")


# ---------------------------------------------------------------------------------------------------- full disk
def run_on_a_full_disk(folder: Path, size: str, command: list[str]) -> subprocess.CompletedProcess:
    """Run ``command`` with a RAM disk of ``size`` mounted on ``folder`` (in a mount namespace of its own, so
    nothing is mounted for anyone else); its stdout ends with the files left on that disk. Skips the test where
    the system does not let an unprivileged user namespace mount a tmpfs."""
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {folder}"],
                           capture_output=True, text=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("cannot mount a small tmpfs in a user namespace here (unshare -Urm)")
    script = 'mount -t tmpfs -o size="$1" tmpfs "$2" || exit 99; shift 2; "$@"; code=$?; echo FILES; ' \
             'find "$0" -type f; exit $code'
    return subprocess.run(["unshare", "-Urm", "sh", "-c", script, str(folder), size, str(folder), *command],
                          capture_output=True, text=True, timeout=300)


def test_a_full_disk_while_converting_says_so_and_names_the_file(tmp_path):
    """On a disk that fills up (ENOSPC; SimpleITK's NIfTI writer leaves a truncated gzip without an error) the
    conversion stops with one line that says writing failed for lack of space and names the file, not that a
    gzip is corrupt; no partial or temporary file is left, and the input is untouched."""
    valdo = write_dataset(tmp_path / "valdo", 2, layout="valdo", seed=3)
    raw = tmp_path / "raw"
    raw.mkdir()
    before = tree(valdo)
    proc = run_on_a_full_disk(raw, "48k", [str(BIN / "cmbunet_convert_valdo"), "-i", str(valdo), "-d", "5",
                                           "--raw-root", str(raw)])
    assert proc.returncode == 2, proc.stderr
    first = sorted(p.name for p in valdo.iterdir())[0]
    image = raw / "Dataset005_VALDO" / "imagesTr" / f"{first}_0000.nii.gz"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]  # NIfTI's C library adds one
    assert len(errors) == 1 and errors[0].startswith(
        f"error: {image}: was not written completely: writing failed for lack of space: the disk holding "
        f"{image.parent} is full ("), proc.stderr
    assert "gzip" not in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout.split("FILES\n")[1].strip() == ""  # nothing written, not even a temporary file
    assert tree(valdo) == before


# ---------------------------------------------------------------------------------------------------- sessions
def test_bids_sessions_are_one_case_per_subject_and_session(tmp_path, capsys):
    """Subject sub-109's files carry a BIDS ses- entity, two sessions side by side in its folder (as
    sub-109_ses-01_space-T2S_desc-masked_T2S.nii.gz): the converter makes one case per subject and session and
    prediction finds both; an image in a subject folder that bears no VALDO name is named as ignored by both."""
    valdo = write_dataset(tmp_path / "valdo", 2, layout="valdo", seed=4)
    plain, other = sorted(p for p in valdo.iterdir() if p.is_dir())
    subject = valdo / "sub-109"
    subject.mkdir()
    for session in ("ses-01", "ses-02"):
        for f in other.iterdir():
            shutil.copy(f, subject / f.name.replace(other.name, f"sub-109_{session}"))
    shutil.rmtree(other)
    stray = subject / "sub-109_ses-03_T2S.nii.gz"
    shutil.copy(subject / "sub-109_ses-01_space-T2S_desc-masked_T2S.nii.gz", stray)
    raw = tmp_path / "raw"
    assert convert_main(["-i", str(valdo), "-d", "9", "--raw-root", str(raw), "--skip-verify"]) == 0
    printed = capsys.readouterr().out
    cases = [plain.name, "sub-109_ses-01", "sub-109_ses-02"]
    dataset = raw / "Dataset009_VALDO"
    assert sorted(p.name for p in (dataset / "imagesTr").iterdir()) == [f"{c}_0000.nii.gz" for c in cases]
    assert sorted(p.name for p in (dataset / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in cases]
    assert json.loads((dataset / "dataset.json").read_text())["numTraining"] == 3
    assert "ignored: sub-109/sub-109_ses-03_T2S.nii.gz: not a VALDO file name" in printed

    found = {c.case: c for c in find_input_cases(valdo, {"0": "T2S"}, with_ignored=True)}
    assert [c for c in cases if found[c].ok] == cases
    assert found["sub-109_ses-02"].output_stem == "sub-109_ses-02_space-T2S_prediction"
    assert found["sub-109_ses-02"].images == (subject / "sub-109_ses-02_space-T2S_desc-masked_T2S.nii.gz",)
    assert found["sub-109/sub-109_ses-03_T2S.nii.gz"].ignored.startswith("BIDS suffix T2S is not an input of the model")


def test_available_memory_is_lowered_to_a_containers_limit(tmp_path):
    """A cgroup limit (containers, batch jobs) lowers the available memory below the system's; its page cache
    counts as free, because the kernel reclaims it before an allocation fails."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       67108864 kB\nMemAvailable:   33554432 kB\n")
    assert reader_writer.available_memory(str(meminfo), str(tmp_path / "none")) == 32 << 30
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text(f"{4 << 30}\n")
    (v2 / "memory.current").write_text(f"{3 << 30}\n")
    (v2 / "memory.stat").write_text(f"anon {1 << 30}\nfile {2 << 30}\n")
    assert reader_writer.available_memory(str(meminfo), str(v2)) == 3 << 30
    (v2 / "memory.max").write_text("max\n")  # no limit
    assert reader_writer.available_memory(str(meminfo), str(v2)) == 32 << 30
    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(f"{8 << 30}\n")
    (v1 / "memory.usage_in_bytes").write_text(f"{7 << 30}\n")
    (v1 / "memory.stat").write_text(f"cache 1\nrss 2\ntotal_cache {1 << 30}\ntotal_rss {6 << 30}\n")
    assert reader_writer.available_memory(str(meminfo), str(v1.parent)) == 2 << 30
