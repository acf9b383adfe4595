"""model.parametrization=mup against the `mup` package (microsoft/mup 1.0.0, the reference implementation of
μP): the same init, readout multiplier and per-parameter learning rates; μP equals SP at base width; the
optimizers it refuses; fused sweeps and the LR range test keep its multipliers."""

from __future__ import annotations

import math
import re

import mup
import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from conftest import QUIET, config_error, fit_killed_after, read_rows
from lrtrain.build import build
from lrtrain.errors import ConfigValueError
from lrtrain.models import GPT
from lrtrain.optimizers import param_groups

DIGITS = (1, 8, 8)
TEXT = (16,)  # a GPT's windows of token ids
VOCAB = 11


class RefMLP(nn.Sequential):
    """lrtrain's MLP (relu, no norm) written as mup's README says: the head a MuReadout."""

    def __init__(self, hidden: list[int]):
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(DIGITS)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        super().__init__(*layers, mup.MuReadout(width, 10))


def group_of(optimizer, p: torch.Tensor) -> dict:
    return next(g for g in optimizer.param_groups if any(q is p for q in g["params"]))


def mu_optimizer(name: str, groups: list[dict], lr: float):
    """mup's MuAdam / MuSGD over the same parameter groups lrtrain starts from."""
    return mup.MuAdam(groups, lr=lr) if name == "adam" else mup.MuSGD(groups, lr=lr, momentum=0.9)


def assert_same_lrs(ours, theirs, our_params, their_params) -> None:
    """Per parameter: the same LR and weight decay (lrtrain multiplies by 1/m where mup divides by m)."""
    for i, (p, q) in enumerate(zip(our_params, their_params, strict=True)):
        a, b = group_of(ours, p), group_of(theirs, q)
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-12), (i, p.shape)
        assert a["weight_decay"] == pytest.approx(b["weight_decay"], rel=1e-12), (i, p.shape)


@pytest.mark.parametrize("hidden", [[256, 256], [128, 512]], ids=["256x2", "128-512"])
@pytest.mark.parametrize("optimizer", ["adam", "momentum"])
def test_the_mlp_is_mups(compose, tmp_path, optimizer, hidden):
    """Init (bit for bit, drawn from the same seed), forward pass and per-parameter LR and weight decay equal
    those of mup's set_base_shapes + MuReadout + MuAdam/MuSGD, hidden layers 64 wide in the base model."""
    cfg = compose("model.parametrization=mup", "model.base_width=64", f"model.hidden=[{','.join(map(str, hidden))}]",
                  f"optimizer={optimizer}", "regularization=[l2]", "regularization.l2.weight_decay=0.01", *QUIET)
    torch.manual_seed(3)
    ours = instantiate(cfg.model, input_shape=DIGITS, num_outputs=10, _convert_="all")
    torch.manual_seed(3)
    ref = mup.set_base_shapes(RefMLP(hidden), RefMLP([64] * len(hidden)))
    for (name, p), q in zip(ours.named_parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q), name
    x = torch.randn(32, *DIGITS)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-6, atol=1e-7)

    run = build(cfg, tmp_path)
    theirs = mu_optimizer("adam" if optimizer == "adam" else "sgd",
                          param_groups(ref, weight_decay=0.01, decay_1d=False), lr=cfg.optimizer.lr)
    assert_same_lrs(run.optimizer, theirs, list(run.model.parameters()), list(ref.parameters()))
    # the multipliers differ from 1 somewhere, so the comparison above compared something
    assert len({g["lr"] for g in run.optimizer.param_groups}) > 1


