"""Corrections of coding-sheet rows, kept beside the licensed sheet instead of edits to it.

A corrections map is `{sample id: {onset?, apex?, offset?, aus?}}` with the sample id as the summary
lists it (`sub01/EP02_01f`, `006/006_1_2`): frame numbers for onset/apex/offset, an AU cell for `aus`
(`'14'`, `'4+R12'`, or a list of AU numbers). It comes from a sweep file (`datasets.<name>.corrections`)
or a YAML file (`preprocess --corrections FILE.yaml`), is applied to the samples a reader returns before
validation, and is part of the prepared-data key. Plain dicts only: the orchestrator passes its
sweep-file section down unchanged.

Built-in errata (`ERRATA`: a shipped YAML file per reader, `preprocessing/errata/`) fix known mistakes of
a published sheet: each fires only on a row that still has the wrong values, and is merged under the
user's corrections (`with_errata`, the one place both are applied).
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from preprocessing.errors import DatasetError

FIELDS = ("onset", "apex", "offset", "aus")
_FRAME_FIELDS = ("onset", "apex", "offset")

# reader -> its built-in errata file: {errata: {sample id: {sheet: {field: wrong value}, fix: {field: value},
# source: where the fix comes from, row: for people}}}
ERRATA = {"casme3": Path(__file__).parent / "errata" / "casme3_v2.yaml"}


def normalise(raw: Any, where: str = "") -> dict[str, dict[str, Any]]:
    """Check a corrections map and return it as {sample id: {field: int frame | AU cell str}}, ids and
    fields sorted (so the same corrections written differently give the same prepared-data key).
    A DatasetError (a ValueError) names `where` (when given), the sample and the field at fault."""
    from preprocessing.annotations import parse_aus

    pre = f"{where}: " if where else ""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise DatasetError(f"{pre}corrections must be a map of sample ids to fields, e.g. "
                           f"{{'sub01/EP02_01f': {{apex: 59}}}}, not {type(raw).__name__}")
    out: dict[str, dict[str, Any]] = {}
    for sid, fields in raw.items():
        sid_s = str(sid).strip()
        if sid_s.count("/") != 1 or not all(sid_s.split("/")):
            raise DatasetError(f"{pre}{sid!r} is not a sample id; use subject/filename as the "
                               f"summary lists it, e.g. 'sub01/EP02_01f' or '006/006_1_2'")
        if not isinstance(fields, dict) or not fields:
            raise DatasetError(f"{pre}{sid_s}: give the fields to correct, e.g. {{apex: 59}} "
                               f"(any of {', '.join(FIELDS)})")
        unknown = sorted(str(k) for k in fields if k not in FIELDS)
        if unknown:
            raise DatasetError(f"{pre}{sid_s}: unknown field(s) {', '.join(map(repr, unknown))}; a "
                               f"correction sets {', '.join(FIELDS)}")
        clean: dict[str, Any] = {}
        for name in FIELDS:
            if name not in fields:
                continue
            value = fields[name]
            if name in _FRAME_FIELDS:
                if isinstance(value, str) and value.strip().isdigit():
                    value = int(value.strip())
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise DatasetError(f"{pre}{sid_s}: {name} must be a frame number, not {value!r}")
                clean[name] = value
            else:
                if isinstance(value, (list, tuple)):
                    if not value or not all(isinstance(a, int) and not isinstance(a, bool) and a > 0
                                            for a in value):
                        raise DatasetError(f"{pre}{sid_s}: aus must be an AU cell ('14', '4+R12') or a "
                                           f"list of AU numbers, not {value!r}")
                    value = "+".join(str(a) for a in sorted(set(value)))
                elif isinstance(value, bool) or not isinstance(value, (str, int)):
                    raise DatasetError(f"{pre}{sid_s}: aus must be an AU cell ('14', '4+R12'), not "
                                       f"{value!r}")
                value = str(value).strip()
                try:
                    parse_aus(value)
                except ValueError as e:
                    raise DatasetError(f"{pre}{sid_s}: aus: {e}") from None
                clean[name] = value
        if sid_s in out:
            raise DatasetError(f"{pre}sample {sid_s} is corrected twice; merge the entries")
        out[sid_s] = clean
    return dict(sorted(out.items()))


def load_file(path) -> dict[str, dict[str, Any]]:
    """A YAML corrections file: the map itself, or the map under a top-level `corrections:` key (as in a
    sweep file's dataset section)."""
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"{path}: corrections file not found; pass a YAML file of "
                           f"{{sample id: {{onset?, apex?, offset?, aus?}}}}")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not a valid YAML file ({e}); write one entry per sample, e.g. "
                           f"'sub01/EP02_01f': {{apex: 59}}") from None
    if isinstance(raw, dict) and set(raw) == {"corrections"}:
        raw = raw["corrections"]
    return normalise(raw if raw is not None else {}, str(path))


