"""Optimizers: every option trains; weight decay reaches it with the decay split; decoupled decay is exact;
schedule-free optimizers are validated in eval mode; Prodigy's and D-Adaptation's learned step size is logged;
Muon gets the hidden matrices and AdamW the rest."""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch
from hydra.utils import get_object

from conftest import config_error, FAST, group_options, loss_fell, QUIET, read_rows
from lrtrain.optimizers import MuonWithAdamW, make_optimizer

OPTIMIZERS = group_options("optimizer")
NATIVE_DECOUPLED = {torch.optim.Adam, torch.optim.NAdam, torch.optim.RAdam}  # torch's decoupled_weight_decay
DECOUPLE_FLAG = {"prodigy", "dadapt_adam"}  # the packages' `decouple`
WEIGHT_DECOUPLE = {"psgd_kron", "adopt", "mars", "ademamix", "shampoo"}  # pytorch-optimizer's `weight_decouple`
BY_DESIGN = {"adamw", "nanogpt", "adafactor", "lion", "muon", "schedulefree_adamw", "schedulefree_sgd", "soap", "cautious_adamw"}
ZOO = ["soap", "psgd_kron", "adopt", "mars", "ademamix", "shampoo", "cautious_adamw"]  # pytorch-optimizer's, heavyball's
SCHEDULE_FREE = ["schedulefree_adamw", "schedulefree_sgd"]
LEARNED_LR = ["prodigy", "dadapt_adam"]


