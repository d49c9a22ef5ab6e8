import json
from importlib import resources

import numpy as np
import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

import imagen_lit.eval.fid as fid_module
from imagen_lit.eval.features import (
    INCEPTION_WEIGHTS_KEY,
    PACKAGED_WEIGHTS,
    DomainFeatureConfig,
    DomainFeatureNet,
    build_feature_extractor,
    load_domain_features,
    render_scenes,
    save_domain_features,
)
from imagen_lit.eval.fid import FidEvaluator, SyntheticReference, build_fid_evaluator

REF_SEED, OTHER_SEED = 5, 6
N = 200


def tiny_net(seed: int = 0) -> DomainFeatureNet:
    torch.manual_seed(seed)
    return DomainFeatureNet(DomainFeatureConfig(input_size=32, widths=(8, 16), squeeze=8, feature_dim=16))


def evaluator(extractor, cache_dir=None, resolution=32, n=N, **kw) -> FidEvaluator:
    kw = {"kid_subset_size": 100, "kid_subsets": 10, **kw}
    return FidEvaluator(
        extractor, SyntheticReference(seed=REF_SEED, num_images=n, resolution=resolution), cache_dir=cache_dir, **kw
    )


@pytest.fixture(scope="module")
def trained():
    return load_domain_features()


@pytest.mark.parametrize("resolution", [32, 64])
def test_scores_rank_real_below_corrupted(trained, resolution):
    ev = evaluator(trained, resolution=resolution)
    same = render_scenes(REF_SEED, 0, N, resolution)
    other = render_scenes(OTHER_SEED, 0, N, resolution)
    g = torch.Generator().manual_seed(0)
    noisy = (other.float() + 25 * torch.randn(other.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    noise = torch.randint(0, 256, other.shape, generator=g, dtype=torch.uint8)
    scores = {
        name: ev.evaluate(x)
        for name, x in [
            ("same", same),
            ("other", other),
            ("swap", other[:, [2, 0, 1]]),
            ("noisy", noisy),
            ("noise", noise),
        ]
    }
    fid = {k: v["domain_fid"] for k, v in scores.items()}
    kid = {k: v["domain_kid_mean"] for k, v in scores.items()}
    assert abs(fid["same"]) < 1e-3 * fid["other"]  # another sample of the same world: small, not zero
    # With 200 images in 288 dimensions FID's finite-sample bias is large ("other" ~26); KID is unbiased, ~0 for
    # both "same" and "other", either sign. An FID that ignored its input would score the corruptions like "other".
    kid_noise_floor = max(abs(kid["same"]), abs(kid["other"]))
    for bad in ("swap", "noisy"):
        assert fid[bad] > 1.8 * fid["other"], fid
        assert kid[bad] > 3 * kid_noise_floor, kid
    assert fid["noise"] > 3 * max(fid["swap"], fid["noisy"]) and kid["noise"] > 100 * kid_noise_floor


def test_input_forms_agree():
    ev = evaluator(tiny_net())
    u8 = render_scenes(OTHER_SEED, 0, N, 32)
    expected = ev.evaluate(u8)
    assert set(expected) == {"domain_fid", "domain_kid_mean", "domain_kid_std"}
    assert expected["domain_fid"] > 0
    as_float = u8.float() / 127.5 - 1
    forms = [
        (u8.permute(0, 2, 3, 1).numpy(), {}),  # uint8 [N, H, W, 3] array
        (as_float, {}),  # [-1, 1] floats, the stages' output
        (u8.float() / 255, {"value_range": (0.0, 1.0)}),
        ([u8[:70], u8[70:]], {}),  # batches
        ((b for b in torch.split(as_float, 64)), {}),
    ]
    for images, kw in forms:
        assert ev.evaluate(images, **kw) == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert ev.reference_computations == 1


def test_kid_is_repeatable_and_leaves_global_rng_alone():
    ev = evaluator(tiny_net())
    x = render_scenes(OTHER_SEED, 0, N, 32)
    torch.manual_seed(123)
    first = ev.evaluate(x)
    after = torch.rand(1)
    torch.manual_seed(123)
    assert ev.evaluate(x) == first
    assert torch.equal(torch.rand(1), after)


def test_reference_features_cached_on_disk_and_reused(tmp_path):
    net = tiny_net()
    a = evaluator(net, cache_dir=tmp_path)
    ref = a.reference_features()
    assert a.reference_computations == 1 and ref.shape == (N, net.num_features)
    (path,) = tmp_path.glob("*.safetensors")
    mtime = path.stat().st_mtime_ns
    b = evaluator(net, cache_dir=tmp_path)
    assert torch.equal(b.reference_features(), ref)
    assert b.reference_computations == 0 and path.stat().st_mtime_ns == mtime
    b.evaluate(render_scenes(OTHER_SEED, 0, N, 32))
    assert b.reference_computations == 0

    # another extractor, reference set or resolution is another cache entry
    for other in (
        evaluator(tiny_net(seed=1), cache_dir=tmp_path),
        evaluator(net, cache_dir=tmp_path, n=N + 1),
        evaluator(net, cache_dir=tmp_path, resolution=16),
    ):
        other.reference_features()
        assert other.reference_computations == 1
    assert len(list(tmp_path.glob("*.safetensors"))) == 4


def test_mismatched_or_broken_cache_is_recomputed(tmp_path):
    net = tiny_net()
    good = evaluator(net, cache_dir=tmp_path)
    ref = good.reference_features()
    path = good.cache_path(good.cache_key())
    foreign = evaluator(tiny_net(seed=1), cache_dir=tmp_path)
    foreign.reference_features()
    foreign_path = foreign.cache_path(foreign.cache_key())

    path.write_bytes(foreign_path.read_bytes())  # a file at the right place holding another key's features
    ev = evaluator(net, cache_dir=tmp_path)
    with pytest.warns(UserWarning, match="does not match"):
        assert torch.equal(ev.reference_features(), ref)
    assert ev.reference_computations == 1
    assert evaluator(net, cache_dir=tmp_path).cache_key() == good.cache_key()
    fresh = evaluator(net, cache_dir=tmp_path)
    fresh.reference_features()
    assert fresh.reference_computations == 0  # the rewritten file is used again

    path.write_bytes(path.read_bytes()[:100])  # truncated
    ev = evaluator(net, cache_dir=tmp_path)
    with pytest.warns(UserWarning, match="unreadable"):
        assert torch.equal(ev.reference_features(), ref)
    assert ev.reference_computations == 1


def test_changed_renders_invalidate_the_cache(tmp_path, monkeypatch):
    net = tiny_net()
    evaluator(net, cache_dir=tmp_path).reference_features()
    original = fid_module.render_scenes
    monkeypatch.setattr(fid_module, "render_scenes", lambda *a: 255 - original(*a))  # "the renderer changed"
    ev = evaluator(net, cache_dir=tmp_path)
    ev.reference_features()
    assert ev.reference_computations == 1


def test_bad_input_raises_clear_errors():
    ev = evaluator(tiny_net())
    x = render_scenes(OTHER_SEED, 0, N, 32)
    bad = [
        (x.permute(0, 2, 3, 1), r"\[N, 3, H, W\]"),  # channels-last tensor
        (x[0], r"\[N, 3, H, W\]"),  # one image, no batch
        (x.int(), "uint8 or floating point"),
        (x.permute(0, 2, 3, 1).numpy().astype(np.float32), "uint8 \\[N, H, W, 3\\]"),
        (x.float(), "far outside value_range"),  # [0, 255] floats taken as [-1, 1]
        (torch.full((N, 3, 32, 32), float("nan")), "NaN"),
        (render_scenes(OTHER_SEED, 0, N, 16), "reference set is 32x32"),
        (x[:99], "fewer than kid_subset_size=100"),
        ([], "no images"),
        ("images.png", "torch.Tensor or a numpy array"),
    ]
    for images, match in bad:
        with pytest.raises(ValueError, match=match):
            ev.evaluate(images)
    with pytest.raises(ValueError, match="value_range"):
        ev.evaluate(x.float() / 255, value_range=(1.0, 0.0))
    with pytest.raises(ValueError, match="kid_subset_size"):
        evaluator(tiny_net(), n=50)


def test_metric_names_say_which_network(monkeypatch):
    assert evaluator(tiny_net()).metric_names == ("domain_fid", "domain_kid_mean", "domain_kid_std")

    class StubInception(torch.nn.Module):  # stands in for Inception-v3 (no weights here)
        kind, num_features = "inception", 4

        def forward(self, images):
            return images.float().mean((2, 3)).repeat(1, 2)[:, :4]  # [N, 3] -> [N, 4]

        def fingerprint(self):
            return "stub"

    ev = evaluator(StubInception())
    assert set(ev.evaluate(render_scenes(OTHER_SEED, 0, N, 32))) == {"fid", "kid_mean", "kid_std"}


def test_inception_needs_local_weights(tmp_path):
    with pytest.raises(ValueError, match=INCEPTION_WEIGHTS_KEY):
        build_feature_extractor("inception")
    with pytest.raises(FileNotFoundError, match=INCEPTION_WEIGHTS_KEY):
        build_feature_extractor("inception", inception_weights=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=INCEPTION_WEIGHTS_KEY):
        build_fid_evaluator({"feature": "inception", "reference": {"num_images": 1000}})
    with pytest.raises(ValueError, match="unknown feature extractor"):
        build_feature_extractor("clip")


def test_domain_net_is_a_torchmetrics_feature_module():
    net = tiny_net()
    x = render_scenes(REF_SEED, 0, 8, 64)
    assert net(x).shape == (8, net.num_features)
    assert torch.allclose(net(x), net(x.float() / 255))  # uint8, or floats in [0, 1]
    assert net(render_scenes(REF_SEED, 0, 8, 32)).shape == (8, net.num_features)  # any resolution
    metric = FrechetInceptionDistance(feature=net)
    metric.update(x, real=True)
    metric.update(x.flip(-1), real=False)
    assert metric.compute() > 0


def test_weights_round_trip_and_packaged_sidecar(tmp_path):
    net = tiny_net()
    info = save_domain_features(net, tmp_path / "w.safetensors")
    loaded = load_domain_features(tmp_path / "w.safetensors")
    assert loaded.config == net.config and loaded.fingerprint() == net.fingerprint() == info["fingerprint"]
    (tmp_path / "junk.safetensors").write_bytes(b"not weights")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_domain_features(tmp_path / "junk.safetensors")

    sidecar = resources.files("imagen_lit.eval").joinpath(PACKAGED_WEIGHTS.replace(".safetensors", ".json"))
    meta = json.loads(sidecar.read_text())
    assert load_domain_features().fingerprint() == meta["fingerprint"]
