"""The Trainer's run loop on a stepper whose every number is known: bins, evaluation,
divergence, stopping, checkpoints and state_dict."""

from __future__ import annotations

import pytest
import torch

from hesscale.errors import Diverged
from hesscale.experiments.trainer import StopFlag, Trainer


class Counter:
    """Step k (from 1) has loss k and k % 2 hits out of 2. Each step draws a random number
    from torch's generator, so exact continuation also needs the generator's state."""

    metrics = ("loss", "accuracy")

    def __init__(self, diverge_at: int | None = None, interrupt_at: int | None = None) -> None:
        self.k, self.draws = 0, []
        self.diverge_at, self.interrupt_at = diverge_at, interrupt_at

    def step(self):
        if self.k == self.diverge_at:
            raise Diverged("loss nan")
        if self.k == self.interrupt_at:
            raise KeyboardInterrupt
        self.k += 1
        self.draws.append(torch.rand(()).item())
        return {"loss": (float(self.k), 1), "accuracy": (self.k % 2, 2)}

    def evaluate(self):
        return {"loss": -float(self.k), "accuracy": 0.5}

    def state_dict(self):
        return {"k": self.k, "draws": list(self.draws)}

    def load_state_dict(self, state):
        self.k, self.draws = state["k"], list(state["draws"])


class StopAfter(StopFlag):
    """Stops the loop before step ``n + 1`` (as a signal would)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    @property
    def reason(self):
        self.n -= 1
        return "SIGUSR1" if self.n < 0 else None

    @reason.setter
    def reason(self, value):
        pass


def trainer(stepper, **kwargs) -> Trainer:
    options = dict(steps=7, bin_size=3, progress=False, experiment={"id": 1})
    return Trainer(stepper, **{**options, **kwargs})


def test_bins_sum_what_each_step_counts_and_evaluation_follows_the_schedule():
    log = trainer(Counter(), eval_every=3, header={"learner": "counter"}).run()
    assert log["status"] == "finished" and log["steps_done"] == 7 and log["learner"] == "counter"
    assert log["bin_ends"] == [3, 6, 7]
    assert log["loss"] == [2.0, 5.0, 7.0]  # mean loss per step in each bin
    assert log["accuracy"] == [2 / 6, 1 / 6, 1 / 2]  # hits over examples in each bin
    assert log["test"] == {"steps": [3, 6, 7], "loss": [-3.0, -6.0, -7.0], "accuracy": [0.5] * 3}
    assert log["wall_time_s"] >= 0 and log["torch_version"] == str(torch.__version__)


def test_a_diverged_step_ends_the_run_and_keeps_the_curve_so_far():
    log = trainer(Counter(diverge_at=4)).run()
    assert log["status"] == "diverged" and log["diverged_reason"] == "loss nan"
    assert log["diverged_at_step"] == 4 and log["steps_done"] == 4
    assert log["bin_ends"] == [3, 4] and log["loss"] == [2.0, 4.0]


def test_ctrl_c_attaches_the_partial_log():
    with pytest.raises(KeyboardInterrupt) as error:
        trainer(Counter(interrupt_at=5)).run()
    partial = error.value.partial_log
    assert partial["status"] == "interrupted" and partial["steps_done"] == 5


def test_a_stopped_run_continues_from_its_checkpoint_exactly(tmp_path):
    torch.manual_seed(0)
    whole_stepper = Counter()
    whole = trainer(whole_stepper, steps=10).run()
    checkpoint = tmp_path / "run.ckpt"
    torch.manual_seed(0)
    first = trainer(Counter(), steps=10, checkpoint=checkpoint, stop=StopAfter(4)).run()
    assert first["status"] == "preempted" and first["steps_done"] == 4
    assert first["stopped_by"] == "SIGUSR1" and checkpoint.is_file()
    torch.manual_seed(123)  # the generator's state comes from the checkpoint
    resumed_stepper = Counter()
    resumed = trainer(resumed_stepper, steps=10, checkpoint=checkpoint).run()
    assert resumed["status"] == "finished" and resumed["resumed_at_step"] == [4]
    for key in ("bin_ends", "loss", "accuracy"):
        assert resumed[key] == whole[key]
    assert resumed_stepper.draws == whole_stepper.draws


def test_a_checkpoint_of_other_settings_is_not_continued(tmp_path, capsys):
    checkpoint = tmp_path / "run.ckpt"
    trainer(Counter(), checkpoint=checkpoint, stop=StopAfter(2)).run()
    log = trainer(Counter(), checkpoint=checkpoint, experiment={"id": 2}).run()
    assert "resumed_at_step" not in log and log["steps_done"] == 7
    assert "made with other settings, starting afresh" in capsys.readouterr().err


def test_state_dict_round_trip_continues_the_same_run():
    torch.manual_seed(0)
    original = trainer(Counter(), steps=10, stop=StopAfter(6))
    original.run()
    state = original.state_dict()
    copy = trainer(Counter(), steps=10)
    copy.load_state_dict(state)
    assert copy.stepper.k == 6 and copy.log["steps_done"] == 6
    log = copy.run()
    torch.manual_seed(0)
    assert log["loss"] == trainer(Counter(), steps=10).run()["loss"]


def test_bad_schedule_is_refused():
    with pytest.raises(ValueError, match="steps and bin_size must be >= 1"):
        trainer(Counter(), steps=0)


class Episodic(Counter):
    """Counts an 'episode' only on even steps, and adds its episode list to the log."""

    metrics = ("return",)

    def step(self):
        super().step()
        return {"return": (float(self.k), 1) if self.k % 2 == 0 else (0.0, 0)}

    def log_fields(self):
        return {"episodes": list(range(self.k))}


def test_bins_that_count_nothing_log_nan_and_steppers_add_log_fields():
    import math

    log = trainer(Episodic(), steps=5, bin_size=1).run()
    assert [math.isnan(v) for v in log["return"]] == [True, False, True, False, True]
    assert log["return"][1] == 2.0 and log["episodes"] == [0, 1, 2, 3, 4]