def gpt(n_embd: int, **kwargs) -> GPT:
    return GPT(TEXT, VOCAB, n_layer=2, n_head=2, n_embd=n_embd, dropout=0.0, bias=True, norm_position="pre",
               **kwargs)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_gpt_is_mups(monkeypatch, optimizer):
    """The GPT at width 96 against base 32: each weight drawn as mup.init.normal_ draws it with nanoGPT's std
    (replacing torch.nn.init.normal_, as mup's README says), from the same random numbers; the tied head's
    multiplier is MuSharedReadout's; the per-parameter LRs are MuAdam's / MuSGD's."""
    base = gpt(32)
    torch.manual_seed(5)
    ours = gpt(96, parametrization="mup", base_width=32)
    normal_ = torch.nn.init.normal_
    with monkeypatch.context() as m:  # the same modules and draws but nanoGPT's init (std=): the RNG where ours began it
        m.setattr(torch.nn.init, "normal_", lambda t, *args, **kw: t if "std" in kw else normal_(t, *args, **kw))
        torch.manual_seed(5)
        ref = gpt(96)
    rng = torch.get_rng_state()
    ref.lm_head = mup.MuSharedReadout(ref.wte.weight, bias=False)  # built with draws of its own: put back
    torch.set_rng_state(rng)
    mup.set_base_shapes(ref, base, rescale_params=False)
    for module in ref.modules():  # nanoGPT's init, through mup.init
        if isinstance(module, (nn.Linear, nn.Embedding)):
            mup.init.normal_(module.weight, std=0.02)
    for block in ref.h:
        for proj in (block.attn.c_proj, block.mlp[2]):
            mup.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * 2))
    for (name, p), q in zip(ours.named_parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert ours.readout.factor == 1 / ref.lm_head.width_mult() == 1 / 3
    # attention logits: 1/d (d = 48 here), 1/sqrt(d) at base width (d = 16)
    assert ours.h[0].attn.scale == pytest.approx(math.sqrt(16) / 48)

    groups = param_groups(ours, weight_decay=0.1, decay_1d=False)
    from lrtrain.parametrization import mup_groups

    lrtrain_opt = torch.optim.SGD(mup_groups(ours, groups, lr=0.01, rule=optimizer), lr=0.01)
    theirs = mu_optimizer(optimizer, param_groups(ref, weight_decay=0.1, decay_1d=False), lr=0.01)
    assert_same_lrs(lrtrain_opt, theirs, list(ours.parameters()), list(ref.parameters()))


@pytest.mark.parametrize("model", [["model.hidden=[64,64]"], ["model=gpt", "dataset=text", "model.n_layer=1"]],
                         ids=["mlp", "gpt"])
def test_at_base_width_mup_is_sp(compose, tmp_path, model):
    """At its base width μP draws the same weights, gives the same outputs and the same LRs as SP."""
    base = "model.base_width=64" if model[0].startswith("model.hidden") else "model.base_width=128"
    runs = [build(compose(*model, f"model.parametrization={p}", base, "trainer.seed=1", *QUIET), tmp_path / p)
            for p in ("sp", "mup")]
    sp, mu = runs
    for p, q in zip(sp.model.parameters(), mu.model.parameters(), strict=True):
        assert torch.equal(p, q)
    x = sp.data.inputs(next(sp.data.train_batches(torch.Generator()))[0][:4])
    assert torch.equal(sp.model(x), mu.model(x))
    assert {g["lr"] for g in mu.optimizer.param_groups} == {sp.optimizer.param_groups[0]["lr"]}


@pytest.mark.parametrize("name", ["adadelta", "prodigy", "muon", "schedulefree_adamw"])
def test_optimizers_without_a_mup_rule_are_refused_in_one_line(compose, tmp_path, name):
    with pytest.raises(ConfigValueError) as e:
        build(compose(f"optimizer={name}", "model.parametrization=mup", "model.hidden=[32,32]", *QUIET), tmp_path)
    message = str(e.value)
    assert "\n" not in message and "model.parametrization=mup" in message
    assert message.startswith("optimizer=") and "adam, adamw" in message and "sgd, momentum" in message


def test_an_init_that_is_not_fan_in_is_refused(compose):
    message = config_error(compose, "model.parametrization=mup", "model.init=xavier")
    assert message.startswith("model.init='xavier'") and "torch or kaiming" in message


def test_lr_find_and_its_suggestion_keep_the_multipliers(compose, tmp_path):
    from lrtrain.lr_find import use_lr

    run = build(compose("model.parametrization=mup", "model.base_width=32", "model.hidden=[128,128]",
                        "optimizer.lr=auto", *QUIET), tmp_path)
    use_lr(run, 0.01)
    assert sorted(g["lr"] for g in run.optimizer.param_groups) == pytest.approx([0.01 / 4, 0.01])


def test_mup_jobs_fuse_like_solo_runs(compose, tmp_path):
    """Per-group LRs in the fused update (AdamW with decoupled decay, and momentum SGD): in-process, against the
    same runs fitted alone."""
    from test_fused import assert_same_job

    from lrtrain.sweep.fused import fit_fused, unfusable
    from lrtrain.loop import fit

    jobs = [["optimizer=adamw", "regularization=[l2]", "scheduler=cosine", "scheduler.eta_min=1e-5"],
            ["optimizer=momentum", "trainer.seed=1"]]
    settings = ["model.parametrization=mup", "model.base_width=32", "model.hidden=[128,64]",
                "trainer.max_steps=30", *QUIET]
    runs = [build(compose(*job, *settings), tmp_path / f"fused{i}") for i, job in enumerate(jobs)]
    assert [unfusable(run) for run in runs] == [None, None]
    assert [s.status for s in fit_fused(runs)] == ["completed", "completed"]
    for i, job in enumerate(jobs):
        fit(build(compose(*job, *settings), tmp_path / f"solo{i}"))
        assert_same_job(tmp_path / f"fused{i}", tmp_path / f"solo{i}")


@pytest.mark.parametrize("optimizer", ["adamw", "momentum"])
def test_a_mup_run_resumes_bit_for_bit_from_a_mid_epoch_checkpoint(compose, tmp_path, monkeypatch, optimizer):
    """μP's group LRs under warmup and cosine: killed 3 steps after a mid-epoch checkpoint and resumed in place,
    the run's steps.csv, metrics.csv and weights are an unbroken run's."""
    from test_resume import _metrics_without_seconds, _weights

    from lrtrain.loop import fit

    cfg = compose(f"optimizer={optimizer}", "model.parametrization=mup", "model.base_width=16",
                  "model.hidden=[64,64]", "warmup=linear", "warmup.length=10steps", "scheduler=cosine",
                  "trainer.max_epochs=2", "dataset.batch_size=64", "trainer.checkpoint_every_n_steps=7", *QUIET)
    fit(build(cfg, tmp_path / "reference"))
    broken = tmp_path / "broken"
    fit_killed_after(build(cfg, broken), 31, monkeypatch)
    cfg.trainer.resume = str(broken)
    fit(build(cfg, broken))
    reference = tmp_path / "reference"
    assert (broken / "steps.csv").read_bytes() == (reference / "steps.csv").read_bytes()
    assert _metrics_without_seconds(broken / "metrics.csv") == _metrics_without_seconds(reference / "metrics.csv")
    mine, theirs = _weights(broken), _weights(reference)
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)

