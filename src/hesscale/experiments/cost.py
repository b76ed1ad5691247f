"""The computational-cost study: time and peak memory of one training step with each way of
getting curvature (and each optimizer), as a ratio to plain forward+backward of the same model.

Protocol (one process, one configuration at a time):

* Every method gets its own copy of the same initial model and the same mini-batch. The
  reference, "forward+backward", is the model as a user has it: not extended by BackPACK.
* Warm-up: each method runs ``warmup`` steps. A method whose first step raises (e.g. a module
  it does not support) or takes longer than ``max_step_seconds`` is reported as skipped, with
  the reason, and leaves the comparison (in a width sweep also at the larger widths).
* Timing: ``repeats`` rounds; in each round every method runs one step, in an order that
  rotates from round to round, so that slow drifts of the machine (other processes, clocks)
  hit all methods alike. Reported: the median step time and its ratio to the reference's
  median; the spread is the inter-quartile range over the median. The clock is wall time
  (CUDA synchronised before and after each step), or with ``clock="cpu"`` the process's CPU
  time, which a shared machine disturbs less (one CPU thread only: with more, threads that
  spin while waiting would count).
* Memory: after timing, one more step per method with everything the previous step left
  (gradients, curvature fields on the parameters) removed first. Peak = the bytes resident
  before the step (parameters, buffers, the batch, optimizer state) + the largest amount of
  tensor memory allocated beyond that during the step. On CUDA the latter comes from
  ``torch.cuda.max_memory_allocated``; on the CPU from the allocation and free events that
  ``torch.profiler`` (``profile_memory=True``) records for torch's CPU allocator, summed in time
  order. Both count live tensor bytes as torch's allocator hands them out (not the process's
  resident set, which the C allocator's caching blurs).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

REFERENCE = "forward+backward"
TOO_SLOW = "skipped: too slow"

# ---------------------------------------------------------------------------------------------
# models


def mlp(width: int = 512, depth: int = 2, activation: str = "tanh") -> nn.Sequential:
    """784 -> ``depth`` hidden layers of ``width`` units -> 10 (the MNIST-sized MLP)."""
    layers: list[nn.Module] = []
    features = 784
    for _ in range(depth):
        layers += [nn.Linear(features, width), _activation(activation)]
        features = width
    layers.append(nn.Linear(features, 10))
    return nn.Sequential(*layers)


def cnn(width: int = 64, depth: int = 3, activation: str = "relu") -> nn.Sequential:
    """3c3d-style CNN for 3x32x32 inputs: ``depth`` convolutions with ``width`` x (1, 1.5, 2, 2,
    ...) channels (5x5 valid, 3x3 valid, 3x3 same, then 3x3 same), the first three each followed
    by a 3x3 max-pooling with stride 2, then 512 - 256 - 10 fully connected. ``width=64, depth=3``
    is DeepOBS's 3c3d."""
    if depth < 1:
        raise ValueError(f"cnn depth must be at least 1, got {depth}")
    layers: list[nn.Module] = []
    channels, size = 3, 32
    for i in range(depth):
        out = int(round(width * (1, 1.5, 2)[min(i, 2)]))
        kernel, padding = (5, 0) if i == 0 else (3, 0 if i == 1 else 1)
        layers += [nn.Conv2d(channels, out, kernel, padding=padding), _activation(activation)]
        size = size - kernel + 1 + 2 * padding
        if i < 3:
            layers.append(nn.MaxPool2d(3, stride=2, padding=1))
            size = (size - 1) // 2 + 1
        channels = out
    layers += [nn.Flatten(), nn.Linear(channels * size * size, 512), _activation(activation)]
    layers += [nn.Linear(512, 256), _activation(activation), nn.Linear(256, 10)]
    return nn.Sequential(*layers)


ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}
MODELS: dict[str, tuple[Callable[..., nn.Module], tuple[int, ...], str]] = {
    # name: (constructor, input shape without batch, default activation)
    "mlp": (mlp, (784,), "tanh"),
    "cnn": (cnn, (3, 32, 32), "relu"),
}


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


# ---------------------------------------------------------------------------------------------
# methods: each prepares its own copy of the model and returns a Step


