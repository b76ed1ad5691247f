"""Computational cost of HesScale and the alternatives; the same as ``hesscale cost``.

python benchmarks/cost.py --model mlp --widths 512 --threads 1 2
python benchmarks/cost.py --model cnn --device cuda
"""

import sys

from hesscale.cli import main

if __name__ == "__main__":
    sys.exit(main(["cost", *sys.argv[1:]]))
