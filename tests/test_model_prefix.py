"""Backbone and frozen-prefix cache: the cached / truncated path equals open_clip's plain forward."""
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from model import backbone, compute_prefix, train_fold
from model.config import ModelConfig, TrainConfig
from model.lsi import au_token_indices, landmark_groups
from model.net import MicroAUCLIP
from model.train import FoldError
from test_model_data import CASME2_AUS, fake_prepared

TINY = dict(arch="microau-tiny", pretrained="none")


@pytest.fixture(scope="module")
def data():
    return fake_prepared(subjects=2, per_subject=3, seed=5)


def _plain_probs(clip, model, data, aus, cfg):
    """AU probabilities the plain way: open_clip's whole visual tower on the image, full 77-token text."""
    clip.visual.output_tokens = True
    with torch.no_grad():
        _, tokens = clip.visual(backbone.normalise(clip, torch.from_numpy(data.flow)))  # after ln_post
        tokens = tokens @ clip.visual.proj
        idx = [torch.from_numpy(t) for t in au_token_indices(
            data.landmarks, landmark_groups(aus), backbone.grid_size(clip), (224, 224))]
        out = model.au_forward(tokens, idx)
    return torch.softmax(out["logits"], -1)[..., 1], out["final"]


@pytest.mark.parametrize("k", [1, 2])
def test_cached_path_equals_plain_path(data, k):
    cfg = ModelConfig(**TINY, trainable_blocks=k)
    prefix = compute_prefix(cfg, data, CASME2_AUS)
    clip, _ = backbone.load_clip(cfg.arch, cfg.pretrained)
    torch.manual_seed(0)
    model = MicroAUCLIP(cfg, len(CASME2_AUS), prefix).eval()
    want, _ = _plain_probs(clip, model, data, CASME2_AUS, cfg)
    idx = [torch.from_numpy(t) for t in au_token_indices(data.landmarks, landmark_groups(CASME2_AUS),
                                                          prefix.grid, prefix.image)]
    with torch.no_grad():
        got = torch.softmax(model(torch.from_numpy(prefix.visual), idx)["logits"], -1)[..., 1]
        # text: truncated cached prefix + tail == open_clip's encode_text on the full context
        prompts = prefix.au_texts.texts
        full = clip.encode_text(backbone.tokenize(cfg.arch, prompts))
        from model.net import TextTensors
        model_t = MicroAUCLIP(cfg, len(CASME2_AUS), prefix)
        cached = model_t.text_features(TextTensors(prefix.au_texts, "cpu"))
    assert (got - want).abs().max().item() < 1e-4
    assert (cached - full).abs().max().item() < 1e-4
    assert np.abs(prefix.au_texts.features - full.numpy()).max() < 1e-4  # what `text: fixed` reads
    assert prefix.au_texts.ids.shape[1] < 77  # the context really is truncated


def test_vit_b32_truncated_text_prefix_is_exact():
    """On the real architecture (random weights): AU prompts end well before position 77."""
    clip, _ = backbone.load_clip("ViT-B-32", "none")
    texts = ["The eyebrows are lowering", "The lip corners are not pulling up"]
    ids = backbone.tokenize("ViT-B-32", texts)
    eot = backbone.eot_positions(ids)
    T = int(eot.max()) + 1
    assert T <= 10
    with torch.no_grad():
        h = backbone.text_prefix(clip, ids[:, :T], 3)
        got = backbone.TextTail(clip, 3, 77)(h, eot)
        want = clip.encode_text(ids)
    assert (got - want).abs().max().item() < 1e-4


@pytest.mark.filterwarnings("error::UserWarning")
def test_prefix_pickles_and_reuses(data):
    cfg = ModelConfig(**TINY, trainable_blocks=1)
    prefix = compute_prefix(cfg, data, CASME2_AUS)
    again = pickle.loads(pickle.dumps(prefix))
    assert again.key == prefix.key and np.array_equal(again.visual, prefix.visual)
    assert again.visual.shape == (len(data), 50, 64)
    spec = SimpleNamespace(reader="casme2", aus=CASME2_AUS, seed=1, model=cfg,
                           training=TrainConfig(epochs=1, batch_size=4, alpha=0.6, beta=1.0, device="cpu"))
    a = train_fold(spec, data, "sub01", prefix=prefix)
    for arr in (again.visual, again.au_texts.hidden, again.global_index):  # as Ray's object store hands them
        arr.setflags(write=False)
    b = train_fold(spec, data, "sub01", prefix=again)
    c = train_fold(spec, data, "sub01")  # computes its own prefix
    assert np.array_equal(a.probs, b.probs) and np.array_equal(a.probs, c.probs)
    assert a.timings["prefix_s"] < c.timings["prefix_s"]
    # the shared prefix is not modified by training (its tails are deep-copied)
    assert all(torch.equal(p, q) for p, q in zip(prefix.visual_tail.state_dict().values(),
                                                 again.visual_tail.state_dict().values()))


