"""Coding sheets of CASME II, SAMM and CAS(ME)^3 Part A: readers, AU-string parsing, MER classes, sample validation.

Each reader normalises its sheet into `Sample` records at the boundary (as MEB's readers do): nothing past
this module knows which spreadsheet, column spelling or frame-file naming a sample came from.
"""
from __future__ import annotations

import csv
import fnmatch
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFile, ImageOps

from preprocessing.errors import DatasetError, SampleProblem

# Paper IV-A: the AUs evaluated per dataset.
DEFAULT_AUS = {"casme2": [1, 2, 4, 7, 12, 14, 15, 17], "samm": [2, 4, 7, 12],
               "casme3": [1, 2, 4, 5, 7, 9, 10, 12, 14, 17]}

# docs/protocol.md "Evaluation protocol": 3-class MER; emotions not listed are excluded (None).
_MER = {
    "casme2": {"happiness": "positive", "disgust": "negative", "repression": "negative",
               "surprise": "surprise"},
    "samm": {"happiness": "positive", "anger": "negative", "contempt": "negative", "disgust": "negative",
             "fear": "negative", "sadness": "negative", "surprise": "surprise"},
    "casme3": {"happy": "positive", "disgust": "negative", "fear": "negative", "anger": "negative",
               "sad": "negative", "surprise": "surprise"},
}
MER_CLASSES = ("positive", "negative", "surprise")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
_TRAILING_NUMBER = re.compile(r"(\d+)$")
_INTEGER_FLOAT = re.compile(r"^\s*([+-]?\d+)\.0*\s*$")  # `12.0`, `1.` (a number a CSV export wrote as float)


def _integer_text(text: str) -> str:
    """`12.0` -> `12`: a string that is an integer-valued float becomes the integer; anything else as is."""
    m = _INTEGER_FLOAT.match(text)
    return str(int(m.group(1))) if m else text


# One AU code: optional side (L/R; T/B, top/bottom, on CAS(ME)^3's lip AUs) or `AU`, the number,
# optional intensity (A-E), optional `?` (uncertain); or a lone `?`. A cell is codes joined by `+`.
_AU_CODE = re.compile(r"^(?:(?:[LRTB]|AU)?\s*(\d+)\s*[A-E]?\s*\??|\?)$", re.IGNORECASE)


_OR = re.compile(r"\s+or\s+", re.IGNORECASE)


class AUAlternatives(ValueError):
    """An AU cell that offers alternatives (`R14 or 15`, as 5 cells of SAMM do): AU codes, but not one
    label. `alternatives` holds the AU numbers of each alternative, in the cell's order."""

    def __init__(self, text: str, alternatives: list[list[int]]):
        self.text = text
        self.alternatives = alternatives
        super().__init__(f"AU cell {text!r} gives alternatives ({alternatives_text(alternatives)}), not one "
                         f"set of AU codes; choose one with a correction of the sample's aus")


def alternatives_text(alternatives: Sequence[Sequence[int]]) -> str:
    """[[14], [4, 15]] -> `14 | 4+15` (`?` for an alternative without AU numbers)."""
    return " | ".join("+".join(map(str, a)) or "?" for a in alternatives)


def parse_aus(text) -> set[int]:
    """AU cell of a coding sheet -> set of AU numbers; a ValueError for a cell that is not AU codes.

    `4+R12` -> {4, 12}; `L10 + R12` -> {10, 12}; `R14A` -> {14}; `12` -> {12}; `?` -> set() (uncertain,
    nothing coded); `4 + ?` -> {4}; `2+T23` -> {2, 23}. Side letters (L/R, and T/B: top/bottom lip in
    CAS(ME)^3), intensity letters (A-E) and `?` marks are
    dropped; a cell Excel stored as a number (12 or 12.0), or a CSV export wrote as one (`12.0`), is
    that AU. Anything else - an empty cell, words, `12.5` - is a ValueError saying what was found: it
    would otherwise become a wrong label. AU codes joined by `or` (`R14 or 15`) are an `AUAlternatives`
    (a ValueError of its own): which one is meant is for a person to choose (a correction).
    """
    if text is None or (isinstance(text, float) and math.isnan(text)):
        raise ValueError("the AU cell is empty")
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if float(text).is_integer() and text > 0:
            return {int(text)}
        raise ValueError(f"AU cell {text!r} is not an AU number")
    cell = _integer_text(str(text)).strip()
    if not cell:
        raise ValueError("the AU cell is empty")
    if _OR.search(cell):
        parts = _OR.split(cell)
        try:
            alternatives = [sorted(parse_aus(part)) for part in parts]
        except ValueError:
            alternatives = None
        if alternatives is not None and len(parts) > 1:
            raise AUAlternatives(str(text), alternatives)
    codes = [_AU_CODE.match(part.strip()) for part in cell.split("+")]
    if not all(codes):
        raise ValueError(f"AU cell {str(text)!r} is not AU codes (AU numbers with optional L/R/T/B side and A-E "
                         f"intensity letters, joined by '+', e.g. 'R12+14B')")
    return {int(m.group(1)) for m in codes if m.group(1)}


