"""Fused sweeps: the jobs of a sweep that share a model and its data train together, as one vectorized model.

Each job keeps its own `Trainer` (lrtrain.loop), whose step generator `fit_fused` drives in lock-step with the
others': its position, data order, schedule, sinks, validation, early stopping, divergence guard, checkpoints,
stop request and summary are the ordinary ones, decided by the ordinary code. Only the step is shared
(`Replicas.step`): every parameter lives stacked as one leaf tensor [K, ...] over the K replicas, each replica's
batch is drawn with its own order generator (the permutation its solo run draws), the loss is the sum of the
replicas' mean losses (their gradients do not mix), and the update is torch's Adam/AdamW/SGD written over the
stacked tensors with each replica's hyper-parameters as broadcast tensors (torch.optim takes one scalar LR per
parameter group, so a per-replica LR is not something it can do for us; `tests/test_fused.py` checks this update
step by step against torch.optim). Before its model or optimizer is read (validation, a checkpoint, the end) a
replica's slice is copied into its own module and torch optimizer (`sync`), so checkpoints are ordinary ones and
resume alone; after a restore (resume, rollback) it is copied back. A replica that ends stops updating: its slice
is zeroed and its LR is 0, and nothing it holds reaches the others' numbers.
"""

from __future__ import annotations

import copy
import json
import warnings
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import nn

from lrtrain.data import TensorData
from lrtrain.loggers import CSVLogger, TensorBoardLogger
from lrtrain.loop import Trainer, Want, evaluate_outputs
from lrtrain.parametrization import Scale
from lrtrain.plots import CurvesPool
from lrtrain.progress import ProgressDisplay
from lrtrain.regularization import is_weight
from lrtrain.run import Run
from lrtrain.signals import STOP
from lrtrain.step import StepResult

# The optimizer classes the fused update implements (exact classes: a subclass may change the update).
FUSED_OPTIMIZERS = {torch.optim.Adam: "adam", torch.optim.AdamW: "adam", torch.optim.SGD: "sgd"}
# Sinks that do not read a run's files when it ends: beside them, its curves.png can be drawn after it ended.
_CURVES_UNREAD = (CSVLogger, TensorBoardLogger, ProgressDisplay)
# Elementwise modules the batched-matmul forward applies as they are (Scale: μP's readout multiplier).
_ELEMENTWISE = (nn.ReLU, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Tanh, nn.Identity, Scale)


def unfusable(run: Run) -> Optional[str]:
    """Why this run cannot train as a replica of a fused group (None: it can)."""
    opt, model = run.optimizer, run.model
    if run.dist is not None:
        return "ddp"
    if run.averaging is not None:
        return ("averaging: the averaged weights follow the job's own model after every step, while a replica's "
                "weights live in the group's stacked tensors")
    if run.settings.compile:
        return "trainer.compile: the fused step has its own forward pass, which torch.compile does not compile"
    if run.data.kind == "text":  # the fused group draws rows of in-memory tensors by permutation
        return (f"a language model (dataset={run.data.name}): its batches are windows at random offsets of one token "
                "stream, not rows of tensors the fused group draws by permutation")
    if not isinstance(run.data, TensorData):
        return f"{run.data.name} is read from folders, not held in memory"
    kind = FUSED_OPTIMIZERS.get(type(opt))
    if kind is None:
        return (f"optimizer {type(opt).__name__} has no fused update (torch's Adam, AdamW and SGD have: "
                "optimizer=adam, adamw, amsgrad, sgd, momentum)")
    for group in opt.param_groups:
        if group.get("maximize") or group.get("differentiable") or group.get("fused"):
            return "an optimizer option the fused update does not implement (maximize, differentiable, fused)"
    if run.hooks.augment is not None:
        return "augmentation draws its random numbers from the job's own global RNG"
    if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        return "dropout draws its random numbers from the job's own global RNG"
    if any(not isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules() if list(m.buffers(False))):
        return "the model has buffers other than batch norm statistics"
    if run.schedule.momentum(0) is not None:
        return "the schedule cycles momentum"
    return None


def group_key(run: Run) -> str:
    """Runs with the same key fuse: the same model, data set and split, batch size, device and precision."""
    config = run.config
    shapes = [(name, list(p.shape)) for name, p in run.model.named_parameters()]
    return json.dumps([config.get("model"), config.get("dataset"), str(run.device), run.settings.precision,
                       shapes, type(run.task).__name__], sort_keys=True, default=str)


