"""Checkpoint files: atomic writes (temp file, fsync, rename) and loading with errors that name the file."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from imagen_lit.fileio import atomic_write

CORRUPT_ERRORS = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError)


def read_checkpoint(path: str | Path, weights_only: bool = True) -> dict[str, Any]:
    """Load a checkpoint on CPU; FileNotFoundError or a ValueError naming the file if it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except CORRUPT_ERRORS as err:
        raise ValueError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: {err})") from err


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO with atomic local writes and clear errors for corrupt checkpoints."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)  # remote stores: Lightning's path
        atomic_write(path, lambda f: torch.save(checkpoint, f))

    def load_checkpoint(
        self, path: Any, map_location: Callable | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        return read_checkpoint(path, weights_only=True if weights_only is None else weights_only)