def mer_class(reader: str, emotion) -> str | None:
    """3-class MER label (`positive`, `negative`, `surprise`) of an emotion name, or None (excluded)."""
    if reader not in _MER:
        raise DatasetError(f"unknown reader {reader!r}; known readers: {', '.join(sorted(_MER))}")
    return _MER[reader].get(str(emotion).strip().lower())


@dataclass
class Sample:
    """One coded micro-expression, as every reader normalises it."""
    reader: str
    subject: str  # `sub01` (CASME II), `006` (SAMM), `spNO.1` (CAS(ME)^3)
    filename: str  # `EP02_01f`, `006_1_2`; CAS(ME)^3: `<video letter>_<onset cell>` (`a_355`, a clip has several)
    onset: int | None  # frame numbers as coded; None when the cell is not a number
    apex: int | None
    offset: int | None
    aus: list[int] | None  # sorted AU numbers; None when the cell does not parse (a validation problem)
    au_text: str  # the AU cell as written
    emotion: str
    sheet: Path  # coding sheet it came from
    row: int  # 1-based row number in the sheet (as a spreadsheet program shows it)
    frames_dir: Path  # folder of the sample's frames (may not exist: validation reports it)
    frames: dict[int, Path] = field(default_factory=dict)  # frame number -> file, found by globbing
    raw_frames: tuple[str, str, str] = ("", "", "")  # onset/apex/offset cells as written
    au_problem: str | None = None  # why the AU cell does not parse (then aus is None)
    au_alternatives: list[list[int]] | None = None  # AU cell `R14 or 15`: [[14], [15]] (aus is None)
    # CAS(ME)^3: an apex coded at the onset frame (no motion to read there) is estimated like a missing one
    estimate_apex_at_onset: bool = False
    # CAS(ME)^3: frames lost inside the frames read are passed over (a note), only onset and apex must be there
    lost_frames_ok: bool = False
    notes: tuple[str, ...] = ()  # reader's notes that do not stop the sample (a folder matched ignoring case)

    @property
    def id(self) -> str:
        return f"{self.subject}/{self.filename}"

    @property
    def mer(self) -> str | None:
        return mer_class(self.reader, self.emotion)

    def where(self) -> str:
        return f"{self.sheet}: row {self.row}: sample {self.id}"

    @property
    def apex_missing(self) -> bool:
        """The sheet gives no apex frame (a non-numeric cell: `/` in CASME II, empty in SAMM): the
        pipeline estimates it. A number that is not a frame number (`12.5`) is a problem instead."""
        return self.apex is None and not _is_number(self.raw_frames[1])

    @property
    def apex_at_onset(self) -> bool:
        """The sheet's apex is the onset frame and this reader estimates such an apex (CAS(ME)^3)."""
        return self.estimate_apex_at_onset and self.apex is not None and self.apex == self.onset

    @property
    def estimates_apex(self) -> bool:
        """The pipeline estimates the apex: it is missing (`apex_missing`) or at the onset (`apex_at_onset`)."""
        return self.apex_missing or self.apex_at_onset

    @property
    def last_frame(self) -> int | None:
        """The highest frame number in the sample's folder (None when it has no frames)."""
        return max(self.frames) if self.frames else None

    def needed_frames(self, clip: bool) -> list[int]:
        """Frame numbers the pipeline reads: onset and apex, or every frame onset..apex (clip=True); with
        an apex to estimate, every frame onset..offset that the folder reaches (the apex is estimated
        among them). With lost_frames_ok, frames the folder lacks are left out, but never onset or apex."""
        numbers = self._frame_range(clip)
        if self.lost_frames_ok:
            keep = (self.onset,) if self.estimates_apex else (self.onset, self.apex)
            numbers = [n for n in numbers if n in self.frames or n in keep]
        return numbers

    def lost_frames(self, clip: bool) -> list[int]:
        """Frames the pipeline would read that the folder lacks (with lost_frames_ok: passed over)."""
        return [n for n in self._frame_range(clip) if n not in self.frames]

    def _frame_range(self, clip: bool) -> list[int]:
        if self.estimates_apex:
            last = self.offset if self.last_frame is None else min(self.offset, self.last_frame)
            return list(range(self.onset, max(last, self.onset) + 1))
        if clip:
            return list(range(self.onset, self.apex + 1))
        return [self.onset, self.apex] if self.apex != self.onset else [self.onset]


