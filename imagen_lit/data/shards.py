"""Write the synthetic world as WebDataset shards, and encode every shard's captions once into a cache."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import socket
import tarfile
import warnings
from collections.abc import Sequence

import webdataset as wds
from webdataset.tariterators import base_plus_ext

from imagen_lit.data.render import render_scene
from imagen_lit.data.sources import cache_paths, is_local, shard_name
from imagen_lit.data.world import Scene, check_kinds, sample_scene
from imagen_lit.text.cache import copy_embeddings, read_metadata, write_embeddings

MANIFEST = "manifest.json"
IMAGE_FORMATS = ("png", "jpg")


def synthetic_scene(seed: int, index: int, kinds: dict[str, float] | None = None) -> Scene:
    """Scene number `index` of the dataset with this seed (and kind mix); independent of shard size and order."""
    return sample_scene(random.Random(f"imagen-lit/{seed}/{index}"), kinds)


def write_synthetic_shards(
    out_dir: str,
    num_scenes: int,
    resolution: int,
    seed: int,
    samples_per_shard: int = 1000,
    image_format: str = "png",
    kinds: dict[str, float] | None = None,
) -> list[str]:
    """Render scenes into out_dir/shard-NNNNNN.tar (key, image, txt, json); reuse a complete identical set.

    kinds: the scene kinds' weights (default the world's own, world.KINDS).
    """
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    if num_scenes < 1 or samples_per_shard < 1 or resolution < 1:
        raise ValueError(f"num_scenes, samples_per_shard and resolution must be >= 1, got {num_scenes}, "
                         f"{samples_per_shard}, {resolution}")
    out_dir = os.path.abspath(out_dir)
    params = {"num_scenes": num_scenes, "resolution": resolution, "seed": seed,
              "samples_per_shard": samples_per_shard, "image_format": image_format}
    if kinds is not None:  # only when set, so datasets written before the option keep their manifests
        kinds = check_kinds(dict(kinds))
        params["kinds"] = kinds
    existing = read_manifest(out_dir, params)
    if existing is not None:
        return existing
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.exists(os.path.join(out_dir, MANIFEST)):
        raise FileExistsError(f"{out_dir} is not empty and holds no {MANIFEST}; point out_dir at an empty or "
                              "new folder (only a finished synthetic dataset, with a manifest, is replaced)")

    # Everything goes into a private temp folder that is renamed into place once the manifest is in it.
    tmp = f"{out_dir}.partial-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    names, counts = [], []
    for start in range(0, num_scenes, samples_per_shard):
        names.append(f"shard-{len(names):06d}.tar")
        stop = min(start + samples_per_shard, num_scenes)
        # an int mtime: a float one makes tarfile add a 1 KiB PAX header to every member
        with wds.TarWriter(os.path.join(tmp, names[-1]), encoder=False, mtime=0) as sink:
            for index in range(start, stop):
                scene = synthetic_scene(seed, index, kinds)
                sink.write({
                    "__key__": f"{index:08d}",
                    image_format: _encode(render_scene(scene, resolution), image_format),
                    "txt": scene.caption.encode("utf-8"),
                    "json": scene.to_json().encode("utf-8"),
                })
        counts.append(stop - start)
    manifest = {**params, "complete": True, "shards": names, "counts": counts}
    with open(os.path.join(tmp, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)

    existing = read_manifest(out_dir, params)  # another process may have finished first
    if existing is not None:
        shutil.rmtree(tmp, ignore_errors=True)
        return existing
    if os.path.exists(out_dir):  # an older dataset with other parameters (its stale embeds go with it)
        old = f"{out_dir}.old-{socket.gethostname()}-{os.getpid()}"
        os.rename(out_dir, old)
        shutil.rmtree(old, ignore_errors=True)
    os.rename(tmp, out_dir)
    return [os.path.join(out_dir, name) for name in names]


def read_manifest(out_dir: str, params: dict | None = None) -> list[str] | None:
    """Shard paths of a complete synthetic dataset in out_dir (matching params if given), else None."""
    try:
        with open(os.path.join(out_dir, MANIFEST)) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    if not manifest.get("complete") or any(manifest.get(k) != v for k, v in (params or {}).items()):
        return None
    paths = [os.path.join(out_dir, name) for name in manifest["shards"]]
    return paths if all(os.path.isfile(p) for p in paths) else None


def _encode(image, image_format: str) -> bytes:
    buf = io.BytesIO()
    if image_format == "png":
        image.save(buf, format="PNG", optimize=False)
    else:
        image.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def decode_caption(data: bytes | None) -> str:
    """Caption text from a sample's `txt` bytes ('' when missing); the one rule for cache and training."""
    return data.decode("utf-8", errors="replace").strip() if data else ""


