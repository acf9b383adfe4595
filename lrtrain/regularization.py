"""Regularization that acts inside the training step: batch augmentation, a loss penalty, gradient clipping.

`build` makes the `StepHooks`, each None when its option is off, so the loop pays nothing for
what is not used. (Weight decay lives with the optimizer, `lrtrain/optimizers.py`; dropout in the models;
label smoothing in the training loss.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lrtrain.errors import FlipError

IMAGE_KINDS = ("natural", "digits")  # TensorData.kind values that are images
# What augment.flip / augment.rotation mean when left null: each kind of image gets what keeps its labels true.
KIND_DEFAULTS = {"natural": {"flip": 0.5, "rotation": 0.0}, "digits": {"flip": 0.0, "rotation": 10.0}}


@dataclass
class StepHooks:
    """What regularization adds to a training step (`lrtrain.step.TrainStep`)."""

    augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None  # stored batch -> stored batch
    penalty: Optional[Callable[[], torch.Tensor]] = None  # added to the training loss
    clip: Optional[Callable[[], torch.Tensor]] = None  # clips gradients, returns their norm before clipping


def is_weight(p: torch.Tensor, leading: int = 0) -> bool:
    """A weight, which decay and penalties apply to: 2 or more dimensions (not a bias or a norm's scale).
    `leading`: dimensions in front that are not the parameter's own (a fused group's replicas)."""
    return p.dim() - leading >= 2


def decayed(params: list[nn.Parameter]) -> list[nn.Parameter]:
    """The weights among `params`."""
    return [p for p in params if is_weight(p)]


class L1Penalty:
    """coefficient * sum(|w|) over the weights."""

    def __init__(self, params: list[nn.Parameter], coefficient: float):
        self.params, self.coefficient = decayed(params), coefficient

    def __call__(self) -> torch.Tensor:
        return self.coefficient * sum(p.abs().sum() for p in self.params)


class GradClip:
    """Clip gradients in place by total L2 norm (`max_norm`) or element-wise (`value`); return the norm before."""

    def __init__(self, params: list[nn.Parameter], max_norm: Optional[float], value: Optional[float]):
        self.params, self.max_norm, self.value = params, max_norm, value

    def __call__(self) -> torch.Tensor:
        if self.max_norm is not None:
            return nn.utils.clip_grad_norm_(self.params, self.max_norm)
        norm = nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        nn.utils.clip_grad_value_(self.params, self.value)
        return norm


class BatchAugment:
    """Random shifts, flips and rotations of a whole batch of stored images (N, C, H, W), on its device.

    Every sample draws its own shift, flip and angle, all at once (no loop over samples). `flip` and
    `rotation` left None take the kind's defaults (`KIND_DEFAULTS`): natural images are flipped, not rotated;
    digits (and other glyphs) are rotated a little, never flipped; a value given applies as given, except a
    flip of glyphs (a mirrored 7 is not a 7), which is refused. A shift is a random crop of the image padded
    with zeros by the largest shift. The result has the input's shape and dtype; labels are untouched.
    """

    def __init__(self, kind: str, image_shape: tuple[int, ...], max_shift: float, flip: Optional[float],
                 rotation: Optional[float]):
        from torchvision.transforms.v2 import functional as TF  # only when augmentation is on

        if kind not in IMAGE_KINDS:
            raise ValueError(f"image kind {kind!r}: must be one of {', '.join(IMAGE_KINDS)}")
        if kind == "digits" and flip:
            raise FlipError(f"flip={flip}: digits and other glyphs are never flipped (a mirrored 7 is not a 7); "
                            "leave it null or 0")
        self.TF = TF
        side = min(image_shape[-2:])
        self.shift = max(1, math.floor(max_shift * side)) if max_shift > 0 else 0
        self.flip = KIND_DEFAULTS[kind]["flip"] if flip is None else flip
        self.rotation = KIND_DEFAULTS[kind]["rotation"] if rotation is None else rotation

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.rotation:
            x = self.rotate(x)
        if self.shift:
            x = self.translate(x)
        if self.flip:
            x = self.hflip(x)
        return x

    def translate(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        s = self.shift
        padded = self.TF.pad(x, [s])
        offsets = torch.randint(0, 2 * s + 1, (n, 2), device=x.device)  # each sample's crop corner
        rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # (N, H)
        cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # (N, W)
        index = (rows[:, :, None] * (w + 2 * s) + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
        return padded.flatten(2).gather(2, index).view(n, c, h, w)

    def hflip(self, x: torch.Tensor) -> torch.Tensor:
        mask = torch.rand(x.shape[0], device=x.device) < self.flip
        return torch.where(mask[:, None, None, None], self.TF.horizontal_flip(x), x)

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        angle = (torch.rand(x.shape[0], device=x.device) * 2 - 1) * math.radians(self.rotation)
        cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out if x.is_floating_point() else out.round_().to(x.dtype)