# ---------------------------------------------------------------------------------------------------
# Sheets
# ---------------------------------------------------------------------------------------------------
def _norm(name) -> str:
    if name is None or (isinstance(name, float) and math.isnan(name)):
        return ""
    return re.sub(r"[\s_\-]+", "", str(name)).lower()


def read_sheet(path: Path, required: dict[str, str]) -> tuple[pd.DataFrame, int]:
    """Read a coding sheet (.xlsx/.csv) whose header row is found by content, not position.

    A workbook of several worksheets: the one named `label` (CAS(ME)^3's), else the first (in the
    workbook's order) with a header row. `required` maps a normalised column name (`onsetframe`) to the
    name shown in messages. Returns the data rows with normalised column names (header-less columns
    dropped) and the 1-based sheet row number of the first data row.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: coding sheet not found; pass the sheet with --sheet (or `sheet:` in "
                           f"the sweep file) or put it in the dataset root")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".xlsx", ".xlsm"):
        raise DatasetError(f"{path}: a coding sheet must be .xlsx or .csv, not {path.suffix!r}")
    try:
        sheets = {"": _read_csv(path)} if suffix == ".csv" else \
            pd.read_excel(path, sheet_name=None, header=None, dtype=object)
    except Exception as e:  # noqa: BLE001 - corrupt workbook, not a text file, ...
        advice = ("it must be a comma-separated text file; open the original sheet in a spreadsheet program "
                  "and save it as .xlsx (or as CSV UTF-8)") if suffix == ".csv" else \
            "open it in a spreadsheet program and save it again as .xlsx, or use the dataset's original sheet"
        raise DatasetError(f"{path}: cannot read the coding sheet ({type(e).__name__}: {e}); {advice}") from None
    order = sorted(sheets, key=lambda name: str(name).strip().lower() != "label")  # stable: `label` first
    header_at, raw = None, None
    for name in order:
        header_at = _header_row(sheets[name])
        if header_at is not None:
            raw = sheets[name]
            break
    if header_at is None:
        where = "" if len(sheets) < 2 else f" in any of its worksheets ({', '.join(repr(str(n)) for n in sheets)})"
        raise DatasetError(f"{path}: no header row with the columns 'Subject' and 'Filename' in its first "
                           f"60 rows{where}; is this the coding sheet of the dataset?")
    names = [_norm(v) for v in raw.iloc[header_at].tolist()]
    missing = [shown for key, shown in required.items() if key not in names]
    if missing:
        raise DatasetError(f"{path}: row {header_at + 1}: the header lacks the column(s) "
                           f"{', '.join(repr(m) for m in missing)} (it has "
                           f"{', '.join(repr(str(v)) for v in raw.iloc[header_at].tolist() if _norm(v))}); "
                           f"rename the column or use the dataset's original sheet")
    keep = [j for j, n in enumerate(names) if n and n not in names[:j]]  # header-less columns ignored
    data = raw.iloc[header_at + 1:, keep]
    data.columns = [names[j] for j in keep]
    return data, header_at + 2


def _header_row(raw: pd.DataFrame) -> int | None:
    """Index of the first row with `Subject` and `Filename` cells, within the first 60 (SAMM: ~13 rows of
    free text before the header); None when there is none."""
    for i in range(min(len(raw), 60)):
        cells = {_norm(v) for v in raw.iloc[i].tolist()}
        if "subject" in cells and "filename" in cells:
            return i
    return None


def _read_csv(path: Path) -> pd.DataFrame:
    """A .csv sheet as a header-less frame of strings (None for empty cells). Read with the csv module and
    padded to the widest row: free-text rows above the header (SAMM's preamble) may have fewer cells than
    the header, which pandas' parser rejects. A UTF-8 byte-order mark (Excel's "CSV UTF-8") is dropped;
    undecodable bytes become U+FFFD."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        rows = list(csv.reader(f))
    width = max((len(r) for r in rows), default=0)
    return pd.DataFrame([[c if c.strip() else None for c in r] + [None] * (width - len(r)) for r in rows],
                        dtype=object)


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _frame_number(v) -> int | None:
    s = _cell(v)
    try:
        f = float(s)
    except ValueError:
        return None
    return int(f) if f.is_integer() else None


