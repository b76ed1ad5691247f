"""Loss rules equal the exact Hessian diagonal of the loss w.r.t. its inputs (float64)."""

import pytest
import torch
from torch import nn

from hesscale.rules import losses
from tests.oracle import assert_close, exact_loss_diag

pytestmark = pytest.mark.usefixtures("float64")


CE_CASES = [
    dict(),
    dict(reduction="sum"),
    dict(label_smoothing=0.2),
    dict(weight=torch.tensor([0.5, 2.0, 1.0, 3.0])),
    dict(weight=torch.tensor([0.5, 2.0, 1.0, 3.0]), label_smoothing=0.1),
    dict(ignore_index=2),
    dict(ignore_index=2, label_smoothing=0.3, reduction="sum"),
]


@pytest.mark.parametrize("kwargs", CE_CASES, ids=lambda k: ",".join(k) or "default")
@pytest.mark.parametrize("shape", [(1, 4), (5, 4), (3, 4, 2), (4,)])
def test_cross_entropy_class_targets(kwargs, shape):
    torch.manual_seed(0)
    kwargs = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    logits = torch.randn(shape)
    target_shape = (shape[0],) + shape[2:] if len(shape) > 1 else ()
    target = torch.randint(0, 4, target_shape)
    if "ignore_index" in kwargs and target.numel() > 1:
        target.view(-1)[0] = kwargs["ignore_index"]
        target.view(-1)[-1] = 1
    loss = nn.CrossEntropyLoss(**kwargs)
    rule = losses.cross_entropy_diag(
        logits,
        target,
        kwargs.get("reduction", "mean"),
        kwargs.get("weight"),
        kwargs.get("ignore_index", -100),
        kwargs.get("label_smoothing", 0.0),
    )
    assert_close(rule, exact_loss_diag(lambda o: loss(o, target), logits))


@pytest.mark.parametrize("kwargs", [dict(), dict(label_smoothing=0.25), dict(reduction="sum")])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_probability_targets(kwargs, weighted):
    torch.manual_seed(1)
    logits = torch.randn(3, 5)
    target = torch.softmax(torch.randn(3, 5), 1) * torch.tensor([[1.0], [0.5], [2.0]])
    weight = torch.rand(5) + 0.5 if weighted else None
    loss = nn.CrossEntropyLoss(weight=weight, **kwargs)
    rule = losses.cross_entropy_diag(
        logits,
        target,
        kwargs.get("reduction", "mean"),
        weight,
        label_smoothing=kwargs.get("label_smoothing", 0.0),
    )
    assert_close(rule, exact_loss_diag(lambda o: loss(o, target), logits))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse(reduction):
    x, y = torch.randn(3, 2, 2), torch.randn(3, 2, 2)
    loss = nn.MSELoss(reduction=reduction)
    assert_close(losses.mse_diag(x, reduction), exact_loss_diag(lambda o: loss(o, y), x))


def test_nll_is_linear_so_its_diagonal_is_zero():
    x, y = torch.randn(3, 4), torch.tensor([0, 3, 1])
    expected = exact_loss_diag(lambda o: nn.NLLLoss()(o, y), x)
    assert_close(losses.nll_diag(x), expected)
    assert expected.abs().max() == 0


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("with_weight", [False, True])
@pytest.mark.parametrize("with_pos_weight", [False, True])
def test_bce_with_logits(reduction, with_weight, with_pos_weight):
    torch.manual_seed(2)
    x, y = torch.randn(4, 3), torch.rand(4, 3)
    weight = torch.rand(4, 1) + 0.5 if with_weight else None
    pos_weight = torch.rand(3) + 0.5 if with_pos_weight else None
    loss = nn.BCEWithLogitsLoss(weight=weight, pos_weight=pos_weight, reduction=reduction)
    rule = losses.bce_with_logits_diag(x, y, reduction, weight, pos_weight)
    assert_close(rule, exact_loss_diag(lambda o: loss(o, y), x))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("var_shape", [(4, 3), (4, 1), (4,)])
@pytest.mark.parametrize("full", [False, True])
def test_gaussian_nll_mean_and_variance(reduction, var_shape, full):
    torch.manual_seed(3)
    mean, target = torch.randn(4, 3), torch.randn(4, 3)
    var = torch.rand(var_shape) + 0.1
    var.view(-1)[0] = 1e-9  # below eps: torch clamps it without gradient
    loss = nn.GaussianNLLLoss(full=full, eps=1e-3, reduction=reduction)
    h_mean, h_var = losses.gaussian_nll_diag(mean, target, var, reduction, eps=1e-3)
    assert_close(h_mean, exact_loss_diag(lambda m: loss(m, target, var), mean))
    assert_close(h_var, exact_loss_diag(lambda v: loss(mean, target, v), var))


