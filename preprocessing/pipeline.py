"""Dataset -> `PreparedDataset`, cached by content (paper III-A/B, IV-A).

Per sample: dlib landmarks on the apex frame -> square face box from them, the same for every frame ->
face crops at the frame's native resolution -> magnification of the onset..apex clip -> onset->apex
optical flow on the native grey crops -> flow image (u, v, strain) resized to size x size (u, v scaled
with it), landmarks mapped by the same crop offset and scale. A missing apex (non-numeric cell) is
estimated first (`estimate_apex`). The result is cached in `cache_dir` under a hash of the annotation
sheet's bytes, the corrections, the frame files (path relative to the root, size, mtime), the
preprocessing config, the predictor/weights files (name, size) and SCHEMA_VERSION.

Each sample is prepared into a piece of its own (`prepare_piece`: pure, one sample in, its flow image and
landmarks out), written atomically under `<cache_dir>/pieces/` by a key of that sample's content
(`piece_key`) as soon as it is done, so a run that is stopped (Ctrl-C, a crash, SIGKILL) keeps every
finished sample and the next run prepares only the rest. `prepare_dataset` maps `prepare_piece` over the
samples in this process, or through a `map_samples` function it is given (the orchestrator's runs them as
Ray tasks), then assembles the prepared dataset in sheet order, writes it atomically and removes the pieces.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from preprocessing import corrections as corr
from preprocessing import magnify as mag
from preprocessing.annotations import Sample, get_reader, read_image, sample_warnings, validate_samples
from preprocessing.atomic import atomic_file
from preprocessing.config import PreprocessConfig
from preprocessing.dataset import PreparedDataset
from preprocessing.errors import DatasetError, SampleProblem
from preprocessing.flow import flow_image, optical_flow
from preprocessing.landmarks import NoFaceError, crop, detect_landmarks, face_box, predictor_path, to_crop_grid

logger = logging.getLogger(__name__)

# Bump when the prepared output of the same input and config changes (crop, flow, normalisation, ...).
# 2: landmarks mapped with the pixel-centre convention. 3: frames decoded with Pillow, which fails on a
# file cut short where OpenCV filled it in: an older cache may hold such damaged samples under the same key.
# 4: flow on the native-resolution face crop, then resized; learned magnification on RGB with amp = factor;
# missing apex frames estimated.
SCHEMA_VERSION = 4

# Apex estimation (a sheet without the apex frame number): DIS flow (OpenCV's medium preset) from the
# onset's face crop, resized to this side, to each later frame's.
ESTIMATE_SIZE = 128


# path -> bytes of frame files shipped with a `prepare_piece` call (a worker on a machine that does not see the
# dataset's folder); `load_frame` reads them instead of the file, and names the file in its messages.
_SHIPPED: dict[str, bytes] = {}


def load_frame(sample: Sample, number: int) -> np.ndarray:
    """One frame as an RGB uint8 image (grey frames are repeated to 3 channels). A file that does not decode
    whole (a JPEG cut short included) is a SampleProblem, never filled in."""
    path = sample.frames[number]
    shipped = _SHIPPED.get(str(path))
    try:
        return read_image(io.BytesIO(shipped) if shipped is not None else path)
    except DatasetError:
        raise
    except Exception as e:  # noqa: BLE001 - UnidentifiedImageError, truncated data, ...
        raise SampleProblem(sample, f"frame file {path} cannot be read as an image ({type(e).__name__}: "
                                    f"{e}); restore it from the dataset archive") from None


def process_sample(sample: Sample, cfg: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """-> (flow image float32 (3, size, size), apex landmarks float32 (68, 2) in that grid).

    The face box is cut from every frame at its native resolution (side x side pixels of the frame);
    magnification and optical flow run on those crops, and the flow image (u, v, strain) is then resized
    to size x size, u and v scaled with it (`flow.flow_image`). The landmarks are mapped by the same
    crop offset and scale (`landmarks.to_crop_grid`)."""
    apex, lm, box = _apex_face(sample, cfg)
    numbers = sample.needed_frames(mag.needs_clip(cfg.magnification))
    clip = np.stack([crop(apex if n == sample.apex else load_frame(sample, n), box) for n in numbers])
    onset, apex_m = mag.magnify(clip, cfg.magnification)  # RGB crops in, grey float out
    return flow_image(optical_flow(onset, apex_m, cfg.flow), cfg.size), to_crop_grid(lm, box, cfg.size)


def _apex_face(sample: Sample, cfg: PreprocessConfig) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """-> (apex frame RGB, its dlib landmarks in frame pixels, the face box they define)."""
    apex = load_frame(sample, sample.apex)
    try:
        lm = detect_landmarks(apex, cfg.predictor, cfg.detector_upsample)
    except NoFaceError as e:
        raise SampleProblem(sample, f"{e} in the apex frame {sample.frames[sample.apex]}; check the frame "
                                    f"or raise preprocessing.detector_upsample") from None
    return apex, lm, face_box(lm, cfg.crop_margin)


def apex_face_crops(reader: str, root, sample_ids: Sequence[str], cfg: PreprocessConfig | None = None, *,
                    sheet=None, corrections: dict | None = None, corrections_where: str | None = None,
                    apex: dict[str, int] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The apex face crops of some prepared samples, for figures: {sample id: (RGB uint8 (size, size, 3),
    landmarks float32 (68, 2) in its pixels)}, the same box and grid as the sample's flow image (the crop
    is not magnified). Re-reads the sheet (corrections applied) and each apex frame, and runs dlib on it
    again; `apex`: {sample id: frame} for apexes that were estimated (PreparedDataset.apex_estimated).
    A sample id the sheet does not have is a DatasetError; a frame that cannot be read a SampleProblem."""
    cfg = cfg or PreprocessConfig()
    samples = get_reader(reader)(root, sheet=sheet)
    where = corrections_where or f"datasets.{reader}.corrections"
    samples, _, _ = corr.with_errata(reader, samples, corrections, where)
    by_id = {s.id: s for s in samples}
    out = {}
    for sid in sample_ids:
        if sid not in by_id:
            raise DatasetError(f"{root}: sample {sid} is not in the {reader} coding sheet (any more)")
        s = by_id[sid]
        if apex and sid in apex:
            s = dataclasses.replace(s, apex=int(apex[sid]))
        if s.apex not in s.frames:
            raise SampleProblem(s, f"apex frame {s.apex} is not in {s.frames_dir}")
        frame, lm, box = _apex_face(s, cfg)
        out[sid] = (crop(frame, box, cfg.size), to_crop_grid(lm, box, cfg.size))
    return out


