"""Frozen text encoders and the caption-embedding cache (Imagen Sec. 2.1)."""

from imagen_lit.text.cache import load_embeddings, read_metadata, save_embeddings
from imagen_lit.text.encoder import DEFAULT_ENCODER, FrozenTextEncoder, resolve_encoder_path

__all__ = [
    "DEFAULT_ENCODER",
    "FrozenTextEncoder",
    "load_embeddings",
    "read_metadata",
    "resolve_encoder_path",
    "save_embeddings",
]
