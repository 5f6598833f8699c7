"""Backbone and frozen-prefix cache: the cached / truncated path equals open_clip's plain forward."""
import json
import pickle
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from model import backbone, compute_prefix, train_fold
from model.config import ModelConfig, TrainConfig
from model.lsi import au_token_indices, landmark_groups
from model.net import MicroAUCLIP
from model.train import FoldError

from support import REPO
from support.data import CASME2_AUS, fake_prepared

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
                                                 again.visual_tail.state_dict().values(), strict=False))


class _Planted:
    """A pickle payload: unpickling it creates `marker` (what a planted cache file could do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _rewrite(src, dst, drop=(), put=None, **meta):
    """Copy a prefix file with tensors dropped or replaced (`put`) and/or safetensors metadata entries
    replaced (None: removed)."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(src), framework="pt") as f:
        header = {**f.metadata(), **meta}
        tensors = {k: f.get_tensor(k) for k in f.keys() if k not in drop}
    tensors.update(put or {})
    save_file(tensors, str(dst), metadata={k: v for k, v in header.items() if v is not None})
    return dst


@pytest.fixture(scope="module")
def tiny_prefix(data):
    return compute_prefix(ModelConfig(**TINY, trainable_blocks=1), data, CASME2_AUS)


def test_prefix_file_round_trip(data, tiny_prefix, tmp_path, monkeypatch):
    """save -> load gives every array, the metadata and both tails back exactly, without reading a
    checkpoint, and train_fold on the loaded prefix equals train_fold on the in-memory one."""
    import open_clip

    from model.prefix import Prefix
    prefix = tiny_prefix
    path = prefix.save(tmp_path / "cache" / "prefix-x.safetensors")
    assert [p.name for p in path.parent.iterdir()] == ["prefix-x.safetensors"]  # no temp file left behind
    built = []
    real_create = open_clip.create_model
    monkeypatch.setattr(open_clip, "create_model", lambda arch, pretrained=None, **kw: built.append(
        (arch, pretrained, kw.get("force_quick_gelu"))) or real_create(arch, pretrained=pretrained, **kw))
    monkeypatch.setattr(backbone, "resolve_pretrained", lambda *a: pytest.fail("load resolved the weights"))
    rng = torch.get_rng_state()
    back = Prefix.load(path)
    assert built == [("microau-tiny", None, None)]  # random init, no checkpoint, the recorded QuickGELU
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is not consumed
    monkeypatch.undo()

    assert (back.key, back.identity, back.sample_ids, back.grid, back.image, back.logit_scale) == \
        (prefix.key, prefix.identity, prefix.sample_ids, prefix.grid, prefix.image, prefix.logit_scale)
    cfg = ModelConfig(**TINY, trainable_blocks=1)
    assert back.identity["quick_gelu"] is False and back.matches(cfg, data, CASME2_AUS) is None
    assert {k: v for k, v in back.timings.items() if k != "read_s"} == prefix.timings
    groups = ("au_texts", "emotion_texts", "global_texts")
    pairs = [(back.visual, prefix.visual), (back.global_index, prefix.global_index),
             (back.emotion_class, prefix.emotion_class)] + [
        (getattr(getattr(back, g), n), getattr(getattr(prefix, g), n))
        for g in groups for n in ("ids", "eot", "hidden", "features")]
    for a, b in pairs:
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    assert all(getattr(back, g).texts == getattr(prefix, g).texts for g in groups)
    for t in ("visual_tail", "text_tail"):
        mine, theirs = getattr(back, t), getattr(prefix, t)
        assert type(mine) is type(theirs)
        assert [m.training for m in mine.modules()] == [m.training for m in theirs.modules()]
        sa, sb = mine.state_dict(), theirs.state_dict()
        assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
        assert [p.requires_grad for p in mine.parameters()] == [p.requires_grad for p in theirs.parameters()]
    assert torch.equal(back.text_tail.attn_mask, prefix.text_tail.attn_mask)  # not stored: rebuilt
    with torch.no_grad():  # same input -> bitwise-equal outputs
        x = torch.from_numpy(prefix.visual)
        for o1, o2 in zip(back.visual_tail(x), prefix.visual_tail(x), strict=False):
            assert torch.equal(o1, o2)
        h, eot = torch.from_numpy(prefix.au_texts.hidden), torch.from_numpy(prefix.au_texts.eot)
        assert torch.equal(back.text_tail(h, eot), prefix.text_tail(h, eot))

    spec = SimpleNamespace(reader="casme2", aus=CASME2_AUS, seed=1, model=cfg,
                           training=TrainConfig(epochs=2, batch_size=4, alpha=0.6, beta=1.0, device="cpu"))
    a = train_fold(spec, data, "sub01", prefix=prefix)
    b = train_fold(spec, data, "sub01", prefix=back)
    assert np.array_equal(a.probs, b.probs) and np.array_equal(a.features, b.features)
    assert a.loss_curve == b.loss_curve


