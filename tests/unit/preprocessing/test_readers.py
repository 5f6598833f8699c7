"""Coding-sheet readers on sheets with the real datasets' quirks; AU strings; MER classes."""
from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from openpyxl import Workbook

from preprocessing import DatasetError
from preprocessing.annotations import (
    DEFAULT_AUS,
    READERS,
    get_reader,
    mer_class,
    parse_aus,
    read_casme2,
    read_samm,
    validate_samples,
)


@pytest.mark.parametrize("text, expected", [
    ("4+R12", {4, 12}), ("L10 + R12", {10, 12}), ("R14A", {14}), ("12", {12}), ("?", set()),
    (12, {12}), (12.0, {12}), ("1+2+4", {1, 2, 4}), ("R12A+L14B", {12, 14}), ("4 + ?", {4}),
    ("r12b", {12}), ("AU4+AU7", {4, 7}), ("4?", {4}),
    ("12.0", {12}), (" 4.0 ", {4}), ("17.", {17}),  # a CSV export of a number cell
])
def test_parse_aus(text, expected):
    assert parse_aus(text) == expected


@pytest.mark.parametrize("text", ["abc", "", "  ", None, float("nan"), "12.5", 12.5, "14 or 15", "4,7",
                                  "4++7", "+4", "12X", "L", "4/7", 0])
def test_parse_aus_refuses_what_is_not_au_codes(text):
    """A cell that is not AU codes would become a wrong label ('12.5' -> {5, 12}, 'abc' -> no AU)."""
    with pytest.raises(ValueError, match="AU cell"):
        parse_aus(text)


@pytest.mark.parametrize("text, alternatives", [("R14 or 15", [[14], [15]]), ("4+R14 OR 4+15", [[4, 14], [4, 15]]),
                                                 ("12 or 14 or 15", [[12], [14], [15]])])
def test_au_alternatives_are_their_own_error(text, alternatives):
    from preprocessing.annotations import AUAlternatives
    with pytest.raises(AUAlternatives, match=r"AU cell .* gives alternatives \(") as e:
        parse_aus(text)
    assert e.value.alternatives == alternatives and isinstance(e.value, ValueError)
    with pytest.raises(ValueError, match="is not AU codes"):
        parse_aus("abc or 4")  # not AU codes on either side: the general message


def test_au_cell_with_alternatives_names_the_row_and_the_correction_to_add(tmp_path):
    """SAMM has 5 cells such as 'R14 or 15': a problem naming file, row and sample that shows the corrections
    entry to add."""
    _frames(tmp_path / "SAMM" / "006" / "006_1_2", range(5560, 5610), lambda n: f"006_{n:05d}.jpg")
    _xlsx(tmp_path / "SAMM_Micro_FACS_Codes_v2.xlsx",
          [SAMM_HEADER, ["006", "006_1_2", 1, 5562, 5588, 5607, 46, "Micro - 1/2", "R14 or 15", "", "Contempt"]])
    (s,) = read_samm(tmp_path)
    assert s.aus is None and s.au_alternatives == [[14], [15]]
    good, problems = validate_samples([s], clip=False)
    assert good == [] and len(problems) == 1
    msg = str(problems[0])
    assert msg.startswith(f"{s.sheet}: row 2: sample 006/006_1_2: AU cell 'R14 or 15' gives alternatives (14 | 15)")
    assert "add to datasets.samm.corrections: {'006/006_1_2': {aus: '14'}}" in msg
    where = "datasets.s.corrections (in my.yaml)"
    assert "add to datasets.s.corrections (in my.yaml): {'006/006_1_2': {aus: '14'}}" in \
        str(validate_samples([s], clip=False, corrections_where=where)[1][0])


