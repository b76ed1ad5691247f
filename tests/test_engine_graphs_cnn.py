"""Convolutional networks, normalisation layers and embeddings through hesscale.backward
against the graph oracle (the definition evaluated operation by operation by brute force),
and torchvision's ResNet-18 as it is."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

import hesscale
from tests.engine_checks import check_graph, node_names
from tests.engine_oracle import GraphOracle
from tests.oracle import assert_close, exact_loss_diag

pytestmark = [
    pytest.mark.usefixtures("float64"),
    pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel:UserWarning"),
]


def module_loss(model: nn.Module, loss=F.cross_entropy):
    """(loss_fn, params) for check_graph: the model called with the given parameters (its
    buffers copied per call, so that BatchNorm's running statistics are the same in every
    run), the loss of its output."""
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}

    def loss_fn(params, x, y):
        copies = {n: b.clone() for n, b in buffers.items()}
        out = torch.func.functional_call(model, {**params, **copies}, (x,))
        return loss(out, y), (out,)

    return loss_fn, {n: p.detach().clone() for n, p in model.named_parameters()}


def randomise_batch_norms(model: nn.Module) -> nn.Module:
    """Running statistics and affine parameters away from their initial 0 / 1."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):
            if m.running_mean is not None:
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
            if m.affine:
                nn.init.uniform_(m.weight, 0.5, 1.5)
                nn.init.uniform_(m.bias, -0.5, 0.5)
    return model


def no_running_stats(model: nn.Module) -> nn.Module:
    """BatchNorm layers with track_running_stats=False."""
    for name, m in model.named_children():
        if isinstance(m, nn.BatchNorm2d):
            setattr(model, name, nn.BatchNorm2d(m.num_features, track_running_stats=False))
    return model


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d((2, 1)),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


class SmallResNet(nn.Module):
    """torchvision's ResNet layout (stem, max pool, BasicBlocks with in-place ReLU and a
    downsampling shortcut, global average pool, linear) with few channels."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(inplace=True)
        )
        self.pool = nn.MaxPool2d(3, 2, 1)
        shortcut = nn.Sequential(nn.Conv2d(4, 6, 1, stride=2, bias=False), nn.BatchNorm2d(6))
        self.blocks = nn.Sequential(BasicBlock(4, 4), BasicBlock(4, 6, 2, shortcut))
        self.head = nn.Linear(6, classes)

    def forward(self, x):
        x = self.blocks(self.pool(self.stem(x)))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def group_norm_cnn():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.SiLU(),
        nn.Conv2d(4, 4, 2),
        nn.GroupNorm(4, 4, affine=False),
        nn.Tanh(),
        nn.Flatten(),
        nn.LazyLinear(3),
    )


def layer_norm_cnn():
    return nn.Sequential(
        nn.Conv2d(2, 3, 2),
        nn.LayerNorm((3, 3, 3)),
        nn.GELU(),
        nn.Conv2d(3, 2, 2),
        nn.LayerNorm(2, bias=False),
        nn.Sigmoid(),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def instance_norm_cnn():
    """InstanceNorm records view -> batch norm with the batch folded into channels -> view
    (and repeats of its affine parameters)."""
    return nn.Sequential(
        nn.Conv1d(2, 3, 3, padding=1),
        nn.InstanceNorm1d(3, affine=True),
        nn.Tanh(),
        nn.Conv1d(3, 2, 3),
        nn.InstanceNorm1d(2),
        nn.Flatten(),
        nn.Linear(6, 3),
    )


def batch_norm_mlp():
    return nn.Sequential(
        nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 4), nn.BatchNorm1d(4),
        nn.ReLU(), nn.Linear(4, 3),
    )  # fmt: skip


def resampling_cnn():
    """Padding modes other than zeros, 'same' padding with an even kernel, a transposed
    convolution, nearest upsampling, a pixel shuffle, 1-d pools."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect"),
        nn.Tanh(),
        nn.Conv2d(4, 4, 2, padding="same", padding_mode="replicate"),
        nn.PixelShuffle(2),
        nn.Softplus(),
        nn.Conv2d(1, 2, 2, padding="same"),
        nn.Upsample(scale_factor=(1, 2)),
        nn.ConvTranspose2d(2, 2, 2, stride=2),
        nn.Sigmoid(),
        nn.Flatten(2),
        nn.MaxPool1d(3, 2, 1),
        nn.AvgPool1d(2, ceil_mode=True),
        nn.Flatten(),
        nn.LazyLinear(3),
    )


