"""Train an Imagen cascade stage with Lightning, configured by Hydra.

    python train.py experiment=quickstart                      # the README's main job (CPU, ~10 min)
    python train.py trainer=gpu unet=base_small data.batch_size=64
    python train.py -m text_encoder=minilm_l1,minilm_l3,minilm  # encoder-size sweep
    python train.py ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt   # resume
    python train.py init_from=<run>/checkpoints/last.ckpt data=webdataset ...  # fine-tune: fresh optimizer, step 0
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from imagen_lit.build import build_stage
from imagen_lit.precision import describe_precision
from imagen_lit.stages.callbacks import SaveRunConfig
from imagen_lit.stages.console import console_callbacks, describe_budget, quiet_library_notices
from imagen_lit.stages.finetune import InitFrom
from imagen_lit.sweep import register_resolvers, run_task

log = logging.getLogger(__name__)
FINAL_LOSS = "hp/final_loss"


def train(cfg: DictConfig) -> dict[str, float]:
    """Build encoder, data, stage and trainer from cfg, fit, and return the final logged metrics."""
    quiet_library_notices()
    L.seed_everything(cfg.seed, workers=True)
    text_encoder = instantiate(cfg.text_encoder)
    datamodule = instantiate(cfg.data, text_encoder=text_encoder)
    stage = build_stage(cfg, text_encoder.dim, deferred=True)  # built in configure_model
    run_config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    callbacks.append(SaveRunConfig(run_config))
    callbacks += console_callbacks(cfg.trainer)
    if cfg.get("init_from"):
        if cfg.get("ckpt_path"):
            raise ValueError("give init_from (new run from trained weights) or ckpt_path (resume a run), not both")
        callbacks.append(InitFrom(cfg.init_from))
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in trainer.loggers:
        # Declare the final metric with the hparams so TensorBoard's HPARAMS tab compares runs side by side.
        logger.log_hyperparams(_flatten(run_config), metrics={FINAL_LOSS: float("nan")})
        if hasattr(logger.experiment, "add_text"):
            logger.experiment.add_text("config", "```\n" + OmegaConf.to_yaml(run_config) + "```")
    log.info(describe_precision(str(trainer.precision), cfg.trainer.get("accelerator", "auto")))
    log.info("training %s %s", (cfg.get("unet") or cfg.stage)._target_,
             describe_budget(cfg.trainer, cfg.stage.get("lr_scheduler")))
    trainer.fit(stage, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics[FINAL_LOSS] = metrics.get("train/loss", float("nan"))
    for logger in trainer.loggers:
        logger.log_metrics({FINAL_LOSS: metrics[FINAL_LOSS]}, step=trainer.global_step)
        logger.save()
    if trainer.is_global_zero:
        Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.paths.output_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> flat {'a/b': value} with scalar values, for TensorBoard hparams."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}/"))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return out


register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run_task(train, cfg)


if __name__ == "__main__":
    main()
