"""Data sets held as tensors: compact inputs (uint8 images), labels, and a per-batch transform.

Small data sets live whole in memory (on the training device when it fits): an epoch is a permutation of
indices and a batch is one gather, so the hot loop runs no per-sample Python, no PIL and no DataLoader.
Normalisation happens per batch on the device (`TensorData.inputs`). torchvision is imported only by the
loaders that need it, to keep `lrtrain`'s start-up close to `import torch` alone.

A data set is a batch source for the loop: `train_batches(generator)` yields one epoch of (inputs, targets)
in an order drawn from `generator` (a generator on the training device, saved in checkpoints), and
`eval_batches(split)` walks a split in order. `TensorData` does this with an index permutation; `FolderData`
(a user's own image folders, too big to hold whole) with a DataLoader and worker processes; `TextData` (a text
for a language model) with windows at random offsets, drawn an epoch at a time on the same generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Optional

import torch

from lrtrain.config import validation_size
from lrtrain.errors import DataError, DataFileError


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
    n_val = validation_size(len(x), val_fraction)
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


def _not_found(cls_name: str, root_path: Path, download: bool, files: list[str], e: BaseException) -> DataError:
    where = root_path / _FOLDERS[cls_name]
    how = ("set dataset.download=true (needs network access)" if not download
           else "check network access (the download failed)")
    return DataError(f"{cls_name} not found under {where}: expected {', '.join(files)}; {how}, "
                     f"or point dataset.root at a folder that holds them ({_first_line(e)})")


def _torchvision_images(cls_name: str, root: str, download: bool, files: list[str]):
    from torchvision import datasets

    cls = getattr(datasets, cls_name)
    root_path = Path(root).expanduser()
    raw = root_path / _FOLDERS[cls_name]
    if all((raw / name).is_file() for name in files):  # what torchvision would read (or download over)
        _check_idx_headers(raw)
    try:
        train = cls(str(root_path), train=True, download=download)
        test = cls(str(root_path), train=False, download=download)
    except (RuntimeError, OSError) as e:  # torchvision: "Dataset not found. You can use download=True ..."
        raise _not_found(cls_name, root_path, download, files, e) from None
    for split, labels in ((train, "train-labels-idx1-ubyte"), (test, "t10k-labels-idx1-ubyte")):
        _check_labels(raw / labels, split.targets, 10)
    return train, test


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


# IDX magic numbers: 0x08 (unsigned bytes) then the number of dimensions.
_IDX_MAGIC = {"images": (0x00000803, 3), "labels": (0x00000801, 1)}


def _check_idx_headers(raw: Path) -> None:
    """Each MNIST-format file's header against its size and its partner: the right kind of file, whole, and
    as many labels as images. Reads 16 bytes a file; torchvision then reads the files themselves."""
    import struct

    for prefix in ("train", "t10k"):
        counts = {}
        for kind in ("images", "labels"):
            path = raw / f"{prefix}-{kind}-idx{_IDX_MAGIC[kind][1]}-ubyte"
            magic, ndim = _IDX_MAGIC[kind]
            size = path.stat().st_size
            with open(path, "rb") as f:
                header = f.read(4 + 4 * ndim)
            found = struct.unpack(">I", header[:4])[0] if len(header) >= 4 else None
            if found != magic:
                raise DataFileError(f"{path}: not an MNIST {kind} file: expected the IDX magic number "
                                    f"0x{magic:08x} (unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''}), "
                                    f"found {'nothing' if found is None else f'0x{found:08x}'}")
            if len(header) < 4 + 4 * ndim:
                raise DataFileError(f"{path}: truncated: {size} bytes, shorter than its {4 + 4 * ndim}-byte header")
            dims = struct.unpack(f">{ndim}I", header[4:])
            expected = len(header) + math.prod(dims)
            if size != expected:
                shape = "x".join(map(str, dims))
                raise DataFileError(f"{path}: {'truncated' if size < expected else 'too long'}: its header says "
                                    f"{shape} {kind} ({expected} bytes), the file has {size} bytes")
            counts[kind] = (dims[0], path)
        (n_images, images), (n_labels, labels) = counts["images"], counts["labels"]
        if n_images != n_labels:
            raise DataFileError(f"{labels}: {n_labels} labels for the {n_images} images of {images.name}: "
                                "expected one label per image")


def _check_labels(path: Path, labels, num_classes: int) -> None:
    """Class labels must index the model's outputs: 0 .. num_classes - 1."""
    labels = torch.as_tensor(labels)
    bad = ((labels < 0) | (labels >= num_classes)).nonzero()
    if len(bad):
        i = bad[0].item()
        raise DataFileError(f"{path}: label {labels[i].item()} at position {i}: expected class labels "
                            f"0..{num_classes - 1}")