def _segment_key(run: Run) -> tuple:
    """Replicas updated by the same formula are kept next to each other, so each segment is a view [a:b]."""
    opt = run.optimizer
    group = opt.param_groups[0]
    if FUSED_OPTIMIZERS[type(opt)] == "adam":
        return ("adam", bool(group.get("amsgrad")))
    return ("sgd", group["momentum"] != 0, bool(group.get("nesterov")))


def order_replicas(runs: Sequence[Run]) -> list[int]:
    """Indices of `runs` with replicas of one update formula together (stable otherwise)."""
    return sorted(range(len(runs)), key=lambda i: _segment_key(runs[i]))


def _column(values: Sequence[float], device: torch.device, dtype: torch.dtype = torch.float32) -> float | torch.Tensor:
    """One value per replica: a Python float when they are all equal (torch.optim's own arithmetic), otherwise a
    column [n, 1] that broadcasts over the replicas' rows."""
    first = values[0]
    if all(v == first for v in values):
        return float(first)
    return torch.tensor(values, dtype=dtype, device=device).view(len(values), 1)


class Segment:
    """Replicas [a, b) of a group, all updated by one formula (Adam/AdamW with or without AMSGrad, or SGD with or
    without momentum, Nesterov or not), each with its own hyper-parameters: columns over their rows of the flat
    [K, D] tensors, and each parameter's weight decay spread over its elements."""

    def __init__(self, a: int, b: int, runs: Sequence[Run], sizes: list[int], device: torch.device):
        self.a, self.b = a, b
        self.kind = _segment_key(runs[0])
        groups = [[_group_of(run.optimizer, p) for p in run.model.parameters()] for run in runs]
        first = [run.optimizer.param_groups[0] for run in runs]
        if self.kind[0] == "adam":
            self.beta1 = [g["betas"][0] for g in first]
            self.beta2 = [g["betas"][1] for g in first]
            self.one_minus_b1 = _column([1 - b for b in self.beta1], device)
            self.b2 = _column(self.beta2, device)
            self.one_minus_b2 = _column([1 - b for b in self.beta2], device)
            self.eps = _column([g["eps"] for g in first], device)
            self.amsgrad = self.kind[1]
            decoupled = [type(run.optimizer) is torch.optim.AdamW or bool(g.get("decoupled_weight_decay"))
                         for run, g in zip(runs, first)]
            coupled = [[0.0 if decoupled[r] else g["weight_decay"] for g in gs] for r, gs in enumerate(groups)]
            decay = [[g["weight_decay"] if decoupled[r] else 0.0 for g in gs] for r, gs in enumerate(groups)]
        else:
            self.momentum = _column([g["momentum"] for g in first], device)
            self.dampening = _column([1 - g["dampening"] for g in first], device)
            self.nesterov = self.kind[2]
            # torch's SGD: coupled decay is its own; decoupled decay is lrtrain's pre-hook (lrtrain.optimizers)
            coupled = [[g["weight_decay"] for g in gs] for gs in groups]
            decay = [[g.get("decoupled_decay", 0.0) for g in gs] for gs in groups]
        self.coupled = _spread(coupled, sizes, device, torch.float32)
        # parameter groups with LRs of their own (μP's): each parameter's group, per replica, to spread each
        # step's group LRs over the elements; None when every replica has one LR for all its parameters
        own_lrs = any(len({g["lr"] for g in run.optimizer.param_groups}) > 1 for run in runs)
        self.group_index = [[next(i for i, h in enumerate(run.optimizer.param_groups) if h is g) for g in gs]
                            for run, gs in zip(runs, groups)] if own_lrs else None
        self.sizes = torch.tensor(sizes, device=device)
        # p <- p * (1 - lr * wd) with 1 - lr * wd in double, as torch.optim computes it from Python floats
        self.decay = _spread(decay, sizes, device, torch.float64)


def _spread(per_param: list[list[float]], sizes: list[int], device: torch.device,
            dtype: torch.dtype) -> Optional[torch.Tensor]:
    """[replica][param] values as an [n, D] tensor over the parameters' elements; None when all are 0."""
    if not any(v for row in per_param for v in row):
        return None
    return torch.stack([torch.cat([torch.full((size,), v, dtype=dtype) for v, size in zip(row, sizes)])
                        for row in per_param]).to(device)


