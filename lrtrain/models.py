"""Models. Each takes its input shape and output size from the data set; dropout from regularization.

torchvision is imported only when `resnet18` or `vit` is built, to keep start-up close to `import torch` alone.
"""

from __future__ import annotations

import math

from torch import nn

from lrtrain.errors import ModelInputError


def _image_shape(model: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ModelInputError(f"{model} needs images (channels, height, width), not inputs of shape "
                              f"{tuple(input_shape)}")
    return tuple(input_shape)  # type: ignore[return-value]


ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU,
               "tanh": nn.Tanh}
INITS = ("torch", "kaiming", "xavier", "orthogonal")
NORMS = ("none", "batch", "layer")


def _norm(kind: str, width: int, conv: bool) -> list[nn.Module]:
    """The normalisation layer after a Linear (conv=False) or a Conv2d; "layer" on feature maps is GroupNorm
    with one group, which normalises each sample over its channels and pixels, as LayerNorm does over features."""
    if kind == "batch":
        return [nn.BatchNorm2d(width) if conv else nn.BatchNorm1d(width)]
    if kind == "layer":
        return [nn.GroupNorm(1, width) if conv else nn.LayerNorm(width)]
    return []


def initialise(model: nn.Module, init: str, activation: str) -> None:
    """Re-draw every Linear and Conv2d weight with `init` (biases to 0): "torch" keeps torch's default. The gain
    is the activation's (torch.nn.init.calculate_gain; relu's sqrt(2) for gelu, silu and elu, which torch does
    not list) for hidden layers, and 1 for the output layer, which no activation follows."""
    if init == "torch":
        return
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    slope = 0.01 if activation == "leaky_relu" else 0.0  # nn.LeakyReLU's default negative slope
    hidden = {"tanh": "tanh", "leaky_relu": "leaky_relu"}.get(activation, "relu")
    for i, layer in enumerate(layers):
        nonlinearity = "linear" if i == len(layers) - 1 else hidden
        if init == "kaiming":
            nn.init.kaiming_normal_(layer.weight, a=slope, nonlinearity=nonlinearity)
        else:
            gain = nn.init.calculate_gain(nonlinearity, slope if nonlinearity == "leaky_relu" else None)
            (nn.init.xavier_uniform_ if init == "xavier" else nn.init.orthogonal_)(layer.weight, gain=gain)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


class MLP(nn.Sequential):
    """Flatten, then Linear(-Norm)-Activation(-Dropout) for each hidden size, then a Linear head."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, hidden: list[int], activation: str,
                 init: str, norm: str, dropout: float = 0.0):
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden:
            # a batch norm's shift makes the Linear's bias redundant
            layers += [nn.Linear(width, h, bias=norm != "batch"), *_norm(norm, h, conv=False), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_outputs))
        super().__init__(*layers)
        initialise(self, init, activation)


class Linear(nn.Sequential):
    """Flatten and one Linear layer: linear regression (or multinomial logistic regression)."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, dropout: float = 0.0):
        layers: list[nn.Module] = [nn.Flatten()] + ([nn.Dropout(dropout)] if dropout > 0 else [])
        super().__init__(*layers, nn.Linear(math.prod(input_shape), num_outputs))


