"""Synthetic micro-expression datasets in the exact CASME II, SAMM and CAS(ME)^3 Part A layouts (coding
sheet included).

Faces: `skimage.data.astronaut()` (public domain, ships offline), one identity per subject by a smooth
shape warp, scale, small rotation, shift and brightness. Each sample is a short onset -> apex -> offset
clip in which every active AU moves its FACS region (Gaussian-weighted local warp around the dlib
landmarks of that region) at micro scale, with a smooth temporal profile, plus Gaussian sensor noise.
Emotions drive which AUs co-occur and are written to the sheet. The same seed writes the same bytes.
"""
from __future__ import annotations

import datetime
import functools
import io
import json
import math
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from preprocessing.errors import DatasetError

LAYOUTS = ("casme2", "samm", "casme3")
# (W, H): the real 640x480 / 960x650, scaled down; CAS(ME)^3's 1280x720 as 320x240 (the face needs the height)
_CANVAS = {"casme2": (320, 240), "samm": (320, 216), "casme3": (320, 240)}
_FACE_WIDTH = 150.0  # landmark-box width of the synthetic face in pixels (paper-scale crop -> 224)
_JPEG_QUALITY = 95

# AU -> (dlib 0-based landmark centres, direction (dx, dy) with dx as "outward" share, Gaussian sigma as a
# share of the face width). Directions follow issue 2 (FACS): y grows downwards; "outward" is away from
# the face's vertical midline, so (+0.6, -0.8) on a lip corner is "up and out".
AU_MOTION: dict[int, tuple[tuple[int, ...], tuple[float, float], float]] = {
    1: ((20, 21, 22, 23), (0.0, -1.0), 0.07),  # inner brow raiser
    2: ((18, 19, 24, 25), (0.0, -1.0), 0.07),  # outer brow raiser
    4: ((19, 20, 21, 22, 23, 24), (-0.6, 0.8), 0.08),  # brow lowerer: down and together
    5: ((37, 38, 43, 44), (0.0, -1.0), 0.05),  # upper lid raiser: upper lids up
    6: ((2, 14), (0.0, -1.0), 0.10),  # cheek raiser
    7: ((40, 41, 46, 47), (0.0, -1.0), 0.05),  # lid tightener: lower lids up
    9: ((27, 28, 31, 35), (0.0, -1.0), 0.06),  # nose wrinkler: nose root and wings up
    10: ((50, 52), (0.0, -1.0), 0.06),  # upper lip raiser
    12: ((48, 54), (0.6, -0.8), 0.07),  # lip corner puller: up and out
    14: ((48, 54, 60, 64), (-1.0, 0.0), 0.06),  # dimpler: lip corners tightened inward
    15: ((48, 54), (0.0, 1.0), 0.07),  # lip corner depressor
    17: ((7, 8, 9, 57), (0.0, -1.0), 0.07),  # chin raiser
}

# (emotion, AU combination) decks: AUs co-occur as emotions make them co-occur (issue 2: happiness ->
# AU12 (+6); surprise -> AU1+AU2; negative -> AU4, AU4+7, AU14, AU15, AU17 and mixtures). Samples walk
# through a freshly shuffled deck per round, so even a small dataset has every evaluated AU (3-6 of ~20).
DECKS = {
    "casme2": [
        ("happiness", [12]), ("happiness", [12]), ("happiness", [6, 12]), ("surprise", [1, 2]),
        ("surprise", [1, 2]), ("surprise", [1]), ("disgust", [4]), ("disgust", [4, 7]), ("disgust", [4, 10]),
        ("repression", [14]), ("repression", [15]), ("repression", [17]), ("repression", [15, 17]),
        ("fear", [4, 7]), ("sadness", [1, 4]), ("sadness", [15, 17]), ("others", [7]), ("others", [14]),
        ("others", [2]), ("others", [14, 17]),
    ],
    "samm": [
        ("Happiness", [12]), ("Happiness", [6, 12]), ("Surprise", [1, 2]), ("Surprise", [2]),
        ("Anger", [4]), ("Anger", [4, 7]), ("Contempt", [12]), ("Contempt", [14]), ("Disgust", [4, 7]),
        ("Disgust", [10]), ("Fear", [1, 2, 4]), ("Sadness", [4, 15]), ("Other", [7]), ("Other", [2]),
        ("Other", [17]),
    ],
    # the first CASME3_FIRST cards hold every AU of DEFAULT_AUS["casme3"] (and both `others`): the first
    # round deals them before the rest (`_draw_aus`), so a set of that many samples has each
    "casme3": [
        ("others", [14]), ("disgust", [9]), ("disgust", [10]), ("sad", [17]), ("fear", [1, 2, 4, 5]),
        ("others", [7]), ("happy", [12]),
        ("happy", [6, 12]), ("surprise", [1, 2]), ("surprise", [1, 2, 5]), ("disgust", [4]), ("disgust", [4, 7]),
        ("anger", [4, 7]), ("sad", [1, 4]),
    ],
}
CASME3_FIRST = 7
_UNILATERAL_OK = {12, 14, 10}  # AUs a sheet often codes with a side (L/R)


