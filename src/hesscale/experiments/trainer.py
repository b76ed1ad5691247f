"""The run loop, apart from what is learned: steps, binned metrics, evaluation, stopping,
checkpoints and the run's log.

A ``Trainer`` drives a *stepper*, which knows what one step of learning is (a mini-batch and
an optimizer update for supervised learning; a rollout and an update for reinforcement
learning). The trainer knows nothing about models or data; the stepper nothing about logs,
bins, signals or checkpoints. Each step returns its metrics as ``{name: (sum, count)}``; the
trainer sums them over bins of ``bin_size`` steps and logs sum / count per bin (a per-step
loss: ``(loss, 1)``; an accuracy over a batch: ``(hits, batch size)``; NaN, null in the JSON
log, for a bin that counted nothing, e.g. no episode ended in it). A stepper with a
``log_fields()`` method adds what it returns to the log (e.g. every episode of an RL run).

Statuses the loop ends with: ``finished``; ``diverged`` (the stepper raised
``hesscale.errors.Diverged``; the curve up to that step is kept); ``preempted`` (the stop flag
was set, e.g. by a scheduler's warning signal; with a checkpoint path the whole state is saved
there, and a trainer that finds a checkpoint of the same experiment continues from it, with
the same result as an uninterrupted run). On KeyboardInterrupt the partial log (status
``interrupted``) is attached to the exception as ``error.partial_log`` before it propagates.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import torch

from hesscale.errors import Diverged

CHECKPOINT_FORMAT = 2
Metrics = dict[str, tuple[float, float]]  # name -> (sum, count) of one step


class Stepper(Protocol):
    """What a learner does per step: the part of a run the trainer does not know."""

    metrics: tuple[str, ...]  # the names ``step`` returns, binned into the log in this order
    # Optional: a step that consumes several units of a run's --steps (an RL rollout) says how
    # many (``units_per_step``, default 1) and what a unit is (``unit``, default "steps").

    def step(self) -> Metrics:
        """Take one step of learning; raise ``Diverged`` if it cannot be taken."""

    def evaluate(self) -> dict[str, float]:
        """Metrics on held-out data (called every ``eval_every`` steps, if that is set)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything, besides torch's random number generators, that the next step uses."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class StopFlag:
    """Set by a signal handler (or anything else); the loop stops cleanly before the next step."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def install(self, signals: tuple[int, ...] | None = None) -> dict:
        """Handle ``signals`` (default: SIGUSR1, SIGTERM) from now on; returns the previous
        handlers (for ``restore``)."""
        import signal

        signals = signals or (signal.SIGUSR1, signal.SIGTERM)
        return {sig: signal.signal(sig, self._handle) for sig in signals}

    @staticmethod
    def restore(previous: dict) -> None:
        import signal

        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        import signal

        self.reason = signal.Signals(signum).name


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` so that it holds either the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Trainer:
    """Runs a stepper for ``steps`` steps and keeps the run's log (see the module docstring).

    ``header`` goes into the log as it is (what was run: task, network, learner, ...);
    ``experiment`` identifies the run for checkpoints (what determines the result), so that a
    checkpoint of other settings is never continued.
    """

    def __init__(
        self,
        stepper: Stepper,
        *,
        steps: int,
        bin_size: int,
        eval_every: int | None = None,
        header: dict[str, Any] | None = None,
        experiment: dict[str, Any] | None = None,
        device: torch.device | None = None,
        checkpoint: Path | None = None,
        stop: StopFlag | None = None,
        progress: bool = True,
        description: str = "",
        ranks: Any = None,
    ) -> None:
        """``ranks`` (hesscale.experiments.parallel.Ranks): a data-parallel run, whose ranks
        agree on stopping and of which rank 0 alone writes the checkpoint."""
        if steps < 1 or bin_size < 1:
            raise ValueError(f"steps and bin_size must be >= 1, got {steps}, {bin_size}.")
        self.stepper = stepper
        self.steps, self.bin_size, self.eval_every = steps, bin_size, eval_every
        self.experiment = experiment or {}
        self.device = device or torch.device("cpu")
        self.checkpoint = checkpoint
        self.stop = stop or StopFlag()
        self.progress, self.description = progress, description
        self.ranks = ranks
        self.log: dict[str, Any] = {
            "format": 1,
            "status": "running",
            **(header or {}),
            "steps": steps,
            "steps_done": 0,
            "bin_size": bin_size,
            "bin_ends": [],
            **{name: [] for name in stepper.metrics},
            "test": {"steps": [], **{name: [] for name in stepper.metrics}},
            "version": _hesscale_version(),
            "torch_version": str(torch.__version__),
            "python_version": platform.python_version(),
            "device": str(self.device),
            "started_at": now(),
        }
        self._bin = _empty_bin(stepper.metrics)
        self._elapsed = 0.0  # seconds spent before this process continued the run
        self._started = time.perf_counter()

    # state -------------------------------------------------------------------------------

    def wall_time(self) -> float:
        return self._elapsed + time.perf_counter() - self._started

    def state_dict(self) -> dict[str, Any]:
        """The whole state of the run: enough to continue it exactly (``load_state_dict``)."""
        state = {
            "format": CHECKPOINT_FORMAT,
            "experiment": self.experiment,
            "stepper": self.stepper.state_dict(),
            "rng": torch.get_rng_state(),
            "log": self.log,
            "bin": self._bin,
            "elapsed": self.wall_time(),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stepper.load_state_dict(state["stepper"])
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.log, self._bin = state["log"], state["bin"]
        self._elapsed, self._started = state["elapsed"], time.perf_counter()
        self.log["resumed_at_step"] = [*self.log.get("resumed_at_step", []), self.log["steps_done"]]

    def resume(self) -> bool:
        """Continue from ``self.checkpoint`` if it holds this experiment; True if it did."""
        if self.checkpoint is None or not self.checkpoint.exists():
            return False
        state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT or _key(state["experiment"]) != _key(
            self.experiment
        ):
            print(f"{self.checkpoint}: made with other settings, starting afresh", file=sys.stderr)
            return False
        self.load_state_dict(state)
        return True

    # the loop ----------------------------------------------------------------------------

    def _stopping(self) -> bool:
        """Whether to stop now; the ranks of a data-parallel run stop together."""
        stopping = self.stop.reason is not None
        if self.ranks is not None:
            from hesscale.experiments.parallel import sums

            stopping = sums(float(stopping))[0] > 0
        return stopping

    def run(self) -> dict[str, Any]:
        """Run (or continue) to the end or a stop; return the log."""
        from tqdm import tqdm

        self.resume()
        log = self.log
        bar = tqdm(
            initial=log["steps_done"],
            total=self.steps,
            disable=not self.progress,
            desc=self.description,
            mininterval=0.5,
            leave=False,
        )
        status = "finished"
        try:
            for step in range(log["steps_done"], self.steps):
                if self._stopping():
                    status = "preempted"
                    if self.checkpoint is not None and (self.ranks is None or self.ranks.writes):
                        save_atomic(self.state_dict(), self.checkpoint)
                        log["checkpoint"] = str(self.checkpoint)
                    log["stopped_by"] = self.stop.reason or "a signal to another rank"
                    break
                try:
                    metrics = self.stepper.step()
                except Diverged as error:
                    status = "diverged"
                    log.update(diverged_at_step=step, diverged_reason=str(error))
                    break
                self._add(metrics)
                log["steps_done"] = step + 1
                bar.update()
                if self._bin["steps"] == self.bin_size:
                    self._close_bin(step + 1, bar)
                if self.eval_every and (step + 1) % self.eval_every == 0:
                    self._evaluate(step + 1)
            if self._bin["steps"]:
                self._close_bin(log["steps_done"], bar)
            done = log["steps_done"]
            if self.eval_every and status == "finished" and done % self.eval_every:
                self._evaluate(done)
        except KeyboardInterrupt as error:
            log.update(status="interrupted", wall_time_s=self.wall_time())
            error.partial_log = log  # type: ignore[attr-defined]
            raise
        finally:
            bar.close()
            log.update(getattr(self.stepper, "log_fields", dict)())
        log.update(status=status, wall_time_s=self.wall_time(), finished_at=now())
        return log

    def _add(self, metrics: Metrics) -> None:
        self._bin["steps"] += 1
        for name, (total, count) in metrics.items():
            self._bin["sums"][name] += total
            self._bin["counts"][name] += count

    def _close_bin(self, step_end: int, bar) -> None:
        self.log["bin_ends"].append(step_end)
        for name in self.stepper.metrics:
            count = self._bin["counts"][name]
            self.log[name].append(self._bin["sums"][name] / count if count else math.nan)
        bar.set_postfix({name: f"{self.log[name][-1]:.4g}" for name in self.stepper.metrics})
        self._bin = _empty_bin(self.stepper.metrics)

    def _evaluate(self, step_end: int) -> None:
        results = self.stepper.evaluate()
        self.log["test"]["steps"].append(step_end)
        for name, value in results.items():
            self.log["test"][name].append(value)


def _empty_bin(metrics: tuple[str, ...]) -> dict[str, Any]:
    return {"steps": 0, "sums": dict.fromkeys(metrics, 0), "counts": dict.fromkeys(metrics, 0)}


def _key(experiment: dict[str, Any]) -> str:
    return json.dumps(experiment, sort_keys=True)


def _hesscale_version() -> str:
    from hesscale import __version__

    return __version__
