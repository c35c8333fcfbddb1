"""The one reader/writer of images in cmbunet.

Arrays are returned in **(x, y, z)** axis order, i.e. the voxel index order of NIfTI/nibabel (i, j, k), and
spacing is (x, y, z) in mm exactly as SimpleITK reports it. Every size in the plans (e.g. the screening block
20x20x16) uses the same order. Images are ``(C, X, Y, Z)`` float32, segmentations ``(X, Y, Z)``.

Geometry (spacing, origin, direction) travels in an :class:`ImageProperties` dict so that predictions can be
written back with the input's exact header.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Sequence, TypedDict

import numpy as np
import SimpleITK as sitk

from cmbunet.errors import InputError
from cmbunet.utilities.file_io import atomic_path

#: Relative tolerance on spacing and absolute tolerances on origin (mm) and direction cosines when checking
#: that the channels and the label of a case share one geometry.
SPACING_RTOL = 1e-4
ORIGIN_ATOL_MM = 1e-3
DIRECTION_ATOL = 1e-4

SUPPORTED_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")

#: Deflate (gzip, and the zlib encodings of NRRD and MetaImage) inflates at most 1032 times: a file whose header
#: declares more voxel bytes than this many times the file's size cannot hold them, whatever its compression.
MAX_INFLATION = 1032
#: Reading needs SimpleITK's buffer and the numpy copy of it at once.
READ_MEMORY_FACTOR = 2

#: Bytes of one component of every SimpleITK pixel type (vector and complex types included).
_COMPONENT_BYTES = {
    getattr(sitk, name): int(m.group(3)) // 8 * (2 if m.group(1) else 1)
    for name in dir(sitk) if (m := re.fullmatch(r"sitk(?:Vector|Label)?(Complex)?(U?Int|Float)(\d+)", name))
}


class ImageProperties(TypedDict):
    spacing: list[float]  # (x, y, z) mm
    origin: list[float]  # world position of voxel (0, 0, 0)
    direction: list[float]  # 3x3 direction cosines, row-major as SimpleITK gives them
    shape: list[int]  # (X, Y, Z)


def _fmt(values: Sequence[float], digits: int) -> str:
    return "(" + ", ".join(f"{float(v):.{digits}f}".rstrip("0").rstrip(".") for v in values) + ")"


def geometry_mismatch(a: ImageProperties, b: ImageProperties) -> str | None:
    """Return a sentence describing every way two geometries differ (shape, spacing, origin, direction), or
    ``None`` when they agree within tolerance."""
    if list(a["shape"]) != list(b["shape"]):
        return f"shape {tuple(b['shape'])} differs from {tuple(a['shape'])}"
    problems = []
    if not np.allclose(a["spacing"], b["spacing"], rtol=SPACING_RTOL, atol=0):
        problems.append(f"spacing {_fmt(b['spacing'], 5)} differs from {_fmt(a['spacing'], 5)}")
    if not np.allclose(a["origin"], b["origin"], rtol=0, atol=ORIGIN_ATOL_MM):
        problems.append(f"origin {_fmt(b['origin'], 4)} differs from {_fmt(a['origin'], 4)}")
    if not np.allclose(a["direction"], b["direction"], rtol=0, atol=DIRECTION_ATOL):
        problems.append("direction cosines differ")
    return "; ".join(problems) or None


def _nifti_expected_size(head: bytes) -> int | None:
    """Bytes a NIfTI-1/2 file must hold (header + voxels) according to its header, or None if unparsable."""
    for order in "<>":
        if len(head) < 4:
            return None
        sizeof = struct.unpack(order + "i", head[:4])[0]
        if sizeof == 348 and len(head) >= 348:
            dims = struct.unpack(order + "8h", head[40:56])
            bitpix = struct.unpack(order + "h", head[72:74])[0]
            offset = struct.unpack(order + "f", head[108:112])[0]
        elif sizeof == 540 and len(head) >= 540:
            dims = struct.unpack(order + "8q", head[16:80])
            bitpix = struct.unpack(order + "h", head[14:16])[0]
            offset = struct.unpack(order + "q", head[168:176])[0]
        else:
            continue
        if not 1 <= dims[0] <= 7 or bitpix <= 0 or not math.isfinite(offset):
            return None
        return int(offset) + math.prod(max(0, int(d)) for d in dims[1:1 + dims[0]]) * int(bitpix) // 8
    return None


def nifti_truncation_problem(path: str | Path) -> str | None:
    """Why a NIfTI file is incomplete, or None. SimpleITK reads a truncated ``.nii``/``.nii.gz`` without any
    complaint and returns the missing voxels as 0, so the gzip stream and the size the header announces are
    checked here (this decompresses the file once more)."""
    path = Path(path)
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        return None
    with open(path, "rb") as f:
        is_gzip = f.read(2) == b"\x1f\x8b"
    head, total = b"", 0
    if is_gzip:
        try:
            with gzip.open(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    if len(head) < 540:
                        head += chunk[: 540 - len(head)]
                    total += len(chunk)
        except (EOFError, OSError, zlib.error) as e:  # truncated stream, bad CRC, not gzip
            return f"is a truncated or corrupt gzip file ({e})"
    else:
        with open(path, "rb") as f:
            head = f.read(540)
        total = path.stat().st_size
    expected = _nifti_expected_size(head)
    if expected is not None and total < expected:
        return f"is truncated: its header announces {expected} bytes but it holds {total}"
    return None


def written_image_problem(path: str | Path) -> str | None:
    """Why a just-written image file is unusable, or None: SimpleITK's NIfTI writer reports neither a full disk
    nor a file size limit, so the header must parse and the file must hold every voxel it announces; other
    formats must at least have a readable header."""
    path = Path(path)
    if path.name.endswith((".nii", ".nii.gz")):
        opener = gzip.open if path.name.endswith(".gz") else open
        try:
            with opener(path, "rb") as f:
                head = f.read(540)
        except (EOFError, OSError, zlib.error) as e:
            return f"has an unreadable header ({e})"
        if _nifti_expected_size(head) is None:
            return "has no valid NIfTI header"
        return nifti_truncation_problem(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return "has no readable image header"
    return None


def _mib(size: float) -> str:
    if size >= 2**30:
        return f"{size / 2**30:.1f} GiB"
    if size >= 2**20:
        return f"{size / 2**20:.1f} MiB"
    return f"{size / 2**10:.1f} kB" if size >= 2**10 else f"{size:.0f} bytes"


def _cgroup_cache(stat_file: str, keys: tuple[str, ...]) -> int:
    """Page cache counted in a cgroup's usage (reclaimed before an allocation fails): the first of ``keys``
    found in its ``memory.stat``, else 0."""
    try:
        fields = dict(line.split()[:2] for line in Path(stat_file).read_text().splitlines() if line.strip())
    except (OSError, ValueError):
        return 0
    return next((int(fields[k]) for k in keys if fields.get(k, "").isdigit()), 0)


def available_memory(meminfo: str = "/proc/meminfo", cgroup: str = "/sys/fs/cgroup") -> int | None:
    """Bytes this process can still allocate without swapping: the system's available memory (MemAvailable),
    lowered to what a cgroup memory limit leaves (containers, batch jobs; its page cache counts as free, as the
    kernel reclaims it); None when it cannot be told. ``meminfo`` and ``cgroup`` (v2 there, v1 in ``memory/``) are
    where these are read."""
    available = None
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    for folder, limit_name, usage_name, cache_keys in (
            (cgroup, "memory.max", "memory.current", ("file",)),
            (f"{cgroup}/memory", "memory.limit_in_bytes", "memory.usage_in_bytes", ("total_cache", "cache"))):
        try:
            limit = Path(folder, limit_name).read_text().strip()
            usage = Path(folder, usage_name).read_text().strip()
        except OSError:
            continue
        if limit.isdigit() and usage.isdigit():
            used = max(0, int(usage) - _cgroup_cache(f"{folder}/memory.stat", cache_keys))
            available = min(available, max(0, int(limit) - used))
        break
    return available


def _stored_bytes(path: Path) -> int:
    """Bytes on disk that hold the image's voxels: the file, plus the data file a ``.mhd`` header names."""
    size = path.stat().st_size
    if path.name.endswith(".mhd"):
        try:
            with open(path, "rb") as f:
                header = f.read(1 << 16).decode("latin-1")
        except OSError:
            return size
        m = re.search(r"^\s*ElementDataFile\s*=\s*(.+?)\s*$", header, re.MULTILINE)
        data = path.parent / m.group(1) if m else None
        if data is not None and data.is_file():
            size += data.stat().st_size
    return size


