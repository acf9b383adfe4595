"""Data sets held as tensors: compact inputs (uint8 images), labels, and a per-batch transform.

Small data sets live whole in memory (on the training device when it fits): an epoch is a permutation of
indices and a batch is one gather, so the hot loop runs no per-sample Python, no PIL and no DataLoader.
Normalisation happens per batch on the device (`TensorData.inputs`). torchvision is imported only by the
loaders that need it, to keep `lrtrain`'s start-up close to `import torch` alone.

A data set is a batch source for the loop: `train_batches(generator)` yields one epoch of (inputs, targets)
in an order drawn from `generator` (a generator on the training device, saved in checkpoints), and
`eval_batches(split)` walks a split in order. `TensorData` does this with an index permutation; `FolderData`
(a user's own image folders, too big to hold whole) with a DataLoader and worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Optional

import torch

from lrtrain.errors import DataError


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
    kind: str = "digits"  # "digits" | "natural" (flips keep the meaning) | "tabular": tells augmentation what fits

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Stored inputs to model inputs: float32, normalised with the training split's statistics (in place on
        the fresh float copy: one allocation, not three)."""
        return x.to(torch.float32, copy=True).sub_(self.mean).div_(self.std)

    def train_batches(self, generator: torch.Generator, start: int = 0,
                      shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of stored batches from batch `start` on: a permutation drawn on the generator's device,
        then one gather per batch. The caller augments and normalises (`inputs`).

        `shard=(rank, world_size)`: every rank draws the same permutation and takes every world_size-th sample
        of each global batch of batch_size x world_size samples, so the ranks' batches are disjoint."""
        x, y, bs = self.train.x, self.train.y, self.batch_size
        perm = torch.randperm(len(x), generator=generator, device=generator.device)
        rank, world = shard
        step = bs * world
        for i in range(start * step, len(x), step):
            idx = perm[i:i + step]
            if len(idx) < world:  # a last global batch too small to share: top it up from the epoch's start
                idx = torch.cat([idx, perm[:world - len(idx)]])
            idx = idx[rank::world]
            yield x.index_select(0, idx), y.index_select(0, idx)  # 5x faster than x[idx] for uint8 images

    def eval_batches(self, split: Split) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Stored batches of a split, in order."""
        for i in range(0, len(split), self.eval_batch_size):
            yield split.x[i:i + self.eval_batch_size], split.y[i:i + self.eval_batch_size]

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
    """Per-channel mean/std over a (N, C, ...) tensor, shaped to broadcast against a batch.

    Sums in float64 chunk by chunk: a float64 copy of the whole split would cost 8 bytes per uint8 pixel.
    """
    channels, count = x.shape[1], x.numel() // x.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for chunk in x.split(4096):
        values = chunk.transpose(0, 1).reshape(channels, -1).double()
        total += values.sum(1)
        total_sq += values.square().sum(1)
    mean = total / count
    std = ((total_sq - count * mean.square()) / max(count - 1, 1)).clamp_min(0).sqrt()
    shape = (channels,) + (1,) * (x.dim() - 2)
    return mean.float().reshape(shape), std.clamp_min(1e-8).float().reshape(shape)


def _assemble(name: str, x: torch.Tensor, y: torch.Tensor, test: Optional[Split], num_classes: Optional[int],
              batch_size: int, eval_batch_size: int, val_fraction: float, split_seed: int,
              kind: str = "digits") -> TensorData:
    train, val = _split(x, y, val_fraction, split_seed)
    mean, std = _channel_stats(train.x)
    return TensorData(name, train, val, test, num_classes, mean, std, batch_size, eval_batch_size, kind)


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
    return _assemble("digits", x, y, None, 10, batch_size, eval_batch_size, val_fraction, split_seed, kind="digits")


_MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte"]
_CIFAR10_FILES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                  "batches.meta"]
_FOLDERS = {"MNIST": "MNIST/raw", "FashionMNIST": "FashionMNIST/raw", "CIFAR10": "cifar-10-batches-py"}


def _torchvision_images(cls_name: str, root: str, download: bool, files: list[str]):
    from torchvision import datasets

    cls = getattr(datasets, cls_name)
    if cls_name == "CIFAR10" and not download:
        cls = _present_cifar10()
    root_path = Path(root).expanduser()
    try:
        train = cls(str(root_path), train=True, download=download)
        test = cls(str(root_path), train=False, download=download)
    except (RuntimeError, OSError) as e:  # torchvision: "Dataset not found. You can use download=True ..."
        where = root_path / _FOLDERS[cls_name]
        how = ("set dataset.download=true (needs network access)" if not download
               else "check network access (the download failed)")
        raise DataError(f"{cls_name} not found under {where}: expected {', '.join(files)}; {how}, "
                        f"or point dataset.root at a folder that holds them ({_first_line(e)})") from None
    return train, test


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _present_cifar10():
    """torchvision's CIFAR10 checking that its files are present, not their checksums.

    That is what torchvision's MNIST does when it is not downloading, and it lets a user (or a test) bring
    CIFAR-10-format files of their own. With download=true the stock class is used and verifies checksums.
    """
    from torchvision import datasets

    base = datasets.CIFAR10
    return type("CIFAR10", (base,), {
        "train_list": [[name, None] for name, _ in base.train_list],
        "test_list": [[name, None] for name, _ in base.test_list],
        "meta": {**base.meta, "md5": None},
    })


def mnist(root: str, download: bool, batch_size: int, eval_batch_size: int, val_fraction: float,
          split_seed: int, variant: str = "MNIST") -> TensorData:
    """torchvision's MNIST (or FashionMNIST via `variant`), read whole as uint8 tensors."""
    train, test = _torchvision_images(variant, root, download, _MNIST_FILES)
    x = train.data.unsqueeze(1).contiguous()  # (N, 1, 28, 28) uint8
    test_split = Split(test.data.unsqueeze(1).contiguous(), test.targets.long())
    kind = "digits" if variant == "MNIST" else "natural"
    return _assemble(variant.lower(), x, train.targets.long(), test_split, 10, batch_size, eval_batch_size,
                     val_fraction, split_seed, kind)


def fashion_mnist(root: str, download: bool, batch_size: int, eval_batch_size: int, val_fraction: float,
                  split_seed: int) -> TensorData:
    """torchvision's FashionMNIST: 28x28 grey clothing images, 10 classes, same file format as MNIST."""
    return mnist(root, download, batch_size, eval_batch_size, val_fraction, split_seed, variant="FashionMNIST")


def cifar10(root: str, download: bool, batch_size: int, eval_batch_size: int, val_fraction: float,
            split_seed: int) -> TensorData:
    """torchvision's CIFAR10: 32x32 colour images, 10 classes, read whole as uint8 (N, 3, 32, 32)."""
    train, test = _torchvision_images("CIFAR10", root, download, _CIFAR10_FILES)
    as_nchw = lambda d: torch.from_numpy(d).permute(0, 3, 1, 2).contiguous()  # noqa: E731  (stored HWC)
    test_split = Split(as_nchw(test.data), torch.tensor(test.targets, dtype=torch.long))
    return _assemble("cifar10", as_nchw(train.data), torch.tensor(train.targets, dtype=torch.long), test_split,
                     10, batch_size, eval_batch_size, val_fraction, split_seed, kind="natural")


def regression(num_samples: int, num_test: int, num_features: int, noise: float, seed: int, batch_size: int,
               eval_batch_size: int, val_fraction: float, split_seed: int) -> TensorData:
    """The classic synthetic task: x ~ N(0, 1)^d, y = 2·Σx + 3 (+ N(0, noise²)); MSE loss, no accuracy.

    Inputs are already standard normal, so they are used as they are (mean 0, std 1): a linear model can
    recover the weights 2 and the bias 3 exactly.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples + num_test, num_features, generator=g)
    y = 2 * x.sum(1) + 3 + noise * torch.randn(num_samples + num_test, generator=g)
    train, val = _split(x[:num_samples], y[:num_samples], val_fraction, split_seed)
    test = Split(x[num_samples:], y[num_samples:]) if num_test else None
    return TensorData("regression", train, val, test, None, torch.zeros(num_features), torch.ones(num_features),
                      batch_size, eval_batch_size, kind="tabular")


# ------------------------------------------------------------------------------------------ image folders


class _Order(torch.utils.data.Sampler):
    """The DataLoader's sampler: yields whatever order the loop drew for this epoch (on its own generator)."""

    def __init__(self) -> None:
        self.order: list[int] = []

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


@dataclass
class FolderData:
    """A user's own images (torchvision ImageFolder), decoded by DataLoader workers, normalised on the device.

    Same interface as TensorData for the loop; the splits are torch Datasets rather than tensors.
    """

    name: str
    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    test: Optional[torch.utils.data.Dataset]
    num_classes: int
    mean: torch.Tensor  # in stored units (0..255), shaped (C, 1, 1)
    std: torch.Tensor
    batch_size: int
    eval_batch_size: int
    image_size: int
    num_workers: int
    kind: str = "natural"
    device: torch.device = torch.device("cpu")

    def __post_init__(self) -> None:
        self._order = _Order()
        self._loaders: dict[int, torch.utils.data.DataLoader] = {}

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (3, self.image_size, self.image_size)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std

    def _loader(self, dataset, batch_size: int, sampler=None) -> torch.utils.data.DataLoader:
        key = id(dataset)
        if key not in self._loaders:
            self._loaders[key] = torch.utils.data.DataLoader(
                dataset, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
                persistent_workers=self.num_workers > 0, pin_memory=self.device.type == "cuda")
        return self._loaders[key]

    def _batches(self, loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def train_batches(self, generator: torch.Generator, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Stored (uint8) batches from batch `start` on, in the order drawn on `generator`."""
        perm = torch.randperm(len(self.train), generator=generator, device=generator.device)
        self._order.order = perm[start * self.batch_size:].tolist()  # one host copy per epoch
        return self._batches(self._loader(self.train, self.batch_size, self._order))

    def eval_batches(self, split) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._batches(self._loader(split, self.eval_batch_size))

    def to(self, device: torch.device) -> "FolderData":
        return replace(self, mean=self.mean.to(device), std=self.std.to(device), device=torch.device(device))


def folder(root: str, test_root: Optional[str], image_size: int, mean: list[float], std: list[float],
           num_workers: int, batch_size: int, eval_batch_size: int, val_fraction: float,
           split_seed: int) -> FolderData:
    """torchvision ImageFolder: `root/<class>/<image>`; images resized to image_size x image_size, RGB."""
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.PILToTensor()])
    paths = {"dataset.root": root, "dataset.test_root": test_root}
    loaded = {}
    for key, path in paths.items():
        if path is None:
            continue
        where = Path(path).expanduser()
        try:
            loaded[key] = datasets.ImageFolder(str(where), transform=transform)
        except (FileNotFoundError, OSError) as e:
            raise DataError(f"{key}={path}: expected a folder of class folders with images inside, "
                            f"{where}/<class>/<image>.png|jpg|... ({_first_line(e)})") from None
    full = loaded["dataset.root"]
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(split_seed)).tolist()
    n_val = max(1, round(len(full) * val_fraction))
    train = torch.utils.data.Subset(full, order[n_val:])
    val = torch.utils.data.Subset(full, order[:n_val])
    test = loaded.get("dataset.test_root")
    if test is not None and test.classes != full.classes:
        raise DataError(f"dataset.test_root={test_root}: its class folders {test.classes} differ from "
                        f"dataset.root's {full.classes}")
    as_stored = lambda v: torch.tensor(v, dtype=torch.float32).reshape(-1, 1, 1) * 255  # noqa: E731
    return FolderData("folder", train, val, test, len(full.classes), as_stored(mean),
                      as_stored(std), batch_size, eval_batch_size, image_size, num_workers)
