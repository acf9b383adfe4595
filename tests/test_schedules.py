"""Schedules and warmup, in-process: whole runs against torch.optim.lr_scheduler and the closed forms.

Each lrtrain schedule is built from the real config (compose + build_schedule), then asked for the LR of every
step of a run. The torch scheduler is driven as a user drives it: stepped once per optimizer step
(interval=step) or once per epoch (interval=epoch), reading `group["lr"]` before each optimizer step. Every
value must agree to 1e-12 relative (`assert_close`).
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch.optim import lr_scheduler as tls

from conftest import config_error, CUSTOM, group_options
from lrtrain.build_schedule import build_schedule
from lrtrain.errors import ConfigValueError
from lrtrain.durations import Timeline

REL = 1e-12
BASES = (0.1, 0.02)  # two parameter groups with different LRs: both follow the same schedule
RUNS = [(7, 84), (45, 900)]  # (steps per epoch, total steps): 12 short epochs; the digits default (20 epochs)


def assert_close(ours: list[float], theirs: list[float], what: str = "") -> None:
    assert len(ours) == len(theirs)
    for k, (a, b) in enumerate(zip(ours, theirs)):
        assert a == b or math.isclose(a, b, rel_tol=REL, abs_tol=0.0), f"{what} step {k}: {a!r} != {b!r}"


@pytest.fixture
def schedule(compose):
    """schedule(*overrides, spe=, total=) -> the built lrtrain schedule (warmup included)."""

    def _make(*overrides: str, spe: int, total: int):
        cfg = compose("optimizer=sgd", f"optimizer.lr={BASES[0]}", *overrides)
        return build_schedule(cfg, Timeline(spe, total))

    return _make


def ours_curve(sched, total: int, base: float) -> list[float]:
    return [sched(k, base) for k in range(total)]


def torch_curve(make, total: int, spe: int, interval: str, bases=BASES) -> list[list[float]]:
    """Drive a torch scheduler over a run; returns the LR each step used, per parameter group."""
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in bases]
    opt = torch.optim.SGD([{"params": [p], "lr": b} for p, b in zip(params, bases)], lr=bases[0])
    sched = make(opt)
    curves: list[list[float]] = [[] for _ in bases]
    for k in range(total):
        if interval == "epoch" and k and k % spe == 0:
            sched.step()
        for c, g in zip(curves, opt.param_groups):
            c.append(float(g["lr"]))
        opt.step()
        if interval == "step":
            sched.step()
    return curves


def ticks(n_epochs: float, spe: int, interval: str) -> int:
    return round(n_epochs * spe) if interval == "step" else round(n_epochs)


# Each case: lrtrain overrides, and the torch scheduler for the same settings. `T` is the schedule's span
# (the run, or the run after warmup) and `e(x)` converts x epochs into the scheduler's units.
CASES = {
    "constant": ([], lambda o, T, e, spe, i: tls.ConstantLR(o, factor=1.0, total_iters=0)),
    "step": (["scheduler.step_size=3ep", "scheduler.gamma=0.5"],
             lambda o, T, e, spe, i: tls.StepLR(o, step_size=e(3), gamma=0.5)),
    "step_pct": (["scheduler=step", "scheduler.step_size=25%", "scheduler.gamma=0.3"],  # 25% of the run
                 lambda o, T, e, spe, i: tls.StepLR(o, step_size=round(0.25 * T) if i == "step"
                                                    else round(round(0.25 * T * spe) / spe), gamma=0.3)),
    "multistep": (["scheduler.milestones=[2ep,5,9ep]", "scheduler.gamma=0.3"],
                  lambda o, T, e, spe, i: tls.MultiStepLR(o, milestones=[e(2), e(5), e(9)], gamma=0.3)),
    "exponential": (["scheduler.gamma=0.8"],
                    lambda o, T, e, spe, i: tls.ExponentialLR(o, gamma=0.8 if i == "epoch" else 0.8 ** (1 / spe))),
    "polynomial": (["scheduler.power=2.0"],
                   lambda o, T, e, spe, i: tls.PolynomialLR(o, total_iters=T, power=2.0)),
    "polynomial_total": (["scheduler=polynomial", "scheduler.power=0.5", "scheduler.total=6ep"],
                         lambda o, T, e, spe, i: tls.PolynomialLR(o, total_iters=e(6), power=0.5)),
    "linear": (["scheduler.end_factor=0.1", "scheduler.total=8ep"],
               lambda o, T, e, spe, i: tls.LinearLR(o, start_factor=1.0, end_factor=0.1, total_iters=e(8))),
    "linear_to_end": (["scheduler=linear", "scheduler.end_factor=0.0"],
                      lambda o, T, e, spe, i: tls.LinearLR(o, start_factor=1.0, end_factor=0.0, total_iters=T)),
    "cosine": (["scheduler.eta_min=0.001"],
               lambda o, T, e, spe, i: tls.CosineAnnealingLR(o, T_max=T, eta_min=0.001)),
    "cosine_tmax": (["scheduler=cosine", "scheduler.T_max=5ep", "scheduler.eta_min=0.0"],
                    lambda o, T, e, spe, i: tls.CosineAnnealingLR(o, T_max=e(5), eta_min=0.0)),
    "cosine_restarts": (["scheduler.T_0=2ep", "scheduler.T_mult=2", "scheduler.eta_min=1e-4"],
                        lambda o, T, e, spe, i: tls.CosineAnnealingWarmRestarts(o, T_0=e(2), T_mult=2, eta_min=1e-4)),
    "cosine_restarts_1": (["scheduler=cosine_restarts", "scheduler.T_0=3ep", "scheduler.T_mult=1"],
                          lambda o, T, e, spe, i: tls.CosineAnnealingWarmRestarts(o, T_0=e(3), T_mult=1)),
}
for _mode in ("triangular", "triangular2", "exp_range"):
    CASES[f"cyclic_{_mode}"] = (
        ["scheduler=cyclic", "scheduler.base_lr=0.01", "scheduler.max_lr=0.2", "scheduler.step_size_up=2ep",
         "scheduler.step_size_down=1ep", f"scheduler.mode={_mode}", "scheduler.gamma=0.995"],
        lambda o, T, e, spe, i, m=_mode: tls.CyclicLR(
            o, base_lr=[0.01 * b / BASES[0] for b in BASES], max_lr=[0.2 * b / BASES[0] for b in BASES],
            step_size_up=e(2), step_size_down=e(1), mode=m, gamma=0.995, cycle_momentum=False))
for _anneal in ("cos", "linear"):
    for _three in (False, True):
        CASES[f"onecycle_{_anneal}_{_three}"] = (
            ["scheduler=onecycle", f"scheduler.anneal_strategy={_anneal}", f"scheduler.three_phase={_three}",
             "scheduler.pct_start=0.25", "scheduler.div_factor=10", "scheduler.final_div_factor=100"],
            lambda o, T, e, spe, i, a=_anneal, th=_three: tls.OneCycleLR(
                o, max_lr=list(BASES), total_steps=T, pct_start=0.25, anneal_strategy=a, div_factor=10,
                final_div_factor=100, three_phase=th, cycle_momentum=False))


def _overrides(name: str) -> list[str]:
    overrides = CASES[name][0]
    option = name if name in group_options("scheduler") else None
    return ([f"scheduler={option}"] if option else []) + overrides


TORCH_CASES = list(CASES)


@pytest.mark.parametrize("interval", ["step", "epoch"])
@pytest.mark.parametrize("name", TORCH_CASES)
def test_whole_runs_match_torch(compose, name, interval):
    cfg = compose("optimizer=sgd", f"optimizer.lr={BASES[0]}", *_overrides(name), f"scheduler.interval={interval}")
    for spe, total in RUNS:
        sched = build_schedule(cfg, Timeline(spe, total))
        T = total if interval == "step" else math.ceil(total / spe)
        theirs = torch_curve(lambda o: CASES[name][1](o, T, lambda x: ticks(x, spe, interval), spe, interval),
                             total, spe, interval)
        for base, curve in zip(BASES, theirs):
            assert_close(ours_curve(sched, total, base), curve, f"{name} {interval} {spe}x{total // spe} base={base}")


# ------------------------------------------------------------------------------------ momentum cycling

MOMENTA = ["scheduler.cycle_momentum=true", "scheduler.base_momentum=0.7", "scheduler.max_momentum=0.95"]
MOMENTUM_CASES = {name: CASES[name][0] + MOMENTA for name in CASES if name.startswith(("cyclic", "onecycle"))}


def torch_lrs_and_momenta(make, total: int, spe: int, interval: str, beta1: bool):
    """Drive a torch scheduler with cycle_momentum=True over SGD (momentum) or Adam (beta1); return the LRs of
    each group and the momentum every step used (torch sets the same momentum in every group)."""
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in BASES]
    groups = [{"params": [p], "lr": b} for p, b in zip(params, BASES)]
    opt = torch.optim.Adam(groups, lr=BASES[0]) if beta1 else torch.optim.SGD(groups, lr=BASES[0], momentum=0.5)
    sched = make(opt)
    lrs: list[list[float]] = [[] for _ in BASES]
    momenta: list[float] = []
    for k in range(total):
        if interval == "epoch" and k and k % spe == 0:
            sched.step()
        for c, g in zip(lrs, opt.param_groups):
            c.append(float(g["lr"]))
        values = {g["betas"][0] if beta1 else g["momentum"] for g in opt.param_groups}
        assert len(values) == 1
        momenta.append(values.pop())
        opt.step()
        if interval == "step":
            sched.step()
    return lrs, momenta


@pytest.mark.parametrize("interval", ["step", "epoch"])
@pytest.mark.parametrize("name,optimizer", [(name, "momentum") for name in MOMENTUM_CASES]  # SGD's momentum
                         + [("cyclic_triangular", "adam"), ("onecycle_cos_False", "adam")])  # Adam's beta1
def test_momentum_cycling_matches_torch(compose, name, interval, optimizer):
    """cyclic/onecycle with cycle_momentum: the LR and the momentum of every step equal torch's CyclicLR and
    OneCycleLR with cycle_momentum=True (momentum for SGD, beta1 for Adam)."""
    cfg = compose(f"optimizer={optimizer}", f"optimizer.lr={BASES[0]}", *MOMENTUM_CASES[name],
                  f"scheduler.interval={interval}")
    for spe, total in RUNS:
        sched = build_schedule(cfg, Timeline(spe, total))
        T = total if interval == "step" else math.ceil(total / spe)
        e = lambda x: ticks(x, spe, interval)  # noqa: E731
        if name.startswith("cyclic"):
            make = lambda o: tls.CyclicLR(  # noqa: E731
                o, base_lr=[0.01 * b / BASES[0] for b in BASES], max_lr=[0.2 * b / BASES[0] for b in BASES],
                step_size_up=e(2), step_size_down=e(1), mode=name.split("_", 1)[1], gamma=0.995,
                cycle_momentum=True, base_momentum=0.7, max_momentum=0.95)
        else:
            _, anneal, three = name.split("_")
            make = lambda o: tls.OneCycleLR(  # noqa: E731
                o, max_lr=list(BASES), total_steps=T, pct_start=0.25, anneal_strategy=anneal, div_factor=10,
                final_div_factor=100, three_phase=three == "True", cycle_momentum=True, base_momentum=0.7,
                max_momentum=0.95)
        lrs, momenta = torch_lrs_and_momenta(make, total, spe, interval, beta1=optimizer == "adam")
        what = f"{name} {interval} {spe}x{total // spe}"
        assert_close([sched.momentum(k) for k in range(total)], momenta, what + " momentum")
        for base, curve in zip(BASES, lrs):
            assert_close(ours_curve(sched, total, base), curve, f"{what} base={base}")
    assert max(momenta) == pytest.approx(0.95) and min(momenta) < 0.9  # it did cycle


@pytest.mark.parametrize("name", [n for n in group_options("scheduler") if n not in ("cyclic", "onecycle")])
def test_other_schedules_leave_momentum_alone(compose, name):
    extra = {"inverse_sqrt": ["warmup=linear"], "custom": CUSTOM}.get(name, [])
    s = build_schedule(compose(f"scheduler={name}", *extra), Timeline(45, 900))
    assert s.momentum(0) is None and s.momentum(500) is None


WARMUP_CASES = ["constant", "step", "multistep", "exponential", "polynomial", "linear_to_end", "cosine",
                "cosine_restarts"]


@pytest.mark.parametrize("spe,total", RUNS[:1])
@pytest.mark.parametrize("interval", ["step", "epoch"])
@pytest.mark.parametrize("kind,start_factor", [("linear", 0.1), ("linear", 0.005), ("constant", 0.25)])
@pytest.mark.parametrize("name", WARMUP_CASES)
def test_warmup_matches_torch_sequential_lr(schedule, name, kind, start_factor, interval, spe, total):
    """warmup + schedule == SequentialLR([LinearLR | ConstantLR, schedule], milestones=[W])."""
    sched = schedule(*_overrides(name), f"scheduler.interval={interval}", f"warmup={kind}", "warmup.length=2ep",
                     f"warmup.start_factor={start_factor}", spe=spe, total=total)
    W = ticks(2, spe, interval)
    T = (total if interval == "step" else math.ceil(total / spe)) - W

    def make(o):
        first = (tls.LinearLR(o, start_factor=start_factor, total_iters=W) if kind == "linear"
                 else tls.ConstantLR(o, factor=start_factor, total_iters=W))
        second = CASES[name][1](o, T, lambda x: ticks(x, spe, interval), spe, interval)
        return tls.SequentialLR(o, [first, second], milestones=[W])

    theirs = torch_curve(make, total, spe, interval)
    for base, curve in zip(BASES, theirs):
        assert_close(ours_curve(sched, total, base), curve, f"{name}+{kind} {interval} base={base}")


# ------------------------------------------------------------------------------ closed forms (no torch twin)


@pytest.mark.parametrize("spe,total", RUNS)
def test_polynomial_with_end_lr(schedule, spe, total):
    s = schedule("scheduler=polynomial", "scheduler.power=2.0", "scheduler.end_lr=0.005",
                 "scheduler.total=80%", spe=spe, total=total)
    T = round(0.8 * total)
    for base in BASES:
        expected = [(base - 0.005) * (1 - min(k, T) / T) ** 2 + 0.005 for k in range(total)]
        assert_close(ours_curve(s, total, base), expected)
    assert s(total - 1, 0.1) == pytest.approx(0.005, rel=1e-12)


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_sgdr_peak_decay(schedule, interval):
    spe, total = 7, 84
    s = schedule("scheduler=cosine_restarts", "scheduler.T_0=2ep", "scheduler.T_mult=2", "scheduler.eta_min=0.001",
                 "scheduler.peak_decay=0.5", f"scheduler.interval={interval}", spe=spe, total=total)
    T0 = ticks(2, spe, interval)
    for base in BASES:
        expected = []
        for k in range(total):
            t = k if interval == "step" else k // spe
            i, T_i = 0, T0
            while t >= T_i:
                t, T_i, i = t - T_i, T_i * 2, i + 1
            expected.append(0.001 + (base * 0.5 ** i - 0.001) * (1 + math.cos(math.pi * t / T_i)) / 2)
        assert_close(ours_curve(s, total, base), expected)
    restarts = [0, 2 * spe, 6 * spe]  # cycles of 2, 4, 8 epochs
    assert [s(k, 0.1) for k in restarts] == pytest.approx([0.1, 0.05, 0.025], rel=1e-12)


@pytest.mark.parametrize("scale_key,scale", [(None, None), ("scheduler.d_model=512", 512 ** -0.5),
                                             ("scheduler.scale=2.0", 2.0)])
def test_inverse_sqrt_is_the_noam_formula(schedule, scale_key, scale):
    spe, total, w = 45, 900, 100
    s = schedule("scheduler=inverse_sqrt", "warmup=linear", f"warmup.length={w}steps",
                 *([scale_key] if scale_key else []), spe=spe, total=total)
    scale = math.sqrt(w) if scale is None else scale
    for base in BASES:
        expected = [base * scale * min((k + 1) ** -0.5, (k + 1) * w ** -1.5) for k in range(total)]
        assert_close(ours_curve(s, total, base), expected)
    if scale_key is None:  # the peak, at the last warmup step, is the optimizer's lr
        assert s(w - 1, 0.1) == pytest.approx(0.1, rel=1e-15)
        assert max(ours_curve(s, total, 0.1)) == s(w - 1, 0.1)


@pytest.mark.parametrize("decay_type,f", [("linear", lambda p: 1 - p),
                                          ("cosine", lambda p: (1 + math.cos(math.pi * p)) / 2),
                                          ("1-sqrt", lambda p: 1 - math.sqrt(p))])
@pytest.mark.parametrize("warmup", [0, 90])
def test_wsd(schedule, decay_type, f, warmup):
    spe, total = 45, 900
    s = schedule("scheduler=wsd", f"scheduler.decay_type={decay_type}", "scheduler.decay_fraction=0.2",
                 "scheduler.min_lr=0.001", *(["warmup=linear", f"warmup.length={warmup}steps"] if warmup else []),
                 spe=spe, total=total)
    D = 180  # 20% of the whole run
    stable_end = total - D
    for base in BASES:
        expected = [base * (0.1 + 0.9 * k / warmup) if k < warmup
                    else base if k < stable_end
                    else 0.001 + (base - 0.001) * f((k - stable_end) / D) for k in range(total)]
        assert_close(ours_curve(s, total, base), expected, decay_type)


@pytest.mark.parametrize("staircase", [True, False])
def test_exponential_staircase_and_smooth(schedule, staircase):
    spe, total = 45, 900
    s = schedule("scheduler=exponential", "scheduler.gamma=0.7", f"scheduler.staircase={staircase}",
                 spe=spe, total=total)
    for base in BASES:
        expected = [base * 0.7 ** (k // spe if staircase else k / spe) for k in range(total)]
        assert_close(ours_curve(s, total, base), expected)
    assert s(spe, 0.1) == pytest.approx(0.07, rel=1e-12)  # gamma per epoch either way


@pytest.mark.parametrize("interval", ["step", "epoch"])
@pytest.mark.parametrize("staircase", [False, True])
@pytest.mark.parametrize("period", ["10steps", "2.5ep", "1ep"])
def test_exponential_period_is_keras_exponential_decay(schedule, period, staircase, interval):
    """gamma per period == Keras' ExponentialDecay(initial_learning_rate, decay_steps, decay_rate, staircase):
    lr = initial_learning_rate * decay_rate ** (step / decay_steps), the exponent floored when staircase."""
    spe, total = 7, 84

    def keras(step: int, initial_learning_rate: float, decay_steps: float, decay_rate: float = 0.96) -> float:
        p = step / decay_steps
        return initial_learning_rate * decay_rate ** (math.floor(p) if staircase else p)

    s = schedule("scheduler=exponential", "scheduler.gamma=0.96", f"scheduler.period={period}",
                 f"scheduler.staircase={staircase}", f"scheduler.interval={interval}", spe=spe, total=total)
    decay_steps = {"10steps": 10, "2.5ep": round(2.5 * spe), "1ep": spe}[period]
    for base in BASES:
        if interval == "step":
            expected = [keras(k, base, decay_steps) for k in range(total)]
        else:  # the clock is the epoch, and the period whole epochs
            expected = [keras(k // spe, base, max(1, round(decay_steps / spe))) for k in range(total)]
        assert_close(ours_curve(s, total, base), expected, f"{period} {staircase} {interval}")


def test_exponential_warmup_is_geometric(schedule):
    spe, total, w = 45, 900, 90
    s = schedule("scheduler=cosine", "warmup=exponential", f"warmup.length={w}steps", "warmup.start_factor=0.01",
                 spe=spe, total=total)
    expected = [0.1 * 0.01 ** (1 - k / w) for k in range(w)]
    assert_close(ours_curve(s, w, 0.1), expected)
    ratios = {round(s(k + 1, 0.1) / s(k, 0.1), 12) for k in range(w - 1)}
    assert len(ratios) == 1  # the same factor every step
    assert s(w, 0.1) == 0.1  # the schedule's first value, exactly


@pytest.mark.parametrize("start_factor", [0.0, 0.25])
def test_linear_warmup_offset_counts_the_step_being_taken(schedule, start_factor):
    """offset 1: factor = s + (1 - s)(t + 1)/(w + 1); with s = 0, nanoGPT's lr (it + 1)/(warmup + 1): no step at 0."""
    w = 10
    s = schedule("scheduler=constant", "warmup=linear", f"warmup.length={w}steps",
                 f"warmup.start_factor={start_factor}", "warmup.offset=1", spe=45, total=90)
    expected = [0.1 * (start_factor + (1 - start_factor) * (k + 1) / (w + 1)) for k in range(w)]
    assert_close(ours_curve(s, w, 0.1), expected)
    assert s(0, 0.1) > 0 and s(w, 0.1) == 0.1


