"""Time one training step of a composed train.py config on random inputs, and print the torch.profiler top-10.

    python experiments/profile_step.py experiment=quickstart
    python experiments/profile_step.py experiment=quickstart stage.channels_last=true trainer.precision=32-true
    python experiments/profile_step.py experiment=quickstart_adamw   # the same U-Net and batch with AdamW

The step is the stage's: the diffusion loss of the configured U-Net under the trainer's precision (bf16 autocast
for bf16-mixed), in the stage's memory format, then the stage's optimizer (`stage.optimizer`: Muon under
`experiment=quickstart`, AdamW under `experiment=quickstart_adamw`). Random images and text stand in for the
data, so the figure is compute alone, without the DataLoader.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imagen_lit.sweep import register_resolvers  # noqa: E402

TEXT_TOKENS = 20


def main(overrides: list[str], iters: int = 10) -> None:
    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    fmt = torch.channels_last if cfg.stage.get("channels_last") else torch.contiguous_format
    bf16 = str(cfg.trainer.precision).startswith("bf16")
    text_dim = instantiate(cfg.text_encoder).dim
    unet = instantiate(cfg.unet, text_dim=text_dim).to(memory_format=fmt).train()
    diffusion = instantiate(cfg.diffusion)
    opt = instantiate(cfg.stage.optimizer)(params=unet.parameters())
    b, r = cfg.data.batch_size, cfg.data.resolution
    x = torch.randn(b, 3, r, r).contiguous(memory_format=fmt)
    text, mask = torch.randn(b, TEXT_TOKENS, text_dim), torch.ones(b, TEXT_TOKENS, dtype=torch.bool)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            losses, _ = diffusion.training_loss(lambda x_t, t, **kw: unet(x_t, t, **kw).float(), x,
                                                text_embeds=text, text_mask=mask)
        losses.mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    seconds = (time.perf_counter() - start) / iters
    print(f"{cfg.unet._target_.split('.')[-1]} {r}x{r} batch {b} precision {cfg.trainer.precision} "
          f"channels_last={fmt is torch.channels_last} {type(opt).__name__} threads={torch.get_num_threads()}: "
          f"{seconds * 1000:.0f} ms/step, {b / seconds:.1f} img/s")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


if __name__ == "__main__":
    main(sys.argv[1:])
