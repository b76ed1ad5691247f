"""Experiments: data, tasks, networks, runs, sweeps and the studies. Nothing imports this.

They need the ``experiments`` extra (numpy, tqdm, matplotlib, scikit-learn) besides the
library's own torch and BackPACK: ``pip install "hesscale[experiments]"``.
"""

from importlib.util import find_spec

EXTRA = {"numpy": "numpy", "tqdm": "tqdm", "matplotlib": "matplotlib", "sklearn": "scikit-learn"}

_missing = [module for module in EXTRA if find_spec(module) is None]
if _missing:
    raise ModuleNotFoundError(
        f"hesscale.experiments needs {', '.join(EXTRA[m] for m in _missing)}, from hesscale's "
        "'experiments' extra: pip install \"hesscale[experiments]\" (from a checkout: "
        'pip install -e ".[dev]")',
        name=_missing[0],
    )
