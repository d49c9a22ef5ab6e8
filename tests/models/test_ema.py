import copy

import pytest
import torch
from torch import nn

from imagen_lit.models import EMA
from imagen_lit.models.ema import ShardedEMA, gather_sharded_ema


def test_update_is_the_ema_formula():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.9, warmup=False)
    before = [p.clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for e, b, p in zip(ema.module.parameters(), before, model.parameters(), strict=True):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * p)


def test_warmup_decay_and_eval_mode():
    ema = EMA(nn.Linear(2, 2), decay=0.999)
    assert abs(ema.current_decay() - 2 / 11) < 1e-12
    for _ in range(5):
        ema.update(nn.Linear(2, 2))
    assert abs(ema.current_decay() - 7 / 16) < 1e-12
    ema.train()
    assert not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    assert int(ema.state_dict()["num_updates"]) == 5


def _fake_zero3_shards(model: torch.nn.Module, world: int, rank: int) -> torch.nn.Module:
    """Give each parameter the attributes DeepSpeed ZeRO-3 gives it: this rank's slice of the padded flat weight."""
    for p in model.parameters():
        numel = p.numel()
        size = -(-numel // world)
        flat = torch.nn.functional.pad(p.detach().reshape(-1), (0, size * world - numel))  # (world * size,)
        p.ds_tensor = flat[rank * size : (rank + 1) * size].clone()
        p.ds_shape, p.ds_numel = p.shape, numel
    return model


def test_sharded_ema_gathers_to_the_dense_ema():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Conv2d(3, 2, 3))  # numels not multiples of 3
    world = 3
    dense = EMA(model, decay=0.9)
    ranks = [copy.deepcopy(model) for _ in range(world)]
    shards = [ShardedEMA(_fake_zero3_shards(m, world, r), decay=0.9) for r, m in enumerate(ranks)]
    for _ in range(4):  # an optimizer step on every rank's shard, then the EMA updates
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        dense.update(model)
        for r, (m, ema) in enumerate(zip(ranks, shards, strict=True)):
            m.load_state_dict(model.state_dict())
            ema.update(_fake_zero3_shards(m, world, r))
    gathered = gather_sharded_ema([e.state_dict() for e in shards])
    expected = dense.state_dict()
    assert set(gathered) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(gathered[key], value, msg=key)
    with pytest.raises(ValueError, match="missing ranks"):
        gather_sharded_ema([e.state_dict() for e in shards[:1]])


def test_sharded_ema_state_round_trip_and_mismatch():
    model = _fake_zero3_shards(torch.nn.Linear(4, 4), world=2, rank=0)
    ema = ShardedEMA(model, decay=0.5)
    ema.update(model)
    other = ShardedEMA(model, decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 1 and all(torch.equal(a, b) for a, b in zip(other.shadow, ema.shadow, strict=True))
    wider = ShardedEMA(_fake_zero3_shards(torch.nn.Linear(4, 4), world=1, rank=0), decay=0.5)
    with pytest.raises(ValueError, match="world size"):
        wider.load_state_dict(ema.state_dict())
    with pytest.raises(ValueError, match="ZeRO-3"):
        ShardedEMA(torch.nn.Linear(2, 2))
