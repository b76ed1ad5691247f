"""hesscale.compile: the traced and compiled step equals eager hesscale.backward (gradients,
diagonals, their accumulation, batch norm's running statistics), retraces for a new
configuration, works inside torch.compile'd models and with the optimizers, and refuses what
it cannot do. The default tests compile the traced graph with the "eager" backend (the same
graph, run op by op); the slow ones with Inductor."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hesscale
from hesscale.errors import HesScaleError, UnsupportedOperationError

FIELDS = {False: ("hesscale",), True: ("hesscale_gn",), "both": ("hesscale", "hesscale_gn")}


def assert_same_results(model, reference, fields, rtol=1e-5):
    """Per parameter and field, the largest difference relative to the largest entry (or to
    1e-3 of the field's largest entry over all parameters, for results that are zero but for
    rounding: the gradient of a bias followed by batch norm)."""
    pairs = list(zip(model.named_parameters(), reference.parameters(), strict=True))
    for field in ("grad", *fields):
        overall = max(getattr(q, field).abs().max().item() for _, q in pairs)
        for (name, p), q in pairs:
            got, want = getattr(p, field), getattr(q, field)
            scale = max(want.abs().max().item(), 1e-3 * overall)
            error = (got - want).abs().max().item() / scale
            assert error <= rtol, f"{name}.{field}: relative error {error:.2e}"
    for b, c in zip(model.buffers(), reference.buffers(), strict=True):
        torch.testing.assert_close(b, c, rtol=rtol, atol=1e-7)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 3))


def small_resnet():
    """Convolutions (without bias before batch norm, as in torchvision's ResNets: that
    gradient is zero but for rounding), batch norm (train mode), ReLU in place, a residual
    sum, pooling."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)

        def forward(self, x):
            return F.relu(x + self.bn(self.conv(x)), inplace=True)

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                         Block(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))  # fmt: skip


def batch(n, shape=(6,)):
    return torch.randn(n, *shape), torch.randint(0, 3, (n,))


def run_both(make_model, gn, batches, backend="eager", compile_model=False):
    """Steps of hesscale.compile and of eager hesscale.backward on copies of one model."""
    model = make_model()
    reference = copy.deepcopy(model)
    inner = torch.compile(model, backend="eager") if compile_model else model

    def fn(x, y):
        return F.cross_entropy(inner(x), y)

    step = hesscale.compile(fn, gn=gn, modules=[model] if compile_model else None,
                            backend=backend)  # fmt: skip
    for x, y in batches:
        loss = step(x, y)
        expected = F.cross_entropy(reference(x), y)
        hesscale.backward(expected, gn=gn)
        torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-6)
        assert_same_results(model, reference, FIELDS[gn])
    return step, model, reference


@pytest.mark.parametrize("gn", [False, True, "both"])
def test_mlp_equals_eager_and_accumulates(gn):
    """Two steps without zero_grad (both accumulate), then after zero_grad (both start over)."""
    step, model, reference = run_both(mlp, gn, [batch(5), batch(5)])
    model.zero_grad()
    reference.zero_grad()
    x, y = batch(5)
    step(x, y)
    hesscale.backward(F.cross_entropy(reference(x), y), gn=gn)
    assert_same_results(model, reference, FIELDS[gn])
    assert step.traces == 1


def test_changing_batch_size_traces_again():
    step, _, _ = run_both(mlp, "both", [batch(5), batch(3), batch(5), batch(1)])
    assert step.traces == 3


def test_train_and_eval_mode_are_traced_apart():
    step, model, reference = run_both(small_resnet, False, [batch(4, (3, 6, 6))])
    model.eval()
    reference.eval()
    x, y = batch(4, (3, 6, 6))
    step(x, y)
    hesscale.backward(F.cross_entropy(reference(x), y))
    assert_same_results(model, reference, ("hesscale",))
    assert step.traces == 2


@pytest.mark.parametrize("gn", [False, True])
def test_resnet_with_batch_norm_in_train_mode(gn):
    """Including the running statistics, which the compiled graph updates in place."""
    _, model, _ = run_both(small_resnet, gn, [batch(4, (3, 6, 6)), batch(4, (3, 6, 6))])
    assert model[1].num_batches_tracked.item() == 2


def test_model_already_wrapped_with_torch_compile():
    run_both(mlp, "both", [batch(5), batch(5)], compile_model=True)


