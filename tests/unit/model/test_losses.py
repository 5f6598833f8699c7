"""Losses (Eq. 8-12 and the Table VIII baselines) against hand computations."""
import math

import numpy as np
import pytest
import torch
from open_clip.loss import ClipLoss

from model import (
    backbone,  # noqa: F401  (torchvision guard before open_clip.loss)
    losses,
)


def test_multitask_loss_is_sum_of_per_au_cross_entropy():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]],
                           [[0.0, 0.0], [1.0, 3.0]]])  # (B=2, N=2, 2)
    y = torch.tensor([[0, 1], [1, 0]])
    # AU 1: sample 1 label 0 -> -log(e^2/(e^2+1)); sample 2 label 1 -> -log(1/2)
    au1 = (-math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(2)) / 2
    # AU 2: sample 1 label 1 -> -log(e/(1+e)); sample 2 label 0 -> -log(e/(e+e^3))
    au2 = (-math.log(math.e / (1 + math.e)) - math.log(math.e / (math.e + math.e ** 3))) / 2
    assert losses.multitask_loss(logits, y).item() == pytest.approx(au1 + au2, rel=1e-6)


def test_gd_loss_eq8():
    w_d = torch.tensor([[0.5, 0.25, 0.25]])
    y = torch.tensor([[1, 0, 1]])
    # (0.5^2 + 0.25^2 + 0.75^2) / 3
    assert losses.gd_loss(w_d, y).item() == pytest.approx(0.875 / 3)
    # batch mean
    w2 = torch.tensor([[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]])
    y2 = torch.tensor([[1, 0, 1], [0, 0, 0]])
    assert losses.gd_loss(w2, y2).item() == pytest.approx((0.875 / 3 + (3 / 9) / 3) / 2)


def test_miaucl_target_matrix_eq10():
    lm = losses.same_label_targets(torch.tensor([1, 0, 1, 0]))
    assert lm.tolist() == [[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]]


def _manual_contrastive(v, t, targets, scale, normalise=True):
    """Loops, no matrix tricks: CE of each row's softmax against its targets (row-normalised, or the 0/1
    of Eq. 10 as they stand)."""
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    b = len(v)
    m = np.array([[scale * float(v[i] @ t[j]) for j in range(b)] for i in range(b)])

    def ce(logits, tgt):
        total = 0.0
        for i in range(b):
            lse = math.log(sum(math.exp(x) for x in logits[i]))
            w = tgt[i] / tgt[i].sum() if normalise else tgt[i]
            total += -sum(w[j] * (logits[i][j] - lse) for j in range(b))
        return total / b

    return 0.5 * (ce(m, targets) + ce(m.T, targets.T))


@pytest.mark.parametrize("reading", ["literal", "normalized"])
def test_miaucl_loss_matches_manual_computation(reading):
    g = torch.Generator().manual_seed(0)
    B, N, d = 4, 2, 5
    v = torch.randn(B, N, d, generator=g)
    t = torch.randn(B, N, d, generator=g)
    y = torch.tensor([[1, 0], [0, 0], [1, 1], [0, 1]])
    scale = 14.0
    want = sum(_manual_contrastive(v[:, n].numpy(), t[:, n].numpy(),
                                   (y[:, n, None] == y[None, :, n]).numpy().astype(float), scale,
                                   normalise=reading == "normalized")
               for n in range(N))  # Eq. 11: sum over AUs
    assert losses.miauc_loss(v, t, y, scale, reading).item() == pytest.approx(want, rel=1e-5)


def test_miaucl_default_is_eq10_literal():
    """Eq. 10 sets LM = 1 wherever the labels match and does not normalise: the default."""
    g = torch.Generator().manual_seed(5)
    v, t = torch.randn(6, 2, 4, generator=g), torch.randn(6, 2, 4, generator=g)
    y = torch.tensor([[1, 0], [1, 0], [0, 0], [1, 1], [0, 1], [0, 0]])
    assert losses.miauc_loss(v, t, y, 10.0).item() == losses.miauc_loss(v, t, y, 10.0, "literal").item()


def test_miaucl_bce_reading():
    """'bce': each scaled similarity against its 0/1 target, mean over the B x B matrix, summed over AUs."""
    g = torch.Generator().manual_seed(6)
    v, t = torch.randn(5, 2, 4, generator=g), torch.randn(5, 2, 4, generator=g)
    y = torch.tensor([[1, 0], [0, 0], [1, 1], [0, 1], [1, 0]])
    want = 0.0
    for n in range(2):
        vn = v[:, n] / v[:, n].norm(dim=-1, keepdim=True)
        tn = t[:, n] / t[:, n].norm(dim=-1, keepdim=True)
        for i in range(5):
            for j in range(5):
                s = 3.0 * float(vn[i] @ tn[j])
                p = 1 / (1 + math.exp(-s))
                target = float(y[i, n] == y[j, n])
                want += -(target * math.log(p) + (1 - target) * math.log(1 - p)) / 25
    assert losses.miauc_loss(v, t, y, 3.0, "bce").item() == pytest.approx(want, rel=1e-5)


