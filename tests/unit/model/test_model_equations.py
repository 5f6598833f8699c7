"""LSI (Eq. 1-3), GSD (Eq. 4-7) and zero-shot MER (Eq. 13) on small hand-checked examples."""
import math

import numpy as np
import pytest
import torch

from model.gsd import GDA, GSD, AUHeads
from model.lsi import PTA, TABLE_I, LandmarkError, LocalFeatures, landmark_groups, landmark_to_token
from model.mer import mer_predict, mer_scores
from model.text import AU_PROMPTS, MER_CLASSES, TextConfigError, au_prompts, emotion_texts, global_text

from support import REPO


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
    with pytest.raises(LandmarkError, match=r"model.landmark_groups: AU6 has no landmark region \(Table I covers "
                                            r"\[1, 2, 4, 7, 12, 14, 15, 17\], this tool adds \[5, 9, 10\]\)"):
        landmark_groups([6])
    assert landmark_groups([9], {9: [31, 35]}) == [[31, 35]]


def test_aus_beyond_table_i_sit_on_their_facs_muscles():
    """AUs 5, 9, 10 (CAS(ME)^3's set; docs/model.md "AUs beyond Table I"): upper eyelids, nose root and
    wings, upper lip; with prompts, so CAS(ME)^3's default AU set passes the config check."""
    from model.config import ModelConfig, check_aus
    from model.regions import BEYOND_TABLE_I
    from preprocessing.annotations import DEFAULT_AUS

    assert landmark_groups([5, 9, 10]) == [[37, 38, 43, 44], [27, 28, 31, 35], [50, 51, 52]]
    assert not set(BEYOND_TABLE_I) & set(TABLE_I)
    check_aus(ModelConfig(), DEFAULT_AUS["casme3"])


# -- Eq. 2-3 -------------------------------------------------------------------------------------------
def test_pta_weights_sum_to_one_and_pick_the_heavier_token():
    pta = PTA(n_aus=1, d=2, hidden=1)
    with torch.no_grad():  # MLP(k) = 1 * relu(k_0) + 0: the score is the token's first coordinate
        pta.mlp.w1.copy_(torch.tensor([[[1.0, 0.0]]]))
        pta.mlp.b1.zero_()
        pta.mlp.w2.fill_(1.0)
        pta.mlp.b2.zero_()
    k = torch.tensor([[[[1.0, 10.0], [3.0, 20.0]]]])  # (N=1, B=1, N_L=2, d=2)
    f, w = pta(k)
    w1 = 1 / (1 + math.e ** 2)  # softmax([1, 3])
    assert w.sum().item() == pytest.approx(1.0)
    assert w[0, 0].tolist() == pytest.approx([w1, 1 - w1], rel=1e-6)
    assert w[0, 0, 1] > w[0, 0, 0]  # the token with the larger MLP score gets the larger weight
    assert f[0, 0].tolist() == pytest.approx([w1 * 1 + (1 - w1) * 3, w1 * 10 + (1 - w1) * 20], rel=1e-6)
    # a padded token (valid False) gets no weight and changes nothing
    kp = torch.cat([k, torch.full((1, 1, 1, 2), 99.0)], dim=2)
    fp, wp = pta(kp, torch.tensor([[[True, True, False]]]))
    assert wp[0, 0, 2].item() == 0.0 and torch.allclose(fp, f) and torch.allclose(wp[..., :2], w)


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
    assert w.shape == (2, 2, 49) and torch.allclose(w.sum(-1), torch.ones(2, 2))
    # with LSI the AUs' groups of different sizes are padded: the padding takes no part in any pooling
    f, w = LocalFeatures(2, 3, "pta", **on)(tokens, idx)
    assert w.shape == (2, 2, 2) and w[:, 1, 1].tolist() == [0.0, 0.0] and w[:, 1, 0].tolist() == [1.0, 1.0]
    assert f[1, 1].tolist() == tokens[1, 10].tolist()
    assert mx[1, 1].tolist() == tokens[1, 10].tolist()