def read_image(path: Path, check_only: bool = False) -> np.ndarray | None:
    """Decode an image file with Pillow -> RGB uint8 (H, W, 3) (grey repeated to 3 channels, 16-bit scaled
    to 8, EXIF orientation applied as OpenCV's imread does).

    Raises (OSError, ValueError, ...) on any damage, a file cut short included: Pillow fails on a truncated
    JPEG or PNG where OpenCV only warns and fills the missing rows. This relies on
    `PIL.ImageFile.LOAD_TRUNCATED_IMAGES` being False (Pillow's default; nothing here sets it).
    check_only=True decodes the whole file (a JPEG at 1/8 scale, which still reads all of its data) and
    returns None.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise DatasetError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by another library), so cut-short "
                           "frames would be filled silently; set it back to False")
    with Image.open(path) as im:
        if check_only:
            im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
            return None
        im.load()
        im = ImageOps.exif_transpose(im)
        if im.mode.startswith("I;16") or im.mode == "I":
            a = np.asarray(im).astype(np.float64)
            grey = np.clip(a / 257.0 if a.max() > 255 else a, 0, 255).round().astype(np.uint8)
            return np.repeat(grey[..., None], 3, axis=2)
        return np.asarray(im.convert("RGB"))


def image_problem(path: Path) -> str | None:
    """None when the file decodes as a whole image, else the reason (for messages)."""
    try:
        read_image(path, check_only=True)
    except DatasetError:
        raise
    except Exception as e:  # noqa: BLE001 - UnidentifiedImageError, truncated data, decompression bomb, ...
        return f"{type(e).__name__}: {e}"
    return None


def find_frames(folder: Path) -> dict[int, Path]:
    """Frame number -> file for every image in a sample folder, from the trailing number of the file name
    (`img46.jpg`, `reg_img46.jpg`, `006_05566.jpg`, `006_5566.jpg`): zero padding may vary."""
    out: dict[int, Path] = {}
    if not folder.is_dir():
        return out
    for p in folder.iterdir():
        if p.suffix.lower() in IMAGE_SUFFIXES:
            m = _TRAILING_NUMBER.search(p.stem)
            if m:
                out.setdefault(int(m.group(1)), p)
    return out


def _pick(root: Path, patterns: Sequence[str], what: str, option_hint: str, ignore_case: bool = False) -> Path:
    for pat in patterns:
        found = (p for p in root.iterdir() if fnmatch.fnmatchcase(p.name.lower(), pat.lower())) if ignore_case \
            else root.glob(pat)
        hits = sorted(p for p in found if not p.name.startswith(("~$", ".")))
        if hits:
            return hits[-1]  # newest coding date sorts last (CASME2-coding-20190701 after -20140508)
    raise DatasetError(f"{root}: no {what} ({' or '.join(patterns)}) in the dataset root; {option_hint}")


def _frames_root(root: Path, candidates: Sequence[str], subjects: Iterable[str]) -> Path:
    """The folder that holds the subject folders: the first candidate that has one of them."""
    subjects = list(subjects)
    for c in candidates:
        base = root / c if c else root
        if base.is_dir() and any((base / s).is_dir() for s in subjects):
            return base
    return root / candidates[0] if candidates[0] and (root / candidates[0]).is_dir() else root


_COLUMNS = {
    "casme2": {"subject": "Subject", "filename": "Filename", "onsetframe": "OnsetFrame",
               "apexframe": "ApexFrame", "offsetframe": "OffsetFrame", "actionunits": "Action Units",
               "estimatedemotion": "Estimated Emotion"},
    "samm": {"subject": "Subject", "filename": "Filename", "onsetframe": "Onset Frame",
             "apexframe": "Apex Frame", "offsetframe": "Offset Frame", "actionunits": "Action Units",
             "estimatedemotion": "Estimated Emotion"},
    "casme3": {"subject": "Subject", "filename": "Filename", "onset": "Onset", "apex": "Apex", "offset": "Offset",
               "au": "AU", "emotion": "emotion"},
}


def _casme2_subject(v) -> str:
    s = _integer_text(_cell(v))  # `1.0` (a CSV export of a number) -> `1`
    return f"sub{int(s):02d}" if s.isdigit() else s  # Subject 1 -> sub01; `sub01` kept


def _samm_subject(v) -> str:
    s = _integer_text(_cell(v))
    return f"{int(s):03d}" if s.isdigit() else s  # Subject 6 (a number in Excel) -> 006


def _sheet_rows(reader: str, root, sheet, sheet_patterns, ignore_case: bool = False):
    """-> (root, sheet path, [(1-based sheet row, row)] without blank lines): the sheet given (a path
    relative to the root too) or found in the root."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root is not a folder; pass --root with the folder the "
                           f"{reader} dataset was unpacked into")
    sheet_path = Path(sheet).expanduser() if sheet else _pick(
        root, sheet_patterns, "coding sheet",
        "pass the sheet with --sheet (or `sheet:` in the sweep file) when the root is the frames folder",
        ignore_case)
    if sheet and not sheet_path.is_absolute() and not sheet_path.exists() and (root / sheet_path).exists():
        sheet_path = root / sheet_path
    data, first_row = read_sheet(sheet_path, _COLUMNS[reader])
    rows = []
    for i, (_, r) in enumerate(data.iterrows()):
        if not _cell(r["subject"]) and not _cell(r["filename"]):
            continue  # blank line
        rows.append((first_row + i, r))
    if not rows:
        raise DatasetError(f"{sheet_path}: the coding sheet has a header but no sample rows")
    return root, sheet_path, rows


