"""Text side of Micro-AU CLIP: per-AU prompts (paper III-A, Fig. 2), the emotion texts of zero-shot MER
(III-E, Eq. 13) and the global AU description of the global OrigCL baseline (Table VIII).

Every default can be overridden from the sweep file (`model.prompts`, `model.emotion_texts`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from preprocessing.errors import MicroAUError

# AU -> (positive text, negative text). AU4 is the paper's Fig. 2 example; the others follow it:
# the FACS name of the movement, "is/are <verb>ing" / "is/are not <verb>ing".
AU_PROMPTS: dict[int, tuple[str, str]] = {
    1: ("The inner eyebrows are raising", "The inner eyebrows are not raising"),
    2: ("The outer eyebrows are raising", "The outer eyebrows are not raising"),
    4: ("The eyebrows are lowering", "The eyebrows are not lowering"),
    5: ("The upper eyelids are raising", "The upper eyelids are not raising"),
    7: ("The lower eyelids are tightening", "The lower eyelids are not tightening"),
    9: ("The nose is wrinkling", "The nose is not wrinkling"),
    10: ("The upper lip is raising", "The upper lip is not raising"),
    12: ("The lip corners are pulling up", "The lip corners are not pulling up"),
    14: ("The lip corners are dimpling inward", "The lip corners are not dimpling inward"),
    15: ("The lip corners are pulling down", "The lip corners are not pulling down"),
    17: ("The chin is raising", "The chin is not raising"),
}

# MER classes (docs/protocol.md): positive = happiness (happy in CAS(ME)^3); negative = disgust, repression
# (CASME II), anger, contempt, disgust, fear, sadness (SAMM) and disgust, fear, anger, sad (CAS(ME)^3);
# surprise = surprise. Others are excluded in every dataset.
MER_CLASSES: tuple[str, ...] = ("positive", "negative", "surprise")
# The AU combinations that code each emotion in FACS-based ME coding (FACS/EMFACS prototypes and the
# CASME II coding criteria), per MER class and emotion. Each combination, filtered to the AUs the dataset
# detects, is one label text LF_r of Eq. 13 (paper IV-F); a combination with no detected AU is dropped.
# Contempt is AU14 alone: its unilateral AU12 would read as happiness.
EMOTION_COMBINATIONS: dict[str, dict[str, tuple[tuple[int, ...], ...]]] = {
    "positive": {"happiness": ((6, 12), (12,))},
    "negative": {"disgust": ((4, 7), (9,), (10,), (14,)),
                 "repression": ((14,), (15,), (17,), (15, 17)),
                 "anger": ((4, 5, 7, 23),),
                 "contempt": ((14,),),
                 "fear": ((1, 2, 4, 5, 7, 20, 26),),
                 "sadness": ((1, 4, 15), (17,))},
    "surprise": {"surprise": ((1, 2, 5, 26), (2,))},
}
NO_ACTION_TEXT = "The face is not moving"


class TextConfigError(MicroAUError, ValueError):
    """A prompt or emotion text is missing for an AU / class; the message names the config key."""


def au_prompts(aus: Sequence[int], overrides: Mapping[int, Sequence[str]] | None = None
               ) -> list[tuple[str, str]]:
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


def _override(cls: str, value) -> list[str]:
    """`model.emotion_texts[cls]`: one text or a list of texts -> the list (repeats dropped, order kept)."""
    texts = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else []
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise TextConfigError(f"model.emotion_texts[{cls}]: give one non-empty text or a non-empty list of "
                              f"non-empty texts, got {value!r}")
    return list(dict.fromkeys(texts))


def emotion_texts(aus: Sequence[int], prompts: Sequence[tuple[str, str]],
                  overrides: Mapping[str, object] | None = None) -> dict[str, list[str]]:
    """MER class -> its label texts LF_r (Eq. 13), in MER_CLASSES order. By default one text per AU
    combination of the class's emotions (EMOTION_COMBINATIONS) filtered to the AUs the dataset detects:
    the positive prompts of those AUs joined into one sentence; combinations left with no AU are dropped,
    repeats removed, order kept. `model.emotion_texts` (a text or a list of texts per class) replaces a
    class's defaults."""
    overrides = dict(overrides or {})
    unknown = [c for c in overrides if c not in MER_CLASSES]
    if unknown:
        raise TextConfigError(f"model.emotion_texts: unknown MER class(es) {unknown}; the classes are "
                              f"{list(MER_CLASSES)}: rename or remove {unknown[0]!r}")
    pos = {au: p for au, (p, _) in zip(aus, prompts, strict=True)}
    out: dict[str, list[str]] = {}
    for cls in MER_CLASSES:
        if cls in overrides:
            out[cls] = _override(cls, overrides[cls])
            continue
        combos = [c for combos in EMOTION_COMBINATIONS[cls].values() for c in combos]
        texts = [_join([pos[a] for a in c if a in pos]) for c in combos if any(a in pos for a in c)]
        if not texts:
            raise TextConfigError(f"model.emotion_texts: no AU of the {cls} combinations "
                                  f"{[list(c) for c in combos]} is among the dataset's AUs {list(aus)}; set "
                                  f"`emotion_texts: {{{cls}: [\"...\"]}}` in the model section")
        out[cls] = list(dict.fromkeys(texts))
    owner: dict[str, str] = {}
    for cls, texts in out.items():
        for t in texts:
            if t in owner:
                raise TextConfigError(f"model.emotion_texts: the text {t!r} is a label text of both "
                                      f"{owner[t]} and {cls}; a text names one class: change it in "
                                      f"`emotion_texts: {{{cls}: [...]}}`")
            owner[t] = cls
    return out


def label_texts(texts: Mapping[str, Sequence[str]]) -> tuple[list[str], list[int]]:
    """emotion_texts' dict -> all R label texts in MER_CLASSES order and each one's class index."""
    flat = [(t, i) for i, cls in enumerate(MER_CLASSES) for t in texts[cls]]
    return [t for t, _ in flat], [i for _, i in flat]


def global_text(active: Sequence[int], aus: Sequence[int], prompts: Sequence[tuple[str, str]]) -> str:
    """One description of all active AUs (global OrigCL, Table VIII)."""
    pos = {au: p for au, (p, _) in zip(aus, prompts, strict=True)}
    mine = [pos[a] for a in aus if a in set(active)]
    return _join(mine) if mine else NO_ACTION_TEXT
