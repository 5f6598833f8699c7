"""open_clip backbone split into a frozen prefix and a trainable tail (paper III-A, IV-A).

Only the last k blocks of each tower train and inputs are not augmented, so everything before them is a
constant per sample (visual) and per prompt (text). This module holds the two halves of each tower:
`visual_prefix` / `text_prefix` run the frozen part once (model/prefix.py caches their output), and
`VisualTail` / `TextTail` are the trainable rest. The same split reproduces open_clip's own forward
(tests/unit/model/test_model_prefix.py checks it against `encode_image`/`encode_text`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path

from model import _torchvision_guard  # noqa: F401 - must precede the first open_clip import

# isort: split
import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from preprocessing.checkpoints import mismatch
from preprocessing.errors import MicroAUError

logger = logging.getLogger(__name__)

TINY = "microau-tiny"  # 2 layers, width 64, ViT patch 32 at 224 (7x7 grid): for tests and quick starts
open_clip.add_model_config(Path(__file__).parent / "configs" / f"{TINY}.json")

BACKBONE_INIT_SEED = 0  # pretrained: none -> the random backbone is the same for every trial and fold


class BackboneError(MicroAUError, ValueError):
    """The backbone cannot be built from the config; the message says which key and what to do."""


# ------------------------------------------------------------------------------------------------------
# weights (docs/model.md "Backbone weights": the forms read, the QuickGELU rule, what is never unpickled)
TORCHSCRIPT, STATE_DICT, SAFETENSORS = "torchscript", "state_dict", "safetensors"  # file forms, by content
_FORM_NAMES = {TORCHSCRIPT: "OpenAI TorchScript archive", STATE_DICT: "state dict", SAFETENSORS: "safetensors"}
_OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")  # entries only OpenAI's archive has
_FINGERPRINT_BYTES = 1 << 20  # the weights id hashes the first and the last MiB of the file
_ANNOUNCED: set = set()  # (arch, file, activation) already named (logged) by this process
_USE = ("use OpenAI's ViT-B-32.pt, open_clip's open_clip_pytorch_model.bin / open_clip_model.safetensors, "
        "or a state dict saved with torch.save(model.state_dict())")


def _check_arch(arch: str) -> None:
    if arch not in open_clip.list_models():
        raise BackboneError(f"model.arch: unknown open_clip model {arch!r}; "
                            f"use one of open_clip.list_models() (e.g. ViT-B-32, or {TINY} for tests)")


def resolve_pretrained(arch: str, pretrained: str) -> tuple[str | None, bool, str]:
    """-> (checkpoint path or None, QuickGELU, weights id for cache keys).

    `pretrained` is 'none', an open_clip tag of `arch` whose file is already in ~/.cache/clip or the
    Hugging Face cache, or a path to OpenAI's TorchScript archive, a state dict (.bin/.pt) or a
    .safetensors file. QuickGELU follows from what the weights are (`_quick_gelu`). The weights id names
    the file form, its size, a hash of its first and last MiB (not its path or mtime: a moved or copied
    file keeps its id) and the activation. Reads at most a few MiB; no tensor is loaded."""
    _check_arch(arch)
    if pretrained.lower() == "none":
        return None, False, f"random-init(seed={BACKBONE_INIT_SEED})"
    path = Path(os.path.expanduser(pretrained))
    if path.is_file():
        form = file_form(path)
        quick = _quick_gelu(arch, path, form)
        return str(path), quick, _weights_id(path, form, quick)
    cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if not cfg:
        if os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
            raise BackboneError(f"model.pretrained: checkpoint file {pretrained!r} does not exist; give the "
                                f"path of a checkpoint of {arch} ({_USE})")
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise BackboneError(f"model.pretrained: {arch} has no pretrained tag {pretrained!r} (it has "
                            f"{tags or 'none'}); use one of those, a local checkpoint path, or 'none'")
    cached = _cached_file(cfg)
    if cached is None:
        raise BackboneError(_missing_weights(arch, pretrained, cfg))
    path = Path(cached)
    form = file_form(path)
    quick = bool(cfg.get("quick_gelu")) or _quick_gelu(arch, path, form)
    return cached, quick, _weights_id(path, form, quick)


def _hub_repo(hub: str) -> tuple[str, str]:
    """open_clip's `hf_hub` ('org/name/' or 'org/name/file') -> (repo id, file name or '')."""
    repo, filename = os.path.split(hub)
    return (repo.rstrip("/"), filename) if filename else (hub.rstrip("/"), "")