def labels(n):
    return torch.randint(0, 3, (n,))


# name: (model, input shape without the batch)
NETWORKS = {
    "cnn-batchnorm-train": (lambda: small_cnn().train(), (2, 6, 6)),
    "cnn-batchnorm-eval": (lambda: randomise_batch_norms(small_cnn()).eval(), (2, 6, 6)),
    "cnn-batchnorm-no-running-stats-eval": (  # eval mode, yet batch statistics
        lambda: no_running_stats(small_cnn()).eval(),
        (2, 6, 6),
    ),
    "resnet-blocks-train": (lambda: SmallResNet().train(), (3, 6, 6)),
    "resnet-blocks-eval": (lambda: randomise_batch_norms(SmallResNet()).eval(), (3, 6, 6)),
    "cnn-groupnorm": (group_norm_cnn, (2, 4, 4)),
    "cnn-layernorm": (layer_norm_cnn, (2, 4, 4)),
    "cnn-instancenorm": (instance_norm_cnn, (2, 5)),
    "mlp-batchnorm-train": (lambda: batch_norm_mlp().train(), (3,)),
    "cnn-resampling": (resampling_cnn, (2, 3, 2)),
}


@pytest.mark.parametrize(
    "name, batch",
    # (BatchNorm1d in train mode needs more than one value per channel)
    [(n, b) for n in NETWORKS for b in (1, 2) if (n, b) != ("mlp-batchnorm-train", 1)],
)
def test_network_matches_oracle(name, batch):
    make, shape = NETWORKS[name]
    torch.manual_seed(batch)
    model = make()
    x = torch.randn(batch, *shape)
    model(x)  # initialises lazy layers
    check_graph(*module_loss(model), x, labels(batch))


