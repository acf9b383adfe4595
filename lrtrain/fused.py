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
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lrtrain.data import TensorData
from lrtrain.loop import Diverged, Run, Trainer
from lrtrain.signals import STOP
from lrtrain.step import StepResult

# The optimizer classes the fused update implements (exact classes: a subclass may change the update).
FUSED_OPTIMIZERS = {torch.optim.Adam: "adam", torch.optim.AdamW: "adam", torch.optim.SGD: "sgd"}
# Elementwise modules the batched-matmul forward applies as they are.
_ELEMENTWISE = (nn.ReLU, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Tanh, nn.Identity)


def unfusable(run: Run) -> Optional[str]:
    """Why this run cannot train as a replica of a fused group (None: it can)."""
    opt, model = run.optimizer, run.model
    if run.dist is not None:
        return "ddp"
    if not isinstance(run.data, TensorData):
        return f"{run.data.name} is read from folders, not held in memory"
    kind = FUSED_OPTIMIZERS.get(type(opt))
    if kind is None:
        return f"optimizer {type(opt).__name__} has no fused update (adam, adamw, sgd, momentum have)"
    for group in opt.param_groups:
        if group.get("maximize") or group.get("differentiable") or group.get("fused"):
            return "an optimizer option the fused update does not implement (maximize, differentiable, fused)"
    if len({g["lr"] for g in opt.param_groups}) > 1:
        return "parameter groups with different LRs"
    if run.hooks.augment is not None:
        return "augmentation draws its random numbers from the job's own global RNG"
    if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        return "dropout draws its random numbers from the job's own global RNG"
    if any(True for _ in model.buffers()):
        return "the model has buffers (batch norm statistics)"
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


def _broadcast(values: Sequence[float], dim: int, device: torch.device) -> float | torch.Tensor:
    """One value per replica: a Python float when they are all equal (torch.optim's own arithmetic), otherwise
    a tensor [n, 1, ...] that broadcasts against a stacked tensor of `dim` dimensions."""
    first = values[0]
    if all(v == first for v in values):
        return float(first)
    return torch.tensor(values, dtype=torch.float32, device=device).view(len(values), *([1] * (dim - 1)))


class Segment:
    """Replicas [a, b) of a group, all updated by one formula (Adam/AdamW with or without AMSGrad, or SGD with or
    without momentum, Nesterov or not), each with its own hyper-parameters."""

    def __init__(self, a: int, b: int, runs: Sequence[Run], params: list[torch.Tensor]):
        self.a, self.b = a, b
        self.kind = _segment_key(runs[0])
        device = params[0].device
        groups = [[_group_of(run.optimizer, p) for p in run.model.parameters()] for run in runs]
        self.dims = [p.dim() for p in params]
        per = lambda key: [[g[key] for g in gs] for gs in groups]  # noqa: E731  [replica][param]
        if self.kind[0] == "adam":
            beta1 = [run.optimizer.param_groups[0]["betas"][0] for run in runs]
            beta2 = [run.optimizer.param_groups[0]["betas"][1] for run in runs]
            self.beta1, self.beta2 = beta1, beta2
            self.one_minus_b1 = _broadcast([1 - b for b in beta1], max(self.dims), device)
            self.b2 = [_broadcast(beta2, d, device) for d in self.dims]
            self.one_minus_b2 = [_broadcast([1 - b for b in beta2], d, device) for d in self.dims]
            self.eps = [_broadcast([run.optimizer.param_groups[0]["eps"] for run in runs], d, device)
                        for d in self.dims]
            self.amsgrad = self.kind[1]
            decoupled = [type(run.optimizer) is torch.optim.AdamW
                         or bool(run.optimizer.param_groups[0].get("decoupled_weight_decay")) for run in runs]
            wd = per("weight_decay")
            self.coupled = [[0.0 if decoupled[r] else wd[r][i] for r in range(len(runs))]
                            for i in range(len(params))]
            self.decoupled = [[wd[r][i] if decoupled[r] else 0.0 for r in range(len(runs))]
                              for i in range(len(params))]
        else:
            self.momentum = [_broadcast([run.optimizer.param_groups[0]["momentum"] for run in runs], d, device)
                             for d in self.dims]
            self.dampening = [_broadcast([1 - run.optimizer.param_groups[0]["dampening"] for run in runs], d,
                                         device) for d in self.dims]
            self.nesterov = self.kind[2]
            # torch's SGD: coupled decay is its own; decoupled decay is lrtrain's pre-hook (lrtrain.optimizers)
            wd, dd = per("weight_decay"), [[g.get("decoupled_decay", 0.0) for g in gs] for gs in groups]
            self.coupled = [[wd[r][i] for r in range(len(runs))] for i in range(len(params))]
            self.decoupled = [[dd[r][i] for r in range(len(runs))] for i in range(len(params))]
        self.coupled_t = [None if not any(c) else _broadcast(c, d, device)
                          for c, d in zip(self.coupled, self.dims)]


