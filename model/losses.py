"""All training losses, as siblings (paper III-C/D, Eq. 8-12; Table VIII baselines).

The three contrastive losses differ only in their target matrix and in which features they compare:
  MiAUCL       per AU: AU visual features vs each sample's own label text, same-label targets (Eq. 9-11),
               read literally (0/1, unnormalised) by default; `model.miaucl_targets` names the others
  local OrigCL per AU: same features, CLIP's diagonal targets
  global OrigCL       global visual feature vs one text of all active AUs, diagonal targets
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def multitask_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-task loss: sum over AUs of the 2-way cross-entropy (batch mean). logits (B,N,2), labels (B,N).
    One cross-entropy over every (sample, AU): its sum over both axes divided by B."""
    return F.cross_entropy(logits.transpose(1, 2), labels.long(), reduction="sum") / logits.shape[0]


def gd_loss(w_d: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 8: L_GD = (1/N) ||W_d - Y||^2 per sample, averaged over the batch. w_d, labels (B, N)."""
    return ((w_d - labels.to(w_d.dtype)) ** 2).sum(dim=-1).div(w_d.shape[-1]).mean()


def same_label_targets(labels: torch.Tensor) -> torch.Tensor:
    """Eq. 10: LM(b1, b2) = 1 where samples b1 and b2 have the same label for this AU. (..., B) -> (..., B, B)."""
    return (labels.unsqueeze(-1) == labels.unsqueeze(-2)).float()


def diagonal_targets(b: int, device=None) -> torch.Tensor:
    """CLIP's targets: sample b matches only its own text."""
    return torch.eye(b, device=device)


def contrastive_loss(visual: torch.Tensor, text: torch.Tensor, targets: torch.Tensor,
                     logit_scale: float | torch.Tensor, targets_reading: str = "normalized") -> torch.Tensor:
    """CL_n: cross-entropy between the scaled cosine-similarity matrix M_n (Eq. 9) and a target matrix,
    image->text and text->image, averaged. visual, text (B, d); targets (B, B) 0/1 with rows = visual.
    With leading axes (one per AU: visual, text (N, B, d), targets (N, B, B)) every CL_n is computed in
    one batched operation and the sum over them is returned.

    targets_reading (docs/protocol.md, "MiAUCL targets"):
      'literal'    the 0/1 targets of Eq. 10 as they stand: per row -sum_j LM(b, j) log softmax(M_b)_j,
                   so a row counts once per same-label sample in the batch (F.cross_entropy, probability
                   targets, unnormalised);
      'normalized' each row divided by its sum (a distribution over the matching texts); with CLIP's
                   diagonal targets the two are the same;
      'bce'        binary cross-entropy of each scaled similarity against its 0/1 target ("the similarity
                   should be 1"); symmetric, so image->text and text->image are one term.
    """
    b = visual.shape[-2]
    v, t = F.normalize(visual, dim=-1), F.normalize(text, dim=-1)
    logits = (logit_scale * v @ t.transpose(-1, -2)).reshape(-1, b, b)  # Eq. 9: M_n scaled, (N, B, B)
    targets = targets.expand(logits.shape)
    if targets_reading == "bce":
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / (b * b)
    if targets_reading == "literal":
        i2t, t2i = targets, targets.transpose(1, 2)
    elif targets_reading == "normalized":
        i2t = targets / targets.sum(dim=2, keepdim=True)
        t2i = targets.transpose(1, 2) / targets.sum(dim=1).unsqueeze(2)
    else:
        raise ValueError(f"model.miaucl_targets: unknown reading {targets_reading!r}; "
                         f"use literal, normalized or bce")
    # each row a probability-target cross-entropy over its B columns, the class axis second: image->text
    # rows are M's rows (classes = texts), text->image rows are M's columns; the mean over B rows of each
    # CL_n, summed over n, is the sum over all rows divided by B
    i2t_ce = F.cross_entropy(logits.transpose(1, 2), i2t.transpose(1, 2), reduction="sum")
    t2i_ce = F.cross_entropy(logits, t2i.transpose(1, 2), reduction="sum")
    return 0.5 * (i2t_ce + t2i_ce) / b


def miauc_loss(au_visual: torch.Tensor, au_text: torch.Tensor, labels: torch.Tensor,
               logit_scale: float | torch.Tensor, targets_reading: str = "literal") -> torch.Tensor:
    """Eq. 11: L_MiAUC = sum_n CL_n, CL_n with same-label targets (Eq. 10), read as `targets_reading`
    (contrastive_loss; all AUs in one batched operation). au_visual, au_text (B, N, d): per sample and AU,
    visual feature and the text feature of its label."""
    return contrastive_loss(au_visual.transpose(0, 1), au_text.transpose(0, 1), same_label_targets(labels.T),
                            logit_scale, targets_reading)


def local_origcl_loss(au_visual: torch.Tensor, au_text: torch.Tensor, labels: torch.Tensor,
                      logit_scale: float | torch.Tensor) -> torch.Tensor:
    """Table VIII "local OrigCL": as Eq. 11 but with CLIP's diagonal targets."""
    eye = diagonal_targets(au_visual.shape[0], au_visual.device)
    return contrastive_loss(au_visual.transpose(0, 1), au_text.transpose(0, 1), eye, logit_scale)


def global_origcl_loss(global_visual: torch.Tensor, global_text: torch.Tensor,
                       logit_scale: float | torch.Tensor) -> torch.Tensor:
    """Table VIII "global OrigCL": CLIP's loss between the global visual feature and the one text that
    describes all of the sample's active AUs. (B, d), (B, d)."""
    eye = diagonal_targets(global_visual.shape[0], global_visual.device)
    return contrastive_loss(global_visual, global_text, eye, logit_scale)


def total_loss(mt: torch.Tensor, cl: torch.Tensor, gd: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """Eq. 12: Loss = MultiTask + alpha * L_contrastive + beta * L_GD."""
    return mt + alpha * cl + beta * gd
