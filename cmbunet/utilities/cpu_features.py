"""What the CPU can do, read from ``/proc/cpuinfo``, and the arithmetic precision prediction runs in.

bfloat16 autocast is about twice as fast as float32 for 3D convolutions on CPUs with bfloat16 dot-product
instructions (AVX-512 BF16, AMX), and many times slower on CPUs that must emulate them (AVX2 only), so the
choice depends on the machine and is made at run time.
"""

from __future__ import annotations

from pathlib import Path

from cmbunet.errors import InvalidValueError

#: Flags of any bfloat16 support; a CPU with none of them emulates bf16 and runs it many times slower.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "avx_ne_convert")
#: Flags of bfloat16 dot products (conversion alone, ``avx_ne_convert``, does not make convolutions faster).
FAST_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
PRECISIONS = ("auto", "fp32", "bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The CPU's feature flags; None where ``cpuinfo`` cannot be read (not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    return {f for line in text.splitlines() if line.startswith(("flags", "Features")) for f in line.split(":", 1)[1].split()}


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """Whether the CPU advertises bfloat16 instructions; None where ``/proc/cpuinfo`` cannot tell (not Linux)."""
    flags = cpu_flags(cpuinfo)
    return None if flags is None else bool(flags & set(BF16_CPU_FLAGS))


def cpu_has_fast_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """Whether the CPU has bfloat16 dot products (AVX-512 BF16 or AMX); None where it cannot tell."""
    flags = cpu_flags(cpuinfo)
    return None if flags is None else bool(flags & set(FAST_BF16_CPU_FLAGS))


def resolve_precision(requested: str = "auto", device: str = "cpu",
                      cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, str]:
    """``(precision, reason)``: the arithmetic the networks run in, and why, for ``requested`` on ``device``.

    On CUDA ``auto`` is float16 autocast (``fp16``). On a CPU ``auto`` is ``bf16`` where the CPU has bfloat16 dot
    products and ``fp32`` elsewhere (also where ``/proc/cpuinfo`` cannot be read: emulated bf16 is far slower).
    """
    if requested not in PRECISIONS:
        raise InvalidValueError(f"unknown precision '{requested}'; expected one of {', '.join(PRECISIONS)}")
    if str(device).startswith("cuda"):
        if requested == "auto":
            return "fp16", "CUDA: float16 autocast"
        return requested, f"CUDA: {requested} requested"
    flags = cpu_flags(cpuinfo)
    fast = None if flags is None else sorted(flags & set(FAST_BF16_CPU_FLAGS))
    if requested == "fp32":
        return "fp32", "float32 requested"
    if requested == "bf16":
        if fast:
            return "bf16", f"bfloat16 requested; the CPU has {', '.join(fast)}"
        return "bf16", ("bfloat16 requested, but the CPU lists none of " + ", ".join(FAST_BF16_CPU_FLAGS)
                        + ": PyTorch emulates it and prediction runs many times slower than float32")
    if fast:
        return "bf16", f"auto: the CPU has {', '.join(fast)} (bfloat16 dot products)"
    if flags is None:
        return "fp32", "auto: /proc/cpuinfo unreadable, so bfloat16 support is unknown"
    return "fp32", "auto: the CPU has no bfloat16 dot products (" + ", ".join(FAST_BF16_CPU_FLAGS) + ")"