def circular_pad(x, pad):
    """Circular padding (F.pad's order of dims) as a concatenation of slices."""
    for i in range(len(pad) // 2):
        dim, before, after = x.dim() - 1 - i, pad[2 * i], pad[2 * i + 1]
        size = x.shape[dim]
        x = torch.cat([x.narrow(dim, size - before, before), x, x.narrow(dim, 0, after)], dim)
    return x


def circular_cnn(p, x, y, pad=lambda t, padding: F.pad(t, padding, mode="circular")):
    h = torch.tanh(F.conv2d(pad(x, (1, 1, 2, 0)), p["w0"], p["b0"]))
    out = F.conv1d(pad(h.flatten(2), (2, 1)), p["w1"]).mean(2)
    return F.cross_entropy(out, y), (out,)


@pytest.mark.parametrize("batch", [1, 2])
def test_circular_padding_matches_oracle(batch):
    """torch pads circularly by copying slices into an empty tensor (CopySlices nodes), which
    the oracle's trace cannot evaluate; it evaluates the same function with the padding as a
    concatenation of the slices: each output entry one copied input entry either way (a 0/1
    Jacobian, which composes to the same one)."""
    torch.manual_seed(batch)
    params = {"w0": torch.randn(3, 2, 3, 2), "b0": torch.randn(3), "w1": torch.randn(3, 3, 4)}
    x, y = torch.randn(batch, 2, 3, 4), labels(batch)
    assert "torch::autograd::CopySlices" in node_names(
        lambda: circular_cnn({n: p.requires_grad_() for n, p in params.items()}, x, y)[0]
    )
    leaves = {n: p.detach().clone().requires_grad_() for n, p in params.items()}
    hesscale.backward(circular_cnn(leaves, x, y)[0], gn="both")
    names = list(params)

    def fn(*tensors):
        loss, outputs = circular_cnn(dict(zip(names, tensors, strict=True)), x, y, circular_pad)
        return (loss, *outputs)

    oracle = GraphOracle(fn, [params[n].detach() for n in names])
    for variant in ("hesscale", "hesscale_gn"):
        expected, gradients = oracle.diagonals(gn=variant == "hesscale_gn")
        for name, h, grad in zip(names, expected, gradients, strict=True):
            assert_close(leaves[name].grad, grad)
            assert_close(getattr(leaves[name], variant), h)


def slice_assignment(p, x, y):
    """Copies into slices of a tensor (x[...] = y, broadcast and from another dtype)."""
    h = torch.tanh(F.linear(x, p["w0"]))
    out = torch.zeros(x.shape[0], 5)
    out[:, 1:4] = h
    out[:, 0] = h[:, 1:2].float().sum(1)
    out[:, 3:] = torch.sigmoid(p["b0"])  # overwrites one entry written before
    return F.cross_entropy(out, y), (out,)


@pytest.mark.parametrize("batch", [1, 3])
def test_slice_assignment_matches_oracle(batch):
    torch.manual_seed(batch)
    check_graph(slice_assignment, {"w0": torch.randn(3, 4), "b0": torch.randn(2)},
                torch.randn(batch, 4), torch.randint(0, 5, (batch,)), rtol=1e-6)  # fmt: skip


def test_resnet_blocks_record_what_resnet18_records():
    """The small residual network exercises every node torchvision's ResNet-18 records."""
    small = node_names(lambda: SmallResNet()(torch.randn(2, 3, 6, 6)).sum())
    resnet = node_names(lambda: torchvision.models.resnet18()(torch.randn(2, 3, 32, 32)).sum())
    assert resnet <= small


class Tokens(nn.Module):
    """Token embeddings (with a padding token), averaged over positions, and a linear head."""

    def __init__(self, sparse: bool = False, scale_grad_by_freq: bool = False) -> None:
        super().__init__()
        self.embedding = nn.Embedding(7, 4, padding_idx=0, sparse=sparse,
                                      scale_grad_by_freq=scale_grad_by_freq)  # fmt: skip
        self.head = nn.Linear(4, 3)

    def forward(self, tokens):
        return self.head(torch.tanh(self.embedding(tokens).mean(1)))


TOKENS = torch.tensor([[1, 3, 3, 0], [5, 1, 0, 0], [2, 2, 6, 1]])


@pytest.mark.parametrize("scale_grad_by_freq", [False, True])
def test_embedding_network_matches_oracle(scale_grad_by_freq):
    torch.manual_seed(0)
    model = Tokens(scale_grad_by_freq=scale_grad_by_freq)
    check_graph(*module_loss(model), TOKENS, labels(3))


class Bags(nn.Module):
    """An EmbeddingBag over each row of tokens (with a padding token), and a linear head."""

    def __init__(self, mode: str, sparse: bool = False) -> None:
        super().__init__()
        self.bags = nn.EmbeddingBag(7, 4, mode=mode, padding_idx=0, sparse=sparse)
        self.head = nn.Linear(4, 3)

    def forward(self, tokens):
        return self.head(torch.tanh(self.bags(tokens)))


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_network_matches_oracle(mode):
    torch.manual_seed(0)
    check_graph(*module_loss(Bags(mode)), TOKENS, labels(3))


LOOKUPS = {
    "embedding": lambda sparse: Tokens(sparse=sparse),
    "bag-sum": lambda sparse: Bags("sum", sparse=sparse),
    "bag-mean": lambda sparse: Bags("mean", sparse=sparse),  # (max: no sparse gradient)
}


@pytest.mark.parametrize("lookup", LOOKUPS)
def test_sparse_lookup_equals_dense_oracle(lookup):
    """sparse=True changes how the gradient is stored, not the function: the oracle of the
    dense lookup applies (its per-operation Jacobians cannot go through sparse gradients)."""
    torch.manual_seed(0)
    model = LOOKUPS[lookup](True)
    y = labels(3)
    hesscale.backward(F.cross_entropy(model(TOKENS), y), gn="both")
    dense = LOOKUPS[lookup](False)
    dense.load_state_dict(model.state_dict())
    loss_fn, params = module_loss(dense)
    names = list(params)

    def fn(*tensors):
        loss, outputs = loss_fn(dict(zip(names, tensors, strict=True)), TOKENS, y)
        return (loss, *outputs)

    oracle = GraphOracle(fn, [params[n] for n in names])
    for variant in ("hesscale", "hesscale_gn"):
        expected, gradients = oracle.diagonals(gn=variant == "hesscale_gn")
        for p, h, grad in zip(model.parameters(), expected, gradients, strict=True):
            assert_close(p.grad.to_dense(), grad)
            assert_close(getattr(p, variant), h)
    lookup_weight = next(model.parameters())
    assert lookup_weight.hesscale[0].abs().max() == 0  # the padding row
    assert lookup_weight.hesscale.abs().max() > 0


def test_dropout_in_train_mode_matches_oracle_with_its_mask():
    """nn.Dropout in train mode (on the CPU: a multiplication by the scaled mask). The oracle
    redraws random numbers, so it gets the mask the forward pass drew as a constant."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 2), nn.Tanh(), nn.Dropout(0.4), nn.Flatten(),
                          nn.Linear(6, 3))  # fmt: skip
    x, y = torch.randn(2, 2, 3), labels(2)
    with torch.random.fork_rng():
        hesscale.backward(F.cross_entropy(model(x), y), gn="both")
    scaled_mask = F.dropout(torch.ones(2, 3, 2), 0.4)  # the same draw
    assert 0 < (scaled_mask == 0).sum() < scaled_mask.numel()
    fixed = copy.deepcopy(model)
    fixed[2] = MaskBy(scaled_mask)
    loss_fn, params = module_loss(fixed)
    names = list(params)

    def fn(*tensors):
        loss, outputs = loss_fn(dict(zip(names, tensors, strict=True)), x, y)
        return (loss, *outputs)

    oracle = GraphOracle(fn, list(params.values()))
    expected = {}
    for variant in ("hesscale", "hesscale_gn"):
        diagonals, _ = oracle.diagonals(gn=variant == "hesscale_gn")
        expected[variant] = dict(zip(names, diagonals, strict=True))
    for name, p in model.named_parameters():
        assert_close(p.hesscale, expected["hesscale"][name])
        assert_close(p.hesscale_gn, expected["hesscale_gn"][name])


class MaskBy(nn.Module):
    def __init__(self, mask):
        super().__init__()
        self.mask = mask

    def forward(self, x):
        return x * self.mask


def test_relu_cnn_gives_hesscale_equal_to_hesscale_gn():
    """Without curved operations below the loss (ReLU, max pools, BatchNorm in eval mode, i.e.
    affine) the two variants agree; BatchNorm in train mode has its own curvature."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), randomise_batch_norms(nn.BatchNorm2d(3)).eval(),
        nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 3, 2), nn.ReLU(), nn.Flatten(),
        nn.Linear(3, 3),
    )  # fmt: skip
    x, y = torch.randn(4, 2, 4, 4), labels(4)
    hesscale.backward(F.cross_entropy(model(x), y), gn="both")
    for p in model.parameters():
        assert p.hesscale.abs().max() > 0
        assert_close(p.hesscale, p.hesscale_gn)
    model[1].train()
    model.zero_grad()
    hesscale.backward(F.cross_entropy(model(x), y), gn="both")
    assert (model[0].weight.hesscale - model[0].weight.hesscale_gn).abs().max() > 1e-6


