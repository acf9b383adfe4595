"""Every data set option, loaded from tiny files in the real formats written into tmp_path (never downloaded)."""

from __future__ import annotations

import sys

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from conftest import group_options, run_lrtrain
from datafiles import write_cifar10, write_image_folder, write_mnist
from lrtrain.data import FolderData, TensorData
from lrtrain.errors import DataError, DataFileError

TORCHVISION = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}
# option -> (num_classes, input_shape, has a test split, kind)
EXPECTED = {
    "digits": (10, (1, 8, 8), False, "digits"),
    "mnist": (10, (1, 28, 28), True, "digits"),
    "fashion_mnist": (10, (1, 28, 28), True, "natural"),
    "cifar10": (10, (3, 32, 32), True, "natural"),
    "regression": (None, (10,), True, "tabular"),
    "folder": (2, (3, 16, 16), False, "natural"),
}
TEXT = {"text", "shakespeare"}  # token windows for a language model: tests/test_lm.py


@pytest.fixture
def files(tmp_path):
    """A root holding every file-backed data set in its real format."""
    root = tmp_path / "data"
    write_mnist(root, "MNIST")
    write_mnist(root, "FashionMNIST", seed=1)
    write_cifar10(root)
    write_image_folder(root / "images")
    return root


def overrides_for(option: str, root) -> list[str]:
    if option in TORCHVISION:
        return [f"dataset={option}", f"dataset.root={root}", "dataset.download=false"]
    if option == "folder":
        return ["dataset=folder", f"dataset.root={root / 'images'}", "dataset.image_size=16",
                "dataset.num_workers=0"]
    return [f"dataset={option}"]


def load(compose, option, root, *extra):
    try:
        return instantiate(compose(*overrides_for(option, root), *extra).dataset, _convert_="all")
    except InstantiationException as e:  # as build() does: the data set's own error, not Hydra's wrapper
        raise e.__cause__ from None


def test_every_option_is_expected():
    assert set(group_options("dataset")) == set(EXPECTED) | TEXT


@pytest.mark.parametrize("option", [o for o in group_options("dataset") if o not in TEXT])
def test_every_dataset_loads_and_batches(compose, files, option):
    num_classes, shape, has_test, kind = EXPECTED[option]
    data = load(compose, option, files)
    assert (data.num_classes, data.input_shape, data.test is not None, data.kind) == (num_classes, shape,
                                                                                       has_test, kind)
    cfg = compose(*overrides_for(option, files)).dataset
    n = len(data.train) + len(data.val)
    assert len(data.val) == max(1, round(n * cfg.val_fraction))

    seen = 0
    for stored, y in data.train_batches(torch.Generator().manual_seed(0)):
        x = data.inputs(stored)
        assert x.dtype == torch.float32 and tuple(x.shape[1:]) == shape and len(x) == len(y) <= cfg.batch_size
        assert torch.isfinite(x).all()
        assert y.dtype == (torch.long if num_classes else torch.float32)
        seen += len(x)
    assert seen == len(data.train)
    assert sum(len(x) for x, _ in data.eval_batches(data.val)) == len(data.val)


@pytest.mark.parametrize("option", [o for o in group_options("dataset") if o not in TEXT | {"folder"}])
def test_small_data_sets_are_held_as_compact_tensors(compose, files, option):
    data = load(compose, option, files)
    assert isinstance(data, TensorData)
    assert data.train.x.dtype == (torch.float32 if option == "regression" else torch.uint8)
    # normalised with the training split's statistics
    x = torch.cat([data.inputs(stored) for stored, _ in data.eval_batches(data.train)])
    if option != "regression":
        assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05


def test_train_order_comes_from_the_generator_and_covers_every_sample(compose, files):
    data = load(compose, "mnist", files)
    epoch = lambda seed: torch.cat([y for _, y in data.train_batches(torch.Generator().manual_seed(seed))])  # noqa: E731
    assert torch.equal(epoch(1), epoch(1)) and not torch.equal(epoch(1), epoch(2))
    assert torch.equal(epoch(1).sort().values, data.train.y.sort().values)


@pytest.mark.parametrize("option", ["mnist", "folder"])
def test_an_epoch_can_start_at_any_batch(compose, files, option):
    """What a mid-epoch resume relies on: from batch k, the same batches the full epoch has from k on."""
    data = load(compose, option, files, "dataset.batch_size=3")
    epoch = lambda start: [y for _, y in data.train_batches(torch.Generator().manual_seed(3), start=start)]  # noqa: E731
    full = epoch(0)
    assert len(full) > 2
    assert all(torch.equal(a, b) for a, b in zip(epoch(2), full[2:], strict=True))