def _read(reader: str, root, sheet, sheet_patterns, frame_dirs, subject_fn) -> list[Sample]:
    root, sheet_path, rows = _sheet_rows(reader, root, sheet, sheet_patterns)
    frames_root = _frames_root(root, frame_dirs, {subject_fn(r["subject"]) for _, r in rows})
    out = []
    for row, r in rows:
        subject, filename = subject_fn(r["subject"]), _cell(r["filename"])
        folder = frames_root / subject / filename
        aus, au_problem, alternatives = _aus_cell(r["actionunits"])
        out.append(Sample(
            reader=reader, subject=subject, filename=filename,
            onset=_frame_number(r["onsetframe"]), apex=_frame_number(r["apexframe"]),
            offset=_frame_number(r["offsetframe"]), aus=aus, au_problem=au_problem,
            au_alternatives=alternatives,
            au_text=_cell(r["actionunits"]), emotion=_cell(r["estimatedemotion"]), sheet=sheet_path,
            row=row, frames_dir=folder, frames=find_frames(folder),
            raw_frames=(_cell(r["onsetframe"]), _cell(r["apexframe"]), _cell(r["offsetframe"]))))
    return out


def _aus_cell(cell) -> tuple[list[int] | None, str | None, list[list[int]] | None]:
    """(sorted AU numbers, None, None), or (None, why, alternatives or None) when the cell does not parse
    (validate_samples reports it with the row)."""
    try:
        return sorted(parse_aus(cell)), None, None
    except AUAlternatives as e:
        return None, str(e), e.alternatives
    except ValueError as e:
        return None, str(e), None


def read_casme2(root, sheet=None) -> list[Sample]:
    """CASME II: `CASME2-coding-*.xlsx` (or .csv) and `CASME2_RAW_selected/sub{NN}/{Filename}/img{N}.jpg`
    and/or `Cropped/sub{NN}/{Filename}/reg_img{N}.jpg`; or `root` is the frames folder and `sheet` given.
    Raw frames are used when both are present (landmarks and crop are computed here)."""
    return _read("casme2", root, sheet, ["CASME2-coding*.xlsx", "CASME2-coding*.csv",
                                         "CASME2*coding*.xlsx", "CASME2*coding*.csv"],
                 ["CASME2_RAW_selected", "CASME2_RAW", "Cropped", ""], _casme2_subject)


