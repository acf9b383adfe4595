"""Language models: dataset=text and shakespeare (from files the tests write, never the network), model=gpt,
the LM metrics, and nanoGPT's shakespeare_char recipe (its LR curve against nanoGPT's get_lr)."""

from __future__ import annotations

import hashlib
import json
import math
import random

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import nn

from conftest import CUSTOM, QUIET, config_error, group_options, read_rows
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
    n_train = int(len(text) * 0.9)
    assert data.decode(data.train.tokens) == text[:n_train]  # the first 90%, in order
    assert data.decode(data.val.tokens) == text[n_train:]
    # an epoch: floor(train tokens / (batch x block)) steps of full batches
    steps = n_train // (4 * 16)
    batches = list(data.train_batches(torch.Generator().manual_seed(0)))
    assert len(batches) == steps and len(data.train) == 4 * steps
    for x, y in batches:
        assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])  # targets: the window shifted one token on
        for row_x, row_y in zip(x, y):
            window = data.decode(row_x) + data.decode(row_y[-1:])
            assert window in text[:n_train]
    # validation: consecutive windows, each token predicted once
    ys = torch.cat([y.flatten() for _, y in data.eval_batches(data.val)])
    assert data.decode(ys) == text[n_train:][1:1 + len(data.val) * 16]


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


# ------------------------------------------------------------------------------------------------- gpt


def gpt(compose, *overrides, vocab=11, window=16):
    cfg = compose("model=gpt", *overrides).model
    return instantiate(cfg, input_shape=(window,), num_outputs=vocab, _convert_="all")


def test_gpt_init_is_nanogpts_and_the_head_is_tied(compose):
    torch.manual_seed(0)
    model = gpt(compose, "model.n_layer=3", "model.n_embd=64", "model.bias=true", vocab=500, window=256)
    assert model.lm_head.weight is model.wte.weight
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for _, p in model.named_parameters(
        remove_duplicate=False))  # counted once
    residual = {id(b.attn.c_proj.weight) for b in model.h} | {id(b.mlp[2].weight) for b in model.h}
    for name, p in model.named_parameters():
        if p.dim() < 2:
            assert torch.all(p == (1 if name.endswith("ln_1.weight") or name.endswith("ln_2.weight")
                                   or name == "ln_f.weight" else 0)), name
            continue
        std = 0.02 / math.sqrt(2 * 3) if id(p) in residual else 0.02
        assert p.std().item() == pytest.approx(std, rel=0.05), name
        assert abs(p.mean().item()) < std / 10, name


@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_gpt_is_causal(compose, norm_position):
    """Changing a token changes no logit before it, and the logits at and after it."""
    torch.manual_seed(0)
    model = gpt(compose, f"model.norm_position={norm_position}", "model.n_layer=2", "model.n_embd=32").eval()
    x = torch.randint(11, (2, 16))
    changed = x.clone()
    changed[:, 9] = (x[:, 9] + 1) % 11
    a, b = model(x), model(changed)
    assert a.shape == (2, 16, 11)
    torch.testing.assert_close(a[:, :9], b[:, :9], atol=0, rtol=0)
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_pre_and_post_norm_differ_where_they_should(compose):
    pre, post = gpt(compose, "model.norm_position=pre"), gpt(compose, "model.norm_position=post")
    assert isinstance(pre.ln_f, nn.LayerNorm) and isinstance(post.ln_f, nn.Identity)
    x = torch.randn(1, 3, 128)
    block = post.h[0]
    expected = block.ln_2(block.ln_1(x + block.attn(x)) + block.mlp(block.ln_1(x + block.attn(x))))
    torch.testing.assert_close(block(x), expected)


def test_gpt_uses_sdpa(compose, monkeypatch):
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(k) or real(*a, **k))
    gpt(compose, "model.n_layer=2")(torch.zeros(1, 4, dtype=torch.long))
    assert len(calls) == 2 and all(k["is_causal"] for k in calls)