@pytest.mark.parametrize("option", ["digits", "mnist", "folder"])
def test_validation_split_is_fixed_by_split_seed(compose, files, option):
    def val_targets(split_seed):
        data = load(compose, option, files, f"dataset.split_seed={split_seed}", "trainer.seed=5")
        return torch.cat([y for _, y in data.eval_batches(data.val)])

    assert torch.equal(val_targets(0), val_targets(0))
    first = load(compose, option, files, "dataset.split_seed=0")
    other = load(compose, option, files, "dataset.split_seed=1")
    if isinstance(first, FolderData):
        assert first.val.indices != other.val.indices
    else:
        assert not torch.equal(first.val.x, other.val.x)


def test_official_test_split_is_the_test_files(compose, files):
    data = load(compose, "cifar10", files)
    assert len(data.test) == 20 and len(data.train) + len(data.val) == 50
    assert data.test.x.shape == (20, 3, 32, 32)


def test_regression_is_the_classic_task(compose, files):
    data = load(compose, "regression", files, "dataset.num_samples=500", "dataset.num_test=100")
    for split in (data.train, data.val, data.test):
        assert torch.allclose(split.y, 2 * split.x.sum(1) + 3, atol=1e-4)
    noisy = load(compose, "regression", files, "dataset.noise=0.5")
    residual = noisy.train.y - (2 * noisy.train.x.sum(1) + 3)
    assert 0.45 < residual.std().item() < 0.55


