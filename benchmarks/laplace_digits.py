"""Diagonal Laplace on scikit-learn's digits: hesscale's backends vs laplace-torch's own.

One MLP (and one residual MLP) is trained to its MAP estimate once; then each backend fits a
diagonal Laplace approximation over all weights on the training split (each in a fresh
process, so that its peak memory is its own), its prior precision is tuned by laplace-torch's
marginal likelihood, or by a grid search for the lowest NLL on the validation split (the same
two procedures for every backend), and the GLM predictive (probit) is scored on the held-out
test split: NLL, ECE (15 bins), accuracy. Time is the wall time of ``fit``; memory is the
growth of the process's peak resident set during ``fit`` (CPU); "diagonal vs exact" is
||H - H_exact|| / ||H_exact|| against laplace-torch's exact GGN diagonal (CurvlinopsGGN).
Run from the repository root:

    OMP_NUM_THREADS=1 python benchmarks/laplace_digits.py            # the table (a few minutes)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from digits_mlp import digits_splits
from torch import nn

BACKENDS = {  # the exact one first: the others' diagonals are compared with it
    "CurvlinopsGGN (exact, default)": "laplace.curvature:CurvlinopsGGN",
    "HesScaleGGN (hesscale)": "hesscale.integrations.laplace:HesScaleGGN",
    "HesScaleHessian (hesscale)": "hesscale.integrations.laplace:HesScaleHessian",
    "BackPackGGN (exact)": "laplace.curvature:BackPackGGN",
    "BackPackEF (empirical Fisher)": "laplace.curvature:BackPackEF",
    "CurvlinopsEF (empirical Fisher)": "laplace.curvature:CurvlinopsEF",
}


class ResidualMLP(nn.Module):
    """64 -> width, two residual tanh blocks, -> 10."""

    def __init__(self, width: int = 128):
        super().__init__()
        self.inp = nn.Linear(64, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width))
            for _ in range(2)
        )
        self.out = nn.Linear(width, 10)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        for block in self.blocks:
            h = torch.tanh(h + block(h))
        return self.out(h)


def make_model(kind: str) -> nn.Module:
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 10)
        )
    return ResidualMLP()


def train(kind: str, seed: int, epochs: int) -> nn.Module:
    torch.manual_seed(seed)
    (x, y), _, _ = digits_splits(seed)
    model = make_model(kind)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model


def ece(probs: torch.Tensor, y: torch.Tensor, bins: int = 15) -> float:
    """Expected calibration error: sum over confidence bins of |accuracy - confidence| times
    the bin's share of examples."""
    conf, pred = probs.max(-1)
    hits = (pred == y).float()
    edges = torch.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            total += mask.float().mean().item() * abs(hits[mask].mean() - conf[mask].mean()).item()
    return total


def scores(probs: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    nll = -probs.clamp_min(1e-12).log().gather(1, y[:, None]).mean().item()
    return {"nll": nll, "ece": ece(probs, y), "acc": (probs.argmax(-1) == y).float().mean().item()}


def one_backend(model_path: str, kind: str, seed: int, spec: str) -> list[dict]:
    """In this process: fit the Laplace approximation with one backend and score it."""
    import importlib

    from laplace import Laplace

    torch.set_num_threads(1)
    module, name = spec.split(":")
    backend = getattr(importlib.import_module(module), name)
    model = make_model(kind)
    model.load_state_dict(torch.load(model_path))
    (x, y), (x_val, y_val), (x_test, y_test) = digits_splits(seed)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    val_loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x_val, y_val), batch_size=len(x_val)
    )
    la = Laplace(
        model, "classification", subset_of_weights="all", hessian_structure="diag", backend=backend
    )
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    la.fit(loader)
    seconds = time.perf_counter() - start
    peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    torch.save(la.H, model_path + f".{spec.split(':')[1]}.H.pt")
    rows = []
    for tuning in ("marglik", "val-NLL grid"):
        if tuning == "marglik":
            la.optimize_prior_precision(pred_type="glm", method="marglik")
        else:
            la.optimize_prior_precision(
                pred_type="glm",
                method="gridsearch",
                val_loader=val_loader,
                prior_structure="scalar",
                log_prior_prec_min=-2,
                log_prior_prec_max=4,
                grid_size=25,
                link_approx="probit",
            )
        with torch.no_grad():
            probs = la(x_test, pred_type="glm", link_approx="probit")
        rows.append(
            {
                "tuning": tuning,
                "fit_s": seconds,
                "fit_peak_mib": peak_mib,
                "prior_precision": la.prior_precision.mean().item(),
                **scores(probs, y_test),
            }
        )
    return rows


def run(args) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.models:
            model = train(kind, args.seed, args.epochs)
            path = str(Path(tmp) / f"{kind}.pt")
            torch.save(model.state_dict(), path)
            _, _, (x_test, y_test) = digits_splits(args.seed)
            with torch.no_grad():
                rows.append(
                    {
                        "model": kind,
                        "backend": "MAP (no Laplace)",
                        **scores(model(x_test).softmax(-1), y_test),
                    }
                )
            for label, spec in BACKENDS.items():
                command = [sys.executable, __file__, "--one", path, kind, str(args.seed), spec]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode == 0:
                    results = json.loads(done.stdout.strip().splitlines()[-1])
                    H = torch.load(path + f".{spec.split(':')[1]}.H.pt")
                    exact_path = Path(path + ".CurvlinopsGGN.H.pt")
                    if exact_path.exists():
                        exact = torch.load(exact_path)
                        error = ((H - exact).norm() / exact.norm()).item()
                        results = [{**r, "diag_error": error} for r in results]
                else:
                    last = done.stderr.strip().splitlines()[-1]
                    results = [{"error": last[:120]}]
                for result in results:
                    rows.append({"model": kind, "backend": label, **result})
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| model | backend | fit time (s) | fit peak memory (MiB) | NLL | ECE | accuracy |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['backend']} | | fails: {r['error']} | | | | | |")
            continue
        time_s = f"{r['fit_s']:.2f}" if "fit_s" in r else "-"
        mem = f"{r['fit_peak_mib']:.0f}" if "fit_peak_mib" in r else "-"
        lines.append(
            f"| {r['model']} | {r['backend']} | {time_s} | {mem} | {r['nll']:.4f} | "
            f"{r['ece']:.4f} | {r['acc']:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        _, _, path, kind, seed, spec = sys.argv
        print(json.dumps(one_backend(path, kind, int(seed), spec)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["mlp", "residual"], choices=["mlp", "residual"]
    )
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = run(args)
    print(table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