def read_samm(root, sheet=None) -> list[Sample]:
    """SAMM: `SAMM_Micro_FACS_Codes_v2.xlsx` (or .csv) and `SAMM/{Subject}/{Filename}/{Subject}_{N}.jpg`
    (or the subject folders directly under `root`); or `root` is the frames folder and `sheet` given."""
    return _read("samm", root, sheet, ["SAMM_Micro_FACS_Codes*.xlsx", "SAMM_Micro_FACS_Codes*.csv",
                                       "SAMM*Codes*.xlsx", "SAMM*Codes*.csv"],
                 ["SAMM", ""], _samm_subject)


CASME3_SHEETS = ["cas(me)*3*label*.xlsx", "cas(me)*3*label*.csv", "casme*3*label*.xlsx", "casme*3*label*.csv"]


def read_casme3(root, sheet=None) -> list[Sample]:
    """CAS(ME)^3 Part A: `cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx` (sheet `label`; names matched ignoring
    case, or .csv) and `{Subject}/{Filename}/color/{N}.jpg` under the root or a folder below it (`part_A/`).

    A video holds several MEs, so the sample id is `{Subject}/{Filename}_{Onset}` as the sheet writes them
    (`spNO.1/a_355`). Folders are matched ignoring case (the sheet's `J` is folder `j`: a note). Emotions
    are lower-cased (`Others` -> `others`). An apex coded at the onset is estimated, and frames lost inside
    onset..apex are passed over (notes, `sample_warnings`); depth frames are not used."""
    root, sheet_path, rows = _sheet_rows("casme3", root, sheet, CASME3_SHEETS, ignore_case=True)
    subjects = {_cell(r["subject"]) for _, r in rows}
    base = _casme3_frames_root(root, subjects)
    videos: dict[Path, dict[int, Path]] = {}
    out = []
    for row, r in rows:
        subject, letter = _cell(r["subject"]), _cell(r["filename"])
        subject_dir = _child(base, subject)
        video_dir = _child(subject_dir, letter)
        folder = _child(video_dir, "color")
        notes = ()
        if (subject_dir.name, video_dir.name) != (subject, letter) and folder.is_dir():
            notes = (f"the sheet's {subject}/{letter} is the folder {subject_dir.name}/{video_dir.name} "
                     f"(matched ignoring case)",)
        if folder not in videos:
            videos[folder] = find_frames(folder)
        cells = (_cell(r["onset"]), _cell(r["apex"]), _cell(r["offset"]))
        aus, au_problem, alternatives = _aus_cell(r["au"])
        out.append(Sample(
            reader="casme3", subject=subject, filename=f"{letter}_{_integer_text(cells[0])}",
            onset=_frame_number(r["onset"]), apex=_frame_number(r["apex"]), offset=_frame_number(r["offset"]),
            aus=aus, au_problem=au_problem, au_alternatives=alternatives, au_text=_cell(r["au"]),
            emotion=_cell(r["emotion"]).lower(), sheet=sheet_path, row=row, frames_dir=folder,
            frames=dict(videos[folder]), raw_frames=cells, estimate_apex_at_onset=True, lost_frames_ok=True,
            notes=notes))
    return out


def _child(folder: Path, name: str) -> Path:
    """`folder/name`, or the entry of `folder` whose name equals it ignoring case when there is no exact one."""
    exact = folder / name
    if exact.exists() or not folder.is_dir():
        return exact
    same = sorted(p for p in folder.iterdir() if p.name.lower() == name.lower())
    return same[0] if same else exact


def _casme3_frames_root(root: Path, subjects: Iterable[str]) -> Path:
    """The folder holding the subject folders (names ignoring case): the root, or the first folder one or
    two levels below it (`part_A/`, `data/part_A/`) that holds one of them."""
    wanted = {s.lower() for s in subjects}

    def holds(folder: Path) -> bool:
        return any(p.name.lower() in wanted and p.is_dir() for p in folder.iterdir())

    if holds(root):
        return root
    level = [root]
    for _ in range(2):
        level = [c for f in level for c in sorted(f.iterdir()) if c.is_dir() and not c.name.startswith(".")
                 and c.name.lower() not in wanted]
        for c in level:
            if holds(c):
                return c
    return root