# ------------------------------------------------------------------------------------- coordinate check

COORD = ["mode=coord_check", "coord_check.widths=[16,64,256]", "coord_check.steps=4", "coord_check.seeds=[0]",
         "model.hidden=[64,64]", "model.base_width=16", "optimizer=adam", "optimizer.lr=0.01"]


def output_growth(path) -> tuple[float, float]:
    """The output layer's mean |output| at the last step, widest over narrowest; the same for the hidden layer
    before it."""
    rows = read_rows(path)
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    last = max(int(r["step"]) for r in rows)
    at = {(int(r["width"]), r["layer"]): float(r["mean_abs"]) for r in rows if int(r["step"]) == last}
    widths = sorted({w for w, _ in at})
    return tuple(at[widths[-1], layer] / at[widths[0], layer] for layer in (layers[-1], layers[-2]))


@pytest.mark.parametrize("parametrization", ["sp", "mup"])
def test_the_coordinate_check_grows_under_sp_and_stays_flat_under_mup(compose, tmp_path, parametrization):
    """Adam at lr 0.01, widths 16 to 256: after 3 updates SP's logits are about 6x larger at 256 than at 16 and its
    last hidden layer's 2.4x (measured); μP's stay within 25%."""
    from lrtrain.build import build_coord_check

    build_coord_check(compose(*COORD, f"model.parametrization={parametrization}", *QUIET), tmp_path).run(plots=False)
    rows = read_rows(tmp_path / "coord_check.csv")
    assert list(rows[0]) == ["width", "step", "layer", "seed", "mean_abs"]
    assert len(rows) == 3 * 4 * 3  # widths x steps x layers (one seed)
    assert [r["layer"] for r in rows[:3]] == ["1:Linear", "3:Linear", "6:Linear" if parametrization == "mup"
                                              else "5:Linear"]  # forward order: the output layer last
    output, hidden = output_growth(tmp_path / "coord_check.csv")
    if parametrization == "sp":
        assert output > 3 and hidden > 1.5
    else:
        assert 0.8 < output < 1.25 and 0.8 < hidden < 1.25