# ------------------------------------------------------------------------ warmup: ends exactly, never at 0


@pytest.mark.parametrize("name", [o for o in group_options("scheduler") if o not in ("cyclic", "onecycle")])
@pytest.mark.parametrize("kind", [k for k in group_options("warmup") if k != "none"])
def test_warmup_reaches_the_schedule_exactly(schedule, compose, name, kind):
    """lr(0) = start_factor * lr > 0, the ramp never overshoots, and step `length` runs at the schedule's value."""
    if name == "inverse_sqrt" and kind != "linear":
        return  # a config error, tested below
    spe, total, w = 45, 900, 60
    s = schedule(f"scheduler={name}", *(CUSTOM if name == "custom" else []), f"warmup={kind}",
                 f"warmup.length={w}steps", spe=spe, total=total)
    warmup = compose(f"warmup={kind}").warmup
    offset = warmup.get("offset", 0)  # linear's: the ramp counts the step being taken
    start_factor = warmup.start_factor + (1 - warmup.start_factor) * offset / (w + offset)
    curve = ours_curve(s, total, 0.1)
    assert all(v > 0 for v in curve)
    if name == "inverse_sqrt":  # Noam: linear from 1/w of the peak to the peak at the last warmup step
        assert curve[w - 1] == pytest.approx(0.1, rel=1e-15) and curve[0] == pytest.approx(0.1 / w)
        return
    bare = s.schedule  # the schedule itself, whose clock starts after warmup
    assert curve[0] == pytest.approx(start_factor * bare(0, 0.1), rel=1e-15)
    assert curve[w] == bare(0, 0.1)
    assert curve[w:] == [bare(k, 0.1) for k in range(total - w)]
    assert all(curve[k] <= curve[w] for k in range(w))