@pytest.mark.parametrize("option", sorted(TORCHVISION))
def test_missing_files_name_the_root_and_the_files(compose, tmp_path, option):
    empty = tmp_path / "nothing-here"
    with pytest.raises(DataError) as e:
        load(compose, option, empty)
    message = str(e.value)
    assert "\n" not in message and str(empty) in message and "dataset.download=true" in message
    expected = (["data_batch_1", "test_batch", "batches.meta"] if option == "cifar10"
                else ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
    assert all(name in message for name in expected)


def test_missing_image_folder_names_the_path(compose, tmp_path):
    with pytest.raises(DataError, match="dataset.root=.*nope.*<class>"):
        load(compose, "folder", tmp_path / "nope")


def test_importing_lrtrain_does_not_import_torchvision():
    code = ("import sys, lrtrain.cli, lrtrain.build, lrtrain.loop, lrtrain.data, lrtrain.models; "
            "print('torchvision' in sys.modules)")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cli_trains_on_mnist_files_without_downloading(tmp_path):
    root = write_mnist(tmp_path / "data")
    r = run_lrtrain("dataset=mnist", f"dataset.root={root}", "dataset.download=false", "model=cnn",
                    "model.channels=[4]", "model.hidden=8", "trainer.max_epochs=1", "trainer.progress=plain",
                    "logger=[csv]", "logger.csv.plots=false", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = r.summary()
    assert summary["status"] == "completed" and set(summary["test"]) == {"test_loss", "test_acc"}


def test_cli_missing_files_is_one_line(tmp_path):
    r = run_lrtrain("dataset=cifar10", "dataset.root=absent", "dataset.download=false", cwd=tmp_path)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lrtrain: error: CIFAR10 not found under absent/cifar-10-batches-py")


def test_cli_regression_with_linear_model_has_no_accuracy(tmp_path):
    r = run_lrtrain("dataset=regression", "model=linear", "optimizer.lr=0.05", "trainer.max_epochs=3",
                    "trainer.progress=none", "logger=[csv]", "logger.csv.plots=false", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    metrics = r.csv("metrics.csv")
    assert list(metrics[0]) == ["epoch", "step", "lr", "train_loss", "val_loss", "seconds"]
    assert float(metrics[-1]["val_loss"]) < 1e-3  # the exact linear solution is reachable
    assert set(r.summary()["test"]) == {"test_loss"}


def test_cli_trains_on_an_image_folder_with_workers(tmp_path):
    root = write_image_folder(tmp_path / "images")
    test_root = write_image_folder(tmp_path / "held-out", per_class=2)
    r = run_lrtrain("dataset=folder", f"dataset.root={root}", f"dataset.test_root={test_root}",
                    "dataset.image_size=8", "dataset.num_workers=1", "dataset.batch_size=4", "model=cnn",
                    "model.channels=[4]", "model.hidden=8", "trainer.max_epochs=2", "trainer.progress=none",
                    "logger=[csv]", "logger.csv.plots=false", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = r.summary()
    assert summary["steps"] == 2 * 3 and set(summary["test"]) == {"test_loss", "test_acc"}  # 11 train images


# ------------------------------------------------------------------------------------- bad data files


class _CodePayload:
    """Unpickled, this runs a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_cifar_batch_that_carries_code_is_refused_and_never_run(tmp_path):
    import pickle

    root = write_cifar10(tmp_path / "data")
    marker = tmp_path / "pwned"
    batch = root / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(pickle.dumps({"data": _CodePayload(marker), "labels": [0]}, protocol=2))
    r = run_lrtrain("dataset=cifar10", f"dataset.root={root}", "dataset.download=false", cwd=tmp_path)
    assert not marker.exists()
    assert r.returncode == 2
    assert r.stderr.strip() == (f"lrtrain: error: {batch}: refused: it asks to load posix.system, which is code, "
                                "not data (a CIFAR batch holds only arrays, lists and strings)")
    assert not (r.run_dir / "steps.csv").exists()


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def _cifar_dict(path, **changes):
    import pickle

    import numpy as np

    entry = {"data": np.zeros((4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3], **changes}
    path.write_bytes(pickle.dumps(entry, protocol=2))


@pytest.mark.parametrize("name,corrupt,needle", [
    ("data_batch_3", _truncate, "not a CIFAR-10 batch (truncated or corrupt?"),
    ("test_batch", lambda p: p.write_bytes(b"\x89PNG not a pickle"), "not a CIFAR-10 batch (truncated or corrupt?"),
    ("data_batch_1", lambda p: _cifar_dict(p, labels=[0, 1]), "2 labels for 4 images"),
    ("data_batch_2", lambda p: _cifar_dict(p, labels=[0, 1, 2, 10]), "label 10 at position 3: expected class labels 0..9"),
    ("data_batch_5", lambda p: _cifar_dict(p, data=[1, 2]), "expected a dict with 'data' (uint8, N x 3072)"),
    ("batches.meta", lambda p: p.write_bytes(b""), "not a CIFAR-10 batch (truncated or corrupt?"),
])
def test_corrupt_cifar_files_name_the_file(compose, tmp_path, name, corrupt, needle):
    root = write_cifar10(tmp_path / "data")
    path = root / "cifar-10-batches-py" / name
    corrupt(path)
    with pytest.raises(DataFileError) as e:
        load(compose, "cifar10", root)
    message = str(e.value)
    assert message.startswith(f"{path}: ") and needle in message and "\n" not in message


def _idx(path, magic, dims, body):
    import struct

    path.write_bytes(struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + bytes(body))


@pytest.mark.parametrize("name,corrupt,needle", [
    # more labels than images: would train silently on misaligned labels
    ("train-labels-idx1-ubyte", lambda p: _idx(p, 0x801, [61], [1] * 61),
     "61 labels for the 60 images of train-images-idx3-ubyte: expected one label per image"),
    ("t10k-labels-idx1-ubyte", lambda p: _idx(p, 0x801, [19], [1] * 19),
     "19 labels for the 20 images of t10k-images-idx3-ubyte"),
    ("train-images-idx3-ubyte", lambda p: _idx(p, 0x801, [60], [0] * 60),
     "not an MNIST images file: expected the IDX magic number 0x00000803 (unsigned bytes, 3 dimensions), "
     "found 0x00000801"),
    ("train-labels-idx1-ubyte", lambda p: p.write_bytes(b"ab"), "found nothing"),
    ("train-images-idx3-ubyte", _truncate, "truncated: its header says 60x28x28 images (47056 bytes)"),
    ("t10k-labels-idx1-ubyte", lambda p: _idx(p, 0x801, [20], [0] * 19 + [10]),
     "label 10 at position 19: expected class labels 0..9"),
])
@pytest.mark.parametrize("variant", ["MNIST", "FashionMNIST"])
def test_bad_mnist_files_name_the_file(compose, tmp_path, variant, name, corrupt, needle):
    root = write_mnist(tmp_path / "data", variant)
    path = root / variant / "raw" / name
    corrupt(path)
    with pytest.raises(DataFileError) as e:
        load(compose, {"MNIST": "mnist", "FashionMNIST": "fashion_mnist"}[variant], root)
    message = str(e.value)
    assert message.startswith(f"{path}: ") and needle in message and "\n" not in message


def test_cli_truncated_mnist_is_one_line_and_exit_2(tmp_path):
    root = write_mnist(tmp_path / "data")
    _truncate(root / "MNIST" / "raw" / "t10k-images-idx3-ubyte")
    r = run_lrtrain("dataset=mnist", f"dataset.root={root}", "dataset.download=false", cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lrtrain: error: {root}/MNIST/raw/t10k-images-idx3-ubyte: "
                                                   "truncated")
