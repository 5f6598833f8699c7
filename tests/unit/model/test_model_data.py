"""The flow-level stand-in of tests/support/data.py (`fake_prepared`): each AU's region is its own tokens."""
from __future__ import annotations

from model.lsi import au_token_indices, landmark_groups

from support.data import CASME2_AUS, fake_prepared


def test_fake_dataset_regions_are_distinct_tokens():
    """The template puts Table I's regions on different 7x7 patch tokens (Eq. 1), so AUs are separable."""
    d = fake_prepared(subjects=2, per_subject=2)
    idx = au_token_indices(d.landmarks, landmark_groups(CASME2_AUS), (7, 7), (224, 224))
    brows, eyes, corners, chin = (set(idx[CASME2_AUS.index(a)][0].tolist()) for a in (4, 7, 12, 17))
    assert brows.isdisjoint(corners) and eyes.isdisjoint(chin) and corners.isdisjoint(chin)
    assert d.flow.min() >= 0 and d.flow.max() <= 1 and d.labels(CASME2_AUS).shape == (4, 8)
