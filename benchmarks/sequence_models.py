"""Cost of hesscale.backward on sequence models: a 2-layer GPT (d 128, T 64, batch 4, vocab
512) and an LSTM language model of similar size, as ratios to plain forward +
loss.backward() of the same model, in one process, one thread.

python benchmarks/sequence_models.py                      # every model, 30 interleaved rounds
python benchmarks/sequence_models.py --models gpt-lite lstm-lite --repeats 50 --clock cpu

Time: the median over rounds; in each round every method runs one step (zero_grad, forward,
loss, backward), in an order that rotates from round to round. Memory: one more step per method
under torch.profiler's memory events (hesscale.experiments.cost.measure.peak_step_bytes), plus
the bytes resident before it (parameters and batch). Models: ``gpt`` / ``lstm`` use
nn.Embedding (and nn.LayerNorm); ``*-lite`` use a one-hot matmul embedding and no LayerNorm,
for trees where those rules are missing.
"""

from __future__ import annotations

import argparse
import copy
import pathlib
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # for tests.sequence_models

import hesscale  # noqa: E402
from hesscale.experiments.cost.measure import peak_step_bytes  # noqa: E402
from hesscale.experiments.cost.methods import Step  # noqa: E402
from tests.sequence_models import RecurrentLM, gpt, lm_loss  # noqa: E402

VOCAB, STEPS, BATCH, DIM = 512, 64, 4, 128

MODELS = {
    "gpt": lambda: gpt(VOCAB, STEPS, DIM, heads=4, layers=2),
    "gpt-lite": lambda: gpt(VOCAB, STEPS, DIM, heads=4, layers=2, one_hot=True, layer_norm=False),
    "lstm": lambda: RecurrentLM("lstm", VOCAB, DIM, DIM, layers=2),
    "lstm-lite": lambda: RecurrentLM("lstm", VOCAB, DIM, DIM, layers=2, one_hot=True),
}

METHODS = {
    "forward+backward": lambda loss: loss.backward(),
    "hesscale": lambda loss: hesscale.backward(loss),
    "hesscale_gn": lambda loss: hesscale.backward(loss, gn=True),
}


def steps_for(name: str) -> tuple[dict[str, Step], tuple]:
    torch.manual_seed(0)
    model = MODELS[name]()
    inputs = torch.randint(0, VOCAB, (BATCH, STEPS))
    targets = torch.randint(0, VOCAB, (BATCH, STEPS))
    steps = {}
    for method, backward in METHODS.items():
        copy_ = copy.deepcopy(model)

        def run(copy_=copy_, backward=backward) -> None:
            copy_.zero_grad(set_to_none=True)
            backward(lm_loss(copy_(inputs), targets))

        steps[method] = Step(run, copy_)
    return steps, (inputs, targets)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def measure(
    name: str, repeats: int, warmup: int = 3, clock: str = "wall"
) -> dict[str, tuple[float, float]]:
    """{method: (median ms, peak MB)}."""
    now = CLOCKS[clock]
    steps, batch = steps_for(name)
    for _ in range(warmup):
        for step in steps.values():
            step.run()
    times: dict[str, list[float]] = {method: [] for method in steps}
    order = list(steps)
    for r in range(repeats):
        for method in order[r % len(order) :] + order[: r % len(order)]:
            start = now()
            steps[method].run()
            times[method].append(1e3 * (now() - start))
    results = {}
    for method, step in steps.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peak = peak_step_bytes(step, "cpu") + step.resident_bytes(batch)
        results[method] = (statistics.median(times[method]), peak / 2**20)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--clock",
        choices=list(CLOCKS),
        default="wall",
        help="wall time, or process CPU time (one thread only; less disturbed on a shared machine)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {args.repeats} rounds, "
        f"{args.clock} clock"
    )
    print(
        f"{'model':<10} {'method':<17} {'median ms':>10} {'time x':>7} {'peak MB':>8} {'mem x':>6}"
    )
    for name in args.models:
        try:
            results = measure(name, args.repeats, clock=args.clock)
        except hesscale.errors.HesScaleError as error:
            print(f"{name:<10} skipped: {str(error).splitlines()[0][:100]}")
            continue
        ms0, mb0 = results["forward+backward"]
        for method, (ms, mb) in results.items():
            print(f"{name:<10} {method:<17} {ms:10.2f} {ms / ms0:7.2f} {mb:8.1f} {mb / mb0:6.2f}")


if __name__ == "__main__":
    main()
