import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from imagen_lit.checkpoint import read_checkpoint
from imagen_lit.stages.muon import NS_COEFFS, Muon, newton_schulz_flops, orthogonalise, uses_muon
from tests.conftest import TINY, compose_config
from train import train


def direct_newton_schulz(update: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The textbook iteration in float64, written out independently of the module's two paths."""
    a, b, c = NS_COEFFS
    x = update.double()
    if x.shape[0] > x.shape[1]:
        return direct_newton_schulz(update.T, steps).T
    x = x / x.norm()
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x


@pytest.mark.parametrize("shape", [(64, 576), (576, 64), (48, 48), (3, 200)])
def test_orthogonalise_matches_the_direct_iteration(shape):
    torch.manual_seed(0)
    update = torch.randn(*shape) * torch.logspace(0, -2, shape[1])  # an uneven spectrum
    out = orthogonalise(update)
    assert out.shape == update.shape
    torch.testing.assert_close(out.double(), direct_newton_schulz(update), atol=2e-5, rtol=0)


def test_gram_path_is_taken_for_wide_matrices_and_not_for_square_ones():
    direct, gram = newton_schulz_flops(256, 2304)
    assert gram < direct / 2
    direct, gram = newton_schulz_flops(128, 128)
    assert gram > direct


def test_orthogonalise_brings_singular_values_near_one():
    torch.manual_seed(1)
    out = orthogonalise(torch.randn(32, 300) @ torch.diag(torch.logspace(0, -1, 300)))
    singular = torch.linalg.svdvals(out)
    assert singular.min() > 0.6 and singular.max() < 1.25


def test_batched_orthogonalise_equals_one_at_a_time():
    torch.manual_seed(2)
    batch = torch.randn(4, 16, 80)
    stacked = orthogonalise(batch)
    for i in range(4):
        torch.testing.assert_close(stacked[i], orthogonalise(batch[i]), atol=1e-5, rtol=0)


def test_orthogonalise_rejects_a_vector():
    with pytest.raises(ValueError, match="reshape"):
        orthogonalise(torch.randn(10))


def test_uses_muon_leaves_biases_norms_and_rgb_convs_to_adamw():
    assert uses_muon(nn.Conv2d(64, 64, 3).weight, 32)
    assert uses_muon(nn.Linear(384, 128).weight, 32)
    assert not uses_muon(nn.Conv2d(3, 64, 3).weight, 32)  # (64, 27): the input conv
    assert not uses_muon(nn.Conv2d(64, 3, 3).weight, 32)  # (3, 576): the output conv
    assert not uses_muon(nn.Linear(64, 64).bias, 32)


def net() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(8, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 1))


def regression_loss(model: nn.Module) -> torch.Tensor:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(256, 8, generator=gen)
    return ((model(x).squeeze(-1) - x[:, 0] * x[:, 1]) ** 2).mean()


def test_muon_splits_matrices_from_the_rest_and_learns():
    model = net()
    opt = Muon(model.parameters(), lr=3e-3)
    assert [len(g["params"]) for g in opt.param_groups] == [1, 5]  # only the 64x64 hidden weight is a Muon matrix
    start = regression_loss(model).item()
    for _ in range(200):
        opt.zero_grad()
        regression_loss(model).backward()
        opt.step()
    assert regression_loss(model).item() < 0.3 * start


def test_muon_update_has_adamw_rms():
    model = net()
    opt = Muon(model.parameters(), lr=1e-3)
    hidden = model[2].weight
    before = hidden.detach().clone()
    for p in model.parameters():
        p.grad = torch.randn_like(p)  # full rank: every singular value is pushed near one
    opt.step()
    rms = (hidden.detach() - before).pow(2).mean().sqrt().item()
    assert rms == pytest.approx(0.2e-3, rel=0.25)  # 0.2 x lr: AdamW's typical update RMS


def test_muon_resumes_exactly_from_its_state_dict():
    model = net()
    opt = Muon(model.parameters(), lr=3e-3)
    for _ in range(3):
        opt.zero_grad()
        regression_loss(model).backward()
        opt.step()
    clone = copy.deepcopy(model)
    clone_opt = Muon(clone.parameters(), lr=3e-3)
    clone_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    for m, o in ((model, opt), (clone, clone_opt)):
        o.zero_grad()
        regression_loss(m).backward()
        o.step()
    for p, q in zip(model.parameters(), clone.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=0, rtol=0)


def test_muon_errors_name_the_fix():
    with pytest.raises(ValueError, match="min_dim"):
        Muon(nn.Linear(4, 4).parameters())
    with pytest.raises(ValueError, match="flat iterable"):
        Muon([{"params": list(net().parameters())}])
    with pytest.raises(ValueError, match="ns_dtype"):
        Muon(net().parameters(), ns_dtype="float16")


def test_muon_refuses_weights_flattened_under_it():
    model = net()
    opt = Muon(model.parameters())
    hidden = model[2].weight
    hidden.data = hidden.data.reshape(-1)  # what a ZeRO partition hands the wrapped optimizer
    hidden.grad = torch.zeros_like(hidden)
    with pytest.raises(ValueError, match="use AdamW"):
        opt.step()


def test_train_py_trains_and_resumes_with_muon(tmp_path: Path, shared_data_dir: Path):
    """The config switch end to end: the stage's optimizer is Muon, its state is checkpointed and resumed."""
    muon = ["stage.optimizer._target_=imagen_lit.stages.muon.Muon", f"paths.data_dir={shared_data_dir}"]
    train(compose_config("train", tmp_path / "run", TINY + muon + ["trainer.max_steps=2"]))
    state = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    groups = state["optimizer_states"][0]["param_groups"]
    assert [g["use_muon"] for g in groups] == [True, False] and len(groups[0]["params"]) > 0
    resumed = compose_config("train", tmp_path / "resumed", TINY + muon + [
        "trainer.max_steps=4", f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}"])
    train(resumed)
    assert read_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt")["global_step"] == 4


def test_the_other_parameters_step_exactly_as_torch_adamw():
    model, reference = net(), net()
    opt = Muon(model.parameters(), lr=3e-3, weight_decay=0.1)
    others = [p for p in reference.parameters() if not uses_muon(p, 32)]
    ref_opt = torch.optim.AdamW(others, lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1)
    for _ in range(3):
        for m, o in ((model, opt), (reference, ref_opt)):
            o.zero_grad()
            regression_loss(m).backward()
            o.step()
        with torch.no_grad():
            reference[2].weight.copy_(model[2].weight)  # the Muon matrix follows Muon in both
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q)