def test_start_factor_zero_is_the_only_way_to_lr_zero(schedule):
    s = schedule("scheduler=cosine", "warmup=linear", "warmup.start_factor=0.0", spe=45, total=900)
    assert s(0, 0.1) == 0.0 and s(1, 0.1) > 0


# ------------------------------------------------------------------------------------------------ plateau


def _metric_sequence(n: int) -> list[float]:
    """A loss that improves, stalls, improves a little, stalls: exercises patience, threshold and cooldown."""
    values, v = [], 1.0
    for e in range(n):
        v = v * 0.8 if e < 4 or 9 <= e < 11 else v * (1 - 2e-5 * (e % 3))
        values.append(v)
    return values


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("threshold_mode,threshold", [("rel", 1e-4), ("abs", 1e-3)])
@pytest.mark.parametrize("patience,cooldown,min_lr", [(0, 0, 0.0), (2, 1, 0.0), (1, 2, 0.004)])
def test_plateau_matches_torch(schedule, mode, threshold_mode, threshold, patience, cooldown, min_lr):
    spe, epochs = 7, 30
    s = schedule("scheduler=plateau", f"scheduler.mode={mode}", f"scheduler.patience={patience}",
                 f"scheduler.cooldown={cooldown}", f"scheduler.min_lr={min_lr}", "scheduler.factor=0.5",
                 f"scheduler.threshold_mode={threshold_mode}", f"scheduler.threshold={threshold}",
                 spe=spe, total=spe * epochs)
    metrics = [m if mode == "min" else 2 - m for m in _metric_sequence(epochs)]
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in BASES]
    opt = torch.optim.SGD([{"params": [p], "lr": b} for p, b in zip(params, BASES)], lr=BASES[0])
    ref = tls.ReduceLROnPlateau(opt, mode=mode, factor=0.5, patience=patience, threshold=threshold,
                                threshold_mode=threshold_mode, cooldown=cooldown, min_lr=min_lr)
    for epoch, m in enumerate(metrics):
        for k in range(epoch * spe, (epoch + 1) * spe):
            assert [s(k, b) for b in BASES] == [g["lr"] for g in opt.param_groups], f"epoch {epoch} step {k}"
        s.observe(epoch, {"val_loss": m, "step": (epoch + 1) * spe})
        ref.step(m)
    assert s(spe * epochs, BASES[0]) < BASES[0]  # it did reduce


