"""One-command GPU check of hesscale.backward: correctness on CUDA and its cost there.

    python benchmarks/gpu_check.py

On a machine with CUDA (one GPU, a few minutes):

1. Accuracy: ResNet-18 (train mode: cuDNN batch norm), the GPT (once per scaled-dot-product
   attention backend that runs: math, memory-efficient, flash, cuDNN) and a 2-layer LSTM
   (cuDNN's fused RNN) in float32 on CUDA against the same model and batch in float64 on the
   CPU: the gradient, the HesScale and the HesScaleGN diagonal of every parameter, worst
   relative error (largest |difference| over largest |entry|, per parameter). The flash and
   cuDNN attention kernels run only in half precision; they are checked under bfloat16
   autocast, to a looser tolerance. TF32 is switched off for the float32 checks.
2. Mixed precision: a training step under bfloat16 and float16 autocast with a GradScaler and
   AdaHesScale (finite diagonals, the step taken).
3. Cost: time (CUDA events, median over rounds, the methods alternating) and peak memory
   (torch.cuda.max_memory_allocated) of plain forward + backward, hesscale.backward (HesScale)
   and hesscale.backward(gn=True) (HesScaleGN), as ratios to plain.

It prints one table per part and exits with 1 if any check failed. Without CUDA it says so in
one line and exits with 2.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import nn

import hesscale
from hesscale.engine.graph import operation_names

FLOAT32_TOLERANCE = 1e-3  # worst relative error, float32 on CUDA vs float64 on the CPU
HALF_TOLERANCE = 0.1  # the same under bfloat16 autocast (flash / cuDNN attention)
FUSED_PREFIXES = ("Cudnn", "Miopen", "ScaledDotProduct")  # nodes the table names


class LSTMClassifier(nn.Module):
    """A 2-layer LSTM over a sequence, a linear read-out of its last hidden state."""

    def __init__(self, inputs: int = 32, hidden: int = 128, classes: int = 10) -> None:
        super().__init__()
        self.lstm = nn.LSTM(inputs, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


class Case:
    """A model, its loss function and a fixed batch; ``loss_of(model)`` computes the loss."""

    def __init__(self, model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor):
        self.model, self.loss_fn, self.x, self.y = model, loss_fn, x, y

    def __call__(self, model: nn.Module) -> torch.Tensor:
        return self.loss_fn(model(self.x), self.y)

    def on_cpu_in_float64(self) -> Case:
        def moved(t):
            return t.cpu().double() if t.is_floating_point() else t.cpu()

        model = copy.deepcopy(self.model).cpu().double()
        return Case(model, self.loss_fn, moved(self.x), moved(self.y))


def problems(device: str, small: bool = False) -> dict[str, tuple[nn.Module, Case]]:
    """{name: (model, loss_of)} on ``device`` in float32, with fixed batches."""
    from hesscale.experiments.cost.models import make_problem

    batch = 4 if small else 32
    out = {}
    for name in ("resnet18", "gpt"):
        problem = make_problem(name, 128 if name == "gpt" else 64, 2 if name == "gpt" else 18,
                               batch, device=device)  # fmt: skip
        case = Case(problem.model, problem.loss(), problem.x, problem.y)
        out[name] = (problem.model, case)
    torch.manual_seed(0)
    lstm = LSTMClassifier(hidden=16 if small else 128).to(device)
    x = torch.randn(batch, 8 if small else 64, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    out["lstm"] = (lstm, Case(lstm, nn.CrossEntropyLoss(), x, y))
    return out


def results(model: nn.Module, loss_of: Callable, autocast: torch.dtype | None = None) -> dict:
    """{(parameter name, field): tensor} after hesscale.backward(gn='both'), as float64 CPU."""
    model.zero_grad(set_to_none=True)
    device = next(model.parameters()).device.type
    context = torch.autocast(device, dtype=autocast) if autocast else nullcontext()
    with context:
        loss = loss_of(model)
    hesscale.backward(loss, gn="both")
    return {
        (name, field): getattr(p, field).detach().double().cpu()
        for name, p in model.named_parameters()
        for field in ("grad", "hesscale", "hesscale_gn")
    }


def node_names(model: nn.Module, loss_of: Callable, autocast=None) -> set[str]:
    device = next(model.parameters()).device.type
    with torch.autocast(device, dtype=autocast) if autocast else nullcontext():
        loss = loss_of(model)
    return operation_names(loss)


def worst_error(got: dict, expected: dict, fields: tuple[str, ...]) -> tuple[float, str]:
    """The largest relative error (per parameter: largest |difference| / largest |entry|) over
    the parameters' ``fields``, and where it is."""
    worst, where = 0.0, ""
    for key, want in expected.items():
        if key[1] not in fields:
            continue
        scale = want.abs().max().item() or 1.0
        error = (got[key] - want).abs().max().item() / scale
        if not error <= worst:  # NaN counts as worst
            worst, where = error, f"{key[0]}.{key[1]}"
    return worst, where