@dataclass
class Problem:
    """One configuration: the initial model, a loss and a mini-batch (all on one device)."""

    model: nn.Module
    x: Tensor
    y: Tensor

    def copy(self, extended: bool) -> tuple[nn.Module, nn.Module]:
        model, loss_fn = copy.deepcopy(self.model), nn.CrossEntropyLoss()
        if extended:
            from backpack import extend

            model, loss_fn = extend(model), extend(loss_fn)
        return model, loss_fn


@dataclass
class Step:
    """One training step of one method, and what it keeps resident between steps."""

    run: Callable[[], None]
    model: nn.Module
    optimizer: torch.optim.Optimizer | None = None

    def reset(self) -> None:
        """Drop what the previous step left on the parameters (gradients, curvature fields)."""
        for param in self.model.parameters():
            param.grad = None
            for name in [k for k, v in vars(param).items() if isinstance(v, Tensor | list)]:
                delattr(param, name)

    def resident_bytes(self, batch: tuple[Tensor, ...]) -> int:
        tensors = [*self.model.parameters(), *self.model.buffers(), *batch]
        if self.optimizer is not None:
            for state in self.optimizer.state.values():
                tensors += [v for v in state.values() if isinstance(v, Tensor)]
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class Method:
    name: str
    group: str  # "backprop", "curvature" or "optimizer step"
    prepare: Callable[[Problem], Step]


def _plain(problem: Problem) -> Step:
    model, loss_fn = problem.copy(extended=False)

    def run() -> None:
        model.zero_grad(set_to_none=True)
        loss_fn(model(problem.x), problem.y).backward()

    return Step(run, model)


def _backpack_step(make_extensions: Callable[[], list]) -> Callable[[Problem], Step]:
    """A step with ``with backpack(*extensions): loss.backward()`` on an extended copy."""

    def prepare(problem: Problem) -> Step:
        from backpack import backpack

        model, loss_fn = problem.copy(extended=True)
        extensions = make_extensions()

        def run() -> None:
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model(problem.x), problem.y)
            with backpack(*extensions):
                loss.backward()

        return Step(run, model)

    return prepare


def _hesscale(name: str) -> Callable[[], list]:
    def make() -> list:
        import hesscale

        return [getattr(hesscale, name)()]

    return make


def _backpack_ext(name: str, **kwargs) -> Callable[[], list]:
    def make() -> list:
        from backpack import extensions

        return [getattr(extensions, name)(**kwargs)]

    return make


def _hutchinson(problem: Problem) -> Step:
    """hesscale.estimators.Hutchinson with one probe (gradient with its graph, then one
    Hessian-vector product)."""
    from hesscale.estimators import Hutchinson

    model, loss_fn = problem.copy(extended=False)
    estimator = Hutchinson(samples=1)

    def run() -> None:
        estimator.estimate(model, loss_fn, problem.x, problem.y)

    return Step(run, model)


def _torch_optimizer(name: str) -> Callable[[Problem], Step]:
    def prepare(problem: Problem) -> Step:
        model, loss_fn = problem.copy(extended=False)
        optimizer = getattr(torch.optim, name)(model.parameters(), lr=1e-5)

        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(problem.x), problem.y).backward()
            optimizer.step()

        return Step(run, model, optimizer)

    return prepare


