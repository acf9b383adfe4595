"""Data sets held as tensors: compact inputs (uint8 images), labels, and a per-batch transform.

Small data sets live whole in memory (on the training device when it fits): an epoch is a permutation of
indices and a batch is one gather, so the hot loop runs no per-sample Python, no PIL and no DataLoader.
Normalisation happens per batch on the device (`TensorData.inputs`). torchvision is imported only by the
loaders that need it, to keep `lrtrain`'s start-up close to `import torch` alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import torch


class DataError(Exception):
    """A data set that cannot be read: names the root and what was expected there."""


@dataclass
class Split:
    x: torch.Tensor  # stored inputs, compact dtype (uint8 images, float for tabular data)
    y: torch.Tensor  # int64 class labels, or float targets for regression

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass
class TensorData:
    name: str
    train: Split
    val: Split
    test: Optional[Split]
    num_classes: Optional[int]  # None: regression
    mean: torch.Tensor  # per-channel, broadcastable to a batch of stored inputs
    std: torch.Tensor
    batch_size: int
    eval_batch_size: int
    image_kind: Optional[str] = None  # "natural" (flips allowed), "glyphs" (digits, letters), None: not images

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def task(self) -> str:
        return "regression" if self.num_classes is None else "classification"

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Stored inputs to model inputs: float32, normalised with the training split's statistics."""
        return (x.float() - self.mean) / self.std

    def to(self, device: torch.device) -> "TensorData":
        move = lambda s: None if s is None else Split(s.x.to(device), s.y.to(device))  # noqa: E731
        return replace(self, train=move(self.train), val=move(self.val), test=move(self.test),
                       mean=self.mean.to(device), std=self.std.to(device))


def _split(x: torch.Tensor, y: torch.Tensor, val_fraction: float, seed: int) -> tuple[Split, Split]:
    """A fixed validation split, drawn with its own seed so it does not move when the training seed does."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(len(x) * val_fraction))
    return Split(x[order[n_val:]], y[order[n_val:]]), Split(x[order[:n_val]], y[order[:n_val]])


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean/std over a (N, C, ...) tensor, shaped to broadcast against a batch."""
    dims = [0] + list(range(2, x.dim()))
    xf = x.double()
    mean, std = xf.mean(dim=dims, keepdim=True), xf.std(dim=dims, keepdim=True)
    shape = (1,) + tuple(mean.shape[1:])
    return mean.float().reshape(shape)[0], std.clamp_min(1e-8).float().reshape(shape)[0]


def _assemble(name: str, x: torch.Tensor, y: torch.Tensor, test: Optional[Split], num_classes: Optional[int],
              batch_size: int, eval_batch_size: int, val_fraction: float, split_seed: int) -> TensorData:
    train, val = _split(x, y, val_fraction, split_seed)
    mean, std = _channel_stats(train.x)
    return TensorData(name, train, val, test, num_classes, mean, std, batch_size, eval_batch_size)


def digits(batch_size: int, eval_batch_size: int, val_fraction: float, split_seed: int) -> TensorData:
    """scikit-learn's bundled 8x8 digits (1,797 real images, 10 classes): offline, the embedded default.

    Reads the file that `sklearn.datasets.load_digits` reads, in the same way, without importing sklearn
    (whose import alone takes longer than training on these digits).
    """
    import importlib.util

    import numpy as np

    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise DataError("digits: scikit-learn's bundled digits.csv.gz was not found; install scikit-learn")
    table = np.loadtxt(path, delimiter=",")
    x = torch.from_numpy(table[:, :-1]).to(torch.uint8).reshape(-1, 1, 8, 8)  # values 0..16
    y = torch.from_numpy(table[:, -1]).long()
    data = _assemble("digits", x, y, None, 10, batch_size, eval_batch_size, val_fraction, split_seed)
    return replace(data, image_kind="glyphs")


_MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte"]


def _torchvision_images(cls_name: str, root: str, download: bool, files: list[str]):
    from torchvision import datasets

    cls = getattr(datasets, cls_name)
    root_path = Path(root).expanduser()
    try:
        train = cls(str(root_path), train=True, download=download)
        test = cls(str(root_path), train=False, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found. You can use download=True to download it"
        where = root_path / cls_name / "raw"
        how = "set dataset.download=true (needs network access)" if not download else "check network access"
        raise DataError(f"{cls_name} not found under {where}: expected {', '.join(files)} "
                        f"(or their .gz archives); {how}, or point dataset.root at a copy ({e})") from None
    return train, test


def mnist(root: str, download: bool, batch_size: int, eval_batch_size: int, val_fraction: float,
          split_seed: int, variant: str = "MNIST") -> TensorData:
    """torchvision's MNIST (or FashionMNIST via `variant`), read whole as uint8 tensors."""
    train, test = _torchvision_images(variant, root, download, _MNIST_FILES)
    x = train.data.unsqueeze(1).contiguous()  # (N, 1, 28, 28) uint8
    test_split = Split(test.data.unsqueeze(1).contiguous(), test.targets.long())
    data = _assemble(variant.lower(), x, train.targets.long(), test_split, 10, batch_size, eval_batch_size,
                     val_fraction, split_seed)
    return replace(data, image_kind="natural" if variant == "FashionMNIST" else "glyphs")
