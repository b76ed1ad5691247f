"""hesscale changes no warning filter of the process: torch's first-layer hook warning is hidden
only while a backward pass served by HesScale runs."""

import subprocess
import sys
import warnings

import pytest
import torch
from backpack import backpack, extend
from backpack.extensions import DiagHessian
from torch import nn

from hesscale import HesScale, HesScaleGN, UnsupportedModuleError
from hesscale.hook_warning import HOOK_WARNING


def test_importing_hesscale_leaves_warning_filters_unchanged():
    code = (
        "import warnings, torch, backpack\n"
        "before = list(warnings.filters)\n"
        "import hesscale, hesscale.estimators, hesscale.optim, hesscale.rules.losses\n"
        "assert warnings.filters == before, set(warnings.filters) ^ set(before)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def run(*extensions, model=None):
    torch.manual_seed(0)
    model = model or extend(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)))
    loss = extend(nn.CrossEntropyLoss())(model(torch.randn(5, 3)), torch.tensor([0, 1, 1, 0, 1]))
    with backpack(*extensions):
        loss.backward()


def hook_warnings(record) -> list:
    return [w for w in record if HOOK_WARNING in str(w.message)]


@pytest.mark.parametrize("extensions", [(HesScale(),), (HesScaleGN(), DiagHessian())])
def test_hook_warning_hidden_during_hesscale_backward_only(extensions):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        before = list(warnings.filters)
        run(*extensions)
        assert warnings.filters == before
        assert hook_warnings(record) == []
        run(DiagHessian())  # BackPACK alone: torch's warning is not ours to hide
        assert len(hook_warnings(record)) == 1


def test_an_equal_filter_already_installed_is_left_alone():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message=HOOK_WARNING, category=UserWarning)
        warnings.simplefilter("always", DeprecationWarning)  # ours is no longer first
        before = list(warnings.filters)
        run(HesScale())
        assert warnings.filters == before
        assert hook_warnings(record) == []


def test_a_failing_backward_leaves_no_filter_behind():
    bad = extend(nn.Sequential(nn.Linear(3, 4), nn.PReLU(), nn.Linear(4, 2)))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        before = list(warnings.filters)
        with pytest.raises(UnsupportedModuleError):
            run(HesScale(), model=bad)
        assert warnings.filters == before


def test_estimators_hide_the_hook_warning_without_changing_filters():
    from hesscale.estimators import Hutchinson, exact_hessian

    torch.manual_seed(0)
    model = extend(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)))
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    estimators = (exact_hessian(), Hutchinson(2))
    for estimator in estimators:  # a first call may import modules that add filters of their own
        estimator.estimate(model, nn.CrossEntropyLoss(), x, y)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        before = list(warnings.filters)
        for estimator in estimators:
            estimator.estimate(model, nn.CrossEntropyLoss(), x, y)
        assert warnings.filters == before
        assert hook_warnings(record) == []