@pytest.mark.parametrize("parametrization", ["sp", "mup"])
def test_the_coordinate_check_of_a_gpt(compose, tmp_path, parametrization):
    """The GPT's layers in forward order, its head last; Adam at 0.01, width 32 to 128: after 3 updates SP's
    residual projections are 6x and 12x larger at 128 (measured), μP's layers within 15% (measured; 50% asked)."""
    from lrtrain.build import build_coord_check

    cfg = compose("mode=coord_check", "model=gpt", "dataset=text", "model.n_layer=1", "model.base_width=32",
                  f"model.parametrization={parametrization}", "coord_check.widths=[32,128]", "coord_check.steps=4",
                  "coord_check.seeds=[0]", "optimizer.lr=0.01", *QUIET)
    build_coord_check(cfg, tmp_path).run(plots=False)
    rows = read_rows(tmp_path / "coord_check.csv")
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    assert layers[:2] == ["wte:Embedding", "wpe:Embedding"] and layers[-1] == "lm_head:Linear"
    assert "h.0.attn.c_attn:Linear" in layers and len(rows) == 2 * 4 * len(layers)
    at = {(int(r["width"]), r["layer"]): float(r["mean_abs"]) for r in rows if r["step"] == "3"}
    growth = {layer: at[128, layer] / at[32, layer] for layer in layers}
    if parametrization == "sp":
        assert max(growth.values()) > 3
    else:
        assert all(0.5 < g < 1.5 for g in growth.values()), growth


@pytest.mark.parametrize("overrides, message", [
    (["model=cnn"], "model='cnn': must be mlp or gpt with mode=coord_check"),
    (["model=gpt", "dataset=text", "coord_check.widths=[64,66]"], "coord_check.widths=[64, 66]: must be multiples of "
                                                                  "model.n_head (4)"),
])
def test_what_has_no_width_is_one_line(compose, tmp_path, overrides, message):
    from lrtrain.build import build_coord_check

    with pytest.raises(ConfigValueError, match=re.escape(message)):
        build_coord_check(compose("mode=coord_check", *overrides, *QUIET), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("parametrization", ["sp", "mup"])
def test_lrtrain_mode_coord_check_writes_the_csv_and_the_picture(lrtrain, parametrization):
    r = lrtrain(*COORD, f"model.parametrization={parametrization}", "trainer.progress=none")
    assert r.returncode == 0, r.stderr
    assert (r.run_dir / "coord_check.png").stat().st_size > 10_000
    assert r.summary()["status"] == "completed"
    output, _ = output_growth(r.run_dir / "coord_check.csv")
    assert (output > 3) if parametrization == "sp" else (0.8 < output < 1.25)


def test_a_checkpoint_from_before_mup_resumes_under_sp_only(compose, tmp_path):
    """Checkpoints made before model.parametrization existed hold SP models: an SP run continues them, a μP
    run is refused naming the key."""
    from lrtrain.build import check_compatible
    from lrtrain.errors import CheckpointError
    from omegaconf import OmegaConf

    for parametrization in ("sp", "mup"):
        cfg = compose(f"model.parametrization={parametrization}", *QUIET)
        run = build(cfg, tmp_path / parametrization)
        config = OmegaConf.to_container(cfg, resolve=True)
        old = {**config, "model": {k: v for k, v in config["model"].items()
                                   if k not in ("parametrization", "base_width")}}
        ckpt = {"config": old, "model": run.model.state_dict()}
        if parametrization == "sp":
            check_compatible(tmp_path / "last.pt", ckpt, config, run.model)
        else:
            with pytest.raises(CheckpointError, match=r"made with model\.base_width=None, this run has "
                                                      r"model\.base_width=128; resume with the same model"):
                check_compatible(tmp_path / "last.pt", ckpt, config, run.model)
