"""open_clip backbone split into a frozen prefix and a trainable tail (paper III-A, IV-A).

Only the last k blocks of each tower train and inputs are not augmented, so everything before them is a
constant per sample (visual) and per prompt (text). This module holds the two halves of each tower:
`visual_prefix` / `text_prefix` run the frozen part once (model/prefix.py caches their output), and
`VisualTail` / `TextTail` are the trainable rest. The same split reproduces open_clip's own forward
(tests/test_model_prefix.py checks it against `encode_image`/`encode_text`).
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Optional, Tuple

from model import _torchvision_guard  # noqa: F401  (must precede the first open_clip import)

import open_clip  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

TINY = "microau-tiny"  # 2 layers, width 64, ViT patch 32 at 224 (7x7 grid): for tests and quick starts
open_clip.add_model_config(Path(__file__).parent / "configs" / f"{TINY}.json")

BACKBONE_INIT_SEED = 0  # pretrained: none -> the random backbone is the same for every trial and fold


class BackboneError(ValueError):
    """The backbone cannot be built from the config; the message says which key and what to do."""


# ------------------------------------------------------------------------------------------------------
# weights
def _check_arch(arch: str) -> None:
    if arch not in open_clip.list_models():
        raise BackboneError(f"model.arch: unknown open_clip model {arch!r}; "
                            f"use one of open_clip.list_models() (e.g. ViT-B-32, or {TINY} for tests)")


def resolve_pretrained(arch: str, pretrained: str) -> Tuple[Optional[str], bool, str]:
    """-> (checkpoint path or None, force QuickGELU, weights id for cache keys)."""
    _check_arch(arch)
    if pretrained.lower() == "none":
        return None, False, f"random-init(seed={BACKBONE_INIT_SEED})"
    path = Path(os.path.expanduser(pretrained))
    if path.is_file():
        st = path.stat()
        return str(path), False, f"file:{path.resolve()}:{st.st_size}:{int(st.st_mtime)}"
    cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if not cfg:
        if os.sep in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors")):
            raise BackboneError(f"model.pretrained: checkpoint file {pretrained!r} does not exist; "
                                f"give the path of an open_clip/OpenAI checkpoint of {arch}")
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise BackboneError(f"model.pretrained: {arch} has no pretrained tag {pretrained!r} (it has "
                            f"{tags or 'none'}); use one of those, a local checkpoint path, or 'none'")
    cached = _cached_file(cfg)
    if cached is None:
        where = cfg.get("url") or f"https://huggingface.co/{cfg.get('hf_hub', '').rstrip('/')}"
        raise BackboneError(
            f"model.pretrained: {pretrained!r} weights of {arch} are not in the open_clip / Hugging Face "
            f"cache, and this machine cannot download them. On a machine with internet, download\n"
            f"    {where}\n"
            f"copy the file here (for example to ~/models/{arch}-{pretrained}.pt) and set\n"
            f"    model.pretrained: ~/models/{arch}-{pretrained}.pt\n"
            f"in the sweep file (for OpenAI weights also set model.arch: {arch}-quickgelu, unless the arch "
            f"already uses QuickGELU); or put it in ~/.cache/clip/ under its original name. "
            f"model.pretrained: none trains from a random backbone.")
    return cached, bool(cfg.get("quick_gelu", False)), f"{pretrained}:{Path(cached).name}"


def _cached_file(cfg: dict) -> Optional[str]:
    url = cfg.get("url", "")
    if url:
        p = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if p.is_file():
            return str(p)
    hub = cfg.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - open_clip depends on huggingface_hub
            return None
        repo, filename = os.path.split(hub)
        repo = repo.rstrip("/") if filename else hub.rstrip("/")
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for name in names:
            hit = try_to_load_from_cache(repo, name)
            if isinstance(hit, str) and Path(hit).is_file():
                return hit
    return None


def load_clip(arch: str, pretrained: str) -> Tuple[nn.Module, str]:
    """Build the open_clip model on CPU in eval mode -> (model, weights id)."""
    path, quick_gelu, weights_id = resolve_pretrained(arch, pretrained)
    return create_clip(arch, path, quick_gelu), weights_id


def create_clip(arch: str, path: Optional[str], quick_gelu: bool) -> nn.Module:
    """`arch` on CPU in eval mode, float32: the checkpoint at `path`, or the seeded random init when None
    (also what a cached prefix loads its tail weights into). `quick_gelu` as `resolve_pretrained` says."""
    _check_arch(arch)
    quiet = _no_random_init_warning() if path is None else contextlib.nullcontext()
    with torch.random.fork_rng(devices=[]), quiet:
        torch.manual_seed(BACKBONE_INIT_SEED)
        try:
            clip = open_clip.create_model(arch, pretrained=path, force_quick_gelu=quick_gelu or None,
                                          device="cpu")
        except (RuntimeError, KeyError) as e:
            raise BackboneError(f"model.pretrained: loading {path} into {arch} failed ({e}); is the "
                                f"checkpoint for this architecture?") from None
    clip = clip.float().eval()
    _check_supported(clip, arch)
    return clip


class _RandomInitFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _no_random_init_warning():
    """`pretrained: none` asks for a random backbone: open_clip's warning about it is noise."""
    f = _RandomInitFilter()
    logging.getLogger().addFilter(f)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(f)


