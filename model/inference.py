"""A Micro-AU CLIP model trained on a whole dataset: trained, stored as a package, loaded, run on new clips.

`train_model` is `model.train.fit` on every sample (the code of a LOSO fold, with no held-out subject);
`save_model` writes the package; `load_package` reads it back as an `AUModel`, whose `predict` runs the
frozen visual prefix on new flow images, then the trained tail, LSI, GSD and heads, and Eq. 13's MER
scores, through `model.train.evaluate`: what a LOSO fold evaluates.

A package is a folder of two files:

- `weights.safetensors`: the trained part of the model (the visual tail's k blocks, ln_post and proj, the
  LSI pooling, GSD and the AU heads; `model.*`), the label-text features of Eq. 13 after training
  (`emotion_features`, `emotion_class`: the text tower is not needed to predict, so it is not stored),
  and `probe` (below). Never a pickle.
- `model.json`: the format, the AU list, the ModelConfig, the backbone's identity (arch, `pretrained` as
  configured, the weights id `backbone.resolve_pretrained` gave, QuickGELU, k), the patch grid and the
  flow image size, the MER classes and label texts, the loss curve, and `info`: what the caller records
  (the orchestrator: resolved config, preprocessing config, what the model was trained on).

The frozen backbone is not stored: `load_package` builds it from the weights on this machine, as
`compute_prefix` does (a missing file is the same BackboneError). Whether those weights are the ones
the model was trained on is checked, not assumed: `probe` holds the frozen prefix's output on a fixed
synthetic image when the model was saved, and the backbone built at load time must reproduce it
(`PROBE_TOLERANCE`). This also covers `pretrained: none`, whose random backbone comes from a fixed seed
(`backbone.BACKBONE_INIT_SEED`), should another torch version draw other numbers.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from model import backbone
from model.config import ModelConfig
from model.lsi import au_token_indices, landmark_groups
from model.net import MicroAUCLIP
from model.prefix import visual_features
from model.result import Decisions
from model.text import MER_CLASSES
from model.train import Fitted, FoldError, evaluate, fit, resolve_device
from model.trial import TrialLike
from preprocessing.atomic import atomic_file
from preprocessing.errors import MicroAUError

FORMAT = "microau-model"
SCHEMA_VERSION = 1  # bump when what a package holds or how it is read changes
META_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"
# Relative L2 distance allowed between the stored and the recomputed probe output: a margin for float32
# arithmetic on another device (CUDA's TF32 convolutions included; not measured: no GPU here); other
# weights give distances of order 1 (1.44 for another random microau-tiny backbone, docs/predict.md).
PROBE_TOLERANCE = 1e-2


class ModelPackageError(MicroAUError, ValueError):
    """A model package cannot be used; the message names the folder or file and what to do."""


def train_model(trial: TrialLike, data, prefix=None, on_epoch=None) -> Fitted:
    """Train on every sample of `data` (no held-out subject) with `model.train.fit`, the code of every
    LOSO fold. `trial` as for `train_fold` (a TrialLike: the orchestrator's TrialConfig)."""
    return fit(trial, data, np.arange(len(data)), prefix=prefix, on_epoch=on_epoch)


def _probe(image) -> np.ndarray:
    """A fixed smooth synthetic flow image (1, 3, h, w) in [0, 1] (no random numbers: the same everywhere)."""
    h, w = image
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    y, x = y / h, x / w
    chans = [0.5 + 0.5 * np.sin(2 * math.pi * (3 * x + 2 * y)), 0.5 + 0.5 * np.cos(2 * math.pi * (2 * x - 5 * y)),
             x * y]
    return np.stack(chans)[None].astype(np.float32)


def _relative_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def save_model(fitted: Fitted, trial: TrialLike, folder, info: dict[str, Any] | None = None) -> Path:
    """Write the package of a trained model into `folder` (created; see the module docstring). `trial` is
    the config it was trained with (.aus, .model); `info` (JSON) is stored as it is. The caller makes
    the package appear atomically (write into a temp folder, then rename it)."""
    mcfg = trial.model
    prefix = fitted.prefix
    ident = prefix.identity
    k = int(mcfg.trainable_blocks)
    path, quick_gelu, weights = backbone.resolve_pretrained(mcfg.arch, mcfg.pretrained)
    if ident.get("weights") not in (None, weights):
        raise ModelPackageError(f"model.pretrained: the weights ({weights}) are not those the frozen prefix was "
                                f"computed with ({ident['weights']}); the file changed while training: "
                                f"train again")
    clip = backbone.create_clip(mcfg.arch, path, quick_gelu)
    image = tuple(int(v) for v in prefix.image)
    probe = visual_features(clip, _probe(image), k, "cpu")
    state = {f"model.{n}": v.detach().float().cpu().contiguous().clone()
             for n, v in fitted.model.state_dict().items() if not n.startswith("text_tail.")}
    tensors = {**state, "emotion_features": fitted.emotion_features().detach().float().cpu().contiguous(),
               "emotion_class": fitted.emo_class.detach().cpu().to(torch.int64).contiguous(),
               "probe": torch.from_numpy(probe)}
    meta = {
        "format": FORMAT, "schema": SCHEMA_VERSION, "aus": [int(a) for a in fitted.aus],
        "model": mcfg.model_dump(mode="json"),
        "backbone": {"arch": mcfg.arch, "pretrained": mcfg.pretrained, "weights": weights,
                     "quick_gelu": bool(quick_gelu), "trainable_blocks": k},
        "grid": [int(v) for v in prefix.grid], "image": list(image), "logit_scale": float(prefix.logit_scale),
        "mer_classes": list(MER_CLASSES),
        "mer_texts": [[MER_CLASSES[c], t]
                      for c, t in zip(prefix.emotion_class.tolist(), prefix.emotion_texts.texts, strict=True)],
        "training": {"samples": int(len(fitted.train_idx)), "loss_curve": fitted.curve,
                     "alpha": fitted.weights["alpha"], "beta": fitted.weights["beta"],
                     "device": str(fitted.device), "timings": fitted.timings, "prefix_key": prefix.key},
        "info": info or {},
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(folder / WEIGHTS_FILE) as f:
        f.write(safetensors_bytes(tensors, metadata={"format": FORMAT, "schema": str(SCHEMA_VERSION)}))
    with atomic_file(folder / META_FILE, "w") as f:
        json.dump(meta, f, indent=1)
    return folder


def read_meta(folder) -> dict[str, Any]:
    """The package's model.json, checked (format, schema, the weights file beside it); ModelPackageError
    naming the folder otherwise. Reads no tensor."""
    folder = Path(folder)
    meta_path = folder / META_FILE
    if not folder.is_dir():
        raise ModelPackageError(f"{folder}: no such model folder; give the folder `microau-sweep train` "
                                f"printed (<workdir>/models/<key>) or an MLflow model URI")
    if not meta_path.is_file():
        raise ModelPackageError(f"{folder}: not a model package (no {META_FILE}); give the folder "
                                f"`microau-sweep train` printed (<workdir>/models/<key>)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelPackageError(f"{meta_path}: unreadable ({e}); train the model again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelPackageError(f"{meta_path}: not a {FORMAT} file; train the model again")
    if meta.get("schema") != SCHEMA_VERSION:
        raise ModelPackageError(f"{meta_path}: written with package schema {meta.get('schema')}, this version "
                                f"reads {SCHEMA_VERSION}; train the model again with this version")
    missing = [k for k in ("aus", "model", "backbone", "grid", "image", "logit_scale", "mer_classes", "info")
               if k not in meta]
    if missing:
        raise ModelPackageError(f"{meta_path}: misses {', '.join(missing)}; train the model again")
    if not (folder / WEIGHTS_FILE).is_file():
        raise ModelPackageError(f"{folder}: {WEIGHTS_FILE} is missing; train the model again")
    return meta


_TENSORS = ("emotion_features", "emotion_class", "probe")  # besides the model's `model.*`


def _read_tensors(folder: Path, load: bool = True) -> dict[str, torch.Tensor | None]:
    """The tensors of the package's weights file (load=False: their names only, mapped to None), its
    header and names checked; ModelPackageError naming the file otherwise. Never unpickles."""
    path = Path(folder) / WEIGHTS_FILE
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            if header.get("format") != FORMAT or header.get("schema") != str(SCHEMA_VERSION):
                raise ModelPackageError(f"{path}: not the weights of a {FORMAT} package of schema {SCHEMA_VERSION}; "
                                        f"train the model again")
            names = list(f.keys())
            missing = [n for n in _TENSORS if n not in names] + ([] if any(n.startswith("model.") for n in names)
                                                                 else ["model.*"])
            if missing:
                raise ModelPackageError(f"{path}: misses the tensor(s) {', '.join(missing)}; train the model again")
            return {n: f.get_tensor(n).clone() if load else None for n in names}  # off the file's mmap
    except ModelPackageError:
        raise
    except Exception as e:  # noqa: BLE001 - not safetensors, truncated
        raise ModelPackageError(f"{path}: unreadable ({type(e).__name__}: {e}); train the model again") from None


def check_package(folder) -> dict[str, Any]:
    """model.json and the weights file's header and tensor names checked (no tensor read, no backbone
    built) -> model.json; ModelPackageError naming the file otherwise."""
    meta = read_meta(folder)
    _read_tensors(Path(folder), load=False)
    return meta


@dataclass
class Predictions(Decisions):
    """What `AUModel.predict` returns, one row per clip; `.preds` and `.mer_preds` decide as a LOSO fold does."""
    sample_ids: list[str]
    aus: list[int]
    probs: np.ndarray  # float32 (S, A): P(active) per AU
    mer_classes: list[str]
    mer_scores: np.ndarray  # float32 (S, C): per MER class, the best Eq. 13 score of its label texts
    best_text: list[int]  # index of each clip's best label text (AUModel.mer_texts)


class AUModel:
    """A loaded package: `predict(flow, landmarks)` on preprocessed clips (`load_package`)."""

    def __init__(self, folder: Path, meta: dict[str, Any], clip, net: MicroAUCLIP, emotion_features: torch.Tensor,
                 emotion_class: torch.Tensor, device: torch.device):
        self.folder, self.meta, self.clip, self.net, self.device = folder, meta, clip, net, device
        self.emotion_features, self.emotion_class = emotion_features, emotion_class
        self.aus: list[int] = [int(a) for a in meta["aus"]]
        self.mer_classes: list[str] = list(meta["mer_classes"])
        self.mer_texts: list[list[str]] = [list(t) for t in meta.get("mer_texts", [])]
        self.info: dict[str, Any] = dict(meta["info"])
        cfg = ModelConfig.model_validate(meta["model"])
        self.groups = landmark_groups(self.aus, cfg.landmark_groups)
        self.k = int(meta["backbone"]["trainable_blocks"])

    def predict(self, flow: np.ndarray, landmarks: np.ndarray, sample_ids: Sequence[str] | None = None,
                batch_size: int = 32) -> Predictions:
        """flow images float32 (S, 3, H, W) in [0, 1] and apex landmarks (S, 68, 2) in their grid, as
        preprocessing makes them with the config the model was trained with -> Predictions."""
        flow = np.asarray(flow, dtype=np.float32)
        landmarks = np.asarray(landmarks, dtype=np.float32)
        ids = [str(i) for i in sample_ids] if sample_ids is not None else [f"#{i}" for i in range(len(flow))]
        image = tuple(int(v) for v in self.meta["image"])
        if flow.ndim != 4 or flow.shape[1] != 3 or tuple(flow.shape[-2:]) != image:
            raise ModelPackageError(f"{self.folder}: flow images of shape {tuple(flow.shape)} given; the model was "
                                    f"trained on (S, 3, {image[0]}, {image[1]}): preprocess with the model's "
                                    f"preprocessing config")
        if landmarks.shape != (len(flow), 68, 2) or len(ids) != len(flow):
            raise ModelPackageError(f"{self.folder}: {len(flow)} flow images, landmarks {tuple(landmarks.shape)} "
                                    f"and {len(ids)} ids given; give (S, 68, 2) landmarks and S ids")
        grid = tuple(int(v) for v in self.meta["grid"])
        tok = au_token_indices(landmarks, self.groups, grid, image, ids)
        probs, scores, best = [], [], []
        for s in range(0, len(flow), batch_size):
            vis = torch.from_numpy(visual_features(self.clip, flow[s:s + batch_size], self.k, self.device,
                                                   batch_size)).to(self.device)
            out = evaluate(self.net, vis, [torch.from_numpy(t[s:s + batch_size]).to(self.device) for t in tok],
                           self.emotion_features, self.emotion_class)
            probs.append(out["probs"].float().cpu().numpy())
            scores.append(out["mer_scores"].float().cpu().numpy())
            best.extend(out["best_text"].cpu().tolist())
        n_aus, n_cls = len(self.aus), len(self.mer_classes)
        return Predictions(sample_ids=ids, aus=list(self.aus),
                           probs=np.concatenate(probs) if probs else np.zeros((0, n_aus), np.float32),
                           mer_classes=list(self.mer_classes),
                           mer_scores=np.concatenate(scores) if scores else np.zeros((0, n_cls), np.float32),
                           best_text=best)


def load_package(folder, device: str = "auto") -> AUModel:
    """The package in `folder` ready to predict on `device` ('auto': CUDA when available). The backbone
    comes from this machine's weights (`backbone.resolve_pretrained`: a missing file is its
    BackboneError) and must reproduce the stored probe; the trained weights load strictly."""
    folder = Path(folder)
    meta = read_meta(folder)
    tensors = _read_tensors(folder)
    try:
        dev = resolve_device(device)
    except FoldError:
        raise ModelPackageError(f"device {device!r}: torch sees no CUDA device here; use auto or cpu") from None
    try:
        cfg = ModelConfig.model_validate(meta["model"])
        b = meta["backbone"]
        k = int(b["trainable_blocks"])
        if (b["arch"], b["pretrained"], k) != (cfg.arch, cfg.pretrained, cfg.trainable_blocks):
            raise ValueError("backbone and model config disagree")
    except (ValueError, KeyError, TypeError) as e:
        raise ModelPackageError(f"{folder / META_FILE}: unusable model config ({e}); train the model again") from None
    path, quick_gelu, weights = backbone.resolve_pretrained(cfg.arch, cfg.pretrained)
    clip = backbone.create_clip(cfg.arch, path, bool(b.get("quick_gelu", quick_gelu)))
    backbone.check_trainable_blocks(clip, k, cfg.arch)
    image = tuple(int(v) for v in meta["image"])
    dist = _relative_distance(visual_features(clip, _probe(image), k, "cpu"), tensors.pop("probe").numpy())
    if not dist <= PROBE_TOLERANCE:
        where = f"{path}" if path else "the random initialisation of this torch version"
        raise ModelPackageError(
            f"{folder}: the backbone built here ({cfg.arch}, model.pretrained {cfg.pretrained!r}: {where}, weights "
            f"id {weights}) is not the one the model was trained with (weights id {b.get('weights')}): its frozen "
            f"blocks give other features (relative distance {dist:.3g} on the probe image). Put the weights the "
            f"model was trained with on this machine, or train the model here")
    stub = SimpleNamespace(visual_tail=backbone.VisualTail(clip, k), text_tail=None,
                           logit_scale=float(meta["logit_scale"]))
    try:
        net = MicroAUCLIP(cfg, len(meta["aus"]), stub)
        net.load_state_dict({n[len("model."):]: v for n, v in tensors.items() if n.startswith("model.")}, strict=True)
        emo_f, emo_c = tensors["emotion_features"], tensors["emotion_class"]
        if emo_f.ndim != 2 or emo_c.shape != (emo_f.shape[0],) or len(meta.get("mer_texts", [])) != emo_f.shape[0]:
            raise ValueError(f"emotion_features {tuple(emo_f.shape)} / emotion_class {tuple(emo_c.shape)} do not "
                             f"match the {len(meta.get('mer_texts', []))} label texts")
    except (RuntimeError, KeyError, ValueError) as e:
        raise ModelPackageError(f"{folder / WEIGHTS_FILE}: does not fit its model.json "
                                f"({' '.join(str(e).split())[:300]}); train the model again") from None
    net = net.to(dev).eval()
    clip = clip.to(dev).eval()
    return AUModel(folder, meta, clip, net, emo_f.to(dev), emo_c.to(dev), dev)
