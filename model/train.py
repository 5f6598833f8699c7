"""`train_fold`: train Micro-AU CLIP on all subjects but one and evaluate the last epoch's model on it.

This is exactly what every sweep trial runs and what `microau-sweep fold` runs in-process. No choice of
epoch or threshold is made on the test subject: the model after the last epoch is evaluated and an AU
is active where its 2-way softmax puts more mass on "active".
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from model import losses
from model.config import with_dataset_defaults
from model.lsi import au_token_indices, landmark_groups
from model.mer import mer_class_scores, mer_scores
from model.net import MicroAUCLIP, TextTensors, as_tensor
from model.prefix import Prefix, compute_prefix
from model.result import FoldResult
from model.text import MER_CLASSES
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


def _weights(spec) -> Dict[str, float]:
    reader = getattr(spec, "reader", None)
    t = with_dataset_defaults(spec.training, reader)
    for k in ("alpha", "beta"):
        if getattr(t, k) is None:
            raise FoldError(f"training.{k} is not set and reader {reader!r} has no default; set training.{k}")
    return {"alpha": float(t.alpha), "beta": float(t.beta)}


def _batches(n: int, batch_size: int, gen: torch.Generator) -> List[torch.Tensor]:
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
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=t.momentum, weight_decay=t.weight_decay)
    return torch.optim.AdamW(groups, weight_decay=t.weight_decay)


def train_fold(spec, data, test_subject: str, prefix: Optional[Prefix] = None,
               on_epoch: Optional[Callable[[Dict], None]] = None) -> FoldResult:
    """Train on every subject of `data` except `test_subject`, evaluate on `test_subject`.

    spec: has .reader, .aus, .seed, .model (ModelConfig), .training (TrainConfig) - a TrialConfig.
    prefix: from compute_prefix(spec.model, data, spec.aus); computed here when None.
    on_epoch: called after each epoch with {epoch, epochs, total, multitask, contrastive, gd, lr_*, seconds}.
    """
    t_start = time.perf_counter()
    mcfg, tcfg = spec.model, spec.training
    aus = [int(a) for a in spec.aus]
    device = resolve_device(tcfg.device)
    precision = resolve_precision(tcfg.precision, device)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    w = _weights(spec)
    test_subject = str(test_subject)
    subjects = np.asarray([str(s) for s in data.subjects])
    test_idx = np.flatnonzero(subjects == test_subject)
    train_idx = np.flatnonzero(subjects != test_subject)
    if len(test_idx) == 0:
        raise FoldError(f"dataset {data.reader} ({data.key}): no sample of test subject {test_subject!r}; "
                        f"its subjects are {sorted(set(subjects.tolist()))}")
    if len(train_idx) < 2:
        raise FoldError(f"dataset {data.reader}: fewer than 2 training samples when {test_subject} is held out")

    # frozen prefix: given (shared by the sweep) or computed now
    t0 = time.perf_counter()
    if prefix is None:
        prefix = compute_prefix(mcfg, data, aus, device=str(device))
    else:
        diff = prefix.matches(mcfg, data, aus)
        if diff:
            raise FoldError(f"the prefix passed to train_fold was computed for another {diff}; "
                            f"compute it with compute_prefix(spec.model, data, spec.aus)")
    if list(prefix.sample_ids) != list(data.sample_ids):
        raise FoldError("the prefix's samples are not the dataset's; compute the prefix from this dataset")
    t_prefix = time.perf_counter() - t0

    # tensors on the device
    t0 = time.perf_counter()
    labels_np = data.labels(aus).astype(np.int64)
    groups = landmark_groups(aus, mcfg.landmark_groups)
    tok = au_token_indices(data.landmarks, groups, prefix.grid, prefix.image, data.sample_ids)
    vis = as_tensor(prefix.visual, device)
    labels = torch.from_numpy(labels_np).to(device)
    tok = [torch.from_numpy(t).to(device) for t in tok]
    au_txt = TextTensors(prefix.au_texts, device)
    emo_txt = TextTensors(prefix.emotion_texts, device)
    emo_class = as_tensor(prefix.emotion_class, device)
    glob_txt = TextTensors(prefix.global_texts, device)
    glob_idx = as_tensor(prefix.global_index, device)

    # the model and its optimiser, seeded
    torch.manual_seed(spec.seed)
    model = MicroAUCLIP(mcfg, len(aus), prefix).to(device)
    opt = _optimizer(model, tcfg)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[tcfg.lr_step_epoch], gamma=tcfg.lr_gamma)
    gen = torch.Generator().manual_seed(spec.seed)
    t_build = time.perf_counter() - t0

    # train: everything stays on the device for the whole fold; each epoch's order (drawn on the CPU
    # generator) is copied over once, and the loss sums are read back once per epoch, not per step
    t0 = time.perf_counter()
    train_t = torch.from_numpy(train_idx)
    curve: Dict[str, List[float]] = {k: [] for k in ("total", "multitask", "contrastive", "gd")}
    for epoch in range(tcfg.epochs):
        te = time.perf_counter()
        model.train()
        sums = torch.zeros(len(curve), dtype=torch.float64, device=device)  # as Python floats would add
        batches = _batches(len(train_idx), tcfg.batch_size, gen)
        order = train_t[torch.cat(batches)].to(device)
        for idx in torch.split(order, [len(b) for b in batches]):
            with autocast(device, precision):
                terms = step_losses(model, mcfg, vis[idx], [t[idx] for t in tok], labels[idx], au_txt,
                                    glob_txt, glob_idx[idx])
                loss = losses.total_loss(terms["multitask"], terms["contrastive"], terms["gd"], w["alpha"],
                                         w["beta"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += torch.stack([loss.detach(), terms["multitask"].detach(), terms["contrastive"].detach(),
                                 terms["gd"].detach()]).double()
        lrs = {f"lr_{g.get('name', i)}": g["lr"] for i, g in enumerate(opt.param_groups)}  # this epoch's
        sched.step()
        for k, v in zip(curve, sums.tolist()):
            curve[k].append(v / len(batches))
        if on_epoch is not None:
            on_epoch({"epoch": epoch + 1, "epochs": tcfg.epochs, **{k: v[-1] for k, v in curve.items()},
                      **lrs, "seconds": time.perf_counter() - te})
    t_train = time.perf_counter() - t0

    # evaluate the last epoch's model on the held-out subject
    t0 = time.perf_counter()
    model.eval()
    with torch.no_grad():
        ti = torch.from_numpy(test_idx).to(device)
        with autocast(device, precision):
            out = model(vis[ti], [t[ti] for t in tok])
        out = {k: _fp32(v) for k, v in out.items()}  # what is kept and scored is fp32 whatever ran
        probs = torch.softmax(out["logits"], dim=-1)[..., 1]
        text_scores = mer_scores(out["final"], model.text_features(emo_txt))  # Eq. 13, per label text
        scores, best_text = mer_class_scores(text_scores, emo_class, len(MER_CLASSES))  # best text per class
        au_t = F.normalize(model.text_features(au_txt), dim=-1).view(len(aus), 2, -1)
        text_sim = (au_t[:, 0] * au_t[:, 1]).sum(-1)  # Table III TextSi: cos(positive, negative) per AU
    t_eval = time.perf_counter() - t0

    return FoldResult(
        test_subject=test_subject, seed=int(spec.seed), aus=aus,
        sample_ids=[data.sample_ids[i] for i in test_idx], subjects=[str(data.subjects[i]) for i in test_idx],
        probs=probs.float().cpu().numpy(), labels=labels_np[test_idx].astype(np.uint8),
        features=out["final"].float().cpu().numpy(), mer_classes=list(MER_CLASSES),
        mer_scores=scores.float().cpu().numpy(), mer_labels=[data.mer[i] for i in test_idx],
        loss_curve=curve,
        timings={"prefix_s": t_prefix, "build_s": t_build, "train_s": t_train, "eval_s": t_eval,
                 "total_s": time.perf_counter() - t_start},
        n_train=int(len(train_idx)),
        extras={"text_similarity": {str(a): float(s) for a, s in zip(aus, text_sim.cpu().tolist())},
                # attention of the evaluated model per test sample: GDA's W_d (n, A) and each AU's PTA
                # weights over its landmark tokens (n, N_L), for plots like the paper's Fig. 5
                "w_d": None if out["w_d"] is None else out["w_d"].cpu().tolist(),
                "pta": {str(a): w.cpu().tolist() for a, w in zip(aus, out["pta"]) if w is not None},
                # Eq. 13's label texts as (class, text) and each test sample's best text (index)
                "mer_texts": [[MER_CLASSES[c], t] for c, t in zip(prefix.emotion_class.tolist(),
                                                                 prefix.emotion_texts.texts)],
                "mer_best_text": best_text.cpu().tolist(),
                "prefix_key": prefix.key, "device": str(device), "precision": precision, "alpha": w["alpha"], "beta": w["beta"]},
    )


def loso(spec, data, prefix: Optional[Prefix] = None, subjects: Optional[Sequence[str]] = None,
         on_fold: Optional[Callable[[FoldResult], None]] = None,
         on_epoch: Optional[Callable[[Dict], None]] = None) -> List[FoldResult]:
    """The LOSO loop, written once: `train_fold` with each subject of `subjects` (default: every subject
    of `data`, sorted) held out in turn, on one frozen prefix (computed here when None). `on_fold(result)`
    after each fold. The tests, bench/ and `microau-sweep fold` (one subject) call it; a sweep runs its
    folds as separate Ray trials through the same `train_fold`."""
    if prefix is None:
        prefix = compute_prefix(spec.model, data, [int(a) for a in spec.aus],
                                device=str(resolve_device(spec.training.device)))
    out = []
    for s in (sorted(set(map(str, data.subjects))) if subjects is None else subjects):
        out.append(train_fold(spec, data, s, prefix=prefix, on_epoch=on_epoch))
        if on_fold is not None:
            on_fold(out[-1])
    return out


def step_losses(model: MicroAUCLIP, mcfg, vis: torch.Tensor, tok: Sequence[torch.Tensor], y: torch.Tensor,
                au_txt: TextTensors, glob_txt: TextTensors, glob_rows: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Forward one batch -> the three terms of Eq. 12 (each a scalar tensor; 0 where switched off)."""
    out = model(vis, tok)
    zero = out["logits"].new_zeros(())
    mt = losses.multitask_loss(out["logits"], y)
    gd = losses.gd_loss(out["w_d"], y) if out["w_d"] is not None else zero  # Eq. 8 needs GDA's W_d
    if mcfg.contrastive in ("miaucl", "local_origcl"):
        t = model.text_features(au_txt).view(len(tok), 2, -1)  # (N, 2, d): [positive, negative]
        n = torch.arange(len(tok), device=y.device)
        au_text = t[n.unsqueeze(0), 1 - y]  # (B, N, d): the text of each sample's own label
        fn = losses.miauc_loss if mcfg.contrastive == "miaucl" else losses.local_origcl_loss
        cl = fn(out["final"], au_text, y, model.logit_scale)
    elif mcfg.contrastive == "global_origcl":
        rows, inv = torch.unique(glob_rows, return_inverse=True)
        cl = losses.global_origcl_loss(out["global"], model.text_features(glob_txt, rows)[inv], model.logit_scale)
    else:
        cl = zero
    return {"multitask": mt, "contrastive": cl, "gd": gd, "out": out}
