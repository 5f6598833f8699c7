"""K folds of one point trained in one process as one stacked model (`train_folds`).

Each fold is what `train_fold` would train: its own model built from its own seed, its own training
samples, its own batch order (its own generator), its own SGD state, and its own FoldResult, evaluated by
the same code (`model.train.fold_result`). What is shared is the work: the K models' weights are stacked
on a leading fold axis (`torch.func.functional_call` + `vmap`), so every operation of a step runs once for
all K folds (K times fewer launches per fold-step on a GPU; on a CPU, K times less Python and dispatch
overhead per fold-step).

Folds of one point differ in their number of training samples, so a step may hold batches of different
sizes, or no batch for a fold whose epoch is over. Such a step runs once per batch size, each time for
every fold with the folds without a batch of that size given a stand-in batch and a loss weight of 0; the
SGD update then leaves a fold that had no batch exactly as it was (its momentum and weights unchanged:
`StackedSGD`). The mathematics per fold is `fit`'s: tests/unit/model/test_stacked.py checks each fold
against training it alone (1e-5).
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from model import losses
from model.config import with_dataset_defaults
from model.lsi import landmark_groups
from model.net import MicroAUCLIP, TextTensors, as_tensor
from model.prefix import Prefix
from model.result import FoldResult
from model.train import (
    Fitted,
    FoldError,
    autocast,
    batch_indices,
    fold_result,
    loss_weights,
    prefix_of,
    resolve_device,
    resolve_precision,
    step_inputs,
    step_losses,
)
from model.trial import TrialLike


class _Step(nn.Module):
    """One fold's forward half of a step as a module (so functional_call swaps every weight it reads):
    (vis, tok, labels, global-text rows) -> [Eq. 12 total, multi-task, contrastive, GD]."""

    def __init__(self, model: MicroAUCLIP, mcfg, au_txt: TextTensors, glob_txt: TextTensors, w: dict[str, float],
                 device: torch.device, precision: str):
        super().__init__()
        self.model, self.mcfg, self.au_txt, self.glob_txt, self.w = model, mcfg, au_txt, glob_txt, w
        self.device, self.precision = device, precision

    def forward(self, vis, tok, y, glob_rows):
        with autocast(self.device, self.precision):
            t = step_losses(self.model, self.mcfg, vis, tok, y, self.au_txt, self.glob_txt, glob_rows,
                            unique_rows=False)
            loss = losses.total_loss(t["multitask"], t["contrastive"], t["gd"], self.w["alpha"], self.w["beta"])
        return torch.stack([loss, t["multitask"], t["contrastive"], t["gd"]])


class StackedSGD:
    """torch.optim.SGD (momentum, weight decay; dampening 0, no Nesterov) on weights stacked over K folds,
    with a per-fold switch: a fold that is not `active` in a step keeps its weights and momentum as they
    are (its gradient is 0: its loss had weight 0). With every fold active it is SGD's foreach update.
    Momentum buffers start at 0 (0 * momentum + g = g: SGD's first step)."""

    def __init__(self, groups: list[dict], momentum: float, weight_decay: float):
        self.groups, self.momentum, self.wd = groups, momentum, weight_decay
        self.bufs = [[torch.zeros_like(p) for p in g["params"]] for g in groups] if momentum else None

    def zero_grad(self) -> None:
        for g in self.groups:
            for p in g["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self, active: torch.Tensor | None = None) -> None:
        """active: (K,) 1.0 / 0.0 per fold, or None when every fold stepped."""
        for gi, g in enumerate(self.groups):
            ps = [p for p in g["params"] if p.grad is not None]
            if not ps:
                continue
            keep = [i for i, p in enumerate(g["params"]) if p.grad is not None]
            grads = [p.grad for p in ps]
            shape = [(-1,) + (1,) * (p.dim() - 1) for p in ps]
            a = None if active is None else [active.view(s) for s in shape]
            if self.wd:
                decay = torch._foreach_mul(ps, self.wd)
                grads = torch._foreach_add(grads, decay if a is None else torch._foreach_mul(decay, a))
            if self.momentum:
                bufs = [self.bufs[gi][i] for i in keep]
                if a is None:
                    torch._foreach_mul_(bufs, self.momentum)
                else:  # momentum where the fold stepped, 1 (unchanged, its gradient is 0) where it did not
                    torch._foreach_mul_(bufs, [1 + (self.momentum - 1) * x for x in a])
                torch._foreach_add_(bufs, grads)
                grads = bufs
            if a is None:
                torch._foreach_add_(ps, grads, alpha=-g["lr"])
            else:
                torch._foreach_add_(ps, torch._foreach_mul(grads, [x * -g["lr"] for x in a]))


class StackedFolds:
    """K models of one config (each built from its own seed) as one stacked model, and its training step.
    `train_folds` drives it; bench/fold_stack.py times its step."""

    def __init__(self, trials: Sequence[TrialLike], prefix: Prefix, au_txt: TextTensors, glob_txt: TextTensors,
                 device: torch.device):
        t0 = trials[0]
        self.mcfg, self.tcfg = t0.model, t0.training
        self.aus = [int(a) for a in t0.aus]
        self.device = device
        self.precision = resolve_precision(self.tcfg.precision, device)
        self.w = loss_weights(t0)
        self.models = []
        for t in trials:  # as fit builds each: seeded, then the model
            torch.manual_seed(t.seed)
            self.models.append(MicroAUCLIP(self.mcfg, len(self.aus), prefix).to(device))
        self.k = len(self.models)
        base = self.models[0]
        enc = {id(p) for p in base.encoder_parameters()}
        head = {id(p) for p in base.head_parameters()}
        self.params = {}  # trainable weights, stacked (K, ...)
        self.fixed = {}  # everything else, shared (identical in every fold)
        for name, p in base.named_parameters():
            if id(p) in enc or id(p) in head:
                self.params["model." + name] = torch.stack(
                    [m.get_parameter(name).detach() for m in self.models]).requires_grad_(True)
            else:
                self.fixed["model." + name] = p.detach()
        for name, b in base.named_buffers():
            self.fixed["model." + name] = b
        names = {id(p): "model." + n for n, p in base.named_parameters()}
        groups = [{"params": [self.params[names[id(p)]] for p in base.encoder_parameters()],
                   "lr": self.tcfg.lr_encoder, "name": "encoder"},
                  {"params": [self.params[names[id(p)]] for p in base.head_parameters()],
                   "lr": self.tcfg.lr_head, "name": "head"}]
        self.groups = [g for g in groups if g["params"]]
        if self.tcfg.optimizer != "sgd":
            raise FoldError(f"stacked folds train with SGD (the paper's); training.optimizer is "
                            f"{self.tcfg.optimizer!r}: train these folds one at a time")
        self.opt = StackedSGD(self.groups, self.tcfg.momentum, self.tcfg.weight_decay)
        template = copy.deepcopy(base)
        self.step_module = _Step(template, self.mcfg, au_txt, glob_txt, self.w, device, self.precision)
        self._forward = vmap(self._one, in_dims=(0, 0, 0, 0, 0), randomness="error")

    def _one(self, params, vis, tok, y, rows):
        return functional_call(self.step_module, {**self.fixed, **params}, (vis, tok, y, rows), strict=False)

    def set_epoch_lrs(self, epoch: int) -> None:
        """MultiStepLR([lr_step_epoch], lr_gamma) as `fit` steps it: the same float products."""
        for g, base in zip(self.groups, self._base_lrs(), strict=True):
            lr = base
            for e in range(1, epoch + 1):
                if e == self.tcfg.lr_step_epoch:
                    lr = lr * self.tcfg.lr_gamma
            g["lr"] = lr

    def _base_lrs(self) -> list[float]:
        return [self.tcfg.lr_encoder if g["name"] == "encoder" else self.tcfg.lr_head for g in self.groups]

    def step(self, vis, tok, y, rows, active: torch.Tensor | None = None) -> torch.Tensor:
        """One stacked step on per-fold batches (K, B, ...); `active` (K,) 1/0 weighs each fold's loss (None:
        every fold). -> (K, 4) detached [total, multi-task, contrastive, GD]."""
        terms = self._forward(self.params, vis, tok, y, rows)
        loss = terms[:, 0].sum() if active is None else (terms[:, 0] * active).sum()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step(active)
        return terms.detach()

    def unstack(self) -> list[MicroAUCLIP]:
        """The K trained models, each with its own slice of the stacked weights (eval mode)."""
        with torch.no_grad():
            for k, m in enumerate(self.models):
                for name, p in m.named_parameters():
                    if "model." + name in self.params:
                        p.copy_(self.params["model." + name][k])
                m.eval()
        return self.models


def _check_one_point(trials: Sequence[TrialLike]) -> None:
    t0 = trials[0]
    for i, t in enumerate(trials[1:], 1):
        for what in ("model", "training"):
            a, b = getattr(t0, what), getattr(t, what)
            if a.model_dump() != b.model_dump():
                diff = sorted(k for k, v in a.model_dump().items() if b.model_dump().get(k) != v)
                raise FoldError(f"stacked folds are of one point: trial {i} differs from trial 0 in "
                                f"{what}.{', '.join(diff)}")
        same_aus = [int(a) for a in t.aus] == [int(a) for a in t0.aus]
        if not same_aus or getattr(t, "reader", None) != getattr(t0, "reader", None):
            raise FoldError(f"stacked folds are of one point: trial {i} has other AUs or another reader")


def train_folds(trials: Sequence[TrialLike], data, test_subjects: Sequence[str], prefix: Prefix | None = None,
                on_epoch: Callable[[dict], None] | None = None) -> list[FoldResult]:
    """`train_fold(trials[k], data, test_subjects[k], prefix)` for k = 0..K-1, trained together as one
    stacked model -> the K FoldResults, in order, each within float rounding (1e-5) of training it alone.

    trials: K `TrialLike`s of one point (the same model and training config and AUs; seeds may differ);
    data: the one prepared dataset of the point; test_subjects: the subject each fold holds out;
    prefix: the frozen prefix of (trials[0].model, data, aus), computed here when None;
    on_epoch: called after each epoch once per fold with train_fold's dict plus `fold` (k) and
    `test_subject`. Training is SGD (`training.optimizer: sgd`); `training.compile` is not applied here.
    """
    t_start = time.perf_counter()
    if len(trials) != len(test_subjects) or not trials:
        raise FoldError(f"train_folds: {len(trials)} trials for {len(test_subjects)} test subjects; give one "
                        f"trial per fold")
    _check_one_point(trials)
    t0 = trials[0]
    mcfg, tcfg = t0.model, with_dataset_defaults(t0.training, getattr(t0, "reader", None))
    aus = [int(a) for a in t0.aus]
    device = resolve_device(tcfg.device)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)

    subjects = np.asarray([str(s) for s in data.subjects])
    folds = []
    for s in map(str, test_subjects):
        test_idx, train_idx = np.flatnonzero(subjects == s), np.flatnonzero(subjects != s)
        if len(test_idx) == 0:
            raise FoldError(f"dataset {data.reader} ({data.key}): no sample of test subject {s!r}; its subjects "
                            f"are {sorted(set(subjects.tolist()))}")
        if len(train_idx) < 2:
            raise FoldError(f"dataset {data.reader}: fewer than 2 training samples when {s} is held out")
        folds.append((s, train_idx, test_idx))

    t = time.perf_counter()
    prefix = prefix_of(prefix, mcfg, data, aus, device)
    t_prefix = time.perf_counter() - t

    t = time.perf_counter()
    tr = step_inputs(data, prefix, aus, landmark_groups(aus, mcfg.landmark_groups), device)
    au_txt = TextTensors(prefix.au_texts, device)
    emo_txt = TextTensors(prefix.emotion_texts, device)
    emo_class = as_tensor(prefix.emotion_class, device)
    glob_txt = TextTensors(prefix.global_texts, device)
    stack = StackedFolds(trials, prefix, au_txt, glob_txt, device)
    gens = [torch.Generator().manual_seed(t.seed) for t in trials]
    t_build = time.perf_counter() - t

    t = time.perf_counter()
    k_all = len(trials)
    curves = [{k: [] for k in ("total", "multitask", "contrastive", "gd")} for _ in trials]
    for epoch in range(tcfg.epochs):
        te = time.perf_counter()
        stack.set_epoch_lrs(epoch)
        lrs = {f"lr_{g['name']}": g["lr"] for g in stack.groups}
        sums = torch.zeros(k_all, 4, dtype=torch.float64, device=device)
        batches = [[torch.from_numpy(train_idx)[b] for b in batch_indices(len(train_idx), tcfg.batch_size, g)]
                   for (_, train_idx, _), g in zip(folds, gens, strict=True)]
        for s in range(max(len(b) for b in batches)):
            here = [b[s] if s < len(b) else None for b in batches]
            sizes = sorted({len(x) for x in here if x is not None}, reverse=True)
            for size in sizes:
                on = [x is not None and len(x) == size for x in here]
                stand_in = next(x for x, o in zip(here, on, strict=True) if o)
                idx = torch.stack([x if o else stand_in for x, o in zip(here, on, strict=True)]).to(device)
                active = None if all(on) else torch.tensor(on, dtype=torch.float32, device=device)
                terms = stack.step(tr.vis[idx], tr.tok[idx], tr.labels[idx], tr.glob_idx[idx], active)
                sums += terms.double() if active is None else terms.double() * active.double().unsqueeze(1)
        for k, (curve, v) in enumerate(zip(curves, sums.tolist(), strict=True)):
            for name, x in zip(curve, v, strict=True):
                curve[name].append(x / len(batches[k]))
            if on_epoch is not None:
                on_epoch({"epoch": epoch + 1, "epochs": tcfg.epochs, **{n: c[-1] for n, c in curve.items()}, **lrs,
                          "seconds": time.perf_counter() - te, "fold": k, "test_subject": folds[k][0]})
    t_train = time.perf_counter() - t

    out = []
    for k, (trial, model, (s, train_idx, test_idx)) in enumerate(zip(trials, stack.unstack(), folds, strict=True)):
        f = Fitted(model=model, prefix=prefix, device=device, aus=aus, train_idx=train_idx, labels=tr.labels_np,
                   vis=tr.vis, tok=tr.tok, au_txt=au_txt, emo_txt=emo_txt, emo_class=emo_class, curve=curves[k],
                   weights=stack.w, timings={"prefix_s": t_prefix, "build_s": t_build, "train_s": t_train})
        r = fold_result(trial, f, data, test_idx, s, prefix, t_start)
        r.extras["stacked_folds"] = k_all
        out.append(r)
    return out