def test_corrections_fix_rows_before_validation(tmp_path):
    from preprocessing.corrections import apply
    _casme2_tree(tmp_path)
    rows = [list(r) for r in CASME2_ROWS]
    rows[0][7] = "R14 or 15"
    _xlsx(tmp_path / "CASME2-coding-20140508.xlsx", [CASME2_HEADER] + rows)
    samples = read_casme2(tmp_path)
    fixed, changed = apply(samples, {"sub01/EP02_01f": {"aus": "14"}, "sub17/EP07_01": {"apex": "7", "offset": 8}},
                           "fixes.yaml")
    assert [s.id for s in fixed] == [s.id for s in samples]
    a, c = fixed[0], fixed[2]
    assert (a.aus, a.au_text, a.au_problem, a.au_alternatives) == ([14], "14", None, None)
    assert (c.apex, c.offset, c.raw_frames, c.apex_missing) == (7, 8, ("5", "7", "8"), False)
    assert fixed[1] is samples[1]
    assert changed == [{"sample": "sub01/EP02_01f", "fields": {"aus": {"sheet": "R14 or 15", "corrected": "14"}}},
                       {"sample": "sub17/EP07_01", "fields": {"apex": {"sheet": "/", "corrected": 7},
                                                              "offset": {"sheet": "9", "corrected": 8}}}]
    assert validate_samples(fixed, clip=True)[1] == []
    assert samples[0].aus is None  # the samples as read are not changed


@pytest.mark.parametrize("fixes, needle", [
    ({"sub01/EP02_01": {"apex": 50}}, "fixes.yaml: sample 'sub01/EP02_01' is not in the coding sheet "),
    ({"sub01/EP02_01f": {"apx": 50}}, "fixes.yaml: sub01/EP02_01f: unknown field(s) 'apx'"),
    ({"sub01/EP02_01f": {"apex": "late"}}, "fixes.yaml: sub01/EP02_01f: apex must be a frame number, not 'late'"),
    ({"sub01/EP02_01f": {"aus": "14 or 15"}}, "fixes.yaml: sub01/EP02_01f: aus: AU cell '14 or 15' gives alternatives"),
    ({"EP02_01f": {"apex": 50}}, "fixes.yaml: 'EP02_01f' is not a sample id; use subject/filename"),
    ({"sub01/EP02_01f": {}}, "fixes.yaml: sub01/EP02_01f: give the fields to correct"),
])
def test_bad_corrections_name_the_sample_and_field(tmp_path, fixes, needle):
    from preprocessing.corrections import apply
    _casme2_tree(tmp_path)
    _xlsx(tmp_path / "CASME2-coding-20140508.xlsx", [CASME2_HEADER] + CASME2_ROWS)
    with pytest.raises(DatasetError) as e:
        apply(read_casme2(tmp_path), fixes, "fixes.yaml")
    assert needle in str(e.value), str(e.value)
    if "not in the coding sheet" in needle:
        assert "did you mean 'sub01/EP02_01f'" in str(e.value)


def test_unparseable_au_cell_names_row_and_cell_or_is_a_listed_skip(tmp_path):
    rows = [[1, "EP02_01f", "junk", 46, 59, 86, 3.5, "abc", "happiness"],
            [1, "EP03_02", 7, 10, 12, 14, "note", "12.5", "disgust"],
            [17, "EP07_01", None, 5, 7, 9, None, None, "others"]]
    _casme2_tree(tmp_path)
    _xlsx(tmp_path / "CASME2-coding-20140508.xlsx", [CASME2_HEADER] + rows)
    samples = read_casme2(tmp_path)
    assert [s.aus for s in samples] == [None, None, None]
    good, problems = validate_samples(samples, clip=False)
    assert good == [] and len(problems) == 3
    msgs = [str(p) for p in problems]
    assert "row 2: sample sub01/EP02_01f: AU cell 'abc' is not AU codes" in msgs[0]
    assert "row 3: sample sub01/EP03_02: AU cell '12.5' is not AU codes" in msgs[1]
    assert "row 4: sample sub17/EP07_01: the AU cell is empty" in msgs[2]
    assert all("correct the cell in the sheet" in m for m in msgs)


def test_mer_classes_follow_design():
    assert [mer_class("casme2", e) for e in ("happiness", "disgust", "repression", "surprise", "fear",
                                             "sadness", "others")] == \
        ["positive", "negative", "negative", "surprise", None, None, None]
    assert [mer_class("samm", e) for e in ("Happiness", "Anger", "Contempt", "Disgust", "Fear", "Sadness",
                                           "Surprise", "Other")] == \
        ["positive"] + ["negative"] * 5 + ["surprise", None]
    with pytest.raises(DatasetError, match="unknown reader 'ck'.*casme2, casme3, samm"):
        mer_class("ck", "happiness")


