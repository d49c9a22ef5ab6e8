"""End to end: train a tiny base and a tiny SR stage, export them as a cascade folder, and sample the chain."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import load_file

from imagen_lit.cascade import CASCADE_FILE, WEIGHTS_FILE, Cascade
from imagen_lit.stages.callbacks import CHECKPOINT_CONFIG_KEY
from sample import sample
from tests.conftest import TINY, compose_config
from tests.test_train_sr import SR_TINY
from train import train

SR_OVERRIDES = ["experiment=quickstart_sr64", "data.resolution=32", "data.lowres_resolution=16", "data.crop_size=16"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, shared_data_dir) -> list[Path]:
    """[base 16x16, SR 16->32] checkpoints of two tiny train.py runs on the same text encoder."""
    root = tmp_path_factory.mktemp("cascade")
    base = compose_config("train", root / "base", TINY + [f"paths.data_dir={shared_data_dir}"])
    train(base)
    sr = compose_config("train", root / "sr", SR_TINY + SR_OVERRIDES + [f"paths.data_dir={shared_data_dir}"])
    train(sr)
    return [root / "base" / "checkpoints" / "last.ckpt", root / "sr" / "checkpoints" / "last.ckpt"]


@pytest.fixture(scope="module")
def third_stage(checkpoints, shared_data_dir) -> Path:
    """A tiny crop-trained SR 32->64 checkpoint (the embedded cascade's last stage, experiment=quickstart_sr128)."""
    root = checkpoints[0].parents[2]
    cfg = compose_config("train", root / "sr64", SR_TINY + [
        "experiment=quickstart_sr128", "data.resolution=64", "data.lowres_resolution=32", "data.crop_size=16",
        f"paths.data_dir={shared_data_dir}"])
    train(cfg)
    return root / "sr64" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory) -> Path:
    return Cascade.from_checkpoints(checkpoints).save(tmp_path_factory.mktemp("export") / "cascade")


def _sample(tmp_path: Path, *overrides: str) -> Path:
    cfg = compose_config("sample", tmp_path, [f"output_dir={tmp_path}", "progress=false", "num_images=2",
                                              "prompts=[a red circle,two blue squares]", *overrides])
    return sample(cfg)


def test_export_round_trips_exactly(checkpoints, exported):
    index = json.loads((exported / CASCADE_FILE).read_text())
    assert index["stages"] == ["base16", "sr32"] and index["image_sizes"] == [16, 32]
    assert index["text_encoder"]["num_layers"] == 1
    original, loaded = Cascade.from_checkpoints(checkpoints), Cascade.load(exported)
    for a, b, name in zip(original.stages, loaded.stages, loaded.names, strict=True):
        saved = load_file(str(exported / name / WEIGHTS_FILE))
        state = a.state_dict()
        assert saved.keys() == state.keys() and any(k.startswith("ema.") for k in saved)
        assert all(torch.equal(saved[k], state[k]) for k in state)
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in state.items())
        assert a.sampling == b.sampling


def test_folder_and_checkpoints_sample_the_same_pixels(checkpoints, exported, tmp_path):
    from_ckpts = _sample(tmp_path / "ckpts", f"stages=[{checkpoints[0]},{checkpoints[1]}]")
    from_folder = _sample(tmp_path / "folder", f"cascade={exported}")
    meta = json.loads((from_folder / "samples.json").read_text())
    assert meta["stages"] == ["base16", "sr32"]
    for name, size in (("base16", 16), ("sr32", 32)):
        files = sorted((from_folder / name / "images").glob("*.png"))
        assert len(files) == 4
        for f in files:
            a, b = np.asarray(Image.open(f)), np.asarray(Image.open(from_ckpts / name / "images" / f.name))
            assert a.shape == (size, size, 3) and np.array_equal(a, b)
    # the tensors too, not only the 8-bit PNGs
    x = Cascade.from_checkpoints(checkpoints).sample(["a red circle"], seed=3)
    y = Cascade.load(exported).sample(["a red circle"], seed=3)
    assert all(torch.equal(x[n], y[n]) for n in ("base16", "sr32"))
    assert not torch.equal(x["sr32"], Cascade.load(exported).sample(["a red circle"], seed=4)["sr32"])