@pytest.mark.parametrize("pooling", ["pta", "mean", "max"])
def test_without_lsi_every_au_reads_the_one_global_feature(pooling):
    """Table II "w/o LSI" (default reading): no per-AU channel, F~_n = the global image feature for every
    n whatever `pooling` says; no PTA module exists and no landmark index is read."""
    tokens = torch.randn(2, 49, 3, generator=torch.Generator().manual_seed(0))
    glob = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))
    local = LocalFeatures(4, 3, pooling, lsi=False, hidden=4, lsi_off_feature="shared_global")
    assert local.pta is None and list(local.parameters()) == []
    f, w = local(tokens, None, glob)
    assert f.shape == (2, 4, 3) and w is None
    for n in range(4):
        assert torch.equal(f[:, n], glob)
    with pytest.raises(ValueError, match="global"):
        local(tokens, None)
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


def test_prompts_and_global_text():
    casme = [1, 2, 4, 7, 12, 14, 15, 17]
    assert au_prompts([4]) == [("The eyebrows are lowering", "The eyebrows are not lowering")]  # Fig. 2
    assert set(casme) <= set(AU_PROMPTS)
    assert au_prompts([9]) == [("The nose is wrinkling", "The nose is not wrinkling")]  # CAS(ME)^3's AU set
    with pytest.raises(TextConfigError, match="model.prompts: AU6"):
        au_prompts([6])
    assert global_text([12, 4], casme, au_prompts(casme)) == \
        "The eyebrows are lowering and the lip corners are pulling up"


def test_default_label_texts_are_the_emotions_au_combinations_filtered_to_the_dataset():
    """Several texts per class: one per AU combination of its emotions, filtered to the detected AUs;
    combinations with no detected AU dropped, repeats removed, order kept (paper IV-F)."""
    from model.text import EMOTION_COMBINATIONS, label_texts

    assert set(EMOTION_COMBINATIONS) == set(MER_CLASSES)
    casme = [1, 2, 4, 7, 12, 14, 15, 17]
    assert emotion_texts(casme, au_prompts(casme)) == {
        "positive": ["The lip corners are pulling up"],  # happiness 6+12 and 12: AU6 is not detected
        "negative": ["The eyebrows are lowering and the lower eyelids are tightening",  # disgust 4+7 (= anger)
                     "The lip corners are dimpling inward",  # disgust / repression / contempt 14
                     "The lip corners are pulling down",  # repression 15
                     "The chin is raising",  # repression 17 (= sadness 17)
                     "The lip corners are pulling down and the chin is raising",  # repression 15+17
                     "The inner eyebrows are raising, the outer eyebrows are raising, the eyebrows are lowering "
                     "and the lower eyelids are tightening",  # fear 1+2+4+5+7+20+26
                     "The inner eyebrows are raising, the eyebrows are lowering and the lip corners are "
                     "pulling down"],  # sadness 1+4+15
        "surprise": ["The inner eyebrows are raising and the outer eyebrows are raising",  # 1+2+5+26
                     "The outer eyebrows are raising"]}  # 2
    samm = [2, 4, 7, 12]
    assert emotion_texts(samm, au_prompts(samm)) == {
        "positive": ["The lip corners are pulling up"],
        "negative": ["The eyebrows are lowering and the lower eyelids are tightening",
                     "The outer eyebrows are raising, the eyebrows are lowering and the lower eyelids are "
                     "tightening",  # fear
                     "The eyebrows are lowering"],  # sadness 1+4+15
        "surprise": ["The outer eyebrows are raising"]}  # 1+2+5+26 and 2 give the same text
    texts, classes = label_texts(emotion_texts(samm, au_prompts(samm)))
    assert len(texts) == 5 and classes == [0, 1, 1, 1, 2]
    with pytest.raises(TextConfigError, match=r"model.emotion_texts: no AU of the positive combinations.*"
                                              r"emotion_texts: \{positive: "):
        emotion_texts([4], au_prompts([4]))  # no happiness AU: the class needs its own text


