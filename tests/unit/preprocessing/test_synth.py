"""Synthetic datasets: the real layouts, determinism, and AU motion that the flow image shows."""
from __future__ import annotations

import hashlib
import json

import cv2
import numpy as np
import pytest
from openpyxl import load_workbook

from preprocessing.annotations import DEFAULT_AUS, read_casme2, read_samm
from preprocessing.synth import AU_MOTION, au_signal, generate, motion_field


def digest(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_casme2_layout(synth_casme2):
    sheet = synth_casme2 / "CASME2-coding-20140508.xlsx"
    header = [c.value for c in next(load_workbook(sheet).active.iter_rows(max_row=1))]
    assert header == ["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None,
                      "Action Units", "Estimated Emotion"]
    assert isinstance(load_workbook(sheet).active.cell(row=2, column=1).value, int)  # Subject 1 -> sub01
    samples = read_casme2(synth_casme2)
    assert len(samples) == 24 and {s.subject for s in samples} == {"sub01", "sub02", "sub03", "sub04"}
    for s in samples:
        assert s.frames_dir.parent.parent.name == "CASME2_RAW_selected"
        assert all(p.name == f"img{n}.jpg" for n, p in s.frames.items())
        assert 7 <= len(s.frames) <= 11 and s.onset < s.apex < s.offset
        assert s.emotion in ("happiness", "disgust", "repression", "surprise", "fear", "sadness", "others")
    img = cv2.imread(str(samples[0].frames[samples[0].apex]), cv2.IMREAD_UNCHANGED)
    assert img.shape == (240, 320, 3)


def test_samm_layout(synth_samm):
    sheet = synth_samm / "SAMM_Micro_FACS_Codes_v2.xlsx"
    rows = list(load_workbook(sheet).active.iter_rows(values_only=True))
    assert rows[13][:2] == ("Subject", "Filename")  # 13 rows of preamble, then the header
    assert rows[14][0] == "006"
    samples = read_samm(synth_samm)
    assert len(samples) == 12 and samples[0].row == 15
    paddings = set()
    for s in samples:
        assert s.frames_dir.parent.parent.name == "SAMM" and s.filename.startswith(s.subject + "_")
        names = [p.stem for p in s.frames.values()]
        assert all(n.startswith(s.subject + "_") for n in names)
        paddings.add(len(names[0].split("_")[1]) if len({len(n) for n in names}) == 1 else "mixed")
    assert len(paddings) >= 2  # zero padding of the frame number varies between samples
    img = cv2.imread(str(samples[0].frames[samples[0].apex]), cv2.IMREAD_UNCHANGED)
    assert img.ndim == 2  # grey, like SAMM
    truth = json.loads((synth_samm / "synth.json").read_text())
    assert [t["sample"] for t in truth["samples"]] == [s.id for s in samples]
    assert [sorted(map(int, t["aus"])) for t in truth["samples"]] == [s.aus for s in samples]


def test_same_seed_same_bytes(tmp_path):
    a = generate(tmp_path / "a", "casme2", subjects=2, per_subject=2, seed=7)
    b = generate(tmp_path / "b", "casme2", subjects=2, per_subject=2, seed=7)
    c = generate(tmp_path / "c", "casme2", subjects=2, per_subject=2, seed=8)
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)


def test_existing_folder_is_not_overwritten(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    from preprocessing import DatasetError
    with pytest.raises(DatasetError, match="already exists"):
        generate(tmp_path / "x", "casme2", subjects=1, per_subject=1)
    assert [p.name for p in tmp_path.iterdir()] == ["x"]  # no temp folder left behind


def test_au_directions():
    """Each AU moves its FACS region in the direction of issue 2 (y grows downwards)."""
    from preprocessing.synth import _astronaut
    _, lm = _astronaut()
    h, w = 512, 512

    def at(au, j):
        return motion_field(lm, {au: (1.0, "")}, (h, w))[int(lm[j, 1]), int(lm[j, 0])]

    left, right = 48, 54  # mouth corners: image-left and image-right
    assert at(1, 21)[1] < 0 and at(2, 18)[1] < 0 and at(7, 41)[1] < 0 and at(17, 8)[1] < 0  # up
    assert at(4, 21)[1] > 0 and at(4, 21)[0] > 0 and at(4, 22)[0] < 0  # down and together
    assert at(12, left)[1] < 0 and at(12, left)[0] < 0 and at(12, right)[0] > 0  # up and out
    assert at(14, left)[0] > 0 and at(14, right)[0] < 0  # inward
    assert at(15, left)[1] > 0 and at(15, right)[1] > 0  # down
    one_side = motion_field(lm, {12: (1.0, "L")}, (h, w))  # subject's left = image right
    assert np.abs(one_side[int(lm[left, 1]), int(lm[left, 0])]).max() < 1e-3
    assert np.abs(one_side[int(lm[right, 1]), int(lm[right, 0])]).max() > 0.5
    assert set(DEFAULT_AUS["casme2"]) <= set(AU_MOTION)


def test_intensity_scales_the_motion(tmp_path):
    still = generate(tmp_path / "still", "casme2", subjects=1, per_subject=2, seed=1, intensity=0, noise=0)
    moving = generate(tmp_path / "moving", "casme2", subjects=1, per_subject=2, seed=1, intensity=1, noise=0)
    for root, moves in ((still, False), (moving, True)):
        for s in read_casme2(root):
            on = cv2.imread(str(s.frames[s.onset])).astype(float)
            ap = cv2.imread(str(s.frames[s.apex])).astype(float)
            assert (np.abs(ap - on).max() > 20) == moves, (root, s.id)


def test_au_motion_is_visible_in_the_flow_image(prepared_casme2):
    """At intensity 1, the flow image's motion at each AU's Table I landmarks is clearly larger when the AU
    is active (numbers in docs/datasets.md)."""
    signal = au_signal(prepared_casme2, DEFAULT_AUS["casme2"])
    assert set(signal) == set(DEFAULT_AUS["casme2"])
    for au, s in signal.items():
        assert s["active"] > 1.4 * s["inactive"], (au, s)
        assert s["auc"] >= 0.65, (au, s)
        assert s["directed_auc"] >= 0.75, (au, s)


def test_table_i_copy_matches_the_model_and_synth_moves_it():
    """synth.TABLE_I (where au_signal measures) is the model's Table I, and AU_MOTION moves each AU's Table I
    group: per px of amplitude, >= 0.5 px on average over the group and >= 0.9 px at its most moved
    landmark, so the model reads the synthetic motion where it looks (AU2's group holds the inner brows,
    which AU2 hardly moves). Tests may import both layers; preprocessing/ may not."""
    from model.lsi import TABLE_I as MODEL_TABLE_I
    from preprocessing.synth import TABLE_I, _astronaut
    assert {au: tuple(g) for au, g in TABLE_I.items()} == {au: tuple(g) for au, g in MODEL_TABLE_I.items()}
    _, lm = _astronaut()
    for au, group in MODEL_TABLE_I.items():
        assert au in AU_MOTION, au
        mag = np.hypot(*np.moveaxis(motion_field(lm, {au: (1.0, "")}, (512, 512)), -1, 0))
        at = [float(mag[y, x]) for x, y in np.rint(lm[list(group)]).astype(int)]
        assert np.mean(at) >= 0.5 and max(at) >= 0.9, (au, at)