def test_the_catalogue_is_complete():
    assert set(OPTIMIZERS) >= {"sgd", "momentum", "rmsprop", "adagrad", "adam", "adamw", "amsgrad", "nadam", "radam",
                               "adamax", "adadelta", "adafactor", "lion", "muon", "schedulefree_adamw",
                               "schedulefree_sgd", "prodigy", "dadapt_adam", *ZOO}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_is_its_class_and_lowers_the_loss_in_two_epochs(train_briefly, compose, name):
    # RAdam's rectification scales its first hundred steps down to a few percent of lr: give it longer
    run, rows = train_briefly(f"optimizer={name}", steps=135 if name == "radam" else 90)  # 45 steps an epoch
    cfg = compose(f"optimizer={name}")
    assert type(run.optimizer) is get_object(cfg.optimizer._target_)
    assert run.optimizer.defaults["lr"] == cfg.optimizer.lr
    assert loss_fell(rows), [r["loss"] for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_the_zoo_trains_the_digits_default_to_95_percent(compose, tmp_path, name):
    """The digits default (20 epochs of the MLP) with each optimizer's own defaults; the first validation at
    95% ends it (pytorch-optimizer's six took 21 s in all on a loaded 2-core CPU, SOAP, Kron and Shampoo 5-8 s each)."""
    from lrtrain.build import build
    from lrtrain.loop import fit

    cfg = compose(f"optimizer={name}", "early_stopping=target", "early_stopping.stopping_threshold=0.95", *QUIET)
    summary = fit(build(cfg, tmp_path))
    assert summary.status == "early_stopped" and summary.final["val_acc"] >= 0.95


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("decay_1d", [False, True])
def test_weight_decay_reaches_the_optimizer_with_the_decay_split(compose, tmp_path, name, decay_1d):
    from lrtrain.build import build

    cfg = compose(f"optimizer={name}", "regularization=[l2]", "regularization.l2.weight_decay=0.01",
                  f"regularization.l2.decay_1d={decay_1d}")
    run = build(cfg, tmp_path)
    groups = run.optimizer.param_groups
    decay_of = {id(p): g["weight_decay"] + g.get("decoupled_decay", 0.0) for g in groups for p in g["params"]}
    params = list(run.model.parameters())
    assert sum(len(g["params"]) for g in groups) == len(params) == len(decay_of)  # each parameter once
    assert [decay_of[id(p)] for p in params] == [0.01 if decay_1d or p.dim() >= 2 else 0.0 for p in params]
    assert all(not g.get("decoupled_weight_decay", False) and not g.get("decouple", False)
               and not g.get("weight_decouple", False) or name in BY_DESIGN for g in groups)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_decoupled_decay_is_native_where_torch_has_it_else_a_hook(compose, tmp_path, name):
    from lrtrain.build import build

    cfg = compose(f"optimizer={name}", "regularization=[l2]", "regularization.l2.weight_decay=0.01",
                  "regularization.l2.decoupled=true")
    run = build(cfg, tmp_path)
    opt = run.optimizer
    decayed = opt.param_groups[0]
    if name in BY_DESIGN:  # the optimizer's own decay is the decoupled one
        assert decayed["weight_decay"] == 0.01 and "decoupled_decay" not in decayed
    elif type(opt) in NATIVE_DECOUPLED:
        assert decayed["weight_decay"] == 0.01 and decayed["decoupled_weight_decay"] is True
    elif name in DECOUPLE_FLAG:
        assert decayed["weight_decay"] == 0.01 and decayed["decouple"] is True
    elif name in WEIGHT_DECOUPLE:
        assert decayed["weight_decay"] == 0.01 and decayed["weight_decouple"] is True
    else:
        assert decayed["weight_decay"] == 0.0 and decayed["decoupled_decay"] == 0.01
    biases = {id(p) for p in run.model.parameters() if p.dim() == 1}
    undecayed = [g for g in opt.param_groups if {id(p) for p in g["params"]} <= biases]
    assert undecayed and all(g["weight_decay"] == 0.0 and not g.get("decoupled_decay") for g in undecayed)


def test_cautious_adamw_is_adamw_with_the_papers_mask():
    """Against Liang et al. 2024's C-AdamW written out: Adam's bias-corrected moments, the update zeroed where its
    sign disagrees with the gradient's and the rest scaled by numel / kept, decay p (1 - lr wd); heavyball's
    denominator is max(sqrt(v), eps). The third gradient flips two signs, so the mask bites."""
    from lrtrain.cautious_adamw import CautiousAdamW

    lr, wd, (b1, b2), eps = 0.1, 0.1, (0.9, 0.99), 1e-8
    p0 = torch.tensor([1.0, -2.0, 0.5, 0.3])
    grads = [torch.tensor([0.3, 0.1, -0.2, 0.4]), torch.tensor([0.2, 0.4, -0.1, 0.3]),
             torch.tensor([-0.05, 0.1, 0.03, 0.2])]
    p, m, v = p0.clone(), torch.zeros(4), torch.zeros(4)
    masked = 0
    for t, g in enumerate(grads, 1):
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        u = (m / (1 - b1 ** t)) / (v / (1 - b2 ** t)).sqrt().clamp(min=eps)
        keep = (u * g > 0).float()
        masked += int((keep == 0).sum())
        p = p * (1 - lr * wd) - lr * u * keep * keep.numel() / keep.sum()
    assert masked == 2
    factory = functools.partial(CautiousAdamW, lr=lr, betas=(b1, b2), eps=eps)
    torch.testing.assert_close(_steps(factory, False, grads, p0), p)


def _steps(optimizer_factory, decoupled: bool, grads: list[torch.Tensor], p0: torch.Tensor) -> torch.Tensor:
    p = torch.nn.Parameter(p0.clone())
    opt = make_optimizer(optimizer_factory, [{"params": [p], "weight_decay": 0.1}], decoupled=decoupled)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach()


def test_decoupled_sgd_matches_the_hand_computation():
    lr, wd, m = 0.5, 0.1, 0.9
    p0, g1, g2 = torch.tensor([1.0, -2.0]), torch.tensor([0.3, 0.1]), torch.tensor([-0.2, 0.4])
    sgd = functools.partial(torch.optim.SGD, lr=lr, momentum=m)
    # decoupled: p <- p (1 - lr wd), then the momentum step on the bare gradient
    p1 = p0 * (1 - lr * wd) - lr * g1
    p2 = p1 * (1 - lr * wd) - lr * (m * g1 + g2)
    torch.testing.assert_close(_steps(sgd, True, [g1, g2], p0), p2)
    # coupled: wd p goes through the momentum buffer
    b1 = g1 + wd * p0
    c1 = p0 - lr * b1
    c2 = c1 - lr * (m * b1 + g2 + wd * c1)
    torch.testing.assert_close(_steps(sgd, False, [g1, g2], p0), c2)
    assert not torch.allclose(p2, c2)


def test_decoupled_adam_is_adamw_and_coupled_adam_is_not():
    p0 = torch.tensor([1.0, -2.0, 0.5])
    grads = [torch.tensor([0.3, 0.1, -0.2]), torch.tensor([-0.2, 0.4, 0.1]), torch.tensor([0.1, 0.1, 0.1])]
    adam = functools.partial(torch.optim.Adam, lr=0.1)
    adamw = functools.partial(torch.optim.AdamW, lr=0.1)
    torch.testing.assert_close(_steps(adam, True, grads, p0), _steps(adamw, False, grads, p0))
    torch.testing.assert_close(_steps(adamw, True, grads, p0), _steps(adamw, False, grads, p0))
    assert not torch.allclose(_steps(adam, False, grads, p0), _steps(adamw, False, grads, p0))


def test_decoupled_hook_equals_torch_native_decoupling():
    # RMSprop has no flag: the hook must do what torch's own flag does for Adam (p <- p (1 - lr wd) first)
    p0 = torch.tensor([1.0, -2.0])
    grads = [torch.tensor([0.3, 0.1]), torch.tensor([-0.2, 0.4])]
    lr, wd = 0.01, 0.1
    hooked = _steps(functools.partial(torch.optim.RMSprop, lr=lr), True, grads, p0)
    p = torch.nn.Parameter(p0.clone())
    opt = torch.optim.RMSprop([p], lr=lr)
    for g in grads:
        with torch.no_grad():
            p.mul_(1 - lr * wd)
        p.grad = g.clone()
        opt.step()
    torch.testing.assert_close(hooked, p.detach())


def test_cli_lists_reach_torch_as_plain_values(compose, tmp_path):
    from lrtrain.build import build

    cfg = compose("optimizer=adam", "optimizer.betas=[0.8,0.999]")
    betas = build(cfg, tmp_path).optimizer.defaults["betas"]
    assert type(betas) in (list, tuple) and list(betas) == [0.8, 0.999]
    assert all(type(b) is float for b in betas)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["optimizer=adamw", "optimizer.betas=[0.9,1.0]"],
         "optimizer.betas=[0.9, 1.0]: must be two numbers in [0, 1)"),
        (["optimizer=nadam", "optimizer.betas=[-0.1,0.9]"],
         "optimizer.betas=[-0.1, 0.9]: must be two numbers in [0, 1)"),
        (["optimizer=radam", "optimizer.betas=[0.9]"], "optimizer.betas=[0.9]: must be two numbers in [0, 1)"),
        (["optimizer=rmsprop", "optimizer.alpha=1.0"], "optimizer.alpha=1.0: must be in [0, 1)"),
        (["optimizer=momentum", "optimizer.momentum=1.0"], "optimizer.momentum=1.0: must be in [0, 1)"),
        (["optimizer=adagrad", "optimizer.eps=0"], "optimizer.eps=0.0: must be > 0"),
        (["optimizer=sgd", "optimizer.nesterov=true"],
         "optimizer.nesterov=True: must be false unless momentum > 0 and dampening = 0"),
        (["optimizer=adadelta", "optimizer.rho=1"], "optimizer.rho=1.0: must be in [0, 1)"),
        (["optimizer=adafactor", "optimizer.beta2_decay=0.5"], "optimizer.beta2_decay=0.5: must be <= 0"),
        (["optimizer=lion", "optimizer.betas=[0.9,1.5]"], "optimizer.betas=[0.9, 1.5]: must be two numbers in [0, 1]"),
        (["optimizer=schedulefree_sgd", "optimizer.momentum=0"], "optimizer.momentum=0.0: must be in (0, 1)"),
        (["optimizer=prodigy", "optimizer.growth_rate=0.5"],
         "optimizer.growth_rate=0.5: must be >= 1 (.inf: no limit)"),
        (["optimizer=muon", "optimizer.adjust_lr_fn=spectral"],
         "optimizer.adjust_lr_fn='spectral': must be null, original, match_rms_adamw or spectral_unclamped"),
        (["optimizer=muon", "optimizer.lr=auto", "optimizer.adamw_lr=3e-4"],
         "optimizer.adamw_lr=0.0003: must be null with lr=auto (the range test sets one LR for both parts)"),
    ],
)
def test_bad_optimizer_values_fail_with_the_key(compose, overrides, message):
    assert config_error(compose, *overrides) == message


