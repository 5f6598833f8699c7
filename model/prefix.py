"""The frozen prefix of both towers, computed once and reused (docs/protocol.md "Why the frozen prefix is exact").

With only the last k blocks training and no input augmentation, the output of visual blocks 1..L-k is a
constant per sample and the output of text blocks 1..L-k a constant per prompt. `compute_prefix` runs
them once per (prepared dataset, backbone weights, k, AU list, texts); `train_fold` only runs the tails.
The prefix also carries the initial weights of the tails (as modules) and CLIP's logit scale, so a Ray
worker that receives it needs neither the checkpoint nor a second backbone load.

Text prompts are truncated to the longest prompt's end-of-text position (+1) per group: exact under the
causal mask. The final text features of the untouched text tower are stored too, so `text: fixed`
(Table III) never runs a text block during training.

On disk (`cached_prefix`, `<cache_dir>/prefix-<key>.safetensors`) a prefix is one safetensors file,
never a pickle (the cache folder may be shared): every array and both tails' state dicts as tensors,
everything else as JSON in the file's metadata. Loading rebuilds the tails from the architecture's
random init (no checkpoint read) and loads their weights strictly; a file that is not such a prefix is
refused by name (`PrefixFileError`) and recomputed.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from model import backbone
from model.config import PREFIX_FIELDS  # what `_identity` reads of the config
from model.text import au_prompts, emotion_texts, global_text, label_texts
from preprocessing.atomic import atomic_file
from preprocessing.errors import MicroAUError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 3  # bump when what the prefix holds, how it is computed or how it is stored changes
FORMAT = "microau-prefix"  # the safetensors metadata's "format": what Prefix.load accepts
SUFFIX = ".safetensors"
_GROUPS = ("au_texts", "emotion_texts", "global_texts")
_GROUP_ARRAYS = {"ids": torch.int64, "eot": torch.int64, "hidden": torch.float32, "features": torch.float32}
_TAILS = ("visual_tail", "text_tail")
_ARRAYS = ("visual", "global_index", "emotion_class")  # Prefix arrays stored as tensors of the same name


class PrefixFileError(MicroAUError, ValueError):
    """A file that is not a frozen prefix this version reads (never unpickled): the message names it."""

    def __init__(self, path, why: str):
        self.path, self.why = Path(path), " ".join(str(why).split())  # one line (state_dict errors are not)
        super().__init__(f"{path}: not a frozen prefix of schema {SCHEMA_VERSION} ({self.why}); it was not "
                         f"loaded (prefix files are safetensors, never unpickled). Delete the file; the "
                         f"prefix is recomputed on the next run")


@dataclass
class TextGroup:
    """One group of prompts: token ids truncated to the group's longest EOT, the frozen-prefix hidden
    states, and the final features of the untouched text tower."""
    texts: list[str]
    ids: np.ndarray  # int64 (P, T)
    eot: np.ndarray  # int64 (P,)
    hidden: np.ndarray  # float32 (P, T, width): output of text blocks 1..L-k
    features: np.ndarray  # float32 (P, d): whole frozen text tower (used when text: fixed)


@dataclass
class Prefix:
    key: str
    identity: dict  # what the key hashes (arch, pretrained, weights, k, aus, texts, data key)
    sample_ids: list[str]
    visual: np.ndarray  # float32 (S, 1 + h*w, width): output of visual blocks 1..L-k
    grid: tuple[int, int]  # patch grid (h, w)
    image: tuple[int, int]  # flow image size (h0, w0) the landmarks refer to (Eq. 1)
    au_texts: TextGroup  # 2 per AU: [AU1 pos, AU1 neg, AU2 pos, ...]
    emotion_texts: TextGroup  # the R label texts of Eq. 13, grouped by class in MER_CLASSES order
    emotion_class: np.ndarray  # int64 (R,): each label text's class (index in MER_CLASSES)
    global_texts: TextGroup  # one per distinct active-AU set of the dataset (global OrigCL)
    global_index: np.ndarray  # int64 (S,): each sample's row in global_texts
    visual_tail: torch.nn.Module  # initial weights of visual blocks L-k+1..L, ln_post, proj
    text_tail: torch.nn.Module  # initial weights of text blocks L-k+1..L, ln_final, text_projection
    logit_scale: float  # exp of CLIP's learned temperature
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def width(self) -> int:
        return int(self.visual.shape[-1])

    def save(self, path) -> Path:
        """Write one safetensors file atomically (temp file in the same folder, then os.replace): the
        arrays and the tails' state dicts as tensors, the rest as JSON metadata (module docstring)."""
        tensors = {name: _tensor(getattr(self, name)) for name in _ARRAYS}
        for g in _GROUPS:
            for name in _GROUP_ARRAYS:
                tensors[f"{g}.{name}"] = _tensor(getattr(getattr(self, g), name))
        for t in _TAILS:
            for name, v in getattr(self, t).state_dict().items():
                tensors[f"{t}.{name}"] = v.detach().cpu().contiguous().clone()
        tails = {"arch": self.identity["arch"], "quick_gelu": self.identity["quick_gelu"],
                 "k": self.identity["k"], "context": int(self.text_tail.attn_mask.shape[0])}
        meta = {"key": self.key, "identity": self.identity, "sample_ids": list(self.sample_ids),
                "grid": list(self.grid), "image": list(self.image), "logit_scale": self.logit_scale,
                "texts": {g: list(getattr(self, g).texts) for g in _GROUPS}, "tails": tails,
                "timings": self.timings}
        blob = safetensors_bytes(tensors, metadata={"format": FORMAT, "schema": str(SCHEMA_VERSION),
                                                    "prefix": json.dumps(meta)})
        with atomic_file(path) as f:
            f.write(blob)
        return path

    @staticmethod
    def load(path) -> Prefix:
        """Read a file written by `save`; anything else (a pickle, a torn or foreign file, another
        schema) raises PrefixFileError naming the file. Never unpickles."""
        t0 = time.perf_counter()
        path = Path(path)
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                header = f.metadata() or {}
                if header.get("format") != FORMAT:
                    raise PrefixFileError(path, "no microau-prefix metadata")
                if header.get("schema") != str(SCHEMA_VERSION):
                    raise PrefixFileError(path, f"written with schema {header.get('schema')}")
                meta = json.loads(header["prefix"])
                tensors = {name: f.get_tensor(name).clone() for name in f.keys()}  # off the file's mmap
        except PrefixFileError:
            raise
        except Exception as e:  # noqa: BLE001 - not safetensors (a pickle, random bytes, truncated), bad JSON
            raise PrefixFileError(path, f"{type(e).__name__}: {e}") from None
        try:
            out = _from_stored(meta, tensors)
        except PrefixFileError:
            raise
        except Exception as e:  # noqa: BLE001 - missing metadata keys or tensors, wrong shapes, tails that do not load
            raise PrefixFileError(path, f"{type(e).__name__}: {e}") from None
        out.timings = {**out.timings, "read_s": time.perf_counter() - t0}
        return out

    def matches(self, model_cfg, data, aus: Sequence[int]) -> str | None:
        """None when this prefix was computed for (model_cfg, data, aus); else what differs."""
        want = _identity(model_cfg, data, aus, weights=None)
        have = {k: v for k, v in self.identity.items() if k != "weights"}
        diff = [k for k in want if want[k] != have.get(k)]
        return None if not diff else ", ".join(diff)


