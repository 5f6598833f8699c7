"""Table I of the paper, and the regions this tool adds for AUs 5, 9 and 10: which facial landmarks make
each AU's region (LSI, paper III-B). Torch-free, so a
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

# AUs that Table I does not give, placed where FACS puts the muscle that moves them (docs/model.md, "AUs
# beyond Table I"): a reading, needed for CAS(ME)^3's AU set. 0-based dlib indices as in Table I.
BEYOND_TABLE_I: dict[int, tuple[int, ...]] = {
    5: (37, 38, 43, 44),  # upper lid raiser (levator palpebrae superioris): the two upper eyelids
    9: (27, 28, 31, 35),  # nose wrinkler (levator labii sup. alaeque nasi): nose root and the two nostril wings
    10: (50, 51, 52),  # upper lip raiser (levator labii superioris): the upper lip's top edge
}
REGIONS: dict[int, tuple[int, ...]] = {**TABLE_I, **BEYOND_TABLE_I}


class LandmarkError(MicroAUError, ValueError):
    """Landmark groups or coordinates are unusable; the message names the AU / sample."""


def landmark_groups(aus: Sequence[int], overrides: Mapping[int, Sequence[int]] | None = None
                    ) -> list[list[int]]:
    table = {int(k): list(v) for k, v in (overrides or {}).items()}
    out = []
    for au in aus:
        g = table.get(au, REGIONS.get(au))
        if g is None:
            raise LandmarkError(f"model.landmark_groups: AU{au} has no landmark region (Table I covers "
                                f"{sorted(TABLE_I)}, this tool adds {sorted(BEYOND_TABLE_I)}); add "
                                f"`landmark_groups: {{{au}: [dlib indices]}}`")
        if not g or any(not 0 <= int(i) < 68 for i in g):
            raise LandmarkError(f"model.landmark_groups[{au}]: give 0-based dlib indices in 0..67, got {g}")
        out.append([int(i) for i in g])
    return out