def test_plateau_after_warmup_counts_from_the_end_of_warmup(schedule):
    """Epochs that end inside warmup are not observed; the ramp is the warmup's; reductions follow."""
    spe = 10
    s = schedule("scheduler=plateau", "scheduler.patience=1", "scheduler.factor=0.5", "warmup=linear",
                 "warmup.length=3ep", "warmup.start_factor=0.1", spe=spe, total=spe * 10)
    assert [s(k, 0.1) for k in (0, 15, 30)] == pytest.approx([0.01, 0.01 + 0.09 * 15 / 30, 0.1], rel=1e-15)
    for epoch in range(3):  # stalled during warmup: ignored
        s.observe(epoch, {"val_loss": 1.0, "step": (epoch + 1) * spe})
    assert s(30, 0.1) == 0.1 and s.state_dict()["num_bad_epochs"] == 0
    s.observe(3, {"val_loss": 1.0, "step": 40})  # the first epoch after warmup sets the best
    s.observe(4, {"val_loss": 1.0, "step": 50})  # bad 1 (= patience)
    assert s(50, 0.1) == 0.1
    s.observe(5, {"val_loss": 1.0, "step": 60})  # bad 2 > patience: halve from the next step on
    assert s(59, 0.1) == s(60, 0.1) == 0.05 and s(60, 0.02) == 0.01


