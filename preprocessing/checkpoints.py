"""What does not fit when a checkpoint is loaded into a network (the magnification network here, the
CLIP backbone in model/): one description, so every loader names the first tensor at fault."""
from __future__ import annotations

from collections.abc import Mapping, Sequence


def few(names: Sequence[str]) -> str:
    """`tensor a` or `3 tensors (a, b, c)` / `9 tensors (a, b, c, ...)`."""
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"tensor {names[0]}" if len(names) == 1 else f"{len(names)} tensors ({shown})"


def mismatch(want: Mapping, have: Mapping, net: str) -> str | None:
    """None when `have` (a state dict read from a file) has exactly the tensors of `want` (the network's
    own state dict) with their shapes; else what differs, the first mismatching tensor with both shapes."""
    wrong = [k for k in want if k in have and tuple(want[k].shape) != tuple(have[k].shape)]
    missing = [k for k in want if k not in have]
    extra = [k for k in have if k not in want]
    why = []
    if wrong:
        k, n = wrong[0], len(wrong) - 1
        more = f" ({n} more tensor{'s differ' if n > 1 else ' differs'} in shape)" if n else ""
        why.append(f"tensor {k} is {tuple(want[k].shape)} in {net} but {tuple(have[k].shape)} in the file{more}")
    if missing:
        why.append(f"the file lacks {few(missing)} of {net}")
    if extra:
        why.append(f"the file has {few(extra)} that {net} has not")
    return "; ".join(why) or None
