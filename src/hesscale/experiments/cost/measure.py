"""Timing and peak memory of the methods' steps, interleaved in one process (see the
package docstring for the protocol)."""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch

from hesscale.experiments.cost.methods import METHODS, REFERENCE, Step
from hesscale.experiments.cost.models import make_problem

TOO_SLOW = "skipped: too slow"


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
    problem = make_problem(
        config.model,
        config.width,
        config.depth,
        config.batch,
        config.activation,
        config.device,
        config.dtype,
    )
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
