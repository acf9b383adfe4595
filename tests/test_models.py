"""Every model option builds for 1- and 3-channel images (and tabular rows where it can) and trains a step;
the architecture knobs of mlp/cnn (activation, init, norm) do what they say; vit is torchvision's."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import nn

from conftest import config_error, group_options, loss_fell
from lrtrain.build import build
from lrtrain.errors import ConfigValueError
from lrtrain.errors import ModelInputError

IMAGE_SHAPES = [(1, 8, 8), (3, 32, 32)]
TAKES_TABULAR = {"mlp", "linear"}
TAKES_TOKENS = {"gpt"}  # language models: tests/test_lm.py


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
    if option in TAKES_TOKENS:
        with pytest.raises(ModelInputError, match=r"^gpt reads windows of token ids \(dataset=text or shakespeare\)"):
            make(compose, option, shape)
        return
    torch.manual_seed(0)
    model = make(compose, option, shape)
    x, y = torch.randn(8, *shape), torch.arange(8) % 10
    assert model(x).shape == (8, 10)
    before, after = one_step(model, x, y, nn.CrossEntropyLoss())
    assert after < before


@pytest.mark.parametrize("option", group_options("model"))
def test_tabular_inputs_train_or_are_refused(compose, option):
    if option in TAKES_TOKENS:  # a window of 10 token ids has this shape too: build() tells them apart
        assert getattr(make(compose, option, (10,), num_outputs=1), "takes_tokens")
        return
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
    shape = (10,) if option in TAKES_TABULAR | TAKES_TOKENS else (3, 8, 8)
    with_dropout = make(compose, option, shape, dropout=0.3)
    without = make(compose, option, shape)
    if option in ("vit", "gpt"):  # their blocks always hold Dropout layers: p is the class's `dropout`
        assert {m.p for m in with_dropout.modules() if isinstance(m, nn.Dropout)} == {0.3}
        assert {m.p for m in without.modules() if isinstance(m, nn.Dropout)} == {0.0}
        return
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


# ----------------------------------------------------------------------------- activation, init, norm


KNOBS = ["mlp", "cnn"]


@pytest.mark.parametrize("activation,cls", [("relu", nn.ReLU), ("gelu", nn.GELU), ("silu", nn.SiLU),
                                            ("leaky_relu", nn.LeakyReLU), ("elu", nn.ELU), ("tanh", nn.Tanh)])
@pytest.mark.parametrize("option", KNOBS)
def test_activation(compose, option, activation, cls):
    model = instantiate(compose(f"model={option}", f"model.activation={activation}").model, input_shape=(1, 8, 8),
                        num_outputs=10, _convert_="all")
    acts = [m for m in model.modules() if type(m) in (nn.ReLU, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Tanh)]
    assert acts and all(type(m) is cls for m in acts)
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert len(acts) == len(layers) - 1  # one after every layer but the head


@pytest.mark.parametrize("norm,cls", [("batch", (nn.BatchNorm1d, nn.BatchNorm2d)), ("layer", (nn.LayerNorm, nn.GroupNorm)),
                                      ("none", ())])
@pytest.mark.parametrize("option", KNOBS)
def test_norm(compose, option, norm, cls):
    cfg = compose(f"model={option}", f"model.norm={norm}", *(["model.hidden=[32,16]"] if option == "mlp" else []))
    model = instantiate(cfg.model, input_shape=(3, 8, 8), num_outputs=10, _convert_="all")
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm))]
    hidden = 2 if option == "mlp" else len(cfg.model.channels)
    assert len(norms) == (0 if norm == "none" else hidden) and all(isinstance(m, cls) for m in norms)
    assert all(m.num_groups == 1 for m in norms if isinstance(m, nn.GroupNorm))  # LayerNorm over channels and pixels
    before, after = one_step(model, torch.randn(8, 3, 8, 8), torch.arange(8) % 10, nn.CrossEntropyLoss())
    assert after < before


@pytest.mark.parametrize("activation", ["relu", "tanh", "leaky_relu", "gelu"])
@pytest.mark.parametrize("init", ["kaiming", "xavier", "orthogonal"])
def test_init_draws_with_the_activations_gain(compose, init, activation):
    """Hidden layers: kaiming N(0, gain^2 / fan_in); xavier U(+-gain sqrt(6 / (fan_in + fan_out))); orthogonal
    W W^T = gain^2 I. The head's gain is 1. Biases 0. gain: torch's calculate_gain (relu's for gelu)."""
    torch.manual_seed(0)
    model = instantiate(compose("model=mlp", "model.hidden=[512,256]", f"model.init={init}",
                                f"model.activation={activation}").model,
                        input_shape=(1, 32, 32), num_outputs=10, _convert_="all")
    slope = 0.01 if activation == "leaky_relu" else None
    gain = nn.init.calculate_gain("relu" if activation == "gelu" else activation, slope)
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for i, layer in enumerate(layers):
        g = 1.0 if i == len(layers) - 1 else gain
        w = layer.weight.detach().double()
        fan_out, fan_in = w.shape
        assert torch.count_nonzero(layer.bias) == 0
        if init == "kaiming":
            assert w.std().item() == pytest.approx(g / math.sqrt(fan_in), rel=0.1 if i < 2 else 0.3)
        elif init == "xavier":
            bound = g * math.sqrt(6 / (fan_in + fan_out))
            assert w.abs().max().item() <= bound and w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
        else:
            torch.testing.assert_close(w @ w.T, g * g * torch.eye(fan_out, dtype=w.dtype), atol=1e-5, rtol=0)


def test_default_knobs_keep_the_models_as_they_were(compose):
    """relu, torch's init, the old norms: the same layers drawn from the same seed (figures reproduce)."""
    torch.manual_seed(0)
    mlp = make(compose, "mlp", (1, 8, 8))
    torch.manual_seed(0)
    expected = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    assert [type(m) for m in mlp] == [type(m) for m in expected]
    assert all(torch.equal(a, b) for a, b in zip(mlp.parameters(), expected.parameters()))
    cnn = make(compose, "cnn", (1, 8, 8))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in cnn.modules()) == 2
    assert all(m.bias is None for m in cnn.modules() if isinstance(m, nn.Conv2d))


