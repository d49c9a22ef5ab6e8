import torch
from torch import nn

from imagen_lit.models import EMA


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