@functools.lru_cache(maxsize=1)
def _astronaut() -> tuple[np.ndarray, np.ndarray]:
    """The astronaut photograph (RGB uint8) and its dlib landmarks."""
    from skimage.data import astronaut

    from preprocessing.landmarks import detect_landmarks
    img = astronaut()
    return img, detect_landmarks(img, upsample=1)


def _smooth_field(rng, h: int, w: int, amp: float, grid: int = 5) -> np.ndarray:
    coarse = rng.normal(0, 1, size=(grid, grid, 2)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC) * amp


def _subject_face(rng, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """One identity: (RGB uint8 canvas, its 68 landmarks) from the astronaut by shape warp, scale,
    rotation, shift and brightness. Redrawn until dlib finds the face (as in real data)."""
    from preprocessing.landmarks import NoFaceError, detect_landmarks
    src, src_lm = _astronaut()
    w, h = _CANVAS[layout]
    lo, hi = src_lm.min(0), src_lm.max(0)
    for _ in range(20):
        scale = _FACE_WIDTH / float(hi[0] - lo[0]) * rng.uniform(0.92, 1.08)
        angle = rng.uniform(-5, 5)
        centre = (lo + hi) / 2
        target = np.array([w / 2 + rng.uniform(-8, 8), h / 2 + 8 + rng.uniform(-6, 6)])
        m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle, scale)
        m[:, 2] += target - centre
        inv = cv2.invertAffineTransform(m)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        d = _smooth_field(rng, h, w, amp=2.5)  # identity: smooth shape warp of a few pixels
        qx, qy = xs + d[..., 0], ys + d[..., 1]
        mx = (inv[0, 0] * qx + inv[0, 1] * qy + inv[0, 2]).astype(np.float32)
        my = (inv[1, 0] * qx + inv[1, 1] * qy + inv[1, 2]).astype(np.float32)
        face = cv2.remap(src, mx, my, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
        gain, bias = rng.uniform(0.85, 1.15), rng.uniform(-15, 15)
        face = np.clip(face.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)
        try:
            return face, detect_landmarks(face, upsample=1)
        except NoFaceError:
            continue
    raise DatasetError("synth: no detectable face after 20 identity draws; use another --seed")


def motion_field(landmarks: np.ndarray, aus: dict[int, tuple[float, str]], shape) -> np.ndarray:
    """Displacement (H, W, 2) in pixels at the apex for active AUs {au: (amplitude px, side '', 'L', 'R')}.
    Side L is the subject's left (image right)."""
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    mid = float(landmarks[27:31, 0].mean())  # nose bridge: the face's vertical midline
    width = float(np.ptp(landmarks[:, 0]))
    field = np.zeros((h, w, 2), np.float32)
    for au, (amp, side) in aus.items():
        if au not in AU_MOTION:
            continue
        centres, (d_out, d_y), sig = AU_MOTION[au]
        sigma = sig * width
        for c in centres:
            x, y = landmarks[c]
            out = math.copysign(1.0, x - mid) if abs(x - mid) > 1e-3 else 0.0
            if side == "L" and out < 0 or side == "R" and out > 0:
                continue
            g = np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2))
            field[..., 0] += amp * d_out * out * g
            field[..., 1] += amp * d_y * g
    return field


def _warp(face: np.ndarray, disp: np.ndarray) -> np.ndarray:
    """Move the image content by `disp` (backward map x - d(x); exact to first order for small d)."""
    h, w = disp.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return cv2.remap(face, xs - disp[..., 0], ys - disp[..., 1], cv2.INTER_CUBIC,
                     borderMode=cv2.BORDER_REFLECT)