def _elements(seg: Segment, per_param: list[list[float]], dtype: torch.dtype) -> torch.Tensor:
    """[replica][parameter] values as an [n, D] tensor over the parameters' elements, made in one kernel."""
    values = torch.tensor(per_param, dtype=dtype, device=seg.sizes.device)
    return values.repeat_interleave(seg.sizes, dim=1)


def _group_of(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> dict[str, Any]:
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            return group
    raise ValueError("a model parameter that no optimizer parameter group holds")


class Replicas:
    """The stacked state of K replicas of one model: parameters, optimizer state, the fused step.

    Everything lives in flat [K, D] tensors (D: the model's parameter count), one row per replica: the
    parameters are leaf views of `flat` shaped [K, ...] (what the forward uses), their gradients views of `grad`
    (autograd accumulates into them in place), so the update is a dozen whole-tensor operations per step, not a
    dozen per parameter tensor, and nothing is copied or stacked per step."""

    def __init__(self, runs: Sequence[Run]):
        self.runs = list(runs)
        self.k = len(runs)
        first = runs[0]
        self.model = first.model
        self.names = [name for name, _ in first.model.named_parameters()]
        shapes = [p.shape for p in first.model.parameters()]
        self.sizes = [p.numel() for p in first.model.parameters()]
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self.device = first.device
        dtype = next(first.model.parameters()).dtype
        self.flat = torch.zeros(self.k, sum(self.sizes), dtype=dtype, device=self.device)
        self.grad = torch.zeros_like(self.flat)
        # the parameters are strided views of `flat`, and so are their gradients (of `grad`), on purpose
        warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")
        self.params = [self._view(self.flat, i, shapes[i]).requires_grad_() for i in range(len(shapes))]
        self.grads = [self._view(self.grad, i, shapes[i]) for i in range(len(shapes))]
        for p, g in zip(self.params, self.grads):
            p.grad = g
        self.data: TensorData = first.data
        self.task = first.task
        self.amp = first.step_fn().amp
        # batch norm statistics: one stacked tensor [K, ...] per buffer, updated in place by the batched forward
        self.buffer_names = [name for name, _ in first.model.named_buffers()]
        self.buffers = [torch.stack([dict(run.model.named_buffers())[name].detach() for run in runs])
                        for name in self.buffer_names]
        matmul = None if self.buffers else _matmul_forward(first.model)
        self.forward = matmul or self._vmap_forward(train=True)
        self.eval_forward = matmul or self._vmap_forward(train=False)
        # segments: contiguous replicas sharing an update formula (the caller ordered them)
        self.segments: list[Segment] = []
        start = 0
        for i in range(1, self.k + 1):
            if i == self.k or _segment_key(runs[i]) != _segment_key(runs[start]):
                self.segments.append(Segment(start, i, runs[start:i], self.sizes, self.device))
                start = i
        kinds = {seg.kind for seg in self.segments}
        names = (["exp_avg", "exp_avg_sq"] * any(k[0] == "adam" for k in kinds)
                 + ["max_exp_avg_sq"] * any(k[0] == "adam" and k[1] for k in kinds)
                 + ["momentum_buffer"] * any(k[0] == "sgd" and k[1] for k in kinds))
        self.state = {name: torch.zeros_like(self.flat) for name in names}
        self.steps = [0] * self.k  # each replica's optimizer steps (Adam's bias corrections)
        self.has_buffer = [False] * self.k  # SGD: the momentum buffer exists (torch starts it from the gradient)
        self.last_lrs: list[Optional[list[float]]] = [None] * self.k
        self.dirty = [False] * self.k
        self.done = [False] * self.k
        # regularization in the step, per replica
        eps = [getattr(run.task, "label_smoothing", 0.0) for run in runs]
        self.smoothing = 0.0 if not any(eps) else torch.tensor(eps, device=self.device)
        l1 = [run.hooks.penalty.coefficient if run.hooks.penalty is not None else 0.0 for run in runs]
        self.l1 = None if not any(l1) else torch.tensor(l1, device=self.device)
        clips = [run.hooks.clip for run in runs]
        self.clipped = [c is not None for c in clips]
        inf = float("inf")
        self.max_norm = None if not any(c is not None and c.max_norm is not None for c in clips) else torch.tensor(
            [c.max_norm if c is not None and c.max_norm is not None else inf for c in clips], device=self.device)
        self.clip_value = None if not any(c is not None and c.value is not None for c in clips) else torch.tensor(
            [c.value if c is not None and c.value is not None else inf for c in clips], device=self.device)
        self.perms = torch.zeros(self.k, len(first.data.train), dtype=torch.long, device=self.device)
        self._history: dict[tuple[int, int, int], torch.Tensor] = {}
        self._validation: dict[int, dict[str, float]] = {}
        for k in range(self.k):
            self.push(k)

    def _view(self, flat: torch.Tensor, i: int, shape: torch.Size) -> torch.Tensor:
        o = self.offsets[i]
        return flat[:, o:o + self.sizes[i]].view(self.k, *shape)

    def _vmap_forward(self, train: bool) -> Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor]:
        """Any model: torch.func.functional_call over each replica's parameters (and buffers), vmapped."""
        from torch.func import functional_call, vmap

        # its own copy, in one mode for good (a replica's own module is switched to eval mode to validate)
        model = copy.deepcopy(self.model).train(train)
        names, buffer_names, buffers = self.names, self.buffer_names, self.buffers

        def one(params: tuple[torch.Tensor, ...], bufs: tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
            return functional_call(model, {**dict(zip(names, params)), **dict(zip(buffer_names, bufs))}, (x,))

        batched = vmap(one)
        return lambda params, x: batched(tuple(params), tuple(buffers), x)

    def validate(self, k: int, batches: Optional[int] = None) -> dict[str, float]:
        """Replica k's validation metrics, as lrtrain.loop.evaluate gives them: every replica is validated at
        once, in one batched forward, and kept until the next step (replicas reach validation points together)."""
        if k not in self._validation:
            forward = lambda x: self.eval_forward(self.params, x.expand(self.k, *x.shape))  # noqa: E731
            scores = evaluate_outputs(forward, self.data.val, self.data, self.amp, self.task, batches)
            self._validation = dict(enumerate(scores))
        return self._validation[k]

    # ---------------------------------------------------------------------------- replica <-> stacked

    @torch.no_grad()
    def push(self, k: int) -> None:
        """Replica k's module and torch optimizer (just built or restored) into row k."""
        run = self.runs[k]
        opt = run.optimizer
        steps = 0
        self.has_buffer[k] = False
        for i, p in enumerate(run.model.parameters()):
            self.params[i][k].copy_(p)
            state = opt.state.get(p, {})
            o, n = self.offsets[i], self.sizes[i]
            for name, stacked in self.state.items():
                value = state.get(name)
                stacked[k, o:o + n].copy_(value.reshape(-1)) if value is not None else stacked[k, o:o + n].zero_()
            if "step" in state:
                steps = int(float(state["step"]))
            if state.get("momentum_buffer") is not None:
                self.has_buffer[k] = True
        own = dict(run.model.named_buffers())
        for name, stacked in zip(self.buffer_names, self.buffers):
            stacked[k].copy_(own[name])
        self.steps[k] = steps
        self.last_lrs[k] = None
        self.dirty[k] = False

    @torch.no_grad()
    def pull(self, k: int) -> None:
        """Row k into replica k's module and torch optimizer, as its solo run would hold them now."""
        if not self.dirty[k]:
            return
        run = self.runs[k]
        opt = run.optimizer
        adam = FUSED_OPTIMIZERS[type(opt)] == "adam"
        amsgrad = bool(opt.param_groups[0].get("amsgrad"))
        for i, p in enumerate(run.model.parameters()):
            p.copy_(self.params[i][k])
            o, n = self.offsets[i], self.sizes[i]
            row = lambda name: self.state[name][k, o:o + n].view_as(p).clone()  # noqa: E731
            if adam and self.steps[k]:
                state = {"step": torch.tensor(float(self.steps[k]), dtype=torch.get_default_dtype()),
                         "exp_avg": row("exp_avg"), "exp_avg_sq": row("exp_avg_sq")}
                if amsgrad:
                    state["max_exp_avg_sq"] = row("max_exp_avg_sq")
                opt.state[p] = state
            elif not adam and self.has_buffer[k]:
                opt.state[p] = {"momentum_buffer": row("momentum_buffer")}
        own = dict(run.model.named_buffers())
        for name, stacked in zip(self.buffer_names, self.buffers):
            own[name].copy_(stacked[k])
        if self.last_lrs[k] is not None:
            for group, lr in zip(opt.param_groups, self.last_lrs[k]):
                group["lr"] = lr
        self.dirty[k] = False

    @torch.no_grad()
    def retire(self, k: int) -> None:
        """Replica k ended: it stops updating (zeros stay zeros with an LR of 0, NaN or not before)."""
        self.done[k] = True
        self.flat[k].zero_()
        for stacked in self.state.values():
            stacked[k].zero_()
        for stacked in self.buffers:  # a NaN in its batch norm statistics stays its own, but zeros are calmer
            stacked[k].zero_() if not stacked.is_floating_point() else stacked[k].fill_(1.0)

    def history(self, steps: list[torch.Tensor]) -> torch.Tensor:
        """The group's per-step [K] tensors `steps` stacked to [len, K], once for all the replicas that flush them."""
        key = (id(steps[0]), id(steps[-1]), len(steps))
        if key not in self._history:
            self._history[key] = torch.stack(steps)
        return self._history[key]

    # ---------------------------------------------------------------------------------------- the step

    def new_epoch(self, k: int, generator: torch.Generator) -> None:
        """Replica k's permutation for this epoch, drawn as TensorData.train_batches draws it."""
        n = self.perms.shape[1]
        self.perms[k] = torch.randperm(n, generator=generator, device=generator.device)

    def batch(self, batches: Sequence[int]) -> list[tuple[Optional[torch.Tensor], torch.Tensor, torch.Tensor]]:
        """Each replica's next batch (`batches[k]`: its index in the epoch), as (replicas, stored inputs [K, B, ...],
        targets [K, B]) with `replicas` None: every replica's. Replicas at different places in their epochs (a
        resume, a rollback) may meet where one takes its epoch's short last batch and another a full one: then
        there is one entry per batch size, with the indices of the replicas it is for (the rows of the others
        are stand-ins, left out of the loss), so that each batch is reduced over its own samples in the same
        forward an uninterrupted group runs (padding the short batch to the full size would take its mean,
        gradient and batch norm statistics over the padding, in another order: not the same bits)."""
        bs = self.data.batch_size
        first = batches[0]
        if all(b == first for b in batches):
            return [(None, *self._gather(self.perms[:, first * bs:(first + 1) * bs]))]
        parts = [self.perms[k, b * bs:(b + 1) * bs] for k, b in enumerate(batches)]
        by_size: dict[int, list[int]] = {}
        for k, part in enumerate(parts):
            by_size.setdefault(len(part), []).append(k)
        if len(by_size) == 1:
            return [(None, *self._gather(torch.stack(parts)))]
        return [(torch.tensor(rows, device=self.device),
                 *self._gather(torch.stack([part[:size] if len(part) >= size else self.perms[k, :size]
                                            for k, part in enumerate(parts)])))
                for size, rows in by_size.items()]

    def _gather(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        train, flat = self.data.train, idx.reshape(-1)  # index_select: 3x faster than x[idx] (uint8 images)
        x, y = train.x.index_select(0, flat), train.y.index_select(0, flat)
        return x.view(*idx.shape, *x.shape[1:]), y.view(*idx.shape, *y.shape[1:])

    def step(self, batches: Sequence[int], lrs: Sequence[float]) -> tuple[torch.Tensor, Optional[torch.Tensor],
                                                                          Optional[torch.Tensor]]:
        """One step of every replica: its batch `batches[k]`, its LR `lrs[k]` (0 for replicas that ended).
        Returns the replicas' data losses [K], correct predictions [K] and gradient norms before clipping [K]."""
        self._history.clear()  # a new step: the tensors the last stacks were keyed by may be gone
        self._validation.clear()
        self.grad.zero_()
        parts = self.batch(batches)
        if len(parts) == 1:
            losses, correct = self._forward(*parts[0][1:])
            self._backward(losses.sum(), penalty=True)
        else:  # one forward and backward per batch size, each replica's loss and statistics from its own batch
            losses = torch.empty(self.k, device=self.device)
            correct = torch.empty(self.k, device=self.device, dtype=torch.long) if self.task.classify else None
            before = [b.clone() for b in self.buffers]
            after = [b.clone() for b in self.buffers]
            for i, (rows, stored, y) in enumerate(parts):
                for b, b0 in zip(self.buffers, before):
                    b.copy_(b0)
                part_losses, part_correct = self._forward(stored, y)
                mine = part_losses.index_select(0, rows)  # the stand-ins' rows get a gradient of zero
                # each gradient is its replica's own plus zeros: the same sum as one backward
                self._backward(mine.sum(), penalty=i == len(parts) - 1)
                losses.index_copy_(0, rows, mine.detach().float())
                if correct is not None:
                    correct.index_copy_(0, rows, part_correct.index_select(0, rows))
                for b, a in zip(self.buffers, after):
                    a.index_copy_(0, rows, b.index_select(0, rows))
            for b, a in zip(self.buffers, after):
                b.copy_(a)
        for p, g in zip(self.params, self.grads):
            if p.grad is not g:  # autograd accumulates into the views; should it ever replace one, copy it back
                g.copy_(p.grad)
                p.grad = g
        norms = self._clip() if self.max_norm is not None or self.clip_value is not None else None
        self._update(lrs)
        for k in range(self.k):
            self.dirty[k] = not self.done[k]
        return losses.detach(), correct, norms

    def _backward(self, total: torch.Tensor, penalty: bool) -> None:
        if penalty and self.l1 is not None:  # lrtrain's L1Penalty, on the weights
            weights = [p for p in self.params if is_weight(p, leading=1)]
            total = total + sum((p.abs().flatten(1).sum(1) * self.l1).sum() for p in weights)
        total.backward()

    def _forward(self, stored: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Every replica's mean loss [K] and correct predictions [K] on its rows of `stored` and `y`."""
        with self.amp:
            out = self.forward(self.params, self.data.inputs(stored))
            losses = self.task.sample_losses(out, y, self.smoothing).mean(1)
        if not self.task.classify:
            return losses, None
        hits = self.task.hits(out, y)
        return losses, (hits.flatten(2).sum(2) if hits.dim() > 2 else hits).sum(1)

    @torch.no_grad()
    def _clip(self) -> torch.Tensor:
        """Per replica, as lrtrain's GradClip: the total L2 norm before clipping; clip by norm or by value."""
        # the norm of the parameters' norms, as torch.nn.utils.get_total_norm takes it
        norms = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1)
                                                      for g in self.grads]), dim=0)
        if self.max_norm is not None:
            coef = (self.max_norm / (norms + 1e-6)).clamp(max=1.0)
            coef = torch.where(torch.isinf(self.max_norm), torch.ones_like(coef), coef)
            self.grad.mul_(coef.view(self.k, 1))
        if self.clip_value is not None:
            v = self.clip_value.view(self.k, 1)
            torch.clamp(self.grad, min=-v, max=v, out=self.grad)
        return norms

    @torch.no_grad()
    def _update(self, lrs: Sequence[float]) -> None:
        for seg in self.segments:
            if all(self.done[seg.a:seg.b]):
                continue
            lr = list(lrs[seg.a:seg.b])
            per_param = self._param_lrs(seg)
            p, g = self.flat[seg.a:seg.b], self.grad[seg.a:seg.b]
            if seg.decay is not None:  # decoupled: p <- p * (1 - lr * wd), before the update
                lr64 = (torch.tensor(lr, dtype=torch.float64, device=self.device).view(-1, 1) if per_param is None
                        else _elements(seg, per_param, torch.float64))
                p.mul_((1 - lr64 * seg.decay).to(p.dtype))
            if seg.coupled is not None:  # coupled: g <- g + wd * p
                g = g + p * seg.coupled
            if seg.kind[0] == "adam":
                self._adam(seg, lr, p, g, per_param)
            else:
                self._sgd(seg, lr, p, g, per_param)

    def _param_lrs(self, seg: Segment) -> Optional[list[list[float]]]:
        """[replica][parameter] LRs of this step, from each replica's group LRs (`last_lrs`); None when each
        replica has one LR for all its parameters (its column of `lrs` then)."""
        if seg.group_index is None:
            return None
        rows = []
        for j, k in enumerate(range(seg.a, seg.b)):
            group_lrs = self.last_lrs[k]
            rows.append([0.0 if self.done[k] else group_lrs[i] for i in seg.group_index[j]])
        return rows

    def _adam(self, seg: Segment, lr: list[float], p: torch.Tensor, g: torch.Tensor,
              per_param: Optional[list[list[float]]] = None) -> None:
        """torch.optim.Adam / AdamW's single-tensor update (the one used on the CPU), per replica."""
        a, b = seg.a, seg.b
        for k in range(a, b):
            if not self.done[k]:
                self.steps[k] += 1
        # a replica that ended before its first step has no step count: any bias correction will do (its LR is 0)
        steps = [max(s, 1) for s in self.steps[a:b]]
        bc1 = [1 - b1 ** s for b1, s in zip(seg.beta1, steps)]
        bc2_sqrt = _column([(1 - b2 ** s) ** 0.5 for b2, s in zip(seg.beta2, steps)], self.device)
        step_size = (_column([-(lr_k / c) for lr_k, c in zip(lr, bc1)], self.device) if per_param is None else
                     _elements(seg, [[-(v / c) for v in row] for row, c in zip(per_param, bc1)], torch.float32))
        m, v = self.state["exp_avg"][a:b], self.state["exp_avg_sq"][a:b]
        m.lerp_(g, seg.one_minus_b1)
        if isinstance(seg.one_minus_b2, float):
            v.mul_(seg.b2).addcmul_(g, g, value=seg.one_minus_b2)
        else:
            v.mul_(seg.b2).addcmul_(g * seg.one_minus_b2, g)
        if seg.amsgrad:
            mx = self.state["max_exp_avg_sq"][a:b]
            torch.maximum(mx, v, out=mx)
            v = mx
        denom = v.sqrt().div_(bc2_sqrt).add_(seg.eps)
        if isinstance(step_size, float):
            p.addcdiv_(m, denom, value=step_size)
        else:
            p.addcdiv_(m * step_size, denom)

    def _sgd(self, seg: Segment, lr: list[float], p: torch.Tensor, g: torch.Tensor,
             per_param: Optional[list[list[float]]] = None) -> None:
        """torch.optim.SGD's single-tensor update (the one used on the CPU), per replica."""
        a, b = seg.a, seg.b
        if seg.kind[1]:  # momentum
            buf = self.state["momentum_buffer"][a:b]
            started = self.has_buffer[a:b]
            mu, damp = seg.momentum, seg.dampening
            if all(started):
                buf.mul_(mu)
                buf.add_(g, alpha=damp) if isinstance(damp, float) else buf.add_(g * damp)
            elif not any(started):
                buf.copy_(g)
            else:  # replicas restored at different points: each its own way
                for j, s in enumerate(started):
                    mu_j = mu if isinstance(mu, float) else float(mu[j])
                    d_j = damp if isinstance(damp, float) else float(damp[j])
                    buf[j].copy_(buf[j].mul(mu_j).add(g[j], alpha=d_j) if s else g[j])
            for k in range(a, b):
                self.has_buffer[k] = self.has_buffer[k] or not self.done[k]
            if seg.nesterov:
                g = g.add(buf, alpha=mu) if isinstance(mu, float) else g + buf * mu
            else:
                g = buf
        rate = (_column([-lr_k for lr_k in lr], self.device) if per_param is None else
                _elements(seg, [[-v for v in row] for row in per_param], torch.float32))
        if isinstance(rate, float):
            p.add_(g, alpha=rate)
        else:
            p.add_(g * rate)


