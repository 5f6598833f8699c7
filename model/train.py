"""`train_fold`: train Micro-AU CLIP on all subjects but one (`fit`) and evaluate the last epoch's model on
it (`evaluate`); `cross_dataset_fold` trains on one whole dataset and evaluates on another through the same
`train_eval`.

This is exactly what every sweep trial runs and what `microau-sweep fold` runs in-process; a model trained
on a whole dataset (`model.inference.train_model`) runs the same `fit` and predicts with `evaluate`. No
choice of epoch or threshold is made on the test subject: the model after the last epoch is evaluated
and an AU is active where its 2-way softmax puts more mass on "active".
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from model import losses
from model.config import with_dataset_defaults
from model.lsi import au_token_indices, landmark_groups, pad_token_indices, token_counts
from model.mer import mer_class_scores, mer_scores
from model.net import MicroAUCLIP, TextTensors, as_tensor
from model.prefix import Prefix, compute_prefix
from model.result import FoldResult, f32_list
from model.text import MER_CLASSES
from model.trial import TrialLike
from preprocessing.errors import MicroAUError


class FoldError(MicroAUError, ValueError):
    """The fold cannot run as configured; the message says what to change."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FoldError(f"training.device: {name!r} asked for, but torch sees no CUDA device here; "
                        f"use device: auto or cpu")
    return dev


def resolve_precision(name: str, device: torch.device) -> str:
    """'auto' -> 'bf16' on a CUDA device that supports bfloat16, else 'fp32'; 'fp32' / 'bf16' as given."""
    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return name