def attention_backends(device: str) -> list[tuple[str, object, torch.dtype | None]]:
    """(name, SDPBackend, autocast dtype or None) for every backend to try."""
    from torch.nn.attention import SDPBackend

    if device != "cuda":
        return [("math", SDPBackend.MATH, None)]
    return [
        ("math", SDPBackend.MATH, None),
        ("efficient", SDPBackend.EFFICIENT_ATTENTION, None),
        ("flash", SDPBackend.FLASH_ATTENTION, torch.bfloat16),
        ("cudnn", SDPBackend.CUDNN_ATTENTION, torch.bfloat16),
    ]


def check_accuracy(device: str, small: bool = False) -> list[tuple]:
    """Rows (model, variant, nodes of note, the gradient's and the diagonals' worst relative
    error, where the latter is, passed). A diagonal passes within the tolerance or 20 times
    the gradient's error, whichever is larger (float32 leaves an ill-conditioned model, e.g.
    batch norm over few entries, a larger error in the gradient and its diagonal alike)."""
    from torch.nn.attention import sdpa_kernel

    rows = []
    for name, (model, loss_of) in problems(device, small).items():
        reference = loss_of.on_cpu_in_float64()
        variants = [("float32", None, None)]
        if name == "gpt":
            variants = [(f"sdpa {b}", backend, dtype)
                        for b, backend, dtype in attention_backends(device)]  # fmt: skip
        expected = results(copy.deepcopy(reference.model), reference)
        for variant, backend, autocast in variants:
            context = sdpa_kernel(backend) if backend is not None else nullcontext()
            copy_ = copy.deepcopy(model)
            try:
                with context:
                    recorded = node_names(copy_, loss_of, autocast)
                    noted = sorted(n for n in recorded if n.startswith(FUSED_PREFIXES))
                    got = results(copy_, loss_of, autocast)
            except RuntimeError as error:
                if "No available kernel" in str(error):
                    rows.append((name, variant, "not available here", None, None, "", True))
                    continue
                raise
            grad_error, _ = worst_error(got, expected, ("grad",))
            error, where = worst_error(got, expected, ("hesscale", "hesscale_gn"))
            # the diagonal may be as far off as float32 leaves the gradient of this model
            tolerance = max(HALF_TOLERANCE if autocast else FLOAT32_TOLERANCE, 20 * grad_error)
            passed = error <= tolerance
            rows.append((name, variant, ", ".join(noted) or "-", grad_error, error, where, passed))
    return rows


def check_mixed_precision(device: str, small: bool = False) -> list[tuple]:
    """Rows (model, autocast dtype, finite diagonals, step taken, passed)."""
    from hesscale.optim import AdaHesScale

    rows = []
    dtypes = [torch.bfloat16, torch.float16] if device == "cuda" else [torch.bfloat16]
    for dtype in dtypes:
        for name, (model, loss_of) in problems(device, small).items():
            if name == "lstm" and device != "cuda":
                continue  # oneDNN's CPU LSTM takes no mixed-precision autocast
            model = copy.deepcopy(model)
            before = [p.detach().clone() for p in model.parameters()]
            opt = AdaHesScale(model.parameters(), lr=1e-3)
            scaler = torch.amp.GradScaler(device)
            opt.zero_grad()
            with torch.autocast(device, dtype=dtype):
                loss = loss_of(model)
            hesscale.backward(scaler.scale(loss))
            finite = all(torch.isfinite(p.hesscale).all().item() for p in model.parameters())
            scaler.step(opt)
            scaler.update()
            pairs = zip(before, model.parameters(), strict=True)
            moved = any(not torch.equal(b, p) for b, p in pairs)
            rows.append((name, str(dtype).removeprefix("torch."), finite, moved, finite and moved))
    return rows


