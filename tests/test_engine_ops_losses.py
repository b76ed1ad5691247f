"""Per-operation rules for the loss kernels beyond NLL / MSE / BCE-with-logits (BCE on
probabilities, Huber, smooth L1, soft margin, multi-class margin) against the definition
computed by brute force for that one operation; and the losses torch builds from primitive
operations (L1, KL divergence, Poisson NLL, cosine embedding, ...) as whole graphs against the
graph oracle."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import hesscale
from tests.engine_checks import check_graph, check_op


def r(*shape, low=None):
    t = torch.randn(*shape, dtype=torch.float64)
    return t if low is None else t.abs() + low


def probs(*shape):
    return torch.rand(*shape, dtype=torch.float64) * 0.8 + 0.1


def signs(*shape):
    return torch.randint(0, 2, shape).to(torch.float64) * 2 - 1


WEIGHT = torch.rand(4, dtype=torch.float64) + 0.5
CLASSES = torch.tensor([0, 3, 1])

# (id, fn, inputs, grad): fn(*inputs) records one node; grad says which inputs require grad
CASES = [
    ("huber", lambda x, y: F.huber_loss(x, y, delta=0.7), (r(3, 4), r(3, 4)), None),
    ("huber-sum", lambda x, y: F.huber_loss(x, y, reduction="sum", delta=1.5),
     (r(3, 4), r(3, 4)), None),
    ("huber-none", lambda x, y: F.huber_loss(x, y, reduction="none"), (r(3, 4), r(3, 4)), None),
    ("huber-broadcast-target", lambda x, y: F.huber_loss(x, y.expand(3, 4)),
     (r(3, 4), r(4)), (True, False)),
    ("smooth-l1", lambda x, y: F.smooth_l1_loss(x, y, beta=0.7), (r(3, 4), r(3, 4)), None),
    ("smooth-l1-none", lambda x, y: F.smooth_l1_loss(x, y, reduction="none", beta=2.0),
     (r(3, 4), r(3, 4)), None),
    ("smooth-l1-beta-0", lambda x, y: torch.ops.aten.smooth_l1_loss(x, y, 2, 0.0),
     (r(3, 4), r(3, 4)), None),
    ("soft-margin", F.soft_margin_loss, (r(3, 4), signs(3, 4)), (True, False)),
    ("soft-margin-none", lambda x, y: F.soft_margin_loss(x, y, reduction="none"),
     (r(3, 4), r(3, 4)), (True, False)),
]  # fmt: skip


@pytest.mark.parametrize("fn, inputs, grad", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule_matches_definition(fn, inputs, grad):
    check_op(fn, *inputs, grad=grad)


def bce_definition(p, y, weight=None, reduction="mean"):
    """Binary cross-entropy written out: torch's own double backward of the kernel adds 1e-12
    to p and 1 - p, which moves it by ~1e-10."""
    loss = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
    loss = loss if weight is None else loss * weight
    return {"mean": loss.mean, "sum": loss.sum, "none": lambda: loss}[reduction]()


def multi_margin_definition(x, target, p=1, margin=1.0, weight=None, reduction="mean"):
    """Multi-class hinge loss written out (torch does not differentiate its kernel twice)."""
    scores = x if x.dim() == 2 else x.unsqueeze(0)
    target = target.reshape(-1, 1)
    hinge = (margin - scores.gather(1, target) + scores).clamp(min=0) ** p
    hinge = hinge.masked_fill(torch.zeros_like(hinge, dtype=bool).scatter(1, target, True), 0)
    if weight is not None:
        hinge = hinge * weight[target]
    loss = hinge.sum(1) / scores.shape[1]
    return {"mean": loss.mean, "sum": loss.sum, "none": lambda: loss}[reduction]()


# (id, fn, definition, inputs, grad): kernels checked against the definition written out
WRITTEN_OUT = [
    ("bce", F.binary_cross_entropy, bce_definition, (probs(3, 4), probs(3, 4)), None),
    ("bce-weight-sum",
     lambda p, y: F.binary_cross_entropy(p, y, weight=WEIGHT, reduction="sum"),
     lambda p, y: bce_definition(p, y, WEIGHT, "sum"), (probs(3, 4), probs(3, 4)), None),
    ("bce-none", lambda p, y: F.binary_cross_entropy(p, y, reduction="none"),
     lambda p, y: bce_definition(p, y, reduction="none"), (probs(3, 4), probs(3, 4)), None),
    ("bce-hard-targets", F.binary_cross_entropy, bce_definition,
     (probs(3, 4), signs(3, 4).clamp(min=0)), (True, False)),
    ("multi-margin", lambda x: F.multi_margin_loss(x, CLASSES),
     lambda x: multi_margin_definition(x, CLASSES), (r(3, 4),), None),
    ("multi-margin-p2-weight",
     lambda x: F.multi_margin_loss(x, CLASSES, p=2, margin=0.5, weight=WEIGHT, reduction="sum"),
     lambda x: multi_margin_definition(x, CLASSES, 2, 0.5, WEIGHT, "sum"), (r(3, 4),), None),
    ("multi-margin-none", lambda x: F.multi_margin_loss(x, CLASSES, p=2, reduction="none"),
     lambda x: multi_margin_definition(x, CLASSES, 2, reduction="none"), (r(3, 4),), None),
    ("multi-margin-unbatched", lambda x: F.multi_margin_loss(x, torch.tensor(2), p=2),
     lambda x: multi_margin_definition(x, torch.tensor(2), 2), (r(4),), None),
]  # fmt: skip


@pytest.mark.parametrize(
    "fn, definition, inputs, grad", [c[1:] for c in WRITTEN_OUT], ids=[c[0] for c in WRITTEN_OUT]
)
def test_rule_matches_definition_written_out(fn, definition, inputs, grad):
    check_op(fn, *inputs, grad=grad, definition=definition)


COVERED_ELSEWHERE = {
    "BinaryCrossEntropyBackward0":
        "test_engine_ops_losses.py::test_rule_matches_definition_written_out[bce]",
    "MultiMarginLossBackward0":
        "test_engine_ops_losses.py::test_rule_matches_definition_written_out[multi-margin]",
}  # fmt: skip


# losses torch builds from primitive operations, at the top of a small network ----------------


def net(p, x):
    return F.linear(torch.tanh(F.linear(x, p["w0"], p["b0"])), p["w1"], p["b1"])


def params():
    return {"w0": r(5, 3) / 2, "b0": r(5) / 4, "w1": r(4, 5) / 2, "b1": r(4) / 4}


def l1(p, x, y):
    out = net(p, x)
    return F.l1_loss(out, y), (out,)


def kl_div(p, x, y):
    out = net(p, x)
    return F.kl_div(F.log_softmax(out, 1), y.softmax(1), reduction="batchmean"), (out,)


def kl_div_log_target(p, x, y):
    out = net(p, x)
    loss = F.kl_div(F.log_softmax(out, 1), y.log_softmax(1), reduction="sum", log_target=True)
    return loss, (out,)


def poisson_nll(p, x, y):
    out = net(p, x)
    return F.poisson_nll_loss(out, y.abs()), (out,)


def poisson_nll_rates(p, x, y):
    out = net(p, x).exp()
    return F.poisson_nll_loss(out, y.abs(), log_input=False, full=True), (out,)


def cosine_embedding(p, x, y):
    out = net(p, x)
    return F.cosine_embedding_loss(out, y, torch.tensor([1.0, -1.0, 1.0, -1.0])), (out,)


def multilabel_soft_margin(p, x, y):
    out = net(p, x)
    return F.multilabel_soft_margin_loss(out, (y > 0).to(out.dtype)), (out,)


def hinge_embedding(p, x, y):
    out = net(p, x)
    return F.hinge_embedding_loss(out, y.sign(), margin=2.0), (out,)


def margin_ranking(p, x, y):
    out = net(p, x)
    return F.margin_ranking_loss(out[:, 0], out[:, 1], y[:, 0].sign(), margin=0.5), (out,)


def triplet_margin(p, x, y):
    out = net(p, x)
    return F.triplet_margin_loss(out, y, y.flip(0), margin=3.0), (out,)


def cross_entropy_probability_targets(p, x, y):
    out = net(p, x)
    return F.cross_entropy(out, y.softmax(1), label_smoothing=0.2), (out,)


def bce_probabilities(p, x, y):
    out = torch.sigmoid(net(p, x))  # the loss's input is the network output
    return F.binary_cross_entropy(out, (y > 0).to(out.dtype)), (out,)


def huber_sum(p, x, y):
    out = net(p, x)
    return F.huber_loss(out, y, reduction="sum", delta=0.5), (out,)


GRAPHS = {
    "l1": l1,
    "kl-div": kl_div,
    "kl-div-log-target": kl_div_log_target,
    "poisson-nll": poisson_nll,
    "poisson-nll-rates": poisson_nll_rates,
    "cosine-embedding": cosine_embedding,
    "multilabel-soft-margin": multilabel_soft_margin,
    "hinge-embedding": hinge_embedding,
    "margin-ranking": margin_ranking,
    "triplet-margin": triplet_margin,
    "cross-entropy-probability-targets": cross_entropy_probability_targets,
    "bce-probabilities": bce_probabilities,
    "huber-sum": huber_sum,
}


@pytest.mark.parametrize("name", GRAPHS)
def test_loss_graph_matches_oracle(name):
    """Both variants, HesScaleGN with the network output named (the loss may not be one the
    engine recognises), against the oracle."""
    torch.manual_seed(0)
    check_graph(GRAPHS[name], params(), r(4, 3), r(4, 4), name_output=True)


RECOGNIZED = ["l1", "kl-div", "kl-div-log-target", "bce-probabilities", "huber-sum"]


@pytest.mark.parametrize("name", RECOGNIZED)
def test_hesscale_gn_finds_the_network_output_of_these_losses(name):
    torch.manual_seed(0)
    check_graph(GRAPHS[name], params(), r(4, 3), r(4, 4), variants=("hesscale_gn",))


@pytest.mark.parametrize("name", ["poisson-nll", "cosine-embedding"])
def test_hesscale_gn_asks_for_the_output_of_losses_it_does_not_recognize(name):
    p = {k: v.requires_grad_(True) for k, v in params().items()}
    loss, _ = GRAPHS[name](p, r(4, 3), r(4, 4))
    with pytest.raises(hesscale.HesScaleError, match="output="):
        hesscale.backward(loss, gn=True)
