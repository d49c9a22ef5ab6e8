"""Training precision for the machine at hand: bf16 autocast where the CPU computes bf16 natively, else fp32."""

from __future__ import annotations

from pathlib import Path

import torch

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # x86 flags of native bf16 matmul (Sapphire Rapids, Zen 4, ...)


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The native-bf16 flags this CPU reports in /proc/cpuinfo (empty where there are none or no such file)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags") or line.startswith("Features"):
            flags.update(line.split(":", 1)[-1].split())
    return [f for f in NATIVE_BF16_FLAGS if f in flags]


def auto_cpu_precision(cpuinfo: str | None = None) -> str:
    """'bf16-mixed' where the CPU has native bf16 (autocast pays), '32-true' where it would be emulated (slower)."""
    return "bf16-mixed" if cpu_bf16_flags(cpuinfo) else "32-true"


def describe_precision(precision: str, accelerator: str, cpuinfo: str | None = None) -> str:
    """One log line: the precision a run trains in, and why."""
    if accelerator != "cpu":
        return f"precision {precision} on {accelerator}"
    flags = cpu_bf16_flags(cpuinfo)
    native = (f"the CPU has native bf16 ({', '.join(flags)})" if flags
              else "the CPU has no native bf16 (emulated: slower)")
    chosen = "auto-chosen" if precision == auto_cpu_precision(cpuinfo) else "set by the config"
    return f"precision {precision} ({chosen}): {native}; torch {torch.__version__}, {torch.get_num_threads()} threads"
