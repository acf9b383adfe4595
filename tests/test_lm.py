"""Language models: dataset=text and shakespeare (from files the tests write, never the network), model=gpt,
the LM metrics, and nanoGPT's shakespeare_char recipe (its LR curve against nanoGPT's get_lr)."""

from __future__ import annotations

import hashlib
import math
import random

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import nn

from conftest import QUIET, config_error, read_rows
from lrtrain.build import build
from lrtrain.data import TextData
from lrtrain.errors import ConfigValueError, DataError, DataFileError

# A tiny GPT on tiny windows: a step takes about a millisecond on one thread.
TINY = ["model=gpt", "model.n_layer=1", "model.n_head=2", "model.n_embd=16", "dataset.block_size=16",
        "dataset.batch_size=4"]
WORDS = "the of and to in is was that for it with as his on be at by had are but from or have an they".split()


def write_text(path, n_words: int = 700, seed: int = 0, extra: str = "") -> str:
    """Sentences of common words, with punctuation and newlines (and `extra`, e.g. non-ASCII characters)."""
    rng = random.Random(seed)
    sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))).capitalize() + rng.choice(".,;!?")
                 for _ in range(n_words // 6)]
    text = "\n".join(sentences) + extra + "\n"
    path.write_text(text, encoding="utf-8")
    return text


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    write_text(path, extra=" Ünïcödé ☃")
    return path


def load(compose, *overrides):
    try:
        return instantiate(compose(*overrides).dataset, _convert_="all")
    except InstantiationException as e:  # as build() does: the data set's own error
        raise e.__cause__ from None


# ------------------------------------------------------------------------------------------------ data


def test_char_level_is_the_sorted_characters_split_90_10(compose, corpus):
    text = corpus.read_text(encoding="utf-8")
    data = load(compose, "dataset=text", f"dataset.path={corpus}", "dataset.block_size=16", "dataset.batch_size=4")
    assert isinstance(data, TextData) and data.vocabulary == "".join(sorted(set(text)))
    assert data.num_classes == len(set(text)) and data.input_shape == (16,)
    n_val = int(len(text) * 0.1)
    assert data.decode(data.train.tokens) == text[:len(text) - n_val]  # the first 90%, in order
    assert data.decode(data.val.tokens) == text[len(text) - n_val:]
    # an epoch: floor(train tokens / (batch x block)) steps of full batches
    steps = (len(text) - n_val) // (4 * 16)
    batches = list(data.train_batches(torch.Generator().manual_seed(0)))
    assert len(batches) == steps and len(data.train) == 4 * steps
    for x, y in batches:
        assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])  # targets: the window shifted one token on
        for row_x, row_y in zip(x, y):
            window = data.decode(row_x) + data.decode(row_y[-1:])
            assert window in text[:len(text) - n_val]
    # validation: consecutive windows, each token predicted once
    ys = torch.cat([y.flatten() for _, y in data.eval_batches(data.val)])
    assert data.decode(ys) == text[len(text) - n_val:][1:1 + len(data.val) * 16]


def test_byte_level_has_256_symbols_and_reads_utf8_as_bytes(compose, corpus):
    raw = corpus.read_bytes()
    data = load(compose, "dataset=text", f"dataset.path={corpus}", "dataset.level=byte", "dataset.block_size=16")
    assert data.vocabulary is None and data.num_classes == 256
    assert bytes(torch.cat([data.train.tokens, data.val.tokens]).tolist()) == raw  # multi-byte characters too
    assert len(raw) > len(raw.decode("utf-8"))


def test_window_offsets_come_from_the_generator_and_an_epoch_resumes_at_any_batch(compose, corpus):
    data = load(compose, "dataset=text", f"dataset.path={corpus}", "dataset.block_size=16", "dataset.batch_size=4")
    epoch = lambda seed, start=0: [x for x, _ in data.train_batches(torch.Generator().manual_seed(seed), start)]  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(epoch(1), epoch(1), strict=True))
    assert not torch.equal(torch.cat(epoch(1)), torch.cat(epoch(2)))
    assert all(torch.equal(a, b) for a, b in zip(epoch(1, 3), epoch(1)[3:], strict=True))


def test_the_embedded_default_needs_no_file(compose):
    data = load(compose, "dataset=text")
    assert data.name == "text" and len(data.train.tokens) > 400_000
    assert "def" in data.decode(data.val.tokens[:5000])  # Python's own documentation