@pytest.mark.parametrize("overrides,message", [
    (["model=gpt", "model.block_size=8"], "model='gpt': must be a model for text's inputs: model.block_size=8 is "
                                          "shorter than the data's windows (dataset.block_size=16): set "
                                          "model.block_size >= 16, or null"),
    (["model=gpt", "dataset=digits"], "model='gpt': must be a model for digits's inputs: gpt reads token ids "
                                      "(dataset=text or shakespeare)"),
    (["model=gpt", "trainer.monitor=val_bpc", "early_stopping=patience", "early_stopping.monitor=val_ppl"], None),
    (["model=mlp"], "model='mlp': must be a model for text's inputs: text is token ids, which only model=gpt reads"),
    (["model=gpt", "regularization=[augment]"], "regularization='augment': must be a list without augment: text is "
                                                "not an image data set"),
    (["dataset=digits", "model=mlp", "trainer.monitor=val_bpc"],
     "trainer.monitor='val_bpc': must be one of train_loss, val_loss, train_acc, val_acc"),
])
def test_what_does_not_fit_is_one_line(compose, tmp_path, corpus, overrides, message):
    """(A monitor of val_bpc or val_ppl is fine for a language model, and for nothing else.)"""
    text = [] if "dataset=digits" in overrides else ["dataset=text", f"dataset.path={corpus}", "dataset.block_size=16"]
    cfg = compose(*text, *overrides, *QUIET)
    if message is None:
        build(cfg, tmp_path)
        return
    with pytest.raises(ConfigValueError) as e:
        build(cfg, tmp_path)
    assert str(e.value) == message


def test_n_embd_must_divide_into_heads(compose):
    assert config_error(compose, "model=gpt", "model.n_embd=30") == "model.n_embd=30: must be a multiple of n_head (4)"
    assert config_error(compose, "model=gpt", "model.norm_position=mid") == (
        "model.norm_position='mid': must be one of pre, post")


# -------------------------------------------------------------------------------------------- the recipe


def nanogpt_lr(it: int, max_iters: int, learning_rate=1e-3, min_lr=1e-4, warmup_iters=100) -> float:
    """nanoGPT's train.py get_lr, with lr_decay_iters = max_iters as its shakespeare_char CPU example sets."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > max_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (max_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


@pytest.mark.parametrize("max_steps", [2000, 500])
def test_the_recipe_lr_is_nanogpts_step_for_step(compose, max_steps):
    from lrtrain.build_schedule import build_schedule
    from lrtrain.durations import Timeline

    cfg = compose("+experiment=shakespeare_char", f"trainer.max_steps={max_steps}")
    schedule = build_schedule(cfg, Timeline(steps_per_epoch=1307, total_steps=max_steps))
    for step in range(max_steps):
        assert schedule(step, cfg.optimizer.lr) == pytest.approx(nanogpt_lr(step, max_steps), rel=1e-12, abs=0)


@pytest.mark.parametrize("warmup", ["none", "linear", "exponential"])
def test_the_recipes_warmup_can_be_swept(compose, warmup):
    """lrtrain -m +experiment=shakespeare_char warmup=none,linear ...: the recipe's warmup keys live in its option."""
    cfg = compose("+experiment=shakespeare_char", f"warmup={warmup}", "model.norm_position=post")
    target = {"none": None, "linear": "lrtrain.warmup.LinearWarmup", "exponential": "lrtrain.warmup.ExponentialWarmup"}
    assert cfg.warmup._target_ == target[warmup]
    assert cfg.warmup.get("length") != "100steps"  # the option's own defaults, not the recipe's


def test_the_recipe_is_nanogpts_cpu_example(compose, tmp_path, corpus):
    """Model, batch, AdamW and its parameter groups as nanoGPT's configure_optimizers makes them: every >= 2-D
    tensor (the embeddings too) decayed by 0.1, biases and LayerNorms not."""
    cfg = compose("+experiment=shakespeare_char", f"dataset.path={corpus}", *QUIET)
    run = build(cfg, tmp_path)
    model, opt = run.model, run.optimizer
    assert (len(model.h), model.h[0].attn.n_head, model.wte.embedding_dim, run.data.block_size,
            run.data.batch_size) == (4, 4, 128, 64, 12)
    assert type(opt) is torch.optim.AdamW and opt.defaults["betas"] == (0.9, 0.99) and opt.defaults["eps"] == 1e-8
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(p) for p in model.parameters() if p.dim() >= 2}
    assert any(p is model.wte.weight for p in decayed["params"]) and any(p is model.wpe.weight for p in decayed["params"])
    assert {id(p) for p in plain["params"]} == {id(p) for p in model.parameters() if p.dim() < 2}
    assert run.hooks.clip.max_norm == 1.0 and not any(m.p for m in model.modules() if isinstance(m, nn.Dropout))
    assert run.timeline.total_steps == 2000


# ------------------------------------------------------------------------------------------- training


