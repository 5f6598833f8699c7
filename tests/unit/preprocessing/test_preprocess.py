"""Landmarks, crop, magnification, optical flow, PreparedDataset and its cache."""
from __future__ import annotations

import os
import shutil

import cv2
import numpy as np
import pytest

from preprocessing import DatasetError, PreparedDataset, pipeline, prepare_dataset
from preprocessing import magnify as mag
from preprocessing.annotations import DEFAULT_AUS
from preprocessing.config import MagnificationConfig, PreprocessConfig
from preprocessing.flow import flow_image, optical_flow, optical_strain
from preprocessing.landmarks import NoFaceError, crop, detect_landmarks, face_box, to_crop_grid


@pytest.fixture(scope="module")
def astronaut():
    from skimage.data import astronaut
    return astronaut()


@pytest.fixture(scope="module")
def face224(astronaut):
    """The astronaut's face cropped to 224 x 224 from its landmarks, grey float in [0, 1]."""
    lm = detect_landmarks(astronaut)
    grey = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255
    return crop(grey, face_box(lm, 0.15), 224)


def shifted(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Content moved by (dx, dy) pixels (sub-pixel, cubic)."""
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(img, m, img.shape[::-1], flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)


# -- landmarks and crop --------------------------------------------------------------------------------
def test_landmarks_on_astronaut(astronaut):
    lm = detect_landmarks(astronaut, upsample=1)
    assert lm.shape == (68, 2) and lm.dtype == np.float32
    # dlib also reports a weak second "face" on the suit; the best-scoring one is the real face.
    assert np.allclose(lm.min(0), [179, 87], atol=4) and np.allclose(lm.max(0), [272, 178], atol=4)
    eyes_y, nose_y, mouth_y, chin_y = lm[36:48, 1].mean(), lm[30, 1], lm[48:68, 1].mean(), lm[8, 1]
    assert eyes_y < nose_y < mouth_y < chin_y
    assert lm[36, 0] < lm[39, 0] < lm[42, 0] < lm[45, 0]  # image-left eye, then image-right eye
    assert lm[48, 0] < lm[54, 0]  # mouth corners


def test_no_face_raises():
    with pytest.raises(NoFaceError, match="no face found"):
        detect_landmarks(np.full((240, 320, 3), 128, np.uint8))


def test_crop_maps_landmarks_into_the_224_grid(astronaut):
    lm = detect_landmarks(astronaut)
    box = face_box(lm, 0.15)
    marked = np.zeros(astronaut.shape[:2], np.float32)
    x, y = np.rint(lm[30]).astype(int)
    marked[y - 2:y + 3, x - 2:x + 3] = 1.0
    c = crop(marked, box, 224)
    grid = to_crop_grid(lm, box, 224)
    ys, xs = np.mgrid[0:224, 0:224]
    centroid = np.array([(c * xs).sum(), (c * ys).sum()]) / c.sum()
    assert np.abs(centroid - grid[30]).max() < 0.3
    assert (grid >= 0).all() and (grid < 224).all()
    assert c.shape == (224, 224)


def test_crop_outside_the_image_repeats_the_border():
    img = np.arange(100, dtype=np.float32).reshape(10, 10)
    out = crop(img, (-5, -5, 20), 20)
    assert out.shape == (20, 20) and out[0, 0] == img[0, 0] and out[-1, -1] == img[-1, -1]


# -- optical flow --------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["tvl1", "farneback", "dis"])
def test_flow_recovers_a_subpixel_shift_on_a_real_face(face224, method):
    dx, dy = 0.4, -0.3
    flow = optical_flow(face224, shifted(face224, dx, dy), method)
    inner = flow[40:-40, 40:-40]
    assert abs(np.median(inner[..., 0]) - dx) < 0.08, method
    assert abs(np.median(inner[..., 1]) - dy) < 0.08, method


def test_flow_image_channels():
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    flow = np.stack([0.01 * xx ** 2, 0.02 * yy], -1)  # strain grows with x
    img = flow_image(flow)
    assert img.shape == (3, 64, 64) and img.dtype == np.float32
    for ch in img:
        assert ch.min() == 0.0 and ch.max() == pytest.approx(1.0)
    strain = optical_strain(flow)
    assert strain[32, 60] > strain[32, 4]
    # e_xx = 0.02 x, e_yy = 0.02: |e| = sqrt(e_xx^2 + e_yy^2) away from the borders
    assert strain[32, 30] == pytest.approx(np.hypot(0.02 * 30, 0.02), rel=1e-3)
    assert (flow_image(np.zeros((8, 8, 2), np.float32)) == 0).all()  # no motion: no division by zero


def test_resize_flow_scales_the_vectors_with_the_image():
    """Flow in pixels of a 200 px crop -> pixels of the 224 grid (x 1.12); strain (a ratio) unscaled."""
    from preprocessing.flow import resize_flow
    field = np.dstack([np.full((200, 200), 1.0), np.full((200, 200), -0.5), np.full((200, 200), 0.02)])
    up = resize_flow(field.astype(np.float32), 224)
    assert up.shape == (224, 224, 3)
    assert np.allclose(up[..., 0], 1.12) and np.allclose(up[..., 1], -0.56) and np.allclose(up[..., 2], 0.02)
    down = resize_flow(np.dstack([np.full((448, 448), 2.0)] * 2).astype(np.float32), 224)
    assert np.allclose(down, 1.0)


def _textured(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3)).astype(np.uint8), (0, 0), 1.5)


def test_flow_on_the_native_crop_and_landmarks_in_the_patch_token_grid(tmp_path, monkeypatch):
    """The flow is computed on the face box at the frame's resolution (200 x 200 here, not 224), the flow image
    is resized to 224, and a landmark at a known frame pixel lands in the 7x7 patch token (Eq. 1,
    model.lsi.landmark_to_token) where the flow image shows the motion that was put there."""
    from model.lsi import landmark_to_token
    from preprocessing.annotations import Sample
    box = (50, 20, 200)  # x0, y0, side in frame pixels
    at = np.array([100.0, 170.0])  # a landmark's frame pixel: crop (50, 150) -> 224 grid (56.06, 168.06)
    lm = np.tile(np.array([[150.0, 120.0]], np.float32), (68, 1))
    lm[0] = at
    frame = _textured(240, 320)
    ys, xs = np.mgrid[0:240, 0:320].astype(np.float32)
    bump = 1.5 * np.exp(-((xs - at[0]) ** 2 + (ys - at[1]) ** 2) / (2 * 7.0 ** 2))  # moves right at `at`
    moved = cv2.remap(frame, (xs - bump).astype(np.float32), ys, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    frames = {}
    for n, img in ((1, frame), (2, moved)):
        frames[n] = tmp_path / f"img{n}.png"
        cv2.imwrite(str(frames[n]), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    s = Sample(reader="casme2", subject="sub01", filename="EP01", onset=1, apex=2, offset=3, aus=[12],
               au_text="12", emotion="happiness", sheet=tmp_path / "sheet.xlsx", row=2, frames_dir=tmp_path,
               frames=frames, raw_frames=("1", "2", "3"))
    monkeypatch.setattr(pipeline, "detect_landmarks", lambda *a, **k: lm.copy())
    monkeypatch.setattr(pipeline, "face_box", lambda landmarks, margin: box)
    shapes, real = [], pipeline.optical_flow

    def spy(onset, apex, method):
        shapes.append((onset.shape, apex.shape))
        return real(onset, apex, method)

    monkeypatch.setattr(pipeline, "optical_flow", spy)
    img, grid = pipeline.process_sample(s, PreprocessConfig(flow="dis", magnification={"method": "none"}))
    assert shapes == [((200, 200), (200, 200))]  # native crop, not resized first
    assert img.shape == (3, 224, 224) and grid.shape == (68, 2)
    assert grid[0] == pytest.approx([(100 - 50 + 0.5) * 224 / 200 - 0.5, (170 - 20 + 0.5) * 224 / 200 - 0.5])
    token = int(landmark_to_token(grid[0], (7, 7), (224, 224)))
    assert token == 5 * 7 + 1  # row 5 (y 168 of 224), column 1 (x 56)
    dev = np.abs(img[:2] - np.median(img[:2], axis=(1, 2), keepdims=True)).sum(0)
    per_token = dev.reshape(7, 32, 7, 32).mean(axis=(1, 3))
    assert int(np.argmax(per_token)) == token


# -- magnification -------------------------------------------------------------------------------------
@pytest.mark.parametrize("frames", [5, 30])  # 30: a CASME II / SAMM onset->apex at 200 fps
def test_eulerian_multiplies_the_motion(face224, frames):
    """A 0.4 px ramp onset -> apex leaves about `factor` (3) times larger at any clip length: the default
    band [0, 0.5] cycles/frame holds the ramp's whole spectrum (with [0.05, 0.4] a 30-frame clip got x2.4)."""
    clip = np.stack([shifted(face224, 0.4 * t / (frames - 1), 0.0) for t in range(frames)])
    plain = optical_flow(clip[0], clip[-1], "tvl1")[40:-40, 40:-40, 0]
    onset, apex = mag.magnify(clip, MagnificationConfig(method="eulerian", factor=3.0))
    magnified = optical_flow(onset, apex, "tvl1")[40:-40, 40:-40, 0]
    assert np.median(plain) == pytest.approx(0.4, abs=0.08)
    assert np.median(magnified) == pytest.approx(1.2, rel=0.2)
    assert 2.6 <= np.median(magnified) / np.median(plain) <= 3.3
    none = mag.magnify(clip, MagnificationConfig(method="none"))
    assert np.array_equal(none[0], clip[0]) and np.array_equal(none[1], clip[-1])


def test_eulerian_band_bounds():
    from pydantic import ValidationError
    assert (MagnificationConfig().low, MagnificationConfig().high) == (0.0, 0.5)
    for bad in ({"low": 0.3, "high": 0.2}, {"high": 0.6}, {"low": 0.5}):
        with pytest.raises(ValidationError):
            MagnificationConfig(**bad)


# Key names and shapes of the public PyTorch port's `MagNet` (ZhengPeng7/motion_magnification_learning-
# based, magnet.py): Conv2D_activa keeps its conv as `.conv2d` without bias; ResBlk has cba_1/cba_2.
PORT_KEYS = {
    "encoder.cba_1.conv2d.weight": (16, 3, 7, 7), "encoder.cba_2.conv2d.weight": (32, 16, 3, 3),
    "encoder.resblks.2.cba_2.conv2d.weight": (32, 32, 3, 3), "encoder.texture_cba.conv2d.weight":
        (32, 32, 3, 3), "encoder.texture_resblks.1.cba_1.conv2d.weight": (32, 32, 3, 3),
    "encoder.motion_cba.conv2d.weight": (32, 32, 3, 3), "encoder.motion_resblks.1.cba_2.conv2d.weight":
        (32, 32, 3, 3), "manipulator.g.conv2d.weight": (32, 32, 3, 3), "manipulator.h_conv.conv2d.weight":
        (32, 32, 3, 3), "manipulator.h_resblk.cba_1.conv2d.weight": (32, 32, 3, 3),
    "decoder.resblks.8.cba_1.conv2d.weight": (64, 64, 3, 3), "decoder.cba_1.conv2d.weight": (32, 64, 3, 3),
    "decoder.cba_2.conv2d.weight": (3, 32, 7, 7),
}


@pytest.fixture(scope="module")
def magnet_checkpoint(tmp_path_factory):
    """A randomly initialised checkpoint of the port's structure, saved as its training saves it
    (a DataParallel state_dict: keys prefixed `module.`)."""
    import torch
    torch.manual_seed(0)
    state = mag.MagNet().state_dict()
    path = tmp_path_factory.mktemp("magnet") / "magnet_epoch12_loss1.07e-01.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    return path


def test_learned_network_matches_the_public_port(magnet_checkpoint):
    state = mag.MagNet().state_dict()
    assert len(state) == 42  # 18 encoder + 4 manipulator + 20 decoder convolutions, no biases
    for k, shape in PORT_KEYS.items():
        assert tuple(state[k].shape) == shape, k
    net = mag.load_magnet(str(magnet_checkpoint))
    import torch
    saved = torch.load(magnet_checkpoint)
    assert torch.equal(net.state_dict()["decoder.cba_2.conv2d.weight"],
                       saved["module.decoder.cba_2.conv2d.weight"])
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    out = mag.learned(a, b, 3.0, str(magnet_checkpoint))
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8


def _reference_magnet(state, batch_A, batch_B, amp_factor):
    """magnet.py's `MagNet.forward(batch_A, batch_B, 0, 0, amp_factor, mode='evaluate')` of the public port
    (ZhengPeng7/motion_magnification_learning-based), re-stated with torch.nn.functional on its state_dict:
    Conv2D_activa = reflection pad, bias-free conv, optional ReLU; ResBlk = x + cba_2(cba_1(x)); Encoder,
    Manipulator and Decoder (UpsamplingNearest2d(2), texture interpolated to the motion's size when they
    differ, no crop of the output) as written there."""
    import torch
    F = torch.nn.functional

    def cba(x, name, stride, padding, relu):
        if padding:
            x = F.pad(x, (padding,) * 4, mode="reflect")
        x = F.conv2d(x, state[f"{name}.conv2d.weight"], None, stride)
        return F.relu(x) if relu else x

    def resblk(x, name):
        return cba(cba(x, f"{name}.cba_1", 1, 1, True), f"{name}.cba_2", 1, 1, False) + x

    def blocks(x, name, n):
        for i in range(n):
            x = resblk(x, f"{name}.{i}")
        return x

    def encoder(x):
        x = blocks(cba(cba(x, "encoder.cba_1", 1, 3, True), "encoder.cba_2", 2, 1, True), "encoder.resblks", 3)
        texture = blocks(cba(x, "encoder.texture_cba", 2, 1, True), "encoder.texture_resblks", 2)
        motion = blocks(cba(x, "encoder.motion_cba", 1, 1, True), "encoder.motion_resblks", 2)
        return texture, motion

    def manipulator(motion_A, motion_B, amp):
        delta = resblk(cba(cba(motion_B - motion_A, "manipulator.g", 1, 1, True) * amp, "manipulator.h_conv",
                           1, 1, False), "manipulator.h_resblk")
        return motion_B + delta

    def decoder(texture, motion):
        texture = F.interpolate(texture, scale_factor=2, mode="nearest")
        if motion.shape != texture.shape:
            texture = F.interpolate(texture, size=motion.shape[-2:])
        x = F.interpolate(blocks(torch.cat([texture, motion], 1), "decoder.resblks", 9), scale_factor=2,
                          mode="nearest")
        return cba(cba(x, "decoder.cba_1", 1, 1, True), "decoder.cba_2", 1, 3, False)

    texture_A, motion_A = encoder(batch_A)
    texture_B, motion_B = encoder(batch_B)
    return decoder(texture_B, manipulator(motion_A, motion_B, amp_factor))


@pytest.mark.parametrize("side", [96, 97])  # 97: the decoder's output is a pixel larger, resized back
def test_learned_is_one_forward_of_the_reference_inference(astronaut, magnet_checkpoint, side):
    """`magnify.learned` equals the port's inference (test_video.py / VMM_learning_based_demo.ipynb, data.py),
    re-stated here: RGB frames -> x / 127.5 - 1, channels first (unit_preprocessing); the network called with
    (frame A, frame B, amp) where amp is the magnification factor itself (3 for the paper's x3, not 3 - 1);
    the output clipped to [-1, 1], round((y + 1) * 127.5) to uint8, resized with cubic interpolation to
    the video's size when it differs (unit_postprocessing)."""
    import torch
    state = {k.replace("module.", "", 1): v for k, v in torch.load(magnet_checkpoint).items()}
    lm = detect_landmarks(astronaut)
    a = crop(astronaut, face_box(lm, 0.15), side)
    b = cv2.warpAffine(a, np.float32([[1, 0, 0.6], [0, 1, -0.4]]), (side, side), flags=cv2.INTER_CUBIC,
                       borderMode=cv2.BORDER_REPLICATE)

    def unit_preprocessing(unit):  # BGR -> RGB after load_unit's RGB -> BGR: the RGB frame as read
        return np.transpose(unit / 127.5 - 1.0, (2, 0, 1))

    def unit_postprocessing(unit, vid_size):
        unit = np.clip(unit.squeeze().cpu().detach().numpy(), -1, 1)
        unit = np.round((np.transpose(unit, (1, 2, 0)) + 1.0) * 127.5).astype(np.uint8)
        if unit.shape[:2][::-1] != vid_size:
            unit = cv2.resize(unit, vid_size, interpolation=cv2.INTER_CUBIC)
        return unit

    batch_A = torch.from_numpy(np.asarray([unit_preprocessing(a)])).float()
    batch_B = torch.from_numpy(np.asarray([unit_preprocessing(b)])).float()
    amp_factor = torch.from_numpy(np.asarray(3.0)).float()
    for _ in range(len(batch_A.shape) - len(amp_factor.shape)):
        amp_factor = amp_factor.unsqueeze(-1)
    with torch.no_grad():
        y_hat = _reference_magnet(state, batch_A, batch_B, amp_factor)
    assert y_hat.shape[-1] == side + side % 2
    expected = unit_postprocessing(y_hat[0], vid_size=(side, side))

    got = mag.learned(a, b, 3.0, str(magnet_checkpoint))
    assert got.shape == (side, side, 3) and got.dtype == np.uint8
    assert np.array_equal(got, expected)
    # what magnify returns for the pipeline: the onset and that output, made grey for the flow
    onset, apex = mag.magnify(np.stack([a, b]), MagnificationConfig(method="learned", factor=3.0,
                                                                   weights=str(magnet_checkpoint)))
    assert np.array_equal(onset, cv2.cvtColor(a, cv2.COLOR_RGB2GRAY) / np.float32(255))
    assert np.array_equal(apex, cv2.cvtColor(got, cv2.COLOR_RGB2GRAY) / np.float32(255))


def test_learned_magnification_gets_the_rgb_face_crops(tiny_casme2, synth_samm, magnet_checkpoint, monkeypatch):
    """The pipeline hands `learned` the colour crops of a colour dataset (CASME II) at the face box's native
    size, and a grey set's frames (SAMM) as grey copied to three channels."""
    from preprocessing.annotations import read_casme2, read_samm
    seen = []

    def spy(onset, apex, factor, weights):
        seen.append((onset, apex, factor))
        return apex

    monkeypatch.setattr(mag, "learned", spy)
    cfg = PreprocessConfig(flow="dis", magnification={"method": "learned", "weights": str(magnet_checkpoint)})
    for s in (read_casme2(tiny_casme2)[0], read_samm(synth_samm)[0]):
        pipeline.process_sample(s, cfg)
        side = face_box(detect_landmarks(pipeline.load_frame(s, s.apex)), cfg.crop_margin)[2]
        onset, apex, factor = seen[-1]
        assert onset.shape == apex.shape == (side, side, 3) and onset.dtype == np.uint8 and factor == 3.0
        colour = bool((onset[..., 0] != onset[..., 1]).any())
        assert colour == (s.reader == "casme2"), s.id


def test_learned_without_or_with_wrong_weights(tmp_path):
    with pytest.raises(DatasetError, match=r"no weights are given.*magnification.weights.*eulerian"):
        mag.check(MagnificationConfig(method="learned"))
    with pytest.raises(DatasetError, match="magnification weights not found"):
        mag.check(MagnificationConfig(method="learned", weights=str(tmp_path / "none.pth")))
    import torch
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(DatasetError, match=r"other.pth: not a checkpoint of the Oh et al.*the file lacks"):
        mag.check(MagnificationConfig(method="learned", weights=str(tmp_path / "other.pth")))


def test_prepare_with_learned_magnification(tiny_casme2, magnet_checkpoint, tmp_path):
    cfg = PreprocessConfig(flow="dis", magnification={"method": "learned", "weights": str(magnet_checkpoint)})
    data = prepare_dataset("casme2", tiny_casme2, cfg, tmp_path / "cache", progress=False)
    assert data.flow.shape == (4, 3, 224, 224) and np.isfinite(data.flow).all()


# -- PreparedDataset contract --------------------------------------------------------------------------
def test_prepared_dataset_contract(prepared_casme2, tmp_path):
    d = prepared_casme2
    n = len(d)
    assert n == 24 and d.reader == "casme2" and len(set(d.sample_ids)) == n
    assert d.flow.shape == (n, 3, 224, 224) and d.flow.dtype == np.float32
    assert d.flow.min() >= 0 and d.flow.max() <= 1
    assert np.allclose(d.flow.reshape(n, 3, -1).max(-1), 1.0)  # min-max per image and channel
    assert d.landmarks.shape == (n, 68, 2) and d.landmarks.dtype == np.float32
    assert (d.landmarks >= 0).all() and (d.landmarks < 224).all()
    assert sorted(set(d.subjects)) == ["sub01", "sub02", "sub03", "sub04"]
    assert all(sid.startswith(sub + "/") for sid, sub in zip(d.sample_ids, d.subjects, strict=False))
    aus = DEFAULT_AUS["casme2"]
    y = d.labels(aus)
    assert y.dtype == np.uint8 and y.shape == (n, 8)
    assert all(bool(y[i, j]) == (au in d.au_sets[i]) for i in range(n) for j, au in enumerate(aus))
    assert (y.sum(0) >= 2).all()  # every evaluated AU is present in the small test set
    assert set(d.mer) == {"positive", "negative", "surprise", None}
    s = d.summary()
    assert s["samples"] == n and s["subjects"] == 4 and s["skipped"] == []
    assert sum(s["emotion_counts"].values()) == n and s["au_counts"]["12"] == int(y[:, aus.index(12)].sum())
    back = PreparedDataset.load(d.save(tmp_path / "d.npz"))
    assert back.sample_ids == d.sample_ids and back.au_sets == d.au_sets and back.mer == d.mer
    assert np.array_equal(back.flow, d.flow) and np.array_equal(back.landmarks, d.landmarks)
    sub = d.subset([i for i, s in enumerate(d.subjects) if s == "sub02"])
    assert len(sub) == 6 and set(sub.subjects) == {"sub02"} and sub.key == d.key


# -- cache ---------------------------------------------------------------------------------------------
def _cfg(**kw):
    from support.data import TEST_PREPROCESS
    return PreprocessConfig.model_validate({**TEST_PREPROCESS, **kw})


def test_cache_hit_and_key(tiny_casme2, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = prepare_dataset("casme2", tiny_casme2, _cfg(), cache, progress=False)
    assert sorted(f.name for f in cache.iterdir()) == ["frame-digests.json", f"prepared-casme2-{first.key}.npz"]
    with monkeypatch.context() as m:  # a cache hit preprocesses nothing
        m.setattr(pipeline, "process_sample", lambda *a: pytest.fail("cache hit expected"))
        again = prepare_dataset("casme2", tiny_casme2, _cfg(), cache, progress=False)
        moved = tmp_path / "elsewhere" / "CASME2"  # `cp -r`: another folder, new modification times
        shutil.copytree(tiny_casme2, moved, copy_function=shutil.copy)
        assert prepare_dataset("casme2", moved, _cfg(), cache, progress=False).key == first.key
        frame = sorted(next((tiny_casme2 / "CASME2_RAW_selected" / "sub01").iterdir()).iterdir())[0]
        st = frame.stat()
        os.utime(frame, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))  # touched, same bytes
        try:
            assert prepare_dataset("casme2", tiny_casme2, _cfg(), cache, progress=False).key == first.key
        finally:
            os.utime(frame, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert again.key == first.key and np.array_equal(again.flow, first.flow)
    assert prepare_dataset("casme2", tiny_casme2, _cfg(flow="farneback"), cache, progress=False).key != first.key
    from preprocessing.annotations import read_casme2

    s = read_casme2(moved)[0]
    s.frames[s.onset].write_bytes(s.frames[s.apex].read_bytes())  # a frame the pipeline reads, changed
    assert pipeline.cache_key("casme2", read_casme2(moved), _cfg(), moved) != first.key


def test_interrupted_run_keeps_finished_samples_only(tiny_casme2, tmp_path, monkeypatch):
    """Ctrl-C on the third sample: no prepared dataset, the two finished samples kept as pieces; the next
    run prepares only the other two and gives what an uninterrupted run gives, then removes the pieces."""
    real, calls = pipeline.process_sample, []

    def dies_on_third(sample, cfg):
        calls.append(sample.id)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user presses Ctrl-C mid-run
        return real(sample, cfg)

    cache = tmp_path / "cache"
    monkeypatch.setattr(pipeline, "process_sample", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("casme2", tiny_casme2, _cfg(), cache, progress=False)
    assert not list(cache.glob("prepared-*")) and len(list((cache / pipeline.PIECES).glob("*.npz"))) == 2
    first_two = calls[:2]
    calls.clear()
    monkeypatch.setattr(pipeline, "process_sample", lambda s, c: calls.append(s.id) or real(s, c))
    stats = {}
    data = prepare_dataset("casme2", tiny_casme2, _cfg(), cache, progress=False, stats=stats)
    assert len(calls) == 2 and not set(calls) & set(first_two) and stats["reused"] == 2
    assert not (cache / pipeline.PIECES).exists()  # assembled: the pieces are gone
    whole = prepare_dataset("casme2", tiny_casme2, _cfg(), tmp_path / "other", progress=False)
    assert data.sample_ids == whole.sample_ids and np.array_equal(data.flow, whole.flow)
    assert np.array_equal(data.landmarks, whole.landmarks) and data.key == whole.key


def test_damaged_piece_is_prepared_again(tiny_casme2, tmp_path, monkeypatch):
    """A piece that does not read back whole (or is another sample's) is removed and prepared again."""
    from preprocessing.annotations import read_casme2

    cfg, cache = _cfg(), tmp_path / "cache"
    samples = read_casme2(tiny_casme2)
    keys = [pipeline.piece_key(s, cfg) for s in samples]
    piece = pipeline.prepare_piece(samples[0], cfg)
    pipeline._write_piece(pipeline.piece_path(cache, keys[0]), keys[0], piece)
    pipeline.piece_path(cache, keys[1]).write_bytes(b"torn")
    pipeline._write_piece(pipeline.piece_path(cache, keys[2]), "another-key", piece)  # a foreign file
    calls = []
    real = pipeline.process_sample
    monkeypatch.setattr(pipeline, "process_sample", lambda s, c: calls.append(s.id) or real(s, c))
    data = prepare_dataset("casme2", tiny_casme2, cfg, cache, progress=False)
    assert sorted(calls) == sorted(s.id for s in samples[1:])
    assert np.array_equal(data.flow[0], piece["flow"])


def test_save_is_atomic(prepared_casme2, tmp_path, monkeypatch):
    target = tmp_path / "d.npz"
    prepared_casme2.subset([0]).save(target)
    before = target.read_bytes()

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError):
        prepared_casme2.save(target)
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["d.npz"]


@pytest.mark.slow
def test_killed_run_goes_on_where_it_stopped(tmp_path, monkeypatch):
    """`preprocess` SIGKILLed once some samples are done (TV-L1: about a second each): no prepared dataset,
    no piece but whole ones; the next run prepares only the others and equals an uninterrupted run."""
    import signal
    import subprocess
    import sys
    import time

    from preprocessing.synth import generate

    root = generate(tmp_path / "casme2", layout="casme2", subjects=2, per_subject=3, seed=5)
    cache, cfg = tmp_path / "cache", PreprocessConfig(flow="tvl1")
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "preprocess", "--reader", "casme2",
                             "--root", str(root), "--cache-dir", str(cache), "--workers", "1", "--quiet"],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while len(list((cache / pipeline.PIECES).glob("*.npz"))) < 2 and time.time() < deadline:
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    kept = sorted(p.name for p in (cache / pipeline.PIECES).glob("*.npz"))
    assert 2 <= len(kept) < 6 and not list(cache.glob("prepared-*"))
    calls = []
    real = pipeline.process_sample
    monkeypatch.setattr(pipeline, "process_sample", lambda s, c: calls.append(s.id) or real(s, c))
    stats = {}
    data = prepare_dataset("casme2", root, cfg, cache, progress=False, stats=stats)
    assert len(calls) == 6 - len(kept) and stats["reused"] == len(kept)
    whole = prepare_dataset("casme2", root, cfg, tmp_path / "whole", progress=False)
    assert data.key == whole.key and np.array_equal(data.flow, whole.flow)
    assert np.array_equal(data.landmarks, whole.landmarks)
