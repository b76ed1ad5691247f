"""Experiments: data, tasks, networks, runs, sweeps and the studies. Nothing imports this."""