def test_unknown_reader_lists_known_ones():
    assert set(READERS) == set(DEFAULT_AUS) == {"casme2", "samm", "casme3"}
    with pytest.raises(DatasetError, match=r"unknown reader 'casme4'; known readers: casme2, casme3, samm"):
        get_reader("casme4")


_JPEG = cv2.imencode(".jpg", np.zeros((4, 4), np.uint8))[1].tobytes()  # readers glob; faces not needed


def _frames(folder: Path, numbers, name) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in numbers:
        (folder / name(n)).write_bytes(_JPEG)


def _xlsx(path: Path, rows) -> Path:
    wb = Workbook()
    for r in rows:
        wb.active.append(list(r))
    wb.save(path)
    return path


CASME2_HEADER = ["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None,
                 "Action Units", "Estimated Emotion"]
CASME2_ROWS = [[1, "EP02_01f", "junk", 46, 59, 86, 3.5, "4+R12", "happiness"],
               [1, "EP03_02", 7, 10, 12, 14, "note", "L10 + R12", "disgust"],
               [17, "EP07_01", None, 5, "/", 9, None, "?", "others"]]


def _casme2_tree(root: Path, sub="CASME2_RAW_selected", prefix="img"):
    _frames(root / sub / "sub01" / "EP02_01f", range(40, 90), lambda n: f"{prefix}{n}.jpg")
    _frames(root / sub / "sub01" / "EP03_02", range(10, 15), lambda n: f"{prefix}{n}.jpg")
    _frames(root / sub / "sub17" / "EP07_01", range(5, 10), lambda n: f"{prefix}{n}.jpg")


def test_casme2_sheet_with_headerless_columns_and_subject_numbers(tmp_path):
    _casme2_tree(tmp_path)
    _xlsx(tmp_path / "CASME2-coding-20140508.xlsx", [CASME2_HEADER] + CASME2_ROWS)
    samples = read_casme2(tmp_path)
    assert [s.id for s in samples] == ["sub01/EP02_01f", "sub01/EP03_02", "sub17/EP07_01"]
    a = samples[0]
    assert (a.onset, a.apex, a.offset, a.aus, a.emotion, a.mer, a.row) == (46, 59, 86, [4, 12], "happiness",
                                                                           "positive", 2)
    assert a.frames_dir == tmp_path / "CASME2_RAW_selected" / "sub01" / "EP02_01f"
    assert a.frames[59].name == "img59.jpg" and len(a.frames) == 50
    assert samples[1].aus == [10, 12] and samples[2].aus == []
    # A non-numeric apex ('/', as 21 rows of the real sheet have) is missing, not a problem: the pipeline
    # estimates it from the frames onset..offset, which validation checks instead.
    c = samples[2]
    assert c.apex is None and c.apex_missing and c.raw_frames[1] == "/"
    assert c.needed_frames(clip=False) == c.needed_frames(clip=True) == [5, 6, 7, 8, 9]
    good, problems = validate_samples(samples, clip=True)
    assert [s.id for s in good] == [s.id for s in samples] and problems == []