READERS: dict[str, Callable[..., list[Sample]]] = {"casme2": read_casme2, "samm": read_samm,
                                                   "casme3": read_casme3}


def get_reader(name: str) -> Callable[..., list[Sample]]:
    try:
        return READERS[name]
    except KeyError:
        raise DatasetError(f"unknown reader {name!r}; known readers: {', '.join(sorted(READERS))}") from None


# ---------------------------------------------------------------------------------------------------
# Validation (one function, run when a dataset is built)
# ---------------------------------------------------------------------------------------------------
def correction_hint(sample: Sample, fields: str, where: str | None = None) -> str:
    """`add to datasets.samm.corrections: {'006/006_1_2': {aus: '14'}}`: the entry that fixes a sample
    without editing the sheet. `where`: where corrections are given (a sweep file's key, a --corrections
    file); default `datasets.<reader>.corrections`."""
    return f"add to {where or f'datasets.{sample.reader}.corrections'}: {{'{sample.id}': {{{fields}}}}}"


def validate_samples(samples: Sequence[Sample], clip: bool, corrections_where: str | None = None
                     ) -> tuple[list[Sample], list[SampleProblem]]:
    """Check every sample before any work: frame numbers are numbers, onset <= apex <= offset, the
    sample folder and every needed frame exist and are non-empty image files that decode whole (Pillow;
    a file cut short fails), ids are unique.

    A missing apex (a non-numeric cell) is no problem: the pipeline estimates it from the frames
    onset..offset, which must then be there from the onset on (an offset past the folder's last frame is
    a warning, `sample_warnings`). An AU cell with alternatives (`R14 or 15`) is a problem whose message
    shows the correction to add (`corrections_where` names where corrections go, see `correction_hint`).

    Returns (good samples, problems). `pipeline.load_frame` decodes the same way and reports a frame that
    fails then (changed since) alike.
    """
    good, problems, seen = [], [], {}
    for s in samples:
        if s.id in seen:
            problems.append(SampleProblem(s, f"the same sample is also coded in row {seen[s.id]}; "
                                             f"remove the duplicate row"))
            continue
        seen[s.id] = s.row
        names = ("onset", "apex", "offset")
        bad = [f"{n} frame {raw!r} is not a frame number" for n, raw, v in
               zip(names, s.raw_frames, (s.onset, s.apex, s.offset), strict=True)
               if v is None and not (n == "apex" and s.apex_missing)]
        if bad:
            field = next(n for n, v in zip(names, (s.onset, s.apex, s.offset), strict=True) if v is None)
            bad[-1] += (f"; correct the cell in the sheet or "
                        f"{correction_hint(s, f'{field}: N', corrections_where)} with the frame number N")
        if s.aus is None:
            if s.au_alternatives:
                first = "+".join(map(str, s.au_alternatives[0]))
                bad.append(f"AU cell {s.au_text!r} gives alternatives ({alternatives_text(s.au_alternatives)})"
                           f", which would be a guessed label; choose one: "
                           f"{correction_hint(s, f'aus: {first!r}', corrections_where)} or another of them")
            else:
                bad.append((s.au_problem or f"AU cell {s.au_text!r} does not parse") +
                           f"; correct the cell in the sheet or "
                           f"{correction_hint(s, 'aus: <AU codes>', corrections_where)}")
        if bad:
            problems.append(SampleProblem(s, "; ".join(bad) + " (or skip the sample with on_error: skip)"))
            continue
        if s.estimates_apex:
            if not s.onset < s.offset:
                what = "is the onset frame" if s.apex_at_onset else "gives no frame"
                problems.append(SampleProblem(s, f"the apex cell {s.raw_frames[1]!r} {what} and "
                                                 f"onset..offset {s.onset}..{s.offset} has no frame after "
                                                 f"the onset to estimate it from; correct the sheet"))
                continue
        elif not s.onset <= s.apex <= s.offset:
            problems.append(SampleProblem(s, f"apex frame {s.apex} is outside onset..offset "
                                             f"{s.onset}..{s.offset}; correct the sheet"))
            continue
        if not s.frames_dir.is_dir():
            problems.append(SampleProblem(s, f"frames folder {s.frames_dir} does not exist; put the "
                                             f"sample's frames there"))
            continue
        needed = s.needed_frames(clip)
        missing = [n for n in needed if n not in s.frames]
        if s.estimates_apex and not missing and len(needed) < 2:
            what = "is the onset frame" if s.apex_at_onset else "gives no frame"
            problems.append(SampleProblem(s, f"the apex cell {s.raw_frames[1]!r} {what} and "
                                             f"{s.frames_dir} has no frame after the onset {s.onset} "
                                             f"(its last is {s.last_frame}) to estimate it from"))
            continue
        if missing:
            shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
            why = " (the apex is estimated from the frames onset..offset)" if s.estimates_apex else ""
            problems.append(SampleProblem(s, f"frame(s) {shown} missing in {s.frames_dir} "
                                             f"(it has {len(s.frames)} frames){why}"))
            continue
        empty = [s.frames[n] for n in needed if s.frames[n].stat().st_size == 0]
        if empty:
            problems.append(SampleProblem(s, f"frame file {empty[0]} is empty; restore it from the "
                                             f"dataset archive"))
            continue
        damaged = next(((s.frames[n], why) for n in needed
                        if (why := image_problem(s.frames[n])) is not None), None)
        if damaged:
            problems.append(SampleProblem(s, f"frame file {damaged[0]} cannot be read as an image "
                                             f"({damaged[1]}); restore it from the dataset archive"))
            continue
        good.append(s)
    return good, problems