def _identity(model_cfg, data, aus, weights: str | None, quick_gelu: bool | None = None) -> dict:
    c = {k: getattr(model_cfg, k) for k in PREFIX_FIELDS}
    prompts = au_prompts(aus, c["prompts"])
    out = {"schema": SCHEMA_VERSION, "data": data.key, "arch": c["arch"],
           "pretrained": c["pretrained"], "k": c["trainable_blocks"], "aus": [int(a) for a in aus],
           "prompts": [list(p) for p in prompts],
           "emotion_texts": emotion_texts(aus, prompts, c["emotion_texts"])}
    if weights is not None:  # what resolve_pretrained says: the weights file and the activation it needs
        out["weights"] = weights
        out["quick_gelu"] = bool(quick_gelu)
    return out


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.require(a, requirements=["C", "W"]))  # a copy only when read-only


def _array(tensors: dict[str, torch.Tensor], name: str, dtype: torch.dtype, rows: int) -> np.ndarray:
    if name not in tensors:
        raise KeyError(f"tensor {name!r} missing")
    t = tensors[name]
    if t.dtype != dtype or t.ndim == 0 or t.shape[0] != rows:
        raise ValueError(f"tensor {name!r} is {t.dtype} {tuple(t.shape)}, expected {dtype} with {rows} rows")
    return t.numpy()


