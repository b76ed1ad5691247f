"""Diagonal Laplace on scikit-learn's digits: hesscale's backends vs laplace-torch's own.

One MLP (and one residual MLP) is trained to its MAP estimate once; then each backend fits a
diagonal Laplace approximation over all weights on the training split (each in a fresh
process, so that its peak memory is its own), its prior precision is tuned by laplace-torch's
marginal likelihood, or by a grid search (10^-2 .. 10^6) for the lowest NLL on the validation
split (the same two procedures for every backend), and the GLM predictive (probit) is scored
on the held-out test split: NLL, ECE (15 bins), accuracy. Time is the wall time of ``fit``;
memory is the growth of the process's peak resident set during ``fit`` (CPU); "diagonal vs
exact" is ||H - H_exact|| / ||H_exact|| against laplace-torch's exact GGN diagonal
(CurvlinopsGGN).
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
from digits_mlp import digits_splits, finish_study
from torch import nn

BACKENDS = {  # the exact one first: the others' diagonals are compared with it
    "CurvlinopsGGN (exact, default)": "laplace.curvature:CurvlinopsGGN",
    "HesScaleGGN (hesscale)": "hesscale.integrations.laplace:HesScaleGGN",
    "HesScaleHessian (hesscale)": "hesscale.integrations.laplace:HesScaleHessian",
    "BackPackGGN (exact)": "laplace.curvature:BackPackGGN",
    "BackPackEF (empirical Fisher)": "laplace.curvature:BackPackEF",
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


def jacobians(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(J, f): the network's Jacobian w.r.t. all its parameters (N, C, P), per example (a vmap
    over the examples of the Jacobian of one), and its output."""
    params = {n: p.detach() for n, p in model.named_parameters()}

    def one(p, xi):
        out = torch.func.functional_call(model, p, (xi[None],))[0]
        return out, out

    jac, out = torch.func.vmap(torch.func.jacrev(one, has_aux=True), in_dims=(None, 0))(params, x)
    return torch.cat([j.flatten(2) for j in jac.values()], dim=2), out.detach()


def glm_probit(jac: torch.Tensor, f: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """laplace-torch's GLM predictive with the probit link, for a diagonal posterior precision:
    softmax(f / sqrt(1 + pi/8 * var)), var_c = sum_p J_cp^2 / precision_p."""
    var = (jac.square() / precision).sum(-1)
    return torch.softmax(f / torch.sqrt(1 + torch.pi / 8 * var), dim=-1)


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
    la = Laplace(
        model, "classification", subset_of_weights="all", hessian_structure="diag", backend=backend
    )
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    la.fit(loader)
    seconds = time.perf_counter() - start
    peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    torch.save(la.H, model_path + f".{name}.H.pt")
    # the predictive from Jacobians computed once (laplace-torch recomputes them per call), on
    # a fresh copy (BackPACK's backends leave hooks in the model that torch.func refuses)
    plain = make_model(kind)
    plain.load_state_dict(model.state_dict())
    val, test = jacobians(plain, x_val), jacobians(plain, x_test)
    rows = []
    for tuning in ("marglik", "val-NLL grid"):
        if tuning == "marglik":
            la.optimize_prior_precision(pred_type="glm", method="marglik")
            prior = la.prior_precision.detach()
            # the formula above is laplace-torch's predictive: check it once
            with torch.no_grad():
                theirs = la(x_test[:20], pred_type="glm", link_approx="probit")
            ours = glm_probit(test[0][:20], test[1][:20], la.posterior_precision)
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
        else:
            grid = torch.logspace(-2, 6, 33)

            def val_nll(p):
                if (la.H + p).min() <= 0:  # a Hessian diagonal can be negative: no posterior
                    return torch.tensor(float("inf"))
                probs = glm_probit(*val, la.H + p)
                return -probs.clamp_min(1e-12).log().gather(1, y_val[:, None]).mean()

            prior = min(grid, key=val_nll)
        probs = glm_probit(*test, la.H + prior)
        rows.append(
            {
                "tuning": tuning,
                "fit_s": seconds,
                "fit_peak_mib": peak_mib,
                "prior_precision": prior.mean().item(),
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
                if args.backends and spec.split(":")[1] not in args.backends:
                    continue
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
        "| model | backend | prior tuned by | prior precision | fit time (s) | fit peak memory "
        "(MiB) | diagonal vs exact | NLL | ECE | accuracy |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        head = f"| {r['model']} | {r['backend']} |"
        if "error" in r:
            lines.append(f"{head} | | fails: {r['error']} | | | | | |")
            continue
        cells = [
            r.get("tuning", "-"),
            f"{r['prior_precision']:.3g}" if "prior_precision" in r else "-",
            f"{r['fit_s']:.2f}" if "fit_s" in r else "-",
            f"{r['fit_peak_mib']:.0f}" if "fit_peak_mib" in r else "-",
            f"{r['diag_error']:.3g}" if "diag_error" in r else "-",
            f"{r['nll']:.4f}",
            f"{r['ece']:.4f}",
            f"{r['acc']:.4f}",
        ]
        lines.append(f"{head} " + " | ".join(cells) + " |")
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
    parser.add_argument(
        "--backends",
        nargs="+",
        default=None,
        help="only these (class names, e.g. HesScaleGGN BackPackGGN)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    finish_study(parser.parse_args(), run, table)


if __name__ == "__main__":
    main()