def _missing_weights(arch: str, tag: str, cfg: dict) -> str:
    """What to do when the tag's file is not on this machine: every file that works and where it goes."""
    url, hub = cfg.get("url", ""), cfg.get("hf_hub", "")
    lines = [f"model.pretrained: the {tag!r} weights of {arch} are not on this machine, and this tool never "
             f"downloads. Any one of these files works (download it on a machine with internet):"]
    example = f"~/models/{arch}-{tag}.safetensors"
    if url:
        name = os.path.basename(url)
        lines.append(f"  - OpenAI's original {name} (a TorchScript archive), {url}\n"
                     f"    put it at ~/.cache/clip/{name}")
        example = f"~/models/{arch}-{tag}.pt"
    if hub:
        repo, filename = _hub_repo(hub)
        files = filename or "open_clip_model.safetensors (or open_clip_pytorch_model.bin)"
        lines.append(f"  - {files} of the Hugging Face repo {repo}\n"
                     f"    in the Hugging Face cache ($HF_HUB_CACHE, by default ~/.cache/huggingface/hub; "
                     f"`huggingface-cli download {repo} {filename or 'open_clip_model.safetensors'}` puts it "
                     f"there: copy the folder models--{repo.replace('/', '--')} over)")
    lines.append(f"  - either file anywhere, with its path in the sweep file:\n"
                 f"    model.pretrained: {example}")
    if cfg.get("quick_gelu"):
        lines.append(f"These weights use QuickGELU, which is chosen from the file: OpenAI's archive, the cache "
                     f"folders above, or a file name containing {tag!r} (as in the example). Keep model.arch: "
                     f"{arch}.")
    lines.append("model.pretrained: none trains from a random backbone.")
    return "\n".join(lines)


def _cached_file(cfg: dict) -> str | None:
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
        repo, filename = _hub_repo(hub)
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for name in names:
            hit = try_to_load_from_cache(repo, name)
            if isinstance(hit, str) and Path(hit).is_file():
                return hit
    return None


