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
import sys
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from hesscale.experiments.trainer import StopFlag, Trainer, now

EXIT_PREEMPTED = 3
EXIT_FAILED = 1
EXIT_BAD_ARGUMENTS = 2
DEFAULT_OUT_ROOT = Path("runs")


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

    def validate(self) -> None:
        """Raise ValueError naming the first setting that cannot run (unknown task, network or
        learner option, counts below 1, lr <= 0, ...), before anything is loaded or written.
        What only the data can tell (a missing dataset, no test split) is found when it loads.
        """
        from hesscale.experiments.learners import check_learner
        from hesscale.experiments.networks import check_network
        from hesscale.experiments.tasks import parse_task_name

        parse_task_name(self.task)
        check_network(self.network, self.hidden)
        for name in ("steps", "batch_size", "bin_size", "change_freq", "eval_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value!r}.")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"--seed must be a non-negative integer, got {self.seed!r}.")
        if not isinstance(self.lr, int | float) or not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"--lr must be a finite number > 0, got {self.lr!r}.")
        check_learner(self.learner, self.all_hyperparameters())
        try:
            resolve_device(self.device)
        except (RuntimeError, ValueError) as error:
            raise ValueError(
                f"--device {self.device!r} is not a device: use auto, cpu, cuda or cuda:N "
                f"({error})."
            ) from None


class StaleLogError(ValueError):
    """A complete log at the output path that was made with a different configuration."""


def check_existing(
    config: RunConfig, log: dict[str, Any], out: str | Path, elsewhere: str = "--out"
) -> None:
    """Raise StaleLogError if ``log`` (complete, at ``out``) is not a run of ``config``;
    ``elsewhere`` is the option that writes to another place."""
    theirs = RunConfig(**log.get("config", {})).experiment() if "config" in log else {}
    ours = json.loads(json.dumps(config.experiment()))  # as it reads back from JSON
    differ = sorted(k for k in ours if theirs.get(k) != ours[k])
    if differ:
        shown = ", ".join(f"{k}: {theirs.get(k)!r} there, {ours[k]!r} now" for k in differ)
        raise StaleLogError(
            f"{out} holds a complete run with other settings ({shown}). Write to another "
            f"place ({elsewhere}) or pass --force to overwrite it."
        )


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def supervised_trainer(
    config: RunConfig,
    *,
    progress: bool = True,
    stop: StopFlag | None = None,
    checkpoint: Path | None = None,
) -> Trainer:
    """The Trainer of ``config``: its task, network and learner, seeded by ``config.seed``."""
    from hesscale.experiments.learners import Learner
    from hesscale.experiments.networks import build_network
    from hesscale.experiments.supervised import SupervisedLearning
    from hesscale.experiments.tasks import Task

    device = resolve_device(config.device)
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
    learner = Learner(config.learner, model.parameters(), **config.all_hyperparameters())
    header = {
        "task": task.describe(),
        "network": config.network,
        "learner": config.learner,
        "hyperparameters": config.all_hyperparameters(),
        "seed": config.seed,
        "config": asdict(config),
    }
    return Trainer(
        SupervisedLearning(task, model, learner, device),
        steps=config.steps,
        bin_size=config.bin_size,
        eval_every=config.eval_every,
        header=header,
        experiment=config.experiment(),
        device=device,
        checkpoint=checkpoint,
        stop=stop,
        progress=progress,
        description=f"{config.learner} lr={config.lr:g} seed={config.seed}",
    )


def train(
    config: RunConfig,
    *,
    progress: bool = True,
    stop: StopFlag | None = None,
    checkpoint: Path | None = None,
) -> dict[str, Any]:
    """Run ``config``; return its log (status finished, diverged or preempted).

    With ``checkpoint``, a preempted run saves its whole state there, and a run that finds a
    checkpoint of the same configuration continues from it (see hesscale.experiments.trainer).
    """
    config.validate()
    return supervised_trainer(config, progress=progress, stop=stop, checkpoint=checkpoint).run()


