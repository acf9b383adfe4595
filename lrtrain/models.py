"""Models. Each takes its input shape and output size from the data set; dropout from regularization.

torchvision is imported only when `resnet18` or `vit` is built, to keep start-up close to `import torch` alone.
`GPT` is the one model that reads token ids (`takes_tokens`): the text data sets are for it alone.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
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
    """Flatten, then Linear(-Norm)-Activation(-Dropout) for each hidden size, then a Linear head.

    `parametrization="mup"`: μP (lrtrain.parametrization) against the same MLP with every hidden layer
    `base_width` wide: the hidden biases and the head rescaled, and the head's input divided by its width
    multiplier (a `Scale` in front of it). Its init must scale with fan-in (torch's or Kaiming's)."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, hidden: list[int], activation: str,
                 init: str, norm: str, dropout: float = 0.0, parametrization: str = "sp",
                 base_width: Optional[int] = None):
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden:
            # a batch norm's shift makes the Linear's bias redundant
            layers += [nn.Linear(width, h, bias=norm != "batch"), *_norm(norm, h, conv=False), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        mup = parametrization == "mup"
        if mup:
            from lrtrain.parametrization import Scale

            layers.append(Scale(1.0))  # the readout multiplier, set below
        layers.append(nn.Linear(width, num_outputs))
        super().__init__(*layers)
        initialise(self, init, activation)
        if mup:
            from lrtrain.parametrization import rescale_fan_in_init, width_dims, width_mult

            with torch.device("meta"):  # shapes only: no memory, no random numbers drawn
                base = MLP(input_shape, num_outputs, [base_width] * len(hidden), activation, "torch", norm)
            self.mup_dims = width_dims(self, base)
            rescale_fan_in_init(self, readout=self[-1])
            self[-2].factor = 1.0 / width_mult(self.mup_dims[f"{len(self) - 1}.weight"])


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


# -------------------------------------------------------------------------------------------------- GPT


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which each position sees itself and the positions before it (torch's
    scaled_dot_product_attention with is_causal=True, which picks a fused kernel where one fits)."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool, scale: Optional[float] = None):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)  # query, key and value in one matmul
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head, self.dropout = n_head, dropout
        self.scale = scale  # of the attention logits; None: 1/sqrt(head size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
                   for z in self.c_attn(x).split(c, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=True, scale=self.scale)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(b, t, c)))