def last_layer_exact(model: nn.Module, last: nn.Linear, features, y):
    """The exact Hessian diagonal of the loss w.r.t. the last layer's parameters, given the
    features it receives."""
    out = {}
    for name, p in last.named_parameters():

        def loss_of(q, name=name):
            return F.cross_entropy(torch.func.functional_call(last, {name: q}, (features,)), y)

        out[name] = exact_loss_diag(loss_of, p)
    return out


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_resnet18_as_it_is(mode):
    """torchvision's ResNet-18 (in-place ReLU, BatchNorm in train or eval mode) on two 32x32
    images: hesscale.backward runs, leaves finite diagonals on every parameter, autograd's
    gradients, and the exact Hessian diagonal in the last layer."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    if mode == "eval":
        randomise_batch_norms(model)
    getattr(model, mode)()
    x, y = torch.randn(2, 3, 32, 32), labels(2)
    reference = copy.deepcopy(model)
    features = {}
    model.fc.register_forward_hook(lambda m, inputs, out: features.update(x=inputs[0].detach()))
    hesscale.backward(F.cross_entropy(model(x), y), gn="both")
    F.cross_entropy(reference(x), y).backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=name)
        for variant in ("hesscale", "hesscale_gn"):
            h = getattr(p, variant)
            assert h.shape == p.shape and h.dtype == p.dtype and torch.isfinite(h).all(), name
    assert min(p.hesscale_gn.min() for p in model.parameters()) > -1e-12
    exact = last_layer_exact(model, model.fc, features["x"], y)
    for name, p in model.fc.named_parameters():
        assert_close(p.hesscale, exact[name])
        assert_close(p.hesscale_gn, exact[name])


NORMALIZATIONS = {
    "batchnorm-train": lambda t, p: F.batch_norm(t, None, None, p["w"], p["b"], training=True),
    "layernorm": lambda t, p: F.layer_norm(t, (4,), p["w"], p["b"]),
    "groupnorm": lambda t, p: F.group_norm(t, 2, p["w"], p["b"]),
}


@pytest.mark.parametrize("norm", NORMALIZATIONS)
def test_normalization_under_a_linear_loss(norm):
    """A loss linear in the normalized output: its diagonal there is zero, and only the
    normalisation's own curvature (and the operations' below) reaches the parameters."""
    torch.manual_seed(0)
    params = {"w0": torch.randn(4, 3), "w": torch.randn(4), "b": torch.randn(4)}
    weights = torch.randn(3, 4)

    def loss_fn(p, x):
        out = NORMALIZATIONS[norm](torch.tanh(x @ p["w0"].T), p)
        return (out * weights).sum(), (out,)

    check_graph(loss_fn, params, torch.randn(3, 3), name_output=True)


def test_raft_optical_flow_as_it_is(float32):
    """torchvision's RAFT (small), which looks its correlation pyramid up with grid_sample
    and iterates a convolutional GRU: hesscale.backward runs on two 128x128 frames, gives
    autograd's gradients, finite diagonals and non-negative HesScaleGN ones."""
    torch.manual_seed(0)
    model = torchvision.models.optical_flow.raft_small(weights=None)
    reference = copy.deepcopy(model)
    frames = torch.randn(1, 3, 128, 128), torch.randn(1, 3, 128, 128)
    target_flow = torch.randn(1, 2, 128, 128)

    def loss_of(m):
        return F.mse_loss(m(*frames, num_flow_updates=2)[-1], target_flow)

    assert "GridSampler2DBackward0" in node_names(lambda: loss_of(model))
    hesscale.backward(loss_of(model), gn="both")
    loss_of(reference).backward()
    checked = 0
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        if q.grad is None:
            continue
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)
        assert torch.isfinite(p.hesscale).all() and (p.hesscale_gn >= 0).all(), name
        checked += 1
    assert checked > 50