def read_captions(url: str) -> tuple[list[str], list[str], list[str]]:
    """(keys, captions, keys without a caption) of a shard, reading only the `txt` members' bytes."""
    captions: dict[str, str] = {}
    keys: list[str] = []
    try:
        with wds.gopen(url, "rb") as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                key, ext = base_plus_ext(member.name)  # webdataset's own key rule, so keys match at training
                if not member.isreg() or key is None or key.startswith("__"):
                    continue
                if key not in captions:
                    keys.append(key)
                    captions[key] = ""
                if ext.lower() == "txt":
                    captions[key] = decode_caption(tar.extractfile(member).read())
    except (tarfile.TarError, OSError, EOFError) as e:
        warnings.warn(f"shard {url} is truncated or corrupt ({e}); caching the {len(keys)} samples read "
                      "before the damage", stacklevel=2)
    kept = [k for k in keys if captions[k]]
    return kept, [captions[k] for k in kept], [k for k in keys if not captions[k]]


def build_embedding_cache(
    shard_paths: list[str], text_encoder, cache_dir: str | None = None, chunk_size: int = 256,
    donors: Sequence[str] = (),
) -> list[str]:
    """Encode each shard's captions once into its cache file (missing or stale ones only); return the paths.

    With cache_dir None each shard's cache goes to <shard dir>/embeds/<cache_key>/<shard name>.safetensors.
    `donors` are folders of shards that may hold the same captions (the synthetic world at another resolution): a
    stale shard whose namesake there has a cache from this encoder over the same keys and captions (its recorded
    sha256) gets a copy of it instead of being encoded again.
    """
    stale = set(stale_caches(shard_paths, text_encoder.cache_key, cache_dir))
    paths = cache_paths(shard_paths, text_encoder.cache_key, cache_dir)
    for url, path in zip(shard_paths, paths, strict=True):
        if url not in stale:
            continue
        stamp = _shard_stamp(url)
        keys, captions, missing = read_captions(url)
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            warnings.warn(f"shard {url}: {len(missing)} samples have no caption and are skipped: {shown}",
                          stacklevel=2)
        digest = captions_digest(keys, captions)
        metadata = {"shard": shard_name(url), "encoder": text_encoder.cache_key, "shard_stamp": stamp,
                    "captions_sha256": digest}
        donor = _donor_cache(url, path, donors, text_encoder.cache_key, cache_dir, digest)
        if donor is not None:
            copy_embeddings(donor, path, metadata)
            continue
        # Streamed: the header from the token lengths, then chunk_size captions at a time, so a 10k-caption shard
        # at T5-XXL never sits in memory whole (10.5 GB in bfloat16, twice that in float32).
        chunks = (text_encoder.encode(captions[i : i + chunk_size]) for i in range(0, len(captions), chunk_size))
        write_embeddings(path, keys, text_encoder.token_lengths(captions) if captions else [], text_encoder.dim,
                         chunks, metadata=metadata)
    return paths


def captions_digest(keys: list[str], captions: list[str]) -> str:
    """sha256 of a shard's (key, caption) pairs in order: two shards with equal digests need one encoding."""
    h = hashlib.sha256()
    for key, caption in zip(keys, captions, strict=True):
        h.update(json.dumps([key, caption]).encode() + b"\n")
    return h.hexdigest()


def _donor_cache(url: str, path: str, donors: Sequence[str], cache_key: str, cache_dir: str | None,
                 digest: str) -> str | None:
    """A current cache, by this encoder, of the same keys and captions under a donor folder's namesake shard."""
    if not is_local(url):
        return None
    name = os.path.basename(url.replace("file://", "", 1))
    for folder in donors:
        other = cache_paths([os.path.join(folder, name)], cache_key, cache_dir)[0]
        if other == path or not os.path.isfile(other):
            continue
        try:
            meta = read_metadata(other)
        except ValueError:  # truncated or foreign: not a donor
            continue
        if meta.get("encoder") == cache_key and meta.get("captions_sha256") == digest:
            return other
    return None


def stale_caches(shard_paths: list[str], cache_key: str, cache_dir: str | None = None) -> list[str]:
    """The shards whose embedding cache for this encoder is missing or older than the shard."""
    paths = cache_paths(shard_paths, cache_key, cache_dir)
    return [url for url, path in zip(shard_paths, paths, strict=True)
            if not (os.path.isfile(path) and _is_current(path, _shard_stamp(url)))]


def _shard_stamp(url: str) -> str:
    """Size and mtime of a local shard ('' for remote ones): a rewritten shard invalidates its cache."""
    if not is_local(url):
        return ""
    st = os.stat(url.replace("file://", "", 1))
    return f"{st.st_size}:{st.st_mtime_ns}"


def _is_current(path: str, stamp: str) -> bool:
    try:
        return read_metadata(path).get("shard_stamp", "") == stamp
    except ValueError:  # truncated or foreign file: rebuild it
        return False
