"""``hesscale sweep SPEC``: a grid of runs from a TOML spec: command lists, SLURM, or local.

Modules: ``spec`` (read and check a spec), ``plan`` (its runs, their commands and status),
``local`` (run them here, in a process pool), ``slurm`` (job-array scripts), ``cli``.

SPEC is a TOML file, or the name of a spec shipped with hesscale (``hesscale sweep --list``).
It writes, under the output folder (default ``results/<spec name>``):

  commands/<learner>.txt     one ``hesscale run ...`` command per line
  slurm/<learner>.sh         a SLURM job array over that list (sbatch it)
  slurm/submit_all.sh        sbatch for every learner
  logs/<learner>/<config>/seed_<s>.json   the run logs

``--jobs N`` also runs the pending commands here, N at a time. Sweeps resume: complete runs
(finished or diverged) are skipped, everything else runs again; failed runs are listed with
their traceback (``--status`` shows where a sweep stands without running anything).

A spec::

    name = "digits_small"          # output folder name
    task = "digits-label-permuted" # see hesscale.experiments.tasks
    network = "fc_relu_small"      # see hesscale.experiments.networks
    steps = 500
    batch_size = 16
    change_freq = 100              # permuted tasks only
    bin_size = 25
    # eval_every = 500             # test-split loss/accuracy every 500 steps (not digits)
    seeds = 3                      # 3 means [0, 1, 2]; or a list
    # hidden = [64, 32]            # fc networks: hidden sizes
    # task_options = { normalize = "unit" }     # keyword arguments of the task's factory
    # network_options = { width = 64 }         # ... and of the network's

    [learners.adam]                # every list is a grid axis; scalars are fixed
    lr = [1e-3, 1e-2]
    beta2 = 0.999

    [learners.rmsprop]             # any optimizer class, or a learner of your own
    learner = "torch.optim:RMSprop"
    lr = [1e-3, 1e-2]

    [slurm]                        # defaults for the --time, --mem, ... options below
    time = "01:00:00"

Reinforcement learning: task = "rl:Hopper-v5", network = "actor_critic_tanh", task_options =
{ algo = "ppo" } (or "a2c", with the algorithm's options); steps and bin_size then count
environment steps (hesscale.experiments.rl; the paper_* and rl_* specs).

task, network and learner may be your own: "package.module:attribute" (searched in the
spec's folder, the working directory and PYTHONPATH) or "path/to/file.py:attribute" (relative
to the spec's folder), "LABEL=..." to name it; see examples/custom_components.toml.
"""