def test_modules_are_found_through_a_compiled_wrapper():
    model = mlp()
    compiled = torch.compile(model, backend="eager")

    def fn(x, y):
        return F.cross_entropy(compiled(x), y)

    step = hesscale.compile(fn, backend="eager")
    assert step.modules == [model]


def test_optimizer_steps_follow_the_eager_trajectory():
    from hesscale.optim import AdaHesScale

    model = mlp()
    reference = copy.deepcopy(model)
    opt, ref_opt = AdaHesScale(model.parameters(), lr=0.05), AdaHesScale(reference.parameters(),
                                                                       lr=0.05)  # fmt: skip
    step = hesscale.compile(lambda x, y: F.cross_entropy(model(x), y), backend="eager")
    for _ in range(3):
        x, y = batch(5)
        opt.zero_grad()
        step(x, y)
        opt.step()
        ref_opt.zero_grad()
        hesscale.backward(F.cross_entropy(reference(x), y))
        ref_opt.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_refuses_without_a_module():
    weight = torch.randn(3, 6, requires_grad=True)
    with pytest.raises(HesScaleError, match="found no nn.Module"):
        hesscale.compile(lambda x, y: F.cross_entropy(x @ weight.t(), y))


def test_refuses_a_leaf_that_is_not_a_parameter():
    model = mlp()
    extra = torch.randn(3, requires_grad=True)
    step = hesscale.compile(lambda x, y: F.cross_entropy(model(x) + extra, y), backend="eager")
    with pytest.raises(HesScaleError, match="not a parameter"):
        step(*batch(5))


def test_refuses_an_argument_that_requires_grad():
    model = mlp()
    step = hesscale.compile(lambda x, y: F.cross_entropy(model(x), y), backend="eager")
    x, y = batch(5)
    with pytest.raises(HesScaleError, match="requires grad"):
        step(x.requires_grad_(), y)


class _Opaque(torch.autograd.Function):
    """An operation no rule covers."""

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return grad * 2


def test_refuses_to_run_in_a_distributed_job(monkeypatch):
    from hesscale.engine import distributed

    model = mlp()
    step = hesscale.compile(lambda x, y: F.cross_entropy(model(x), y), backend="eager")
    monkeypatch.setattr(distributed, "active", lambda: True)
    with pytest.raises(HesScaleError, match="distributed"):
        step(*batch(5))


def test_an_unsupported_operation_is_refused_as_in_eager():
    model = mlp()
    step = hesscale.compile(lambda x, y: F.cross_entropy(_Opaque.apply(model(x)), y),
                            backend="eager")  # fmt: skip
    with pytest.raises(UnsupportedOperationError, match="_OpaqueBackward"):
        step(*batch(5))


# Inductor (slow: compiling C++ kernels on a shared CPU takes minutes) -----------------------


@pytest.mark.slow
def test_inductor_mlp():
    run_both(mlp, "both", [batch(5), batch(5), batch(3)], backend="inductor")


@pytest.mark.slow
def test_inductor_resnet_with_batch_norm():
    run_both(small_resnet, "both", [batch(4, (3, 6, 6)), batch(4, (3, 6, 6))], backend="inductor")


@pytest.mark.slow
def test_inductor_gpt():
    from hesscale.experiments.transformer import GPT, SequenceCrossEntropy

    def gpt():
        torch.manual_seed(0)
        return GPT(32, 8, 16, 2, heads=2)

    tokens = [(torch.randint(0, 32, (2, 8)), torch.randint(0, 32, (2, 8))) for _ in range(2)]
    model = gpt()
    reference = copy.deepcopy(model)
    loss_fn = SequenceCrossEntropy()
    step = hesscale.compile(lambda x, y: loss_fn(model(x), y), gn="both")
    for x, y in tokens:
        step(x, y)
        hesscale.backward(loss_fn(reference(x), y), gn="both")
        assert_same_results(model, reference, FIELDS["both"])


def test_closed_over_tensors_are_read_at_every_call():
    """A tensor fn closes over (class weights here) is an input of the graph, not a constant
    frozen at tracing: changing it in place changes the next step's results."""
    model, class_weight = mlp(), torch.ones(3)
    reference = copy.deepcopy(model)
    step = hesscale.compile(lambda x, y: F.cross_entropy(model(x), y, weight=class_weight),
                            backend="eager")  # fmt: skip
    x, y = batch(5)
    step(x, y)
    class_weight[0] = 3.0
    model.zero_grad()
    step(x, y)
    hesscale.backward(F.cross_entropy(reference(x), y, weight=class_weight))
    assert_same_results(model, reference, ("hesscale",))