def test_sr_stage_reads_the_previous_stage_output(exported):
    cascade = Cascade.load(exported)
    out = cascade.sample(["a red circle", "a blue square"], seed=0)
    assert out["base16"].shape == (2, 3, 16, 16) and out["sr32"].shape == (2, 3, 32, 32)
    embeds, mask = cascade.text_encoder.encode(["a red circle", "a blue square"])
    raw = cascade.stages[1].generate(embeds, mask, out["base16"], generator=torch.Generator().manual_seed(0))
    assert raw.shape == (2, 3, 32, 32) and torch.isfinite(raw).all() and raw.std() > 0.01
    assert raw.abs().max() <= 1 + 1e-3  # dynamic thresholding keeps x0 in range, up to float error
    calls = []
    sr = cascade.stages[1]
    original = sr.generate

    def spy(embeds, mask, lowres, **kwargs):
        calls.append(lowres.clone())
        return original(embeds, mask, lowres, **kwargs)

    sr.generate = spy
    again = cascade.sample(["a red circle", "a blue square"], seed=0)
    assert torch.equal(calls[0], again["base16"]) and torch.equal(again["sr32"], out["sr32"])


def test_start_at_sr_with_own_image_and_stop_at(exported, tmp_path):
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    image[4:12, 4:12] = (220, 30, 30)
    Image.fromarray(image).save(tmp_path / "low.png")
    out = _sample(tmp_path / "sr", f"cascade={exported}", "start_at=sr32", f"lowres_image={tmp_path / 'low.png'}",
                  "stage_sampling.sr32.aug_level=0.0", "stage_sampling.sr32.steps=3")  # any name, no +
    meta = json.loads((out / "samples.json").read_text())
    assert meta["stages"] == ["sr32"] and not (out / "base16").exists()
    assert meta["sampling"]["sr32"]["aug_level"] == 0.0 and meta["sampling"]["sr32"]["steps"] == 3
    assert np.asarray(Image.open(out / "sr32" / "images" / "00000.png")).shape == (32, 32, 3)
    # the crop-trained stage takes a low-res image of any (stride-multiple) size and returns it 2x larger
    wide = np.zeros((16, 24, 3), dtype=np.uint8)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    out = _sample(tmp_path / "wide", f"cascade={exported}", "start_at=sr32", f"lowres_image={tmp_path / 'wide.png'}")
    assert np.asarray(Image.open(out / "sr32" / "images" / "00000.png")).shape == (32, 48, 3)
    only_base = _sample(tmp_path / "base", f"cascade={exported}", "stop_at=base16")
    assert json.loads((only_base / "samples.json").read_text())["stages"] == ["base16"]


def test_three_stage_cascade(checkpoints, third_stage, tmp_path):
    cascade = Cascade.from_checkpoints([*checkpoints, third_stage])
    assert cascade.names == ["base16", "sr32", "sr64"]
    out = Cascade.load(cascade.save(tmp_path / "c3")).sample(["a red circle"], seed=1)
    assert [tuple(x.shape) for x in out.values()] == [(1, 3, 16, 16), (1, 3, 32, 32), (1, 3, 64, 64)]
    assert all(torch.equal(out[n], x) for n, x in cascade.sample(["a red circle"], seed=1).items())
    middle = cascade.sample(["a red circle"], seed=1, start_at="sr32", stop_at="sr32", lowres=out["base16"])
    assert list(middle) == ["sr32"] and torch.equal(middle["sr32"], out["sr32"])


