"""Optimizers: every option trains; weight decay reaches it with the decay split; decoupled decay is exact."""

from __future__ import annotations

import functools

import pytest
import torch
from hydra.utils import get_object

from conftest import config_error, FAST, group_options, loss_fell
from lrtrain.optimizers import make_optimizer

OPTIMIZERS = group_options("optimizer")
NATIVE_DECOUPLED = {torch.optim.Adam, torch.optim.NAdam, torch.optim.RAdam}


def test_the_catalogue_is_complete():
    assert set(OPTIMIZERS) >= {"sgd", "momentum", "rmsprop", "adagrad", "adam", "adamw", "amsgrad", "nadam", "radam"}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_is_its_torch_class_and_lowers_the_loss(train_briefly, compose, name):
    # RAdam's rectification scales its first hundred steps down to a few percent of lr: give it longer
    run, rows = train_briefly(f"optimizer={name}", steps=120 if name == "radam" else 40)
    cfg = compose(f"optimizer={name}")
    assert type(run.optimizer) is get_object(cfg.optimizer._target_)
    assert run.optimizer.defaults["lr"] == cfg.optimizer.lr
    assert loss_fell(rows), [r["loss"] for r in rows]


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("decay_1d", [False, True])
def test_weight_decay_reaches_the_optimizer_with_the_decay_split(compose, tmp_path, name, decay_1d):
    from lrtrain.build import build

    cfg = compose(f"optimizer={name}", "regularization=[l2]", "regularization.l2.weight_decay=0.01",
                  f"regularization.l2.decay_1d={decay_1d}")
    run = build(cfg, tmp_path)
    groups = run.optimizer.param_groups
    params = list(run.model.parameters())
    if decay_1d:
        assert len(groups) == 1 and groups[0]["weight_decay"] == 0.01 and len(groups[0]["params"]) == len(params)
    else:
        decay, no_decay = groups
        assert decay["weight_decay"] == 0.01 and all(p.dim() >= 2 for p in decay["params"])
        assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])
        assert len(decay["params"]) + len(no_decay["params"]) == len(params)
    assert all(not g.get("decoupled_weight_decay", False) or name == "adamw" for g in groups)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_decoupled_decay_is_native_where_torch_has_it_else_a_hook(compose, tmp_path, name):
    from lrtrain.build import build

    cfg = compose(f"optimizer={name}", "regularization=[l2]", "regularization.l2.weight_decay=0.01",
                  "regularization.l2.decoupled=true")
    opt = build(cfg, tmp_path).optimizer
    decayed = opt.param_groups[0]
    if isinstance(opt, torch.optim.AdamW):
        assert decayed["weight_decay"] == 0.01 and "decoupled_decay" not in decayed
    elif type(opt) in NATIVE_DECOUPLED:
        assert decayed["weight_decay"] == 0.01 and decayed["decoupled_weight_decay"] is True
    else:
        assert decayed["weight_decay"] == 0.0 and decayed["decoupled_decay"] == 0.01
    assert opt.param_groups[1]["weight_decay"] == 0.0 and not opt.param_groups[1].get("decoupled_decay")


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