def test_unknown_reduction_is_an_error():
    with pytest.raises(ValueError, match="reduction='none'.*'mean' or 'sum'"):
        losses.mse_diag(torch.zeros(2), "none")


# --- broadcasting: the loss is over the broadcast shape (torch warns for MSELoss) -------------

BROADCAST_SHAPES = [((2, 1), (2,)), ((2, 1), (2, 3)), ((3,), (2, 3)), ((2, 3), (2, 3))]


@pytest.mark.filterwarnings("ignore:Using a target size:UserWarning")
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("shapes", BROADCAST_SHAPES, ids=str)
def test_mse_with_a_broadcasting_target(reduction, shapes):
    """Each entry collects the curvature of every copy the broadcast makes of it (issue 9:
    Linear(1, 1) on (2, 1) with a (2,) target and reduction='sum' gave 4 instead of 8)."""
    torch.manual_seed(4)
    x, y = torch.randn(shapes[0]), torch.randn(shapes[1])
    loss = nn.MSELoss(reduction=reduction)
    assert_close(losses.mse_diag(x, reduction, y), exact_loss_diag(lambda o: loss(o, y), x))
    assert_close(losses.mse_diag(y, reduction, x), exact_loss_diag(lambda t: loss(x, t), y))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(
    "mean_shape, target_shape, var_shape",
    [((4, 1), (4, 3), (4, 1)), ((4, 3), (2, 4, 3), (4, 3)), ((4, 3), (2, 4, 3), (4, 1))],
)
def test_gaussian_nll_with_a_broadcasting_target(reduction, mean_shape, target_shape, var_shape):
    torch.manual_seed(5)
    mean, target = torch.randn(mean_shape), torch.randn(target_shape)
    var = torch.rand(var_shape) + 0.1
    loss = nn.GaussianNLLLoss(reduction=reduction)
    h_mean, h_var = losses.gaussian_nll_diag(mean, target, var, reduction)
    assert_close(h_mean, exact_loss_diag(lambda m: loss(m, target, var), mean))
    assert_close(h_var, exact_loss_diag(lambda v: loss(mean, target, v), var))


def test_gaussian_nll_with_a_number_as_variance():
    mean, target = torch.randn(4, 3), torch.randn(4, 3)
    loss = nn.GaussianNLLLoss(reduction="sum")
    h_mean, _ = losses.gaussian_nll_diag(mean, target, 0.5, "sum")
    assert_close(h_mean, exact_loss_diag(lambda m: loss(m, target, 0.5), mean))


@pytest.mark.parametrize("weight_shape, pos_weight_shape", [((3,), (4, 1)), ((4, 1), (1, 3))])
def test_bce_with_logits_broadcasting_weights(weight_shape, pos_weight_shape):
    """Torch lets weight and pos_weight broadcast only up to the logits' shape."""
    torch.manual_seed(6)
    x, y = torch.randn(4, 3), torch.rand(4, 3)
    weight, pos_weight = torch.rand(weight_shape) + 0.5, torch.rand(pos_weight_shape) + 0.5
    loss = nn.BCEWithLogitsLoss(weight=weight, pos_weight=pos_weight)
    rule = losses.bce_with_logits_diag(x, y, "mean", weight, pos_weight)
    assert_close(rule, exact_loss_diag(lambda o: loss(o, y), x))


# --- 'mean' over nothing: torch's loss is NaN, its gradients zero; the diagonals are zero -----

EMPTY_CASES = {
    "mse": lambda x: (losses.mse_diag(x, "mean", x),),
    "bce": lambda x: (losses.bce_with_logits_diag(x, torch.rand_like(x)),),
    "ce": lambda x: (losses.cross_entropy_diag(x, torch.zeros(x.shape[0], dtype=torch.long)),),
    "gaussian": lambda x: losses.gaussian_nll_diag(x, torch.randn_like(x), torch.ones_like(x)),
}


@pytest.mark.parametrize("case", EMPTY_CASES)
def test_empty_batch_with_mean_gives_empty_diagonals_without_error(case):
    for h in EMPTY_CASES[case](torch.randn(0, 3)):
        assert h.shape == (0, 3)


def test_cross_entropy_with_every_target_ignored_gives_zero_like_the_gradient():
    logits, target = torch.randn(3, 4, requires_grad=True), torch.full((3,), 2)
    loss = nn.CrossEntropyLoss(ignore_index=2)(logits, target)
    loss.backward()
    assert loss.isnan() and logits.grad.abs().sum() == 0
    h = losses.cross_entropy_diag(logits.detach(), target, "mean", None, 2)
    assert torch.equal(h, torch.zeros_like(h))