def test_casme2_cropped_layout_and_csv_sheet(tmp_path):
    _casme2_tree(tmp_path, sub="Cropped", prefix="reg_img")
    with open(tmp_path / "CASME2-coding-20140508.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["" if h is None else h for h in CASME2_HEADER])
        w.writerows(CASME2_ROWS)
    samples = read_casme2(tmp_path)
    assert samples[0].frames[46].name == "reg_img46.jpg"
    assert samples[0].frames_dir.parent.parent.name == "Cropped"
    assert samples[1].row == 3


def test_root_is_frames_folder_with_sheet_option(tmp_path):
    _casme2_tree(tmp_path / "data", sub="")
    sheet = _xlsx(tmp_path / "elsewhere.xlsx", [CASME2_HEADER] + CASME2_ROWS)
    samples = read_casme2(tmp_path / "data", sheet=sheet)
    assert samples[0].frames_dir == tmp_path / "data" / "sub01" / "EP02_01f"
    assert 59 in samples[0].frames
    with pytest.raises(DatasetError, match=r"no coding sheet .*--sheet"):
        read_casme2(tmp_path / "data")


def test_samm_sheet_with_preamble_and_mixed_zero_padding(tmp_path):
    header = ["Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame", "Offset Frame",
              "Duration", "Type", "Action Units", "Notes", "Estimated Emotion"]
    preamble = [["SAMM database"], [], ["Micro-movements coded by two coders"]] + [[f"note {i}"] for i in
                                                                                  range(10)]
    rows = [[6, "006_1_2", 1, 5562, 5588, 5607, 46, "Micro - 1/2", "R12A+L14", "", "Happiness"],
            ["007", "007_3_1", 3, 98, 101, 104, 7, "Micro - 1/2", "4+7", "", "Anger"],
            ["007", "007_3_2", 3, 1000, 1003, 1005, 6, "Micro - 1/2", "2", "", "Other"]]
    _xlsx(tmp_path / "SAMM_Micro_FACS_Codes_v2.xlsx", preamble + [header] + rows)
    _frames(tmp_path / "SAMM" / "006" / "006_1_2", range(5560, 5610), lambda n: f"006_{n:05d}.jpg")
    _frames(tmp_path / "SAMM" / "007" / "007_3_1", range(95, 106), lambda n: f"007_{n}.jpg")
    _frames(tmp_path / "SAMM" / "007" / "007_3_2", range(998, 1006), lambda n: f"007_{n:04d}.jpg")
    samples = read_samm(tmp_path)
    assert [s.id for s in samples] == ["006/006_1_2", "007/007_3_1", "007/007_3_2"]
    assert samples[0].row == len(preamble) + 2  # the header is found by content, after 13 rows
    assert samples[0].frames[5588].name == "006_05588.jpg"
    assert samples[1].frames[101].name == "007_101.jpg"
    assert samples[2].frames[1003].name == "007_1003.jpg"
    assert [s.aus for s in samples] == [[12, 14], [4, 7], [2]]
    assert [s.mer for s in samples] == ["positive", "negative", None]
    assert validate_samples(samples, clip=True)[1] == []


def test_samm_subject_folders_directly_under_root(synth_samm, tmp_path):
    import shutil
    shutil.copytree(synth_samm / "SAMM", tmp_path / "frames")
    samples = read_samm(tmp_path / "frames", sheet=synth_samm / "SAMM_Micro_FACS_Codes_v2.xlsx")
    assert len(samples) == 12 and all(s.frames for s in samples)


def test_sheet_without_a_needed_column(tmp_path):
    header = [h if h != "ApexFrame" else "Apex" for h in CASME2_HEADER]
    _xlsx(tmp_path / "CASME2-coding-1.xlsx", [header] + CASME2_ROWS)
    with pytest.raises(DatasetError, match=r"CASME2-coding-1.xlsx: row 1: the header lacks the column\(s\) "
                                           r"'ApexFrame'"):
        read_casme2(tmp_path)


def test_sheet_without_header_row(tmp_path):
    _xlsx(tmp_path / "CASME2-coding-1.xlsx", [["just", "numbers"], [1, 2]])
    with pytest.raises(DatasetError, match="no header row with the columns 'Subject' and 'Filename'"):
        read_casme2(tmp_path)


def test_root_missing(tmp_path):
    with pytest.raises(DatasetError, match="dataset root is not a folder"):
        read_samm(tmp_path / "nope")


SAMM_HEADER = ["Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame", "Offset Frame",
               "Duration", "Type", "Action Units", "Notes", "Estimated Emotion"]


def test_csv_cells_written_as_floats(tmp_path):
    """A CSV exported from a float column: `1.0` is subject 1 (sub01), `12.0` is AU 12, `46.0` frame 46."""
    _casme2_tree(tmp_path)
    with open(tmp_path / "CASME2-coding-1.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["" if h is None else h for h in CASME2_HEADER])
        w.writerow(["1.0", "EP02_01f", "x", "46.0", "59.0", "86.0", "", "12.0", "happiness"])
    (s,) = read_casme2(tmp_path)
    assert (s.id, s.aus, s.onset, s.apex, s.offset) == ("sub01/EP02_01f", [12], 46, 59, 86)
    assert s.frames_dir.is_dir() and validate_samples([s], clip=True)[1] == []
    samm = tmp_path / "samm"
    _frames(samm / "SAMM" / "006" / "006_1_2", range(5560, 5610), lambda n: f"006_{n:05d}.jpg")
    with open(samm / "SAMM_Micro_FACS_Codes_v2.csv", "w", newline="") as f:
        csv.writer(f).writerows([SAMM_HEADER, ["6.0", "006_1_2", "1.0", "5562.0", "5588.0", "5607.0", "46.0",
                                               "Micro", "4.0", "", "Anger"]])
    (s,) = read_samm(samm)
    assert (s.id, s.aus, s.apex) == ("006/006_1_2", [4], 5588) and s.frames_dir.is_dir()


def test_samm_csv_with_short_preamble_rows(tmp_path):
    """SAMM saved as .csv (Excel "CSV UTF-8", with a byte-order mark): 13 one-cell preamble rows, shorter
    than the 11-column header, are read (pandas' parser rejects them)."""
    _frames(tmp_path / "SAMM" / "006" / "006_1_2", range(5560, 5610), lambda n: f"006_{n:05d}.jpg")
    with open(tmp_path / "SAMM_Micro_FACS_Codes_v2.csv", "w", newline="", encoding="utf-8-sig") as f:
        w = csv.writer(f)
        for i in range(13):
            w.writerow([f"note {i}, with a comma"] if i % 2 else [f"note {i}"])
        w.writerow(SAMM_HEADER)
        w.writerow(["006", "006_1_2", 1, 5562, 5588, 5607, 46, "Micro - 1/2", "R12A+L14", "", "Happiness"])
    (s,) = read_samm(tmp_path)
    assert (s.id, s.row, s.aus, s.emotion, s.onset) == ("006/006_1_2", 15, [12, 14], "Happiness", 5562)
    assert validate_samples([s], clip=True)[1] == []


def test_xls_is_not_a_sheet_format(tmp_path):
    _casme2_tree(tmp_path)
    (tmp_path / "CASME2-coding-20140508.xls").write_bytes(b"old binary workbook")
    with pytest.raises(DatasetError, match=r"no coding sheet \(CASME2-coding\*.xlsx or CASME2-coding\*.csv"):
        read_casme2(tmp_path)
    with pytest.raises(DatasetError, match=r"must be .xlsx or .csv, not '.xls'"):
        read_casme2(tmp_path, sheet=tmp_path / "CASME2-coding-20140508.xls")


def test_xlsx_is_preferred_over_a_newer_csv(tmp_path):
    """As docs/datasets.md says: any .xlsx before any .csv; among names of one kind, the last in order."""
    _casme2_tree(tmp_path)
    _xlsx(tmp_path / "CASME2-coding-20140508.xlsx", [CASME2_HEADER] + CASME2_ROWS)
    _xlsx(tmp_path / "CASME2-coding-20190701.xlsx", [CASME2_HEADER] + CASME2_ROWS)
    (tmp_path / "CASME2-coding-20200101.csv").write_text("not, read\n")
    assert read_casme2(tmp_path)[0].sheet.name == "CASME2-coding-20190701.xlsx"


def test_damaged_frames_are_validation_problems(tmp_path):
    """A frame that is not an image, and one cut short (OpenCV would decode it with only a warning and fill
    the rest), are problems naming the file, the row and the sample."""
    _casme2_tree(tmp_path)
    _xlsx(tmp_path / "CASME2-coding-1.xlsx", [CASME2_HEADER] + CASME2_ROWS[:2])
    a, b = read_casme2(tmp_path)
    face = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (240, 320, 3), np.uint8))[1].tobytes()
    a.frames[a.onset].write_bytes(face[:len(face) // 3])
    b.frames[b.apex].write_bytes(b"not a jpeg at all")
    assert cv2.imread(str(a.frames[a.onset])) is not None  # what the fix is about
    good, problems = validate_samples([a, b], clip=False)
    assert good == [] and [p.sample.id for p in problems] == [a.id, b.id]
    assert f"row 2: sample {a.id}: frame file {a.frames[a.onset]} cannot be read as an image" in str(problems[0])
    assert "truncated" in str(problems[0])
    assert f"row 3: sample {b.id}: frame file {b.frames[b.apex]} cannot be read as an image" in str(problems[1])