def estimate_apex(sample: Sample, cfg: PreprocessConfig) -> int:
    """The apex frame of a sample whose sheet gives none: of the frames after the onset within
    onset..offset (up to the folder's last frame), the one whose optical flow from the onset has the
    largest mean magnitude over the face crop. Landmarks (so the face box) come from the onset frame;
    the flow is DIS (medium preset) on grey crops resized to ESTIMATE_SIZE pixels, which is cheap."""
    onset = load_frame(sample, sample.onset)
    try:
        lm = detect_landmarks(onset, cfg.predictor, cfg.detector_upsample)
    except NoFaceError as e:
        raise SampleProblem(sample, f"{e} in the onset frame {sample.frames[sample.onset]}, which places the "
                                    f"face for estimating the missing apex (apex cell "
                                    f"{sample.raw_frames[1]!r}); check the frame, raise "
                                    f"preprocessing.detector_upsample, or give the apex as a correction"
                                    ) from None
    box = face_box(lm, cfg.crop_margin)

    def grey(img):
        return cv2.cvtColor(crop(img, box, ESTIMATE_SIZE), cv2.COLOR_RGB2GRAY)

    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    ref = grey(onset)
    best, best_motion = sample.onset, -1.0
    for n in sample.needed_frames(clip=False)[1:]:
        flow = dis.calc(ref, grey(load_frame(sample, n)), None)
        motion = float(np.hypot(flow[..., 0], flow[..., 1]).mean())
        if motion > best_motion:
            best, best_motion = n, motion
    return best