def test_prefix_save_load_is_atomic_and_checked(data, tmp_path):
    from model.prefix import Prefix
    cfg = ModelConfig(**TINY, trainable_blocks=1)
    prefix = compute_prefix(cfg, data, CASME2_AUS)
    path = prefix.save(tmp_path / "cache" / "prefix.pt")
    assert [p.name for p in path.parent.iterdir()] == ["prefix.pt"]  # no temp file left behind
    back = Prefix.load(path)
    assert back.key == prefix.key and np.array_equal(back.au_texts.hidden, prefix.au_texts.hidden)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a prefix")
    with pytest.raises(ValueError, match="bad.pt: cannot read the cached prefix.*delete the file"):
        Prefix.load(bad)


def test_cached_prefix_is_computed_once_per_key(data, tmp_path, monkeypatch):
    from model import prefix as prefix_mod
    calls = []
    real = prefix_mod.compute_prefix
    monkeypatch.setattr(prefix_mod, "compute_prefix", lambda *a, **k: calls.append(a) or real(*a, **k))
    cfg = ModelConfig(**TINY, trainable_blocks=1)
    first = prefix_mod.cached_prefix(cfg, data, CASME2_AUS, tmp_path)
    again = prefix_mod.cached_prefix(cfg, data, CASME2_AUS, tmp_path)  # from disk
    assert len(calls) == 1 and again.key == first.key
    assert np.array_equal(again.visual, first.visual)
    assert [p.name for p in tmp_path.iterdir()] == [f"prefix-{first.key}.pt"]
    other = prefix_mod.cached_prefix(cfg.model_copy(update={"trainable_blocks": 2}), data, CASME2_AUS, tmp_path)
    assert len(calls) == 2 and other.key != first.key  # another backbone split: its own entry
    (tmp_path / f"prefix-{first.key}.pt").write_bytes(b"torn")  # unreadable: recomputed, not fatal
    assert prefix_mod.cached_prefix(cfg, data, CASME2_AUS, tmp_path).key == first.key and len(calls) == 3


def test_prefix_key_and_mismatch(data):
    cfg = ModelConfig(**TINY, trainable_blocks=1)
    p1 = compute_prefix(cfg, data, CASME2_AUS)
    # the same for every ablation switch that does not touch the frozen part
    p2 = compute_prefix(cfg.model_copy(update={"lsi": False, "text": "fixed", "contrastive": "none"}), data,
                        CASME2_AUS)
    assert p1.key == p2.key
    p3 = compute_prefix(cfg.model_copy(update={"trainable_blocks": 2}), data, CASME2_AUS)
    assert p3.key != p1.key
    spec = SimpleNamespace(reader="casme2", aus=CASME2_AUS, seed=1, model=cfg.model_copy(update={"trainable_blocks": 2}),
                           training=TrainConfig(epochs=1, alpha=0.6, beta=1.0, device="cpu"))
    with pytest.raises(FoldError, match="computed for another k"):
        train_fold(spec, data, "sub01", prefix=p1)


def test_backbone_errors_say_what_to_do():
    with pytest.raises(backbone.BackboneError, match="model.pretrained.*not in the open_clip"):
        backbone.resolve_pretrained("ViT-B-32", "openai")
    with pytest.raises(backbone.BackboneError, match="does not exist"):
        backbone.resolve_pretrained("ViT-B-32", "/nowhere/ViT-B-32.pt")
    with pytest.raises(backbone.BackboneError, match="model.arch: unknown"):
        backbone.resolve_pretrained("ViT-Z-99", "none")
    clip, _ = backbone.load_clip("microau-tiny", "none")
    with pytest.raises(backbone.BackboneError, match="model.trainable_blocks: 3"):
        backbone.check_trainable_blocks(clip, 3, "microau-tiny")


def test_local_checkpoint_path_loads(tmp_path):
    clip, _ = backbone.load_clip("microau-tiny", "none")
    with torch.no_grad():
        clip.visual.proj.mul_(2.0)
    ckpt = tmp_path / "tiny.pt"
    torch.save(clip.state_dict(), ckpt)
    loaded, wid = backbone.load_clip("microau-tiny", str(ckpt))
    assert torch.equal(loaded.visual.proj, clip.visual.proj) and wid.startswith("file:")


def test_tiny_config_is_registered():
    import open_clip
    assert "microau-tiny" in open_clip.list_models()
    clip, _ = backbone.load_clip("microau-tiny", "none")
    assert backbone.grid_size(clip) == (7, 7) and backbone.num_blocks(clip) == (2, 2)


def test_torchvision_guard_is_idempotent_and_open_clip_imports():
    from model import _torchvision_guard as guard
    import torchvision  # noqa: F401  (fails with "operator torchvision::nms does not exist" without it)
    assert guard.ensure_torchvision_ops() is False  # already done (or not needed): never defines twice
