"""hesscale.backward on the models people use: torchvision's (and timm's, when installed),
randomly initialised, one batch of random inputs.

For each model: forward, cross-entropy, ``hesscale.backward(loss, gn="both")``; the model
passes when the run raises nothing, the gradients equal a plain ``loss.backward()``'s on a
copy, every HesScale diagonal is finite and every HesScaleGN diagonal is >= 0. ``--cost``
also times plain forward+backward against the HesScale step (medians of interleaved rounds,
the process's CPU time). Run from the repository root:

    OMP_NUM_THREADS=2 python benchmarks/model_zoo.py                 # a few minutes
    OMP_NUM_THREADS=2 python benchmarks/model_zoo.py --only resnet18 vit_b_16 --cost
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import hesscale

CLASSES = 5
# torchvision classification models, and the input size each is checked at
TORCHVISION = {
    "resnet18": 64, "resnext50_32x4d": 64, "wide_resnet50_2": 64, "densenet121": 64,
    "mobilenet_v3_small": 64, "efficientnet_b0": 64, "efficientnet_v2_s": 64,
    "convnext_tiny": 64, "regnet_y_400mf": 64, "shufflenet_v2_x0_5": 64, "squeezenet1_0": 64,
    "mnasnet0_5": 64, "googlenet": 64, "inception_v3": 299, "alexnet": 64, "vgg11_bn": 64,
    "swin_t": 64, "vit_b_16": 224, "maxvit_t": 224,
}  # fmt: skip
# timm models (input size from each model's configuration)
TIMM = (
    "vit_tiny_patch16_224", "deit_tiny_patch16_224", "eva02_tiny_patch14_224",
    "beit_base_patch16_224", "cait_xxs24_224", "xcit_nano_12_p16_224", "crossvit_tiny_240",
    "pit_ti_224", "tnt_s_patch16_224", "swinv2_cr_tiny_ns_224", "tiny_vit_5m_224",
    "coatnet_nano_rw_224", "levit_128s", "mobilevit_xxs", "efficientformer_l1",
    "efficientvit_b0", "fastvit_t8", "edgenext_xx_small", "convnext_atto", "inception_next_tiny",
    "poolformer_s12", "mambaout_femto", "focalnet_tiny_srf", "nest_tiny", "mixer_s16_224",
    "resmlp_12_224", "gmlp_ti16_224", "efficientnet_b0", "mobilenetv3_small_050",
    "ghostnet_050", "repvgg_a0", "resnet18d", "cspresnet50", "nfnet_l0", "regnetx_002",
    "dla34", "hrnet_w18_small", "hgnetv2_b0", "rdnet_tiny",
)  # fmt: skip


def torchvision_model(name: str) -> tuple[nn.Module, int]:
    options = {"num_classes": CLASSES}
    if name in ("googlenet", "inception_v3"):
        options.update(aux_logits=False, init_weights=False)
    return getattr(torchvision.models, name)(**options), TORCHVISION[name]


def timm_model(name: str) -> tuple[nn.Module, int]:
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=CLASSES)
    return model, model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]


def check(model: nn.Module, size: int, cost: bool, rounds: int) -> dict:
    """Run the checks on one model; with ``cost``, the time ratio of the HesScale step."""
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, size, size), torch.randint(0, CLASSES, (2,))
    reference = copy.deepcopy(model)
    torch.manual_seed(1)  # the same dropout masks and stochastic depth in both passes
    hesscale.backward(F.cross_entropy(model(x), y), gn="both")
    torch.manual_seed(1)
    F.cross_entropy(reference(x), y).backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        if q.grad is None:
            continue
        if not torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6):
            raise AssertionError(f"{name}: the gradient differs from loss.backward()'s")
        if not torch.isfinite(p.hesscale).all() or (p.hesscale_gn < 0).any():
            raise AssertionError(f"{name}: a diagonal is not finite, or HesScaleGN's is < 0")
    result = {"parameters": sum(p.numel() for p in model.parameters())}
    if cost:
        result["ratio"] = _cost_ratio(model, x, y, rounds)
    return result


def _cost_ratio(model: nn.Module, x, y, rounds: int) -> float:
    def plain():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    def diagonal():
        model.zero_grad(set_to_none=True)
        hesscale.backward(F.cross_entropy(model(x), y))

    times: dict = {plain: [], diagonal: []}
    for r in range(rounds):
        for step in (plain, diagonal) if r % 2 else (diagonal, plain):
            start = time.process_time()
            step()
            times[step].append(time.process_time() - start)
    return statistics.median(times[diagonal]) / statistics.median(times[plain])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=None, help="only these model names")
    parser.add_argument("--cost", action="store_true", help="also time the HesScale step")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds with --cost")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    try:
        import timm  # noqa: F401

        timm_names = TIMM
    except ImportError:
        timm_names = ()
        print("timm is not installed: torchvision's models only (pip install timm)")
    models = [("torchvision", n, torchvision_model) for n in TORCHVISION]
    models += [("timm", n, timm_model) for n in timm_names]
    if args.only:
        models = [m for m in models if m[1] in args.only]
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    print(
        "| library | model | parameters | result |" + (" HesScale / plain |" if args.cost else "")
    )
    print("|---|---|---:|---|" + ("---:|" if args.cost else ""))
    failed = 0
    for library, name, make in models:
        try:
            model, size = make(name)
            result = check(model, size, args.cost, args.rounds)
            cells = [f"{result['parameters']:,}", "ok"]
            if args.cost:
                cells.append(f"{result['ratio']:.2f}")
        except Exception as error:  # report every model, then fail at the end
            failed += 1
            cells = ["", f"**{type(error).__name__}**: {str(error).splitlines()[0][:200]}"]
            cells += [""] if args.cost else []
        print(f"| {library} | {name} | " + " | ".join(cells) + " |", flush=True)
    if failed:
        raise SystemExit(f"{failed} of {len(models)} models failed")


if __name__ == "__main__":
    main()