@pytest.mark.parametrize(
    ("image", "mode", "match"),
    [((15, 15, 3), "RGB", "not a multiple of the U-Net's total stride"), ((16, 16, 4), "RGBA", "RGB images"),
     ((16, 16), "L", "RGB images")],
    ids=["wrong-size", "rgba", "grey"],
)
def test_bad_lowres_image_is_a_clear_error(exported, tmp_path, image, mode, match):
    Image.fromarray(np.zeros(image, dtype=np.uint8), mode).save(tmp_path / "bad.png")
    with pytest.raises(ValueError, match=match):
        _sample(tmp_path / "out", f"cascade={exported}", "start_at=sr32", f"lowres_image={tmp_path / 'bad.png'}")


def test_sr_start_needs_an_image_and_base_start_refuses_one(exported):
    cascade = Cascade.load(exported)
    with pytest.raises(ValueError, match="give the low-res images"):
        cascade.sample(["a red circle"], start_at="sr32")
    with pytest.raises(ValueError, match="takes no low-res image"):
        cascade.sample(["a red circle"], lowres=torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="no stage named 'sr64'"):
        cascade.sample(["a red circle"], stop_at="sr64")
    with pytest.raises(ValueError, match="unknown sampling options"):
        cascade.stages[1].checked_sampling({"aug_levle": 0.1})


def test_folder_missing_a_stage(exported, tmp_path):
    broken = shutil.copytree(exported, tmp_path / "broken")
    shutil.rmtree(broken / "sr32")
    with pytest.raises(FileNotFoundError, match=r"\['sr32'\] lack"):
        Cascade.load(broken)
    with pytest.raises(FileNotFoundError, match="not a cascade folder"):
        Cascade.load(tmp_path)


def test_stages_with_different_text_encoders(exported, checkpoints, tmp_path):
    broken = shutil.copytree(exported, tmp_path / "mixed")
    cfg = OmegaConf.load(broken / "sr32" / "config.yaml")
    cfg.text_encoder.num_layers = 2
    OmegaConf.save(cfg, broken / "sr32" / "config.yaml")
    with pytest.raises(ValueError, match="stage sr32 was trained with text encoder"):
        Cascade.load(broken)
    checkpoint = torch.load(checkpoints[1], map_location="cpu", weights_only=True)
    checkpoint[CHECKPOINT_CONFIG_KEY]["text_encoder"]["num_layers"] = 2
    torch.save(checkpoint, tmp_path / "other_encoder.ckpt")
    with pytest.raises(ValueError, match=r"different text encoders.*differ in \['num_layers'\]"):
        Cascade.from_checkpoints([checkpoints[0], tmp_path / "other_encoder.ckpt"])
    cascade = Cascade.from_checkpoints(checkpoints)
    cascade.configs[1].text_encoder.num_layers = 2
    with pytest.raises(ValueError, match=r"different text encoders.*differ in \['num_layers'\]"):
        Cascade(cascade.stages, cascade.configs, cascade.text_encoder)


def test_sr_stage_cannot_come_first_after_a_mismatched_size(checkpoints):
    base = Cascade.from_checkpoints(checkpoints[:1])
    with pytest.raises(ValueError, match="only the first stage"):
        Cascade(base.stages * 2, base.configs * 2, base.text_encoder, ["a", "b"])
    sr = Cascade.from_checkpoints(checkpoints[1:])
    sr.stages[0].fully_convolutional = False  # a whole-image SR stage takes exactly its lowres_size
    with pytest.raises(ValueError, match="upsamples 16x16 images but a makes 32x32"):
        Cascade([sr.stages[0], sr.stages[0]], sr.configs * 2, sr.text_encoder, ["a", "b"])


def test_sample_py_with_an_sr_checkpoint_super_resolves_lowres_image(checkpoints, tmp_path):
    Image.fromarray(np.full((16, 16, 3), 128, dtype=np.uint8)).save(tmp_path / "low.png")
    out = _sample(tmp_path / "sr", f"ckpt_path={checkpoints[1]}", f"lowres_image={tmp_path / 'low.png'}", "steps=2")
    assert np.asarray(Image.open(out / "sr32" / "images" / "00000.png")).shape == (32, 32, 3)
    with pytest.raises(ValueError, match="is a super-resolution stage: pass lowres_image=<png>"):
        _sample(tmp_path / "none", f"ckpt_path={checkpoints[1]}")
    with pytest.raises(ValueError, match="is a super-resolution stage"):
        _sample(tmp_path / "eval", f"ckpt_path={checkpoints[1]}", "evaluate=true")


