"""Diffusion core: schedules, noising, loss, guidance, thresholding, samplers. Plain torch, no network."""

from imagen_lit.diffusion.augment import check_aug_level, noise_augment, sample_aug_level
from imagen_lit.diffusion.guidance import guided_model_fn
from imagen_lit.diffusion.process import PREDICTIONS, GaussianDiffusion, check_sampling_options
from imagen_lit.diffusion.samplers import SAMPLERS, get_sampler, time_grid
from imagen_lit.diffusion.schedules import CosineSchedule, LinearSchedule, LogSNRSchedule, get_schedule
from imagen_lit.diffusion.thresholding import THRESHOLDING_MODES, threshold_x0

__all__ = [
    "PREDICTIONS",
    "SAMPLERS",
    "THRESHOLDING_MODES",
    "CosineSchedule",
    "GaussianDiffusion",
    "LinearSchedule",
    "LogSNRSchedule",
    "check_aug_level",
    "check_sampling_options",
    "get_sampler",
    "get_schedule",
    "guided_model_fn",
    "noise_augment",
    "sample_aug_level",
    "threshold_x0",
    "time_grid",
]
