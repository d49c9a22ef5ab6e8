"""Is bf16 autocast worth it on this machine? Matmul peak and a U-Net training step, fp32 vs bf16, in one run.

    python experiments/bench_precision.py --device cpu --batch 32 --resolution 32

Prints GFLOP/s of a square matmul in each dtype, then training img/s of the configured U-Net under fp32 and
bf16 autocast, each with and without channels_last, and the bf16/fp32 ratios. CPUs without avx512_bf16 / AMX
emulate bf16 and run it several times slower; there, keep trainer.precision=32-true.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate


def _time(fn, warmup: int, iters: int, device: str) -> float:
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def matmul_gflops(dtype: torch.dtype, device: str, n: int = 2048) -> float:
    """Achieved GFLOP/s of an n x n matmul in dtype."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / _time(lambda: a @ b, 3, 10, device) / 1e9


def train_img_per_sec(unet_cfg: str, resolution: int, batch: int, bf16: bool, channels_last: bool, device: str):
    """Training img/s of the U-Net config under fp32 or bf16 autocast."""
    conf_dir = str(Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"unet={unet_cfg}", f"data.resolution={resolution}"])
    torch.manual_seed(0)
    unet = instantiate(cfg.unet, text_dim=384).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    unet = unet.to(memory_format=fmt)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, resolution, resolution, device=device).contiguous(memory_format=fmt)
    t = torch.rand(batch, device=device)
    text = torch.randn(batch, 16, 384, device=device)
    mask = torch.ones(batch, 16, dtype=torch.bool, device=device)

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = unet(x, t, text, mask).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return batch / _time(step, 2, 5, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--unet", default="base_small")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    print(f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__}")
    fp32, bf16 = (matmul_gflops(d, args.device) for d in (torch.float32, torch.bfloat16))
    print(f"matmul 2048^3   fp32 {fp32:8.1f} GFLOP/s   bf16 {bf16:8.1f} GFLOP/s   bf16/fp32 {bf16 / fp32:.2f}")
    for channels_last in (False, True):
        r32 = train_img_per_sec(args.unet, args.resolution, args.batch, False, channels_last, args.device)
        r16 = train_img_per_sec(args.unet, args.resolution, args.batch, True, channels_last, args.device)
        print(
            f"train unet={args.unet} res={args.resolution} batch={args.batch} channels_last={channels_last}: "
            f"fp32 {r32:7.1f} img/s   bf16-autocast {r16:7.1f} img/s   bf16/fp32 {r16 / r32:.2f}"
        )


if __name__ == "__main__":
    main()