def apply(samples: Sequence, corrections: dict[str, dict[str, Any]], where: str
          ) -> tuple[list, list[dict[str, Any]]]:
    """The samples with their corrections applied, and what changed: [{sample, fields: {field: {sheet,
    corrected}}}] in the order of the sheet. A correction naming a sample that is not in the sheet is a
    DatasetError naming it (a typo would otherwise leave the row as it was, silently)."""
    from preprocessing.annotations import parse_aus

    corrections = normalise(corrections, where)
    if not corrections:
        return list(samples), []
    ids = {s.id for s in samples}
    unknown = [sid for sid in corrections if sid not in ids]
    if unknown:
        sheets = sorted({str(s.sheet) for s in samples})
        lines = []
        for sid in unknown:
            close = difflib.get_close_matches(sid, sorted(ids), n=2)
            lines.append(f"{where}: sample {sid!r} is not in the coding sheet {', '.join(sheets)}"
                         + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else "")
                         + "; use the id subject/filename as the sheet gives it")
        raise DatasetError("\n".join(lines))
    out, changed = [], []
    for s in samples:
        fix = corrections.get(s.id)
        if not fix:
            out.append(s)
            continue
        update: dict[str, Any] = {}
        fields: dict[str, dict[str, Any]] = {}
        raw = list(s.raw_frames)
        for i, name in enumerate(_FRAME_FIELDS):
            if name in fix:
                fields[name] = {"sheet": s.raw_frames[i], "corrected": fix[name]}
                update[name] = fix[name]
                raw[i] = str(fix[name])
        update["raw_frames"] = tuple(raw)
        if "aus" in fix:
            fields["aus"] = {"sheet": s.au_text, "corrected": fix["aus"]}
            update.update(aus=sorted(parse_aus(fix["aus"])), au_text=fix["aus"], au_problem=None,
                          au_alternatives=None)
        out.append(dataclasses.replace(s, **update))
        changed.append({"sample": s.id, "fields": fields})
    return out, changed


@functools.cache
def errata(reader: str) -> dict[str, dict[str, Any]]:
    """The built-in errata of a reader's published sheet: {sample id: {sheet: {field: wrong value},
    fix: {field: value}, source}}; {} for a reader without any."""
    import yaml

    path = ERRATA.get(reader)
    if path is None:
        return {}
    raw = (yaml.safe_load(path.read_text()) or {}).get("errata") or {}
    out = {}
    for sid, entry in raw.items():
        fix = normalise({sid: entry["fix"]}, str(path))[sid]
        out[sid] = {"sheet": dict(entry["sheet"]), "fix": fix, "source": str(entry.get("source", ""))}
    return out


def with_errata(reader: str, samples: Sequence, corrections: dict[str, dict[str, Any]] | None, where: str
                ) -> tuple[list, list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """`apply` with the reader's built-in errata that fire merged under `corrections` (the user's entry for
    the same sample wins field by field). An erratum fires on a sample whose sheet row still holds every
    wrong value it names. -> (samples, what changed (an entry a fired erratum contributed to also has
    `erratum`: its file and source), the fired errata {sample id: fix} for the prepared-data key)."""
    table = errata(reader)
    fired = {s.id: table[s.id]["fix"] for s in samples if s.id in table
             and all(getattr(s, f) == v for f, v in table[s.id]["sheet"].items())}
    user = normalise(corrections, where)
    if not fired:
        out, changed = apply(samples, user, where)
        return out, changed, {}
    merged = {sid: {**fired.get(sid, {}), **user.get(sid, {})} for sid in sorted(set(fired) | set(user))}
    out, changed = apply(samples, merged, where)
    for entry in changed:
        sid = entry["sample"]
        kept = [f for f in fired.get(sid, {}) if f not in user.get(sid, {})]
        if kept:
            entry["erratum"] = f"{ERRATA[reader].name} ({', '.join(kept)}): {table[sid]['source']}"
    return out, changed, fired