# ---------------------------------------------------------------------------------------------------
# One sample -> one piece
# ---------------------------------------------------------------------------------------------------
def prepare_piece(sample: Sample, cfg: PreprocessConfig, frames: dict[str, bytes] | None = None,
                  threads: int | None = None) -> dict[str, Any]:
    """Prepare one sample: its apex estimated first when the sheet gives none, then `process_sample`.

    -> {"flow": float32 (3, size, size), "landmarks": float32 (68, 2), "apex": the apex frame used,
    "estimated": whether it was estimated}, or {"problem": reason} for an unusable sample (a
    `SampleProblem`; anything else raises). Pure: it reads the sample's frames and writes nothing, so
    it runs the same in this process or as a task elsewhere. `frames`: the bytes of the frame files by
    path (`frame_bytes`), read instead of the files (a worker that does not see the dataset's folder);
    `threads`: OpenCV's (and torch's, for learned magnification) threads in this process, where a
    worker runs one sample per CPU. The output does not depend on either."""
    if threads:
        cv2.setNumThreads(int(threads))
        if cfg.magnification.method == "learned":
            import torch
            torch.set_num_threads(int(threads))
    _SHIPPED.update(frames or {})
    try:
        estimated = sample.estimates_apex
        if estimated:
            sample = dataclasses.replace(sample, apex=estimate_apex(sample, cfg))
        flow, lm = process_sample(sample, cfg)
    except SampleProblem as p:
        return {"problem": p.reason}
    finally:
        for k in frames or {}:
            _SHIPPED.pop(k, None)
    return {"flow": flow, "landmarks": lm, "apex": int(sample.apex), "estimated": bool(estimated)}


def frame_bytes(sample: Sample, cfg: PreprocessConfig) -> dict[str, bytes]:
    """The bytes of every frame file `prepare_piece` reads for `sample`, by path (to ship with a task)."""
    return {str(sample.frames[n]): sample.frames[n].read_bytes()
            for n in _frames_read(sample, mag.needs_clip(cfg.magnification))}


# ---------------------------------------------------------------------------------------------------
# Cache key
# ---------------------------------------------------------------------------------------------------
def _relative(path: Path, root: Path) -> str:
    """The path relative to the dataset root where it lies under it (a moved dataset keeps its names)."""
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path.resolve())


class FrameDigests:
    """sha256 of frame files, remembered in `<cache_dir>/frame-digests.json` by (path, size, mtime): a
    file is read once, and again only when it changes. The key hashes what the frames hold, so a
    copied or moved dataset (new paths, new mtimes) gets the same key once its frames are read."""

    FILE = "frame-digests.json"

    def __init__(self, cache_dir=None):
        self.path = Path(cache_dir).expanduser() / self.FILE if cache_dir is not None else None
        self.known: dict[str, list] = {}
        self.changed = False
        if self.path is not None and self.path.is_file():
            try:
                known = json.loads(self.path.read_text())
                self.known = known if isinstance(known, dict) else {}
            except (OSError, ValueError):
                self.known = {}  # a damaged memo only costs reading the frames again

    def digest(self, path: Path) -> str:
        st = path.stat()
        name = str(path.resolve())
        hit = self.known.get(name)
        if isinstance(hit, list) and hit[:2] == [st.st_size, st.st_mtime_ns]:
            return hit[2]
        d = hashlib.sha256(path.read_bytes()).hexdigest()
        self.known[name] = [st.st_size, st.st_mtime_ns, d]
        self.changed = True
        return d

    def save(self) -> None:
        if self.path is not None and self.changed:
            try:
                with atomic_file(self.path, "w") as f:
                    json.dump(self.known, f)
            except OSError:
                pass  # the memo is an optimisation


