"""Micro-AU CLIP (paper Fig. 2): one model; every ablation of Tables II-VIII is a switch of ModelConfig.

  visual prefix (cached) -> VisualTail -> 7x7 patch tokens in the joint space
    -> LocalFeatures (LSI: Eq. 1-3, or mean/max pooling; w/o LSI: the       F~ (B, N, d)
       global feature shared by all AUs, or per-AU pooling of all tokens)
    -> GSD (GDA Eq. 4-6, Add+MLP, Cat+MLP) or nothing                       final AU features (B, N, d)
    -> AUHeads (Eq. 7)                                                      logits (B, N, 2)
  text prefix (cached) -> TextTail (fine-tuned) or the cached final features (fixed) -> text features
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from model.gsd import GSD, AUHeads
from model.lsi import LocalFeatures
from model.prefix import Prefix, TextGroup


class MicroAUCLIP(nn.Module):
    def __init__(self, model_cfg, n_aus: int, prefix: Prefix):
        super().__init__()
        self.cfg = model_cfg
        self.n_aus = n_aus
        self.visual_tail = copy.deepcopy(prefix.visual_tail)
        d = int(self.visual_tail.proj.shape[1])
        self.d = d
        # The text tower trains only when a contrastive loss reaches it (Table III "finetune"; "No CL" has
        # no text encoder in training) and some of its blocks are trainable (k = 0: nothing of it trains,
        # ln_final and text_projection included, so the frozen tower's cached features are used).
        self.text_trains = (model_cfg.text == "finetune" and model_cfg.contrastive != "none"
                            and model_cfg.trainable_blocks > 0)
        self.text_tail = copy.deepcopy(prefix.text_tail) if self.text_trains else None
        self.local = LocalFeatures(n_aus, d, model_cfg.pooling, model_cfg.lsi, model_cfg.pta_hidden,
                                   lsi_off_feature=model_cfg.lsi_off_feature)
        self.gsd = GSD(n_aus, d, model_cfg.dependency) if model_cfg.gsd else None
        self.heads = AUHeads(n_aus, d, model_cfg.head_hidden)
        self.register_buffer("logit_scale", torch.tensor(prefix.logit_scale), persistent=False)
        if model_cfg.trainable_blocks == 0:  # nothing of the encoders trains
            for p in self.visual_tail.parameters():
                p.requires_grad_(False)

    # -- parameter groups (paper IV-A: lr 1e-3 encoders, 1e-2 other modules) -----------------------------
    def encoder_parameters(self) -> list[nn.Parameter]:
        mods = [self.visual_tail] + ([self.text_tail] if self.text_tail is not None else [])
        return [p for m in mods for p in m.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        mods = [self.local, self.heads] + ([self.gsd] if self.gsd is not None else [])
        return [p for m in mods for p in m.parameters() if p.requires_grad]

    # -- visual -----------------------------------------------------------------------------------------
    def au_forward(self, tokens: torch.Tensor, idx: torch.Tensor | Sequence[torch.Tensor],
                   global_feat: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Patch tokens (B, G, d), token indices (B, N, max N_L) padded with -1 (or per AU (B, N_L)), global
        image feature (B, d) -> local / final AU features, W_d, logits, PTA weights (B, N, max N_L) or None."""
        local, pta_w = self.local(tokens, idx, global_feat)
        if self.gsd is not None:
            final, w_d = self.gsd(local)
        else:
            final, w_d = local, None
        return {"local": local, "final": final, "w_d": w_d, "logits": self.heads(final), "pta": pta_w}

    def forward(self, visual_prefix: torch.Tensor,
                idx: torch.Tensor | Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        tokens, global_feat = self.visual_tail(visual_prefix)
        out = self.au_forward(tokens, idx, global_feat)
        out["global"] = global_feat
        return out

    # -- text -------------------------------------------------------------------------------------------
    def text_features(self, group: TextTensors, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Features of the group's prompts (all, or `rows`): through the trainable tail when the text
        tower is fine-tuned, else the cached features of the frozen tower."""
        if self.text_tail is None:
            return group.features if rows is None else group.features[rows]
        h, eot = (group.hidden, group.eot) if rows is None else (group.hidden[rows], group.eot[rows])
        return self.text_tail(h, eot)


def as_tensor(a: np.ndarray, device) -> torch.Tensor:
    """numpy -> tensor on `device`; arrays read back from Ray's object store are read-only: copy those."""
    return torch.from_numpy(a if a.flags.writeable else a.copy()).to(device)


class TextTensors:
    """A TextGroup as tensors on the training device."""

    def __init__(self, g: TextGroup, device):
        self.hidden = as_tensor(g.hidden, device)
        self.eot = as_tensor(g.eot, device)
        self.features = as_tensor(g.features, device)
        self.texts = g.texts
