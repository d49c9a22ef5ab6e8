"""U-Net training benchmark: img/s, peak memory, GFLOP per image and achieved FLOP/s against this machine's
matmul peak measured in the same run (Imagen App. B.1: Efficient vs standard U-Net).

    python experiments/bench_unet.py --configs standard_25m efficient_25m --resolution 64 --batch 16 \
        --precision fp32 bf16
    python experiments/bench_unet.py --configs base_2b --resolution 64 --batch 64 --precision bf16 \
        --device cuda --checkpointing off on --text-dim 4096

Each (config, precision, checkpointing) runs in a fresh process, so the peak memory is its own: CUDA's
max_memory_allocated on GPUs, the process's peak RSS on CPU. FLOPs are counted once per config with
torch.utils.flop_counter (forward + backward) on a meta-device copy.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import resource
import time
from pathlib import Path

import torch

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, warmup: int, iters: int, device: str) -> float:
    """Mean seconds per call after warmup calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters


def matmul_peak(dtype: torch.dtype, device: str, n: int = 4096) -> float:
    """Achieved FLOP/s of a large square matmul: the practical peak of this machine in that dtype."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return 2 * n**3 / timed(lambda: a @ b, 3, 10, device)


def build_unet(config: str, resolution: int, text_dim: int, checkpointing: bool) -> torch.nn.Module:
    """The U-Net of conf/unet/<config>.yaml at this resolution."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"unet={config}", f"data.resolution={resolution}",
                                                      f"++unet.image_size={resolution}",
                                                      f"++unet.gradient_checkpointing={checkpointing}"])
    return instantiate(cfg.unet, text_dim=text_dim)


def _inputs(batch: int, resolution: int, text_dim: int, device: str, lowres: bool) -> tuple[tuple, dict]:
    x = torch.randn(batch, 3, resolution, resolution, device=device).contiguous(memory_format=torch.channels_last)
    args = (x, torch.rand(batch, device=device), torch.randn(batch, 32, text_dim, device=device),
            torch.ones(batch, 32, dtype=torch.bool, device=device))
    kw = {"lowres": torch.randn(batch, 3, resolution // 4, resolution // 4, device=device),
          "aug_level": torch.rand(batch, device=device)} if lowres else {}
    return args, kw


def flops_per_image(unet: torch.nn.Module, batch: int, resolution: int, text_dim: int) -> float:
    """Forward + backward FLOPs of one training image, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    net = unet.to("meta")
    args, kw = _inputs(batch, resolution, text_dim, "meta", getattr(net, "lowres_cond", False))
    with FlopCounterMode(display=False) as counter:
        net(*args, **kw).sum().backward()
    return counter.get_total_flops() / batch


def _run(spec: dict, queue: mp.Queue) -> None:
    """One measurement in a fresh process: training img/s and peak memory."""
    device, batch, res, text_dim = spec["device"], spec["batch"], spec["resolution"], spec["text_dim"]
    torch.manual_seed(0)
    unet = build_unet(spec["config"], res, text_dim, spec["checkpointing"])
    params = sum(p.numel() for p in unet.parameters())
    fmt = torch.channels_last if spec["channels_last"] else torch.contiguous_format
    unet = unet.to(device).to(memory_format=fmt).train()
    if spec["compile"]:
        unet.compile()  # in place: the warmup iterations include the compilation
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    args, kw = _inputs(batch, res, text_dim, device, getattr(unet, "lowres_cond", False))
    args = (args[0].contiguous(memory_format=fmt), *args[1:])
    amp = spec["precision"] == "bf16"

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            loss = unet(*args, **kw).float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(step, spec["warmup"], spec["iters"], device)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    queue.put({"params": params, "img_per_s": batch / seconds, "peak_mem_gib": peak / 2**30})


def measure(spec: dict) -> dict:
    """Run _run in a spawned process and return its figures."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run, args=(spec, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["standard_25m", "efficient_25m"])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--checkpointing", nargs="+", default=["off"], choices=["off", "on"])
    parser.add_argument("--channels-last", nargs="+", default=["on"], choices=["off", "on"])
    parser.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"], help="torch.compile the U-Net")
    parser.add_argument("--text-dim", type=int, default=384, help="384: MiniLM; 4096: T5-XXL")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()

    peaks = {name: matmul_peak(dtype, args.device) for name, dtype in DTYPES.items()}
    print(f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__}")
    print("measured matmul peak: " + "  ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items()))
    rows = []
    for config in args.configs:
        gflop = flops_per_image(build_unet(config, args.resolution, args.text_dim, False), args.batch,
                                args.resolution, args.text_dim) / 1e9
        for precision, ckpt, cl, comp in itertools.product(args.precision, args.checkpointing, args.channels_last,
                                                           args.compile):
            spec = {"config": config, "resolution": args.resolution, "batch": args.batch, "text_dim": args.text_dim,
                    "precision": precision, "checkpointing": ckpt == "on", "channels_last": cl == "on",
                    "compile": comp == "on", "device": args.device, "warmup": args.warmup, "iters": args.iters}
            r = measure(spec)
            achieved = r["img_per_s"] * gflop * 1e9
            row = {**spec, **r, "gflop_per_img": gflop, "achieved_gflops": achieved / 1e9,
                   "frac_fp32_peak": achieved / peaks["fp32"], "frac_bf16_peak": achieved / peaks["bf16"]}
            rows.append(row)
            print(f"{config:14s} {precision} ckpt={ckpt:3s} channels_last={cl:3s} compile={comp:3s} "
                  f"params={r['params'] / 1e6:7.1f}M "
                  f"GFLOP/img={gflop:7.2f} img/s={r['img_per_s']:8.2f} achieved={achieved / 1e9:8.1f} GFLOP/s "
                  f"({achieved / peaks['fp32']:.0%} of fp32 peak, {achieved / peaks['bf16']:.0%} of bf16 peak) "
                  f"peak_mem={r['peak_mem_gib']:.2f} GiB")
    for precision in args.precision:
        speed = {r["config"]: r["img_per_s"] for r in rows
                 if r["precision"] == precision and not r["checkpointing"] and r["channels_last"] and not r["compile"]}
        if len(speed) >= 2:
            first, *others = list(speed)
            for other in others:
                print(f"{precision}: {other} / {first} img/s = {speed[other] / speed[first]:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"peaks": peaks, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