def test_plateau_state_round_trips(schedule):
    make = lambda: schedule("scheduler=plateau", "scheduler.patience=1", "scheduler.cooldown=2",  # noqa: E731
                            spe=7, total=210)
    a = make()
    for epoch, m in enumerate(_metric_sequence(12)):
        a.observe(epoch, {"val_loss": m, "step": (epoch + 1) * 7})
    state = a.state_dict()
    assert all(isinstance(v, (int, float)) for v in state.values())
    saved = torch.load(_save(state), weights_only=True)
    b = make()
    b.load_state_dict(saved)
    assert b.state_dict() == state and b(84, 0.1) == a(84, 0.1) < 0.1
    for epoch, m in enumerate(_metric_sequence(30)[12:], start=12):  # both go on identically
        a.observe(epoch, {"val_loss": m, "step": (epoch + 1) * 7})
        b.observe(epoch, {"val_loss": m, "step": (epoch + 1) * 7})
        assert a.state_dict() == b.state_dict() and a((epoch + 1) * 7, 0.1) == b((epoch + 1) * 7, 0.1)


def _save(obj) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


@pytest.mark.parametrize("name", group_options("scheduler"))
def test_every_schedule_has_a_serialisable_state(schedule, name):
    extra = {"inverse_sqrt": ["warmup=linear"], "cyclic": ["scheduler.max_lr=0.5"], "custom": CUSTOM}.get(name, [])
    s = schedule(f"scheduler={name}", *extra, spe=45, total=900)
    state = s.state_dict()
    s.load_state_dict(torch.load(_save(state), weights_only=True))
    assert s.state_dict() == state