def test_byte_level_trains_and_reports_the_lm_metrics(train_briefly, corpus, tmp_path):
    run, rows = train_briefly("dataset=text", f"dataset.path={corpus}", "dataset.level=byte", *TINY,
                              "optimizer.lr=3e-3", steps=60)
    losses = [float(r["loss"]) for r in rows]
    assert losses[0] == pytest.approx(math.log(256), rel=0.05)  # a uniform guess over 256 bytes at init
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])
    metrics = read_rows(tmp_path / "metrics.csv")[-1]
    assert list(metrics) == ["epoch", "step", "lr", "train_loss", "val_loss", "train_acc", "val_acc", "val_bpc",
                             "val_ppl", "seconds"]
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["vocabulary"] is None  # bytes
    val = float(metrics["val_loss"])
    assert float(metrics["val_bpc"]) == pytest.approx(val / math.log(2), rel=1e-12)
    assert float(metrics["val_ppl"]) == pytest.approx(math.exp(val), rel=1e-12)
    assert 0 <= float(metrics["val_acc"]) <= 1 and 0 <= float(metrics["train_acc"]) <= 1


def test_validation_is_the_mean_nats_per_token(compose, corpus, tmp_path):
    from lrtrain.loop import evaluate

    cfg = compose("dataset=text", f"dataset.path={corpus}", *TINY, *QUIET)
    run = build(cfg, tmp_path)
    data, model = run.data, run.model.eval()
    n = len(data.val)
    x = data.val.tokens[:n * 16].view(n, 16)
    y = data.val.tokens[1:n * 16 + 1].view(n, 16)
    logits = model(x)
    expected = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()).item()
    result = evaluate(model, data.val, data, torch.autocast("cpu", enabled=False))
    assert result["loss"] == pytest.approx(expected, rel=1e-5)
    assert result["acc"] == pytest.approx((logits.argmax(-1) == y).float().mean().item())


# ------------------------------------------------------------------------------------ real lrtrain runs