class CNN(nn.Sequential):
    """A small ConvNet: per width, Conv3x3(-Norm)-Activation-MaxPool2 (while the image is at least 2x2), then a
    pooled grid of at most 4x4, Linear-Activation(-Dropout) of `hidden` units and a Linear head. 1 or 3
    channels."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, channels: list[int], hidden: int,
                 activation: str, init: str, norm: str, dropout: float = 0.0):
        c, h, w = _image_shape("cnn", input_shape)
        layers: list[nn.Module] = []
        for width in channels:
            layers += [nn.Conv2d(c, width, 3, padding=1, bias=norm == "none"), *_norm(norm, width, conv=True),
                       ACTIVATIONS[activation]()]
            if min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = width
        grid = (min(h, 4), min(w, 4))
        layers += [nn.AdaptiveAvgPool2d(grid), nn.Flatten(), nn.Linear(c * grid[0] * grid[1], hidden),
                   ACTIVATIONS[activation]()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(hidden, num_outputs))
        super().__init__(*layers)
        initialise(self, init, activation)


def resnet18(input_shape: tuple[int, ...], num_outputs: int, dropout: float = 0.0) -> nn.Module:
    """torchvision's ResNet-18 adapted to small images: a 3x3 stride-1 stem and no max-pool (the CIFAR
    recipe), so 8x8 to 32x32 inputs keep their resolution; any number of input channels."""
    from torchvision.models import resnet18 as tv_resnet18

    c, _, _ = _image_shape("resnet18", input_shape)
    model = tv_resnet18(weights=None, num_classes=num_outputs)
    model.conv1 = nn.Conv2d(c, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    if dropout > 0:
        model.fc = nn.Sequential(nn.Dropout(dropout), model.fc)
    return model


def vit(input_shape: tuple[int, ...], num_outputs: int, patch_size: int, depth: int, heads: int, width: int,
        mlp_width: int, dropout: float = 0.0) -> nn.Module:
    """torchvision's VisionTransformer (a class token, learned position embeddings, pre-norm encoder blocks of
    multi-head attention and a GELU MLP, a Linear head on the class token), for square images of any number of
    channels: its patch embedding, a Conv2d made for 3 channels, is remade for the data set's, with
    torchvision's own initialisation. Dropout (regularization=dropout) is the class's `dropout`."""
    from torchvision.models.vision_transformer import VisionTransformer

    c, h, w = _image_shape("vit", input_shape)
    if h != w:
        raise ModelInputError(f"vit needs square images, not {h}x{w}")
    if h % patch_size:
        divisors = [p for p in range(1, h + 1) if h % p == 0]
        raise ModelInputError(f"model.patch_size={patch_size} does not divide the image side {h} (valid: "
                              f"{', '.join(map(str, divisors))})")
    model = VisionTransformer(image_size=h, patch_size=patch_size, num_layers=depth, num_heads=heads,
                              hidden_dim=width, mlp_dim=mlp_width, dropout=dropout, num_classes=num_outputs)
    if c != 3:
        model.conv_proj = nn.Conv2d(c, width, kernel_size=patch_size, stride=patch_size)
        nn.init.trunc_normal_(model.conv_proj.weight, std=math.sqrt(1 / (c * patch_size * patch_size)))
        nn.init.zeros_(model.conv_proj.bias)
    return model


# ---------------------------------------------------------------------------------------- sizes before building


def _norm_params(kind: str, width: int, bias: bool) -> int:
    return (2 * width if kind != "none" else 0) + (width if bias else 0)


def _mlp_size(input_shape: tuple[int, ...], num_outputs: int, hidden: list[int], norm: str, **_: object) -> int:
    n, width = 0, math.prod(input_shape)
    for h in hidden:
        n += width * h + _norm_params(norm, h, bias=norm != "batch")
        width = h
    return n + width * num_outputs + num_outputs


def _cnn_size(input_shape: tuple[int, ...], num_outputs: int, channels: list[int], hidden: int, norm: str,
              **_: object) -> int:
    c, h, w = _image_shape("cnn", input_shape)
    n = 0
    for width in channels:
        n += c * width * 9 + _norm_params(norm, width, bias=norm == "none")
        if min(h, w) >= 2:
            h, w = h // 2, w // 2
        c = width
    return n + c * min(h, 4) * min(w, 4) * hidden + hidden + hidden * num_outputs + num_outputs


def _vit_size(input_shape: tuple[int, ...], num_outputs: int, patch_size: int, depth: int, width: int,
              mlp_width: int, **_: object) -> int:
    c, h, _w = _image_shape("vit", input_shape)
    tokens = (h // max(patch_size, 1)) ** 2 + 1
    block = 4 * width + 4 * width * width + 4 * width + 2 * width * mlp_width + mlp_width + width
    return c * patch_size ** 2 * width + width + (tokens + 1) * width + depth * block + 2 * width + \
        width * num_outputs + num_outputs


# lrtrain's models by their _target_: the size of each (its parameter count, from its config, without building
# it) and the keys that set it
SIZES = {
    "lrtrain.models.MLP": (_mlp_size, ("hidden",)),
    "lrtrain.models.CNN": (_cnn_size, ("channels", "hidden")),
    "lrtrain.models.vit": (_vit_size, ("depth", "width", "mlp_width", "patch_size")),
    "lrtrain.models.Linear": (lambda input_shape, num_outputs, **_: (math.prod(input_shape) + 1) * num_outputs, ()),
    "lrtrain.models.resnet18": (lambda input_shape, num_outputs, **_: 11_167_104 + 576 * input_shape[0]
                                + 513 * num_outputs, ()),
}


def parameter_count(target: str, input_shape: tuple[int, ...], num_outputs: int, **settings: object) -> int | None:
    """How many parameters model `target` with these settings will have; None for a model lrtrain does not
    know (a _target_ of the user's)."""
    size = SIZES.get(target)
    return size[0](input_shape=tuple(input_shape), num_outputs=num_outputs, **settings) if size else None