def _hesscale_optimizer(name: str) -> Callable[[Problem], Step]:
    """An optimizer from hesscale.optim, stepped with a closure that returns the loss: the
    optimizer runs the backward pass it needs itself (under ``opt.method``, the BackPACK
    extension it reads, on an extended copy; or with ``create_graph=True`` for AdaHessian)."""

    def prepare(problem: Problem) -> Step:
        import hesscale.optim

        cls = getattr(hesscale.optim, name)
        probe = cls([nn.Parameter(torch.zeros(1))], lr=1e-5)
        model, loss_fn = problem.copy(extended=getattr(probe, "method", None) is not None)
        optimizer = cls(model.parameters(), lr=1e-5)

        def run() -> None:
            optimizer.step(lambda: loss_fn(model(problem.x), problem.y))

        return Step(run, model, optimizer)

    return prepare


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method(REFERENCE, "backprop", _plain),
        Method("BackPACK hooks only", "backprop", _backpack_step(list)),
        Method("HesScale", "curvature", _backpack_step(_hesscale("HesScale"))),
        Method("HesScaleGN", "curvature", _backpack_step(_hesscale("HesScaleGN"))),
        Method("DiagGGNMC", "curvature", _backpack_step(_backpack_ext("DiagGGNMC"))),
        Method("DiagGGNExact", "curvature", _backpack_step(_backpack_ext("DiagGGNExact"))),
        Method("DiagHessian", "curvature", _backpack_step(_backpack_ext("DiagHessian"))),
        Method("KFAC", "curvature", _backpack_step(_backpack_ext("KFAC", mc_samples=1))),
        Method("Hutchinson (1 probe)", "curvature", _hutchinson),
        Method("SGD", "optimizer step", _torch_optimizer("SGD")),
        Method("Adam", "optimizer step", _torch_optimizer("Adam")),
        Method("AdaHesScale", "optimizer step", _hesscale_optimizer("AdaHesScale")),
        Method("AdaHesScaleGN", "optimizer step", _hesscale_optimizer("AdaHesScaleGN")),
        Method("AdaHessian", "optimizer step", _hesscale_optimizer("AdaHessian")),
        Method("AdaGGNMC", "optimizer step", _hesscale_optimizer("AdaGGNMC")),
    ]
}


# ---------------------------------------------------------------------------------------------
# measurement


@dataclass
class Config:
    model: str = "mlp"
    width: int = 512
    depth: int = 2
    batch: int = 128
    activation: str | None = None
    device: str = "cpu"
    threads: int = 1
    dtype: str = "float32"
    clock: str = "wall"


@dataclass
class Result:
    config: Config
    method: str
    group: str
    status: str = "ok"  # "ok" or "skipped: <why>"
    median_ms: float = math.nan
    spread: float = math.nan  # inter-quartile range / median of the step time
    time_ratio: float = math.nan
    peak_mb: float = math.nan
    memory_ratio: float = math.nan
    times_ms: list[float] = field(default_factory=list)

    def row(self) -> dict:
        row = {**asdict(self.config), **asdict(self)}
        del row["config"], row["times_ms"]
        return row


def make_problem(config: Config, seed: int = 0) -> Problem:
    constructor, input_shape, default_activation = MODELS[config.model]
    dtype = getattr(torch, config.dtype)
    generator = torch.Generator().manual_seed(seed)
    with _seeded(seed):
        model = constructor(config.width, config.depth, config.activation or default_activation)
    x = torch.randn(config.batch, *input_shape, generator=generator, dtype=dtype)
    y = torch.randint(0, 10, (config.batch,), generator=generator)
    return Problem(model.to(config.device, dtype), x.to(config.device), y.to(config.device))


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def _timed(step: Step, device: str, clock: str = "wall") -> float:
    now = CLOCKS[clock]
    _synchronize(device)
    start = now()
    step.run()
    _synchronize(device)
    return now() - start