@pytest.mark.slow  # one lrtrain process: its start-up alone is several seconds
def test_a_gpt_run_meets_the_outputs_contract(lrtrain, corpus):
    r = lrtrain("dataset=text", f"dataset.path={corpus}", *TINY, "trainer.max_steps=70", "trainer.monitor=val_bpc",
                "trainer.progress=none", "logger=[csv]", "logger.csv.plots=false")
    assert r.returncode == 0, r.stderr
    steps, metrics, summary = r.csv("steps.csv"), r.csv("metrics.csv"), r.summary()
    assert [int(row["step"]) for row in steps] == list(range(70))
    assert list(metrics[0]) == ["epoch", "step", "lr", "train_loss", "val_loss", "train_acc", "val_acc", "val_bpc",
                                "val_ppl", "seconds"]
    spe = len(r.run_dir.parent.joinpath("corpus.txt").read_text("utf-8")) * 9 // 10 // (4 * 16)
    assert [int(row["step"]) for row in metrics] == [spe, 70]  # an epoch, then the run's end
    for row in metrics:
        assert float(row["val_bpc"]) == pytest.approx(float(row["val_loss"]) / math.log(2))
    assert summary["status"] == "completed" and summary["monitor"] == "val_bpc"
    assert summary["best_value"] == min(float(row["val_bpc"]) for row in metrics)
    assert summary["final"]["val_ppl"] == pytest.approx(math.exp(summary["final"]["val_loss"]))
    ckpt = torch.load(r.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["vocabulary"] == "".join(sorted(set(corpus.read_text("utf-8"))))  # decodes as the run read it
    assert ckpt["step"] == 70 and (r.run_dir / "checkpoints" / "best.pt").is_file()


@pytest.mark.slow  # the message itself is checked in-process above
def test_a_corrupt_file_is_one_line_and_writes_nothing(lrtrain, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes("Ünïcödé, then half a character: ".encode() + "é".encode()[:1])
    r = lrtrain("dataset=text", f"dataset.path={bad}", "model=gpt")
    assert r.returncode == 2
    assert r.stderr.strip() == f"lrtrain: error: {bad}: not UTF-8 text (byte 36: b'\\xc3'); dataset=text reads UTF-8 files"
    assert not (r.run_dir / "checkpoints").exists() and not (r.run_dir / "steps.csv").exists()


@pytest.mark.slow
def test_gpt_jobs_of_a_fused_sweep_train_alone_saying_why(lrtrain, corpus, tmp_path):
    r = lrtrain("-m", "hydra/launcher=fused", "dataset=text", f"dataset.path={corpus}", *TINY,
                "trainer.max_steps=10", "optimizer.lr=1e-3,3e-3", *QUIET, f"hydra.sweep.dir={tmp_path / 's'}")
    assert r.returncode == 0, r.stderr
    for job in (0, 1):
        assert (f"solo: job {job} (a language model (dataset=text): its batches are windows at random offsets of "
                "one token stream, not rows of tensors the fused group draws by permutation)") in r.stdout
        summary = json.loads((tmp_path / "s" / str(job) / "summary.json").read_text())
        assert summary["status"] == "completed" and "fused" not in summary and "val_bpc" in summary["final"]
    assert "final_val_bpc" in (tmp_path / "s" / "sweep_summary.csv").read_text()  # the report shows the LM metrics
    assert "final val_bpc" in r.stdout and "final val_acc" not in r.stdout  # its ranking table too


RESUME = [*TINY, "model.dropout=0.1", "trainer.max_steps=150", "trainer.checkpoint_every_n_steps=7",
          "trainer.progress=none", "logger=[csv]", "logger.csv.plots=false"]


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path):
    """Random windows and dropout replay exactly from a checkpoint mid-epoch."""
    import os
    import signal

    from test_resume import _metrics_without_seconds, _signal_after_rows
    from conftest import run_lrtrain

    path = tmp_path / "corpus.txt"
    write_text(path)
    args = ["dataset=text", f"dataset.path={path}", *RESUME]
    reference = run_lrtrain(*args, cwd=tmp_path, run_dir=tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    for trial in range(2):
        run_dir = tmp_path / f"trial{trial}"
        proc = _signal_after_rows(run_dir, rng.randrange(5, 140), tmp_path, signal.SIGKILL, args=args)
        assert proc.returncode == -signal.SIGKILL, f"trial {trial}: finished before the kill"
        resumed = run_lrtrain(*args, f"trainer.resume={run_dir}", cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        assert (run_dir / "steps.csv").read_bytes() == (reference.run_dir / "steps.csv").read_bytes()
        assert _metrics_without_seconds(run_dir / "metrics.csv") == _metrics_without_seconds(
            reference.run_dir / "metrics.csv")
        mine = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
        theirs = torch.load(reference.run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_ddp_shards_of_an_epoch_are_the_global_batches_windows(compose, corpus):
    data = load(compose, "dataset=text", f"dataset.path={corpus}", "dataset.block_size=16", "dataset.batch_size=4")
    whole = [x for x, _ in data.train_batches(torch.Generator().manual_seed(0))]
    wide = load(compose, "dataset=text", f"dataset.path={corpus}", "dataset.block_size=16", "dataset.batch_size=8")
    both = wide.batch_size  # a global batch of 2 x 4 windows, drawn as one batch of 8 would be
    shards = [[x for x, _ in data.train_batches(torch.Generator().manual_seed(0), shard=(r, 2))] for r in (0, 1)]
    full = [x for x, _ in wide.train_batches(torch.Generator().manual_seed(0))]
    assert len(shards[0]) == len(shards[1]) == -(-len(data.train) // both) and len(whole) == len(data.train) // 4
    for a, b, f in zip(shards[0], shards[1], full):
        assert torch.equal(a, f[0::2]) and torch.equal(b, f[1::2])


# ------------------------------------------------------------------------------- composes with everything

TRAIN = ["dataset=text", *TINY, "dataset.val_fraction=0.5"]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", group_options("optimizer"))
def test_every_optimizer_trains_a_gpt(train_briefly, corpus, optimizer):
    run, rows = train_briefly(*TRAIN, f"dataset.path={corpus}", f"optimizer={optimizer}", steps=4)
    assert len(rows) == 4 and all(math.isfinite(float(r["loss"])) for r in rows)


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", group_options("scheduler"))
def test_every_schedule_with_warmup_trains_a_gpt(train_briefly, corpus, scheduler):
    extra = CUSTOM if scheduler == "custom" else []
    warmup = [] if scheduler in ("onecycle", "cyclic") else ["warmup=linear", "warmup.length=2steps"]  # own ramps
    run, rows = train_briefly(*TRAIN, f"dataset.path={corpus}", f"scheduler={scheduler}", *extra, *warmup,
                              "scheduler.interval=step", steps=6)
    assert len(rows) == 6 and all(math.isfinite(float(r["loss"])) for r in rows)


@pytest.mark.slow
def test_bf16_label_smoothing_clipping_and_early_stopping_on_val_ppl(train_briefly, corpus, tmp_path):
    run, rows = train_briefly(*TRAIN, f"dataset.path={corpus}", "trainer.precision=bf16",
                              "regularization=[label_smoothing,grad_clip,dropout,l2]", "early_stopping=patience",
                              "early_stopping.monitor=val_ppl", "early_stopping.patience=0",
                              "optimizer.lr=1e-6", "trainer.max_steps=400", steps=400)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] in ("early_stopped", "completed") and "grad_norm" in rows[0]
    assert summary["status"] == "completed" or "val_ppl" in summary["stop_reason"]
    assert math.isfinite(summary["final"]["val_ppl"])


@pytest.mark.slow
def test_the_lr_range_test_runs_on_a_gpt(compose, corpus, tmp_path):
    from lrtrain.build import build_lr_finder

    cfg = compose(*TRAIN, f"dataset.path={corpus}", "mode=lr_find", "lr_find.num_steps=20", *QUIET)
    result = build_lr_finder(cfg).run(build(cfg, tmp_path), plots=False)
    assert result["steps"] > 2 and cfg.lr_find.min_lr <= result["suggested_lr"] <= cfg.lr_find.max_lr


@pytest.mark.slow
def test_an_optuna_search_over_a_gpt_minimises_val_bpc(lrtrain, corpus, tmp_path):
    r = lrtrain("hparams_search=optuna", "hydra.sweeper.n_trials=2", "dataset=text", f"dataset.path={corpus}", *TINY,
                "trainer.max_steps=40", "trainer.monitor=val_bpc", *QUIET, f"hydra.sweep.dir={tmp_path / 's'}")
    assert r.returncode == 0, r.stderr
    for job in (0, 1):
        summary = json.loads((tmp_path / "s" / str(job) / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["monitor"] == "val_bpc"
        assert summary["best_value"] <= summary["final"]["val_bpc"]  # the best val_bpc of its epochs


@pytest.mark.slow
def test_a_compiled_gpt_matches_eager(compose, corpus, tmp_path):
    from lrtrain.loop import fit

    losses = {}
    for compiled in (False, True):
        cfg = compose("dataset=text", f"dataset.path={corpus}", *TINY, "trainer.max_steps=5",
                      f"trainer.compile={str(compiled).lower()}", *QUIET)
        fit(build(cfg, tmp_path / str(compiled)))
        losses[compiled] = [float(r["loss"]) for r in read_rows(tmp_path / str(compiled) / "steps.csv")]
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)


@pytest.mark.slow
def test_two_ddp_ranks_train_one_gpt_in_step(corpus, tmp_path):
    from conftest import Result
    from test_ddp import torchrun

    proc = torchrun("dataset=text", f"dataset.path={corpus}", *TINY, "trainer.max_steps=30", cwd=tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    (run_dir,) = [p.parent for p in (tmp_path / "outputs").rglob(".hydra")]
    summary = Result(0, out, "", run_dir).summary()
    assert summary["status"] == "completed" and summary["world_size"] == 2 and summary["ranks_in_sync"]
    assert summary["global_batch_size"] == 8 and math.isfinite(summary["final"]["val_bpc"])


def test_a_resume_on_a_text_with_another_vocabulary_is_refused(train_briefly, compose, corpus, tmp_path, monkeypatch):
    from lrtrain.errors import CheckpointError

    train_briefly("dataset=text", f"dataset.path={corpus}", *TINY, steps=3)
    corpus.write_text(corpus.read_text("utf-8") + "{new characters}", encoding="utf-8")
    monkeypatch.setattr("lrtrain.build._loaded", {})  # as a new process would, read the file again
    cfg = compose("dataset=text", f"dataset.path={corpus}", *TINY, "trainer.max_steps=6",
                  f"trainer.resume={tmp_path / 'checkpoints' / 'last.pt'}", *QUIET)
    with pytest.raises(CheckpointError, match=r"last.pt: made with another vocabulary than this text's \(\d+ characters "
                                              r"there, \d+ characters here\): its token ids would mean other"):
        build(cfg, tmp_path / "again")


def test_model_gpt_alone_takes_the_text_data_set_and_an_explicit_one_wins(compose):
    """`lrtrain model=gpt` trains on text (configs/model/gpt.yaml overrides the dataset choice); a dataset given
    on the command line is still the one used, and a wrong one is refused in one line (above)."""
    assert compose("model=gpt").dataset._target_ == "lrtrain.data.text"
    assert compose("model=gpt", "dataset=shakespeare").dataset._target_ == "lrtrain.data.shakespeare"
    assert compose("dataset=digits", "model=gpt").dataset._target_ == "lrtrain.data.digits"
    assert compose("model=mlp").dataset._target_ == "lrtrain.data.digits"