def _group_of(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> dict[str, Any]:
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            return group
    raise ValueError("a model parameter that no optimizer parameter group holds")


class Replicas:
    """The stacked state of K replicas of one model: parameters, optimizer state, the fused step."""

    def __init__(self, runs: Sequence[Run]):
        self.runs = list(runs)
        self.k = len(runs)
        first = runs[0]
        self.model = first.model
        self.names = [name for name, _ in first.model.named_parameters()]
        modules = [list(run.model.parameters()) for run in runs]
        self.params = [torch.stack([m[i].detach() for m in modules]).requires_grad_() for i in range(len(self.names))]
        self.device = self.params[0].device
        self.data: TensorData = first.data
        self.classify = first.data.num_classes is not None
        self.amp = first.step_fn().amp
        self.forward = _matmul_forward(first.model) or self._vmap_forward()
        # segments: contiguous replicas sharing an update formula (the caller ordered them)
        self.segments: list[Segment] = []
        start = 0
        for i in range(1, self.k + 1):
            if i == self.k or _segment_key(runs[i]) != _segment_key(runs[start]):
                self.segments.append(Segment(start, i, runs[start:i], self.params))
                start = i
        self.state: dict[str, list[torch.Tensor]] = {}
        for name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer"):
            self.state[name] = [torch.zeros_like(p, requires_grad=False) for p in self.params]
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
        for k in range(self.k):
            self.push(k)

    def _vmap_forward(self) -> Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor]:
        from torch.func import functional_call, vmap

        model, names = self.model, self.names

        def one(params: tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
            return functional_call(model, dict(zip(names, params)), (x,))

        batched = vmap(one)
        return lambda params, x: batched(tuple(params), x)

    # ---------------------------------------------------------------------------- replica <-> stacked

    @torch.no_grad()
    def push(self, k: int) -> None:
        """Replica k's module and torch optimizer (just built or restored) into slice k."""
        run = self.runs[k]
        opt = run.optimizer
        steps = 0
        self.has_buffer[k] = False
        for i, p in enumerate(run.model.parameters()):
            self.params[i][k].copy_(p)
            state = opt.state.get(p, {})
            for name, stacked in self.state.items():
                value = state.get(name)
                stacked[i][k].copy_(value) if value is not None else stacked[i][k].zero_()
            if "step" in state:
                steps = int(float(state["step"]))
            if state.get("momentum_buffer") is not None:
                self.has_buffer[k] = True
        self.steps[k] = steps
        self.last_lrs[k] = None
        self.dirty[k] = False

    @torch.no_grad()
    def pull(self, k: int) -> None:
        """Slice k into replica k's module and torch optimizer, as its solo run would hold them now."""
        if not self.dirty[k]:
            return
        run = self.runs[k]
        opt = run.optimizer
        adam = FUSED_OPTIMIZERS[type(opt)] == "adam"
        amsgrad = bool(opt.param_groups[0].get("amsgrad"))
        for i, p in enumerate(run.model.parameters()):
            p.copy_(self.params[i][k])
            if adam and self.steps[k]:
                state = {"step": torch.tensor(float(self.steps[k]), dtype=torch.get_default_dtype()),
                         "exp_avg": self.state["exp_avg"][i][k].clone(),
                         "exp_avg_sq": self.state["exp_avg_sq"][i][k].clone()}
                if amsgrad:
                    state["max_exp_avg_sq"] = self.state["max_exp_avg_sq"][i][k].clone()
                opt.state[p] = state
            elif not adam and self.has_buffer[k]:
                opt.state[p] = {"momentum_buffer": self.state["momentum_buffer"][i][k].clone()}
        if self.last_lrs[k] is not None:
            for group, lr in zip(opt.param_groups, self.last_lrs[k]):
                group["lr"] = lr
        self.dirty[k] = False

    @torch.no_grad()
    def retire(self, k: int) -> None:
        """Replica k ended: it stops updating (zeros stay zeros with an LR of 0, NaN or not before)."""
        self.done[k] = True
        for p in self.params:
            p[k].zero_()
        for stacked in self.state.values():
            for s in stacked:
                s[k].zero_()

    # ---------------------------------------------------------------------------------------- the step

    def new_epoch(self, k: int, generator: torch.Generator) -> None:
        """Replica k's permutation for this epoch, drawn as TensorData.train_batches draws it."""
        n = self.perms.shape[1]
        self.perms[k] = torch.randperm(n, generator=generator, device=generator.device)

    def batch(self, batches: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Each replica's next batch (`batches[k]`: its index in the epoch): stored inputs [K, B, ...], targets
        [K, B] and, when the replicas' batches differ in size, a mask of the real samples [K, B]."""
        bs, n = self.data.batch_size, self.perms.shape[1]
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
        train = self.data.train
        return train.x[idx], train.y[idx], mask

    def step(self, batches: Sequence[int], lrs: Sequence[float]) -> tuple[torch.Tensor, Optional[torch.Tensor],
                                                                          Optional[torch.Tensor]]:
        """One step of every replica: its batch `batches[k]`, its LR `lrs[k]` (0 for replicas that ended).
        Returns the replicas' data losses [K], correct predictions [K] and gradient norms before clipping [K]."""
        stored, y, mask = self.batch(batches)
        with self.amp:
            out = self.forward(self.params, self.data.inputs(stored))
            losses = self._losses(out, y, mask)
        for p in self.params:
            p.grad = None
        total = losses.sum()
        if self.l1 is not None:  # lrtrain's L1Penalty: the weights of 2 or more dimensions
            total = total + sum((p.abs().flatten(1).sum(1) * self.l1).sum() for p in self.params if p.dim() > 2)
        total.backward()
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
        grads = [p.grad for p in self.params]
        norms = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads]),
                                         dim=0)
        if self.max_norm is not None:
            coef = (self.max_norm / (norms + 1e-6)).clamp(max=1.0)
            coef = torch.where(torch.isinf(self.max_norm), torch.ones_like(coef), coef)
            for g in grads:
                g.mul_(coef.view(self.k, *([1] * (g.dim() - 1))))
        if self.clip_value is not None:
            for g in grads:
                v = self.clip_value.view(self.k, *([1] * (g.dim() - 1)))
                torch.clamp(g, min=-v, max=v, out=g)
        return norms

    @torch.no_grad()
    def _update(self, lrs: Sequence[float]) -> None:
        for seg in self.segments:
            a, b = seg.a, seg.b
            if all(self.done[a:b]):
                continue
            lr = list(lrs[a:b])
            if seg.kind[0] == "adam":
                self._adam(seg, lr)
            else:
                self._sgd(seg, lr)

    def _adam(self, seg: Segment, lr: list[float]) -> None:
        """torch.optim.Adam / AdamW (single-tensor, as on the CPU), per replica."""
        a, b = seg.a, seg.b
        for k in range(a, b):
            if not self.done[k]:
                self.steps[k] += 1
        steps = self.steps[a:b]
        # a replica that ended before its first step has no step count: any bias correction will do (its LR is 0)
        bc1 = [1 - b1 ** max(s, 1) for b1, s in zip(seg.beta1, steps)]
        bc2_sqrt = [(1 - b2 ** max(s, 1)) ** 0.5 for b2, s in zip(seg.beta2, steps)]
        step_size = [-(l / c) for l, c in zip(lr, bc1)]
        for i, p_all in enumerate(self.params):
            dim = p_all.dim()
            p, g = p_all[a:b], p_all.grad[a:b]
            m, v = self.state["exp_avg"][i][a:b], self.state["exp_avg_sq"][i][a:b]
            if any(seg.decoupled[i]):
                p.mul_(_broadcast([1 - l * wd for l, wd in zip(lr, seg.decoupled[i])], dim, self.device))
            if seg.coupled_t[i] is not None:
                g = g.add(p, alpha=seg.coupled_t[i]) if isinstance(seg.coupled_t[i], float) else g + p * seg.coupled_t[i]
            weight = seg.one_minus_b1
            m.lerp_(g, weight if isinstance(weight, float) else weight.view(b - a, *([1] * (dim - 1))))
            if isinstance(seg.one_minus_b2[i], float):
                v.mul_(seg.b2[i]).addcmul_(g, g.conj(), value=seg.one_minus_b2[i])
            else:
                v.mul_(seg.b2[i]).addcmul_(g * seg.one_minus_b2[i], g)
            if seg.amsgrad:
                mx = self.state["max_exp_avg_sq"][i][a:b]
                torch.maximum(mx, v, out=mx)
                v = mx
            denom = (v.sqrt() / _broadcast(bc2_sqrt, dim, self.device)).add_(seg.eps[i])
            size = _broadcast(step_size, dim, self.device)
            if isinstance(size, float):
                p.addcdiv_(m, denom, value=size)
            else:
                p.addcdiv_(m * size, denom)

    def _sgd(self, seg: Segment, lr: list[float]) -> None:
        """torch.optim.SGD (single-tensor, as on the CPU), with lrtrain's decoupled decay before it, per replica."""
        a, b = seg.a, seg.b
        momentum = seg.kind[1]
        for i, p_all in enumerate(self.params):
            dim = p_all.dim()
            p, g = p_all[a:b], p_all.grad[a:b]
            if any(seg.decoupled[i]):
                p.mul_(_broadcast([1 - l * wd for l, wd in zip(lr, seg.decoupled[i])], dim, self.device))
            if seg.coupled_t[i] is not None:
                g = g.add(p, alpha=seg.coupled_t[i]) if isinstance(seg.coupled_t[i], float) else g + p * seg.coupled_t[i]
            if momentum:
                buf = self.state["momentum_buffer"][i][a:b]
                started = self.has_buffer[a:b]
                mu, damp = seg.momentum[i], seg.dampening[i]
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
                if i == len(self.params) - 1:
                    for k in range(a, b):
                        self.has_buffer[k] = self.has_buffer[k] or not self.done[k]
                if seg.nesterov:
                    g = g.add(buf, alpha=mu) if isinstance(mu, float) else g + buf * mu
                else:
                    g = buf
            rate = _broadcast([-l for l in lr], dim, self.device)
            p.add_(g, alpha=rate) if isinstance(rate, float) else p.add_(g * rate)


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
    """A job's Trainer whose model and optimizer live in a slice of a fused group's stacked tensors."""

    replicas: Replicas
    index: int

    def _sync(self) -> None:
        self.replicas.pull(self.index)

    def restore(self, ckpt: dict[str, Any], keep_history: bool = False) -> None:
        super().restore(ckpt, keep_history)
        if getattr(self, "replicas", None) is not None:  # a rollback: the stacked slice follows
            self.replicas.push(self.index)


