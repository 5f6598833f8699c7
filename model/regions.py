"""Table I of the paper: which facial landmarks make each AU's region (LSI, paper III-B). Torch-free, so a
sweep file's AUs are checked when it is read without loading torch (model.config.check_aus)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from preprocessing.errors import MicroAUError

# Table I: AU -> 0-based dlib 68-point indices (docs/protocol.md: 48 and 54 are the mouth corners).
TABLE_I: dict[int, tuple[int, ...]] = {
    1: (19, 20, 21, 22, 23, 24),
    2: (19, 20, 21, 22, 23, 24),
    4: (19, 20, 21, 22, 23, 24),
    7: (38, 41, 44, 47),
    12: (48, 54),
    14: (55, 59, 60, 64),
    15: (48, 54),
    17: (7, 8, 9, 57),
}


class LandmarkError(MicroAUError, ValueError):
    """Landmark groups or coordinates are unusable; the message names the AU / sample."""


def landmark_groups(aus: Sequence[int], overrides: Mapping[int, Sequence[int]] | None = None
                    ) -> list[list[int]]:
    table = {int(k): list(v) for k, v in (overrides or {}).items()}
    out = []
    for au in aus:
        g = table.get(au, TABLE_I.get(au))
        if g is None:
            raise LandmarkError(f"model.landmark_groups: AU{au} is not in Table I (which covers "
                                f"{sorted(TABLE_I)}); add `landmark_groups: {{{au}: [dlib indices]}}`")
        if not g or any(not 0 <= int(i) < 68 for i in g):
            raise LandmarkError(f"model.landmark_groups[{au}]: give 0-based dlib indices in 0..67, got {g}")
        out.append([int(i) for i in g])
    return out