def _frames_read(s: Sample, clip: bool) -> list[int]:
    """The frames of `s` the pipeline reads, those present (validation reports the others)."""
    try:
        needed = s.needed_frames(clip)
    except TypeError:  # a frame cell that is not a number: validation reports the sample
        return []
    return [n for n in needed if n in s.frames]


def _model_stamp(path: Path) -> list:
    """(file name, size) of a model file: the same predictor or weights installed elsewhere, or unpacked
    at another time, is the same input."""
    return [path.name, path.stat().st_size]


def cache_key(reader: str, samples: Sequence[Sample], cfg: PreprocessConfig, root,
              corrections: dict | None = None, digests: FrameDigests | None = None,
              errata: dict | None = None) -> str:
    """sha256 over: SCHEMA_VERSION, reader, the preprocessing config, the corrections (normalised), the
    built-in errata that fired (`corrections.with_errata`; only when any did), the
    sheet's bytes, per coded sample the frame numbers its folder holds and the content (sha256) of every
    frame the pipeline reads, and the predictor / magnification weights files (file name and size: not
    where an installation keeps them). No path or modification time: a copied dataset keeps its key."""
    root = Path(root).expanduser().resolve()
    digests = digests or FrameDigests()
    clip = mag.needs_clip(cfg.magnification)
    h = hashlib.sha256()
    head = {"schema": SCHEMA_VERSION, "reader": reader, "config": _config_for_key(cfg)}
    if corrections:
        head["corrections"] = corr.normalise(corrections, "corrections")
    if errata:
        head["errata"] = errata
    h.update(json.dumps(head, sort_keys=True).encode())
    for sheet in sorted({s.sheet for s in samples}):
        h.update(hashlib.sha256(Path(sheet).read_bytes()).digest())
    for s in samples:
        read = [[n, _relative(s.frames[n], root), digests.digest(s.frames[n])] for n in _frames_read(s, clip)]
        h.update(json.dumps([s.id, s.row, sorted(s.frames), read]).encode())
    h.update(json.dumps(_model_stamps(cfg)).encode())
    return h.hexdigest()[:20]


def _model_stamps(cfg: PreprocessConfig) -> list:
    extra = [_model_stamp(predictor_path(cfg.predictor))]
    if cfg.magnification.method == "learned" and cfg.magnification.weights:
        extra.append(_model_stamp(Path(cfg.magnification.weights).expanduser()))
    return extra


def piece_key(sample: Sample, cfg: PreprocessConfig, digests: FrameDigests | None = None,
              models: list | None = None) -> str:
    """sha256 over what one sample's piece is computed from: SCHEMA_VERSION, the preprocessing config and
    model files (as in `cache_key`), the sample's onset/apex/offset and the content of every frame the
    pipeline reads. Not its AUs, emotion, id or paths: a piece is reused wherever the same frames are
    prepared the same way. `models`: `_model_stamps(cfg)`, when already known."""
    digests = digests or FrameDigests()
    read = [[n, digests.digest(sample.frames[n])]
            for n in _frames_read(sample, mag.needs_clip(cfg.magnification))]
    head = {"schema": SCHEMA_VERSION, "config": _config_for_key(cfg),
            "models": models if models is not None else _model_stamps(cfg),
            "frames": [sample.onset, sample.apex, sample.offset, sample.estimates_apex], "read": read}
    return hashlib.sha256(json.dumps(head, sort_keys=True).encode()).hexdigest()[:24]


def _config_for_key(cfg: PreprocessConfig) -> dict:
    """The config without the locations of the model files (the key stamps the files themselves)."""
    d = cfg.model_dump(mode="json")
    d["predictor"] = None
    d["magnification"]["weights"] = None
    return d