def file_form(path) -> str:
    """What a weights file is, from its bytes (not its name): TORCHSCRIPT (a zip with `constants.pkl`,
    the test torch.load itself uses), SAFETENSORS (an 8-byte header length, then JSON) or STATE_DICT
    (anything else: read by torch.load(weights_only=True), which names what is wrong with it)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as z:
                records = {name.split("/", 1)[-1] for name in z.namelist()}
        except (zipfile.BadZipFile, OSError):
            return STATE_DICT
        return TORCHSCRIPT if "constants.pkl" in records else STATE_DICT
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        return SAFETENSORS
    return STATE_DICT


def _tensor_names(path: Path, form: str) -> list[str]:
    """The entry names of a safetensors file (its JSON header) or of a torch.save zip (the strings of its
    data.pkl, listed by pickletools without unpickling); [] for other forms. Reads no tensor."""
    try:
        if form == SAFETENSORS:
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                return [k for k in json.loads(f.read(n)) if k != "__metadata__"]
        if form == STATE_DICT and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                pkl = next((n for n in z.namelist() if n.split("/", 1)[-1] == "data.pkl"), None)
                if pkl is None:
                    return []
                return [arg for op, arg, _ in pickletools.genops(z.read(pkl)) if isinstance(arg, str)]
    except Exception:  # noqa: BLE001 - unreadable: the load names the problem
        return []
    return []


def _quick_gelu(arch: str, path: Path, form: str) -> bool:
    """Whether the weights in `path` were trained with QuickGELU (docs/model.md "Backbone weights"):
    the arch is a `-quickgelu` config; or the file is OpenAI's (its TorchScript archive, or a state dict
    still holding the archive's input_resolution/context_length/vocab_size entries); or, since the
    tensors of a .bin/.safetensors cannot tell, the file sits in the Hugging Face cache folder of a tag of
    `arch`, or its name contains a tag of `arch` as a word (`ViT-B-32-openai.safetensors`), and open_clip's
    pretrained config of that tag says QuickGELU. Otherwise GELU."""
    if (open_clip.get_model_config(arch) or {}).get("quick_gelu"):
        return True
    if form == TORCHSCRIPT or any(k in _OPENAI_EXTRAS for k in _tensor_names(path, form)):
        return True
    tags = {t: open_clip.get_pretrained_cfg(arch, t) for t in open_clip.list_pretrained_tags_by_model(arch)}
    for cfg in tags.values():
        repo, _ = _hub_repo(cfg.get("hf_hub", ""))
        if repo and f"models--{repo.replace('/', '--')}" in path.parts:
            return bool(cfg.get("quick_gelu"))
    name = path.name.lower()
    return any(cfg.get("quick_gelu") and re.search(rf"(?<![a-z0-9]){re.escape(t.lower())}(?![a-z0-9])", name)
               for t, cfg in tags.items())


def _weights_id(path: Path, form: str, quick_gelu: bool) -> str:
    """form:size:hash:activation, the hash over the size and the first and last MiB of the file."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(_FINGERPRINT_BYTES))
        if size > _FINGERPRINT_BYTES:
            f.seek(max(_FINGERPRINT_BYTES, size - _FINGERPRINT_BYTES))
            h.update(f.read())
    return f"{form}:{size}:{h.hexdigest()[:16]}:{'quickgelu' if quick_gelu else 'gelu'}"


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def read_weights(path, form: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, by its form (`file_form`): a TorchScript archive through
    torch.jit.load (this runs the archive's TorchScript code: the known limit, docs/model.md), a
    .safetensors through safetensors, anything else through torch.load(weights_only=True), which builds
    tensors and plain containers only and refuses any other object without creating it. Unwraps an
    open_clip training checkpoint ('state_dict') and a DataParallel 'module.' prefix, and drops OpenAI's
    three entries that are not weights (input_resolution, context_length, vocab_size)."""
    form = form or file_form(path)
    try:
        if form == TORCHSCRIPT:
            with warnings.catch_warnings():  # torch.jit is deprecated, and the only reader of OpenAI's file
                warnings.simplefilter("ignore", DeprecationWarning)
                sd = torch.jit.load(str(path), map_location="cpu").state_dict()
        elif form == SAFETENSORS:
            from safetensors.torch import load_file
            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise BackboneError(f"model.pretrained: {path} cannot be read as a {_FORM_NAMES[form]} "
                                f"(UnpicklingError: {_first_line(e)}); {_USE}") from None
        # weights_only refused it (an object other than tensors and plain containers, or bytes that are
        # no pickle): nothing of it was built
        m = re.search(r"WeightsUnpickler error:(.*?)(?:Please use|Check the documentation|$)", str(e), re.S)
        why = " ".join((m.group(1) if m else _first_line(e)).split())
        raise BackboneError(f"model.pretrained: {path} is not a plain checkpoint: torch.load(weights_only=True), "
                            f"which builds tensors and plain containers only, refused it ({why}); nothing in "
                            f"it was unpickled. {_USE[0].upper()}{_USE[1:]}") from None
    except Exception as e:  # noqa: BLE001 - any other failure of the load: the message names the file
        raise BackboneError(f"model.pretrained: {path} cannot be read as a {_FORM_NAMES[form]} "
                            f"({type(e).__name__}: {_first_line(e)}); {_USE}") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]  # an open_clip training checkpoint
    if not isinstance(sd, dict) or not sd:
        raise BackboneError(f"model.pretrained: {path} holds no state dict (it holds a {type(sd).__name__}); "
                            f"{_USE}")
    odd = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if odd:
        raise BackboneError(f"model.pretrained: {path} is not a state dict: its entry {odd[0]!r} is not a "
                            f"named tensor; {_USE}")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}  # saved from (Distributed)DataParallel
    return {k: v for k, v in sd.items() if k not in _OPENAI_EXTRAS}


def load_weights(clip: nn.Module, state_dict: dict[str, torch.Tensor], arch: str, path) -> None:
    """open_clip's own key conversions (those of `open_clip.load_checkpoint`, without its resizing of
    position embeddings: another grid is another architecture here), then a check that names the first
    tensor that does not fit, then a strict load."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict

    sd = convert_state_dict(clip, dict(state_dict))
    if "positional_embedding" in sd and not hasattr(clip, "positional_embedding"):
        sd = convert_to_custom_text_state_dict(sd)
    if "logit_scale" in sd and clip.logit_scale.ndim != sd["logit_scale"].ndim:
        sd["logit_scale"] = sd["logit_scale"].reshape(clip.logit_scale.shape)
    why = mismatch(clip.state_dict(), sd, arch)
    if why:
        raise BackboneError(f"model.pretrained: {path} does not fit {arch}: {why}; is it a checkpoint of "
                            f"another architecture?")
    clip.load_state_dict(sd, strict=True)


def load_clip(arch: str, pretrained: str) -> tuple[nn.Module, str]:
    """Build the open_clip model on CPU in eval mode -> (model, weights id)."""
    path, quick_gelu, weights_id = resolve_pretrained(arch, pretrained)
    return create_clip(arch, path, quick_gelu), weights_id


def create_clip(arch: str, path: str | None, quick_gelu: bool) -> nn.Module:
    """`arch` on CPU in eval mode, float32: the seeded random init (also what a cached prefix loads its
    tail weights into), then the weights of `path` when given (`read_weights`, `load_weights`; the first
    load of a file in a process logs it and its activation, for stderr). `quick_gelu` as
    `resolve_pretrained` says."""
    _check_arch(arch)
    with torch.random.fork_rng(devices=[]), _no_random_init_warning():
        torch.manual_seed(BACKBONE_INIT_SEED)
        clip = open_clip.create_model(arch, pretrained=None, force_quick_gelu=quick_gelu or None, device="cpu")
    clip = clip.float().eval()
    _check_supported(clip, arch)
    if path is not None:
        form = file_form(path)
        load_weights(clip, read_weights(path, form), arch, path)
        _announce(clip, arch, path, form)
    return clip


def _announce(clip: nn.Module, arch: str, path, form: str) -> None:
    """One INFO record per (arch, file, activation) and process: which weights the run uses. It is a
    notice, not a result: `stderr=True` asks the CLI's handler to print it on stderr, not stdout."""
    act = type(getattr(getattr(clip.visual.transformer.resblocks[0], "mlp", None), "gelu", None)).__name__
    key = (arch, os.path.realpath(path), act)
    if key not in _ANNOUNCED:
        _ANNOUNCED.add(key)
        logger.info("backbone: %s from %s (%s, %s)", arch, path, _FORM_NAMES[form], act, extra={"stderr": True})


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


def grid_size(clip: nn.Module) -> tuple[int, int]:
    return tuple(clip.visual.grid_size)


def num_blocks(clip: nn.Module) -> tuple[int, int]:
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


def _lean(blk) -> bool:
    """open_clip's plain pre-LN block (packed q/k/v projection, no dropout, no extra norms)?"""
    a = getattr(blk, "attn", None)
    return (isinstance(blk, open_clip.transformer.ResidualAttentionBlock) and isinstance(a, nn.MultiheadAttention)
            and a._qkv_same_embed_dim and a.in_proj_bias is not None and a.bias_k is None and not a.add_zero_attn
            and a.dropout == 0.0 and not hasattr(blk, "ln_1_kv"))


def _block(blk, x: torch.Tensor, attn_mask=None) -> torch.Tensor:
    """One ResidualAttentionBlock on batch-first x (B, T, W), the same computation as its forward
    (x + attn(ln_1(x)), then + mlp(ln_2(x))) written without nn.MultiheadAttention's sequence-first
    transposes and per-head copies: one packed q/k/v projection, scaled_dot_product_attention on views,
    one out projection. Fewer operations per step (launches on a GPU); used by the trainable tails."""
    a = blk.attn
    b, t, w = x.shape
    qkv = F.linear(blk.ln_1(x), a.in_proj_weight, a.in_proj_bias)
    q, k, v = qkv.view(b, t, 3, a.num_heads, w // a.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
    mask = attn_mask.to(x.dtype) if attn_mask is not None else None
    if torch._C._functorch.is_batchedtensor(q):  # under vmap (stacked folds): CPU's fused kernel has no
        # batching rule and would run once per fold; the same attention as three batched operations
        s = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
        o = torch.softmax(s if mask is None else s + mask, dim=-1) @ v
    else:
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    o = o.transpose(1, 2).reshape(b, t, w)
    x = x + blk.ls_1(F.linear(o, a.out_proj.weight, a.out_proj.bias))
    return x + blk.ls_2(blk.mlp(blk.ln_2(x)))


def _run_tail(blocks, x: torch.Tensor, batch_first: bool, attn_mask=None) -> torch.Tensor:
    """The trainable tail's blocks: `_block` where the block is open_clip's plain one, else its own forward."""
    if not all(_lean(blk) for blk in blocks):
        return _run_blocks(blocks, x, batch_first, attn_mask)
    for blk in blocks:
        x = _block(blk, x, attn_mask)
    return x


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
    """Visual blocks L-k+1..L, then ln_post and proj on every token (docs/protocol.md: patch tokens)."""

    def __init__(self, clip: nn.Module, k: int):
        super().__init__()
        v = clip.visual
        n = len(v.transformer.resblocks)
        self.blocks = nn.ModuleList(list(v.transformer.resblocks)[n - k:])
        self.batch_first = v.transformer.batch_first
        self.ln_post = v.ln_post
        self.proj = v.proj  # (width, d)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1+G, width) prefix -> patch tokens (B, G, d) in the joint space, global feature (B, d)."""
        x = self.ln_post(_run_tail(self.blocks, x, self.batch_first))
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
        x = self.ln_final(_run_tail(self.blocks, h, self.batch_first, attn_mask=self.attn_mask[:T, :T]))
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection
