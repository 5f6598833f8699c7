"""LSI (Eq. 1-3), GSD (Eq. 4-7) and zero-shot MER (Eq. 13) on small hand-checked examples."""
import math

import numpy as np
import pytest
import torch

from model.gsd import GDA, GSD, AUHeads
from model.lsi import PTA, TABLE_I, LandmarkError, LocalFeatures, landmark_groups, landmark_to_token
from model.mer import mer_predict, mer_scores
from model.text import AU_PROMPTS, EMOTION_AUS, TextConfigError, au_prompts, emotion_texts, global_text


# -- Eq. 1 ---------------------------------------------------------------------------------------------
def test_eq1_landmark_to_patch_token():
    xy = np.array([[0.0, 0.0],  # top-left -> token 0
                   [223.9, 223.9],  # bottom-right -> token 48
                   [100.0, 40.0],  # col floor(100*7/224)=3, row floor(40*7/224)=1 -> 1*7+3 = 10
                   [31.99, 32.0],  # col 0 (31.99*7/224 = 0.9997), row 1 -> 7
                   [230.0, -3.0]])  # outside the image: clamped to col 6, row 0 -> 6
    assert landmark_to_token(xy, (7, 7), (224, 224)).tolist() == [0, 48, 10, 7, 6]
    # a non-square image: x scales by w/w0, y by h/h0
    assert landmark_to_token(np.array([[150.0, 50.0]]), (7, 7), (100, 300)).tolist() == [3 * 7 + 3]


def test_table_i_groups_are_0_based_dlib_indices():
    assert TABLE_I[12] == (48, 54) and TABLE_I[15] == (48, 54)  # mouth corners
    assert TABLE_I[17] == (7, 8, 9, 57)
    assert landmark_groups([1, 7])[1] == [38, 41, 44, 47]
    with pytest.raises(LandmarkError, match="model.landmark_groups: AU9"):
        landmark_groups([9])
    assert landmark_groups([9], {9: [31, 35]}) == [[31, 35]]


# -- Eq. 2-3 -------------------------------------------------------------------------------------------
def test_pta_weights_sum_to_one_and_pick_the_heavier_token():
    pta = PTA(d=2, hidden=1)
    with torch.no_grad():  # MLP(k) = 1 * relu(k_0) + 0: the score is the token's first coordinate
        pta.mlp[0].weight.copy_(torch.tensor([[1.0, 0.0]]))
        pta.mlp[0].bias.zero_()
        pta.mlp[2].weight.fill_(1.0)
        pta.mlp[2].bias.zero_()
    k = torch.tensor([[[1.0, 10.0], [3.0, 20.0]]])  # (B=1, N_L=2, d=2)
    f, w = pta(k)
    w1 = 1 / (1 + math.e ** 2)  # softmax([1, 3])
    assert w.sum().item() == pytest.approx(1.0)
    assert w[0].tolist() == pytest.approx([w1, 1 - w1], rel=1e-6)
    assert w[0, 1] > w[0, 0]  # the token with the larger MLP score gets the larger weight
    assert f[0].tolist() == pytest.approx([w1 * 1 + (1 - w1) * 3, w1 * 10 + (1 - w1) * 20], rel=1e-6)


def test_local_features_gather_each_aus_tokens_and_pooling_variants():
    tokens = torch.arange(2 * 49 * 3, dtype=torch.float32).view(2, 49, 3)
    idx = [torch.tensor([[0, 5], [1, 1]]), torch.tensor([[48], [10]])]
    on = dict(lsi=True, hidden=4, lsi_off_feature="shared_global")  # lsi_off_feature is not read here
    mean = LocalFeatures(2, 3, "mean", **on)(tokens, idx)[0]
    assert mean[0, 0].tolist() == ((tokens[0, 0] + tokens[0, 5]) / 2).tolist()
    assert mean[1, 1].tolist() == tokens[1, 10].tolist()
    mx = LocalFeatures(2, 3, "max", **on)(tokens, idx)[0]
    assert mx[0, 0].tolist() == tokens[0, 5].tolist()
    # LSI off, per-AU reading: every AU pools all 49 tokens with its own module
    per_au = dict(lsi=False, hidden=4, lsi_off_feature="per_au_all_tokens")
    off = LocalFeatures(2, 3, "mean", **per_au)(tokens, idx)[0]
    assert off[0, 0].tolist() == pytest.approx(tokens[0].mean(0).tolist())
    f, w = LocalFeatures(2, 3, "pta", **per_au)(tokens, idx)
    assert w[0].shape == (2, 49) and torch.allclose(w[0].sum(-1), torch.ones(2))


