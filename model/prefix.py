"""The frozen prefix of both towers, computed once and reused (DESIGN.md "Performance levers").

With only the last k blocks training and no input augmentation, the output of visual blocks 1..L-k is a
constant per sample and the output of text blocks 1..L-k a constant per prompt. `compute_prefix` runs
them once per (prepared dataset, backbone weights, k, AU list, texts); `train_fold` only runs the tails.
The prefix also carries the initial weights of the tails (as modules) and CLIP's logit scale, so a Ray
worker that receives it needs neither the checkpoint nor a second backbone load.

Text prompts are truncated to the longest prompt's end-of-text position (+1) per group: exact under the
causal mask. The final text features of the untouched text tower are stored too, so `text: fixed`
(Table III) never runs a text block during training.
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from model import backbone
from model.text import MER_CLASSES, au_prompts, emotion_texts, global_text
from preprocessing.atomic import atomic_file

SCHEMA_VERSION = 1  # bump when what the prefix holds or how it is computed changes


@dataclass
class TextGroup:
    """One group of prompts: token ids truncated to the group's longest EOT, the frozen-prefix hidden
    states, and the final features of the untouched text tower."""
    texts: List[str]
    ids: np.ndarray  # int64 (P, T)
    eot: np.ndarray  # int64 (P,)
    hidden: np.ndarray  # float32 (P, T, width): output of text blocks 1..L-k
    features: np.ndarray  # float32 (P, d): whole frozen text tower (used when text: fixed)


@dataclass
class Prefix:
    key: str
    identity: Dict  # what the key hashes (arch, pretrained, weights, k, aus, texts, data key)
    sample_ids: List[str]
    visual: np.ndarray  # float32 (S, 1 + h*w, width): output of visual blocks 1..L-k
    grid: Tuple[int, int]  # patch grid (h, w)
    image: Tuple[int, int]  # flow image size (h0, w0) the landmarks refer to (Eq. 1)
    au_texts: TextGroup  # 2 per AU: [AU1 pos, AU1 neg, AU2 pos, ...]
    emotion_texts: TextGroup  # one per MER class, in MER_CLASSES order
    global_texts: TextGroup  # one per distinct active-AU set of the dataset (global OrigCL)
    global_index: np.ndarray  # int64 (S,): each sample's row in global_texts
    visual_tail: torch.nn.Module  # initial weights of visual blocks L-k+1..L, ln_post, proj
    text_tail: torch.nn.Module  # initial weights of text blocks L-k+1..L, ln_final, text_projection
    logit_scale: float  # exp of CLIP's learned temperature
    timings: Dict[str, float] = field(default_factory=dict)

    @property
    def width(self) -> int:
        return int(self.visual.shape[-1])

    def save(self, path) -> Path:
        """Write to one file atomically (temp file in the same folder, then os.replace)."""
        with atomic_file(path) as f:
            torch.save(self, f)
        return path

    @staticmethod
    def load(path) -> "Prefix":
        try:
            out = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise ValueError(f"{path}: cannot read the cached prefix ({type(e).__name__}: {e}); delete the "
                             f"file, it is recomputed on the next run") from None
        if not isinstance(out, Prefix) or getattr(out, "identity", {}).get("schema") != SCHEMA_VERSION:
            raise ValueError(f"{path}: not a prefix of schema {SCHEMA_VERSION}; delete the file, it is "
                             f"recomputed on the next run")
        return out

    def matches(self, model_cfg, data, aus: Sequence[int]) -> Optional[str]:
        """None when this prefix was computed for (model_cfg, data, aus); else what differs."""
        want = _identity(model_cfg, data, aus, weights=None)
        have = {k: v for k, v in self.identity.items() if k != "weights"}
        diff = [k for k in want if want[k] != have.get(k)]
        return None if not diff else ", ".join(diff)


def _identity(model_cfg, data, aus, weights: Optional[str]) -> Dict:
    prompts = au_prompts(aus, model_cfg.prompts)
    out = {"schema": SCHEMA_VERSION, "data": data.key, "arch": model_cfg.arch,
           "pretrained": model_cfg.pretrained, "k": model_cfg.trainable_blocks, "aus": [int(a) for a in aus],
           "prompts": [list(p) for p in prompts],
           "emotion_texts": emotion_texts(aus, prompts, model_cfg.emotion_texts)}
    if weights is not None:
        out["weights"] = weights
    return out


def prefix_key(identity: Dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _text_group(clip, arch: str, texts: Sequence[str], k: int, tail, device) -> TextGroup:
    ids = backbone.tokenize(arch, texts)
    eot = backbone.eot_positions(ids)
    ids = ids[:, : int(eot.max()) + 1]  # exact under the causal mask
    with torch.no_grad():
        h = backbone.text_prefix(clip, ids.to(device), k)
        f = tail(h, eot.to(device))
    return TextGroup(texts=list(texts), ids=ids.numpy(), eot=eot.numpy(), hidden=h.float().cpu().numpy(),
                     features=f.float().cpu().numpy())


def compute_prefix(model_cfg, data, aus: Sequence[int], device: str = "cpu", batch_size: int = 32) -> Prefix:
    """Frozen visual prefix of every sample of `data`, frozen text prefix of every prompt (AU prompts,
    emotion texts, global AU texts); see the module docstring."""
    t0 = time.perf_counter()
    aus = [int(a) for a in aus]
    k = model_cfg.trainable_blocks
    clip, weights = backbone.load_clip(model_cfg.arch, model_cfg.pretrained)
    backbone.check_trainable_blocks(clip, k, model_cfg.arch)
    identity = _identity(model_cfg, data, aus, weights)
    clip = clip.to(device)
    t_load = time.perf_counter()

    # visual: blocks 1..L-k of every sample, in batches (the model input size is the backbone's)
    size = tuple(clip.visual.image_size) if isinstance(clip.visual.image_size, (tuple, list)) \
        else (clip.visual.image_size,) * 2
    flow = np.asarray(data.flow)
    if flow.ndim != 4 or flow.shape[1] != 3:
        raise ValueError(f"prepared dataset {data.key}: flow has shape {flow.shape}, expected (S, 3, H, W)")
    chunks = []
    for s in range(0, len(flow), batch_size):
        x = torch.from_numpy(np.array(flow[s:s + batch_size], dtype=np.float32)).to(device)  # a writable copy
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        chunks.append(backbone.visual_prefix(clip, x, k).float().cpu().numpy())
    visual = np.concatenate(chunks) if chunks else np.zeros((0,), np.float32)
    t_vis = time.perf_counter()

    # text: AU prompts, emotion texts, the global texts of every active-AU set in the data
    prompts = au_prompts(aus, model_cfg.prompts)
    emo = emotion_texts(aus, prompts, model_cfg.emotion_texts)
    active = [tuple(a for a in aus if a in set(s)) for s in data.au_sets]
    combos = sorted(set(active))
    gtexts = [global_text(c, aus, prompts) for c in combos]
    text_tail = backbone.TextTail(clip, k, int(clip.context_length)).to(device).eval()
    au_g = _text_group(clip, model_cfg.arch, [t for pair in prompts for t in pair], k, text_tail, device)
    emo_g = _text_group(clip, model_cfg.arch, [emo[c] for c in MER_CLASSES], k, text_tail, device)
    glob_g = _text_group(clip, model_cfg.arch, gtexts, k, text_tail, device)
    t_txt = time.perf_counter()

    return Prefix(
        key=prefix_key(identity), identity=identity, sample_ids=list(data.sample_ids), visual=visual,
        grid=backbone.grid_size(clip), image=tuple(int(v) for v in flow.shape[-2:]),
        au_texts=au_g, emotion_texts=emo_g, global_texts=glob_g,
        global_index=np.array([combos.index(a) for a in active], dtype=np.int64),
        visual_tail=copy.deepcopy(backbone.VisualTail(clip, k)).cpu(),
        text_tail=copy.deepcopy(text_tail).cpu(),
        logit_scale=float(clip.logit_scale.exp().item()),
        timings={"load_s": t_load - t0, "visual_s": t_vis - t_load, "text_s": t_txt - t_vis,
                 "total_s": t_txt - t0},
    )


def cached_prefix(model_cfg, data, aus: Sequence[int], cache_dir, device: str = "cpu") -> Prefix:
    """`compute_prefix` through an on-disk cache in `cache_dir`, keyed by the prefix key (prepared-data
    key, backbone weights file identity, k, AUs, texts): a later run, a grid point added later or a
    `fold` debug session reuses the prefix instead of running the frozen blocks again."""
    _, _, weights = backbone.resolve_pretrained(model_cfg.arch, model_cfg.pretrained)
    path = Path(cache_dir) / f"prefix-{prefix_key(_identity(model_cfg, data, [int(a) for a in aus], weights))}.pt"
    if path.is_file():
        try:
            return Prefix.load(path)
        except ValueError:  # unreadable or of an older schema: computed again below
            path.unlink(missing_ok=True)
    prefix = compute_prefix(model_cfg, data, aus, device)
    prefix.save(path)
    return prefix