# -------------------------------------------------------------------------------------------------- vit


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)], ids=lambda s: "x".join(map(str, s)))
def test_vit_is_torchvisions_with_the_patch_embedding_for_the_channels(compose, shape):
    from torchvision.models.vision_transformer import VisionTransformer

    cfg = compose("model=vit").model
    model = make(compose, "vit", shape)
    assert type(model) is VisionTransformer
    assert model.conv_proj.in_channels == shape[0] and model.conv_proj.kernel_size == (cfg.patch_size,) * 2
    assert model.seq_length == (shape[1] // cfg.patch_size) ** 2 + 1  # patches and the class token
    assert len(model.encoder.layers) == cfg.depth and model.hidden_dim == cfg.width
    assert model.encoder.layers[0].self_attention.num_heads == cfg.heads
    assert model.encoder.layers[0].mlp[0].out_features == cfg.mlp_width
    assert model(torch.zeros(2, *shape)).shape == (2, 10)


def test_vit_trains_on_digits(train_briefly):
    _, rows = train_briefly("model=vit", steps=60)
    assert loss_fell(rows), [r["loss"] for r in rows]


@pytest.mark.parametrize("shape,patch,message", [
    ((1, 8, 8), 3, "model.patch_size=3 does not divide the image side 8 (valid: 1, 2, 4, 8)"),
    ((3, 8, 12), 4, "vit needs square images, not 8x12"),
])
def test_vit_refuses_what_it_cannot_patch(compose, shape, patch, message):
    with pytest.raises(InstantiationException) as e:
        instantiate(compose("model=vit", f"model.patch_size={patch}").model, input_shape=shape, num_outputs=10,
                    _convert_="all")
    assert isinstance(e.value.__cause__, ModelInputError) and str(e.value.__cause__) == message


def test_vit_patch_size_is_a_config_error_at_build(compose, tmp_path):
    with pytest.raises(ConfigValueError, match=r"^model='vit': must be a model for digits's inputs: "
                                               r"model.patch_size=3 does not divide the image side 8"):
        build(compose("model=vit", "model.patch_size=3"), tmp_path)


@pytest.mark.parametrize("override,message", [
    ("model.width=30", "model.width=30: must be a multiple of heads (4)"),
    ("model.patch_size=0", "model.patch_size=0: must be > 0"),
])
def test_bad_vit_values(compose, override, message):
    assert config_error(compose, "model=vit", override) == message


@pytest.mark.parametrize("override,message", [
    ("model.activation=swish", "model.activation='swish': must be one of relu, gelu, silu, leaky_relu, elu, tanh"),
    ("model.init=he", "model.init='he': must be one of torch, kaiming, xavier, orthogonal"),
    ("model.norm=group", "model.norm='group': must be one of none, batch, layer"),
])
def test_bad_knob_values(compose, override, message):
    assert config_error(compose, override) == message