def test_emotion_text_override_is_a_text_or_a_list_of_texts():
    prompts = au_prompts([4])
    got = emotion_texts([4], prompts, {"positive": "smile", "surprise": ["wow", "oh", "wow"]})
    assert got == {"positive": ["smile"],  # a single string, as before: one text
                   "negative": ["The eyebrows are lowering"],  # defaults for the classes not overridden
                   "surprise": ["wow", "oh"]}  # repeats dropped, order kept
    for bad in ([], [""], "  "):
        with pytest.raises(TextConfigError, match=r"model.emotion_texts\[surprise\]: give one non-empty text"):
            emotion_texts([4], prompts, {"positive": "smile", "surprise": bad})
    with pytest.raises(TextConfigError, match="'smile' is a label text of both positive and surprise"):
        emotion_texts([4], prompts, {"positive": "smile", "surprise": ["wow", "smile"]})


def test_unknown_emotion_class_in_the_override_is_named():
    from model.config import ModelConfig, check_aus

    cfg = ModelConfig(emotion_texts={"positive": ["a smile", "a grin"], "anger": "a frown"})
    with pytest.raises(TextConfigError, match=r"model.emotion_texts: unknown MER class\(es\) \['anger'\]; the "
                                              r"classes are \['positive', 'negative', 'surprise'\]: rename or "
                                              r"remove 'anger'"):
        check_aus(cfg, [1, 2, 4, 12])
    check_aus(ModelConfig(emotion_texts={"positive": ["a smile", "a grin"]}), [1, 2, 4, 12])


def test_eq13_maxme_over_every_label_text():
    """A class's score is its best text's summed similarity; the prediction is the class of the best text."""
    from model.mer import mer_class_scores

    texts = torch.tensor([[1.0, 0.0],  # text 0: positive
                          [-1.0, 0.0], [0.0, 1.0],  # texts 1, 2: negative
                          [1.0, 1.0]])  # text 3: surprise
    text_class = torch.tensor([0, 1, 1, 2])
    au = torch.tensor([[[0.0, 1.0], [0.0, 2.0]],  # sample 0: text 2 (negative's second) wins
                       [[1.0, 0.0], [3.0, 0.0]]])  # sample 1: text 0 wins; negative's best is text 2 (0 > -2)
    text_scores = mer_scores(au, texts)
    r = 1 / math.sqrt(2)
    assert text_scores.tolist() == [pytest.approx([0, 0, 2, 2 * r], abs=1e-6),
                                    pytest.approx([2, -2, 0, 2 * r], abs=1e-6)]
    scores, best = mer_class_scores(text_scores, text_class, 3)
    assert best.tolist() == [2, 0]
    assert scores.tolist() == [pytest.approx([0, 2, 2 * r], abs=1e-6), pytest.approx([2, 0, 2 * r], abs=1e-6)]
    assert mer_predict(scores, MER_CLASSES) == ["negative", "positive"]
    assert [MER_CLASSES[text_class[i]] for i in best] == ["negative", "positive"]
    with pytest.raises(ValueError, match=r"MER classes \[2\] have no label text"):
        mer_class_scores(text_scores[:, :3], text_class[:3], 3)


def test_docs_list_the_default_label_texts_the_code_builds():
    """docs/model.md pastes scripts/emotion_texts.py's tables: they must still be what the code builds."""
    import runpy

    root = REPO
    tables = runpy.run_path(str(root / "scripts" / "emotion_texts.py"))["tables"]()
    assert "| 9 | surprise | 2 |" in tables  # CASME II has R = 10 texts
    assert tables in (root / "docs" / "model.md").read_text(), \
        "docs/model.md: paste the output of scripts/emotion_texts.py into its MER label texts section"
