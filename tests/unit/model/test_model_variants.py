"""Every ablation of Tables II, III, VI, VII, VIII builds from config alone and trains a step."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from model import compute_prefix, train_fold
from model.config import ModelConfig, TrainConfig
from model.lsi import au_token_indices, landmark_groups
from model.net import MicroAUCLIP

from support import REPO
from support.data import CASME2_AUS, fake_prepared

VARIANTS = {
    "full": {},
    "II: w/o LSI (one shared global feature)": {"lsi": False},
    "II: w/o LSI, per-AU PTA over all tokens": {"lsi": False, "lsi_off_feature": "per_au_all_tokens"},
    "II: w/o GSD": {"gsd": False},
    "III: text fixed": {"text": "fixed"},
    "VI: meanpool": {"pooling": "mean"},
    "VI: maxpool": {"pooling": "max"},
    "VII: Add+MLP": {"dependency": "add_mlp"},
    "VII: Cat+MLP": {"dependency": "cat_mlp"},
    "VIII: No CL": {"contrastive": "none"},
    "VIII: global OrigCL": {"contrastive": "global_origcl"},
    "VIII: local OrigCL": {"contrastive": "local_origcl"},
    "II: w/o LSI, per-AU meanpool over all tokens": {"lsi": False, "lsi_off_feature": "per_au_all_tokens",
                                                     "pooling": "mean"},
    "II/VIII paper-numbers reading: w/o LSI + global OrigCL": {"lsi": False, "contrastive": "global_origcl"},
}


@pytest.fixture(scope="module")
def setup():
    data = fake_prepared(subjects=2, per_subject=4, seed=3)
    base = ModelConfig(arch="microau-tiny", pretrained="none", trainable_blocks=1)
    return data, base, compute_prefix(base, data, CASME2_AUS)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_builds_and_trains(setup, name):
    data, base, prefix = setup
    cfg = ModelConfig.model_validate({**base.model_dump(), **VARIANTS[name]})
    spec = SimpleNamespace(reader="casme2", aus=CASME2_AUS, seed=1, model=cfg,
                           training=TrainConfig(epochs=2, batch_size=4, alpha=0.6, beta=1.0, device="cpu"))
    torch.manual_seed(1)
    before = MicroAUCLIP(cfg, len(CASME2_AUS), prefix)
    r = train_fold(spec, data, "sub02", prefix=prefix)
    curve = r.loss_curve
    assert all(np.isfinite(v).all() and len(v) == 2 for v in curve.values())
    assert curve["multitask"][0] > 0
    # each switch really switches: contrastive term only with a contrastive loss, GDL only with GDA
    assert (curve["contrastive"][0] > 0) == (cfg.contrastive != "none")
    assert (curve["gd"][0] > 0) == (cfg.gsd and cfg.dependency == "gda")
    assert (before.gsd is None) == (not cfg.gsd)
    assert (before.text_tail is None) == (cfg.text == "fixed" or cfg.contrastive == "none")
    shared = not cfg.lsi and cfg.lsi_off_feature == "shared_global"  # one feature for all AUs: no PTA
    assert (before.local.pta is None) == (cfg.pooling != "pta" or shared)
    assert bool(r.extras["pta"]) == (before.local.pta is not None)
    assert r.probs.shape == (4, 8) and r.features.shape == (4, 8, 64) and r.mer_scores.shape == (4, 3)
    # the text tower is frozen exactly when the config says so (Table III TextSi reads it)
    sims = np.array(list(r.extras["text_similarity"].values()))
    frozen = prefix.au_texts.features.reshape(8, 2, -1)
    frozen = frozen / np.linalg.norm(frozen, axis=-1, keepdims=True)
    frozen_sim = (frozen[:, 0] * frozen[:, 1]).sum(-1)
    assert np.allclose(sims, frozen_sim, atol=1e-5) == (before.text_tail is None)


def _forward(base, change, prefix, data):
    cfg = ModelConfig.model_validate({**base.model_dump(), **change})
    torch.manual_seed(0)
    model = MicroAUCLIP(cfg, len(CASME2_AUS), prefix).eval()
    idx = [torch.from_numpy(t) for t in au_token_indices(data.landmarks, landmark_groups(CASME2_AUS),
                                                          prefix.grid, prefix.image)]
    with torch.no_grad():
        return model(torch.from_numpy(prefix.visual), idx)


def test_without_lsi_all_au_features_are_one_shared_feature_before_gsd(setup):
    """Table II "w/o LSI" (`lsi: false`, default reading): every AU's feature entering GSD is the same
    global image feature, so GDA sees N identical inputs (its W_d then no longer depends on the sample);
    the per-AU heads still give each AU its own logits."""
    data, base, prefix = setup
    out = _forward(base, {"lsi": False}, prefix, data)
    local = out["local"]
    assert local.shape == (prefix.visual.shape[0], 8, 64)
    for n in range(1, 8):
        assert torch.equal(local[:, n], local[:, 0])
    assert torch.equal(local[:, 0], out["global"])  # CLIP's image feature (class token, joint space)
    assert torch.allclose(out["final"], out["final"][:, :1].expand_as(out["final"]))
    assert torch.allclose(out["w_d"], out["w_d"][:1].expand_as(out["w_d"]))
    assert not torch.allclose(out["logits"][:, 0], out["logits"][:, 1])
    assert out["pta"] is None


def test_per_au_all_tokens_option_keeps_one_channel_per_au(setup):
    """`lsi_off_feature: per_au_all_tokens`: each AU pools all 49 tokens with its own PTA, so the AU
    features differ before GSD (a different variant from the shared feature)."""
    data, base, prefix = setup
    out = _forward(base, {"lsi": False, "lsi_off_feature": "per_au_all_tokens"}, prefix, data)
    local = out["local"]
    assert all(not torch.allclose(local[:, n], local[:, 0]) for n in range(1, 8))
    assert out["pta"].shape == (prefix.visual.shape[0], 8, 49)


def test_every_paper_sweep_point_trains_a_step(setup):
    """Each point of the paper-table sweep files (Tables II-X), as the orchestrator resolves it, trains one
    epoch here with only the backbone swapped for the tiny one (no weights download on this machine)."""

    from orchestrator.spec.resolved import load_sweep

    data, base, _ = setup
    files = sorted(p for p in (REPO / "sweeps").glob("*.yaml") if p.stem != "quickstart")
    if not files:
        pytest.skip("no sweep files yet")
    prefixes, seen = {}, set()
    for f in files:
        for trial in load_sweep(f).trials:
            cfg = trial.model.model_copy(update={"arch": "microau-tiny", "pretrained": "none",
                                                 "trainable_blocks": 1})
            sig = (tuple(trial.aus), cfg.model_dump_json(), trial.training.alpha, trial.training.beta)
            if sig in seen:
                continue
            seen.add(sig)
            key = tuple(trial.aus)
            if key not in prefixes:
                prefixes[key] = compute_prefix(cfg, data, trial.aus)
            t = trial.model_copy(update={"model": cfg, "training": trial.training.model_copy(
                update={"epochs": 1, "batch_size": 4, "device": "cpu", "threads": None})})
            r = train_fold(t, data, "sub01", prefix=prefixes[key])
            assert np.isfinite(r.loss_curve["total"][0]), f"{f.name}: {trial.point_label}"
    assert len(seen) >= 10


def test_zero_trainable_blocks_trains_no_encoder_weight(setup):
    """trainable_blocks: 0 -> neither tower trains (ln_post/proj, ln_final/text_projection included);
    the frozen text tower's cached features are used, and the heads still train."""
    data, base, _ = setup
    cfg = base.model_copy(update={"trainable_blocks": 0})
    prefix = compute_prefix(cfg, data, CASME2_AUS)
    model = MicroAUCLIP(cfg, len(CASME2_AUS), prefix)
    assert model.encoder_parameters() == [] and model.text_tail is None
    spec = SimpleNamespace(reader="casme2", aus=CASME2_AUS, seed=1, model=cfg,
                           training=TrainConfig(epochs=1, batch_size=4, alpha=0.6, beta=1.0, device="cpu"))
    r = train_fold(spec, data, sorted(set(data.subjects))[0], prefix=prefix)
    assert np.isfinite(r.probs).all() and np.isfinite(r.loss_curve["total"]).all()
