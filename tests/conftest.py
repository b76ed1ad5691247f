"""Suite-wide settings. The brute-force oracles run thousands of tiny operations, for which
extra intra-op threads only spin (10x slower wall time on 2 cores), so the tests use one."""

import torch

torch.set_num_threads(1)
