"""trainer=cpu picks bf16 autocast only where the CPU has native bf16, and says so in one line."""

from pathlib import Path

from omegaconf import OmegaConf

from imagen_lit.precision import auto_cpu_precision, cpu_bf16_flags, describe_precision
from imagen_lit.sweep import register_resolvers

SAPPHIRE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n"


def test_native_bf16_flags_are_read_from_cpuinfo():
    assert cpu_bf16_flags(SAPPHIRE) == ["amx_bf16", "avx512_bf16"]
    assert cpu_bf16_flags(SKYLAKE) == []
    assert cpu_bf16_flags("") == []


def test_auto_precision_is_bf16_only_with_native_support():
    assert auto_cpu_precision(SAPPHIRE) == "bf16-mixed"
    assert auto_cpu_precision(SKYLAKE) == "32-true"


def test_the_log_line_names_the_choice_and_why():
    assert "auto-chosen" in describe_precision("bf16-mixed", "cpu", SAPPHIRE)
    assert "amx_bf16" in describe_precision("bf16-mixed", "cpu", SAPPHIRE)
    line = describe_precision("bf16-mixed", "cpu", SKYLAKE)
    assert "set by the config" in line and "no native bf16" in line
    assert describe_precision("bf16-mixed", "gpu") == "precision bf16-mixed on gpu"


def test_trainer_cpu_config_resolves_to_this_machines_choice():
    register_resolvers()
    cfg = OmegaConf.load(Path(__file__).parents[1] / "conf/trainer/cpu.yaml")
    assert cfg.precision == auto_cpu_precision()