def declared_voxels(reader: sitk.ImageFileReader) -> tuple[int | None, str]:
    """Bytes of the voxels a header read by ``reader.ReadImageInformation()`` declares (None for a pixel type
    of unknown size), and how to say it: ``512 x 512 x 300 voxels of 32-bit float (300.0 MiB)``."""
    size, pixel_id = reader.GetSize(), reader.GetPixelID()
    dims = " x ".join(str(int(d)) for d in size)
    pixel_type = sitk.GetPixelIDValueAsString(pixel_id)
    per_component = _COMPONENT_BYTES.get(pixel_id)
    if per_component is None:
        return None, f"{dims} voxels of {pixel_type}"
    declared = math.prod(int(d) for d in size) * max(1, int(reader.GetNumberOfComponents())) * per_component
    return declared, f"{dims} voxels of {pixel_type} ({_mib(declared)})"


def header_size_problem(path: str | Path, declared: int | None, described: str) -> str | None:
    """Why the voxels a header declares (``declared`` bytes, see :func:`declared_voxels`) cannot or must not be
    read, checked before they are: more than the file can hold (an uncompressed NIfTI must hold every byte, a
    compressed file inflates at most :data:`MAX_INFLATION` times), or more than the memory available."""
    path = Path(path)
    if declared is None:
        return None
    what = f"its header declares {described}"
    stored = _stored_bytes(path)
    if path.name.endswith(".nii"):
        with open(path, "rb") as f:
            head = f.read(540)
        expected = _nifti_expected_size(head) if head[:2] != b"\x1f\x8b" else None
        if expected is not None and stored < expected:
            return (f"is truncated or its header is wrong: {what}, {_mib(expected)} with the header, but the file "
                    f"holds {_mib(stored)}")
    if declared > MAX_INFLATION * stored + (1 << 16):
        return (f"is truncated or its header is wrong: {what}, more than a file of {_mib(stored)} can hold even "
                f"compressed (at most {MAX_INFLATION} times)")
    available = available_memory()
    if available is not None and READ_MEMORY_FACTOR * declared > available:
        return (f"is too large for the memory of this machine: {what}; reading it needs about "
                f"{_mib(READ_MEMORY_FACTOR * declared)} but {_mib(available)} are available")
    return None