class GPTBlock(nn.Module):
    """Attention then a 4x GELU MLP, each in a residual branch: normalised before the branch (`pre`, GPT-2 and
    nanoGPT) or after the sum (`post`, the original Transformer, which needs warmup to train)."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool, norm_position: str,
                 attn_scale: Optional[float] = None):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias, attn_scale)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd, bias=bias), nn.GELU(),
                                 nn.Linear(4 * n_embd, n_embd, bias=bias), nn.Dropout(dropout))
        self.pre = norm_position == "pre"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre:
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x))
        return self.ln_2(x + self.mlp(x))


class GPT(nn.Module):
    """A decoder-only Transformer as in nanoGPT: token and learned position embeddings, `n_layer` blocks, a
    final LayerNorm (pre-norm only: post-norm blocks already end on one), and an output head that shares the
    token embedding's weights. Logits [batch, time, vocabulary] for token ids [batch, time].

    Initialisation is nanoGPT's (GPT-2's): every Linear and Embedding weight N(0, 0.02), biases 0, and the
    projections that end a residual branch N(0, 0.02 / sqrt(2 n_layer)), so the residual stream's variance does
    not grow with depth.

    `parametrization="mup"`: μP (lrtrain.parametrization) against the same GPT `base_width` wide (n_embd, with
    the same heads): hidden matrices drawn with std / sqrt(fan-in multiplier) (mup.init.normal_), attention
    logits scaled by sqrt(base head size) / head size (1/d, equal to 1/sqrt(d) at base width), and the tied
    head's input divided by the width multiplier (mup's MuSharedReadout).
    """

    takes_tokens = True

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, n_layer: int, n_head: int, n_embd: int,
                 dropout: float, bias: bool, norm_position: str, block_size: Optional[int] = None,
                 parametrization: str = "sp", base_width: Optional[int] = None):
        super().__init__()
        if len(input_shape) != 1:
            raise ModelInputError(f"gpt reads windows of token ids (dataset=text or shakespeare), not inputs of "
                                  f"shape {tuple(input_shape)}")
        window = input_shape[0]
        block_size = window if block_size is None else block_size
        if block_size < window:
            raise ModelInputError(f"model.block_size={block_size} is shorter than the data's windows "
                                  f"(dataset.block_size={window}): set model.block_size >= {window}, or null")
        mup = parametrization == "mup"
        attn_scale = math.sqrt(base_width // n_head) / (n_embd // n_head) if mup else None
        self.block_size = block_size
        self.wte = nn.Embedding(num_outputs, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.h = nn.ModuleList(GPTBlock(n_embd, n_head, dropout, bias, norm_position, attn_scale)
                               for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=bias) if norm_position == "pre" else nn.Identity()
        self.lm_head = nn.Linear(n_embd, num_outputs, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: one matrix embeds tokens and scores them
        self.readout: Optional[nn.Module] = None
        factor: dict[int, float] = {}  # a weight's std factor (by id): μP's for hidden matrices, else 1
        if mup:
            from lrtrain.parametrization import Scale, width_dims, width_mult

            with torch.device("meta"):  # shapes only: no memory, no random numbers drawn
                base = GPT(input_shape, num_outputs, n_layer, n_head, base_width, dropout, bias, norm_position,
                           block_size)
            self.mup_dims = width_dims(self, base)
            for name, p in self.named_parameters():  # mup.init.normal_: two width dims, std / sqrt(fan-in mult)
                dims = self.mup_dims[name]
                if sum(m is not None for m in dims) == 2:
                    factor[id(p)] = width_mult(dims) ** -0.5
            self.readout = Scale(1.0 / width_mult(self.mup_dims["wte.weight"]))
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02 * factor.get(id(module.weight), 1.0))
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.h:  # the projections back into the residual stream
            for proj in (block.attn.c_proj, block.mlp[2]):
                nn.init.normal_(proj.weight, mean=0.0,
                                std=0.02 / math.sqrt(2 * n_layer) * factor.get(id(proj.weight), 1.0))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        if self.readout is not None:
            x = self.readout(x)
        return self.lm_head(x)


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


def _gpt_size(input_shape: tuple[int, ...], num_outputs: int, n_layer: int, n_embd: int, bias: bool,
              norm_position: str, block_size: Optional[int] = None, **_: object) -> int:
    e, b = n_embd, int(bias)
    block = 12 * e * e + 2 * e + 11 * b * e  # two LayerNorms, qkv and its projection, the 4x MLP
    final = e + b * e if norm_position == "pre" else 0
    return (num_outputs + (block_size or input_shape[0])) * e + n_layer * block + final  # the head is tied


# lrtrain's models by their _target_: the size of each (its parameter count, from its config, without building
# it) and the keys that set it
SIZES = {
    "lrtrain.models.MLP": (_mlp_size, ("hidden",)),
    "lrtrain.models.CNN": (_cnn_size, ("channels", "hidden")),
    "lrtrain.models.vit": (_vit_size, ("depth", "width", "mlp_width", "patch_size")),
    "lrtrain.models.Linear": (lambda input_shape, num_outputs, **_: (math.prod(input_shape) + 1) * num_outputs, ()),
    "lrtrain.models.GPT": (_gpt_size, ("n_layer", "n_embd", "block_size")),
    "lrtrain.models.resnet18": (lambda input_shape, num_outputs, **_: 11_167_104 + 576 * input_shape[0]
                                + 513 * num_outputs, ()),
}


def parameter_count(target: str, input_shape: tuple[int, ...], num_outputs: int, **settings: object) -> int | None:
    """How many parameters model `target` with these settings will have; None for a model lrtrain does not
    know (a _target_ of the user's)."""
    size = SIZES.get(target)
    return size[0](input_shape=tuple(input_shape), num_outputs=num_outputs, **settings) if size else None
