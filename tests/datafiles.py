"""Writers of tiny data sets in the real on-disk formats: MNIST IDX, CIFAR-10 python pickles, image folders."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file as on yann.lecun.com: magic (0, 0, type 0x08 = ubyte, ndim), big-endian dims, raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 60, n_test: int = 20, seed: int = 0) -> Path:
    """`root/<folder>/raw/` with the four uncompressed files torchvision's MNIST and FashionMNIST read."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        # Each class gets a bright column at its own position, so a model can learn it in a few steps.
        images = rng.integers(0, 60, size=(n, 28, 28))
        for i, label in enumerate(labels):
            images[i, :, 2 + 2 * label] = 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def write_cifar10(root: Path, per_batch: int = 10, n_test: int = 20, seed: int = 0) -> Path:
    """`root/cifar-10-batches-py/` with data_batch_1..5, test_batch and batches.meta as python pickles."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)

    def batch(n: int) -> dict:
        return {"batch_label": "tiny", "labels": [int(v) for v in np.arange(n) % 10],
                "data": rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8),
                "filenames": [f"img{i}.png" for i in range(n)]}

    for i in range(1, 6):
        (base / f"data_batch_{i}").write_bytes(pickle.dumps(batch(per_batch), protocol=2))
    (base / "test_batch").write_bytes(pickle.dumps(batch(n_test), protocol=2))
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                            "truck"], "num_cases_per_batch": per_batch, "num_vis": 3072}
    (base / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def write_image_folder(root: Path, classes=("cat", "dog"), per_class: int = 6, size: int = 12) -> Path:
    """`root/<class>/<i>.png`: small RGB PNGs of different sizes (the loader resizes them)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(size + i, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root