# ---------------------------------------------------------------------------------- combinations and errors


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["scheduler=onecycle", "warmup=linear"],
         "warmup='linear': must be none with scheduler=onecycle, which ramps up by itself"),
        (["scheduler=cyclic", "scheduler.max_lr=0.5", "warmup=exponential"],
         "warmup='exponential': must be none with scheduler=cyclic, which ramps up by itself"),
        (["scheduler=inverse_sqrt"],
         "warmup='none': must be linear with a length > 0 for scheduler=inverse_sqrt (its own linear ramp)"),
        (["scheduler=inverse_sqrt", "warmup=constant"],
         "warmup='constant': must be linear with a length > 0 for scheduler=inverse_sqrt (its own linear ramp)"),
        (["warmup=linear", "warmup.length=20ep"], "warmup.length='20ep': must be shorter than the run (900 steps)"),
        (["warmup=linear", "warmup.length=100%"], "warmup.length='100%': must be shorter than the run (900 steps)"),
        (["scheduler=multistep", "scheduler.milestones=[5ep,3ep]"],
         "scheduler.milestones=['5ep', '3ep']: must be strictly increasing (in steps: [225, 135])"),
        (["scheduler=multistep", "scheduler.milestones=[90steps,2ep]"],
         "scheduler.milestones=['90steps', '2ep']: must be strictly increasing (in steps: [90, 90])"),
        (["scheduler=cyclic", "scheduler.max_lr=0.05"], "scheduler.max_lr=0.05: must be > base_lr (0.1)"),
    ],
)
def test_nonsense_combinations_are_config_errors(schedule, overrides, message):
    with pytest.raises(ConfigValueError) as e:
        schedule(*overrides, spe=45, total=900)
    assert str(e.value) == message


