"""Shard patterns to shard lists, and where each shard's caption-embedding cache lives."""

from __future__ import annotations

import glob
import os

import braceexpand

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def pass_key(epoch: int, pass_index: int) -> str:
    """The seed suffix of one pass over the shards: the epoch, then '/pass' from an epoch's second pass on."""
    return f"{epoch}" + (f"/{pass_index}" if pass_index else "")


def is_local(url: str) -> bool:
    """Whether a shard url is a plain local path (not pipe:, http://, s3://, ...)."""
    return not url.startswith("pipe:") and "://" not in url.replace("file://", "", 1)


def expand_shards(pattern: str) -> list[str]:
    """Expand a path, folder, glob or brace pattern ('a::b' lists too) into shard urls; check local ones."""
    urls: list[str] = []
    for part in pattern.split("::"):
        for url in braceexpand.braceexpand(part):
            if not is_local(url):
                urls.append(url)  # remote urls are opened lazily by webdataset; nothing to check here
                continue
            path = os.path.expanduser(url.replace("file://", "", 1))
            if os.path.isdir(path):
                found = sorted(p for p in glob.glob(os.path.join(path, "*")) if p.endswith(TAR_SUFFIXES))
            elif glob.has_magic(path):
                found = sorted(glob.glob(path))
            else:
                found = [path] if os.path.isfile(path) else []
            if not found:
                raise FileNotFoundError(
                    f"no shards found for {url!r} (from shards={pattern!r}); pass existing .tar files, a "
                    f"folder of them, a glob or a brace pattern like /data/shard-{{000000..000099}}.tar"
                )
            urls.extend(found)
    return urls


def shard_name(url: str) -> str:
    """The shard's file name without its .tar suffix ('pipe:curl -s http://x/a-0001.tar' -> 'a-0001')."""
    last = url.split()[-1] if url.startswith("pipe:") else url
    name = os.path.basename(last.split("?")[0].rstrip("/"))
    for suffix in TAR_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def cache_paths(urls: list[str], cache_key: str, cache_dir: str | None = None) -> list[str]:
    """Cache file of each shard: {cache_dir or <shard dir>/embeds}/{cache_key}/{shard name}.safetensors."""
    paths = []
    for url in urls:
        if cache_dir is None and not is_local(url):
            raise ValueError(f"shard {url!r} is not a local file: pass cache_dir to say where its "
                             "embeddings go")
        root = cache_dir if cache_dir is not None else os.path.join(os.path.dirname(url), "embeds")
        paths.append(os.path.join(root, cache_key, shard_name(url) + ".safetensors"))
    seen: dict[str, str] = {}
    for url, path in zip(urls, paths, strict=True):
        if path in seen:
            raise ValueError(
                f"shards {seen[path]!r} and {url!r} would share the cache file {path}; give shards unique "
                f"file names or leave cache_dir unset so each folder keeps its own cache"
            )
        seen[path] = url
    return paths