def autocast(device: torch.device, precision: str):
    """The forward passes' context: bfloat16 autocast for 'bf16' (the parameters, their gradients and the
    optimiser stay fp32: autocast casts weights per op, and softmax, the losses and the norms run in
    fp32), nothing for 'fp32'."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _fp32(v):
    if isinstance(v, torch.Tensor):
        return v.float()
    if isinstance(v, list):
        return [_fp32(x) for x in v]
    return v


def loss_weights(trial: TrialLike) -> dict[str, float]:
    reader = getattr(trial, "reader", None)
    t = with_dataset_defaults(trial.training, reader)
    for k in ("alpha", "beta"):
        if getattr(t, k) is None:
            raise FoldError(f"training.{k} is not set and reader {reader!r} has no default; set training.{k}")
    return {"alpha": float(t.alpha), "beta": float(t.beta)}


def batch_indices(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """A shuffled epoch; a last batch of one sample joins the one before (contrastive needs B >= 2)."""
    perm = torch.randperm(n, generator=gen)
    out = list(torch.split(perm, batch_size))
    if len(out) > 1 and len(out[-1]) == 1:
        last = out.pop()  # popped first: out[-1] is then the batch it joins
        out[-1] = torch.cat([out[-1], last])
    return out


def _optimizer(model: MicroAUCLIP, t) -> torch.optim.Optimizer:
    groups = [{"params": model.encoder_parameters(), "lr": t.lr_encoder, "name": "encoder"},
              {"params": model.head_parameters(), "lr": t.lr_head, "name": "head"}]
    groups = [g for g in groups if g["params"]]
    # foreach: one multi-tensor operation per update stage instead of one per parameter tensor (on a GPU, a
    # handful of kernel launches rather than ~3 per tensor); the arithmetic per tensor is the same
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=t.momentum, weight_decay=t.weight_decay, foreach=True)
    return torch.optim.AdamW(groups, weight_decay=t.weight_decay, foreach=True)


def train_fold(trial: TrialLike, data, test_subject: str, prefix: Prefix | None = None,
               on_epoch: Callable[[dict], None] | None = None) -> FoldResult:
    """Train on every subject of `data` except `test_subject`, evaluate on `test_subject` (LOSO).

    trial: a `model.trial.TrialLike` (.reader, .aus, .seed, .model, .training): the orchestrator's TrialConfig.
    prefix: from compute_prefix(trial.model, data, trial.aus); computed here when None.
    on_epoch: called after each epoch with {epoch, epochs, total, multitask, contrastive, gd, lr_*, seconds}.
    """
    test_subject = str(test_subject)
    subjects = np.asarray([str(s) for s in data.subjects])
    test_idx = np.flatnonzero(subjects == test_subject)
    train_idx = np.flatnonzero(subjects != test_subject)
    if len(test_idx) == 0:
        raise FoldError(f"dataset {data.reader} ({data.key}): no sample of test subject {test_subject!r}; "
                        f"its subjects are {sorted(set(subjects.tolist()))}")
    if len(train_idx) < 2:
        raise FoldError(f"dataset {data.reader}: fewer than 2 training samples when {test_subject} is held out")
    return train_eval(trial, data, train_idx, data, test_idx, test_subject, prefix, prefix, on_epoch)


def cross_dataset_fold(trial: TrialLike, train_data, test_data, train_prefix: Prefix | None = None,
                       test_prefix: Prefix | None = None, on_epoch: Callable[[dict], None] | None = None,
                       label: str = "all") -> FoldResult:
    """Train on every sample of `train_data`, evaluate on every sample of `test_data` (cross-dataset
    protocol, docs/protocol.md), on the AUs `trial.aus`, which both datasets' labels are read for by AU
    number. alpha/beta default to the paper's values for `trial.reader` (the training dataset's).

    train_prefix / test_prefix: each dataset's frozen prefix for the same backbone and AUs; computed here
    when None. `label` is the FoldResult's `test_subject` (the test set is every subject of `test_data`;
    each sample keeps its own subject in `subjects`, so the bootstrap resamples the test subjects).
    """
    if len(train_data.sample_ids) < 2:
        raise FoldError(f"dataset {train_data.reader} ({train_data.key}): fewer than 2 training samples")
    if len(test_data.sample_ids) == 0:
        raise FoldError(f"dataset {test_data.reader} ({test_data.key}): no test sample")
    result = train_eval(trial, train_data, np.arange(len(train_data.sample_ids)), test_data,
                        np.arange(len(test_data.sample_ids)), str(label), train_prefix, test_prefix, on_epoch)
    result.extras.update(train_data=train_data.key, test_data=test_data.key)
    return result


def prefix_of(prefix: Prefix | None, mcfg, data, aus, device) -> Prefix:
    """`prefix` checked against (config, data, AUs), or computed now when None."""
    if prefix is None:
        return compute_prefix(mcfg, data, aus, device=str(device))
    diff = prefix.matches(mcfg, data, aus)
    if diff:
        raise FoldError(f"the prefix passed for dataset {data.reader} ({data.key}) was computed for another "
                        f"{diff}; compute it with compute_prefix(trial.model, data, trial.aus)")
    if list(prefix.sample_ids) != list(data.sample_ids):
        raise FoldError("the prefix's samples are not the dataset's; compute the prefix from this dataset")
    return prefix


def _check_same_backbone(a: Prefix, b: Prefix) -> None:
    """Training and test prefixes must come from one backbone, AU list and texts (only the data differs)."""
    diff = sorted(k for k in set(a.identity) | set(b.identity)
                  if k != "data" and a.identity.get(k) != b.identity.get(k))
    if diff or a.grid != b.grid:
        raise FoldError(f"the training and test prefixes differ in {', '.join(diff) or 'patch grid'}; compute "
                        f"both with the same trial.model and trial.aus")


def step_inputs(data, prefix: Prefix, aus, groups, device):
    """A dataset's model inputs on the device: AU labels (numpy, and as a tensor), frozen visual prefix,
    landmark token indices (Eq. 1) of every AU in one (S, N, max N_L) tensor padded with -1, each sample's
    global-text row."""
    labels_np = data.labels(aus).astype(np.int64)
    tok = pad_token_indices(au_token_indices(data.landmarks, groups, prefix.grid, prefix.image, data.sample_ids))
    return SimpleNamespace(labels_np=labels_np, labels=torch.from_numpy(labels_np).to(device),
                           vis=as_tensor(prefix.visual, device), tok=torch.from_numpy(tok).to(device),
                           glob_idx=as_tensor(prefix.global_index, device))


@dataclass
class Fitted:
    """What `fit` returns: the model after the last epoch (eval mode) and the tensors it was trained with,
    on the training device."""
    model: MicroAUCLIP
    prefix: Prefix
    device: torch.device
    aus: list[int]
    train_idx: np.ndarray
    labels: np.ndarray  # int64 (S, A): every sample's AU labels (only train_idx's were read)
    vis: torch.Tensor  # frozen visual prefix of every sample
    tok: torch.Tensor  # (S, N, max N_L): every sample's landmark token indices per AU (Eq. 1), -1 padded
    au_txt: TextTensors
    emo_txt: TextTensors
    emo_class: torch.Tensor
    curve: dict[str, list[float]]  # each term of Eq. 12 per epoch
    weights: dict[str, float]  # alpha, beta
    timings: dict[str, float]  # prefix_s, build_s, train_s

    def emotion_features(self) -> torch.Tensor:
        """Eq. 13's label-text features of the trained model (R, d)."""
        with torch.no_grad():
            return self.model.text_features(self.emo_txt)