def _matmul_forward(model: nn.Module) -> Optional[Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor]]:
    """A Sequential of Flatten, Linear and elementwise activations (lrtrain's MLP and Linear without norm or
    dropout) as batched matmuls over the stacked weights; None for any other model (vmap then)."""
    if not isinstance(model, nn.Sequential):
        return None
    plan: list[tuple[str, Any]] = []
    index = 0
    for module in model:
        if isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1:
            plan.append(("flatten", None))
        elif isinstance(module, nn.Linear):
            plan.append(("linear", (index, module.bias is not None)))
            index += 1 + (module.bias is not None)
        elif isinstance(module, _ELEMENTWISE):
            plan.append(("apply", module))
        else:
            return None

    def forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        for op, arg in plan:
            if op == "flatten":
                x = x.flatten(2)
            elif op == "linear":
                i, bias = arg
                w = params[i].transpose(1, 2)
                x = torch.baddbmm(params[i + 1].unsqueeze(1), x, w) if bias else torch.bmm(x, w)
            else:
                x = arg(x)
        return x

    return forward


class ReplicaTrainer(Trainer):
    """A job's Trainer whose model and optimizer live in row `index` of a fused group's flat tensors."""

    def __init__(self, run: Run, index: int, stop: "_Latch", group: dict[str, Any]):
        super().__init__(run)
        self.index, self.group = index, group
        self.replicas: Optional[Replicas] = None
        self.stop_signal = stop
        # what a step gave is the group's [K] tensors: stacked once for every replica, column `index` read
        self.pending.stack, self.pending.column = (lambda tensors: self.replicas.history(tensors)), index

    def begin(self) -> None:
        super().begin()
        self.out.live = []  # a live bar reads its loss every step, and a step's loss here is the group's [K] tensor
        self.out.summary.fused = self.group

    def batches(self, start: int) -> Iterator[int]:
        """The epoch's batch indices: the permutation is drawn into the group's, as the solo run draws it."""
        self.replicas.new_epoch(self.index, self.order)
        return iter(range(start, self.run.timeline.steps_per_epoch))

    def validate(self) -> dict[str, float]:
        return self.replicas.validate(self.index, self.settings.val_batches)

    def sync(self) -> None:
        if self.replicas is not None:
            self.replicas.pull(self.index)

    def restore(self, ckpt: dict[str, Any], keep_history: bool = False) -> None:
        super().restore(ckpt, keep_history)
        if self.replicas is not None:  # a rollback: the row follows
            self.replicas.push(self.index)

    def draw_curves_with(self, curves: CurvesPool) -> None:
        """The run's curves.png is queued for `curves` (worker processes) as it ends, when no sink reads it."""
        if all(isinstance(s, _CURVES_UNREAD) for s in self.run.sinks):
            for sink in self.run.sinks:
                if isinstance(sink, CSVLogger):
                    sink.draw = curves.add


