"""Reinforcement learning with the experiments' learners: PPO and A2C for continuous actions
on gymnasium environments (MuJoCo through the ``mujoco`` package; classic control such as
Pendulum-v1), run by ``hesscale run --task rl:<id> --network actor_critic_tanh ...`` (A2C:
``--task-opt algo=a2c``) and swept and plotted like any run.

Modules, each one piece:

- ``returns``: GAE and n-step returns;
- ``losses``: the Gaussian log-likelihood, PPO's and A2C's losses, written in plain torch;
- ``policy``: Gaussian actor-critic networks (separate or shared trunk);
- ``normalize``: running observation / reward normalisation;
- ``envs``: gymnasium behind a small interface, with the episode log and checkpoint state;
- ``rollout``: collecting transitions; ``update``: one optimizer step for any learner
  (``hesscale.backward`` for AdaHesScale / AdaHesScaleGN);
- ``options``, ``algorithms``: PPO and A2C as steppers of the Trainer; ``task``: the task
  family ``rl:*`` that brings them to ``hesscale run``;
- ``plot``: return curves, sensitivity and tables for ``hesscale plot``.

gymnasium, mujoco (and stable-baselines3, for the example that uses AdaHesScale inside it)
come with the ``rl`` extra: ``pip install -e ".[rl]"``. Nothing outside this package imports
it, and nothing here imports gymnasium until an environment is made.
"""