@pytest.mark.parametrize("pooling", ["pta", "mean", "max"])
def test_without_lsi_every_au_reads_the_one_global_feature(pooling):
    """Table II "w/o LSI" (default reading): no per-AU channel, F~_n = the global image feature for every
    n whatever `pooling` says; no PTA module exists and no landmark index is read."""
    tokens = torch.randn(2, 49, 3, generator=torch.Generator().manual_seed(0))
    glob = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))
    local = LocalFeatures(4, 3, pooling, lsi=False, hidden=4, lsi_off_feature="shared_global")
    assert local.pta is None and list(local.parameters()) == []
    f, w = local(tokens, [None] * 4, glob)
    assert f.shape == (2, 4, 3) and w == [None] * 4
    for n in range(4):
        assert torch.equal(f[:, n], glob)
    with pytest.raises(ValueError, match="global"):
        local(tokens, [None] * 4)
    with pytest.raises(ValueError, match="model.lsi_off_feature"):
        LocalFeatures(4, 3, pooling, lsi=False, hidden=4, lsi_off_feature="cls")


# -- Eq. 4-7 -------------------------------------------------------------------------------------------
def test_gda_shapes_and_row_sums():
    B, N, d = 3, 4, 6
    f = torch.randn(B, N, d, generator=torch.Generator().manual_seed(0))
    f_g, w_d, a = GDA(N, d)(f)
    assert f_g.shape == (B, d) and w_d.shape == (B, N) and a.shape == (B, N, N)
    assert torch.allclose(a.sum(-1), torch.ones(B, N))  # Eq. 4 softmax rows
    assert torch.allclose(w_d.sum(-1), torch.ones(B))  # Eq. 5 softmax
    final, w = GSD(N, d, "gda")(f)
    assert final.shape == (B, N, d) and w.shape == (B, N)
    assert AUHeads(N, d, 5)(final).shape == (B, N, 2)


def test_gda_hand_example():
    """fc = 0 with bias [1, -1, 0] -> W_d = softmax(relu([1, -1, 0])) = softmax([1, 0, 0]); W^V = I."""
    N, d = 3, 2
    gda = GDA(N, d)
    with torch.no_grad():
        gda.fc.weight.zero_()
        gda.fc.bias.copy_(torch.tensor([1.0, -1.0, 0.0]))
        gda.w_v.weight.copy_(torch.eye(d))
    f = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]])
    f_g, w_d, _ = gda(f)
    e = math.e
    want = [e / (e + 2), 1 / (e + 2), 1 / (e + 2)]
    assert w_d[0].tolist() == pytest.approx(want, rel=1e-6)
    assert f_g[0].tolist() == pytest.approx([want[0] + 2 * want[2], want[1] + 2 * want[2]], rel=1e-6)  # Eq. 6
    final, _ = GSD(N, d, "gda")(f)  # Eq. 7 input: F_G + F~_n, one per AU
    assert final.shape == (1, N, d)


@pytest.mark.parametrize("dep", ["add_mlp", "cat_mlp"])
def test_dependency_alternatives_have_no_dependency_weights(dep):
    final, w = GSD(4, 6, dep)(torch.randn(2, 4, 6))
    assert final.shape == (2, 4, 6) and w is None


# -- Eq. 13 and texts -----------------------------------------------------------------------------------
def test_eq13_scores_sum_cosines_and_argmax():
    au = torch.tensor([[[1.0, 0.0], [1.0, 1.0]],  # sample 1: both AU features point towards class 0
                       [[0.0, 2.0], [-1.0, 1.0]]])  # sample 2: towards class 1
    emo = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    s = mer_scores(au, emo)
    r = 1 / math.sqrt(2)
    assert s[0].tolist() == pytest.approx([1 + r, r, -1 - r], rel=1e-6)
    assert s[1].tolist() == pytest.approx([-r, 1 + r, r], rel=1e-6)
    assert mer_predict(s, ["positive", "negative", "surprise"]) == ["positive", "negative"]


def test_prompts_and_emotion_texts():
    casme = [1, 2, 4, 7, 12, 14, 15, 17]
    assert au_prompts([4]) == [("The eyebrows are lowering", "The eyebrows are not lowering")]  # Fig. 2
    assert set(casme) <= set(AU_PROMPTS)
    emo = emotion_texts(casme, au_prompts(casme))
    assert emo["positive"] == "The lip corners are pulling up"
    assert emo["surprise"] == "The inner eyebrows are raising and the outer eyebrows are raising"
    samm = [2, 4, 7, 12]  # restricted to the dataset's AUs
    emo = emotion_texts(samm, au_prompts(samm))
    assert emo["negative"] == "The eyebrows are lowering and the lower eyelids are tightening"
    assert emo["surprise"] == "The outer eyebrows are raising"
    assert set(EMOTION_AUS) == {"positive", "negative", "surprise"}
    with pytest.raises(TextConfigError, match="model.emotion_texts"):
        emotion_texts([4], au_prompts([4]))  # no positive AU
    assert emotion_texts([4], au_prompts([4]), {"positive": "smile", "surprise": "wow"})["positive"] == "smile"
    with pytest.raises(TextConfigError, match="model.prompts: AU9"):
        au_prompts([9])
    assert global_text([12, 4], casme, au_prompts(casme)) == \
        "The eyebrows are lowering and the lip corners are pulling up"
