"""OBD saliencies: against the exact Hessian diagonal where HesScale is exact, as
torch.nn.utils.prune importance scores, and as a Torch-Pruning importance (the real library)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.utils import prune

import hesscale
from hesscale.integrations.pruning import OBDImportance, importance_scores, obd_saliency
from tests.oracle import exact_loss_diag

LOSS = nn.CrossEntropyLoss(reduction="sum")


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def batches(shape=(4,), n=2, size=8):
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(size, *shape, generator=g), torch.randint(0, 3, (size,), generator=g))
        for _ in range(n)
    ]


def test_saliency_is_half_the_exact_hessian_diagonal_times_w_squared(float64):
    torch.manual_seed(0)
    model, data = nn.Linear(4, 3), batches()
    saliency = obd_saliency(model, data, LOSS, gn=False)
    exact = exact_loss_diag(
        lambda w: sum(
            F.cross_entropy(functional_call(model, {"weight": w}, (x,)), y, reduction="sum")
            for x, y in data
        ),
        model.weight,
    )
    torch.testing.assert_close(saliency["weight"], 0.5 * exact * model.weight.detach() ** 2)


@pytest.mark.parametrize("gn", [True, False])
def test_global_unstructured_keeps_the_most_salient_weights(gn):
    model, data = mlp(), batches()
    params = [(model[0], "weight"), (model[2], "weight")]
    scores = importance_scores(model, params, data, LOSS, gn=gn)
    h = hesscale.diagonal(model, data, LOSS, gn=gn, progress=False)
    expected = {
        key: 0.5 * h[f"{i}.weight"] * key[0].weight.detach() ** 2
        for key, i in zip(params, (0, 2), strict=True)
    }
    for key in params:
        torch.testing.assert_close(scores[key], expected[key])
    flat = torch.cat([s.abs().flatten() for s in scores.values()])
    threshold = flat.sort().values[len(flat) // 2 - 1]
    prune.global_unstructured(
        params, pruning_method=prune.L1Unstructured, amount=0.5, importance_scores=scores
    )
    masks = torch.cat([m.weight_mask.flatten() for m, _ in params])
    assert masks.sum() == len(flat) - len(flat) // 2
    assert torch.equal(masks.bool(), flat > threshold)
    # a second round on the pruned model: names without _orig, pruned weights score 0
    again = importance_scores(model, params, data, LOSS, gn=gn)
    for module, _ in params:
        assert (again[(module, "weight")][module.weight_mask == 0] == 0).all()


def test_bad_parameters_are_named():
    model, other = mlp(), nn.Linear(2, 2)
    with pytest.raises(ValueError, match="Linear is not in the model"):
        importance_scores(model, [(other, "weight")], batches(), LOSS)
    model[0].weight.requires_grad_(False)
    with pytest.raises(ValueError, match="0.weight is not a parameter"):
        importance_scores(model, [(model[0], "weight")], batches(), LOSS)


@pytest.fixture
def tp():
    """The real Torch-Pruning (these tests skip without it)."""
    return pytest.importorskip("torch_pruning")


def test_torch_pruning_group_saliency_by_hand(tp, float64):
    model, data = mlp(), batches()
    importance = OBDImportance(model, data, LOSS, normalizer=None)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 4))
    group = graph.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=list(range(6)))
    s = obd_saliency(model, data, LOSS)
    rows, columns = s["0.weight"].sum(1), s["2.weight"].sum(0)
    torch.testing.assert_close(importance(group), (rows + columns) / 2)
    summed = OBDImportance(model, data, LOSS, group_reduction="sum", normalizer="max", bias=True)(
        group
    )
    by_hand = rows + s["0.bias"] + columns
    torch.testing.assert_close(summed, by_hand / by_hand.max())


def cnn(groups: int = 2) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, groups=groups),
        nn.ReLU(),
        nn.ConvTranspose2d(8, 4, 2, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 3),
    )


def test_grouped_and_transposed_convolutions_by_hand(tp, float64):
    model, data = cnn(), batches((1, 8, 8))
    importance = OBDImportance(model, data, LOSS, normalizer=None, group_reduction="sum")
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 1, 8, 8))
    s = obd_saliency(model, data, LOSS)
    # out channels of the first conv: its filters, the BN scale, the grouped conv's columns
    group = graph.get_pruning_group(model[0], tp.prune_conv_out_channels, idxs=list(range(6)))
    grouped = s["3.weight"]  # (8, 3, 3, 3), 2 groups: channel 3g + j <- rows 4g..4g+3, col j
    columns = torch.stack([grouped[4 * (c // 3) : 4 * (c // 3) + 4, c % 3].sum() for c in range(6)])
    by_hand = s["0.weight"].sum((1, 2, 3)) + s["1.weight"] + columns
    torch.testing.assert_close(importance(group), by_hand)
    # out channels of the transposed conv: weight (8, 4, 2, 2), its dim 1; the Linear's columns
    group = graph.get_pruning_group(model[5], tp.prune_conv_out_channels, idxs=list(range(4)))
    linear = s["8.weight"].reshape(3, 4, 64).sum((0, 2))
    torch.testing.assert_close(importance(group), s["5.weight"].sum((0, 2, 3)) + linear)


def test_torch_pruning_removes_the_least_salient_channels(tp):
    model, data = cnn(groups=1), batches((1, 8, 8))
    importance = OBDImportance(model, data, LOSS)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 1, 8, 8))
    group = graph.get_pruning_group(model[0], tp.prune_conv_out_channels, idxs=list(range(6)))
    keep = importance(group).argsort(descending=True)[:3].sort().values
    filters = model[0].weight.detach()[keep].clone()
    pruner = tp.pruner.BasePruner(
        model,
        torch.randn(1, 1, 8, 8),
        importance,
        pruning_ratio=0.5,
        ignored_layers=[model[3], model[5], model[8]],
    )
    pruner.step()
    assert model[0].out_channels == 3 and model[3].in_channels == 3
    assert torch.equal(model[0].weight.detach(), filters)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_iterative_pruning_recomputes_on_the_pruned_model(tp, monkeypatch):
    from hesscale.integrations import pruning

    model, data = mlp(), batches()
    seen = []

    def counting(model, *args, **kwargs):
        seen.append(tuple(model[0].weight.shape))
        return obd_saliency(model, *args, **kwargs)

    monkeypatch.setattr(pruning, "obd_saliency", counting)
    importance = OBDImportance(model, data, LOSS)
    pruner = tp.pruner.BasePruner(
        model,
        torch.randn(1, 4),
        importance,
        pruning_ratio=0.5,
        ignored_layers=[model[2]],
        iterative_steps=2,
    )
    pruner.step()
    after_first = tuple(model[0].weight.shape)
    pruner.step()
    assert seen == [(6, 4), after_first] and after_first[0] < 6
    assert model[0].out_features == 3 and model(torch.randn(2, 4)).shape == (2, 3)


def test_bad_options(tp):
    with pytest.raises(ValueError, match="group_reduction='prod'"):
        OBDImportance(mlp(), batches(), LOSS, group_reduction="prod")
    with pytest.raises(ValueError, match="normalizer='lamp'"):
        OBDImportance(mlp(), batches(), LOSS, normalizer="lamp")
