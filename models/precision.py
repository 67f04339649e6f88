"""Which precision to compute in: bf16 where the hardware runs it natively, fp32 elsewhere.

Machines differ. A GPU with bf16 tensor cores and a CPU with AMX-BF16 or AVX512-BF16 run a bf16
matmul 2-10x faster than fp32; a CPU with AVX2 only emulates bf16 (a 2048² matmul under
1 GFLOP/s against 80 in fp32), where tiny pre-training ran 0.09x as fast. `auto`, the default
everywhere (training, CapFilt, benchmarks), decides once per process from the CPU's flags; an
explicit `bf16` on a CPU that emulates it still runs, after one warning with the slowdown
measured on this machine.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import time

import torch

from models.errors import CapfiltError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_PRECISION = "auto"
# torch.cpu.get_capabilities() names: AMX tiles (Intel Sapphire Rapids on) and the AVX-512 bf16
# dot products (Intel Cooper Lake on, AMD Zen 4 on) make oneDNN's bf16 matmul native
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# oneDNN's instruction-set caps below its bf16 kernels: with one set, bf16 matmuls are emulated
# whatever the CPU's flags (and a CI machine without native bf16 can be mimicked with
# ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2)
ONEDNN_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI")


@functools.cache
def cpu_capabilities() -> dict:
    """The CPU's instruction-set flags as torch sees them ({} where torch cannot say)."""
    try:
        return dict(torch.cpu.get_capabilities())
    except Exception:  # noqa: BLE001 - an older torch or a non-x86 CPU: the timed check decides
        return {}


def onednn_isa_cap() -> str:
    """oneDNN's instruction-set cap from its environment variable ("" when none is set)."""
    return (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()


def cpu_summary() -> str:
    """What the benchmarks and the report print: torch's SIMD level and the bf16 flags present."""
    caps = cpu_capabilities()
    flags = [f for f in NATIVE_BF16_FLAGS if caps.get(f)]
    name = caps.get("cpu_name") or "CPU"
    capped = onednn_isa_cap() in ONEDNN_WITHOUT_BF16
    native = bool(flags) and not capped
    return (f"{name}, capability {torch.backends.cpu.get_cpu_capability()}, "
            f"bf16 {'native (' + ', '.join(flags) + ')' if native else 'not native'}"
            + (f" (ONEDNN_MAX_CPU_ISA={onednn_isa_cap()})" if capped else ""))


def _matmul_rate(dtype: torch.dtype, n: int = 128, budget_s: float = 0.05) -> float:
    """Matmuls of n x n per second in `dtype` on the CPU (a small, short measurement)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # the first call sets up the kernel
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < budget_s or count < 2:
        a @ b
        count += 1
    return count / elapsed


@functools.cache
def measured_bf16_speed() -> float:
    """bf16 matmul throughput as a share of fp32's on this CPU, measured once per process."""
    return _matmul_rate(torch.bfloat16) / _matmul_rate(torch.float32)


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 runs natively on `device`: from the GPU's compute capability, or the CPU's
    flags (a timed matmul where torch reports no flags)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    caps = cpu_capabilities()
    if onednn_isa_cap() in ONEDNN_WITHOUT_BF16:
        return False
    if any(caps.get(f) for f in NATIVE_BF16_FLAGS):
        return True
    if caps:  # torch knows this CPU's flags, and none makes bf16 native
        return False
    return measured_bf16_speed() >= 1.0


def resolve_precision(device: torch.device | str, precision: str | None = DEFAULT_PRECISION) -> str:
    """`fp32` or `bf16` for `device`; `auto` (or None, or "") picks bf16 where it is native."""
    device = torch.device(device)
    precision = precision or DEFAULT_PRECISION
    if precision not in PRECISIONS:
        raise CapfiltError(f"precision={precision!r}: use one of {PRECISIONS} (auto: bf16 where the hardware "
                           "runs it natively, fp32 elsewhere)")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16" and device.type == "cpu" and not native_bf16(device):
        _warn_emulated()
    return precision


@functools.cache  # once per process: every model and training step asks
def _warn_emulated() -> None:
    speed = measured_bf16_speed()
    log.warning("precision bf16 was asked for, but this CPU (%s) emulates bf16: a matmul runs %.2fx as fast as "
                "in fp32 here (measured). It still runs; precision auto (or fp32) is faster on this machine.",
                cpu_summary(), speed)


def autocast(device: torch.device, precision: str):
    """bf16 autocast for `bf16`; nothing for `fp32` (resolve `auto` first)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