@pytest.mark.parametrize("content,needle", [
    (b"plain text then \xff\xfe bytes", "not UTF-8 text (byte 16: b'\\xff')"),
    (b"", "training split (the first 90%) has 0 characters, shorter than one window of dataset.block_size + 1 = 17"),
    (b"short text", "training split (the first 90%) has 9 characters"),
    (b"x" * 100, "validation split (the last 10%) has 10 characters, shorter than one window"),
])
def test_a_bad_file_is_one_line_naming_it(compose, tmp_path, content, needle):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DataFileError) as e:
        load(compose, "dataset=text", f"dataset.path={path}", "dataset.block_size=16")
    message = str(e.value)
    assert message.startswith(f"{path}: ") and needle in message and "\n" not in message


def test_a_missing_file_is_one_line(compose, tmp_path):
    with pytest.raises(DataError, match=r"^dataset.path=\S+nothing.txt: cannot read .*nothing.txt: No such file"):
        load(compose, "dataset=text", f"dataset.path={tmp_path / 'nothing.txt'}")


# ----------------------------------------------------------------------------------------- shakespeare


def test_the_shakespeare_option_is_the_published_file(compose):
    cfg = compose("dataset=shakespeare").dataset
    assert cfg.url == "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
    assert cfg.sha256 == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def shakespeare(compose, root, url, sha256, download=True):
    return load(compose, "dataset=shakespeare", f"dataset.root={root}", f"dataset.url={url}",
                f"dataset.sha256={sha256}", f"dataset.download={str(download).lower()}", "dataset.block_size=16")


@pytest.fixture
def served(corpus):
    """The corpus at an http:// URL of a server on this machine's loopback (torchvision's download_url reads a
    response's length, which file:// URLs lack)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(corpus.parent)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/{corpus.name}"
    server.shutdown()
    server.server_close()


def test_shakespeare_downloads_with_torchvision_and_checks_the_sha256(compose, tmp_path, corpus, served):
    """torchvision's download_url fetches the file as it would the real one; a wrong checksum keeps nothing."""
    url, good = served, hashlib.sha256(corpus.read_bytes()).hexdigest()
    root = tmp_path / "data"
    with pytest.raises(DataFileError, match=f"^{url}: downloaded a file whose sha256 is {good}, expected 0{{64}} "
                                            r"\(dataset.sha256\); nothing was kept$"):
        shakespeare(compose, root, url, "0" * 64)
    assert not any((root / "tinyshakespeare").iterdir())  # no input.txt, no partial download

    data = shakespeare(compose, root, url, good)
    assert (root / "tinyshakespeare" / "input.txt").read_bytes() == corpus.read_bytes()
    assert data.name == "shakespeare" and data.vocabulary == "".join(sorted(set(corpus.read_text("utf-8"))))
    # there now: read without downloading, and checked again
    assert shakespeare(compose, root, "file:///nowhere", good, download=False).vocabulary == data.vocabulary
    with pytest.raises(DataFileError, match=r"input.txt: sha256 \w{64}, expected 1{64} \(dataset.sha256\): not tiny "
                                            "Shakespeare, or corrupt; delete it to download it again$"):
        shakespeare(compose, root, url, "1" * 64, download=False)


def test_shakespeare_missing_or_unreachable_is_one_line(compose, tmp_path, served):
    with pytest.raises(DataError, match=r"^tiny Shakespeare not found: expected .*tinyshakespeare/input.txt; set "
                                        "dataset.download=true"):
        shakespeare(compose, tmp_path, "file:///nowhere", "0" * 64, download=False)
    missing = served.rsplit("/", 1)[0] + "/missing.txt"
    with pytest.raises(DataError, match=f"^dataset.url={missing}: download failed \\(HTTP Error 404: File not "
                                        r"found\); check network access"):
        shakespeare(compose, tmp_path, missing, "0" * 64)
    assert not (tmp_path / "tinyshakespeare" / ".input.txt.part").exists()


def test_a_bad_checksum_value_is_a_config_error(compose):
    assert config_error(compose, "dataset=shakespeare", "dataset.sha256=abc") == (
        "dataset.sha256='abc': must be 64 lowercase hexadecimal digits")
