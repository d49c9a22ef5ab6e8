"""Data: the synthetic compositional world, WebDataset shards, the caption-embedding cache, the datamodule."""

from imagen_lit.data.datamodule import TextImageDataModule
from imagen_lit.data.render import render_scene
from imagen_lit.data.shards import (
    build_embedding_cache,
    read_manifest,
    synthetic_scene,
    write_synthetic_shards,
)
from imagen_lit.data.sources import cache_paths, expand_shards
from imagen_lit.data.world import COLOURS, SHAPES, Scene, SceneObject, relation_holds, sample_scene

__all__ = [
    "COLOURS",
    "SHAPES",
    "Scene",
    "SceneObject",
    "TextImageDataModule",
    "build_embedding_cache",
    "cache_paths",
    "expand_shards",
    "read_manifest",
    "relation_holds",
    "render_scene",
    "sample_scene",
    "synthetic_scene",
    "write_synthetic_shards",
]
