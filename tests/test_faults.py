"""Faults and hostile files: two runs of one training fold or one preprocessing at once, bit rot in a checkpoint,
file names at the file system's length limit, predictions aimed at a model or a data root, and errors that
reach the user from deep inside a command.

Each case expects either a correct result or a clear error naming the file and the problem, with no traceback
and nothing the user had lost or overwritten.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from cmbunet.imageio.reader_writer import SimpleITKIO
from cmbunet.utilities import file_io


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
