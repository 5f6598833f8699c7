"""Print the default MER label texts of Eq. 13 per dataset as the markdown tables of docs/model.md.

    .venv/bin/python scripts/emotion_texts.py

Each row: the text's index r, its MER class, the detected AUs it names, the emotion combinations
(model/text.py: EMOTION_COMBINATIONS) that give it after filtering to the dataset's AUs, and the text.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's model/, not another

from model.text import EMOTION_COMBINATIONS, MER_CLASSES, _join, au_prompts, emotion_texts, label_texts
from preprocessing.annotations import DEFAULT_AUS


def tables() -> str:
    out = []
    for reader, aus in DEFAULT_AUS.items():
        prompts = au_prompts(aus)
        texts, classes = label_texts(emotion_texts(aus, prompts))
        pos = {a: p for a, (p, _) in zip(aus, prompts, strict=True)}
        src = {}  # text -> (detected AUs, ["emotion combination", ...])
        for emotions in EMOTION_COMBINATIONS.values():
            for emotion, combos in emotions.items():
                for c in combos:
                    kept = [a for a in c if a in pos]
                    if kept:
                        entry = src.setdefault(_join([pos[a] for a in kept]), ("+".join(map(str, kept)), []))
                        entry[1].append(f"{emotion} {'+'.join(map(str, c))}")
        out += [f"{reader} (AUs {', '.join(map(str, aus))}): R = {len(texts)}", "",
                "| r | class | AUs | from (emotion, combination) | label text |", "|---|---|---|---|---|"]
        out += [f"| {r} | {MER_CLASSES[c]} | {src[t][0]} | {'; '.join(src[t][1])} | {t} |"
                for r, (t, c) in enumerate(zip(texts, classes, strict=True))]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(tables(), end="")
