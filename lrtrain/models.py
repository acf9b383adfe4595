"""Models. Each takes its input shape and output size from the data set; dropout from regularization.

torchvision is imported only when `resnet18` is built, to keep start-up close to `import torch` alone.
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


class MLP(nn.Sequential):
    """Flatten, then Linear-ReLU(-Dropout) for each hidden size, then a Linear head."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, hidden: list[int], dropout: float = 0.0):
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_outputs))
        super().__init__(*layers)


class Linear(nn.Sequential):
    """Flatten and one Linear layer: linear regression (or multinomial logistic regression)."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, dropout: float = 0.0):
        layers: list[nn.Module] = [nn.Flatten()] + ([nn.Dropout(dropout)] if dropout > 0 else [])
        super().__init__(*layers, nn.Linear(math.prod(input_shape), num_outputs))


class CNN(nn.Sequential):
    """A small ConvNet: per width, Conv3x3-BatchNorm-ReLU-MaxPool2 (while the image is at least 2x2), then a
    pooled grid of at most 4x4, Linear-ReLU(-Dropout) of `hidden` units and a Linear head. 1 or 3 channels."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, channels: list[int], hidden: int,
                 dropout: float = 0.0):
        c, h, w = _image_shape("cnn", input_shape)
        layers: list[nn.Module] = []
        for width in channels:
            layers += [nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            if min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = width
        grid = (min(h, 4), min(w, 4))
        layers += [nn.AdaptiveAvgPool2d(grid), nn.Flatten(), nn.Linear(c * grid[0] * grid[1], hidden), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(hidden, num_outputs))
        super().__init__(*layers)


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
