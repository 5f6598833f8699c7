"""Clips that are not rows of a prepared dataset, preprocessed as a dataset's samples are (`predict`).

A clip is described as the `Sample` a reader would make of it, so it goes through the same checks
(`validate_samples`), the same apex estimation and the same `pipeline.process_sample` (landmarks on the
apex frame, face crop, magnification, optical flow) as every sample of a prepared dataset:

- `files_sample(onset, apex)`: two image files;
- `folder_sample(folder, onset, apex)`: frame numbers in a folder of frames named as the datasets name
  them (`img46.jpg`, `reg_img46.jpg`, `006_05566.jpg`: `annotations.find_frames`);
- `sheet_samples(reader, root, sheet)`: every row of a coding sheet in a dataset's layout (the AU cell
  may be empty: nothing is trained on it).

`preprocess_clips(samples, cfg)` -> `Clips` (flow images, landmarks, and the problems of the clips it
could not use). Nothing is cached.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from preprocessing import magnify as mag
from preprocessing.annotations import Sample, find_frames, get_reader, validate_samples
from preprocessing.config import PreprocessConfig
from preprocessing.errors import DatasetError, SampleProblem


class ClipError(DatasetError):
    """A clip given on the command line or to `predict` cannot be preprocessed; the message names the
    file or folder and says what to do."""


def _sample(reader: str, subject: str, name: str, folder: Path, frames, onset: int, apex: int) -> Sample:
    return Sample(reader=reader, subject=subject, filename=name, onset=onset, apex=apex, offset=apex, aus=[],
                  au_text="", emotion="", sheet=Path(""), row=0, frames_dir=folder, frames=dict(frames),
                  raw_frames=(str(onset), str(apex), str(apex)))


def files_sample(onset, apex, reader: str = "casme2", name: str | None = None) -> Sample:
    """Two image files, onset and apex, as a sample (frames 0 and 1) named `name` (default: the apex
    file's). With Eulerian magnification a dataset's samples are magnified over every frame onset..apex;
    two files give it only these two."""
    paths = [Path(onset).expanduser(), Path(apex).expanduser()]
    for what, p in zip(("onset", "apex"), paths, strict=True):
        if not p.is_file():
            raise ClipError(f"{what} frame file {p} does not exist" if not p.exists() else
                            f"{what} frame {p} is not a file; give an image file")
    return _sample(reader, paths[1].parent.name, name or paths[1].stem, paths[1].parent,
                   {0: paths[0], 1: paths[1]}, 0, 1)


def folder_sample(folder, onset: int, apex: int, reader: str = "casme2") -> Sample:
    """Frames `onset`..`apex` of a folder of numbered frames as a sample."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ClipError(f"{folder}: no such folder of frames; give the folder that holds the clip's frames")
    if onset > apex:
        raise ClipError(f"{folder}: onset frame {onset} is after the apex frame {apex}; give --onset <= --apex")
    frames = find_frames(folder)
    if not frames:
        raise ClipError(f"{folder}: no numbered image frames (.jpg .jpeg .png .bmp .tif .tiff files named like "
                        f"img46.jpg, reg_img46.jpg or 006_05566.jpg)")
    return _sample(reader, folder.parent.name, folder.name, folder, frames, int(onset), int(apex))


def sheet_samples(reader: str, root, sheet=None) -> list[Sample]:
    """Every row of a coding sheet in `reader`'s layout. A row whose AU cell is empty or does not parse is
    kept (its AUs are not needed to predict; `au_text` keeps the cell as written)."""
    return [dataclasses.replace(s, aus=[], au_problem=None, au_alternatives=None) if s.aus is None else s
            for s in get_reader(reader)(root, sheet=sheet)]


def describe(problem: SampleProblem) -> str:
    """A problem as one line: with the sheet and row for a sheet's sample, the reason alone for a clip."""
    return str(problem) if problem.sample.row else problem.reason


@dataclass
class Clips:
    """Preprocessed clips: the usable ones in order, and the problem of each one left out."""
    samples: list[Sample]  # apex estimated where the sheet gave none
    flow: np.ndarray  # float32 (S, 3, size, size)
    landmarks: np.ndarray  # float32 (S, 68, 2)
    problems: list[SampleProblem] = field(default_factory=list)
    apex_estimated: list[str] = field(default_factory=list)  # sample ids


def preprocess_clips(samples: Sequence[Sample], cfg: PreprocessConfig,
                     on_error: Literal["stop", "skip"] = "stop",
                     progress: Callable[[Sample], None] | None = None) -> Clips:
    """`validate_samples`, apex estimation, then `pipeline.process_sample` per clip. on_error="stop": the
    first problems raise a ClipError listing each (every clip is checked before any work); "skip": they
    are left out and listed in `problems`. `progress(sample)` after each clip."""
    from preprocessing.pipeline import estimate_apex, process_sample

    mag.check(cfg.magnification)  # missing or unusable weights fail here, before any work
    good, problems = validate_samples(samples, clip=mag.needs_clip(cfg.magnification),
                                      corrections_where="the sheet")
    if problems and on_error == "stop":
        raise _error(problems, len(samples))
    done, flows, lms, estimated = [], [], [], []
    for s in good:
        try:
            if s.estimates_apex:
                s = dataclasses.replace(s, apex=estimate_apex(s, cfg))
                estimated.append(s.id)
            f, lm = process_sample(s, cfg)
        except SampleProblem as p:
            problems.append(p)
            if on_error == "stop":
                raise _error(problems, len(samples)) from None
        else:
            done.append(s)
            flows.append(f)
            lms.append(lm)
        if progress is not None:
            progress(s)
    if not done and problems:
        raise _error(problems, len(samples))
    size = cfg.size
    return Clips(samples=done, flow=np.stack(flows).astype(np.float32) if flows else np.zeros((0, 3, size, size),
                                                                                              np.float32),
                 landmarks=np.stack(lms).astype(np.float32) if lms else np.zeros((0, 68, 2), np.float32),
                 problems=problems, apex_estimated=estimated)


def _error(problems: Sequence[SampleProblem], total: int) -> ClipError:
    if total == 1 and len(problems) == 1:
        return ClipError(describe(problems[0]))
    lines = [describe(p) for p in problems[:50]]
    more = f"\n... and {len(problems) - 50} more" if len(problems) > 50 else ""
    return ClipError(f"{len(problems)} of {total} clips cannot be used:\n" + "\n".join(lines) + more +
                     "\nFix them, or leave them out with --skip-bad. Nothing was predicted.")