def test_cli_run_with_lists_and_decoupled_decay(lrtrain):
    r = lrtrain(*FAST, "trainer.max_epochs=1", "logger.csv.plots=false", "optimizer=nadam",
                "optimizer.betas=[0.8,0.99]", "regularization=[l2]", "regularization.l2.decoupled=true")
    assert r.returncode == 0, r.stderr
    groups = torch.load(r.run_dir / "checkpoints" / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [tuple(g["betas"]) for g in groups] == [(0.8, 0.99)] * 2
    assert [(g["weight_decay"], g["decoupled_weight_decay"]) for g in groups] == [(0.0005, True), (0.0, True)]


# ------------------------------------------------------------------------------------------- schedule-free


@pytest.mark.parametrize("name", SCHEDULE_FREE)
def test_schedule_free_validates_tests_and_saves_the_averaged_weights(compose, tmp_path, name):
    """The loop puts the optimizer in eval mode before validation and checkpoints: the numbers in metrics.csv are
    those of the averaged weights x, which is what last.pt holds; in train mode (weights y) they would differ."""
    from lrtrain.build import build
    from lrtrain.loop import evaluate, fit
    from lrtrain.optimizers import eval_mode, train_mode

    run = build(compose(f"optimizer={name}", "trainer.max_epochs=2", *QUIET), tmp_path)
    summary = fit(run)
    amp = contextlib.nullcontext()
    as_validated = evaluate(run.model, run.data.val, run.data, amp)
    assert as_validated["loss"] == float(read_rows(tmp_path / "metrics.csv")[-1]["val_loss"])
    assert as_validated["loss"] == summary.final["val_loss"]
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.equal(saved["model"][k], v) for k, v in run.model.state_dict().items())
    assert [g["train_mode"] for g in saved["optimizer"]["param_groups"]] == [False]
    train_mode(run.optimizer)
    in_train_mode = evaluate(run.model, run.data.val, run.data, amp)
    assert abs(in_train_mode["loss"] - as_validated["loss"]) > 1e-4 * as_validated["loss"]
    eval_mode(run.optimizer)
    assert evaluate(run.model, run.data.val, run.data, amp)["loss"] == pytest.approx(as_validated["loss"], rel=1e-5)