@pytest.mark.parametrize(
    "override,message",
    [
        ("scheduler=multistep scheduler.milestones=[5ep,soon]",
         "scheduler.milestones=['5ep', 'soon']: must be a list of durations "
         "(a duration such as 5 (epochs), 5ep, 500steps or 10%)"),
        ("scheduler=cosine_restarts scheduler.T_mult=0", "scheduler.T_mult=0: must be an integer >= 1"),
        ("scheduler=cyclic scheduler.mode=sine",
         "scheduler.mode='sine': must be one of triangular, triangular2, exp_range"),
        ("scheduler=onecycle scheduler.pct_start=1.0", "scheduler.pct_start=1.0: must be in (0, 1)"),
        ("scheduler=plateau scheduler.factor=1.5", "scheduler.factor=1.5: must be in (0, 1)"),
        ("scheduler=wsd scheduler.decay_type=step",
         "scheduler.decay_type='step': must be one of linear, cosine, 1-sqrt"),
        ("scheduler=inverse_sqrt scheduler.d_model=512 scheduler.scale=2",
         "scheduler.scale=2.0: must be null when d_model is set"),
        ("warmup=exponential warmup.start_factor=0", "warmup.start_factor=0.0: must be in (0, 1] (a geometric ramp)"),
        ("scheduler=step scheduler.interval=batch", "scheduler.interval='batch': must be one of step, epoch"),
        ("scheduler=cyclic scheduler.base_momentum=0.95",
         "scheduler.max_momentum=0.9: must be in [base_momentum (0.95), 1)"),
        ("scheduler=onecycle scheduler.base_momentum=1", "scheduler.base_momentum=1.0: must be in [0, 1)"),
    ],
)
def test_out_of_range_schedule_values(compose, override, message):
    assert config_error(compose, *override.split()) == message


CUSTOM_MODULE = """
from lrtrain.schedules import Schedule


class Halving(Schedule):
    def __init__(self, timeline, every, interval="step"):
        super().__init__(timeline, interval)
        self.every = self.ticks(every)

    def value(self, t, base_lr):
        return base_lr * 0.5 ** (t // self.every)


class NotASchedule:
    pass
"""


@pytest.fixture
def custom_module(tmp_path, monkeypatch):
    (tmp_path / "tiny_schedules.py").write_text(CUSTOM_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))


def test_custom_schedule_composes_with_warmup_and_intervals(custom_module, schedule):
    s = schedule("scheduler=custom", "scheduler._target_=tiny_schedules.Halving", "+scheduler.every=2ep",
                 "warmup=linear", "warmup.length=1ep", spe=7, total=84)
    assert [s(k, 0.1) for k in (0, 7, 20, 21, 83)] == pytest.approx([0.01, 0.1, 0.1, 0.05, 0.1 * 0.5 ** 5])
    e = schedule("scheduler=custom", "scheduler._target_=tiny_schedules.Halving", "+scheduler.every=2ep",
                 "scheduler.interval=epoch", spe=7, total=84)
    assert [e(k, 0.1) for k in (13, 14, 83)] == pytest.approx([0.1, 0.05, 0.1 * 0.5 ** 5])


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["scheduler._target_=nowhere.Sched"], "scheduler._target_='nowhere.Sched': must be a Schedule class "
         "importable as module.Class (is its folder on PYTHONPATH?): ModuleNotFoundError: No module named 'nowhere'"),
        (["scheduler._target_=tiny_schedules.Nope"], "scheduler._target_='tiny_schedules.Nope': must be a Schedule "
         "class importable as module.Class (is its folder on PYTHONPATH?): AttributeError: module 'tiny_schedules' "
         "has no attribute 'Nope'"),
        (["scheduler._target_=tiny_schedules.NotASchedule"],
         "scheduler._target_='tiny_schedules.NotASchedule': must be a subclass of lrtrain.schedules.Schedule"),
        (["scheduler._target_=tiny_schedules.Halving", "+scheduler.every=2ep", "+scheduler.gamma=0.5"],
         "scheduler='Halving': must be given the keys Halving.__init__ takes (got an unexpected keyword argument "
         "'gamma')"),
        (["scheduler._target_=tiny_schedules.Halving"],
         "scheduler='Halving': must be given the keys Halving.__init__ takes (missing a required argument: 'every')"),
    ],
)
def test_custom_schedule_errors_name_the_key(custom_module, schedule, overrides, message):
    with pytest.raises(ConfigValueError) as e:
        schedule("scheduler=custom", *overrides, spe=7, total=84)
    assert str(e.value) == message


