"""The AU axis batched (issue 22, item 2) computes what the per-AU loops computed: the reference below is
the model's per-AU code as it was before (one PTA and one head MLP per AU in ModuleLists, one
cross-entropy and one contrastive loss per AU), kept here and not in the package. Same seed -> the same
initial weights; same weights and inputs -> the same losses and gradients (1e-5); a state dict or a
trained-model package of the per-AU layout loads into the stacked one."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import model.net as net_module
from model import compute_prefix, losses
from model.config import ModelConfig, TrainConfig
from model.lsi import au_token_indices, landmark_groups, pad_token_indices
from model.net import MicroAUCLIP, TextTensors
from model.train import step_losses

from support.data import CASME2_AUS, fake_prepared


# -- the reference: the per-AU layout and losses before the AU axis was batched --------------------------
class RefPTA(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, k):
        w = torch.softmax(self.mlp(k).squeeze(-1), dim=-1)
        return (w.unsqueeze(-1) * k).sum(dim=1), w


class RefLocalFeatures(nn.Module):
    def __init__(self, n_aus, d, pooling, lsi, hidden, *, lsi_off_feature):
        super().__init__()
        self.n_aus, self.pooling, self.lsi = n_aus, pooling, lsi
        self.shared = not lsi and lsi_off_feature == "shared_global"
        self.pta = (nn.ModuleList([RefPTA(d, hidden) for _ in range(n_aus)])
                    if pooling == "pta" and not self.shared else None)

    def forward(self, tokens, idx, global_feat=None):
        if self.shared:
            return global_feat.unsqueeze(1).expand(-1, self.n_aus, -1), [None] * self.n_aus
        feats, weights = [], []
        for n in range(self.n_aus):
            k = torch.gather(tokens, 1, idx[n].unsqueeze(-1).expand(-1, -1, tokens.shape[-1])) if self.lsi else tokens
            if self.pooling == "pta":
                f, w = self.pta[n](k)
            elif self.pooling == "mean":
                f, w = k.mean(dim=1), None
            else:
                f, w = k.max(dim=1).values, None
            feats.append(f)
            weights.append(w)
        return torch.stack(feats, dim=1), weights


class RefAUHeads(nn.Module):
    def __init__(self, n_aus, d, hidden):
        super().__init__()
        self.mlps = nn.ModuleList([nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, 2))
                                   for _ in range(n_aus)])

    def forward(self, f):
        return torch.stack([m(f[:, n]) for n, m in enumerate(self.mlps)], dim=1)


def ref_contrastive(visual, text, targets, scale, reading="normalized"):
    v, t = F.normalize(visual, dim=-1), F.normalize(text, dim=-1)
    logits = scale * v @ t.T
    if reading == "bce":
        return F.binary_cross_entropy_with_logits(logits, targets)
    if reading == "literal":
        i2t, t2i = targets, targets.T
    else:
        i2t = targets / targets.sum(dim=1, keepdim=True)
        t2i = targets.T / targets.T.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, i2t) + F.cross_entropy(logits.T, t2i))


def ref_step_losses(model, mcfg, vis, tok, y, au_txt):
    out = model(vis, tok)
    mt = sum(F.cross_entropy(out["logits"][:, n], y[:, n]) for n in range(y.shape[1]))
    gd = losses.gd_loss(out["w_d"], y) if out["w_d"] is not None else out["logits"].new_zeros(())
    t = model.text_features(au_txt).view(len(tok), 2, -1)
    n = torch.arange(len(tok))
    au_text = t[n.unsqueeze(0), 1 - y]
    cl = out["logits"].new_zeros(())
    for j in range(len(tok)):
        if mcfg.contrastive == "miaucl":
            tg = (y[:, j].unsqueeze(1) == y[:, j].unsqueeze(0)).float()
            cl = cl + ref_contrastive(out["final"][:, j], au_text[:, j], tg, model.logit_scale, mcfg.miaucl_targets)
        elif mcfg.contrastive == "local_origcl":
            cl = cl + ref_contrastive(out["final"][:, j], au_text[:, j], torch.eye(len(y)), model.logit_scale)
    return {"multitask": mt, "contrastive": cl, "gd": gd, "out": out}


def build_ref(cfg, prefix, seed, monkeypatch):
    """MicroAUCLIP with the per-AU modules, built as the code before did (same construction order)."""
    with monkeypatch.context() as m:
        m.setattr(net_module, "LocalFeatures", RefLocalFeatures)
        m.setattr(net_module, "AUHeads", RefAUHeads)
        torch.manual_seed(seed)
        return MicroAUCLIP(cfg, len(CASME2_AUS), prefix)


# -- tests --------------------------------------------------------------------------------------------------
BASE = ModelConfig(arch="microau-tiny", pretrained="none", trainable_blocks=1)
VARIANTS = {
    "full, MiAUCL literal": {},
    "MiAUCL normalized": {"miaucl_targets": "normalized"},
    "MiAUCL bce": {"miaucl_targets": "bce"},
    "local OrigCL": {"contrastive": "local_origcl"},
    "meanpool": {"pooling": "mean"},
    "maxpool, no GSD": {"pooling": "max", "gsd": False},
    "w/o LSI, per-AU PTA over all tokens": {"lsi": False, "lsi_off_feature": "per_au_all_tokens"},
    "w/o LSI, shared global feature, Cat+MLP": {"lsi": False, "dependency": "cat_mlp"},
}


@pytest.fixture(scope="module")
def setup():
    data = fake_prepared(subjects=2, per_subject=5, seed=4)
    prefix = compute_prefix(BASE, data, CASME2_AUS)
    tok = [torch.from_numpy(t) for t in au_token_indices(data.landmarks, landmark_groups(CASME2_AUS), prefix.grid,
                                                          prefix.image)]
    y = torch.from_numpy(data.labels(CASME2_AUS).astype(np.int64))
    return data, prefix, tok, y


def _grads(model):
    return {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_same_seed_same_weights_same_losses_and_gradients(setup, monkeypatch, name):
    data, prefix, tok, y = setup
    cfg = BASE.model_copy(update=VARIANTS[name])
    ref = build_ref(cfg, prefix, 7, monkeypatch)
    torch.manual_seed(7)
    new = MicroAUCLIP(cfg, len(CASME2_AUS), prefix)
    # the same initial weights for a seed: the old per-AU state dict, stacked on load, is the new one's
    converted = MicroAUCLIP(cfg, len(CASME2_AUS), prefix)
    converted.load_state_dict(ref.state_dict(), strict=True)
    for (k, a), b in zip(new.state_dict().items(), converted.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # and the same draws after them (the batch order and anything seeded later)
    torch.manual_seed(7)
    build_ref(cfg, prefix, 7, monkeypatch)
    after_ref = torch.rand(3)
    torch.manual_seed(7)
    MicroAUCLIP(cfg, len(CASME2_AUS), prefix)
    assert torch.equal(after_ref, torch.rand(3))

    au_txt = TextTensors(prefix.au_texts, "cpu")
    glob = TextTensors(prefix.global_texts, "cpu")
    vis = torch.from_numpy(prefix.visual)
    r = ref_step_losses(ref, cfg, vis, tok, y, au_txt)
    n = step_losses(new, cfg, vis, torch.from_numpy(pad_token_indices([t.numpy() for t in tok])), y, au_txt, glob,
                    torch.from_numpy(prefix.global_index))
    for k in ("multitask", "contrastive", "gd"):
        assert n[k].item() == pytest.approx(r[k].item(), rel=1e-5, abs=1e-6), k
    assert torch.allclose(n["out"]["logits"], r["out"]["logits"], atol=1e-5)
    if r["out"]["pta"][0] is not None:  # PTA weights: each AU's own N_L, padding zero
        for j, w in enumerate(r["out"]["pta"]):
            assert torch.allclose(n["out"]["pta"][:, j, :w.shape[1]], w, atol=1e-6)
            assert not n["out"]["pta"][:, j, w.shape[1]:].any()
    for t in (r, n):
        losses.total_loss(t["multitask"], t["contrastive"], t["gd"], 0.6, 1.0).backward()
    grads = MicroAUCLIP(cfg, len(CASME2_AUS), prefix)
    grads.load_state_dict(_grads(ref), strict=True)  # the per-AU gradients stacked as the weights are
    for (k, g), want in zip(_grads(new).items(), grads.state_dict().values(), strict=True):
        assert torch.allclose(g, want, atol=1e-5, rtol=1e-5), k


def test_a_package_of_the_per_au_layout_loads_and_predicts_the_same(setup, monkeypatch, tmp_path):
    """A trained-model package written before the change (per-AU tensor names in its weights file) loads:
    its weights are stacked on load, and it predicts what the per-AU model predicts."""
    from safetensors import safe_open

    from model.inference import load_package, save_model
    from model.train import evaluate, fit

    data, prefix, tok, _ = setup
    spec = SimpleNamespace(reader="casme2", aus=CASME2_AUS, seed=1, model=BASE,
                           training=TrainConfig(epochs=1, batch_size=4, alpha=0.6, beta=1.0, device="cpu"))
    fitted = fit(spec, data, np.arange(len(data.sample_ids)), prefix=prefix)
    ref = build_ref(BASE, prefix, 3, monkeypatch).eval()
    fitted.model = ref  # the package as the per-AU code wrote it
    pkg = save_model(fitted, spec, tmp_path / "pkg")
    with safe_open(str(pkg / "weights.safetensors"), framework="pt") as f:
        assert "model.heads.mlps.7.2.bias" in f.keys() and "model.local.pta.0.mlp.0.weight" in f.keys()
    loaded = load_package(pkg, device="cpu")
    assert loaded.net.heads.mlps.w1.shape == (8, BASE.head_hidden, 64)
    emo = fitted.emotion_features()
    want = evaluate(ref, fitted.vis, tok, emo, fitted.emo_class)
    got = loaded.predict(data.flow, data.landmarks)
    assert np.allclose(got.probs, want["probs"].numpy(), atol=1e-5)


def test_the_tails_lean_block_computes_open_clips_block(setup):
    """The trainable tails run open_clip's ResidualAttentionBlock as one packed projection and
    scaled_dot_product_attention on views (`backbone._block`): the same outputs and gradients as the
    block's own forward, causal text mask included."""
    from model import backbone

    _, prefix, _, _ = setup
    t = prefix.au_texts.hidden.shape[1]
    causal = prefix.text_tail.attn_mask[:t, :t]
    for tail, x, mask in ((prefix.visual_tail, torch.from_numpy(prefix.visual), None),
                          (prefix.text_tail, torch.from_numpy(prefix.au_texts.hidden), causal)):
        blk = tail.blocks[0]
        assert backbone._lean(blk)
        x = x.clone().requires_grad_(True)
        want = blk(x, attn_mask=mask)
        got = backbone._block(blk, x, mask)
        assert torch.allclose(got, want, atol=1e-5)
        gw = torch.autograd.grad(want.square().sum(), [x, blk.attn.in_proj_weight])
        gg = torch.autograd.grad(got.square().sum(), [x, blk.attn.in_proj_weight])
        for a, b in zip(gg, gw, strict=True):
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-5)
