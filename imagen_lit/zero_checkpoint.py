"""DeepSpeed ZeRO checkpoints (a folder of per-rank shards) read back as one plain Lightning checkpoint.

    python -m imagen_lit.zero_checkpoint <run>/checkpoints/last.ckpt converted.ckpt

sample.py and `load_stage` also read such a folder directly, converting it in memory.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from imagen_lit.fileio import atomic_write
from imagen_lit.models.ema import gather_sharded_ema

DEEPSPEED_EMA_KEY = "deepspeed_ema"  # written by BaseStage.on_save_checkpoint under DeepSpeed
ENGINE_KEYS = (  # DeepSpeed's own entries in a model-states file; everything else is Lightning's client state
    "module", "buffer_names", "optimizer", "param_shapes", "frozen_param_shapes", "frozen_param_fragments",
    "lr_scheduler", "data_sampler", "random_ltd", "sparse_tensor_module_names", "skipped_steps", "global_steps",
    "global_samples", "dp_world_size", "mp_world_size", "ds_config", "ds_version", "shared_params",
)


def is_deepspeed_checkpoint(path: str | Path) -> bool:
    """A DeepSpeed checkpoint is a folder with a `latest` file naming its tag folder."""
    return Path(path).is_dir() and (Path(path) / "latest").is_file()


def read_deepspeed_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint with `state_dict` = fp32 master weights of the U-Net plus the EMA (gathered from shards)."""
    path = Path(path)
    if not is_deepspeed_checkpoint(path):
        raise ValueError(f"{path} is a folder but not a DeepSpeed checkpoint (no 'latest' file inside)")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint, get_model_state_files

    tag_dir = path / (path / "latest").read_text().strip()
    state_dict = get_fp32_state_dict_from_zero_checkpoint(str(path))  # the optimizer's fp32 master weights
    # One model-states file under ZeRO-2 (rank 0), one per rank under ZeRO-3, in rank order.
    rank_states = [torch.load(f, map_location="cpu", weights_only=False) for f in get_model_state_files(str(tag_dir))]
    client = {k: v for k, v in rank_states[0].items() if k not in ENGINE_KEYS}
    ema_states = [s.get(DEEPSPEED_EMA_KEY) for s in rank_states]
    client.pop(DEEPSPEED_EMA_KEY, None)
    if ema_states[0] is not None:
        is_sharded = isinstance(ema_states[0], dict) and ema_states[0].get("kind") == "sharded"
        ema = gather_sharded_ema(ema_states) if is_sharded else ema_states[0]
        state_dict.update({f"ema.{k}": v.float() if v.is_floating_point() else v for k, v in ema.items()})
    client["state_dict"] = {k.removeprefix("_forward_module."): v for k, v in state_dict.items()}
    return client


def convert(path: str | Path, output: str | Path) -> Path:
    """Write the converted checkpoint atomically to `output` and return its path."""
    checkpoint = read_deepspeed_checkpoint(path)
    atomic_write(output, lambda f: torch.save(checkpoint, f))
    return Path(output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a DeepSpeed checkpoint folder written by train.py (e.g. last.ckpt/)")
    parser.add_argument("output", help="the plain checkpoint file to write")
    args = parser.parse_args()
    out = convert(args.checkpoint, args.output)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
