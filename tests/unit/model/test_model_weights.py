"""Backbone weights in every published form (docs/model.md "Backbone weights"): OpenAI's TorchScript
archive, open_clip's .bin state dict and .safetensors, open_clip tags found in ~/.cache/clip or the Hugging
Face cache; QuickGELU from what the weights are; file identity in the weights id; nothing unpickled.

Checkpoints are written here from random-init models (microau-tiny has ViT-B-32's structure; one test
uses ViT-B-32 itself for the `openai` tag). Nothing is downloaded.
"""
import re
import shutil
import warnings

import open_clip
import pytest
import torch
from torch import nn

from model import backbone, compute_prefix
from model.config import ModelConfig

from support.data import CASME2_AUS, fake_prepared

TINY = "microau-tiny"
OPENAI_EXTRAS = {"input_resolution": torch.tensor(224), "context_length": torch.tensor(77),
                 "vocab_size": torch.tensor(49408)}
PROMPTS = ["The eyebrows are lowering", "The lip corners are not pulling up"]


@pytest.fixture(autouse=True)
def no_real_caches(tmp_path, monkeypatch):
    """Every test sees an empty home and Hugging Face cache (nothing of the machine's is read)."""
    import huggingface_hub.constants as hf
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(backbone, "_ANNOUNCED", set(), raising=False)


def _source(arch=TINY, quick_gelu=False, seed=1):
    """A random CLIP of `arch` (another seed than the backbone's own init), float32, eval."""
    torch.manual_seed(seed)
    return open_clip.create_model(arch, pretrained=None, force_quick_gelu=quick_gelu or None).float().eval()