class _Latch:
    """A stop request read once per group step, so that every replica stops after the same step."""

    value = False

    def __bool__(self) -> bool:
        return self.value


def fit_fused(runs: Sequence[Run], label: str = "", curves: Optional[CurvesPool] = None) -> list[Any]:
    """Train `runs` (compatible: `group_key`, none `unfusable`) as one fused group. Returns, for each run in
    order, its Summary or the exception that ended it (as `fit` would have raised it). With `curves`, the
    runs' curves.png are queued there, for `curves.draw()`."""
    order = order_replicas(runs)
    runs = [runs[i] for i in order]
    latch = _Latch()
    group = {"replicas": len(runs), "jobs": label}
    trainers = [ReplicaTrainer(run, k, latch, group) for k, run in enumerate(runs)]
    results: list[Any] = [None] * len(runs)
    wants: dict[int, Optional[Want]] = {}  # what each running replica's generator yielded last
    generators = [t.steps() for t in trainers]
    replicas: Optional[Replicas] = None

    def advance(k: int, sent: Optional[StepResult]) -> None:
        try:
            wants[k] = generators[k].send(sent)
        except StopIteration as end:
            results[k] = end.value
        except Exception as e:  # it ended this replica alone (its trainer wrote its summary), as fit raises it
            results[k] = e
        if results[k] is not None:
            wants.pop(k, None)
            if replicas is not None:
                replicas.retire(k)

    for k, t in enumerate(trainers):
        if curves is not None:
            t.draw_curves_with(curves)
        advance(k, None)  # begin: each restores what it resumes from, before the group stacks them
    replicas = Replicas(runs)
    for k, t in enumerate(trainers):
        t.replicas = replicas
        if results[k] is not None:
            replicas.retire(k)
    try:
        while wants:
            latch.value = bool(STOP)
            while None in wants.values():  # pauses: each goes on until it wants a step or ends
                for k in [k for k, want in wants.items() if want is None]:
                    advance(k, None)
            if not wants:
                break
            lrs, batches = [0.0] * len(runs), [0] * len(runs)
            for k, want in wants.items():
                lrs[k], batches[k], replicas.last_lrs[k] = want.lrs[0], want.batch, want.lrs
            losses, correct, norms = replicas.step(batches, lrs)
            for k in list(wants):
                advance(k, StepResult(losses, correct, norms if replicas.clipped[k] else None, None))
    except BaseException as e:  # a second signal (KeyboardInterrupt) or a bug: every replica left ends with it
        for k in list(wants):
            try:
                generators[k].throw(e)
            except BaseException:
                pass
        raise
    back: list[Any] = [None] * len(runs)
    for k, i in enumerate(order):
        back[i] = results[k]
    return back