# What a CIFAR batch (a pickled dict of lists, strings and one numpy array) may ask the unpickler to build:
# numpy's array reconstruction and nothing else. Anything else is code, and refused before it runs.
_ARRAY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy", "ndarray"), ("numpy", "dtype")}


class _Refused(Exception):
    pass


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """How Python 3 writes bytes into a protocol-2 pickle (`_codecs.encode(text, 'latin1')`), and nothing else."""
    if encoding != "latin1" or not isinstance(text, str):
        raise _Refused(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _load_data_pickle(path: Path) -> object:
    """A pickle that may hold only plain values and numpy arrays; raises DataFileError naming the file."""
    import pickle

    class DataUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if (module, name) in _ARRAY_GLOBALS:
                return super().find_class(module, name)
            if (module, name) == ("_codecs", "encode"):
                return _latin1_bytes
            raise _Refused(f"{module}.{name}")

    try:
        with open(path, "rb") as f:
            return DataUnpickler(f, encoding="latin1").load()
    except _Refused as e:
        raise DataFileError(f"{path}: refused: it asks to load {e}, which is code, not data "
                            "(a CIFAR batch holds only arrays, lists and strings)") from None
    except Exception as e:  # truncated or not a pickle at all
        raise DataFileError(f"{path}: not a CIFAR-10 batch (truncated or corrupt? "
                            f"{type(e).__name__}: {_first_line(e)[:120]})") from None


def _cifar10_batches(root_path: Path, names: list[str], num_classes: int = 10):
    """Images (N, 3, 32, 32) uint8 and labels of CIFAR-10 batch files, each checked against the format."""
    import numpy as np

    xs, ys = [], []
    for name in names:
        path = root_path / _FOLDERS["CIFAR10"] / name
        entry = _load_data_pickle(path)
        data = entry.get("data") if isinstance(entry, dict) else None
        labels = entry.get("labels") if isinstance(entry, dict) else None
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                and data.shape[1] == 3 * 32 * 32 and isinstance(labels, list)):
            raise DataFileError(f"{path}: not a CIFAR-10 batch: expected a dict with 'data' (uint8, N x 3072) "
                                "and 'labels' (a list)")
        if len(labels) != len(data):
            raise DataFileError(f"{path}: {len(labels)} labels for {len(data)} images: expected one label "
                                "per image")
        if not all(isinstance(v, int) for v in labels):
            raise DataFileError(f"{path}: labels must be integers 0..{num_classes - 1}")
        xs.append(torch.from_numpy(data).reshape(-1, 3, 32, 32))
        ys.append(torch.tensor(labels, dtype=torch.long))
        _check_labels(path, ys[-1], num_classes)
    return torch.cat(xs), torch.cat(ys)


def _cifar10(root: str, download: bool) -> tuple[Split, Split]:
    """CIFAR-10's training and test batches. torchvision's class gives the layout and the download (which
    verifies checksums); the batches are read here as data only, whoever wrote them."""
    from torchvision import datasets

    cls = datasets.CIFAR10
    root_path = Path(root).expanduser()
    try:
        if download:
            downloader = cls.__new__(cls)
            downloader.root = str(root_path)  # all that CIFAR10.download() reads
            downloader.download()
        missing = [name for name in _CIFAR10_FILES if not (root_path / cls.base_folder / name).is_file()]
        if missing:
            raise FileNotFoundError("none of them is there" if len(missing) == len(_CIFAR10_FILES)
                                    else f"missing {', '.join(missing)}")
    except (RuntimeError, OSError) as e:
        raise _not_found("CIFAR10", root_path, download, _CIFAR10_FILES, e) from None
    meta = _load_data_pickle(root_path / cls.base_folder / cls.meta["filename"])
    if not (isinstance(meta, dict) and isinstance(meta.get(cls.meta["key"]), list)):
        raise DataFileError(f"{root_path / cls.base_folder / cls.meta['filename']}: not CIFAR-10 metadata: "
                            f"expected a dict with '{cls.meta['key']}' (a list of class names)")
    train = _cifar10_batches(root_path, [name for name, _ in cls.train_list])
    test = _cifar10_batches(root_path, [name for name, _ in cls.test_list])
    return Split(*train), Split(*test)


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
    """CIFAR-10: 32x32 colour images, 10 classes, read whole as uint8 (N, 3, 32, 32)."""
    train, test = _cifar10(root, download)
    return _assemble("cifar10", train.x, train.y, test, 10, batch_size, eval_batch_size, val_fraction,
                     split_seed, kind="natural")


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


def _load_image(path: str):
    """torchvision's image loader, naming the file when it cannot be decoded. It runs in DataLoader workers,
    whose re-raised error keeps only the message: without the name, a corrupt image is not found."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except Exception as e:
        raise DataFileError(f"{path}: not a readable image ({type(e).__name__}: {_first_line(e)[:160]})") from None


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
            loaded[key] = datasets.ImageFolder(str(where), transform=transform, loader=_load_image)
        except (FileNotFoundError, OSError) as e:
            raise DataError(f"{key}={path}: expected a folder of class folders with images inside, "
                            f"{where}/<class>/<image>.png|jpg|... ({_first_line(e)})") from None
    full = loaded["dataset.root"]
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(split_seed)).tolist()
    n_val = validation_size(len(full), val_fraction)
    train = torch.utils.data.Subset(full, order[n_val:])
    val = torch.utils.data.Subset(full, order[:n_val])
    test = loaded.get("dataset.test_root")
    if test is not None and test.classes != full.classes:
        raise DataError(f"dataset.test_root={test_root}: its class folders {test.classes} differ from "
                        f"dataset.root's {full.classes}")
    as_stored = lambda v: torch.tensor(v, dtype=torch.float32).reshape(-1, 1, 1) * 255  # noqa: E731
    return FolderData("folder", train, val, test, len(full.classes), as_stored(mean),
                      as_stored(std), batch_size, eval_batch_size, image_size, num_workers)


# -------------------------------------------------------------------------------------------------- text


@dataclass
class TextSplit:
    """A split of a text: its token ids, one int64 tensor. `len` counts the windows of an epoch (training) or
    of one pass over the split (validation): what the loop counts as samples."""

    tokens: torch.Tensor
    windows: int

    def __len__(self) -> int:
        return self.windows


@dataclass
class TextData:
    """A text as token ids, for a language model: a sample is a window of `block_size` tokens, its targets the
    same window shifted one token on.

    Training windows start at random offsets drawn from the run's generator, one draw of a whole epoch's
    offsets at its start (as TensorData draws its permutation), so a resume mid-epoch replays them exactly. An
    epoch is floor(training tokens / (batch_size x block_size)) steps (at least one): about one pass over the
    training text. Validation reads the split once, in consecutive windows that do not overlap.
    """

    name: str
    train: TextSplit
    val: TextSplit
    vocabulary: Optional[str]  # level=char: the text's sorted characters (token i is vocabulary[i]); byte: None
    block_size: int
    batch_size: int
    eval_batch_size: int
    test: Optional[TextSplit] = None  # a text has no test split
    kind: str = "text"

    def __post_init__(self) -> None:
        # the epoch's windows depend on the batch size, which a sweep may change on shared data (build.load_data)
        steps = max(1, len(self.train.tokens) // (self.batch_size * self.block_size))
        self.train = TextSplit(self.train.tokens, steps * self.batch_size)
        self.val = TextSplit(self.val.tokens, (len(self.val.tokens) - 1) // self.block_size)

    @property
    def num_classes(self) -> int:
        return 256 if self.vocabulary is None else len(self.vocabulary)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.block_size,)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x  # token ids go to the model's embedding as they are

    def train_batches(self, generator: torch.Generator, start: int = 0,
                      shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's batches from batch `start` on: (inputs, targets), each [batch_size, block_size].

        `shard=(rank, world_size)`: every rank draws the same offsets and takes every world_size-th window of
        each global batch of batch_size x world_size windows."""
        tokens, block, bs = self.train.tokens, self.block_size, self.batch_size
        rank, world = shard
        step = bs * world
        n = -(-len(self.train) // step) * step  # whole global batches
        # nanoGPT's get_batch: offsets in [0, len - block), so every window has its block + 1 tokens
        offsets = torch.randint(len(tokens) - block, (n,), generator=generator, device=generator.device)
        windows = tokens.unfold(0, block + 1, 1)  # a view: row i is tokens[i : i + block + 1]
        for i in range(start * step, n, step):
            w = windows.index_select(0, offsets[i + rank:i + step:world])
            yield w[:, :-1], w[:, 1:]

    def eval_batches(self, split: TextSplit) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Consecutive non-overlapping windows of a split, eval_batch_size at a time."""
        block, n = self.block_size, len(split)
        x = split.tokens[:n * block].view(n, block)
        y = split.tokens[1:n * block + 1].view(n, block)
        for i in range(0, n, self.eval_batch_size):
            yield x[i:i + self.eval_batch_size], y[i:i + self.eval_batch_size]

    def decode(self, tokens: torch.Tensor) -> str:
        """Token ids back to text (bytes that do not form UTF-8 are shown as U+FFFD)."""
        ids = tokens.flatten().tolist()
        if self.vocabulary is None:
            return bytes(ids).decode("utf-8", errors="replace")
        return "".join(self.vocabulary[i] for i in ids)

    def to(self, device: torch.device) -> "TextData":
        return replace(self, train=TextSplit(self.train.tokens.to(device), len(self.train)),
                       val=TextSplit(self.val.tokens.to(device), len(self.val)))


def _embedded_text() -> tuple[str, str]:
    """Python's own documentation topics (pydoc_data, part of the standard library): about 465,000 characters
    of English prose and code, on every machine that runs lrtrain, with no download."""
    from pydoc_data.topics import topics

    return "pydoc_data.topics (Python's documentation topics)", "".join(topics[k] for k in sorted(topics))


def _tokens(raw: bytes, where: str, level: str) -> tuple[torch.Tensor, Optional[str]]:
    """Token ids of a text and its vocabulary (None: bytes). `raw` must be UTF-8 at either level: a byte-level
    model of a file that is not text at all is a mistake worth a line, not a run."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataFileError(f"{where}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r}); "
                            "dataset=text reads UTF-8 files") from None
    if level == "byte":
        import numpy as np

        return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).astype(np.int64)), None
    vocabulary = "".join(sorted(set(text)))
    lookup = {c: i for i, c in enumerate(vocabulary)}
    return torch.tensor([lookup[c] for c in text], dtype=torch.int64), vocabulary