class _Node(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _torchscript(state: dict, path):
    """A TorchScript archive holding `state` under its names, nested as OpenAI's ViT-B-32.pt holds them
    (visual.transformer.resblocks.0.attn.in_proj_weight, ..., plus input_resolution, context_length,
    vocab_size)."""
    root = _Node()
    for name, t in state.items():
        *mods, leaf = name.split(".")
        m = root
        for part in mods:
            if not hasattr(m, part):
                m.add_module(part, _Node())
            m = getattr(m, part)
        m.register_buffer(leaf, t.detach().clone())
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # torch.jit.script is deprecated; OpenAI's file is what it writes
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(root).save(str(path))
    return path


def _openai_state(clip) -> dict:
    """`clip`'s tensors under OpenAI's names (open_clip's CLIP uses them) plus the archive's extras."""
    return {**clip.state_dict(), **OPENAI_EXTRAS}


def _assert_same_features(loaded, source, arch=TINY):
    torch.manual_seed(3)
    images = torch.randn(2, 3, 224, 224)
    ids = backbone.tokenize(arch, PROMPTS)
    with torch.no_grad():
        assert (loaded.encode_image(images) - source.encode_image(images)).abs().max().item() < 1e-5
        assert (loaded.encode_text(ids) - source.encode_text(ids)).abs().max().item() < 1e-5


def _act(clip) -> type:
    return type(clip.visual.transformer.resblocks[0].mlp.gelu)


def test_openai_torchscript_archive_loads_with_quick_gelu_and_says_so_once(tmp_path, capsys):
    source = _source(quick_gelu=True)
    path = _torchscript(_openai_state(source), tmp_path / "models" / "ViT-B-32.pt")
    assert backbone.file_form(path) == backbone.TORCHSCRIPT
    got, quick, wid = backbone.resolve_pretrained(TINY, str(path))
    assert (got, quick) == (str(path), True)
    assert re.fullmatch(r"torchscript:\d+:[0-9a-f]{16}:quickgelu", wid)
    clip, wid2 = backbone.load_clip(TINY, str(path))
    assert wid2 == wid and _act(clip) is open_clip.transformer.QuickGELU
    _assert_same_features(clip, source)
    backbone.load_clip(TINY, str(path))  # loaded again in the same process: not announced again
    err = capsys.readouterr().err
    assert err == f"backbone: {TINY} from {path} (OpenAI TorchScript archive, QuickGELU)\n"
    # the prefix records the activation and rebuilds its tails with it
    prefix = compute_prefix(ModelConfig(arch=TINY, pretrained=str(path), trainable_blocks=1),
                            fake_prepared(subjects=2, per_subject=2, seed=5), CASME2_AUS)
    assert prefix.identity["quick_gelu"] is True and prefix.identity["weights"] == wid
    assert isinstance(prefix.visual_tail.blocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("name", ["open_clip_pytorch_model.bin", "open_clip_model.safetensors",
                                  "epoch_32.pt"])
def test_open_clip_state_dicts_load_without_torchscript(tmp_path, monkeypatch, capsys, name):
    """open_clip's files (open_clip names, GELU): the features are the source's; torch.jit is never used."""
    from safetensors.torch import save_file
    source = _source()
    path = tmp_path / name
    if name.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
        form = backbone.SAFETENSORS
    elif name.startswith("epoch"):  # an open_clip training checkpoint, saved from DistributedDataParallel
        torch.save({"epoch": 32, "name": "run", "state_dict": {f"module.{k}": v for k, v in
                                                               source.state_dict().items()}}, path)
        form = backbone.STATE_DICT
    else:
        torch.save(source.state_dict(), path)
        form = backbone.STATE_DICT
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load on a state dict"))
    assert backbone.file_form(path) == form
    got, quick, wid = backbone.resolve_pretrained(TINY, str(path))
    assert quick is False and re.fullmatch(rf"{form}:\d+:[0-9a-f]{{16}}:gelu", wid)
    clip, _ = backbone.load_clip(TINY, str(path))
    assert _act(clip) is not open_clip.transformer.QuickGELU
    _assert_same_features(clip, source)
    assert capsys.readouterr().err == f"backbone: {TINY} from {path} ({backbone._FORM_NAMES[form]}, GELU)\n"


def test_weights_id_is_the_file_not_its_path(tmp_path):
    """A moved or copied file keeps its id (size + hash of the first and last MiB); other content or
    another activation gives another id; the path and mtime are not in it."""
    source = _source()
    a = tmp_path / "a" / "w.bin"
    a.parent.mkdir()
    torch.save(source.state_dict(), a)
    b = tmp_path / "b" / "moved.bin"
    b.parent.mkdir()
    shutil.copyfile(a, b)
    wid = backbone.resolve_pretrained(TINY, str(a))[2]
    assert backbone.resolve_pretrained(TINY, str(b))[2] == wid
    assert str(tmp_path) not in wid and "w.bin" not in wid
    with torch.no_grad():
        source.visual.proj.mul_(2)
    torch.save(source.state_dict(), a)
    assert backbone.resolve_pretrained(TINY, str(a))[2] != wid
    # the same bytes under an OpenAI name -> QuickGELU -> another id
    c = tmp_path / "b" / "ViT-B-32-openai.bin"
    shutil.copyfile(b, c)
    _, quick, wid_c = backbone.resolve_pretrained("ViT-B-32", str(c))  # resolving reads no tensor
    assert quick is True and wid_c == wid.replace(":gelu", ":quickgelu")


def test_quick_gelu_rule_for_files(tmp_path):
    """What the weights are decides the activation: OpenAI's archive or its entries, the Hugging Face
    cache folder of a QuickGELU tag, or a file name holding such a tag (ViT-B-32's: openai,
    laion400m_e31, metaclip_400m, ...); a -quickgelu arch always. resolve_pretrained loads no tensor, so
    a small file stands in for ViT-B-32's."""
    from safetensors.torch import save_file
    state = {"w": torch.zeros(2)}

    def st(rel):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(p))
        return str(p)

    def quick(arch, p):
        return backbone.resolve_pretrained(arch, p)[1]

    assert quick("ViT-B-32", st("ViT-B-32-openai.safetensors")) is True
    assert quick("ViT-B-32", st("OpenAI_ViT-B-32.safetensors")) is True
    assert quick("ViT-B-32", st("vit-b-32.laion400m_e31.safetensors")) is True  # open_clip's QuickGELU tag
    assert quick("ViT-B-32", st("ViT-B-32-laion2b_s34b_b79k.safetensors")) is False
    assert quick("ViT-B-32", st("open_clip_model.safetensors")) is False
    assert quick("ViT-B-32", st("notopenai.safetensors")) is False
    hub = "hub/models--timm--vit_base_patch32_clip_224.openai/snapshots/0123abcd/open_clip_model.safetensors"
    assert quick("ViT-B-32", st(hub)) is True
    laion = "hub/models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K/snapshots/0123abcd/open_clip_model.safetensors"
    assert quick("ViT-B-32", st(laion)) is False
    assert quick("ViT-B-32-quickgelu", st("open_clip_model.safetensors")) is True
    assert quick(TINY, st("ViT-B-32-openai.safetensors")) is False  # microau-tiny has no such tag
    # OpenAI's state dict saved again with torch.save keeps the archive's extra entries: QuickGELU
    saved = tmp_path / "state_of_the_archive.pt"
    torch.save({**_source().state_dict(), **OPENAI_EXTRAS}, saved)
    assert quick(TINY, str(saved)) is True
    clip, _ = backbone.load_clip(TINY, str(saved))  # the extras are dropped on load
    assert _act(clip) is open_clip.transformer.QuickGELU


def test_openai_tag_in_hugging_face_cache_is_found(tmp_path):
    """`openai` with open_clip_model.safetensors of timm/vit_base_patch32_clip_224.openai in the Hugging
    Face cache: that file, QuickGELU, and a weights id of the file (its tensors are not read here)."""
    from safetensors.torch import save_file
    repo = tmp_path / "hf" / "models--timm--vit_base_patch32_clip_224.openai"
    snap = repo / "snapshots" / ("ab" * 20)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("ab" * 20)
    save_file({"w": torch.zeros(2)}, str(snap / "open_clip_model.safetensors"))
    path, quick, wid = backbone.resolve_pretrained("ViT-B-32", "openai")
    assert path == str(snap / "open_clip_model.safetensors") and quick is True
    assert re.fullmatch(r"safetensors:\d+:[0-9a-f]{16}:quickgelu", wid)


def _vit_b32_openai_state(seed=0) -> dict:
    """Random fp16 tensors (OpenAI's file is fp16) for every ViT-B-32 entry, under OpenAI's names; the
    values come from one random vector, cut at a different place per tensor (fast: no 151M-draw)."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in open_clip.model.CLIP(**open_clip.get_model_config("ViT-B-32"))
                  .state_dict().items()}
    biggest = max(s.numel() for s in shapes.values())
    base = torch.randn(biggest + 4099, generator=torch.Generator().manual_seed(seed)).mul_(0.02)
    out = {k: base[(i * 1009) % 4099:][:s.numel()].view(s).half() for i, (k, s) in enumerate(shapes.items())}
    out["logit_scale"] = torch.tensor(4.6052, dtype=torch.float16)
    return {**out, **OPENAI_EXTRAS}


def test_openai_tag_in_clip_cache_loads_vit_b32_with_quick_gelu(tmp_path, capsys):
    """The `openai` tag with OpenAI's ViT-B-32.pt in ~/.cache/clip (fp16 TorchScript, as published):
    every tensor of the loaded float32 model is the file's, with QuickGELU, and the run says so once."""
    state = _vit_b32_openai_state()
    path = _torchscript(state, tmp_path / "home" / ".cache" / "clip" / "ViT-B-32.pt")
    got, quick, wid = backbone.resolve_pretrained("ViT-B-32", "openai")
    assert (got, quick) == (str(path), True) and wid.startswith("torchscript:")
    clip, _ = backbone.load_clip("ViT-B-32", "openai")
    assert _act(clip) is open_clip.transformer.QuickGELU
    loaded = clip.state_dict()
    assert set(loaded) == set(state) - set(OPENAI_EXTRAS)
    assert all(loaded[k].dtype == torch.float32 and torch.equal(loaded[k], state[k].float()) for k in loaded)
    assert capsys.readouterr().err == f"backbone: ViT-B-32 from {path} (OpenAI TorchScript archive, QuickGELU)\n"


@pytest.fixture(scope="module")
def other_arch(tmp_path_factory):
    """microau-tiny with 16-pixel patches and 3 layers: another architecture of the same family."""
    import json
    from pathlib import Path
    cfg = json.loads((Path(backbone.__file__).parent / "configs" / f"{TINY}.json").read_text())
    cfg["vision_cfg"].update(patch_size=16, layers=3)
    path = tmp_path_factory.mktemp("cfg") / "microau-test-p16.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return "microau-test-p16"


def test_checkpoint_of_another_architecture_names_the_tensor_and_shapes(tmp_path, other_arch):
    path = tmp_path / "other.bin"
    torch.save(_source(other_arch).state_dict(), path)
    with pytest.raises(backbone.BackboneError) as e:
        backbone.load_clip(TINY, str(path))
    msg = str(e.value)
    assert msg.startswith(f"model.pretrained: {path} does not fit {TINY}: tensor visual.positional_embedding is "
                          f"(50, 64) in {TINY} but (197, 64) in the file (1 more tensor differs in shape); ")
    assert re.search(r"the file has 12 tensors \(visual\.transformer\.resblocks\.2\.\S+, \S+, \S+, \.\.\.\) "
                     rf"that {TINY} has not; is it a checkpoint of another architecture\?$", msg)
    # missing and unexpected names, first few
    state = _source().state_dict()
    del state["visual.proj"], state["text_projection"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(backbone.BackboneError, match=rf"does not fit {TINY}: the file lacks 2 tensors "
                                                     rf"\(text_projection, visual\.proj\) of {TINY}; the file "
                                                     rf"has tensor extra\.weight that {TINY} has not; is it"):
        backbone.load_clip(TINY, str(path))


class _Planted:
    """Unpickling it would create `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("zipped", [True, False])
def test_pickle_that_runs_code_is_refused_without_running(tmp_path, zipped):
    marker = tmp_path / "ran"
    path = tmp_path / "open_clip_pytorch_model.bin"
    state = {**_source().state_dict(), "visual.proj": _Planted(marker)}
    torch.save(state, path, _use_new_zipfile_serialization=zipped)
    assert backbone.file_form(path) == backbone.STATE_DICT
    _, quick, _ = backbone.resolve_pretrained(TINY, str(path))  # the names are listed without unpickling
    assert not marker.exists()
    with pytest.raises(backbone.BackboneError, match=rf"model.pretrained: {re.escape(str(path))} is not a plain "
                                                     r"checkpoint: torch.load\(weights_only=True\), .* refused it "
                                                     r"\(Unsupported global: GLOBAL \S*open.*\); nothing in it "
                                                     r"was unpickled"):
        backbone.load_clip(TINY, str(path))
    assert not marker.exists()


def test_unreadable_files_say_which_file_and_form(tmp_path):
    bad = tmp_path / "torn.safetensors"
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(1000)}, str(bad))
    bad.write_bytes(bad.read_bytes()[:-100])
    with pytest.raises(backbone.BackboneError, match=r"torn\.safetensors cannot be read as a safetensors"):
        backbone.load_clip(TINY, str(bad))
    noise = tmp_path / "noise.bin"
    noise.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(backbone.BackboneError, match=r"noise\.bin is not a plain checkpoint: .* refused it "
                                                     r"\(Unsupported operand"):
        backbone.load_clip(TINY, str(noise))
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(backbone.BackboneError, match=r"tensor\.pt holds no state dict \(it holds a Tensor\)"):
        backbone.load_clip(TINY, str(tensor))


def test_missing_openai_weights_say_which_files_work_and_where(tmp_path):
    with pytest.raises(backbone.BackboneError) as e:
        backbone.resolve_pretrained("ViT-B-32", "openai")
    msg = str(e.value)
    for part in ("this tool never downloads", "OpenAI's original ViT-B-32.pt (a TorchScript archive)",
                 "https://openaipublic.azureedge.net/clip/models/", "put it at ~/.cache/clip/ViT-B-32.pt",
                 "open_clip_model.safetensors (or open_clip_pytorch_model.bin) of the Hugging Face repo "
                 "timm/vit_base_patch32_clip_224.openai", "Hugging Face cache",
                 "model.pretrained: ~/models/ViT-B-32-openai.pt", "Keep model.arch: ViT-B-32.",
                 "model.pretrained: none trains from a random backbone"):
        assert part in msg, part
    assert "-quickgelu" not in msg and str(tmp_path) not in msg and "/root" not in msg and "/work" not in msg
    # the example path really gets QuickGELU
    example = tmp_path / "home" / "models" / "ViT-B-32-openai.pt"
    example.parent.mkdir(parents=True)
    torch.save({"w": torch.zeros(1)}, example)
    assert backbone.resolve_pretrained("ViT-B-32", "~/models/ViT-B-32-openai.pt")[:2] == (str(example), True)
