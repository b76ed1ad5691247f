"""``hesscale run``: one training run (task x network x learner x seed) -> one JSON log.

Loss and accuracy are measured online (each batch before the update on it) and averaged over
bins of ``--bin-size`` steps; ``--eval-every N`` adds loss and accuracy on the held-out test
split every N steps (and at the end). A NaN or infinite loss ends the run with status
``diverged``; SIGUSR1/SIGTERM (a scheduler's warning) end it with status ``preempted``, a
checkpoint next to the log (``<log>.ckpt``) and exit code 3, so a job script can requeue it;
started again, it continues from the checkpoint exactly. An exception leaves status ``failed``
with its traceback. A run whose log is already complete is skipped unless ``--force``.

Tasks, networks and learners are built-in names or your own, by import path:
``--network mypkg.nets:wide_mlp``, ``--learner torch.optim:RMSprop``, ``--task
path/to/tasks.py:my_stream``, each optionally labelled (``--learner rms=torch.optim:RMSprop``).
Modules are searched in the working directory, ``--pythonpath`` and PYTHONPATH. What each must
be: hesscale.experiments.tasks.TaskFactory, networks.NetworkFactory, learners.LearnerSpec.

Reinforcement learning: ``--task rl:<gymnasium id>`` (e.g. rl:Hopper-v5, rl:Pendulum-v1) with
an actor-critic network (``--network actor_critic_tanh``) runs PPO, or A2C with ``--task-opt
algo=a2c``; ``--steps`` and ``--bin-size`` then count environment steps and the log holds the
return of every episode (hesscale.experiments.rl; needs the ``rl`` extra).
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
from typing import TYPE_CHECKING, Any

import torch

from hesscale.errors import ComponentError
from hesscale.experiments.trainer import StopFlag, Trainer, now

EXIT_PREEMPTED = 3
EXIT_FAILED = 1
EXIT_BAD_ARGUMENTS = 2
DEFAULT_OUT_ROOT = Path("runs")

if TYPE_CHECKING:
    from hesscale.experiments.components import Resolved


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
    task_options: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the task
    network_options: dict[str, Any] = field(default_factory=dict)  # ... and of the network
    pythonpath: list[str] = field(default_factory=list)  # folders to import components from

    def all_hyperparameters(self) -> dict[str, Any]:
        return {"lr": self.lr, **self.hyperparameters}

    def network_kwargs(self) -> dict[str, Any]:
        """The network factory's options (``hidden`` among them, if given)."""
        hidden = {"hidden": tuple(self.hidden)} if self.hidden is not None else {}
        return {**self.network_options, **hidden}

    def experiment(self) -> dict[str, Any]:
        """What determines the results (not where data and code live or which device runs)."""
        skip = ("data_dir", "download", "device", "pythonpath")
        return {k: v for k, v in asdict(self).items() if k not in skip}

    def components(self) -> Components:
        """The task, network and learner, looked up and checked (ComponentError if one
        cannot be used: see hesscale.experiments.components)."""
        from hesscale.experiments.components import put_on_sys_path
        from hesscale.experiments.learners import LEARNERS
        from hesscale.experiments.networks import NETWORKS, check_network_options
        from hesscale.experiments.tasks import TASKS, check_task_options

        put_on_sys_path([str(Path(p).resolve()) for p in self.pythonpath])
        task = TASKS.resolve(self.task)
        check_task_options(task.value, f"task '{task.target}'", self.task_options)
        network = NETWORKS.resolve(self.network)
        check_network_options(network.value, f"network '{network.target}'", self.network_kwargs())
        return Components(task, network, LEARNERS.resolve(self.learner))

    def validate(self) -> Components:
        """Raise ValueError naming the first setting that cannot run (a task, network or
        learner that cannot be found or used, an option it does not take, counts below 1,
        lr <= 0, ...), before anything is loaded or written; returns the components. What
        only the data can tell (a missing dataset, no test split) is found when it loads.
        """
        from hesscale.experiments.learners import check_learner

        if self.hidden is not None and (
            not self.hidden or not all(isinstance(h, int) and h >= 1 for h in self.hidden)
        ):
            raise ValueError(f"hidden sizes must be integers >= 1, got {list(self.hidden)}.")
        parts = self.components()
        for name in ("steps", "batch_size", "bin_size", "change_freq", "eval_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value!r}.")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"--seed must be a non-negative integer, got {self.seed!r}.")
        if not isinstance(self.lr, int | float) or not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"--lr must be a finite number > 0, got {self.lr!r}.")
        check_learner(parts.learner.value, self.all_hyperparameters(), parts.learner.label)
        try:
            resolve_device(self.device)
        except (RuntimeError, ValueError) as error:
            raise ValueError(
                f"--device {self.device!r} is not a device: use auto, cpu, cuda or cuda:N "
                f"({error})."
            ) from None
        return parts