def test_mode_switches_do_nothing_to_other_optimizers():
    from lrtrain.optimizers import eval_mode, has_modes, train_mode

    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p])
    train_mode(opt), eval_mode(opt)
    assert not has_modes(opt) and torch.equal(p.detach(), torch.ones(3))


# ----------------------------------------------------------------------------- learned step size (d * lr)


@pytest.mark.parametrize("name", LEARNED_LR)
def test_learned_step_size_is_logged_as_d_times_lr(compose, tmp_path, name):
    """steps.csv's effective_lr of step k is d * lr with the d that step used, which is the d in the checkpoint
    written after k steps; d starts at d0 and grows; summary.json ends with the last value."""
    from lrtrain.build import build
    from lrtrain.loop import fit

    cfg = compose(f"optimizer={name}", "scheduler=cosine", "trainer.max_epochs=2",
                  "trainer.checkpoint_every_n_steps=10", "trainer.keep_last_k=20", *QUIET)
    summary = fit(build(cfg, tmp_path))
    rows = read_rows(tmp_path / "steps.csv")
    lrs, effective = [float(r["lr"]) for r in rows], [float(r["effective_lr"]) for r in rows]
    assert effective[0] == cfg.optimizer.d0 * lrs[0]
    ds = []
    for path in sorted((tmp_path / "checkpoints").glob("step-*.pt")):
        ckpt = torch.load(path, weights_only=True)
        d = ckpt["optimizer"]["param_groups"][0]["d"]
        assert effective[ckpt["step"]] == d * lrs[ckpt["step"]], path.name
        ds.append(d)
    assert len(ds) == 8 and ds == sorted(ds) and ds[-1] > 100 * cfg.optimizer.d0
    assert summary.effective_lr == effective[-1]
    assert lrs[-1] < lrs[0] / 100  # the cosine schedule multiplies lr, the learned d comes on top


