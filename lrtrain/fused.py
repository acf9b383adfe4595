"""Fused sweeps: the jobs of a sweep that share a model and its data train together, as one vectorized model.

Each job keeps its own `Trainer` (lrtrain.loop) for everything but the step: its position, data order,
schedule, sinks, validation, early stopping, divergence guard, checkpoints and summary are the ordinary ones.
Only the step is shared (`Replicas.step`): every parameter lives stacked as one leaf tensor [K, ...] over the
K replicas, each replica's batch is drawn with its own order generator (the permutation its solo run draws),
the loss is the sum of the replicas' mean losses (their gradients do not mix), and the update is torch's
Adam/AdamW/SGD written over the stacked tensors with each replica's hyper-parameters as broadcast tensors
(torch.optim takes one scalar LR per parameter group, so a per-replica LR is not something it can do for us;
`tests/test_fused.py` checks this update step by step against torch.optim). Before its model or optimizer is
read (validation, a checkpoint, the end) a replica's slice is copied into its own module and torch optimizer
(`_sync`), so checkpoints are ordinary ones and resume alone; after a restore (resume, rollback) it is copied
back. A replica that ends stops updating: its slice is zeroed and its LR is 0, and nothing it holds reaches the
others' numbers.
"""

from __future__ import annotations

import copy
import json
import warnings
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lrtrain.data import TensorData
from lrtrain.loggers import CSVLogger, TensorBoardLogger
from lrtrain.loop import Diverged, Run, Trainer
from lrtrain.parametrization import Scale
from lrtrain.plots import CurvesPool
from lrtrain.progress import ProgressDisplay
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
    if run.settings.compile:
        return "trainer.compile: the fused step has its own forward pass, which torch.compile does not compile"
    if run.data.kind == "text":  # the fused step and validation are written for one target per sample
        return "a language model (dataset=text): the fused step and its validation take one target per sample"
    if not isinstance(run.data, TensorData):
        return f"{run.data.name} is read from folders, not held in memory"
    kind = FUSED_OPTIMIZERS.get(type(opt))
    if kind is None:
        return f"optimizer {type(opt).__name__} has no fused update (adam, adamw, sgd, momentum have)"
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
                       shapes, type(run.loss_fn).__name__], sort_keys=True, default=str)


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
        self.classify = first.data.num_classes is not None
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
        eps = [run.loss_fn.label_smoothing if isinstance(run.loss_fn, nn.CrossEntropyLoss) else 0.0 for run in runs]
        self.smoothing = None if not any(eps) else torch.tensor(eps, device=self.device).view(self.k, 1)
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

    @torch.no_grad()
    def validate(self, k: int) -> dict[str, float]:
        """Replica k's validation metrics, as lrtrain.loop.evaluate gives them: every replica is validated at
        once, in one batched forward, and kept until the next step (replicas end their epochs in the same step)."""
        if k not in self._validation:
            data, n = self.data, len(self.data.val)
            loss_sum = torch.zeros(self.k, device=self.device)
            correct = torch.zeros(self.k, device=self.device, dtype=torch.long)
            for stored, y in data.eval_batches(data.val):
                x = data.inputs(stored)
                with self.amp:
                    out = self.eval_forward(self.params, x.expand(self.k, *x.shape)).float()
                if data.num_classes is None:
                    loss_sum += F.mse_loss(out.squeeze(-1), y.expand(self.k, -1), reduction="none").sum(1)
                else:
                    loss_sum += F.cross_entropy(out.flatten(0, 1), y.repeat(self.k), reduction="none").view(
                        self.k, -1).sum(1)
                    correct += (out.argmax(-1) == y).sum(1)
            losses, hits = loss_sum.tolist(), correct.tolist()
            for j in range(self.k):
                self._validation[j] = {"loss": losses[j] / n, **({"acc": hits[j] / n} if self.classify else {})}
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

    def batch(self, batches: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Each replica's next batch (`batches[k]`: its index in the epoch): stored inputs [K, B, ...], targets
        [K, B] and, when the replicas' batches differ in size, a mask of the real samples [K, B]."""
        bs = self.data.batch_size
        first = batches[0]
        if all(b == first for b in batches):
            idx, mask = self.perms[:, first * bs:(first + 1) * bs], None
        else:  # replicas at different places in their epochs (a rollback, a resume): pad the short batches
            rows, masks = [], []
            for k, b in enumerate(batches):
                part = self.perms[k, b * bs:(b + 1) * bs]
                masks.append(torch.arange(bs, device=self.device) < len(part))
                rows.append(F.pad(part, (0, bs - len(part))))
            idx, mask = torch.stack(rows), torch.stack(masks)
            if bool(mask.all()):
                mask = None
        train, flat = self.data.train, idx.reshape(-1)  # index_select: 3x faster than x[idx] (uint8 images)
        x, y = train.x.index_select(0, flat), train.y.index_select(0, flat)
        return x.view(*idx.shape, *x.shape[1:]), y.view(*idx.shape, *y.shape[1:]), mask

    def step(self, batches: Sequence[int], lrs: Sequence[float]) -> tuple[torch.Tensor, Optional[torch.Tensor],
                                                                          Optional[torch.Tensor]]:
        """One step of every replica: its batch `batches[k]`, its LR `lrs[k]` (0 for replicas that ended).
        Returns the replicas' data losses [K], correct predictions [K] and gradient norms before clipping [K]."""
        self._history.clear()  # a new step: the tensors the last stacks were keyed by may be gone
        self._validation.clear()
        stored, y, mask = self.batch(batches)
        with self.amp:
            out = self.forward(self.params, self.data.inputs(stored))
            losses = self._losses(out, y, mask)
        self.grad.zero_()
        total = losses.sum()
        if self.l1 is not None:  # lrtrain's L1Penalty: the weights of 2 or more dimensions
            total = total + sum((p.abs().flatten(1).sum(1) * self.l1).sum() for p in self.params if p.dim() > 2)
        total.backward()
        for p, g in zip(self.params, self.grads):
            if p.grad is not g:  # autograd accumulates into the views; should it ever replace one, copy it back
                g.copy_(p.grad)
                p.grad = g
        norms = self._clip() if self.max_norm is not None or self.clip_value is not None else None
        self._update(lrs)
        for k in range(self.k):
            self.dirty[k] = not self.done[k]
        correct = None
        if self.classify:
            hits = out.argmax(-1) == y
            correct = (hits & mask).sum(1) if mask is not None else hits.sum(1)
        return losses.detach(), correct, norms

    def _losses(self, out: torch.Tensor, y: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        k, b = y.shape
        if not self.classify:
            per_sample = F.mse_loss(out.squeeze(-1), y, reduction="none")
        elif self.smoothing is None:
            per_sample = F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(k, b)
        else:  # torch's label smoothing: (1 - eps) * nll + eps * mean over classes of -log p
            logp = out.float().log_softmax(-1)
            nll = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
            per_sample = nll * (1 - self.smoothing) + (-logp.mean(-1)) * self.smoothing
        if mask is None:
            return per_sample.mean(1)
        return (per_sample * mask).sum(1) / mask.sum(1)

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
    """A job's Trainer whose model and optimizer live in a row of a fused group's flat tensors."""

    replicas: Optional[Replicas] = None
    index: int = 0

    def _pending_tensors(self) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        # what record() kept are the group's [K] tensors of each step: stacked once for every replica, column k
        rows, k = self.replicas.history, self.index
        losses = rows(self._pending_losses)[:, k].float()
        correct = rows(self._pending_correct)[:, k].sum() if self._pending_correct else torch.zeros(())
        norms = rows(self._pending_norms)[:, k].float() if self._pending_norms else None
        return losses, correct, norms

    def _validate(self) -> dict[str, float]:
        return self.replicas.validate(self.index) if self.replicas is not None else super()._validate()

    def _sync(self) -> None:
        if self.replicas is not None:
            self.replicas.pull(self.index)

    def restore(self, ckpt: dict[str, Any], keep_history: bool = False) -> None:
        super().restore(ckpt, keep_history)
        if self.replicas is not None:  # a rollback: the row follows
            self.replicas.push(self.index)

    def draw_curves_with(self, curves: CurvesPool) -> None:
        """The run's curves.png is queued for `curves` (worker processes) as it ends, when no sink reads it."""
        if all(isinstance(s, _CURVES_UNREAD) for s in self.sinks):
            for sink in self.sinks:
                if isinstance(sink, CSVLogger):
                    sink.draw = curves.add


def fit_fused(runs: Sequence[Run], label: str = "", curves: Optional[CurvesPool] = None) -> list[Any]:
    """Train `runs` (compatible: `group_key`, none `unfusable`) as one fused group. Returns, for each run in
    order, its Summary or the exception that ended it (as `fit` would have raised it). With `curves`, the
    runs' curves.png are queued there, for `curves.draw()`."""
    order = order_replicas(runs)
    runs = [runs[i] for i in order]
    trainers = [ReplicaTrainer(run) for run in runs]
    results: list[Any] = [None] * len(runs)
    for k, t in enumerate(trainers):
        t.index = k
        if curves is not None:
            t.draw_curves_with(curves)
        t.live = []  # a live bar reads its loss every step, and a step's loss here is the group's [K] tensor
        try:
            t.begin()
            t.summary.fused = {"replicas": len(runs), "jobs": label}
        except Exception as e:
            results[k] = e
    replicas = Replicas(runs)
    for k, t in enumerate(trainers):
        t.replicas = replicas
        if results[k] is not None:
            replicas.retire(k)
    active: list[int] = []
    for k, t in enumerate(trainers):
        if results[k] is None:
            try:
                t.open()
                active.append(k)
            except Exception as e:
                _end(t, k, e, results, replicas)
    spe = runs[0].timeline.steps_per_epoch
    lrs: list[float] = []
    fresh = set(active)  # replicas whose next step begins an epoch (or continues after a resume/rollback)

    closing: list[int] = []  # replicas that ended this step: their outputs are written after every one is timed

    def ended(k: int) -> bool:
        t = trainers[k]
        if t.running:
            return False
        try:
            t.finish()
        except Exception as e:
            _end(t, k, e, results, replicas)
            return True
        t.totals()
        closing.append(k)
        return True

    def close_ended() -> None:
        for k in closing:
            _end(trainers[k], k, None, results, replicas, timed=True)
        closing.clear()

    def record(t: Trainer, k: int, result: StepResult) -> None:
        try:
            t.record(result, lrs[k], None)
        except Diverged as d:  # found at a mid-epoch checkpoint's flush
            t.on_divergence(d)
            fresh.add(k)

    def end_epoch(k: int, stopped: bool) -> None:
        t = trainers[k]
        try:
            t.end_epoch(stopped)
        except Diverged as d:
            t.on_divergence(d)
        fresh.add(k)

    try:
        active = [k for k in active if not ended(k)]
        close_ended()
        while active:
            for k in sorted(fresh):
                if k in active:
                    trainers[k].begin_epoch()
                    replicas.new_epoch(k, trainers[k].order)
            fresh.clear()
            if STOP:  # every replica checkpoints where it is and ends interrupted, as a solo run does (one whose
                for k in active:  # flush finds a divergence first rolls back, and is interrupted on the next turn)
                    _guarded(lambda k=k: end_epoch(k, stopped=True), trainers[k], k, results, replicas)
                    if results[k] is None:
                        ended(k)
                close_ended()
                active = [k for k in active if results[k] is None]
                continue
            lrs[:] = [0.0] * len(runs)
            batches = [0] * len(runs)
            for k in active:
                step_lrs = trainers[k].step_lrs()
                replicas.last_lrs[k] = step_lrs
                lrs[k] = step_lrs[0]
                batches[k] = trainers[k].pos.batch
            losses, correct, norms = replicas.step(batches, lrs)
            for k in active:  # first every replica's step, then epoch ends, then the ends of runs: no replica's
                t = trainers[k]  # step is timed with another's validation or plots in it
                # the whole group's [K] tensors: this replica's column is read at its flush (_pending_tensors)
                result = StepResult(losses, correct, norms if replicas.clipped[k] else None, None)
                _guarded(lambda t=t, k=k, result=result: record(t, k, result), t, k, results, replicas)
            for k in active:
                t = trainers[k]
                if results[k] is None and k not in fresh and (t.pos.batch >= spe or
                                                              t.pos.step >= t.run.timeline.total_steps):
                    _guarded(lambda k=k: end_epoch(k, stopped=False), t, k, results, replicas)
            for k in active:
                if results[k] is None:
                    ended(k)
            close_ended()
            active = [k for k in active if results[k] is None]
    except BaseException as e:  # a second signal (KeyboardInterrupt) or a bug: every replica left ends with it
        close_ended()
        for k in active:
            if results[k] is None:
                trainers[k].fail(e)
                _end(trainers[k], k, e, results, replicas, close_only=True)
        raise
    back: list[Any] = [None] * len(runs)
    for k, i in enumerate(order):
        back[i] = results[k]
    return back


def _guarded(fn: Callable[[], None], t: Trainer, k: int, results: list[Any], replicas: Replicas) -> None:
    """Run one replica's part; an exception ends that replica alone (as fit would have raised it)."""
    try:
        fn()
    except Exception as e:
        t.fail(e)
        _end(t, k, e, results, replicas, close_only=True)


def _end(t: Trainer, k: int, error: Optional[BaseException], results: list[Any], replicas: Replicas,
         close_only: bool = False, timed: bool = False) -> None:
    """Replica k ended (with `error`, or its summary): its sinks get the summary, and its slice stops updating."""
    if results[k] is not None:
        return
    if error is not None and not close_only and hasattr(t, "summary"):
        t.fail(error)
    try:
        if hasattr(t, "summary"):
            if timed:  # totals() was called when it ended
                t.end_sinks(t.summary)
            else:
                t.close()
    except Exception as e:
        error = error or e
    results[k] = error if error is not None else t.summary
    replicas.retire(k)
