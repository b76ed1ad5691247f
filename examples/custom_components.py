"""Your own task, network and learner for hesscale's experiments, without editing hesscale.

`custom_components.toml` (next to this file) grids them against AdaHesScale and torch's
RMSprop:

    hesscale sweep examples/custom_components.toml --jobs 2
    hesscale plot results/custom_components

or one run: hesscale run --task examples/custom_components.py:noisy_digits \\
    --network examples/custom_components.py:ResidualMLP --learner adahesscale --lr 0.01
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hesscale.experiments import LearnerSpec, TaskSettings
from hesscale.experiments.tasks import load_dataset


class NoisyDigits:
    """A task: scikit-learn's 8x8 digits (built in) as 64 features in [0, 1], with fresh
    Gaussian noise of standard deviation ``noise`` on every example drawn."""

    def __init__(self, settings: TaskSettings, noise: float = 0.3) -> None:
        digits = load_dataset("digits")
        self.inputs = digits.inputs(torch.arange(len(digits.targets))).flatten(1)
        self.targets = digits.targets
        self.input_shape, self.n_outputs = (64,), 10
        self.batch_size, self.noise = settings.batch_size, noise
        self.generator = torch.Generator().manual_seed(settings.seed)  # the stream's own

    def next_batch(self) -> tuple[Tensor, Tensor]:
        index = torch.randint(len(self.targets), (self.batch_size,), generator=self.generator)
        noise = torch.randn(self.batch_size, 64, generator=self.generator) * self.noise
        return self.inputs[index] + noise, self.targets[index]

    def state_dict(self) -> dict:  # optional: a preempted run continues exactly
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


noisy_digits = NoisyDigits  # a task factory: called as factory(settings, **options)


class ResidualMLP(nn.Module):
    """A network: x -> h = W_in x; h += W_2 tanh(W_1 h) per block; W_out tanh(h). Residual
    additions make it no chain of modules: its diagonals come from hesscale.backward."""

    def __init__(self, input_shape, n_outputs: int, width: int = 32, blocks: int = 2) -> None:
        super().__init__()
        features = int(torch.Size(input_shape).numel())
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(features, width))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width))
            for _ in range(blocks)
        )
        self.head = nn.Sequential(nn.Tanh(), nn.Linear(width, n_outputs))

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


class DiagonalNewton(torch.optim.Optimizer):
    """An optimizer: p -= lr * g / (|h| + damping), h the HesScale diagonal in p.hesscale."""

    def __init__(self, params, lr: float = 0.1, damping: float = 0.1) -> None:
        if lr <= 0 or damping <= 0:
            raise ValueError(f"lr and damping must be > 0, got {lr}, {damping}.")
        super().__init__(params, {"lr": lr, "damping": damping})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    scale = p.hesscale.abs() + group["damping"]
                    p.addcdiv_(p.grad, scale, value=-group["lr"])


# a learner: the optimizer and the backward pass it needs (hesscale.backward: p.hesscale)
diagonal_newton = LearnerSpec(DiagonalNewton, "hesscale", "diagonal Newton step, HesScale diagonal")
