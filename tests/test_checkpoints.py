"""Checkpoints are data: atomic writes, weights_only loading, and refusal of bad or hostile files."""

from __future__ import annotations

import os
import pickle
import subprocess

import pytest
import torch

from lrtrain.checkpoints import load, save_atomic, save_copies
from lrtrain.errors import CheckpointError


def test_save_is_atomic_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    save_atomic({"model": {"w": torch.ones(2)}, "step": 1}, path)
    save_atomic({"model": {"w": torch.zeros(2)}, "step": 2}, path)
    assert load(path)["step"] == 2 and os.listdir(path.parent) == ["last.pt"]


def test_a_folder_named_like_a_temporary_is_refused_in_one_line(tmp_path):
    from lrtrain.checkpoints import remove_temporaries
    from lrtrain.errors import EXIT_CONFIG, describe

    (tmp_path / ".last.pt.123.tmp").write_bytes(b"a killed write")
    hostile = tmp_path / ".last.pt.456.tmp"
    hostile.mkdir()
    (hostile / "thesis.tex").write_text("mine")
    with pytest.raises(CheckpointError) as e:
        remove_temporaries(tmp_path)
    message, code = describe(e.value)
    assert code == EXIT_CONFIG and message.startswith(f"{hostile}: a folder named like a checkpoint's temporary")
    assert "\n" not in message and (hostile / "thesis.tex").read_text() == "mine"


@pytest.mark.slow
def test_a_folder_named_like_a_temporary_is_refused_by_the_cli(lrtrain, tmp_path):
    args = ("trainer.progress=none", "logger=[csv]", "logger.csv.plots=false")
    first = lrtrain("trainer.max_steps=3", *args)
    assert first.returncode == 0, first.stderr
    hostile = first.run_dir / "checkpoints" / ".last.pt.1.tmp"  # in a real run's dir, which is then resumed
    hostile.mkdir()
    r = lrtrain("trainer.max_steps=6", *args, "trainer.resume=auto")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith(f"lrtrain: error: {hostile}: a folder named like a checkpoint's temporary file")
    assert hostile.is_dir()


def test_copies_are_independent_after_a_later_save(tmp_path):
    a, b = tmp_path / "last.pt", tmp_path / "best.pt"
    save_copies({"model": {}, "step": 1}, [a, b])
    save_atomic({"model": {}, "step": 2}, a)
    assert load(b)["step"] == 1 and load(a)["step"] == 2


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (subprocess.call, (["touch", str(self.marker)],))


def _truncated(tmp_path):
    good = tmp_path / "good.pt"
    save_atomic({"model": {"w": torch.ones(1000)}, "step": 3}, good)
    data = good.read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "kind,make,needle",
    [
        ("truncated", _truncated, "not a readable checkpoint"),
        ("garbage", lambda tmp: os.urandom(4096), "not a readable checkpoint"),
        ("text", lambda tmp: b"model: 1\nstep: 2\n", "not a readable checkpoint"),
        ("a list", None, "not an lrtrain checkpoint"),
        ("code", None, ".call, which is code, not data"),  # pickle may name subprocess by its py2 alias
    ],
)
def test_bad_files_are_refused_in_one_line(tmp_path, kind, make, needle):
    path, marker = tmp_path / "bad.pt", tmp_path / "payload-ran"
    if kind == "a list":
        torch.save([torch.ones(2)], path)
    elif kind == "code":
        torch.save({"model": Payload(marker), "step": 1}, path)
        proof = tmp_path / "plain-pickle-ran-it"
        pickle.loads(pickle.dumps(Payload(proof)))  # the control: an unsafe loader would run the payload
        assert proof.exists()
    else:
        path.write_bytes(make(tmp_path))
    with pytest.raises(CheckpointError) as e:
        load(path)
    assert needle in str(e.value) and "\n" not in str(e.value) and str(path) in str(e.value)
    assert not marker.exists()


def test_hostile_checkpoint_refused_by_the_cli(lrtrain, tmp_path):
    marker = tmp_path / "payload-ran"
    torch.save({"model": Payload(marker), "step": 1}, tmp_path / "evil.pt")
    r = lrtrain(f"trainer.resume={tmp_path / 'evil.pt'}")
    assert r.returncode == 2
    assert r.stderr.strip().startswith("lrtrain: error: ") and "refused" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not marker.exists()


@pytest.mark.slow
def test_checkpoint_from_another_model_or_data_is_refused(lrtrain, tmp_path):
    first = lrtrain("trainer.max_steps=5", "trainer.progress=none", "logger.csv.plots=false", run_dir=tmp_path / "a")
    assert first.returncode == 0, first.stderr
    other_model = lrtrain("model.hidden=[64]", f"trainer.resume={tmp_path / 'a'}")
    assert other_model.returncode == 2
    assert other_model.stderr.strip().endswith(
        "made with model.hidden=[128], this run has model.hidden=[64]; resume with the same model")
    other_split = lrtrain("dataset.split_seed=3", f"trainer.resume={tmp_path / 'a' / 'checkpoints' / 'last.pt'}",
                          run_dir=tmp_path / "b")
    assert other_split.returncode == 2 and "dataset.split_seed=0, this run has dataset.split_seed=3" in other_split.stderr
    missing = lrtrain(f"trainer.resume={tmp_path / 'nowhere'}", run_dir=tmp_path / "c")
    assert missing.returncode == 2 and "no checkpoint at" in missing.stderr


def test_checkpoint_contents_are_plain_data(lrtrain):
    r = lrtrain("trainer.max_epochs=1", "trainer.progress=none", "logger.csv.plots=false")
    assert r.returncode == 0, r.stderr
    ckpt = torch.load(r.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert {"model", "optimizer", "schedule", "early_stopping", "step", "epoch", "position", "rng", "config",
            "versions"} <= set(ckpt)
    assert {"python", "numpy", "torch"} <= set(ckpt["rng"])
    assert ckpt["position"]["order_state"].dtype == torch.uint8 and ckpt["epoch"] == 1
    assert ckpt["config"]["trainer"]["seed"] == 0 and ckpt["versions"]["torch"] == torch.__version__


def test_a_second_signal_during_a_checkpoint_write_waits_for_the_write(tmp_path, monkeypatch):
    """torch turns an exception raised inside its writer into `enforce fail` errors: the write is shielded and the
    KeyboardInterrupt comes right after it, with the new file complete."""
    import signal

    import lrtrain.checkpoints as checkpoints
    from lrtrain.signals import StopRequest

    stop = StopRequest()
    stop.signum = signal.SIGINT  # a first signal was taken
    original = torch.save

    def save_then_signal(obj, f):
        original(obj, f)
        stop._handle(signal.SIGINT, None)  # the second one, while the write is under way

    monkeypatch.setattr(checkpoints, "STOP", stop)
    monkeypatch.setattr(torch, "save", save_then_signal)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"model": {}, "step": 3}, tmp_path / "last.pt")
    assert load(tmp_path / "last.pt")["step"] == 3 and not list(tmp_path.glob(".*.tmp"))