def test_quick_gelu_flag_survives_the_file(data, tmp_path, monkeypatch):
    """Weights that need QuickGELU (OpenAI's): the loaded tails are rebuilt with it, not with GELU."""
    import open_clip

    from model.prefix import Prefix
    monkeypatch.setattr(backbone, "resolve_pretrained", lambda arch, pretrained: (None, True, "quickgelu-test"))
    prefix = compute_prefix(ModelConfig(**TINY, trainable_blocks=1), data, CASME2_AUS)
    monkeypatch.undo()
    back = Prefix.load(prefix.save(tmp_path / "q.safetensors"))
    assert prefix.identity["quick_gelu"] is True
    for t in ("visual_tail", "text_tail"):
        assert isinstance(getattr(back, t).blocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    with torch.no_grad():
        x = torch.from_numpy(prefix.visual)
        assert torch.equal(back.visual_tail(x)[1], prefix.visual_tail(x)[1])


def test_planted_pickle_is_refused_by_name_and_never_unpickled(tmp_path):
    from model.prefix import Prefix
    marker = tmp_path / "unpickled"
    (tmp_path / "cache").mkdir()
    for name in ("prefix-0123456789abcdef.pt", "plain.pkl", "prefix-0123456789abcdef.safetensors"):
        path = tmp_path / "cache" / name
        if name.endswith(".pkl"):
            path.write_bytes(pickle.dumps(_Planted(marker)))  # a plain pickle
        else:  # a real torch.save pickle under the expected name (and the old cache's)
            torch.save({"prefix": _Planted(marker)}, path)
        with pytest.raises(ValueError) as e:
            Prefix.load(path)
        assert not marker.exists(), f"{name} was unpickled"
        assert re.search(rf"{re.escape(name)}: not a frozen prefix.*never unpickled.*Delete the file; the "
                         rf"prefix is recomputed", str(e.value))


def test_foreign_torn_and_other_schema_files_are_refused(tiny_prefix, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from model.prefix import Prefix, PrefixFileError
    good = tiny_prefix.save(tmp_path / "good.safetensors")
    with safe_open(str(good), framework="pt") as f:
        stored = json.loads(f.metadata()["prefix"])
    (tmp_path / "random.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "torn.safetensors").write_bytes(good.read_bytes()[:-100])
    (tmp_path / "empty.safetensors").write_bytes(b"")
    save_file({"visual": torch.zeros(1)}, str(tmp_path / "nometa.safetensors"))
    _rewrite(good, tmp_path / "schema1.safetensors", schema="1")
    _rewrite(good, tmp_path / "other.safetensors", format="something-else")
    _rewrite(good, tmp_path / "novisual.safetensors", drop=("visual",))
    _rewrite(good, tmp_path / "notail.safetensors", drop=("text_tail.ln_final.weight",))
    _rewrite(good, tmp_path / "noclass.safetensors", drop=("emotion_class",))
    _rewrite(good, tmp_path / "reclassed.safetensors",  # label texts moved to another MER class
             put={"emotion_class": torch.zeros(len(tiny_prefix.emotion_class), dtype=torch.int64)})
    _rewrite(good, tmp_path / "nojson.safetensors", prefix="{not json")
    _rewrite(good, tmp_path / "nojsonkey.safetensors", prefix=None)
    _rewrite(good, tmp_path / "rekeyed.safetensors", prefix=json.dumps({**stored, "key": "0" * 16}))
    _rewrite(good, tmp_path / "noarch.safetensors",
             prefix=json.dumps({**stored, "tails": {**stored["tails"], "arch": "ViT-Z-99"}}))
    _rewrite(good, tmp_path / "wrongk.safetensors",  # the stored tails do not fit: strict load
             prefix=json.dumps({**stored, "tails": {**stored["tails"], "k": 2}}))
    cases = {"random": "SafetensorError", "torn": "SafetensorError", "empty": "SafetensorError",
             "nometa": "no microau-prefix metadata", "schema1": "written with schema 1",
             "other": "no microau-prefix metadata", "novisual": "tensor 'visual' missing",
             "notail": "Missing key.*ln_final.weight", "noclass": "tensor 'emotion_class' missing",
             "reclassed": "not the identity's emotion_texts", "nojson": "JSONDecodeError", "nojsonkey": "KeyError",
             "rekeyed": "key is not the hash", "noarch": "unknown open_clip model", "wrongk": "Missing key"}
    for name, why in cases.items():
        with pytest.raises(PrefixFileError, match=rf"{name}\.safetensors: not a frozen prefix of schema \d+ "
                                                  rf"\(.*{why}.*Delete the file"):
            Prefix.load(tmp_path / f"{name}.safetensors")
    assert Prefix.load(good).key == tiny_prefix.key


def test_cached_prefix_is_computed_once_per_key(data, tmp_path, monkeypatch, capsys):
    from model import prefix as prefix_mod
    calls = []
    real = prefix_mod.compute_prefix
    monkeypatch.setattr(prefix_mod, "compute_prefix", lambda *a, **k: calls.append(a) or real(*a, **k))
    cfg = ModelConfig(**TINY, trainable_blocks=1)
    first = prefix_mod.cached_prefix(cfg, data, CASME2_AUS, tmp_path)
    again = prefix_mod.cached_prefix(cfg, data, CASME2_AUS, tmp_path)  # from disk
    assert len(calls) == 1 and again.key == first.key
    assert np.array_equal(again.visual, first.visual)
    entry = tmp_path / f"prefix-{first.key}.safetensors"
    assert [p.name for p in tmp_path.iterdir()] == [entry.name]
    other = prefix_mod.cached_prefix(cfg.model_copy(update={"trainable_blocks": 2}), data, CASME2_AUS, tmp_path)
    assert len(calls) == 2 and other.key != first.key  # another backbone split: its own entry
    assert capsys.readouterr().err == ""
    entry.write_bytes(b"torn")  # unreadable: recomputed, not fatal
    assert prefix_mod.cached_prefix(cfg, data, CASME2_AUS, tmp_path).key == first.key and len(calls) == 3
    err = capsys.readouterr().err
    assert err.count(str(entry)) == 1 and "computing the prefix again" in err
    # another key's valid prefix under this key's name: not used, recomputed
    entry.write_bytes((tmp_path / f"prefix-{other.key}.safetensors").read_bytes())
    assert prefix_mod.cached_prefix(cfg, data, CASME2_AUS, tmp_path).key == first.key and len(calls) == 4
    assert f"it holds the prefix {other.key}" in capsys.readouterr().err


def test_cached_prefix_recomputes_over_a_planted_pickle(data, tmp_path, capsys):
    from model import prefix as prefix_mod
    from model.prefix import Prefix
    cfg = ModelConfig(**TINY, trainable_blocks=1)
    first = prefix_mod.cached_prefix(cfg, data, CASME2_AUS, tmp_path / "cache")
    entry = tmp_path / "cache" / f"prefix-{first.key}.safetensors"
    marker = tmp_path / "unpickled"
    torch.save(_Planted(marker), entry)  # planted in the shared cache folder under the expected name
    got = prefix_mod.cached_prefix(cfg, data, CASME2_AUS, tmp_path / "cache")
    assert not marker.exists()
    assert got.key == first.key and np.array_equal(got.visual, first.visual)
    err = capsys.readouterr().err
    assert err.count(str(entry)) == 1 and "deleting it and computing the prefix again" in err
    assert Prefix.load(entry).key == first.key  # replaced by the recomputed prefix


def test_package_code_never_unpickles_files():
    """No cache or weights loader of the package runs pickle on a file (a shared cache folder could hold
    a planted one): no torch.load(weights_only=False), pickle.load(s), allow_pickle=True."""
    root = REPO
    bad = re.compile(r"weights_only\s*=\s*False|pickle\.(load|loads|Unpickler)\b|allow_pickle\s*=\s*True")
    hits = [f"{p.relative_to(root)}:{i}" for pkg in ("preprocessing", "model", "orchestrator")
            for p in sorted((root / pkg).rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if bad.search(line)]
    assert hits == []


def test_prefix_key_and_mismatch(data):
    cfg = ModelConfig(**TINY, trainable_blocks=1)
    p1 = compute_prefix(cfg, data, CASME2_AUS)
    # the same for every ablation switch that does not touch the frozen part
    p2 = compute_prefix(cfg.model_copy(update={"lsi": False, "text": "fixed", "contrastive": "none"}), data,
                        CASME2_AUS)
    assert p1.key == p2.key
    p3 = compute_prefix(cfg.model_copy(update={"trainable_blocks": 2}), data, CASME2_AUS)
    assert p3.key != p1.key
    spec = SimpleNamespace(reader="casme2", aus=CASME2_AUS, seed=1,
                           model=cfg.model_copy(update={"trainable_blocks": 2}),
                           training=TrainConfig(epochs=1, alpha=0.6, beta=1.0, device="cpu"))
    with pytest.raises(FoldError, match="computed for another k"):
        train_fold(spec, data, "sub01", prefix=p1)


def test_backbone_errors_say_what_to_do(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf
    monkeypatch.setenv("HOME", str(tmp_path))  # no weights in ~/.cache/clip or the Hugging Face cache
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(backbone.BackboneError, match="model.pretrained: the 'openai' weights of ViT-B-32 are "
                                                     "not on this machine"):
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
    assert torch.equal(loaded.visual.proj, clip.visual.proj) and wid.startswith("state_dict:")


def test_tiny_config_is_registered():
    import open_clip
    assert "microau-tiny" in open_clip.list_models()
    clip, _ = backbone.load_clip("microau-tiny", "none")
    assert backbone.grid_size(clip) == (7, 7) and backbone.num_blocks(clip) == (2, 2)


def test_torchvision_guard_is_idempotent_and_open_clip_imports():
    import torchvision  # noqa: F401  (fails with "operator torchvision::nms does not exist" without it)

    from model import _torchvision_guard as guard
    assert guard.ensure_torchvision_ops() is False  # already done (or not needed): never defines twice
