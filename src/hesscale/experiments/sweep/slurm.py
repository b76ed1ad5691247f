"""SLURM: one job-array script per learner over its command list, and submit_all.sh."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hesscale.experiments.sweep.plan import PlannedRun

SLURM_DEFAULTS: dict[str, Any] = {
    "time": "03:00:00",
    "mem": "2G",
    "cpus": None,  # default: --threads
    "gpus": 0,
    "account": None,
    "partition": None,
    "env": [],
    "max_parallel": None,
    "signal_warning": 120,
    "requeue": True,
    "extra": [],
}


def _write(path: Path, text: str, executable: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if executable:
        path.chmod(0o755)


def slurm_script(
    name: str, learner: str, commands: Path, n_tasks: int, workdir: Path, options: dict[str, Any]
) -> str:
    """A SLURM job-array script: task i runs line i+1 of ``commands``."""
    out_dir = commands.parent.parent / "slurm" / "out"
    cpus = options["cpus"] or 1
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={name}-{learner}",
        f"#SBATCH --array=0-{n_tasks - 1}"
        + (f"%{options['max_parallel']}" if options["max_parallel"] else ""),
        f"#SBATCH --time={options['time']}",
        f"#SBATCH --mem={options['mem']}",
        f"#SBATCH --cpus-per-task={cpus}",
        f"#SBATCH --output={out_dir}/{learner}_%A_%a.out",
        # the warning signal goes to this script (B:), which passes it on to the run
        f"#SBATCH --signal=B:USR1@{options['signal_warning']}",
    ]
    if options["gpus"]:
        lines.append(f"#SBATCH --gres=gpu:{options['gpus']}")
    if options["account"]:
        lines.append(f"#SBATCH --account={options['account']}")
    if options["partition"]:
        lines.append(f"#SBATCH --partition={options['partition']}")
    if options["requeue"]:
        lines.append("#SBATCH --requeue")
    lines += [f"#SBATCH {extra}" for extra in options["extra"]]
    lines += [
        "",
        f"# {n_tasks} runs of learner {learner}; array task i runs line i+1 of the command list.",
        "set -uo pipefail",
        f"cd {shlex.quote(str(workdir))}",
        *options["env"],
        f"COMMANDS={shlex.quote(str(commands))}",
        "LINE=$(( ${SLURM_ARRAY_TASK_ID:?run this as a SLURM array task} + 1 ))",
        'COMMAND=$(sed -n "${LINE}p" "$COMMANDS")',
        'if [ -z "$COMMAND" ]; then',
        '    echo "no command on line $LINE of $COMMANDS" >&2',
        "    exit 2",
        "fi",
        'echo "array task $SLURM_ARRAY_TASK_ID: $COMMAND"',
        'eval "ARGV=($COMMAND)"',
        '"${ARGV[@]}" &',
        "CHILD=$!",
        "trap 'kill -USR1 \"$CHILD\" 2>/dev/null' USR1",
        "trap 'kill -TERM \"$CHILD\" 2>/dev/null' TERM",
        'wait "$CHILD"',
        "STATUS=$?",
        'while kill -0 "$CHILD" 2>/dev/null; do  # a trapped signal interrupted wait',
        '    wait "$CHILD"',
        "    STATUS=$?",
        "done",
    ]
    if options["requeue"]:
        lines += [
            'if [ "$STATUS" -eq 3 ]; then  # preempted (the log says so): back into the queue',
            '    scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
            "fi",
        ]
    lines += ['exit "$STATUS"', ""]
    return "\n".join(lines)


def write_files(
    spec: dict[str, Any],
    runs: dict[str, list[PlannedRun]],
    out_dir: Path,
    prefix: str,
    slurm: dict[str, Any],
) -> list[Path]:
    """Command lists, SLURM scripts and submit_all.sh; returns the SLURM scripts."""
    out_dir = out_dir.absolute()
    scripts = []
    for learner, learner_runs in runs.items():
        commands = out_dir / "commands" / f"{learner}.txt"
        _write(commands, "".join(f"{prefix} {shlex.join(r.argv)}\n" for r in learner_runs))
        script = out_dir / "slurm" / f"{learner}.sh"
        text = slurm_script(spec["name"], learner, commands, len(learner_runs), Path.cwd(), slurm)
        _write(script, text, executable=True)
        scripts.append(script)
    (out_dir / "slurm" / "out").mkdir(parents=True, exist_ok=True)
    submit = [
        "#!/bin/bash",
        "set -euo pipefail",
        *(f"sbatch {shlex.quote(str(s))}" for s in scripts),
    ]
    _write(out_dir / "slurm" / "submit_all.sh", "\n".join(submit) + "\n", executable=True)
    return scripts