def _timer(device: str):
    if device == "cuda":

        def timed(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1000

        return timed

    def timed_cpu(fn):
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return timed_cpu


METHODS = {
    "plain": lambda loss: loss.backward(),
    "HesScale": lambda loss: hesscale.backward(loss),
    "HesScaleGN": lambda loss: hesscale.backward(loss, gn=True),
}


def measure_cost(device: str, rounds: int = 20, small: bool = False) -> list[tuple]:
    """Rows (model, method, median seconds, time ratio to plain, peak MiB, memory ratio)."""
    timed = _timer(device)
    rows = []
    for name, (model, loss_of) in problems(device, small).items():
        models = {method: copy.deepcopy(model) for method in METHODS}

        def step(method, models=models, loss_of=loss_of):
            m = models[method]
            for p in m.parameters():
                p.grad = None
                for field in ("hesscale", "hesscale_gn"):
                    if hasattr(p, field):
                        delattr(p, field)
            METHODS[method](loss_of(m))

        for method in METHODS:  # warm-up (cuDNN autotuning, first-call costs)
            step(method)
        times = {method: [] for method in METHODS}
        order = list(METHODS)
        for r in range(rounds):
            for method in order[r % 3 :] + order[: r % 3]:
                times[method].append(timed(lambda method=method: step(method)))
        peaks = {}
        for method in METHODS:
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                step(method)
                torch.cuda.synchronize()
                peaks[method] = torch.cuda.max_memory_allocated() / 2**20
            else:
                peaks[method] = float("nan")
        base_time = statistics.median(times["plain"])
        for method in METHODS:
            median = statistics.median(times[method])
            rows.append((name, method, median, median / base_time, peaks[method],
                         peaks[method] / peaks["plain"]))  # fmt: skip
    return rows


def table(header: tuple[str, ...], rows: list[tuple]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def main(device: str = "cuda", small: bool = False, rounds: int = 20) -> int:
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        print(f"# hesscale GPU check on {torch.cuda.get_device_name()} (torch {torch.__version__},"
              f" cuDNN {torch.backends.cudnn.version()})\n")  # fmt: skip
    accuracy = check_accuracy(device, small)
    print("## Accuracy: CUDA float32 (or bf16 autocast) vs CPU float64, gradient and both "
          "diagonals\n")  # fmt: skip
    header = ("model", "variant", "fused nodes recorded", "gradient rel. error",
              "diagonal rel. error", "where", "ok")  # fmt: skip
    print(table(header, accuracy))  # fmt: skip
    mixed = check_mixed_precision(device, small)
    print("\n## Mixed precision: autocast + GradScaler + AdaHesScale, one step\n")
    print(table(("model", "autocast", "finite diagonals", "step taken", "ok"), mixed))
    cost = measure_cost(device, rounds, small)
    clock = "CUDA events" if device == "cuda" else "CPU clock"
    print(f"\n## Cost: median of {rounds} rounds ({clock}), ratios to plain fwd+bwd\n")
    print(table(("model", "method", "time s", "time ratio", "peak MiB", "memory ratio"), cost))
    failed = [r for r in accuracy if not r[-1]] + [r for r in mixed if not r[-1]]
    print(f"\n{'FAILED: ' + str(len(failed)) + ' check(s)' if failed else 'all checks passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); this check "
              "needs a GPU.", file=sys.stderr)  # fmt: skip
        sys.exit(2)
    sys.exit(main())