@dataclass(frozen=True)
class Components:
    """A run's task, network and learner, looked up (hesscale.experiments.components)."""

    task: Resolved
    network: Resolved
    learner: Resolved


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


def build_trainer(
    config: RunConfig,
    *,
    progress: bool = True,
    stop: StopFlag | None = None,
    checkpoint: Path | None = None,
    ranks: Any = None,
) -> Trainer:
    """The Trainer of ``config``: its task, network and learner, seeded by ``config.seed``;
    with ``ranks`` (hesscale.experiments.parallel.Ranks) one rank of a data-parallel run.

    Raises ComponentError if a factory builds the wrong kind of object or the learner cannot
    train the network; other exceptions (a missing dataset, a bug in a factory) propagate."""
    from hesscale.experiments.learners import Learner
    from hesscale.experiments.networks import check_network
    from hesscale.experiments.supervised import SupervisedLearning
    from hesscale.experiments.tasks import TaskSettings, check_task, default_data_dir

    parts = config.components()
    device = resolve_device(config.device)
    if ranks is not None:
        from hesscale.experiments import parallel

        device = parallel.start(ranks, device)
    torch.manual_seed(config.seed)
    settings = TaskSettings(
        name=parts.task.target,
        batch_size=config.batch_size,
        seed=config.seed,
        change_freq=config.change_freq,
        data_dir=config.data_dir or default_data_dir(),
        download=config.download,
    )
    what = f"task '{parts.task.target}'"
    task = check_task(parts.task.value(settings, **config.task_options), what)
    if config.eval_every:  # fail now, not at the first evaluation, if there is no test split
        if hasattr(task, "test_split"):
            task.test_split()
        elif not hasattr(task, "test_batches"):
            raise ValueError(f"Task '{parts.task.label}' has no test_batches() (--eval-every).")
    shape = tuple(task.input_shape)
    what = f"network '{parts.network.target}'"
    options = config.network_kwargs()
    try:
        model = parts.network.value(shape, task.n_outputs, **options)
    except Exception as error:  # a factory that cannot build for this task: not the data's fault
        call = ", ".join([f"input_shape={shape}", f"n_outputs={task.n_outputs}"])
        call += "".join(f", {k}={v!r}" for k, v in options.items())
        raise ComponentError(
            f"{what} raised {type(error).__name__} when called as factory({call}): {error}"
        ) from error
    model = check_network(model, what)
    learner = Learner(
        parts.learner.value,
        model.parameters(),
        label=parts.learner.label,
        **config.all_hyperparameters(),
    )
    make_stepper = getattr(task, "make_stepper", None)
    if make_stepper is not None:  # a task with its own kind of learning
        if ranks is not None:
            raise ValueError(f"Task '{parts.task.label}' does not run data-parallel (torchrun).")
        stepper = make_stepper(model, learner, device)
    else:
        stepper = SupervisedLearning(task, model, learner, device, ranks)
    described = task.describe() if callable(getattr(task, "describe", None)) else {}
    header = {
        "task": {
            **described,
            "name": parts.task.label,
            "input_shape": list(shape),
            "n_outputs": task.n_outputs,
        },
        "network": parts.network.label,
        "learner": parts.learner.label,
        "hyperparameters": config.all_hyperparameters(),
        "seed": config.seed,
        "components": {
            kind: resolved.path or resolved.target
            for kind, resolved in (
                ("task", parts.task),
                ("network", parts.network),
                ("learner", parts.learner),
            )
        },
        "config": asdict(config),
    }
    # a step that consumes several units of --steps (an RL rollout: environment steps)
    per_step = getattr(stepper, "units_per_step", 1)
    unit = getattr(stepper, "unit", "steps")
    if config.steps < per_step:
        raise ValueError(
            f"--steps {config.steps} is less than one step of task '{parts.task.label}' "
            f"({per_step} {unit})."
        )
    if per_step != 1:  # the log says how to read steps_done in what --steps counts
        header["step_unit"] = {"unit": unit, "per_step": per_step}
    return Trainer(
        stepper,
        steps=config.steps // per_step,
        bin_size=max(1, config.bin_size // per_step),
        eval_every=config.eval_every,
        header=header,
        experiment=config.experiment(),
        device=device,
        checkpoint=checkpoint,
        stop=stop,
        progress=progress,
        description=f"{parts.learner.label} lr={config.lr:g} seed={config.seed}",
        ranks=ranks,
    )


def trial_build(config: RunConfig) -> None:
    """Build ``config``'s trainer without running it, to find a component of the wrong kind
    before any run starts (ComponentError). What only a run can report (a missing dataset, a
    factory that raises) is left to the run, which logs it; torch's random state is kept."""
    with torch.random.fork_rng(devices=[]):
        try:
            build_trainer(config, progress=False)
        except ComponentError:
            raise
        except Exception:
            pass


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
    return build_trainer(config, progress=progress, stop=stop, checkpoint=checkpoint).run()


def default_out(config: RunConfig) -> Path:
    """runs/TASK/NETWORK/LEARNER/CONFIG/seed_N.json (``runs/`` is ignored by git), named by
    the components' labels (characters other than letters, digits, '.', '-' and '_' as '_';
    a file by its name only)."""
    from hesscale.experiments.components import split_label
    from hesscale.experiments.logs import run_path, safe_name

    def folder(reference: str) -> str:  # a file's name, not its whole path
        location, colon, attribute = split_label(reference)[0].rpartition(":")
        short = f"{Path(location).name}{colon}{attribute}" if location.endswith(".py") else None
        return safe_name(short or split_label(reference)[0])

    task, network, learner = map(folder, (config.task, config.network, config.learner))
    root = DEFAULT_OUT_ROOT / task / network
    return run_path(root, learner, config.all_hyperparameters(), config.seed)


# errors that come from the settings or the data, not from a bug: reported without a traceback
USER_ERRORS = ("DatasetNotFoundError", "ValueError", "MissingExtraError")


def run_and_log(
    config: RunConfig,
    out: str | Path,
    *,
    progress: bool = True,
    stop: StopFlag | None = None,
    force: bool = False,
    command: list[str] | None = None,
    log_missing_data: bool = True,
) -> dict[str, Any]:
    """Train unless ``out`` already holds a complete log; leave a log at ``out``.

    Data that is not there (DatasetNotFoundError while setting up) is logged as a failed run,
    as in a sweep, or raised with nothing written (``log_missing_data=False``, ``hesscale
    run``).

    Settings that cannot run raise ValueError before anything is written (``validate``).
    A preempted run leaves its checkpoint at ``<out>.ckpt`` and continues from it next time.
    Returns the log, with ``"skipped": True`` when nothing was run.

    Launched by torchrun (WORLD_SIZE > 1), the run is data-parallel over the ranks
    (hesscale.experiments.parallel) and rank 0 alone writes the log and the checkpoint.
    """
    from hesscale.experiments import parallel
    from hesscale.experiments.logs import COMPLETE, read_log, write_json_atomic

    config.validate()
    ranks = parallel.from_environment()
    if ranks is not None and config.batch_size % ranks.world:
        raise ValueError(
            f"--batch-size {config.batch_size} does not split evenly over the {ranks.world} "
            "processes torchrun started; use a multiple of their number."
        )
    out = Path(out)
    checkpoint = out.with_name(out.name + ".ckpt")
    existing = read_log(out)
    if not force and existing is not None and existing.get("status") in COMPLETE:
        check_existing(config, existing, out)
        return {**existing, "skipped": True}
    if ranks is not None and not ranks.writes:  # trains alongside rank 0, writes nothing
        try:
            trainer = build_trainer(config, progress=False, stop=stop, ranks=ranks)
            trainer.checkpoint = None if force else checkpoint  # read, never written here
            return {**trainer.run(), "rank": ranks.rank}
        finally:
            parallel.finish()
    if force:
        checkpoint.unlink(missing_ok=True)
    try:
        trainer = build_trainer(
            config, progress=progress, stop=stop, checkpoint=checkpoint, ranks=ranks
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        log = trainer.run()
    except ComponentError:
        raise  # a task, network or learner that cannot be used: nothing is written
    except FileNotFoundError as error:
        if log_missing_data or type(error).__name__ != "DatasetNotFoundError":
            log = failed_log(config, error)
        else:
            raise
    except KeyboardInterrupt as error:
        partial = getattr(error, "partial_log", None)
        if partial is not None:
            write_json_atomic(out, {**partial, "command": command})
        raise
    except Exception as error:
        log = failed_log(config, error)
    finally:
        if ranks is not None:
            parallel.finish()
    log["command"] = command
    write_json_atomic(out, log)
    if log["status"] != "preempted":
        checkpoint.unlink(missing_ok=True)
    return log


def failed_log(config: RunConfig, error: Exception) -> dict[str, Any]:
    """The log of a run that raised ``error`` (call it in the ``except`` block)."""
    from hesscale.experiments.components import split_label

    return {
        "format": 1,
        "status": "failed",
        "learner": split_label(config.learner)[0],
        "seed": config.seed,
        "hyperparameters": config.all_hyperparameters(),
        "config": asdict(config),
        "error": f"{type(error).__name__}: {error}",
        "message": str(error),
        "traceback": traceback.format_exc(),
        "finished_at": now(),
    }


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

    own = "; or your own: package.module:attribute or file.py:attribute (LABEL=... names it)"
    parser.description = __doc__.split("\n", 1)[1]
    parser.add_argument(
        "--task",
        required=True,
        help=f"{', '.join(DATASETS)}, each also as <name>-input-permuted and "
        f"<name>-label-permuted{own}",
    )
    parser.add_argument("--network", required=True, help=", ".join(NETWORKS) + own)
    parser.add_argument(
        "--learner",
        required=True,
        help=", ".join(LEARNERS) + "; or any optimizer class, or a learner of your own: "
        "package.module:attribute or file.py:attribute (LABEL=... names it)",
    )
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
        "--task-opt",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the task, e.g. --task-opt normalize=unit (repeatable)",
    )
    parser.add_argument(
        "--network-opt",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the network's factory, e.g. --network-opt width=128 (repeatable)",
    )
    parser.add_argument(
        "--pythonpath",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder to import your components from, as PYTHONPATH (repeatable)",
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
        task_options=dict(args.task_opt),
        network_options=dict(args.network_opt),
        pythonpath=list(args.pythonpath),
    )


def show_cause(error: Exception) -> None:
    """Print the traceback of what a ComponentError comes from, when that is the user's code
    raising (an import, a factory), so that they see where."""
    cause = error.__cause__
    if isinstance(error, ComponentError) and cause is not None:
        traceback.print_exception(cause, file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    try:
        config.validate()
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}.")
    except ValueError as error:
        show_cause(error)
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
            config,
            out,
            progress=not args.no_progress,
            stop=stop,
            force=args.force,
            command=command,
            log_missing_data=False,
        )
    except (StaleLogError, ComponentError, ValueError) as error:  # before anything ran
        show_cause(error)
        print(f"hesscale run: {error}", file=sys.stderr)
        return EXIT_BAD_ARGUMENTS
    except FileNotFoundError as error:  # the data is not there: nothing was written
        print(f"hesscale run: {error}", file=sys.stderr)
        return EXIT_FAILED
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
    if log.get("rank", 0):  # another rank of a data-parallel run: rank 0 reports
        return EXIT_PREEMPTED if log["status"] == "preempted" else 0
    status = log["status"]
    if log.get("skipped"):
        print(f"{out}: already {status}, skipped (use --force to run again)")
        return 0
    if status == "failed":
        if not log["error"].startswith(USER_ERRORS):
            print(log["traceback"], file=sys.stderr)  # a bug, not a bad setting: show where
        print(f"hesscale run: {log['message']} (log: {out})", file=sys.stderr)
        return EXIT_FAILED
    done = f"{log['steps_done']} steps"
    if log.get("step_unit"):  # e.g. RL: --steps counts environment steps, a step is a rollout
        per_step, unit = log["step_unit"]["per_step"], log["step_unit"]["unit"]
        done = f"{log['steps_done'] * per_step} {unit} ({log['steps_done']} updates)"
    summary = f"{out}: {status} after {done} in {log['wall_time_s']:.1f} s"
    if log.get("loss"):
        summary += f", last loss {log['loss'][-1]:.4f}, accuracy {log['accuracy'][-1]:.3f}"
    returns = [r for r in log.get("return", []) if r is not None and math.isfinite(r)]
    if returns:  # an RL run
        summary += f", last return {returns[-1]:.1f} ({len(log['episodes']['return'])} episodes)"
    print(summary)
    return EXIT_PREEMPTED if status == "preempted" else 0