def _from_stored(meta: dict, tensors: dict[str, torch.Tensor]) -> Prefix:
    """The Prefix of `save`'s metadata and tensors; the tails rebuilt from the architecture's random
    init (no checkpoint) with the stored weights loaded strictly."""
    identity = meta["identity"]
    if meta["key"] != prefix_key(identity):
        raise ValueError("the key is not the hash of the stored identity")
    n = len(meta["sample_ids"])
    groups = {}
    for g in _GROUPS:
        texts = [str(t) for t in meta["texts"][g]]
        groups[g] = TextGroup(texts=texts, **{a: _array(tensors, f"{g}.{a}", dt, len(texts))
                                              for a, dt in _GROUP_ARRAYS.items()})
    known = set(_ARRAYS) | {f"{g}.{a}" for g in _GROUPS for a in _GROUP_ARRAYS}
    extra = [k for k in tensors if k not in known and not k.startswith(tuple(f"{t}." for t in _TAILS))]
    if extra:
        raise ValueError(f"unexpected tensors {extra[:3]}")
    visual_tail, text_tail = _rebuild_tails(meta["tails"], {t: {k[len(t) + 1:]: v for k, v in tensors.items()
                                                                if k.startswith(f"{t}.")} for t in _TAILS})
    return Prefix(
        key=meta["key"], identity=identity, sample_ids=[str(i) for i in meta["sample_ids"]],
        visual=_array(tensors, "visual", torch.float32, n), grid=tuple(int(v) for v in meta["grid"]),
        image=tuple(int(v) for v in meta["image"]), **groups,
        global_index=_array(tensors, "global_index", torch.int64, n),
        emotion_class=_emotion_class(_array(tensors, "emotion_class", torch.int64,
                                            len(groups["emotion_texts"].texts)), identity, groups),
        visual_tail=visual_tail, text_tail=text_tail, logit_scale=float(meta["logit_scale"]),
        timings={k: float(v) for k, v in meta["timings"].items()})


def _emotion_class(classes: np.ndarray, identity: dict, groups: dict[str, TextGroup]) -> np.ndarray:
    """The stored class of each label text, checked against the identity's texts per class."""
    texts, want = label_texts(identity["emotion_texts"])
    if groups["emotion_texts"].texts != texts or classes.tolist() != want:
        raise ValueError("the stored label texts or their classes are not the identity's emotion_texts")
    return classes


def _rebuild_tails(tails: dict, states: dict[str, dict[str, torch.Tensor]]):
    """VisualTail / TextTail of a random-init `arch` (same QuickGELU flag as when computed), then the
    stored weights with strict=True; TextTail's causal mask (not stored) comes from the same clip."""
    arch, k, context = str(tails["arch"]), int(tails["k"]), int(tails["context"])
    clip = backbone.create_clip(arch, None, bool(tails["quick_gelu"]))
    backbone.check_trainable_blocks(clip, k, arch)
    visual_tail, text_tail = _tails(clip, k, context)
    visual_tail.load_state_dict(states["visual_tail"], strict=True)
    text_tail.load_state_dict(states["text_tail"], strict=True)
    return visual_tail, text_tail


def _tails(clip, k: int, context: int):
    """The two tails of `clip` (eval mode, as `compute_prefix` and `Prefix.load` hand them out)."""
    return backbone.VisualTail(clip, k).eval(), backbone.TextTail(clip, k, context).eval()


def prefix_key(identity: dict) -> str:
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


def visual_features(clip, flow: np.ndarray, k: int, device, batch_size: int = 32) -> np.ndarray:
    """Output of visual blocks 1..L-k for flow images (S, 3, H, W) in [0, 1], in batches, float32
    (S, 1 + h*w, width); images are resized to the backbone's input size where they differ. What the
    prefix caches for a dataset and what a trained model (model/inference.py) runs on new clips."""
    size = tuple(clip.visual.image_size) if isinstance(clip.visual.image_size, (tuple, list)) \
        else (clip.visual.image_size,) * 2
    chunks = []
    for s in range(0, len(flow), batch_size):
        x = torch.from_numpy(np.array(flow[s:s + batch_size], dtype=np.float32)).to(device)  # a writable copy
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        chunks.append(backbone.visual_prefix(clip, x, k).float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0,), np.float32)


