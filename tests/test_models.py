"""Every model option builds for 1- and 3-channel images (and tabular rows where it can) and trains a step."""

from __future__ import annotations

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import nn

from conftest import group_options
from lrtrain.build import build
from lrtrain.errors import ConfigValueError
from lrtrain.errors import ModelInputError

IMAGE_SHAPES = [(1, 8, 8), (3, 32, 32)]
TAKES_TABULAR = {"mlp", "linear"}


def make(compose, option, input_shape, num_outputs=10, **kwargs):
    try:
        return instantiate(compose(f"model={option}").model, input_shape=input_shape, num_outputs=num_outputs,
                           _convert_="all", **kwargs)
    except InstantiationException as e:
        raise e.__cause__ from None


def one_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> tuple[float, float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(2):
        loss = loss_fn(model(x).squeeze(-1) if y.dtype.is_floating_point else model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], losses[1]


@pytest.mark.parametrize("shape", IMAGE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("option", group_options("model"))
def test_every_model_trains_a_step_on_images(compose, option, shape):
    torch.manual_seed(0)
    model = make(compose, option, shape)
    x, y = torch.randn(8, *shape), torch.arange(8) % 10
    assert model(x).shape == (8, 10)
    before, after = one_step(model, x, y, nn.CrossEntropyLoss())
    assert after < before


@pytest.mark.parametrize("option", group_options("model"))
def test_tabular_inputs_train_or_are_refused(compose, option):
    if option not in TAKES_TABULAR:
        with pytest.raises(ModelInputError, match=r"needs images .*\(10,\)"):
            make(compose, option, (10,), num_outputs=1)
        return
    torch.manual_seed(0)
    model = make(compose, option, (10,), num_outputs=1)
    x = torch.randn(32, 10)
    before, after = one_step(model, x, 2 * x.sum(1) + 3, nn.MSELoss())
    assert after < before


@pytest.mark.parametrize("option", group_options("model"))
def test_dropout_is_applied_when_asked(compose, option):
    shape = (10,) if option in TAKES_TABULAR else (3, 8, 8)
    with_dropout = make(compose, option, shape, dropout=0.3)
    without = make(compose, option, shape)
    assert [m.p for m in with_dropout.modules() if isinstance(m, nn.Dropout)] == [0.3]
    assert not any(isinstance(m, nn.Dropout) for m in without.modules())


def test_model_that_cannot_take_the_inputs_is_a_config_error(compose, tmp_path):
    cfg = compose("dataset=regression", "model=cnn")
    with pytest.raises(ConfigValueError, match=r"^model='cnn': must be a model for regression's inputs"):
        build(cfg, tmp_path)


def test_resnet18_keeps_small_images_at_full_resolution(compose):
    model = make(compose, "resnet18", (1, 28, 28))
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert model.conv1.in_channels == 1 and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