def test_miaucl_unknown_reading_names_the_key():
    v = torch.randn(2, 1, 4)
    with pytest.raises(ValueError, match="model.miaucl_targets"):
        losses.miauc_loss(v, v, torch.tensor([[0], [1]]), 1.0, "soft")


def test_local_origcl_is_clip_loss_per_au():
    """Diagonal targets: each AU's term is open_clip's own ClipLoss."""
    g = torch.Generator().manual_seed(1)
    B, N, d = 5, 3, 8
    v = torch.randn(B, N, d, generator=g)
    t = torch.randn(B, N, d, generator=g)
    y = torch.randint(0, 2, (B, N), generator=g)
    clip = ClipLoss()
    nv, nt = torch.nn.functional.normalize(v, dim=-1), torch.nn.functional.normalize(t, dim=-1)
    want = sum(clip(nv[:, n], nt[:, n], torch.tensor(10.0)) for n in range(N))
    assert losses.local_origcl_loss(v, t, y, 10.0).item() == pytest.approx(want.item(), rel=1e-5)


def test_global_origcl_is_clip_loss():
    g = torch.Generator().manual_seed(2)
    v, t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    nv, nt = torch.nn.functional.normalize(v, dim=-1), torch.nn.functional.normalize(t, dim=-1)
    want = ClipLoss()(nv, nt, torch.tensor(100.0))
    assert losses.global_origcl_loss(v, t, 100.0).item() == pytest.approx(want.item(), rel=1e-5)


def test_miaucl_differs_from_local_origcl_only_with_shared_labels():
    g = torch.Generator().manual_seed(3)
    v, t = torch.randn(3, 1, 4, generator=g), torch.randn(3, 1, 4, generator=g)
    distinct = torch.tensor([[0], [1], [1]])
    # With labels 0,1,1 the target rows of samples 2 and 3 spread over two columns: the losses differ.
    for reading in ("literal", "normalized"):
        assert losses.miauc_loss(v, t, distinct, 5.0, reading).item() != pytest.approx(
            losses.local_origcl_loss(v, t, distinct, 5.0).item())
        # With two samples of different labels, same-label targets are the identity: the losses agree.
        two = torch.tensor([[0], [1]])
        assert losses.miauc_loss(v[:2], t[:2], two, 5.0, reading).item() == pytest.approx(
            losses.local_origcl_loss(v[:2], t[:2], two, 5.0).item())


def test_with_the_models_texts_normalized_miaucl_equals_local_origcl():
    """What the model feeds Eq. 9: each sample's text is its AU's positive or negative prompt, so same-label
    samples have the same text feature. Then same-label similarities tie, and row-normalised same-label
    targets and CLIP's diagonal ones give the same cross-entropy both ways, hence the same gradients
    (docs/protocol.md, "MiAUCL targets"): the `normalized` reading is local OrigCL. The literal reading of
    Eq. 10 (the default) is not."""
    g = torch.Generator().manual_seed(4)
    labels = torch.tensor([[1, 0], [0, 0], [1, 1], [0, 1], [1, 0], [0, 0], [0, 1], [1, 1], [0, 0]])  # B = 9
    v = torch.randn(9, 2, 8, generator=g, requires_grad=True)
    prompts = torch.randn(2, 2, 8, generator=g)  # per AU: [positive, negative]
    t = prompts[torch.arange(2).unsqueeze(0), 1 - labels]  # (B, N, d): each sample's own label text
    a, b = losses.miauc_loss(v, t, labels, 10.0, "normalized"), losses.local_origcl_loss(v, t, labels, 10.0)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    ga, = torch.autograd.grad(a, v)
    gb, = torch.autograd.grad(b, v)
    torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-7)
    literal = losses.miauc_loss(v, t, labels, 10.0, "literal")
    assert literal.item() != pytest.approx(b.item(), rel=1e-3)
    gl, = torch.autograd.grad(literal, v)
    assert not torch.allclose(gl, gb, rtol=1e-3, atol=1e-6)


def test_total_loss_eq12():
    mt, cl, gd = torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0)
    assert losses.total_loss(mt, cl, gd, alpha=0.6, beta=1.0).item() == pytest.approx(1 + 1.2 + 3)