def test_no_effective_lr_column_for_optimizers_that_do_not_learn_it(train_briefly):
    _, rows = train_briefly("optimizer=adam", steps=3)
    assert list(rows[0]) == ["step", "epoch", "lr", "loss"]


# ------------------------------------------------------------------------------------------------- Muon


def _ids(params) -> set[int]:
    return {id(p) for p in params}


@pytest.mark.parametrize("head_to_adamw", [True, False])
def test_muon_gets_the_hidden_matrices_and_adamw_the_rest(compose, tmp_path, head_to_adamw):
    from lrtrain.build import build

    cfg = compose("optimizer=muon", "model.hidden=[64,32]", f"optimizer.head_to_adamw={head_to_adamw}",
                  "regularization=[l2]")
    run = build(cfg, tmp_path)
    opt = run.optimizer
    layers = [m for m in run.model.modules() if isinstance(m, torch.nn.Linear)]
    hidden = [m.weight for m in (layers if not head_to_adamw else layers[:-1])]
    assert type(opt.muon) is torch.optim.Muon and type(opt.adamw) is torch.optim.AdamW
    assert _ids(p for g in opt.muon.param_groups for p in g["params"]) == _ids(hidden)
    assert _ids(p for g in opt.adamw.param_groups for p in g["params"]) == _ids(run.model.parameters()) - _ids(hidden)
    assert {g["lr"] for g in opt.param_groups} == {cfg.optimizer.lr}  # adamw_lr: null is lr
    assert {g["weight_decay"] for g in opt.muon.param_groups} == {cfg.regularization.l2.weight_decay}


def test_muon_adamw_lr_and_the_split_on_a_cnn(compose, tmp_path):
    from lrtrain.build import build

    run = build(compose("optimizer=muon", "model=cnn", "optimizer.adamw_lr=3e-4"), tmp_path)
    muon = [p for g in run.optimizer.muon.param_groups for p in g["params"]]
    assert [tuple(p.shape) for p in muon] == [(128, 64 * 2 * 2)]  # the one hidden Linear; convolutions are 4-D
    assert {g["lr"] for g in run.optimizer.adamw.param_groups} == {3e-4}