# The torch internals hesscale.compile relies on (hesscale.internals) --------------------------


def test_trace_aten_lifts_closed_over_tensors_and_runs_positionally():
    from hesscale.internals import trace_aten

    constant = torch.arange(3.0)

    def fn(x):
        return (x * constant).sum()

    graph, constants = trace_aten(fn, torch.ones(3))
    assert len(constants) == 1 and constants[0] is constant
    assert {n.op for n in graph.graph.nodes} <= {"placeholder", "call_function", "output"}
    assert graph(torch.ones(3), constant) == 3.0


def test_reparametrized_swaps_parameters_for_the_block():
    from hesscale.internals import reparametrized

    model = nn.Linear(2, 1)
    weight = torch.zeros(1, 2)
    with reparametrized(model, {"weight": weight}):
        assert model.weight is weight
    assert isinstance(model.weight, nn.Parameter)


def test_compiled_module_type_and_nested_tracing():
    from hesscale.internals import compiled_module_types, inline_compiled_code, trace_aten

    model = nn.Linear(2, 1)
    compiled = torch.compile(model, backend="eager")
    assert isinstance(compiled, compiled_module_types()) and compiled._orig_mod is model
    with pytest.raises(RuntimeError, match="dynamo-optimized"):
        trace_aten(lambda x: compiled(x), torch.ones(1, 2))
    with inline_compiled_code():
        graph, constants = trace_aten(lambda x: compiled(x), torch.ones(1, 2))
    assert len(constants) == 2  # weight and bias, read as tensors from outside


def test_inductor_has_the_step_option_hesscale_compile_sets():
    # guards internals.inductor_step_options: a torch without the option is noticed here
    import torch._inductor.config as inductor_config

    from hesscale.internals import inductor_step_options

    assert inductor_step_options() == {"reorder_for_locality": False}
    assert inductor_config.reorder_for_locality is True  # Inductor's own default


def test_step_options_are_defaults_beneath_the_users():
    from hesscale.engine.compiled import _with_step_options

    step = {"reorder_for_locality": False}
    assert _with_step_options("inductor", {}) == {"options": step}
    assert _with_step_options("inductor", {"options": {"max_autotune": True}}) == {
        "options": {**step, "max_autotune": True}
    }
    mine = {"options": {"reorder_for_locality": True}}
    assert _with_step_options("inductor", mine) == mine
    assert _with_step_options("inductor", {"mode": "max-autotune"}) == {"mode": "max-autotune"}
    assert _with_step_options("eager", {}) == {}


def test_compile_hands_the_step_options_to_torch_compile(monkeypatch):
    import hesscale.engine.compiled as compiled

    seen = {}

    def fake_compile(graph, **kwargs):
        seen.update(kwargs)
        return graph

    monkeypatch.setattr(compiled.torch, "compile", fake_compile)
    model = nn.Linear(3, 2)
    step = hesscale.compile(lambda x, y: F.cross_entropy(model(x), y))
    step(torch.randn(4, 3), torch.tensor([0, 1, 1, 0]))
    assert seen["backend"] == "inductor"
    assert seen["options"] == {"reorder_for_locality": False}


def test_spatial_transformer_traces():
    """grid_sample's rule (a scatter of squared weights, torch's sampler backward per channel)
    and affine_grid's run on fake tensors too: the traced step equals eager."""

    class SpatialTransformer(nn.Module):
        def __init__(self):
            super().__init__()
            self.locator, self.classifier = nn.Linear(12, 6), nn.Linear(12, 3)

        def forward(self, x):
            theta = self.locator(x.flatten(1)).view(-1, 2, 3)
            grid = F.affine_grid(theta, [x.shape[0], 1, 3, 4], align_corners=False)
            warped = F.grid_sample(x, grid, padding_mode="reflection", align_corners=False)
            return self.classifier(warped.flatten(1))

    torch.manual_seed(0)
    model = SpatialTransformer()
    reference = copy.deepcopy(model)
    x, y = torch.randn(5, 1, 3, 4), torch.randint(0, 3, (5,))
    step = hesscale.compile(lambda x, y: F.cross_entropy(model(x), y), gn="both", backend="eager")
    step(x, y)
    hesscale.backward(F.cross_entropy(reference(x), y), gn="both")
    assert_same_results(model, reference, FIELDS["both"])
