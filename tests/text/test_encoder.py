"""FrozenTextEncoder: the packaged MiniLM, layer truncation, the random control, and the T5 path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import BertModel, T5EncoderModel

from imagen_lit.text import DEFAULT_ENCODER, FrozenTextEncoder, resolve_encoder_path
from imagen_lit.text.encoder import _cache_identity

CAPTIONS = ["a red circle", "", "two red circles to the left of a blue square", "a star"]


@pytest.fixture(scope="module")
def minilm() -> FrozenTextEncoder:
    return FrozenTextEncoder(DEFAULT_ENCODER, max_length=32)


def _mean_pool(embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return embeds.sum(1) / mask.sum(1, keepdim=True)  # (B, D); padding is already zero


def test_minilm_shapes_mask_and_zero_padding(minilm: FrozenTextEncoder) -> None:
    embeds, mask = minilm.encode(CAPTIONS)
    tokens = minilm.tokenizer(CAPTIONS, padding="longest", return_tensors="pt")
    assert isinstance(minilm.model, BertModel)
    assert minilm.dim == 384
    assert embeds.shape == (4, tokens["input_ids"].shape[1], 384) and embeds.dtype == torch.float32
    assert mask.dtype == torch.bool and torch.equal(mask, tokens["attention_mask"].bool())
    assert mask[1].sum() == 2  # the empty caption keeps [CLS] [SEP]
    assert (embeds[~mask] == 0).all()
    assert (embeds[mask].abs().sum(-1) > 0).all()


def test_minilm_is_deterministic_and_independent_of_batching(minilm: FrozenTextEncoder) -> None:
    embeds, mask = minilm.encode(CAPTIONS)
    again, _ = minilm.encode(CAPTIONS)
    assert torch.equal(embeds, again)
    small = FrozenTextEncoder(DEFAULT_ENCODER, max_length=32, batch_size=3)  # chunks of 3 and 1
    chunked, chunked_mask = small.encode(CAPTIONS)
    assert torch.equal(mask, chunked_mask)
    torch.testing.assert_close(chunked, embeds, atol=1e-5, rtol=1e-5)


def test_minilm_is_frozen_and_outputs_are_usable_in_autograd(minilm: FrozenTextEncoder) -> None:
    assert not any(p.requires_grad for p in minilm.parameters())
    assert not minilm.model.training
    minilm.train()  # a parent module switching to train mode must not enable dropout
    assert not minilm.training and not minilm.model.training
    embeds, _ = minilm.encode(["a red circle"])
    assert not embeds.is_inference() and not embeds.requires_grad
    layer = torch.nn.Linear(384, 2)
    layer(embeds).sum().backward()  # fails on inference-mode tensors
    assert layer.weight.grad is not None


def test_minilm_semantic_sanity_proves_pretrained_weights(minilm: FrozenTextEncoder) -> None:
    embeds, mask = minilm.encode(["a red circle", "a crimson circle", "the stock market fell"])
    pooled = _mean_pool(embeds, mask)
    near = F.cosine_similarity(pooled[0], pooled[1], dim=0)
    far = F.cosine_similarity(pooled[0], pooled[2], dim=0)
    assert near > far + 0.2, (near, far)


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_num_layers_truncates_the_stack(minilm: FrozenTextEncoder, num_layers: int) -> None:
    enc = FrozenTextEncoder(DEFAULT_ENCODER, max_length=32, num_layers=num_layers)
    assert len(enc.model.encoder.layer) == num_layers
    assert enc.model.config.num_hidden_layers == num_layers
    assert f"-l{num_layers}-" in enc.cache_key
    full, _ = minilm.encode(CAPTIONS)
    embeds, mask = enc.encode(CAPTIONS)
    assert embeds.shape == full.shape
    assert not torch.allclose(embeds, full, atol=1e-3)
    assert (embeds[~mask] == 0).all()


def test_num_layers_axis_gives_distinct_embeddings_and_full_depth_equals_default(
    minilm: FrozenTextEncoder,
) -> None:
    outs = {k: FrozenTextEncoder(DEFAULT_ENCODER, max_length=32, num_layers=k).encode(CAPTIONS)[0]
            for k in (1, 2, 3, 6)}
    for a in outs:
        for b in outs:
            if a < b:
                assert not torch.allclose(outs[a], outs[b], atol=1e-3), (a, b)
    assert torch.equal(outs[6], minilm.encode(CAPTIONS)[0])
    assert FrozenTextEncoder(DEFAULT_ENCODER, max_length=32, num_layers=6).cache_key == minilm.cache_key


@pytest.mark.parametrize("num_layers", [0, 7, -1])
def test_num_layers_out_of_range_raises(num_layers: int) -> None:
    with pytest.raises(ValueError, match=r"num_layers must be in \[1, 6\]"):
        FrozenTextEncoder(DEFAULT_ENCODER, num_layers=num_layers)


def test_random_init_control_differs_from_pretrained_and_is_seeded(minilm: FrozenTextEncoder) -> None:
    state = torch.random.get_rng_state()
    rand_a = FrozenTextEncoder(DEFAULT_ENCODER, max_length=32, random_init=True)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    rand_b = FrozenTextEncoder(DEFAULT_ENCODER, max_length=32, random_init=True)
    pretrained, mask = minilm.encode(CAPTIONS)
    random_a, random_mask = rand_a.encode(CAPTIONS)
    assert torch.equal(mask, random_mask)
    assert not torch.allclose(random_a, pretrained, atol=1e-2)
    assert torch.equal(random_a, rand_b.encode(CAPTIONS)[0])
    assert not any(p.requires_grad for p in rand_a.parameters())
    # the semantic ordering is a property of the pretrained weights, not the architecture
    sims = _mean_pool(*rand_a.encode(["a red circle", "a crimson circle", "the stock market fell"]))
    near = F.cosine_similarity(sims[0], sims[1], dim=0)
    far = F.cosine_similarity(sims[0], sims[2], dim=0)
    assert near - far < 0.2


def test_cache_key_is_unique_and_filesystem_safe(tiny_t5_dir: Path) -> None:
    variants = [
        dict(),
        dict(num_layers=1),
        dict(max_length=8),
        dict(random_init=True),
        dict(dtype="bfloat16"),
        dict(num_layers=1, max_length=8, random_init=True),
    ]
    keys = [FrozenTextEncoder(str(tiny_t5_dir), **kw).cache_key for kw in variants]
    assert len(set(keys)) == len(keys), keys
    for key in keys:
        assert re.fullmatch(r"[A-Za-z0-9._-]+", key), key
        assert key.startswith(tiny_t5_dir.name + "-")  # local folder: basename plus a path hash
    assert FrozenTextEncoder(DEFAULT_ENCODER, max_length=128, num_layers=3).cache_key == \
        "all-MiniLM-L6-v2-l3-len128"
    assert _cache_identity("google/t5-v1_1-xxl", "google/t5-v1_1-xxl") == "google--t5-v1_1-xxl"
    other = _cache_identity("elsewhere", str(tiny_t5_dir.parent / "other" / tiny_t5_dir.name))
    assert other != _cache_identity(str(tiny_t5_dir), str(tiny_t5_dir))  # same basename, other path


def test_resolve_encoder_path(tiny_t5_dir: Path) -> None:
    assert (Path(resolve_encoder_path("minilm")) / "config.json").is_file()
    assert resolve_encoder_path(str(tiny_t5_dir)) == str(tiny_t5_dir)
    assert resolve_encoder_path("google/t5-v1_1-xxl") == "google/t5-v1_1-xxl"
    with pytest.raises(FileNotFoundError, match="not a folder"):
        resolve_encoder_path(str(tiny_t5_dir / "missing"))


def test_null_condition(minilm: FrozenTextEncoder) -> None:
    embeds, mask = minilm.null_condition(3, 7)
    assert embeds.shape == (3, 7, 384) and embeds.dtype == torch.float32 and (embeds == 0).all()
    assert mask.shape == (3, 7) and mask.dtype == torch.bool and not mask.any()
    with pytest.raises(ValueError, match="batch and length"):
        minilm.null_condition(0, 7)


def test_encode_rejects_bad_input(minilm: FrozenTextEncoder) -> None:
    with pytest.raises(ValueError, match="non-empty list"):
        minilm.encode([])
    with pytest.raises(ValueError, match="non-empty list"):
        minilm.encode("a red circle")  # a bare string is not a list of captions
    with pytest.raises(ValueError, match=r"captions\[1\] must be a str"):
        minilm.encode(["a red circle", None])


def test_constructor_validation(tiny_t5_dir: Path) -> None:
    with pytest.raises(ValueError, match="exceeds the 512 positions"):
        FrozenTextEncoder(DEFAULT_ENCODER, max_length=513)
    with pytest.raises(ValueError, match="dtype must be one of"):
        FrozenTextEncoder(DEFAULT_ENCODER, dtype="fp8")
    with pytest.raises(ValueError, match="overflow in float16"):
        FrozenTextEncoder(str(tiny_t5_dir), dtype="float16")
    with pytest.raises(ValueError, match="batch_size"):
        FrozenTextEncoder(DEFAULT_ENCODER, batch_size=0)


def test_t5_path_loads_encoder_only(tiny_t5_dir: Path) -> None:
    enc = FrozenTextEncoder(str(tiny_t5_dir), max_length=16)
    assert type(enc.model) is T5EncoderModel
    assert enc.dim == 32
    captions = ["a red circle", "", "two green triangles above a yellow star"]
    embeds, mask = enc.encode(captions)
    assert embeds.shape == (3, 8, 32)  # 7 words + </s>
    assert mask.sum(1).tolist() == [4, 1, 8]  # the empty caption is just </s>
    assert (embeds[~mask] == 0).all()
    assert len(enc.model.encoder.block) == 2


def test_t5_max_length_truncates(tiny_t5_dir: Path) -> None:
    enc = FrozenTextEncoder(str(tiny_t5_dir), max_length=5)
    long = " ".join(["a red circle to the left of a blue square"] * 4)
    embeds, mask = enc.encode([long, "a star"])
    assert embeds.shape == (2, 5, 32) and mask[0].all()
    tokens = enc.tokenizer([long], truncation=True, max_length=5)["input_ids"][0]
    assert tokens[-1] == enc.tokenizer.eos_token_id  # truncation keeps the closing </s>


def test_t5_num_layers_and_bfloat16(tiny_t5_dir: Path) -> None:
    one = FrozenTextEncoder(str(tiny_t5_dir), num_layers=1)
    assert len(one.model.encoder.block) == 1 and one.model.config.num_layers == 1
    with pytest.raises(ValueError, match=r"num_layers must be in \[1, 2\]"):
        FrozenTextEncoder(str(tiny_t5_dir), num_layers=3)
    full, _ = FrozenTextEncoder(str(tiny_t5_dir)).encode(CAPTIONS)
    assert not torch.allclose(one.encode(CAPTIONS)[0], full, atol=1e-3)
    bf16 = FrozenTextEncoder(str(tiny_t5_dir), dtype="bfloat16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    embeds, _ = bf16.encode(CAPTIONS)
    assert embeds.dtype == torch.float32  # always handed back as float32
    torch.testing.assert_close(embeds, full, atol=0.1, rtol=0.05)


def test_token_lengths_are_the_lengths_encode_masks(minilm: FrozenTextEncoder) -> None:
    captions = ["a red circle", "two green triangles above a yellow star on a grey background", ""]
    _, mask = minilm.encode(captions)
    assert minilm.token_lengths(captions) == mask.sum(1).tolist()


def test_the_network_loads_only_when_captions_are_encoded():
    """A DDP rank that reads cached embeddings needs the width, cache key and tokenizer, never the network."""
    encoder = FrozenTextEncoder("minilm", num_layers=1)
    assert not encoder.loaded and encoder.dim == 384 and encoder.token_lengths(["a red circle"]) == [5]
    assert "-l1-len128" in encoder.cache_key and not encoder.loaded
    embeds, mask = encoder.encode(["a red circle"])
    assert encoder.loaded and embeds.shape == (1, 5, 384) and mask.all()