LR = 1e-3  # the default optimizer's lr
ENDPOINTS = {  # lr(0) and lr(last step) of each option's defaults over the digits default run (20 x 45 steps)
    "constant": (LR, LR),
    "step": (LR, LR * 0.1),
    "multistep": (LR, LR * 0.01),
    "exponential": (LR, LR * 0.9 ** (899 / 45)),
    "polynomial": (LR, LR / 900),
    "linear": (LR, LR / 900),
    "cosine": (LR, LR * (1 + math.cos(math.pi * 899 / 900)) / 2),
    "nanogpt": (LR, 1e-4 + (LR - 1e-4) * (1 + math.cos(math.pi * 899 / 900)) / 2),  # a cosine to 1e-4
    "cosine_restarts": (LR, LR * (1 + math.cos(math.pi * 224 / 225)) / 2),  # 4 cycles of 5 epochs
    "cyclic": (LR, LR + (0.01 - LR) * (1 / 180) / 0.5),  # one step before the 5th cycle's start
    "onecycle": (LR / 25, LR / 25 / 1e4),
    "inverse_sqrt": (LR / 45, LR * math.sqrt(45 / 900)),  # with warmup=linear (1ep)
    "plateau": (LR, LR),
    "wsd": (LR, LR / 180),  # the last of 180 decay steps
    "custom": (LR, LR * (1 + math.cos(math.pi * 899 / 900)) / 2),  # with CUSTOM: lrtrain's cosine
}


def test_endpoints_cover_every_option():
    assert set(ENDPOINTS) == set(group_options("scheduler"))


@pytest.mark.parametrize("name", sorted(ENDPOINTS))
def test_first_and_last_lr_of_each_default(compose, name):
    extra = {"inverse_sqrt": ["warmup=linear"], "custom": CUSTOM}.get(name, [])
    s = build_schedule(compose(f"scheduler={name}", *extra), Timeline(45, 900))
    first, last = ENDPOINTS[name]
    assert s(0, LR) == pytest.approx(first, rel=1e-12)
    assert s(899, LR) == pytest.approx(last, rel=1e-12)


# ---------------------------------------------------------------------------- durations that must be positive


def _positive_duration_keys() -> list[tuple[str, str]]:
    """(option, key) for every schedule key that must last at least one step, read off the classes."""
    from omegaconf import OmegaConf

    from lrtrain.build_schedule import _schedule_class

    keys = []
    for option in group_options("scheduler"):
        node = OmegaConf.load(f"configs/scheduler/{option}.yaml")
        if node.get("_target_") not in (None, "???"):
            keys += [(option, key) for key in _schedule_class(node._target_).positive_durations]
    return keys + [(w, "length") for w in group_options("warmup") if w != "none"]


POSITIVE_KEYS = _positive_duration_keys()


def test_positive_duration_keys_are_the_expected_ones():
    """The list the zero-duration tests run over is not empty, and holds the keys known to hang or divide by 0."""
    assert {("cosine_restarts", "T_0"), ("step", "step_size"), ("cyclic", "step_size_up"), ("cosine", "T_max"),
            ("linear", "total"), ("polynomial", "total"), ("exponential", "period"),
            ("linear", "length")} <= set(POSITIVE_KEYS)


def _group(option: str, key: str) -> str:
    return "warmup" if key == "length" else "scheduler"


@pytest.mark.parametrize("value,steps", [("0", 0), ("0steps", 0), ("0.001ep", 0), ("0.01%", 0)])
@pytest.mark.parametrize("option,key", POSITIVE_KEYS)
def test_zero_durations_are_refused_at_build(compose, option, key, value, steps):
    from lrtrain.warmup import Warmup

    group = _group(option, key)
    cfg = compose(f"{group}={option}", f"{group}.{key}={value}")
    if group == "warmup" and value in ("0", "0steps"):  # an explicit zero is no warmup (Optuna searches 0%)
        assert not isinstance(build_schedule(cfg, Timeline(45, 900)), Warmup)
        return
    with pytest.raises(ConfigValueError) as e:
        build_schedule(cfg, Timeline(45, 900))
    assert str(e.value).startswith(f"{group}.{key}={cfg[group][key]!r}: must be a duration of at least one step")
    assert f"(it rounds to {steps} steps at 45 steps per epoch, 900 in the run)" in str(e.value)


@pytest.mark.parametrize("option,key", POSITIVE_KEYS)
def test_lrtrain_schedule_refuses_zero_durations_instead_of_hanging(tmp_path, option, key):
    import subprocess
    import sys
    from pathlib import Path

    group = _group(option, key)
    exe = Path(sys.executable).with_name("lrtrain-schedule")
    r = subprocess.run([str(exe), f"{group}={option}", f"{group}.{key}=0.001ep", "out=none"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == (f"lrtrain-schedule: error: {group}.{key}='0.001ep': must be a duration of at least "
                                "one step" + (", or 0 for no warmup" if group == "warmup" else "") +
                                " (it rounds to 0 steps at 45 steps per epoch, 900 in the run)")