def _profile(n: int, onset: int, apex: int, offset: int) -> float:
    """Smooth 0 -> 1 -> 0 activation over onset..apex..offset."""
    if n <= onset or n >= offset:
        return 0.0
    if n <= apex:
        return math.sin(math.pi / 2 * (n - onset) / max(apex - onset, 1)) ** 2
    return math.cos(math.pi / 2 * (n - apex) / max(offset - apex, 1)) ** 2


def _au_text(layout: str, aus: dict[int, tuple[float, str]], rng) -> str:
    parts = []
    for au, (_, side) in sorted(aus.items()):
        code = f"{side}{au}"
        if layout == "samm" and rng.random() < 0.3:
            code += "ABCDE"[int(rng.integers(0, 5))]  # intensity letter, as SAMM codes some AUs
        parts.append(code)
    return ("+" if layout == "casme2" else " + ").join(parts)


def _draw_aus(layout: str, index: int, seed: int, rng, intensity: float):
    """Emotion and AUs {au: (amplitude px, side)} of the dataset's `index`-th sample."""
    deck = DECKS[layout]
    order = np.random.default_rng([seed, 1_000_000 + index // len(deck)]).permutation(len(deck))
    if layout == "casme3" and index < len(deck):  # first round: the cards that hold every AU first
        order = np.r_[[i for i in order if i < CASME3_FIRST], [i for i in order if i >= CASME3_FIRST]]
    emotion, combo = deck[int(order[index % len(deck)])]
    aus = {}
    for au in combo:
        one_sided = emotion.lower() == "contempt" or (au in _UNILATERAL_OK and rng.random() < 0.15)
        side = ("L", "R")[int(rng.integers(0, 2))] if one_sided else ""
        aus[au] = (float(rng.uniform(0.8, 2.0)) * intensity, side)  # micro scale: 0.8-2 px at apex
    return emotion, aus


# ---------------------------------------------------------------------------------------------------
def _write_xlsx(path: Path, rows: list[list], preamble: Sequence[Sequence] = (), title: str | None = None) -> None:
    """A workbook whose bytes depend only on its content (fixed timestamps in the zip and properties).
    `title`: the rows go to a worksheet of that name after an empty `Sheet1` (CAS(ME)^3's workbook)."""
    from openpyxl import Workbook
    wb = Workbook()
    ws = wb.active
    ws.title = "Sheet1"
    if title:
        ws = wb.create_sheet(title)
    for r in list(preamble) + rows:
        ws.append(list(r))
    fixed = datetime.datetime(2014, 5, 8)
    wb.properties.created = wb.properties.modified = fixed
    buf = io.BytesIO()
    wb.save(buf)
    buf.seek(0)
    with zipfile.ZipFile(buf) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in sorted(zin.infolist(), key=lambda i: i.filename):
            data = zin.read(info.filename)
            if info.filename == "docProps/core.xml":  # openpyxl stamps `modified` with the time of saving
                data = re.sub(rb"(<dcterms:modified[^>]*>)[^<]*(<)", rb"\g<1>2014-05-08T00:00:00Z\g<2>", data)
            zout.writestr(zipfile.ZipInfo(info.filename, date_time=(2014, 5, 8, 0, 0, 0)), data,
                          compress_type=zipfile.ZIP_DEFLATED)


def _write_frame(path: Path, img: np.ndarray, grey: bool) -> None:
    out = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if grey else cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    if not ok:
        raise DatasetError(f"{path}: JPEG encoding failed")
    path.write_bytes(buf.tobytes())


def generate(out, layout: str = "casme2", subjects: int = 4, per_subject: int = 6, seed: int = 0,
             intensity: float = 1.0, noise: float = 1.0) -> Path:
    """Write a synthetic dataset in the real `layout` to the new folder `out` and return it.

    Written to a temporary sibling folder and renamed into place, so `out` either holds a complete
    dataset or does not exist. `out` must not exist or be empty. Also writes `synth.json` (parameters and
    per-sample truth: onset, apex and offset frames, AUs with amplitudes in px, emotion), which the
    readers ignore.
    """
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; known layouts: {', '.join(LAYOUTS)}")
    if subjects < 1 or per_subject < 1:
        raise DatasetError(f"synth: --subjects and --per-subject must be >= 1 (got {subjects}, {per_subject})")
    if intensity < 0 or noise < 0:
        raise DatasetError(f"synth: --intensity and --noise must be >= 0 (got {intensity}, {noise})")
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out}: already exists and is not an empty folder; choose a new folder or "
                           f"delete it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        truth = _generate_into(tmp, layout, subjects, per_subject, seed, intensity, noise)
        (tmp / "synth.json").write_text(json.dumps(
            {"layout": layout, "subjects": subjects, "per_subject": per_subject, "seed": seed,
             "intensity": intensity, "noise": noise, "samples": truth}, indent=1))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _generate_into(root: Path, layout, n_subjects, per_subject, seed, intensity, noise) -> list[dict]:
    if layout == "casme3":
        return _generate_casme3(root, n_subjects, per_subject, seed, intensity, noise)
    w, h = _CANVAS[layout]
    grey = layout == "samm"
    rows, truth = [], []
    for si in range(n_subjects):
        rng = np.random.default_rng([seed, si])  # a subject does not change when others are added
        face, lm = _subject_face(rng, layout)
        if layout == "casme2":
            subject_cell, subject = si + 1, f"sub{si + 1:02d}"
            base = root / "CASME2_RAW_selected" / subject
        else:
            subject = subject_cell = f"{si + 6:03d}"
            base = root / "SAMM" / subject
        for k in range(per_subject):
            emotion, aus = _draw_aus(layout, si * per_subject + k, seed, rng, intensity)
            onset = int(rng.integers(10, 200) if layout == "casme2" else rng.integers(100, 6000))
            apex = onset + int(rng.integers(2, 5))
            offset = apex + int(rng.integers(2, 5))
            first, last = onset - 1, offset + 1  # real folders hold frames beyond the coded interval
            if layout == "casme2":
                filename = f"EP{k + 1:02d}_{int(rng.integers(1, 20)):02d}{'fabc'[k % 4]}"
                pad = 0
            else:
                filename = f"{subject}_{k // 3 + 1}_{k % 3 + 1}"
                pad = (0, 4, 5)[int(rng.integers(0, 3))]  # zero padding varies between samples
            folder = base / filename
            folder.mkdir(parents=True)
            apex_field = motion_field(lm, aus, (h, w))
            for n in range(first, last + 1):
                frame = _warp(face, apex_field * _profile(n, onset, apex, offset)).astype(np.float32)
                frame += rng.normal(0, 1.5 * noise, size=frame.shape).astype(np.float32)  # sensor noise
                frame = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
                name = f"img{n}.jpg" if layout == "casme2" else f"{subject}_{n:0{pad}d}.jpg"
                _write_frame(folder / name, frame, grey)
            text = _au_text(layout, aus, rng)
            if layout == "casme2":  # the two header-less columns hold whatever; readers ignore them
                rows.append([subject_cell, filename, k + 1, onset, apex, offset, float(k % 3), text, emotion])
            else:
                rows.append([subject_cell, filename, int(rng.integers(1, 8)), onset, apex, offset,
                             offset - onset + 1, "Micro - 1/2", text, "", emotion])
            truth.append({"sample": f"{subject}/{filename}", "emotion": emotion,
                          "onset": onset, "apex": apex, "offset": offset,
                          "aus": {str(a): {"amplitude_px": round(v[0], 4), "side": v[1]}
                                  for a, v in sorted(aus.items())}})
    if layout == "casme2":
        header = ["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None,
                  "Action Units", "Estimated Emotion"]
        _write_xlsx(root / "CASME2-coding-20140508.xlsx", [header] + rows)
    else:
        preamble = [["SAMM Micro-Expression Database - Micro-Movement FACS Codes (synthetic)"], [],
                    ["Generated by microau-sweep synth; layout of SAMM_Micro_FACS_Codes_v2.xlsx"], [],
                    ["Key:"], ["Onset/Apex/Offset Frame: frame numbers of the sample's image files"],
                    ["Action Units: FACS codes; L/R = side, A-E = intensity"], [],
                    ["Type: Micro - 1/2 = micro-movement"], [], ["Inducement Code: stimulus video"], [], []]
        header = ["Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame", "Offset Frame",
                  "Duration", "Type", "Action Units", "Notes", "Estimated Emotion"]
        _write_xlsx(root / "SAMM_Micro_FACS_Codes_v2.xlsx", [header] + rows, preamble=preamble)
    return truth


_CASME3_LETTERS = "jacegikbdfhlm"  # video letters a-m; subject 0's first video is `j`
_CASME3_CLASS = {"happy": "I", "surprise": "II", "disgust": "III", "fear": "IV", "anger": "V", "sad": "VI",
                 "others": "VII"}
CASME3_LOST_LEAD = 7  # frames 1..7 of every video are missing, as in most real videos


def _generate_casme3(root: Path, n_subjects, per_subject, seed, intensity, noise) -> list[dict]:
    """CAS(ME)^3 Part A: `part_A/spNO.<k>/<letter>/color/<N>.jpg` (k with gaps; 1-based, unpadded; frames
    1-7 lost), a few small `depth/<N>.png`, two MEs per video, and the sheet
    `cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx` (an empty sheet, then `label`, every cell text). The quirks
    of the real set: the first video is `J` in the sheet and `j` on disk; its first sample lost a frame
    inside onset..apex and the video one between its MEs; the last sample's apex is coded at its onset;
    AU cells unsorted (`2+1`), with L/R sides and a `T23` (lip AU, no motion); one `Others`."""
    w, h = _CANVAS["casme3"]
    total = n_subjects * per_subject
    flat = total - 1  # the sample whose sheet apex is its onset
    sided = {min(2, total - 1): "L", min(3, total - 1): "R"}  # AU cells with a side prefix
    rows, truth, capital = [], [], False
    for si in range(n_subjects):
        rng = np.random.default_rng([seed, si])
        face, lm = _subject_face(rng, "casme3")
        subject = f"spNO.{1 + si * (si + 1) // 2}"  # 1, 2, 4, 7, 11, ...: numbers with gaps
        for v in range((per_subject + 1) // 2):
            letter = _CASME3_LETTERS[(v + 2 * si) % len(_CASME3_LETTERS)]
            cell = letter.upper() if (si, v) == (0, 0) else letter
            mes, start = [], CASME3_LOST_LEAD + int(rng.integers(4, 7))
            for k in range(2 * v, min(2 * v + 2, per_subject)):
                index = si * per_subject + k
                emotion, aus = _draw_aus("casme3", index, seed, rng, intensity)
                if index in sided:
                    first = min(aus)
                    aus[first] = (aus[first][0], sided[index])
                onset = start
                apex = onset + int(rng.integers(2, 5))
                offset = apex + int(rng.integers(2, 5))
                start = offset + int(rng.integers(3, 6))
                mes.append((index, emotion, aus, onset, apex, offset, motion_field(lm, aus, (h, w))))
            last = mes[-1][5] + 2
            lost = set(range(1, CASME3_LOST_LEAD + 1))
            if (si, v) == (0, 0):
                lost |= {mes[0][3] + 1, mes[0][5] + 1}  # inside onset..apex of its first ME; between the MEs
            folder = root / "part_A" / subject / letter
            (folder / "color").mkdir(parents=True)
            (folder / "depth").mkdir()
            for n in range(CASME3_LOST_LEAD + 1, last + 1):
                disp = sum(f * _profile(n, on, ap, off) for _, _, _, on, ap, off, f in mes)
                frame = _warp(face, disp).astype(np.float32)
                frame += rng.normal(0, 1.5 * noise, size=frame.shape).astype(np.float32)  # sensor noise
                if n in lost:
                    continue
                _write_frame(folder / "color" / f"{n}.jpg", np.clip(np.rint(frame), 0, 255).astype(np.uint8), False)
                if n <= CASME3_LOST_LEAD + 3:  # depth frames are not used: a few small ones
                    ok, buf = cv2.imencode(".png", np.full((12, 16), 800 + n, np.uint16))
                    (folder / "depth" / f"{n}.png").write_bytes(buf.tobytes())
            for index, emotion, aus, onset, apex, offset, _ in mes:
                codes = [f"{side}{au}" for au, (_, side) in sorted(aus.items(), reverse=True)]  # unsorted: 2+1
                if index == min(1, total - 1):
                    codes.append("T23")  # top-lip AU23: coded, not evaluated, no motion
                shown = emotion
                if emotion == "others" and not capital:
                    shown, capital = "Others", True  # as 3 rows of the real sheet
                sheet_apex = onset if index == flat else apex
                rows.append([subject, cell, str(onset), str(sheet_apex), str(offset), "+".join(codes),
                             _CASME3_CLASS[emotion], shown])
                au_truth = {str(a): {"amplitude_px": round(amp, 4), "side": side}
                            for a, (amp, side) in sorted(aus.items())}
                if "T23" in codes:
                    au_truth["23"] = {"amplitude_px": 0.0, "side": "T"}
                truth.append({"sample": f"{subject}/{cell}_{onset}", "video": f"{subject}/{letter}",
                              "emotion": emotion, "sheet_emotion": shown, "onset": onset, "apex": apex,
                              "sheet_apex": sheet_apex, "offset": offset,
                              "aus": dict(sorted(au_truth.items(), key=lambda kv: int(kv[0]))),
                              "video_lost_frames": sorted(lost), "video_last_frame": last})
    header = ["Subject", "Filename", "Onset", "Apex", "Offset", "AU", "Objective class", "emotion"]
    _write_xlsx(root / "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx", [header] + rows, title="label")
    return truth


# ---------------------------------------------------------------------------------------------------
# How learnable is the AU motion? (used by tests and `docs/datasets.md`)
# ---------------------------------------------------------------------------------------------------
# Paper Table I (0-based dlib indices): where the model reads each AU, so where the synthetic signal is
# measured. A copy, because this layer must not import model/; tests/unit/preprocessing/test_synth.py
# asserts that it equals model.lsi.TABLE_I and that AU_MOTION moves every one of these landmarks.
TABLE_I = {1: [19, 20, 21, 22, 23, 24], 2: [19, 20, 21, 22, 23, 24], 4: [19, 20, 21, 22, 23, 24],
           7: [38, 41, 44, 47], 12: [48, 54], 14: [55, 59, 60, 64], 15: [48, 54], 17: [7, 8, 9, 57]}


def region_motion(data, au: int, radius: int = 8, directed: bool = False) -> np.ndarray:
    """Per sample: mean over the AU's Table I landmarks of the flow image's motion (u, v) - median(u, v)
    in a (2 radius + 1)^2 window around each landmark (channels as stored: min-max normalised).

    directed=False: its magnitude. directed=True: its component along the AU's FACS direction of
    `AU_MOTION` (outward taken from the landmark's side of the nose line), which tells AUs that share a
    region (AU1/AU2/AU4; AU12/AU15) apart."""
    uv = data.flow[:, :2]
    dev = uv - np.median(uv, axis=(2, 3), keepdims=True)  # (S, 2, H, W)
    size = dev.shape[-1]
    d_out, d_y = AU_MOTION[au][1]
    out = np.zeros(len(data), np.float32)
    for i in range(len(data)):
        mid = float(data.landmarks[i, 27:31, 0].mean())
        vals = []
        for j in TABLE_I[au]:
            x, y = data.landmarks[i, j]
            xi, yi = np.clip(np.rint([x, y]).astype(int), 0, size - 1)
            win = dev[i, :, max(0, yi - radius):yi + radius + 1, max(0, xi - radius):xi + radius + 1]
            if directed:
                side = math.copysign(1.0, x - mid) if abs(x - mid) > 1e-3 else 0.0
                vals.append(float((win[0] * d_out * side + win[1] * d_y).mean()))
            else:
                vals.append(float(np.sqrt((win ** 2).sum(0)).mean()))
        out[i] = float(np.mean(vals))
    return out


def au_signal(data, aus: Sequence[int]) -> dict[int, dict[str, float]]:
    """Per AU: mean region motion of active and of inactive samples, the ROC AUC of region motion as a
    detector of the AU (1.0: perfectly separable, 0.5: no signal), and the AUC of the motion along the
    AU's direction (`directed_auc`)."""
    from sklearn.metrics import roc_auc_score
    labels = data.labels(aus)
    out = {}
    for j, au in enumerate(aus):
        m, y = region_motion(data, au), labels[:, j]
        if 0 < y.sum() < len(y):
            out[au] = {"active": float(m[y == 1].mean()), "inactive": float(m[y == 0].mean()),
                       "auc": float(roc_auc_score(y, m)),
                       "directed_auc": float(roc_auc_score(y, region_motion(data, au, directed=True))),
                       "n_active": int(y.sum())}
    return out