def default_out(config: RunConfig) -> Path:
    """runs/TASK/NETWORK/LEARNER/CONFIG/seed_N.json (``runs/`` is ignored by git)."""
    from hesscale.experiments.logs import run_path

    root = DEFAULT_OUT_ROOT / config.task / config.network
    return run_path(root, config.learner, config.all_hyperparameters(), config.seed)


# errors that come from the settings or the data, not from a bug: reported without a traceback
USER_ERRORS = ("DatasetNotFoundError", "ValueError")


def run_and_log(
    config: RunConfig,
    out: str | Path,
    *,
    progress: bool = True,
    stop: StopFlag | None = None,
    force: bool = False,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Train unless ``out`` already holds a complete log; leave a log at ``out``.

    Settings that cannot run raise ValueError before anything is written (``validate``).
    A preempted run leaves its checkpoint at ``<out>.ckpt`` and continues from it next time.
    Returns the log, with ``"skipped": True`` when nothing was run.
    """
    from hesscale.experiments.logs import COMPLETE, read_log, write_json_atomic

    config.validate()
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
            "message": str(error),
            "traceback": traceback.format_exc(),
            "finished_at": now(),
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
    from hesscale.experiments.tasks import DATASETS

    parser.description = __doc__.split("\n", 1)[1]
    parser.add_argument(
        "--task",
        required=True,
        help=f"{', '.join(DATASETS)}, each also as <name>-input-permuted and <name>-label-permuted",
    )
    parser.add_argument("--network", required=True, help=", ".join(NETWORKS))
    parser.add_argument("--learner", required=True, choices=list(LEARNERS))
    parser.add_argument("--lr", required=True, type=float, help="step size (> 0)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (data order and init)")
    parser.add_argument("--steps", type=int, default=1000, help="mini-batches to learn from")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per step")
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
    parser.add_argument(
        "--hidden", type=_int_list, default=None, help="hidden sizes of fc_* networks, e.g. 64,32"
    )
    parser.add_argument(
        "--opt",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another optimizer hyperparameter, e.g. --opt beta2=0.99 (repeatable)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help=f"log path (default: {DEFAULT_OUT_ROOT}/TASK/NETWORK/LEARNER/CONFIG/seed_N.json)",
    )
    parser.add_argument(
        "--data-dir", default=None, help="dataset folder (default: $HESSCALE_DATA_DIR or data)"
    )
    parser.add_argument("--download", action="store_true", help="download a missing dataset")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
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
    config = config_from_args(args)
    try:
        config.validate()
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}.")
    except ValueError as error:
        print(f"hesscale run: {error}", file=sys.stderr)
        return EXIT_BAD_ARGUMENTS
    if args.threads:
        torch.set_num_threads(args.threads)
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
        return EXIT_BAD_ARGUMENTS
    except KeyboardInterrupt:
        where = f"; {out} records how far it got" if out.exists() else ""
        print(
            f"\nhesscale run: interrupted (Ctrl-C){where}. Run the same command again to start "
            "the run over.",
            file=sys.stderr,
        )
        return 130
    finally:
        stop.restore(previous)
    status = log["status"]
    if log.get("skipped"):
        print(f"{out}: already {status}, skipped (use --force to run again)")
        return 0
    if status == "failed":
        if not log["error"].startswith(USER_ERRORS):
            print(log["traceback"], file=sys.stderr)  # a bug, not a bad setting: show where
        print(f"hesscale run: {log['message']} (log: {out})", file=sys.stderr)
        return EXIT_FAILED
    summary = f"{out}: {status} after {log['steps_done']} steps in {log['wall_time_s']:.1f} s"
    if log["loss"]:
        summary += f", last loss {log['loss'][-1]:.4f}, accuracy {log['accuracy'][-1]:.3f}"
    print(summary)
    return EXIT_PREEMPTED if status == "preempted" else 0