def sample_warnings(samples: Sequence[Sample], corrections_where: str | None = None, clip: bool = True
                    ) -> list[SampleProblem]:
    """Quirks that do not stop a sample (run on the good samples of `validate_samples`): an offset past
    the last frame of the sample's folder (the pipeline reads only onset..apex; a missing apex is then
    estimated among the frames up to the last one). And the reader's notes (`Sample.notes`), an apex
    coded at the onset (estimated), frames lost inside the frames read (passed over) and, once per
    video folder, the frames it lost that no sample reads (CAS(ME)^3). `clip`: as for `validate_samples`."""
    out = []
    unread: dict[Path, set[int]] = {}  # video folder -> frames read by any of its samples
    for s in samples:
        out.extend(SampleProblem(s, note) for note in s.notes)
        if s.apex_at_onset:
            out.append(SampleProblem(s, f"apex frame {s.apex} is the onset frame in the sheet: the apex is "
                                        f"estimated (the frame of largest motion within onset..offset; listed "
                                        f"in apex_estimated)"))
        if s.lost_frames_ok:
            lost = s.lost_frames(clip)
            if lost:
                read = "onset..offset" if s.estimates_apex else "onset..apex" if clip else "onset, apex"
                out.append(SampleProblem(s, f"frame(s) {frame_ranges(lost)} inside {read} "
                                            f"{s.onset}..{s.apex if not s.estimates_apex else s.offset} are "
                                            f"missing in {s.frames_dir}: passed over (the clip is magnified over "
                                            f"the frames present)"))
            unread.setdefault(s.frames_dir, set()).update(s.needed_frames(clip), lost)
        last = s.last_frame
        if last is not None and s.offset is not None and s.offset > last:
            what = (f"the missing apex is estimated within {s.onset}..{last}" if s.estimates_apex else
                    "prepared anyway: only onset..apex frames are read")
            out.append(SampleProblem(s, f"offset frame {s.offset} is past the last frame {last} in "
                                        f"{s.frames_dir}; {what}. To record the right offset, correct the "
                                        f"sheet or {correction_hint(s, f'offset: {last}', corrections_where)}"
                                        f" (if {last} is the offset)"))
    for folder, read in unread.items():
        first = next(s for s in samples if s.frames_dir == folder)
        gone = [n for n in range(1, (first.last_frame or 0) + 1) if n not in first.frames and n not in read]
        if gone:
            why = "outside onset..apex of its samples" if clip else "not onset or apex of its samples"
            out.append(SampleProblem(first, f"frame(s) {frame_ranges(gone)} of the video {folder} are missing "
                                            f"(not read: {why})"))
    return out


def frame_ranges(numbers: Iterable[int]) -> str:
    """[1, 2, 3, 7, 9, 10] -> `1-3, 7, 9-10`."""
    parts: list[list[int]] = []
    for n in sorted(numbers):
        if parts and n == parts[-1][1] + 1:
            parts[-1][1] = n
        else:
            parts.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)
