"""The optimizer study's components: the text shipped with Python, the char-level task, the
GPT (GPT-2 initialisation), the LSTM, digits with a held-out split, the small ResNet, and the
report on tiny runs."""

from __future__ import annotations

import math

import pytest
import torch

import hesscale
from hesscale.experiments import optimizer_report, text
from hesscale.experiments.logs import run_path, write_json_atomic
from hesscale.experiments.optimizer_study import SmallResNet, digits_holdout
from hesscale.experiments.run import RunConfig, train
from hesscale.experiments.tasks import TaskSettings
from hesscale.experiments.transformer import GPT


def test_corpus_ships_with_python_and_splits_90_10():
    data = text.corpus()
    assert data.dtype == torch.int64 and len(data) > 300_000
    assert int(data.min()) >= 0 and int(data.max()) < text.VOCAB
    decoded = bytes(data[:2000].tolist()).decode("ascii")
    assert " the " in decoded  # English prose
    train_text, validation = text.split()
    assert len(train_text) + len(validation) == len(data)
    assert abs(len(validation) / len(data) - text.VALIDATION_FRACTION) < 1e-4


def test_char_text_windows_predict_the_next_character_and_resume():
    task = text.char_text(TaskSettings("t", batch_size=3, seed=5), length=10, validation_windows=4)
    x, y = task.next_batch()
    assert x.shape == (3, 10) and y.shape == (30,)
    assert torch.equal(y.view(3, 10)[:, :-1], x[:, 1:])  # targets: the inputs shifted by one
    state = task.state_dict()
    after = task.next_batch()
    again = text.char_text(TaskSettings("t", batch_size=3, seed=0), length=10)
    again.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(after, again.next_batch(), strict=True))
    batches = list(task.test_batches(batch_size=3))
    assert [len(b[1]) for b in batches] == [30, 10]  # 4 windows of 10 characters
    assert task.describe()["validation_characters"] == 40
    with pytest.raises(ValueError, match="length >= 1"):
        text.char_text(TaskSettings("t"), length=0)


@pytest.mark.parametrize("network", [text.CharGPT, text.CharLSTM])
def test_char_networks_give_flat_logits_and_diagonals(network):
    torch.manual_seed(0)
    model = network((12,), text.VOCAB, width=8)
    tokens = torch.randint(0, text.VOCAB, (2, 12))
    logits = model(tokens)
    assert logits.shape == (24, text.VOCAB)
    loss = torch.nn.functional.cross_entropy(logits, torch.randint(0, text.VOCAB, (24,)))
    hesscale.backward(loss, gn=True)
    assert all(p.hesscale_gn.shape == p.shape for p in model.parameters())


def test_gpt_starts_as_gpt2_near_uniform_predictions():
    """std 0.02 (residual projections 0.02 / sqrt(2 depth)): loss ~ ln(vocab) at the start,
    where torch's default N(0, 1) tied embedding gave logits of std ~ sqrt(width)."""
    torch.manual_seed(0)
    model = GPT(vocab=512, length=64, width=128, depth=2, heads=4)
    assert abs(model.tokens.weight.std().item() - 0.02) < 1e-3
    residual = model.blocks[0].attention.proj.weight.std().item()
    assert abs(residual - 0.02 / 2) < 1e-3
    assert torch.count_nonzero(model.blocks[0].mlp[0].bias) == 0
    tokens = torch.randint(0, 512, (4, 64))
    logits = model(tokens)
    assert logits.std().item() < 0.5
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.randint(0, 512, (256,)))
    assert abs(loss.item() - math.log(512)) < 0.1


def test_digits_holdout_splits_without_overlap():
    task = digits_holdout(TaskSettings("d", batch_size=7), held_out=100)
    x, y = task.next_batch()
    assert x.shape == (7, 1, 8, 8) and float(x.max()) <= 1.0
    held_out = torch.cat([b[0] for b in task.test_batches()])
    assert len(held_out) == 100 and len(task.dataset.targets) == 1797 - 100
    training = task.dataset.inputs(torch.arange(len(task.dataset.targets)))
    assert not (training.flatten(1)[:, None] == held_out.flatten(1)[None]).all(-1).any(1).all()
    with pytest.raises(ValueError, match="held_out must be in 1..1796"):
        digits_holdout(TaskSettings("d"), held_out=0)


def test_small_resnet_on_digits():
    model = SmallResNet((1, 8, 8), 10)
    assert sum(p.numel() for p in model.parameters()) == 19_706
    assert model(torch.rand(3, 64)).shape == (3, 10)  # flattened inputs too
    with pytest.raises(ValueError, match="image inputs"):
        SmallResNet((64,), 10)


def test_report_picks_best_step_sizes_marks_divergence_and_draws(tmp_path):
    """Tiny GPT runs of two learners, two step sizes, two seeds; one step size diverges."""
    root = tmp_path / "optimizers_tiny"
    for learner, lrs in {"adamw": [1e-3, 1e-2], "adahesscale": [1e-3, 1e-2]}.items():
        for lr in lrs:
            for seed in (0, 1):
                config = RunConfig(
                    "hesscale.experiments.text:char_text",
                    "hesscale.experiments.text:CharGPT",
                    learner,
                    lr,
                    seed=seed,
                    steps=4,
                    batch_size=2,
                    bin_size=2,
                    eval_every=2,
                    task_options={"length": 8, "validation_windows": 2},
                    network_options={"width": 8, "depth": 1, "heads": 2},
                )
                log = train(config, progress=False)
                if learner == "adahesscale" and lr == 1e-2 and seed == 1:
                    log["status"] = "diverged"  # as a diverged run's log says
                write_json_atomic(run_path(root / "logs", learner, {"lr": lr}, seed), log)
    out = tmp_path / "report"
    assert optimizer_report.main([str(root), "--out", str(out), "--timing-rounds", "2"]) == 0
    table = (out / "optimizers.md").read_text()
    assert "| adahesscale | 2 | 0.001 |" in table
    row = next(line for line in table.splitlines() if line.startswith("| adahesscale"))
    assert row.split("|")[5].strip() == "0.01" and "diverged" in row  # diverged at 0.01
    assert "bits/char" in table and "up to 2 seeds" in table
    for figure in ("curves_optimizers_tiny.png", "sensitivity_optimizers_tiny.png"):
        assert (out / figure).stat().st_size > 0
    runs = optimizer_report.collect(root)
    finals = [optimizer_report.final_loss(g) for g in runs["adamw"][1e-3]]
    assert all(2 < f < 8 for f in finals)  # bits per character of an untrained model


def test_optimizer_diagnosis_runs_with_its_defaults(monkeypatch, capsys):
    """benchmarks/optimizer_diagnosis.py with its default variant (it once defaulted to a
    variant name the optimizers no longer accept), for two steps."""
    import sys

    from benchmarks import optimizer_diagnosis

    monkeypatch.setattr(sys, "argv", ["optimizer_diagnosis", "--steps", "2", "--first", "2"])
    optimizer_diagnosis.main()
    out = capsys.readouterr().out
    assert "step 2: loss" in out and "token embedding (tied)" in out