def _check_supported(clip: nn.Module, arch: str) -> None:
    v = getattr(clip, "visual", None)
    if not isinstance(v, open_clip.transformer.VisionTransformer):
        raise BackboneError(f"model.arch: {arch} has no open_clip VisionTransformer visual tower "
                            f"(patch tokens are needed for Eq. 1); use a ViT model such as ViT-B-32")
    if v.attn_pool is not None or v.final_ln_after_pool or v.pool_type != "tok":
        raise BackboneError(f"model.arch: {arch}'s visual pooling is not CLIP's class token; unsupported")
    t = _text_parts(clip)
    if t["pool_type"] != "argmax" or t["attn_mask"] is None:
        raise BackboneError(f"model.arch: {arch}'s text tower is not causal with end-of-text pooling; "
                            f"the truncated text prefix would not be exact")


def grid_size(clip: nn.Module) -> Tuple[int, int]:
    return tuple(clip.visual.grid_size)


def num_blocks(clip: nn.Module) -> Tuple[int, int]:
    return len(clip.visual.transformer.resblocks), len(_text_parts(clip)["transformer"].resblocks)


def check_trainable_blocks(clip: nn.Module, k: int, arch: str) -> None:
    nv, nt = num_blocks(clip)
    if k > min(nv, nt):
        raise BackboneError(f"model.trainable_blocks: {k} is more than {arch} has ({nv} visual, {nt} text "
                            f"blocks); set it to at most {min(nv, nt)}")


def _run_blocks(blocks, x: torch.Tensor, batch_first: bool, attn_mask=None) -> torch.Tensor:
    if not batch_first:
        x = x.transpose(0, 1)
    for blk in blocks:
        x = blk(x, attn_mask=attn_mask)
    return x if batch_first else x.transpose(0, 1)


# ------------------------------------------------------------------------------------------------------
# visual tower
def normalise(clip: nn.Module, flow01: torch.Tensor) -> torch.Tensor:
    """[0,1] flow image -> CLIP's input normalisation (mean/std of the backbone's preprocessing)."""
    mean = getattr(clip.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
    std = getattr(clip.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
    mean = torch.tensor(mean, dtype=flow01.dtype, device=flow01.device).view(1, -1, 1, 1)
    std = torch.tensor(std, dtype=flow01.dtype, device=flow01.device).view(1, -1, 1, 1)
    return (flow01 - mean) / std


@torch.no_grad()
def visual_prefix(clip: nn.Module, flow01: torch.Tensor, k: int) -> torch.Tensor:
    """(B, 3, H, W) in [0,1] -> output of visual blocks 1..L-k, (B, 1 + h*w, width)."""
    v = clip.visual
    x = v._embeds(normalise(clip, flow01))
    blocks = v.transformer.resblocks
    return _run_blocks(blocks[: len(blocks) - k], x, v.transformer.batch_first)


class VisualTail(nn.Module):
    """Visual blocks L-k+1..L, then ln_post and proj on every token (DESIGN.md: patch tokens)."""

    def __init__(self, clip: nn.Module, k: int):
        super().__init__()
        v = clip.visual
        n = len(v.transformer.resblocks)
        self.blocks = nn.ModuleList(list(v.transformer.resblocks)[n - k:])
        self.batch_first = v.transformer.batch_first
        self.ln_post = v.ln_post
        self.proj = v.proj  # (width, d)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, 1+G, width) prefix -> patch tokens (B, G, d) in the joint space, global feature (B, d)."""
        x = self.ln_post(_run_blocks(self.blocks, x, self.batch_first))
        x = x @ self.proj
        return x[:, 1:], x[:, 0]


# ------------------------------------------------------------------------------------------------------
# text tower
def _text_parts(clip: nn.Module) -> dict:
    t = clip.text if hasattr(clip, "text") else clip  # CustomTextCLIP / CLIP
    return {"token_embedding": t.token_embedding, "positional_embedding": t.positional_embedding,
            "transformer": t.transformer, "ln_final": t.ln_final, "text_projection": t.text_projection,
            "attn_mask": t.attn_mask,
            "pool_type": getattr(t, "text_pool_type", getattr(t, "pool_type", "argmax"))}


def tokenize(arch: str, texts) -> torch.Tensor:
    return open_clip.get_tokenizer(arch)(list(texts))


def eot_positions(ids: torch.Tensor) -> torch.Tensor:
    """End-of-text position per prompt: CLIP pools there (the EOT id is the largest in the vocabulary)."""
    return ids.argmax(dim=-1)


@torch.no_grad()
def text_prefix(clip: nn.Module, ids: torch.Tensor, k: int) -> torch.Tensor:
    """(P, T) token ids, T = the longest prompt's EOT position + 1 -> output of text blocks 1..L-k,
    (P, T, width). Exact under the causal mask: positions after T never reach positions before it."""
    p = _text_parts(clip)
    T = ids.shape[1]
    x = p["token_embedding"](ids) + p["positional_embedding"][:T]
    blocks = p["transformer"].resblocks
    return _run_blocks(blocks[: len(blocks) - k], x, p["transformer"].batch_first,
                       attn_mask=p["attn_mask"][:T, :T])


class TextTail(nn.Module):
    """Text blocks L-k+1..L, ln_final, the feature at the EOT token, text_projection."""

    def __init__(self, clip: nn.Module, k: int, context: int):
        super().__init__()
        p = _text_parts(clip)
        n = len(p["transformer"].resblocks)
        self.blocks = nn.ModuleList(list(p["transformer"].resblocks)[n - k:])
        self.batch_first = p["transformer"].batch_first
        self.ln_final = p["ln_final"]
        self.text_projection = p["text_projection"]
        self.register_buffer("attn_mask", p["attn_mask"][:context, :context].clone(), persistent=False)

    def forward(self, h: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """(P, T, width) prefix, (P,) EOT positions -> text features (P, d)."""
        T = h.shape[1]  # the group's truncated context: slice the causal mask to it
        x = self.ln_final(_run_blocks(self.blocks, h, self.batch_first, attn_mask=self.attn_mask[:T, :T]))
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection
