"""Text side of Micro-AU CLIP: per-AU prompts (paper III-A, Fig. 2), the emotion texts of zero-shot MER
(III-E, Eq. 13) and the global AU description of the global OrigCL baseline (Table VIII).

Every default can be overridden from the sweep file (`model.prompts`, `model.emotion_texts`).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

# AU -> (positive text, negative text). AU4 is the paper's Fig. 2 example; the others follow it:
# the FACS name of the movement, "is/are <verb>ing" / "is/are not <verb>ing".
AU_PROMPTS: Dict[int, Tuple[str, str]] = {
    1: ("The inner eyebrows are raising", "The inner eyebrows are not raising"),
    2: ("The outer eyebrows are raising", "The outer eyebrows are not raising"),
    4: ("The eyebrows are lowering", "The eyebrows are not lowering"),
    7: ("The lower eyelids are tightening", "The lower eyelids are not tightening"),
    12: ("The lip corners are pulling up", "The lip corners are not pulling up"),
    14: ("The lip corners are dimpling inward", "The lip corners are not dimpling inward"),
    15: ("The lip corners are pulling down", "The lip corners are not pulling down"),
    17: ("The chin is raising", "The chin is not raising"),
}

# MER classes (DESIGN.md) and the AU-emotion correspondence of paper III-E, filtered to the AUs the
# paper detects: happiness AU6+12 -> 12; surprise AU1+2(+5+26) -> 1, 2; the negative emotions (anger
# AU4+7, disgust/contempt AU14, sadness AU1+4+15+17, repression AU15/17) -> 4, 7, 14, 15, 17.
MER_CLASSES: Tuple[str, ...] = ("positive", "negative", "surprise")
EMOTION_AUS: Dict[str, Tuple[int, ...]] = {
    "positive": (12,),
    "negative": (4, 7, 14, 15, 17),
    "surprise": (1, 2),
}
NO_ACTION_TEXT = "The face is not moving"


class TextConfigError(ValueError):
    """A prompt or emotion text is missing for an AU / class; the message names the config key."""


def au_prompts(aus: Sequence[int], overrides: Optional[Mapping[int, Sequence[str]]] = None
               ) -> List[Tuple[str, str]]:
    """(positive, negative) text per AU, in the order of `aus`."""
    table = {int(k): tuple(v) for k, v in (overrides or {}).items()}
    out = []
    for au in aus:
        pair = table.get(au, AU_PROMPTS.get(au))
        if pair is None:
            raise TextConfigError(f"model.prompts: AU{au} has no default prompts (defaults cover "
                                  f"{sorted(AU_PROMPTS)}); add `prompts: {{{au}: [positive text, negative "
                                  f"text]}}` to the model section")
        if len(pair) != 2 or not all(isinstance(s, str) and s.strip() for s in pair):
            raise TextConfigError(f"model.prompts[{au}]: give exactly two non-empty texts "
                                  f"[positive, negative], got {list(pair)!r}")
        out.append((pair[0], pair[1]))
    return out


def _join(sentences: Sequence[str]) -> str:
    """'The eyebrows are lowering', 'The chin is raising' -> 'The eyebrows are lowering and the chin ...'"""
    parts = [s.strip().rstrip(".") for s in sentences]
    parts = [parts[0]] + [p[0].lower() + p[1:] for p in parts[1:]]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def emotion_texts(aus: Sequence[int], prompts: Sequence[Tuple[str, str]],
                  overrides: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """MER class -> label text LF_r (Eq. 13): the positive prompts of the class's AUs that the dataset
    detects, joined into one sentence; overrides from `model.emotion_texts` win."""
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(MER_CLASSES)
    if unknown:
        raise TextConfigError(f"model.emotion_texts: unknown MER class(es) {sorted(unknown)}; "
                              f"the classes are {list(MER_CLASSES)}")
    pos = {au: p for au, (p, _) in zip(aus, prompts)}
    out = {}
    for cls in MER_CLASSES:
        if cls in overrides:
            out[cls] = overrides[cls]
            continue
        mine = [pos[a] for a in EMOTION_AUS[cls] if a in pos]
        if not mine:
            raise TextConfigError(f"model.emotion_texts: none of the {cls} AUs {list(EMOTION_AUS[cls])} "
                                  f"is among the dataset's AUs {list(aus)}; set "
                                  f"`emotion_texts: {{{cls}: \"...\"}}` in the model section")
        out[cls] = _join(mine)
    return out


def global_text(active: Sequence[int], aus: Sequence[int], prompts: Sequence[Tuple[str, str]]) -> str:
    """One description of all active AUs (global OrigCL, Table VIII)."""
    pos = {au: p for au, (p, _) in zip(aus, prompts)}
    mine = [pos[a] for a in aus if a in set(active)]
    return _join(mine) if mine else NO_ACTION_TEXT
