"""FLOPs of one training batch, for Lightning's ThroughputMonitor (which reads the stage's `flops_per_batch`)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from lightning.fabric.utilities.throughput import measure_flops


def count_flops(stage: Any, batch: dict[str, Any]) -> int:
    """Forward + backward FLOPs of one training batch, counted on a meta-device copy of the stage's U-Net; the stage
    gives its extra network inputs through `flops_inputs(meta, t)`."""
    if stage.unet_factory is not None:  # also right under ZeRO-3, where stage.unet holds only shards
        with torch.device("meta"):
            net = stage.unet_factory()
    else:
        net = copy.deepcopy(stage.unet).to("meta")
    # fp32 meta inputs whatever the batch dtype (DeepSpeed hands bf16 batches to a fp32 meta copy)
    meta = {k: torch.empty(v.shape, device="meta", dtype=torch.bool if v.dtype == torch.bool else torch.float32)
            for k, v in batch.items() if torch.is_tensor(v)}
    t = torch.empty(meta["images"].shape[0], device="meta")
    extra = stage.flops_inputs(meta, t)
    return int(measure_flops(
        net, lambda: net(meta["images"], t, meta["text_embeds"], meta["text_mask"], **extra),
        loss_fn=torch.Tensor.sum,
    ))
