"""Models. Each takes its input shape and output size from the data set; dropout from regularization."""

from __future__ import annotations

import math

from torch import nn


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