def peak_step_bytes(step: Step, device: str) -> int:
    """Largest amount of tensor memory allocated during one step beyond what was live before."""
    step.reset()
    _synchronize(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step.run()
        _synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step.run()
    changes = sorted(
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in changes:
        live += nbytes
        peak = max(peak, live)
    return peak


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler's C++ start/stop log lines (written to file descriptor 2)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def measure(
    config: Config,
    methods: list[str],
    repeats: int = 20,
    warmup: int = 3,
    max_step_seconds: float = 3.0,
    memory: bool = True,
    progress: bool = True,
) -> list[Result]:
    """Interleaved timing (and peak memory) of ``methods`` on one configuration."""
    if REFERENCE not in methods:
        methods = [REFERENCE, *methods]
    torch.set_num_threads(config.threads)
    problem = make_problem(config)
    batch = (problem.x, problem.y)
    results = {name: Result(config, name, METHODS[name].group) for name in methods}
    steps: dict[str, Step] = {}
    for name in methods:
        try:
            step = METHODS[name].prepare(problem)
            seconds = _timed(step, config.device)
        except ModuleNotFoundError as error:
            results[name].status = f"skipped: module {error.name} not available"
            continue
        except (AttributeError, ImportError) as error:
            results[name].status = f"skipped: not available ({error})"
            continue
        except Exception as error:  # noqa: BLE001 - any failure of a method is reported
            message = str(error).splitlines()[0] if str(error) else ""
            results[name].status = f"skipped: {type(error).__name__}: {message[:120]}"
            continue
        if seconds > max_step_seconds and name != REFERENCE:
            results[
                name
            ].status = f"{TOO_SLOW}: one step took {seconds:.1f} s > {max_step_seconds} s"
            continue
        steps[name] = step
    if REFERENCE not in steps:
        raise RuntimeError(f"the reference step failed: {results[REFERENCE].status}")
    for _ in range(warmup - 1):
        for step in steps.values():
            step.run()
    order = list(steps)
    rounds = _progress(range(repeats), progress, f"{config.model} w={config.width}")
    for r in rounds:
        rotated = order[r % len(order) :] + order[: r % len(order)]
        for name in rotated:
            results[name].times_ms.append(1e3 * _timed(steps[name], config.device, config.clock))
    for name in steps:
        times = results[name].times_ms
        results[name].median_ms = statistics.median(times)
        if len(times) >= 4:
            q1, _, q3 = statistics.quantiles(times, n=4)
            results[name].spread = (q3 - q1) / results[name].median_ms
    reference = results[REFERENCE].median_ms
    for name in steps:
        results[name].time_ratio = results[name].median_ms / reference
    if memory:
        for name, step in steps.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                peak = peak_step_bytes(step, config.device) + step.resident_bytes(batch)
            results[name].peak_mb = peak / 2**20
        for name in steps:
            results[name].memory_ratio = results[name].peak_mb / results[REFERENCE].peak_mb
    return list(results.values())


def _progress(iterable, enabled: bool, description: str):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=description, leave=False, file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# output


def format_table(results: list[Result]) -> str:
    """One block per configuration: method, median step time, ratios, spread."""
    lines: list[str] = []
    configs: dict[str, list[Result]] = {}
    for result in results:
        c = result.config
        key = (
            f"{c.model} width={c.width} depth={c.depth} batch={c.batch} "
            f"{c.device} threads={c.threads} {c.dtype} clock={c.clock}"
        )
        configs.setdefault(key, []).append(result)
    for key, block in configs.items():
        lines += [
            key,
            f"  {'method':<22} {'ms':>9} {'time x':>7} {'IQR/med':>8} {'peak MB':>9} {'mem x':>6}",
        ]
        for r in block:
            if r.status != "ok":
                lines.append(f"  {r.method:<22} {r.status}")
                continue
            lines.append(
                f"  {r.method:<22} {r.median_ms:9.2f} {r.time_ratio:7.2f} {r.spread:8.2f} "
                f"{r.peak_mb:9.1f} {r.memory_ratio:6.2f}"
            )
        lines.append("")
    return "\n".join(lines)


def write_outputs(results: list[Result], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    rows = [r.row() for r in results]
    paths = [out / "cost.csv", out / "cost.json", out / "cost.txt"]
    with open(paths[0], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    detailed = [{**r.row(), "times_ms": r.times_ms} for r in results]
    paths[1].write_text(json.dumps(_jsonable(detailed), indent=1))
    paths[2].write_text(format_table(results))
    paths.append(plot(results, out / "cost.png"))
    return paths


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def plot(results: list[Result], path: Path) -> Path:
    """Time and memory ratio vs. width, one line per method, one column of panels per
    (depth, threads)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    panels = sorted({(r.config.depth, r.config.threads) for r in results})
    fig, axes = plt.subplots(2, len(panels), figsize=(5 * len(panels), 7), squeeze=False)
    methods = list(dict.fromkeys(r.method for r in results))
    for column, (depth, threads) in enumerate(panels):
        for row, (what, ratio) in enumerate(
            (("time", "time_ratio"), ("peak memory", "memory_ratio"))
        ):
            ax = axes[row, column]
            for method in methods:
                points = sorted(
                    (r.config.width, getattr(r, ratio))
                    for r in results
                    if r.method == method
                    and (r.config.depth, r.config.threads) == (depth, threads)
                    and math.isfinite(getattr(r, ratio))
                )
                if points:
                    style = "-" if METHODS[method].group != "optimizer step" else ":"
                    color = plt.get_cmap("tab20")(methods.index(method) % 20)
                    ax.plot(
                        *zip(*points, strict=True), style, marker="o", color=color, label=method
                    )
            if ax.lines:
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xticks(sorted({r.config.width for r in results}))
                ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.yaxis.set_minor_formatter(ticker.NullFormatter())
                for axis in (ax.xaxis, ax.yaxis):
                    axis.set_major_formatter(ticker.FormatStrFormatter("%g"))
            else:
                ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
            ax.set_xlabel("width")
            ax.set_ylabel(f"{what} / forward+backward")
            ax.set_title(f"{results[0].config.model}, depth {depth}, {threads} thread(s): {what}")
            ax.grid(True, which="both", alpha=0.3)
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# command line

DEFAULT_WIDTHS = {"mlp": [128, 256, 512, 1024], "cnn": [16, 32, 64]}
DEFAULT_DEPTHS = {"mlp": [2], "cnn": [3]}
DEFAULT_BATCH = {"mlp": 128, "cnn": 64}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=sorted(MODELS), default="mlp")
    parser.add_argument(
        "--widths", type=int, nargs="+", help="mlp: 128 256 512 1024; cnn: 16 32 64"
    )
    parser.add_argument(
        "--depths", type=int, nargs="+", help="hidden layers (mlp: 2) or convolutions (cnn: 3)"
    )
    parser.add_argument("--batch", type=int, help="mini-batch size (mlp: 128, cnn: 64)")
    parser.add_argument("--activation", choices=sorted(ACTIVATIONS), help="mlp: tanh, cnn: relu")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[1],
        help="torch.set_num_threads values to sweep (default 1)",
    )
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: elapsed time (default); cpu: this process's CPU time, which other processes "
        "on a shared machine disturb less (CPU device with 1 thread only)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        metavar="METHOD",
        help=f"default: all of {', '.join(METHODS)}",
    )
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per method")
    parser.add_argument(
        "--max-step-seconds",
        type=float,
        default=3.0,
        help="skip a method whose first step takes longer (default 3)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("results/cost"),
        help="where cost.csv, cost.json, cost.txt and cost.png go",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"hesscale cost: skipped: --device {args.device} was asked for but CUDA is not "
            "available here (torch.cuda.is_available() is False); nothing was measured. "
            "Run with --device cpu, or on a machine with a GPU.",
            file=sys.stderr,
        )
        return 0
    if args.device != "cpu" and not args.device.startswith("cuda"):
        print(
            f"hesscale cost: --device must be cpu or cuda[:N], got {args.device!r}", file=sys.stderr
        )
        return 2
    if args.clock == "cpu" and (args.device != "cpu" or args.threads != [1]):
        print(
            "hesscale cost: --clock cpu measures one CPU thread's work; use it only with "
            "--device cpu --threads 1",
            file=sys.stderr,
        )
        return 2
    methods = args.methods or list(METHODS)
    results: list[Result] = []
    for threads in args.threads:
        for depth in args.depths or DEFAULT_DEPTHS[args.model]:
            too_slow: set[str] = set()  # too slow at a smaller width: skip at larger ones
            for width in sorted(args.widths or DEFAULT_WIDTHS[args.model]):
                config = Config(
                    args.model,
                    width,
                    depth,
                    args.batch or DEFAULT_BATCH[args.model],
                    args.activation,
                    args.device,
                    threads,
                    args.dtype,
                    args.clock,
                )
                block = measure(
                    config,
                    [m for m in methods if m not in too_slow],
                    args.repeats,
                    args.warmup,
                    args.max_step_seconds,
                    not args.no_memory,
                    not args.quiet,
                )
                for name in too_slow:
                    block.append(Result(config, name, METHODS[name].group, TOO_SLOW))
                too_slow |= {r.method for r in block if r.status.startswith(TOO_SLOW)}
                print(format_table(block), flush=True)
                results += block
    for path in write_outputs(results, args.out):
        print(f"wrote {path}")
    return 0
