"""``hesscale run``: one training run (task x network x learner x seed) -> one JSON log.

Loss and accuracy are measured online (each batch before the update on it) and averaged over
bins of ``--bin-size`` steps; ``--eval-every N`` adds loss and accuracy on the held-out test
split every N steps (and at the end). A NaN or infinite loss ends the run with status
``diverged``; SIGUSR1/SIGTERM (a scheduler's warning) end it with status ``preempted``, a
checkpoint next to the log (``<log>.ckpt``) and exit code 3, so a job script can requeue it;
started again, it continues from the checkpoint exactly. An exception leaves status ``failed``
with its traceback. A run whose log is already complete is skipped unless ``--force``.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import platform
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

EXIT_PREEMPTED = 3
EXIT_FAILED = 1


@dataclass
class RunConfig:
    task: str
    network: str
    learner: str
    lr: float
    seed: int = 0
    steps: int = 1000
    batch_size: int = 32
    change_freq: int | None = None
    bin_size: int = 100
    eval_every: int | None = None  # steps between test-set evaluations (not for digits)
    hidden: list[int] | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # besides lr
    data_dir: str | None = None
    download: bool = False
    device: str = "auto"

    def all_hyperparameters(self) -> dict[str, Any]:
        return {"lr": self.lr, **self.hyperparameters}

    def experiment(self) -> dict[str, Any]:
        """What determines the results (not where data lives or which device runs it)."""
        skip = ("data_dir", "download", "device")
        return {k: v for k, v in asdict(self).items() if k not in skip}


class StaleLogError(ValueError):
    """A complete log at the output path that was made with a different configuration."""


def check_existing(config: RunConfig, log: dict[str, Any], out: str | Path) -> None:
    """Raise StaleLogError if ``log`` (complete, at ``out``) is not a run of ``config``."""
    theirs = RunConfig(**log.get("config", {})).experiment() if "config" in log else {}
    ours = json.loads(json.dumps(config.experiment()))  # as it reads back from JSON
    differ = sorted(k for k in ours if theirs.get(k) != ours[k])
    if differ:
        shown = ", ".join(f"{k}: {theirs.get(k)!r} there, {ours[k]!r} now" for k in differ)
        raise StaleLogError(
            f"{out} holds a complete run with other settings ({shown}). Write to another "
            "place (--out / --out-dir) or pass --force to overwrite it."
        )


class StopFlag:
    """Set by a signal handler; the training loop stops cleanly at the next step."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def install(self, signals=(signal.SIGUSR1, signal.SIGTERM)) -> dict:
        """Handle ``signals`` from now on; returns the previous handlers (for ``restore``)."""
        return {sig: signal.signal(sig, self._handle) for sig in signals}

    @staticmethod
    def restore(previous: dict) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.reason = signal.Signals(signum).name


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _resolve_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _save_atomic(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(
    config: RunConfig,
    *,
    progress: bool = True,
    stop: StopFlag | None = None,
    checkpoint: Path | None = None,
) -> dict[str, Any]:
    """Run ``config``; return its log (status finished, diverged or preempted).

    With ``checkpoint``, a preempted run saves its whole state there (model, optimizer, data
    stream, random number generators, log so far), and a run that finds a checkpoint of the
    same configuration continues from it, with the same result as an uninterrupted run.
    On KeyboardInterrupt the partial log (status ``interrupted``) is attached to the exception
    as ``error.partial_log`` before it propagates.
    """
    import torch
    from torch import nn
    from tqdm import tqdm

    import hesscale
    from hesscale.experiments.learners import Learner
    from hesscale.experiments.networks import build_network
    from hesscale.experiments.tasks import Task

    if config.steps < 1 or config.bin_size < 1:
        raise ValueError(f"steps and bin_size must be >= 1, got {config.steps}, {config.bin_size}.")
    stop = stop or StopFlag()
    device = _resolve_device(config.device)
    torch.manual_seed(config.seed)
    task = Task(
        config.task,
        batch_size=config.batch_size,
        seed=config.seed,
        change_freq=config.change_freq,
        data_dir=config.data_dir,
        download=config.download,
    )
    if config.eval_every:
        task.test_split()  # fail now, not at the first evaluation, if there is none
    model = build_network(config.network, task.input_shape, task.n_outputs, config.hidden)
    model = model.to(device)
    learner = Learner(config.learner, model.parameters(), **config.all_hyperparameters())
    loss_fn = nn.CrossEntropyLoss()
    if learner.uses_backpack:
        from backpack import extend

        model, loss_fn = extend(model), extend(loss_fn)
    model.train()

    log: dict[str, Any] = {
        "format": 1,
        "status": "running",
        "task": task.describe(),
        "network": config.network,
        "learner": config.learner,
        "hyperparameters": config.all_hyperparameters(),
        "seed": config.seed,
        "steps": config.steps,
        "steps_done": 0,
        "bin_size": config.bin_size,
        "bin_ends": [],
        "loss": [],
        "accuracy": [],
        "test": {"steps": [], "loss": [], "accuracy": []},  # with --eval-every
        "config": asdict(config),
        "version": hesscale.__version__,
        "torch_version": str(torch.__version__),
        "python_version": platform.python_version(),
        "device": str(device),
        "started_at": _now(),
    }
    start = time.perf_counter()
    loss_sum = correct = seen = n_in_bin = 0
    first_step, elapsed = 0, 0.0
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        same = json.dumps(state["experiment"], sort_keys=True) == json.dumps(
            config.experiment(), sort_keys=True
        )
        if not same:
            print(f"{checkpoint}: made with other settings, starting afresh", file=sys.stderr)
        else:
            model.load_state_dict(state["model"])
            learner.optimizer.load_state_dict(state["optimizer"])
            task.load_state_dict(state["task"])
            torch.set_rng_state(state["rng"])
            if "cuda_rng" in state and device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng"], device)
            log, elapsed = state["log"], state["elapsed"]
            loss_sum, correct, seen, n_in_bin = state["bin"]
            first_step = log["steps_done"]
            log["resumed_at_step"] = [*log.get("resumed_at_step", []), first_step]

    def save_checkpoint() -> None:
        state = {
            "experiment": config.experiment(),
            "model": model.state_dict(),
            "optimizer": learner.optimizer.state_dict(),
            "task": task.state_dict(),
            "rng": torch.get_rng_state(),
            "log": log,
            "bin": (loss_sum, correct, seen, n_in_bin),
            "elapsed": elapsed + time.perf_counter() - start,
        }
        if device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(device)
        _save_atomic(state, checkpoint)

    bar = tqdm(
        initial=first_step,
        total=config.steps,
        disable=not progress,
        desc=f"{config.learner} lr={config.lr:g} seed={config.seed}",
        mininterval=0.5,
        leave=False,
    )

    def close_bin(step_end: int) -> None:
        nonlocal loss_sum, correct, seen, n_in_bin
        log["bin_ends"].append(step_end)
        log["loss"].append(loss_sum / n_in_bin)
        log["accuracy"].append(correct / seen)
        bar.set_postfix(loss=f"{log['loss'][-1]:.4f}", acc=f"{log['accuracy'][-1]:.3f}")
        loss_sum = correct = seen = n_in_bin = 0

    def evaluate(step_end: int) -> None:
        """Loss and accuracy on the whole test split (DeepOBS-style evaluation)."""
        model.eval()
        total = hits = n = 0
        with torch.no_grad():
            for x, y in task.test_batches():
                x, y = x.to(device), y.to(device)
                output = model(x)
                total += nn.functional.cross_entropy(output, y, reduction="sum").item()
                hits += (output.argmax(dim=1) == y).sum().item()
                n += len(y)
        model.train()
        for key, value in (("steps", step_end), ("loss", total / n), ("accuracy", hits / n)):
            log["test"][key].append(value)

    status = "finished"
    try:
        for step in range(first_step, config.steps):
            if stop.reason is not None:
                status = "preempted"
                if checkpoint is not None:
                    save_checkpoint()
                    log["checkpoint"] = str(checkpoint)
                log["stopped_by"] = stop.reason
                break
            x, y = task.next_batch()
            x, y = x.to(device), y.to(device)
            output = model(x)
            loss = loss_fn(output, y)
            value = loss.item()
            if not math.isfinite(value):
                status = "diverged"
                log.update(diverged_at_step=step, diverged_reason=f"loss {value}")
                break
            hits = (output.argmax(dim=1) == y).sum().item()
            try:
                learner.step(loss)
            except FloatingPointError as error:  # e.g. hesscale.optim.NonFiniteError
                status = "diverged"
                log.update(diverged_at_step=step, diverged_reason=str(error))
                break
            loss_sum += value  # measured before the update, counted once it succeeded
            correct += hits
            seen += len(y)
            n_in_bin += 1
            log["steps_done"] = step + 1
            bar.update()
            if n_in_bin == config.bin_size:
                close_bin(step + 1)
            if config.eval_every and (step + 1) % config.eval_every == 0:
                evaluate(step + 1)
        if n_in_bin:
            close_bin(log["steps_done"])
        if config.eval_every and status == "finished" and log["steps_done"] % config.eval_every:
            evaluate(log["steps_done"])
    except KeyboardInterrupt as error:
        log.update(status="interrupted", wall_time_s=elapsed + time.perf_counter() - start)
        error.partial_log = log  # type: ignore[attr-defined]
        raise
    finally:
        bar.close()
    wall_time = elapsed + time.perf_counter() - start
    log.update(status=status, wall_time_s=wall_time, finished_at=_now())
    return log


def default_out(config: RunConfig) -> Path:
    from hesscale.experiments.logs import run_path

    root = Path("runs") / config.task / config.network
    return run_path(root, config.learner, config.all_hyperparameters(), config.seed)


def run_and_log(
    config: RunConfig,
    out: str | Path,
    *,
    progress: bool = True,
    stop: StopFlag | None = None,
    force: bool = False,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Train unless ``out`` already holds a complete log; always leave a log at ``out``.

    A preempted run leaves its checkpoint at ``<out>.ckpt`` and continues from it next time.
    Returns the log, with ``"skipped": True`` when nothing was run.
    """
    from hesscale.experiments.logs import COMPLETE, read_log, write_json_atomic

    out = Path(out)
    checkpoint = out.with_name(out.name + ".ckpt")
    existing = read_log(out)
    if not force and existing is not None and existing.get("status") in COMPLETE:
        check_existing(config, existing, out)
        return {**existing, "skipped": True}
    if force:
        checkpoint.unlink(missing_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        log = train(config, progress=progress, stop=stop, checkpoint=checkpoint)
    except KeyboardInterrupt as error:
        partial = getattr(error, "partial_log", None)
        if partial is not None:
            write_json_atomic(out, {**partial, "command": command})
        raise
    except Exception as error:
        log = {
            "format": 1,
            "status": "failed",
            "learner": config.learner,
            "seed": config.seed,
            "hyperparameters": config.all_hyperparameters(),
            "config": asdict(config),
            "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc(),
            "finished_at": _now(),
        }
    log["command"] = command
    write_json_atomic(out, log)
    if log["status"] != "preempted":
        checkpoint.unlink(missing_ok=True)
    return log


# command line ---------------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _key_value(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    key, value = text.split("=", 1)
    return key.strip(), _parse_value(value.strip())


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace("x", ",").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 64,32, got '{text}'") from None


def configure(parser: argparse.ArgumentParser) -> None:
    from hesscale.experiments.learners import LEARNERS
    from hesscale.experiments.networks import NETWORKS

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__.split("\n", 1)[1]
    parser.add_argument(
        "--task",
        required=True,
        help="digits, mnist, emnist, cifar10 or cifar100, each also as <name>-input-permuted "
        "and <name>-label-permuted",
    )
    parser.add_argument("--network", required=True, help=", ".join(NETWORKS))
    parser.add_argument("--learner", required=True, choices=list(LEARNERS))
    parser.add_argument("--lr", required=True, type=float, help="step size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--change-freq",
        type=int,
        default=None,
        help="steps per permutation (default: 5000 input-, 2500 label-permuted)",
    )
    parser.add_argument("--bin-size", type=int, default=100, help="steps averaged per log point")
    parser.add_argument(
        "--eval-every", type=int, default=None, help="evaluate on the test split every N steps"
    )
    parser.add_argument("--hidden", type=_int_list, default=None, help="fc hidden sizes: 64,32")
    parser.add_argument(
        "--opt",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another optimizer hyperparameter, e.g. --opt beta2=0.99 (repeatable)",
    )
    parser.add_argument("--out", default=None, help="log path (default: runs/TASK/NETWORK/...)")
    parser.add_argument("--data-dir", default=None, help="dataset folder ($HESSCALE_DATA_DIR)")
    parser.add_argument("--download", action="store_true", help="download a missing dataset")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--force", action="store_true", help="rerun even if the log is complete")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        task=args.task,
        network=args.network,
        learner=args.learner,
        lr=args.lr,
        seed=args.seed,
        steps=args.steps,
        batch_size=args.batch_size,
        change_freq=args.change_freq,
        bin_size=args.bin_size,
        eval_every=args.eval_every,
        hidden=args.hidden,
        hyperparameters=dict(args.opt),
        data_dir=args.data_dir,
        download=args.download,
        device=args.device,
    )


def main(args: argparse.Namespace) -> int:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    config = config_from_args(args)
    out = Path(args.out) if args.out else default_out(config)
    stop = StopFlag()
    previous = stop.install()
    command = ["hesscale", "run", *sys.argv[2:]] if sys.argv[1:2] == ["run"] else None
    try:
        log = run_and_log(
            config, out, progress=not args.no_progress, stop=stop, force=args.force, command=command
        )
    except StaleLogError as error:
        print(f"hesscale run: {error}", file=sys.stderr)
        return 2
    finally:
        stop.restore(previous)
    status = log["status"]
    if log.get("skipped"):
        print(f"{out}: already {status}, skipped (use --force to run again)")
        return 0
    if status == "failed":
        if not log["error"].startswith(("DatasetNotFoundError", "ValueError")):
            print(log["traceback"], file=sys.stderr)  # a bug, not a bad setting: show where
        print(f"hesscale run: {log['error']} (log: {out})", file=sys.stderr)
        return EXIT_FAILED
    summary = f"{out}: {status} after {log['steps_done']} steps in {log['wall_time_s']:.1f} s"
    if log["loss"]:
        summary += f", last loss {log['loss'][-1]:.4f}, accuracy {log['accuracy'][-1]:.3f}"
    print(summary)
    return EXIT_PREEMPTED if status == "preempted" else 0