def cache_path(cache_dir, reader: str, key: str) -> Path:
    return Path(cache_dir).expanduser() / f"prepared-{reader}-{key}.npz"


PIECES = "pieces"  # <cache_dir>/pieces/<piece key>.npz: one prepared sample each, until assembled
_STALE_TMP_S = 3600  # a temp file of a piece this old was left by a killed run: removed at assembly

# map_samples(fn, jobs) -> (index, fn(**jobs[index])) for every job, in any order: how `prepare_dataset` runs
# `prepare_piece` over the samples to prepare (default `serial_map`, in this process). A mapper that runs
# jobs in other processes adds `frames=frame_bytes(sample, cfg)` and `threads=` (see `prepare_piece`).
# Closing the iterator (a stop on the first problem, Ctrl-C) must cancel what is still running.
MapSamples = Callable[[Callable[..., dict[str, Any]], list[dict[str, Any]]], Iterable[tuple[int, dict[str, Any]]]]


def serial_map(fn, jobs: list[dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
    """The samples one after another in this process (OpenCV's own threads use every core)."""
    for i, job in enumerate(jobs):
        yield i, fn(**job)


def piece_path(cache_dir, key: str) -> Path:
    return Path(cache_dir).expanduser() / PIECES / f"{key}.npz"


def _write_piece(path: Path, key: str, piece: dict[str, Any]) -> None:
    """Atomically (temp file, then rename): a run killed while writing leaves no file under this name."""
    meta = {"key": key, "apex": piece["apex"], "estimated": piece["estimated"], "schema": SCHEMA_VERSION}
    with atomic_file(path) as f:
        np.savez(f, flow=np.asarray(piece["flow"], np.float32), landmarks=np.asarray(piece["landmarks"], np.float32),
                 meta=np.array(json.dumps(meta)))


def _read_piece(path: Path, key: str, size: int) -> dict[str, Any] | None:
    """The finished piece at `path`, or None when there is none; one that does not read back whole, or
    is not the piece of `key` at this size, is removed (and the sample prepared again)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            flow, lm = z["flow"], z["landmarks"]
        ok = (meta.get("key") == key and flow.shape == (3, size, size) and flow.dtype == np.float32
              and lm.shape == (68, 2) and lm.dtype == np.float32)
    except Exception:  # noqa: BLE001 - torn, foreign, not an npz: computed again
        ok = False
    if not ok:
        path.unlink(missing_ok=True)
        return None
    return {"flow": flow, "landmarks": lm, "apex": int(meta["apex"]), "estimated": bool(meta["estimated"])}


def _remove_pieces(paths: Iterable[Path]) -> None:
    """After the dataset is written: its pieces, stale temp files of killed runs, the folder if empty."""
    folder = None
    for path in paths:
        folder = path.parent
        path.unlink(missing_ok=True)
    if folder is None or not folder.is_dir():
        return
    now = time.time()
    for tmp in folder.glob(".*.tmp"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TMP_S:
                tmp.unlink()
        except OSError:
            pass
    try:
        folder.rmdir()
    except OSError:
        pass  # pieces of another dataset or run


def _problems_error(problems: Sequence[SampleProblem], total: int, kept: int = 0) -> DatasetError:
    lines = [str(p) for p in problems[:50]]
    more = f"\n... and {len(problems) - 50} more" if len(problems) > 50 else ""
    cached = (f"The dataset was not cached; the {kept} sample(s) prepared so far are kept and not prepared "
              f"again." if kept else "Nothing was cached.")
    return DatasetError(f"{len(problems)} of {total} samples cannot be used:\n" + "\n".join(lines) + more +
                        f"\nFix them, or skip bad samples (--skip-bad / on_error: skip). {cached}")


# ---------------------------------------------------------------------------------------------------
def prepare_dataset(reader: str, root, cfg: PreprocessConfig | None = None, cache_dir=".microau/cache",
                    *, sheet=None, on_error: Literal["stop", "skip"] = "stop", progress: bool = True,
                    corrections: dict | None = None, corrections_where: str | None = None,
                    map_samples: MapSamples | None = None, stats: dict[str, Any] | None = None
                    ) -> PreparedDataset:
    """Read, validate and preprocess a dataset, or load it from the cache when nothing changed.

    on_error="stop": any bad sample raises a DatasetError listing every problem (file, row, sample), and
    the dataset is not cached. on_error="skip": bad samples are left out and listed in `skipped`.
    corrections: {sample id: {onset?, apex?, offset?, aus?}} applied to the sheet's rows before
    validation (`preprocessing.corrections`), over the reader's built-in errata that fire
    (`corrections.with_errata`), part of the key, listed in `corrected`; corrections_where
    names where they come from in messages (default `datasets.<reader>.corrections`).
    A missing apex is estimated (listed in `apex_estimated`); an offset past the sample's last frame is
    a warning (listed in `warnings`).
    map_samples: runs `prepare_piece` over the samples to prepare (MapSamples; default in this process).
    Each finished sample is kept as a piece at once, so a stopped run loses no finished sample.
    stats: a dict filled with what was done: samples, prepared (this run), reused (pieces of an earlier
    run), cache_hit, seconds.
    """
    if on_error not in ("stop", "skip"):
        raise DatasetError(f"on_error must be 'stop' or 'skip', not {on_error!r}")
    t_start = time.perf_counter()
    cfg = cfg or PreprocessConfig()
    stats = {} if stats is None else stats
    samples, corrected, key, path, digests = _locate(reader, root, cfg, cache_dir, sheet, corrections,
                                                     corrections_where)
    cached = _cached(path, samples, on_error) if path.is_file() else None
    if cached is not None:
        stats.update(samples=len(cached.sample_ids), prepared=0, reused=0, cache_hit=True,
                     seconds=time.perf_counter() - t_start)
        return cached

    good, problems = validate_samples(samples, clip=mag.needs_clip(cfg.magnification),
                                      corrections_where=corrections_where)
    if problems and on_error == "stop":
        raise _problems_error(problems, len(samples))
    warnings = sample_warnings(good, corrections_where, clip=mag.needs_clip(cfg.magnification))

    models = _model_stamps(cfg)
    keys = [piece_key(s, cfg, digests, models) for s in good]
    paths = [piece_path(cache_dir, k) for k in keys]
    pieces: dict[int, dict[str, Any]] = {}
    for i, (k, pp) in enumerate(zip(keys, paths, strict=True)):
        found = _read_piece(pp, k, cfg.size)
        if found is not None:
            pieces[i] = found
    reused = len(pieces)
    todo = [i for i in range(len(good)) if i not in pieces]
    failed: dict[int, SampleProblem] = {}
    bar = _progress(progress)
    with bar:
        task = bar.add_task(f"preprocess {reader}", total=len(good), completed=reused)
        results = (map_samples or serial_map)(prepare_piece, [{"sample": good[i], "cfg": cfg} for i in todo])
        try:
            for j, piece in results:
                i = todo[j]
                if "problem" in piece:
                    failed[i] = SampleProblem(good[i], piece["problem"])
                    if on_error == "stop":
                        raise _problems_error(problems + [failed[i]], len(samples), len(pieces))
                else:
                    _write_piece(paths[i], keys[i], piece)
                    pieces[i] = piece
                bar.advance(task)
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()  # a stop or Ctrl-C: what still runs elsewhere is cancelled
    problems = problems + [failed[i] for i in sorted(failed)]
    done = [i for i in range(len(good)) if i in pieces]
    if not done:
        raise _problems_error(problems, len(samples)) if problems else DatasetError(
            f"{root}: no samples to prepare")
    estimated = [{"sample": good[i].id, "apex": pieces[i]["apex"], "sheet": good[i].raw_frames[1]}
                 for i in done if pieces[i]["estimated"]]
    kept = {good[i].id for i in done}
    data = PreparedDataset(
        reader=reader, key=key, sample_ids=[good[i].id for i in done], subjects=[good[i].subject for i in done],
        flow=np.stack([pieces[i]["flow"] for i in done]).astype(np.float32),
        landmarks=np.stack([pieces[i]["landmarks"] for i in done]).astype(np.float32),
        au_sets=[list(good[i].aus) for i in done], emotions=[good[i].emotion for i in done],
        mer=[good[i].mer for i in done],
        skipped=[{"sample": p.sample.id, "reason": str(p)} for p in problems],
        apex_estimated=estimated,
        warnings=[{"sample": w.sample.id, "warning": str(w)} for w in warnings if w.sample.id in kept],
        corrected=corrected)
    data.save(path)
    digests.save()
    _remove_pieces(paths)
    stats.update(samples=len(done), prepared=len(todo), reused=reused, cache_hit=False,
                 seconds=time.perf_counter() - t_start)
    return data


def find_prepared(reader: str, root, cfg: PreprocessConfig | None = None, cache_dir=".microau/cache",
                  *, sheet=None, on_error: Literal["stop", "skip"] = "stop",
                  corrections: dict | None = None, corrections_where: str | None = None
                  ) -> PreparedDataset | None:
    """The cached `PreparedDataset` of this dataset, corrections and config, or None when it has not been
    prepared; never preprocesses (reads the sheet and stats the frames to compute the key)."""
    cfg = cfg or PreprocessConfig()
    samples, _, _, path, _ = _locate(reader, root, cfg, cache_dir, sheet, corrections, corrections_where)
    return _cached(path, samples, on_error) if path.is_file() else None


def prepared_key(reader: str, root, cfg: PreprocessConfig | None = None, cache_dir=".microau/cache",
                 *, sheet=None, corrections: dict | None = None, corrections_where: str | None = None) -> str:
    """The prepared-data key this dataset and config have now (reads the sheet, hashes the frames the
    pipeline reads; never preprocesses)."""
    return _locate(reader, root, cfg or PreprocessConfig(), cache_dir, sheet, corrections, corrections_where)[2]


def _locate(reader: str, root, cfg: PreprocessConfig, cache_dir, sheet, corrections=None,
            corrections_where=None):
    """-> (samples of the sheet with the built-in errata and the corrections applied, what they changed,
    prepared-data key,
    cache file, the frame digests read)."""
    samples = get_reader(reader)(root, sheet=sheet)
    where = corrections_where or f"datasets.{reader}.corrections"
    samples, corrected, errata = corr.with_errata(reader, samples, corrections, where)
    mag.check(cfg.magnification)  # missing or unusable weights fail here, before the key stamps the file
    digests = FrameDigests(cache_dir)
    key = cache_key(reader, samples, cfg, root, corrections, digests, errata)
    path = cache_path(cache_dir, reader, key)
    if path.is_file():
        digests.save()  # remembered only beside a prepared dataset: a failed run leaves the cache as it was
    return samples, corrected, key, path, digests


def _cached(path: Path, samples: Sequence[Sample], on_error: str) -> PreparedDataset | None:
    """The cached dataset at `path`; None (file removed, with a warning) when it cannot be read: it is
    prepared again."""
    try:
        data = PreparedDataset.load(path)
    except DatasetError as e:
        logger.warning("warning: %s; deleting it, the dataset is prepared again", str(e).split("; delete")[0])
        path.unlink(missing_ok=True)
        return None
    if on_error == "stop" and data.skipped:
        raise DatasetError(f"{len(data.skipped)} of {len(samples)} samples cannot be used (cached "
                           f"result of an earlier run that skipped them, {path}):\n" +
                           "\n".join(d["reason"] for d in data.skipped) +
                           "\nFix them, or skip bad samples (--skip-bad / on_error: skip).")
    return data


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled, transient=False)
