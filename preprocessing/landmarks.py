"""dlib 68-point landmarks (paper IV-A) and the face crop they define (paper III-B, Eq. 1 grid)."""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import cv2
import numpy as np

from preprocessing.errors import DatasetError

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"


class NoFaceError(Exception):
    """dlib found no face in an image."""


def default_predictor_path() -> Path:
    """The 68-point model shipped in face-recognition-models, found without importing that package
    (its __init__ needs pkg_resources, which setuptools >= 82 no longer has)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("the dlib 68-point predictor is not installed: `pip install "
                           "face-recognition-models`, or set preprocessing.predictor to a "
                           f"{PREDICTOR_FILE} file")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / PREDICTOR_FILE


def predictor_path(configured: str | None) -> Path:
    path = Path(configured).expanduser() if configured else default_predictor_path()
    if not path.is_file():
        raise DatasetError(f"{path}: dlib landmark predictor not found; set preprocessing.predictor to "
                           f"a {PREDICTOR_FILE} file (ships in face-recognition-models)")
    return path


@functools.lru_cache(maxsize=4)
def _models(path: str):
    import dlib
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(path)


def detect_landmarks(image: np.ndarray, predictor: str | None = None, upsample: int = 1) -> np.ndarray:
    """68 (x, y) landmarks, float32 (68, 2), of the best-scoring frontal face in an RGB or grey uint8
    image. Raises NoFaceError when there is none."""
    detector, shape_predictor = _models(str(predictor_path(predictor)))
    img = np.ascontiguousarray(image)
    rects, scores, _ = detector.run(img, upsample, 0)
    if not rects:
        raise NoFaceError(f"no face found (dlib frontal detector, upsample {upsample})")
    best = rects[int(np.argmax(scores))]
    shape = shape_predictor(img, best)
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)


def face_box(landmarks: np.ndarray, margin: float) -> tuple[int, int, int]:
    """Square box (x0, y0, side) around the landmarks, grown by `margin` of the side on each side."""
    lo, hi = landmarks.min(0), landmarks.max(0)
    side = float(max(hi - lo)) * (1 + 2 * margin)
    cx, cy = (lo + hi) / 2
    side_i = max(int(round(side)), 8)
    return int(round(cx - side_i / 2)), int(round(cy - side_i / 2)), side_i


def crop(image: np.ndarray, box: tuple[int, int, int], size: int | None = None) -> np.ndarray:
    """The box of an image, at its native resolution (side x side pixels of the frame, size=None) or
    resized to size x size; parts outside the image repeat its border."""
    x0, y0, side = box
    h, w = image.shape[:2]
    pad = max(0, -x0, -y0, x0 + side - w, y0 + side - h)
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    patch = image[y0 + pad:y0 + pad + side, x0 + pad:x0 + pad + side]
    if size is None or size == side:
        return np.ascontiguousarray(patch)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(patch, (size, size), interpolation=interp)


def to_crop_grid(landmarks: np.ndarray, box: tuple[int, int, int], size: int) -> np.ndarray:
    """Landmarks in image pixels -> pixels of the size x size flow image (its grid, Eq. 1): the crop's
    offset, then the scale size / side of resizing the native crop (or the flow image computed on it),
    with pixel centres at integer coordinates in both (as cv2.resize maps them)."""
    x0, y0, side = box
    return ((landmarks - np.array([x0, y0], np.float32) + 0.5) * (size / side) - 0.5).astype(np.float32)
