"""The paper's model sizes (Imagen App. B, F), built from conf/unet/*.yaml on the meta device."""

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from tests.conftest import ROOT

T5_XXL_DIM = 4096


@pytest.mark.parametrize(
    ("config", "nominal", "tolerance"),
    [
        ("base_2b", 2.0e9, 0.10),
        ("base_1b", 1.0e9, 0.10),
        ("base_500m", 0.5e9, 0.10),
        ("base_300m", 0.3e9, 0.10),
        ("sr256_600m", 0.6e9, 0.15),
        ("sr1024_400m", 0.4e9, 0.15),
    ],
)
def test_paper_sizes(config, nominal, tolerance):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"unet={config}"])
    with torch.device("meta"):
        unet = instantiate(cfg.unet, text_dim=T5_XXL_DIM)
    count = sum(p.numel() for p in unet.parameters())
    assert abs(count / nominal - 1) <= tolerance, f"{config}: {count / 1e6:.0f}M vs {nominal / 1e6:.0f}M"


def test_sr1024_has_no_self_attention_and_sr256_does():
    from imagen_lit.models.layers import TextAttention

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        sr1024 = compose(config_name="train", overrides=["unet=sr1024_400m"])
        sr256 = compose(config_name="train", overrides=["unet=sr256_600m"])
    with torch.device("meta"):
        a = [m for m in instantiate(sr1024.unet, text_dim=64).modules() if isinstance(m, TextAttention)]
        b = [m for m in instantiate(sr256.unet, text_dim=64).modules() if isinstance(m, TextAttention)]
    assert a and not any(m.self_attention for m in a)  # cross-attention only
    assert len(b) == 16 and all(m.self_attention and hasattr(m, "text_to_kv") for m in b)


@pytest.mark.parametrize("config", ["base_small", "efficient_small", "standard_25m", "efficient_25m"])
def test_small_configs_train_on_cpu(config):
    """The embedded-default sizes: tens of millions of parameters or less, and a training step runs."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"unet={config}", "data.resolution=32"])
    torch.manual_seed(0)
    unet = instantiate(cfg.unet, text_dim=384)
    assert sum(p.numel() for p in unet.parameters()) < 50e6
    x = torch.randn(2, 3, 32, 32)
    out = unet(x, torch.rand(2), torch.randn(2, 7, 384), torch.ones(2, 7, dtype=torch.bool))
    out.square().mean().backward()
    assert out.shape == x.shape