def compute_prefix(model_cfg, data, aus: Sequence[int], device: str = "cpu", batch_size: int = 32) -> Prefix:
    """Frozen visual prefix of every sample of `data`, frozen text prefix of every prompt (AU prompts,
    emotion texts, global AU texts); see the module docstring."""
    t0 = time.perf_counter()
    aus = [int(a) for a in aus]
    k = model_cfg.trainable_blocks
    path, quick_gelu, weights = backbone.resolve_pretrained(model_cfg.arch, model_cfg.pretrained)
    clip = backbone.create_clip(model_cfg.arch, path, quick_gelu)
    backbone.check_trainable_blocks(clip, k, model_cfg.arch)
    identity = _identity(model_cfg, data, aus, weights, quick_gelu)
    clip = clip.to(device)
    t_load = time.perf_counter()

    # visual: blocks 1..L-k of every sample
    flow = np.asarray(data.flow)
    if flow.ndim != 4 or flow.shape[1] != 3:
        raise ValueError(f"prepared dataset {data.key}: flow has shape {flow.shape}, expected (S, 3, H, W)")
    visual = visual_features(clip, flow, k, device, batch_size)
    t_vis = time.perf_counter()

    # text: AU prompts, emotion texts, the global texts of every active-AU set in the data
    prompts = au_prompts(aus, model_cfg.prompts)
    emo = emotion_texts(aus, prompts, model_cfg.emotion_texts)
    active = [tuple(a for a in aus if a in set(s)) for s in data.au_sets]
    combos = sorted(set(active))
    gtexts = [global_text(c, aus, prompts) for c in combos]
    visual_tail, text_tail = _tails(clip, k, int(clip.context_length))
    text_tail = text_tail.to(device)
    au_g = _text_group(clip, model_cfg.arch, [t for pair in prompts for t in pair], k, text_tail, device)
    emo_texts, emo_class = label_texts(emo)
    emo_g = _text_group(clip, model_cfg.arch, emo_texts, k, text_tail, device)
    glob_g = _text_group(clip, model_cfg.arch, gtexts, k, text_tail, device)
    t_txt = time.perf_counter()

    return Prefix(
        key=prefix_key(identity), identity=identity, sample_ids=list(data.sample_ids), visual=visual,
        grid=backbone.grid_size(clip), image=tuple(int(v) for v in flow.shape[-2:]),
        au_texts=au_g, emotion_texts=emo_g, emotion_class=np.array(emo_class, dtype=np.int64),
        global_texts=glob_g,
        global_index=np.array([combos.index(a) for a in active], dtype=np.int64),
        visual_tail=copy.deepcopy(visual_tail).cpu(),
        text_tail=copy.deepcopy(text_tail).cpu(),
        logit_scale=float(clip.logit_scale.exp().item()),
        timings={"load_s": t_load - t0, "visual_s": t_vis - t_load, "text_s": t_txt - t_vis,
                 "total_s": t_txt - t0},
    )


def cached_prefix(model_cfg, data, aus: Sequence[int], cache_dir, device: str = "cpu") -> Prefix:
    """`compute_prefix` through an on-disk cache in `cache_dir`, keyed by the prefix key (prepared-data
    key, backbone weights file identity, k, AUs, texts): a later run, a grid point added later or a
    `fold` debug session reuses the prefix instead of running the frozen blocks again. A file there that
    is not a prefix of this key (torn, foreign, a planted pickle, an older schema) is deleted with a
    logged warning and computed again; it is never unpickled."""
    aus = [int(a) for a in aus]
    _, quick_gelu, weights = backbone.resolve_pretrained(model_cfg.arch, model_cfg.pretrained)
    key = prefix_key(_identity(model_cfg, data, aus, weights, quick_gelu))
    path = Path(cache_dir) / f"prefix-{key}{SUFFIX}"
    if path.is_file():
        try:
            prefix = Prefix.load(path)
            if prefix.key != key:
                raise PrefixFileError(path, f"it holds the prefix {prefix.key}")
            return prefix
        except PrefixFileError as e:
            logger.warning("warning: ignoring the cached prefix %s (%s); deleting it and computing the prefix "
                           "again", e.path, e.why)
            path.unlink(missing_ok=True)
    prefix = compute_prefix(model_cfg, data, aus, device)
    prefix.save(path)
    return prefix