def test_lowres_image_that_is_not_an_image_is_one_line(exported, tmp_path):
    (tmp_path / "notes.png").write_text("hello")
    with pytest.raises(ValueError, match="is not an image file PIL can read"):
        _sample(tmp_path / "out", f"cascade={exported}", "start_at=sr32", f"lowres_image={tmp_path / 'notes.png'}")


def test_cascade_vs_bicubic_reuses_base_samples_only_while_they_are_valid(exported, tmp_path, monkeypatch):
    """--base-samples: a second call with the same base reads the cache; new base weights or captions resample."""
    import experiments.cascade_vs_bicubic as cvb

    cascade, cache, captions = Cascade.load(exported), tmp_path / "base.pt", ["a red circle", "two blue squares"]
    first = cvb.base_samples(cascade, captions, 2, cache)
    calls = []
    real = cvb.sample_stage
    monkeypatch.setattr(cvb, "sample_stage", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert torch.equal(cvb.base_samples(cascade, captions, 2, cache), first) and not calls
    cvb.base_samples(cascade, captions[:1], 2, cache)  # other captions
    assert len(calls) == 1
    with torch.no_grad():
        next(cascade.stages[0].unet.parameters()).add_(1.0)  # other weights, same captions as the cache now holds
    cvb.base_samples(cascade, captions[:1], 2, cache)
    assert len(calls) == 2


def test_cascade_vs_bicubic_settings_override_one_stage_and_key_the_cache(exported, tmp_path):
    """--set base16.steps=3 changes the base samples (and so the cache key); a bad item is one line."""
    import experiments.cascade_vs_bicubic as cvb

    cascade, captions = Cascade.load(exported), ["a red circle", "two blue squares"]
    overrides = cvb.parse_settings(["base16.steps=3", "sr32.guidance_weight=1.5"], cascade)
    assert overrides == {"base16": {"steps": 3}, "sr32": {"guidance_weight": 1.5}}
    assert cvb.base_key(cascade, captions, 2, overrides) != cvb.base_key(cascade, captions, 2)
    assert cvb.base_key(cascade, captions, 2, {"sr32": {"steps": 3}}) == cvb.base_key(cascade, captions, 2)
    assert cascade.stages[0].sampling["steps"] != 3
    plain = cvb.base_samples(cascade, captions, 2, None)
    assert not torch.equal(cvb.base_samples(cascade, captions, 2, None, overrides), plain)
    with pytest.raises(ValueError, match="write STAGE.KEY=VALUE"):
        cvb.parse_settings(["sr64.steps=3"], cascade)
    with pytest.raises(ValueError, match="unknown sampling options"):
        cvb.parse_settings(["base16.guidance=3"], cascade)


def test_cascade_vs_bicubic_truth_rows_are_the_scenes_own_renders():
    """--truth: each scene's render at the SR size and bicubic of its base-size render, both scored right."""
    import experiments.cascade_vs_bicubic as cvb
    from imagen_lit.eval.guidance import evaluate_images, heldout_scenes

    scenes = heldout_scenes(6, 2000)
    real, bicubic = cvb.truth_images(2000, 6, 64, 32)
    assert real.shape == bicubic.shape == (6, 3, 64, 64) and -1 <= float(bicubic.min()) <= float(bicubic.max()) <= 1
    assert not torch.equal(real, bicubic) and (real - bicubic).abs().mean() < 0.05  # blurred edges, same picture
    for images in (real, bicubic):
        assert evaluate_images(images, scenes)["alignment/overall"] == 1.0