def test_muon_steps_exactly_as_torchs_muon_and_adamw_side_by_side():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4), torch.nn.Tanh(),
                                torch.nn.Linear(4, 3))
    twin = torch.nn.Sequential(*[type(m)(m.in_features, m.out_features) if isinstance(m, torch.nn.Linear) else m
                                 for m in model])
    twin.load_state_dict(model.state_dict())
    kwargs = dict(lr=0.01, momentum=0.95, nesterov=True, ns_coefficients=(3.4445, -4.775, 2.0315), eps=1e-7,
                  ns_steps=5, adjust_lr_fn="match_rms_adamw")
    ours = MuonWithAdamW(model.parameters(), **kwargs, adamw_lr=None, adamw_betas=(0.9, 0.999), adamw_eps=1e-8,
                         head_to_adamw=True)
    muon = torch.optim.Muon([twin[0].weight, twin[2].weight], weight_decay=0.0, **kwargs)
    adamw = torch.optim.AdamW([twin[0].bias, twin[2].bias, twin[4].weight, twin[4].bias], lr=0.01, weight_decay=0.0)
    x = torch.randn(16, 6)
    for _ in range(3):
        for net, opts in ((model, [ours]), (twin, [muon, adamw])):
            net(x).square().mean().backward()
            for o in opts:
                o.step()
                o.zero_grad()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)
    state = ours.state_dict()
    assert set(state) == {"muon", "adamw"}
    ours.load_state_dict(state)


def test_muon_on_a_model_without_hidden_matrices_is_a_config_error(compose, tmp_path):
    from lrtrain.build import build
    from lrtrain.errors import ConfigValueError

    with pytest.raises(ConfigValueError, match=r"^optimizer='MuonWithAdamW': must be an optimizer for this model: "
                                               "Muon needs 2-D hidden weights"):
        build(compose("optimizer=muon", "dataset=regression", "model=linear"), tmp_path)


# --------------------------------------------------------------------------- momentum cycling reaches them


@pytest.mark.parametrize("scheduler", ["cyclic", "onecycle"])
@pytest.mark.parametrize("optimizer,key", [("momentum", "momentum"), ("adam", "betas"), ("muon", None)])
def test_the_loop_sets_and_logs_the_cycled_momentum(train_briefly, compose, scheduler, optimizer, key):
    """The schedule's momentum reaches every parameter group (momentum or beta1) and steps.csv, step by step."""
    from lrtrain.build_schedule import build_schedule
    from lrtrain.durations import Timeline

    extra = ["scheduler.max_lr=0.05"] if scheduler == "cyclic" else []
    run, rows = train_briefly(f"scheduler={scheduler}", f"optimizer={optimizer}", *extra, steps=30)
    expected = build_schedule(compose(f"scheduler={scheduler}", f"optimizer={optimizer}", *extra,
                                      "trainer.max_steps=30"), Timeline(45, 30))
    assert [float(r["momentum"]) for r in rows] == [expected.momentum(k) for k in range(30)]
    last = expected.momentum(29)
    for group in run.optimizer.param_groups:  # muon: Muon's momentum and the AdamW part's beta1
        assert (group["betas"][0] if "betas" in group else group["momentum"]) == last
        assert key is None or key in group


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["optimizer=adagrad"], "scheduler.cycle_momentum=True: must be false with optimizer Adagrad, which has "
                                "neither momentum nor beta1"),
        (["optimizer=adafactor"], "scheduler.cycle_momentum=True: must be false with optimizer Adafactor, which "
                                  "has neither momentum nor beta1"),
        (["optimizer=schedulefree_adamw"], "scheduler.cycle_momentum=True: must be false with a schedule-free "
         "optimizer (its train/eval switch undoes the interpolation with the momentum it was made with)"),
    ],
)
def test_momentum_cycling_needs_an_optimizer_with_momentum(compose, tmp_path, overrides, message):
    from lrtrain.build import build
    from lrtrain.errors import ConfigValueError

    with pytest.raises(ConfigValueError) as e:
        build(compose("scheduler=onecycle", *overrides), tmp_path)
    assert str(e.value) == message
    build(compose("scheduler=onecycle", "scheduler.cycle_momentum=false", *overrides), tmp_path)  # off: fine
