"""EWC with HesScaleGN importances: the importances, the penalty and its curvature."""

import pytest
import torch
from torch import nn

import hesscale
from hesscale.integrations.continual import EWC

LOSS = nn.CrossEntropyLoss(reduction="sum")


def setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    g = torch.Generator().manual_seed(1)
    data = [
        (torch.randn(6, 4, generator=g), torch.randint(0, 3, (6,), generator=g)) for _ in range(3)
    ]
    return model, data


def test_importances_anchor_and_penalty_by_hand(float64):
    model, data = setup()
    ewc = EWC(model, strength=3.0)
    assert ewc.penalty().item() == 0.0
    ewc.consolidate(data, LOSS)
    expected = hesscale.diagonal(model, data, LOSS, gn=True, progress=False)
    for name, p in model.named_parameters():
        torch.testing.assert_close(ewc.importance[name], expected[name] / 18)
        assert torch.equal(ewc.anchor[name], p.detach())
    assert ewc.penalty().item() == 0.0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    by_hand = 1.5 * sum(
        (ewc.importance[n] * (p - ewc.anchor[n]) ** 2).sum() for n, p in model.named_parameters()
    )
    torch.testing.assert_close(ewc.penalty(), by_hand)


def test_the_penalty_has_the_importances_as_curvature(float64):
    model, data = setup()
    ewc = EWC(model, strength=2.0)
    ewc.consolidate(data, LOSS, per_example=False)
    with torch.no_grad():
        model[0].weight.add_(0.5)
    model.zero_grad()
    hesscale.backward(ewc.penalty())  # a quadratic: HesScale is exact
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.hesscale, 2.0 * ewc.importance[name])
        torch.testing.assert_close(p.grad, 2.0 * ewc.importance[name] * (p - ewc.anchor[name]))
    # beside a loss, with HesScaleGN: name the network output; the penalty keeps its curvature
    x, y = data[0]
    model.zero_grad()
    out = model(x)
    hesscale.backward(LOSS(out, y) + ewc.penalty(), gn=True, output=out)
    loss_only = hesscale.diagonal(model, data[:1], LOSS, progress=False)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.hesscale_gn, loss_only[name] + 2.0 * ewc.importance[name])


def test_online_accumulation_over_tasks(float64):
    model, data = setup()
    ewc = EWC(model, decay=0.5)
    ewc.consolidate(data[:1], LOSS)
    first = {n: f.clone() for n, f in ewc.importance.items()}
    with torch.no_grad():
        model[2].bias.add_(1.0)
    ewc.consolidate(data[1:], LOSS)
    new = hesscale.diagonal(model, data[1:], LOSS, progress=False)
    for name, p in model.named_parameters():
        torch.testing.assert_close(ewc.importance[name], 0.5 * first[name] + new[name] / 12)
        assert torch.equal(ewc.anchor[name], p.detach())


def test_bad_options():
    model, data = setup()
    with pytest.raises(ValueError, match="strength"):
        EWC(model, strength=-1)
    with pytest.raises(ValueError, match="decay"):
        EWC(model, decay=2)
    with pytest.raises(ValueError, match="reduction='mean'"):
        EWC(model).consolidate(data, nn.CrossEntropyLoss())