def fit(trial: TrialLike, data, train_idx: Sequence[int], prefix: Prefix | None = None,
        on_epoch: Callable[[dict], None] | None = None) -> Fitted:
    """Train Micro-AU CLIP on the samples `train_idx` of `data` for training.epochs; the one training
    loop, run by every LOSO fold and cross-dataset unit (`train_eval`) and by a model trained on a whole
    dataset (`model.inference.train_model`). Reads the AU labels of `train_idx` only.

    trial: a `model.trial.TrialLike` (.reader, .aus, .seed, .model, .training): the orchestrator's TrialConfig.
    prefix: from compute_prefix(trial.model, data, trial.aus); computed here when None.
    on_epoch: called after each epoch with {epoch, epochs, total, multitask, contrastive, gd, lr_*, seconds}.
    """
    mcfg, tcfg = trial.model, trial.training
    aus = [int(a) for a in trial.aus]
    device = resolve_device(tcfg.device)
    precision = resolve_precision(tcfg.precision, device)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    w = loss_weights(trial)
    train_idx = np.asarray(train_idx, dtype=np.int64)
    if len(train_idx) < 2:
        raise FoldError(f"dataset {data.reader} ({data.key}): {len(train_idx)} training sample(s); training "
                        f"needs at least 2")

    # frozen prefix: given (shared by the sweep) or computed now
    t0 = time.perf_counter()
    prefix = prefix_of(prefix, mcfg, data, aus, device)
    t_prefix = time.perf_counter() - t0

    # tensors on the device
    t0 = time.perf_counter()
    groups = landmark_groups(aus, mcfg.landmark_groups)
    tr = step_inputs(data, prefix, aus, groups, device)
    au_txt = TextTensors(prefix.au_texts, device)
    emo_txt = TextTensors(prefix.emotion_texts, device)
    emo_class = as_tensor(prefix.emotion_class, device)
    glob_txt = TextTensors(prefix.global_texts, device)

    # the model and its optimiser, seeded
    torch.manual_seed(trial.seed)
    model = MicroAUCLIP(mcfg, len(aus), prefix).to(device)
    opt = _optimizer(model, tcfg)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[tcfg.lr_step_epoch], gamma=tcfg.lr_gamma)
    gen = torch.Generator().manual_seed(trial.seed)
    t_build = time.perf_counter() - t0

    losses_of = step_function(model, mcfg, au_txt, glob_txt, w, device, precision, tcfg.compile)

    # train: everything stays on the device for the whole fold; each epoch's order (drawn on the CPU
    # generator) is copied over once, and the loss sums are read back once per epoch, not per step
    t0 = time.perf_counter()
    train_t = torch.from_numpy(train_idx)
    curve: dict[str, list[float]] = {k: [] for k in ("total", "multitask", "contrastive", "gd")}
    for epoch in range(tcfg.epochs):
        te = time.perf_counter()
        model.train()
        sums = torch.zeros(len(curve), dtype=torch.float64, device=device)  # as Python floats would add
        batches = batch_indices(len(train_idx), tcfg.batch_size, gen)
        order = train_t[torch.cat(batches)].to(device)
        for idx in torch.split(order, [len(b) for b in batches]):
            loss, terms = losses_of(tr.vis[idx], tr.tok[idx], tr.labels[idx], tr.glob_idx[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += terms.double()
        lrs = {f"lr_{g.get('name', i)}": g["lr"] for i, g in enumerate(opt.param_groups)}  # this epoch's
        sched.step()
        for k, v in zip(curve, sums.tolist(), strict=True):
            curve[k].append(v / len(batches))
        if on_epoch is not None:
            on_epoch({"epoch": epoch + 1, "epochs": tcfg.epochs, **{k: v[-1] for k, v in curve.items()},
                      **lrs, "seconds": time.perf_counter() - te})
    t_train = time.perf_counter() - t0

    model.eval()
    return Fitted(model=model, prefix=prefix, device=device, aus=aus, train_idx=train_idx, labels=tr.labels_np,
                  vis=tr.vis, tok=tr.tok, au_txt=au_txt, emo_txt=emo_txt, emo_class=emo_class, curve=curve,
                  weights=w, timings={"prefix_s": t_prefix, "build_s": t_build, "train_s": t_train})


def evaluate(model: MicroAUCLIP, vis: torch.Tensor, tok: torch.Tensor | Sequence[torch.Tensor],
             emotion_features: torch.Tensor,
             emotion_class: torch.Tensor, precision: str = "fp32") -> dict[str, torch.Tensor]:
    """The trained model on samples (frozen visual prefix `vis`, token indices `tok`: (S, N, max N_L) padded
    with -1, or per AU (S, N_L)): the model's outputs
    (final AU features, W_d, PTA weights, logits) plus `probs` (P(active) per AU: the 2-way softmax),
    `mer_scores` (per MER class, the best Eq. 13 score of its label texts) and `best_text`. What a LOSO
    fold evaluates and what `model.inference` predicts with. `precision` ('fp32' | 'bf16', see
    `resolve_precision`) is the forward pass's; what is returned is fp32 either way."""
    model.eval()
    with torch.no_grad():
        with autocast(vis.device, precision):
            out = model(vis, tok)
        out = {k: _fp32(v) for k, v in out.items()}  # what is kept and scored is fp32 whatever ran
        probs = torch.softmax(out["logits"], dim=-1)[..., 1]
        text_scores = mer_scores(out["final"], emotion_features)  # Eq. 13, per label text
        scores, best_text = mer_class_scores(text_scores, emotion_class, len(MER_CLASSES))  # best text per class
    return {**out, "probs": probs, "mer_scores": scores, "best_text": best_text}


def train_eval(trial: TrialLike, train_data, train_idx, test_data, test_idx, test_subject: str,
               train_prefix: Prefix | None = None, test_prefix: Prefix | None = None,
               on_epoch: Callable[[dict], None] | None = None) -> FoldResult:
    """The one training path: `fit` on the samples `train_idx` of `train_data`, `evaluate` the last epoch's
    model on the samples `test_idx` of `test_data`. LOSO (`train_fold`) passes one dataset and one prefix
    twice; the cross-dataset protocol (`cross_dataset_fold`) two datasets, each with its own prefix."""
    t_start = time.perf_counter()
    mcfg = trial.model
    aus = [int(a) for a in trial.aus]
    device = resolve_device(trial.training.device)
    test_idx = np.asarray(test_idx, dtype=np.int64)

    # frozen prefixes: given (shared by the sweep) or computed now
    t0 = time.perf_counter()
    shared = test_data is train_data and (test_prefix is None or test_prefix is train_prefix)
    train_prefix = prefix_of(train_prefix, mcfg, train_data, aus, device)
    test_prefix = train_prefix if shared else prefix_of(test_prefix, mcfg, test_data, aus, device)
    if not shared:
        _check_same_backbone(train_prefix, test_prefix)
    t_test_prefix = time.perf_counter() - t0

    f = fit(trial, train_data, train_idx, prefix=train_prefix, on_epoch=on_epoch)
    return fold_result(trial, f, test_data, test_idx, test_subject, test_prefix, t_start, t_test_prefix)


def fold_result(trial: TrialLike, f: Fitted, test_data, test_idx, test_subject: str, test_prefix: Prefix,
                t_start: float, t_test_prefix: float = 0.0) -> FoldResult:
    """`evaluate` the trained model `f` (from `fit`, or one fold of `model.stacked.train_folds`) on the
    samples `test_idx` of `test_data` -> the FoldResult. `test_prefix` is `f.prefix` when the test samples
    come from the training data; `t_start` is when the fold started (for `timings.total_s`)."""
    mcfg = trial.model
    aus = [int(a) for a in trial.aus]
    test_idx = np.asarray(test_idx, dtype=np.int64)
    shared = test_prefix is f.prefix
    train_prefix = f.prefix
    model, w = f.model, f.weights

    # evaluate the last epoch's model on the test samples
    t0 = time.perf_counter()
    if shared:
        te, emo_txt, emo_class = SimpleNamespace(labels_np=f.labels, vis=f.vis, tok=f.tok), f.emo_txt, f.emo_class
    else:
        te = step_inputs(test_data, test_prefix, aus, landmark_groups(aus, mcfg.landmark_groups), f.device)
        emo_txt = TextTensors(test_prefix.emotion_texts, f.device)
        emo_class = as_tensor(test_prefix.emotion_class, f.device)
    ti = torch.from_numpy(test_idx).to(f.device)
    with torch.no_grad():
        emo_feat = model.text_features(emo_txt)
    precision = resolve_precision(trial.training.precision, f.device)
    out = evaluate(model, te.vis[ti], te.tok[ti], emo_feat, emo_class, precision)
    probs, scores, best_text = out["probs"], out["mer_scores"], out["best_text"]
    with torch.no_grad():
        au_t = F.normalize(model.text_features(f.au_txt), dim=-1).view(len(aus), 2, -1)
        text_sim = (au_t[:, 0] * au_t[:, 1]).sum(-1)  # Table III TextSi: cos(positive, negative) per AU
    t_eval = time.perf_counter() - t0

    return FoldResult(
        test_subject=test_subject, seed=int(trial.seed), aus=aus,
        sample_ids=[test_data.sample_ids[i] for i in test_idx],
        subjects=[str(test_data.subjects[i]) for i in test_idx],
        probs=probs.float().cpu().numpy(), labels=te.labels_np[test_idx].astype(np.uint8),
        features=out["final"].float().cpu().numpy(), mer_classes=list(MER_CLASSES),
        mer_scores=scores.float().cpu().numpy(), mer_labels=[test_data.mer[i] for i in test_idx],
        loss_curve=f.curve,
        timings={**f.timings, "prefix_s": f.timings["prefix_s"] + t_test_prefix, "eval_s": t_eval,
                 "total_s": time.perf_counter() - t_start},
        n_train=int(len(f.train_idx)),
        extras={"text_similarity": {str(a): float(s) for a, s in zip(aus, text_sim.cpu().tolist(), strict=True)},
                # attention of the evaluated model per test sample, for the paper's Fig. 5 (float32,
                # shortest decimals): GDA's W_d (n, A); each AU's PTA weights (n, N_L) over the patch
                # tokens `pta_tokens` (n, N_L) of its Table I landmarks (no `pta_tokens` without LSI: the
                # weights are then over all h*w tokens, row-major); the test samples' apex landmarks
                # (n, 68, 2) in the flow image's pixels; the landmark groups and the grid of Eq. 1
                **_attention(out, aus, landmark_groups(aus, mcfg.landmark_groups), te.tok[ti],
                             test_data.landmarks[test_idx], test_prefix, mcfg),
                # Eq. 13's label texts as (class, text) and each test sample's best text (index)
                "mer_texts": [[MER_CLASSES[c], t] for c, t in zip(test_prefix.emotion_class.tolist(),
                                                                 test_prefix.emotion_texts.texts, strict=True)],
                "mer_best_text": best_text.cpu().tolist(),
                "prefix_key": train_prefix.key, "device": str(f.device), "precision": precision,
                "alpha": w["alpha"], "beta": w["beta"]},
    )


def _attention(out: dict, aus: Sequence[int], groups: Sequence[Sequence[int]], tok: torch.Tensor,
               landmarks: np.ndarray, prefix: Prefix, mcfg) -> dict:
    """What FoldResult.extras keeps of the evaluated model's attention (see train_eval): each AU's PTA
    weights over its own N_L tokens (the padding of the batched layout cut off)."""
    counts = token_counts(tok) if mcfg.lsi else [None] * len(aus)
    w_all = None if out["pta"] is None else out["pta"].float().cpu().numpy()
    pta = {} if w_all is None else {str(a): w_all[:, j, :c] for j, (a, c) in enumerate(zip(aus, counts, strict=True))}
    tok_np = tok.cpu().numpy()
    return {"w_d": None if out["w_d"] is None else f32_list(out["w_d"].float().cpu().numpy()),
            "pta": {a: f32_list(w) for a, w in pta.items()},
            "pta_tokens": ({str(a): tok_np[:, j, :c].tolist() for j, (a, c) in enumerate(zip(aus, counts, strict=True))
                            if str(a) in pta} if mcfg.lsi else None),
            "landmarks": f32_list(np.round(landmarks, 2)),  # 0.01 px: dlib's are whole frame pixels
            "landmark_groups": {str(a): [int(i) for i in g] for a, g in zip(aus, groups, strict=True)},
            "token_grid": {"grid": [int(v) for v in prefix.grid], "image": [int(v) for v in prefix.image]}}


def loso(trial: TrialLike, data, prefix: Prefix | None = None, subjects: Sequence[str] | None = None,
         on_fold: Callable[[FoldResult], None] | None = None,
         on_epoch: Callable[[dict], None] | None = None) -> list[FoldResult]:
    """The LOSO loop, written once: `train_fold` with each subject of `subjects` (default: every subject
    of `data`, sorted) held out in turn, on one frozen prefix (computed here when None). `on_fold(result)`
    after each fold. The tests, bench/ and `microau-sweep fold` (one subject) call it; a sweep runs its
    folds as separate Ray trials through the same `train_fold`."""
    if prefix is None:
        prefix = compute_prefix(trial.model, data, [int(a) for a in trial.aus],
                                device=str(resolve_device(trial.training.device)))
    out = []
    for s in (sorted(set(map(str, data.subjects))) if subjects is None else subjects):
        out.append(train_fold(trial, data, s, prefix=prefix, on_epoch=on_epoch))
        if on_fold is not None:
            on_fold(out[-1])
    return out


def step_function(model: MicroAUCLIP, mcfg, au_txt: TextTensors, glob_txt: TextTensors, w: dict[str, float],
                  device: torch.device, precision: str, compile: bool = False):
    """The forward half of a training step: (vis, tok, labels, global-text rows) of a batch -> the Eq. 12
    loss and, detached, its value and terms [total, multi-task, contrastive, GD] (4,). compile=True wraps
    it in torch.compile ('reduce-overhead', i.e. CUDA graphs, on CUDA; the default mode elsewhere); its
    backward is compiled with it."""

    def losses_of(vis, tok, y, glob_rows):
        with autocast(device, precision):
            terms = step_losses(model, mcfg, vis, tok, y, au_txt, glob_txt, glob_rows, unique_rows=not compile)
            loss = losses.total_loss(terms["multitask"], terms["contrastive"], terms["gd"], w["alpha"], w["beta"])
        return loss, torch.stack([loss, terms["multitask"], terms["contrastive"], terms["gd"]]).detach()

    if not compile:
        return losses_of
    return torch.compile(losses_of, mode="reduce-overhead" if device.type == "cuda" else None)


def step_losses(model: MicroAUCLIP, mcfg, vis: torch.Tensor, tok: torch.Tensor, y: torch.Tensor,
                au_txt: TextTensors, glob_txt: TextTensors, glob_rows: torch.Tensor,
                unique_rows: bool = True) -> dict[str, torch.Tensor]:
    """Forward one batch (token indices (B, N, max N_L), `pad_token_indices`) -> the three terms of Eq. 12
    (each a scalar tensor; 0 where switched off). unique_rows=False runs global OrigCL's text tail on
    every sample's row rather than once per distinct row (same features; no data-dependent shape, for
    vmap and torch.compile)."""
    out = model(vis, tok)
    zero = out["logits"].new_zeros(())
    mt = losses.multitask_loss(out["logits"], y)
    gd = losses.gd_loss(out["w_d"], y) if out["w_d"] is not None else zero  # Eq. 8 needs GDA's W_d
    if mcfg.contrastive in ("miaucl", "local_origcl"):
        t = model.text_features(au_txt).view(model.n_aus, 2, -1)  # (N, 2, d): [positive, negative]
        n = torch.arange(model.n_aus, device=y.device)
        au_text = t[n.unsqueeze(0), 1 - y]  # (B, N, d): the text of each sample's own label
        if mcfg.contrastive == "miaucl":
            cl = losses.miauc_loss(out["final"], au_text, y, model.logit_scale, mcfg.miaucl_targets)
        else:
            cl = losses.local_origcl_loss(out["final"], au_text, y, model.logit_scale)
    elif mcfg.contrastive == "global_origcl":
        if unique_rows:
            rows, inv = torch.unique(glob_rows, return_inverse=True)
            glob_feat = model.text_features(glob_txt, rows)[inv]
        else:
            glob_feat = model.text_features(glob_txt, glob_rows)
        cl = losses.global_origcl_loss(out["global"], glob_feat, model.logit_scale)
    else:
        cl = zero
    return {"multitask": mt, "contrastive": cl, "gd": gd, "out": out}