def _out_of_memory(path: Path, described: str) -> InputError:
    return InputError(path, f"could not be read for lack of memory: it holds {described or 'too many voxels'}; free "
                            "memory, or read it on a machine with more")


class SimpleITKIO:
    """Read and write 3D medical images (NIfTI, NRRD, MHA) with SimpleITK, keeping exact geometry."""

    @staticmethod
    def read_image(path: str | Path) -> tuple[np.ndarray, ImageProperties]:
        """Read one 3D image file as ``(X, Y, Z)`` in its stored dtype, with its geometry; any file cmbunet cannot
        use (missing, empty, corrupt, truncated, complex, vector or not 3D) is an :class:`InputError` naming it."""
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "file does not exist")
        if not str(path).endswith(SUPPORTED_ENDINGS):
            raise InputError(path, f"unsupported file ending; expected one of {', '.join(SUPPORTED_ENDINGS)}")
        if path.stat().st_size == 0:
            raise InputError(path, "is an empty file (0 bytes)")
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        described = ""
        try:
            reader.ReadImageInformation()  # the header alone: nothing is allocated for the voxels yet
            declared, described = declared_voxels(reader)
            problem = header_size_problem(path, declared, described)
            if problem:
                raise InputError(path, problem)
            img = reader.Execute()
        except MemoryError:
            raise _out_of_memory(path, described) from None
        except RuntimeError as e:  # corrupt gzip, truncated file, not an image
            text = str(e).strip()
            if re.search(r"alloc|out of memory", text, re.IGNORECASE):
                raise _out_of_memory(path, described) from None
            first = text.splitlines()[-1] if text else "unknown reason"
            raise InputError(path, f"cannot be read as an image (corrupt or truncated file?): {first}") from None
        truncated = nifti_truncation_problem(path)
        if truncated:
            raise InputError(path, f"cannot be read as an image: {truncated}")
        if "complex" in img.GetPixelIDTypeAsString():
            raise InputError(path, f"has complex-valued voxels ({img.GetPixelIDTypeAsString()}); cmbunet needs a "
                                   "real-valued magnitude image")
        if img.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(path, f"has {img.GetNumberOfComponentsPerPixel()} components per voxel; expected a scalar 3D image")
        if img.GetDimension() != 3:
            size = img.GetSize()
            if img.GetDimension() == 4 and size[3] == 1:
                img = img[:, :, :, 0]
            else:
                raise InputError(path, f"is {img.GetDimension()}D with size {size}; cmbunet needs 3D images")
        try:
            arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
        except MemoryError:
            raise _out_of_memory(path, described) from None
        if arr.ndim != 3 or min(arr.shape) < 1:
            raise InputError(path, f"has an unusable shape {arr.shape}")
        props: ImageProperties = {
            "spacing": [float(s) for s in img.GetSpacing()],
            "origin": [float(o) for o in img.GetOrigin()],
            "direction": [float(d) for d in img.GetDirection()],
            "shape": [int(s) for s in arr.shape],
        }
        return arr, props

    @classmethod
    def read_images(cls, paths: Sequence[str | Path]) -> tuple[np.ndarray, ImageProperties]:
        """Read the channels of one case into ``(C, X, Y, Z)`` float32; all must share one geometry."""
        arrays, ref = [], None
        for p in paths:
            arr, props = cls.read_image(p)
            if ref is None:
                ref = props
            else:
                problem = geometry_mismatch(ref, props)
                if problem:
                    raise InputError(p, f"geometry does not match the first channel {paths[0]}: {problem}")
            arrays.append(arr.astype(np.float32, copy=False))
        if ref is None:
            raise InputError(None, "no image files given")
        return np.stack(arrays), ref

    @classmethod
    def read_seg(cls, path: str | Path) -> tuple[np.ndarray, ImageProperties]:
        """Read a label map as ``(X, Y, Z)`` in its stored dtype (binarisation is the caller's rule)."""
        return cls.read_image(path)

    @staticmethod
    def to_sitk(array: np.ndarray, props: ImageProperties) -> sitk.Image:
        if array.ndim != 3:
            raise ValueError(f"expected a 3D (X, Y, Z) array, got shape {array.shape}")
        if list(array.shape) != list(props["shape"]):
            raise ValueError(f"array shape {array.shape} does not match the geometry's shape {props['shape']}")
        img = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
        img.SetSpacing([float(s) for s in props["spacing"]])
        img.SetOrigin([float(o) for o in props["origin"]])
        img.SetDirection([float(d) for d in props["direction"]])
        return img

    @classmethod
    def write(cls, array: np.ndarray, path: str | Path, props: ImageProperties, compress: bool = True) -> None:
        """Write an ``(X, Y, Z)`` array with the given geometry, atomically."""
        path = Path(path)
        img = cls.to_sitk(array, props)
        suffix = ".nii.gz" if str(path).endswith(".nii.gz") else path.suffix
        with atomic_path(path, suffix=suffix, verify=written_image_problem) as tmp:
            try:
                sitk.WriteImage(img, str(tmp), useCompression=compress)
            except RuntimeError as e:  # e.g. the NRRD writer on a full disk
                last = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown reason"
                raise InputError(path, f"could not be written ({last}); nothing was replaced") from None

    write_seg = write
    write_image = write