def fit_fused(runs: Sequence[Run], label: str = "") -> list[Any]:
    """Train `runs` (compatible: `group_key`, none `unfusable`) as one fused group. Returns, for each run in
    order, its Summary or the exception that ended it (as `fit` would have raised it)."""
    order = order_replicas(runs)
    runs = [runs[i] for i in order]
    trainers = [ReplicaTrainer(run) for run in runs]
    results: list[Any] = [None] * len(runs)
    for k, t in enumerate(trainers):
        t.index = k
        t.replicas = None  # type: ignore[assignment]
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
            if STOP:  # every replica checkpoints where it is and ends interrupted, as a solo run does
                for k in active:
                    _guarded(lambda k=k: end_epoch(k, stopped=True), trainers[k], k, results, replicas)
                    if results[k] is None:
                        ended(k)
                close_ended()
                break
            lrs[:] = [0.0] * len(runs)
            batches = [0] * len(runs)
            for k in active:
                step_lrs = trainers[k].step_lrs()
                replicas.last_lrs[k] = step_lrs
                lrs[k] = step_lrs[0]
                batches[k] = trainers[k].pos.batch
            losses, correct, norms = replicas.step(batches, lrs)
            losses_k = losses.unbind()
            correct_k = correct.unbind() if correct is not None else [None] * len(runs)
            norms_k = norms.unbind() if norms is not None else [None] * len(runs)
            for k in active:  # first every replica's step, then epoch ends, then the ends of runs: no replica's
                t = trainers[k]  # step is timed with another's validation or plots in it
                result = StepResult(losses_k[k], correct_k[k], norms_k[k] if replicas.clipped[k] else None, None)
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