def _text_data(name: str, where: str, raw: bytes, level: str, block_size: int, batch_size: int,
               eval_batch_size: int, val_fraction: float) -> TextData:
    tokens, vocabulary = _tokens(raw, where, level)
    n_train = int(len(tokens) * (1 - val_fraction))  # nanoGPT's prepare.py: int(n * 0.9)
    train, val = tokens[:n_train], tokens[n_train:]
    unit = "characters" if level == "char" else "bytes"
    for split, part in ((train, "training split (the first"), (val, "validation split (the last")):
        if len(split) < block_size + 1:
            share = 1 - val_fraction if part.startswith("training") else val_fraction
            raise DataFileError(f"{where}: its {part} {share:.0%}) has {len(split)} {unit}, shorter than one "
                                f"window of dataset.block_size + 1 = {block_size + 1}: use a longer text, a "
                                "smaller block_size or another val_fraction")
    return TextData(name, TextSplit(train, 0), TextSplit(val, 0), vocabulary, block_size, batch_size,
                    eval_batch_size)


def text(path: Optional[str], level: str, block_size: int, batch_size: int, eval_batch_size: int,
         val_fraction: float) -> TextData:
    """A UTF-8 text file (`path`; null: the embedded corpus) as characters or bytes."""
    if path is None:
        where, content = _embedded_text()
        raw = content.encode("utf-8")
    else:
        file = Path(path).expanduser()
        where = str(file)
        try:
            raw = file.read_bytes()
        except OSError as e:
            raise DataError(f"dataset.path={path}: cannot read {file}: {e.strerror or _first_line(e)}") from None
    return _text_data("text", where, raw, level, block_size, batch_size, eval_batch_size, val_fraction)


def shakespeare(root: str, download: bool, url: str, sha256: str, level: str, block_size: int, batch_size: int,
                eval_batch_size: int, val_fraction: float) -> TextData:
    """Tiny Shakespeare (Karpathy's char-rnn corpus, 1,115,394 characters), in <root>/tinyshakespeare/input.txt.

    torchvision's `download_url` fetches it into a temporary name; it becomes input.txt only once its sha256 is
    the published one, so a failed or cut download leaves nothing that looks finished. (torchvision's own
    integrity check is MD5, and the checksum published for this file is a sha256: hashlib checks it.)
    """
    import hashlib

    folder = Path(root).expanduser() / "tinyshakespeare"
    file = folder / "input.txt"
    if not file.is_file():
        if not download:
            raise DataError(f"tiny Shakespeare not found: expected {file}; set dataset.download=true (needs "
                            "network access), or point dataset.root at a folder holding tinyshakespeare/input.txt")
        from torchvision.datasets.utils import download_url

        part = folder / ".input.txt.part"
        try:
            download_url(url, str(folder), filename=part.name)
        except (OSError, ValueError) as e:  # urllib's URLError is an OSError
            part.unlink(missing_ok=True)
            raise DataError(f"dataset.url={url}: download failed ({_first_line(e)}); check network access, or "
                            f"put the file at {file}") from None
        got = hashlib.sha256(part.read_bytes()).hexdigest()
        if got != sha256:
            part.unlink()
            raise DataFileError(f"{url}: downloaded a file whose sha256 is {got}, expected {sha256} "
                                "(dataset.sha256); nothing was kept")
        part.replace(file)
    raw = file.read_bytes()
    got = hashlib.sha256(raw).hexdigest()
    if got != sha256:
        raise DataFileError(f"{file}: sha256 {got}, expected {sha256} (dataset.sha256): not tiny Shakespeare, or "
                            "corrupt; delete it to download it again")
    return _text_data("shakespeare", str(file), raw, level, block_size, batch_size, eval_batch_size, val_fraction)
