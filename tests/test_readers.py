"""Coding-sheet readers on sheets with the real datasets' quirks; AU strings; MER classes."""
from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from openpyxl import Workbook

from preprocessing import DatasetError
from preprocessing.annotations import (DEFAULT_AUS, READERS, get_reader, mer_class, parse_aus, read_casme2,
                                       read_samm, validate_samples)


@pytest.mark.parametrize("text, expected", [
    ("4+R12", {4, 12}), ("L10 + R12", {10, 12}), ("R14A", {14}), ("12", {12}), ("?", set()),
    (12, {12}), (12.0, {12}), ("1+2+4", {1, 2, 4}), ("", set()), (None, set()), (float("nan"), set()),
    ("R12A+L14B", {12, 14}), ("4 + ?", {4}),
])
def test_parse_aus(text, expected):
    assert parse_aus(text) == expected


def test_mer_classes_follow_design():
    assert [mer_class("casme2", e) for e in ("happiness", "disgust", "repression", "surprise", "fear",
                                             "sadness", "others")] == \
        ["positive", "negative", "negative", "surprise", None, None, None]
    assert [mer_class("samm", e) for e in ("Happiness", "Anger", "Contempt", "Disgust", "Fear", "Sadness",
                                           "Surprise", "Other")] == \
        ["positive"] + ["negative"] * 5 + ["surprise", None]
    with pytest.raises(DatasetError, match="unknown reader 'ck'.*casme2, samm"):
        mer_class("ck", "happiness")


def test_unknown_reader_lists_known_ones():
    assert set(READERS) == set(DEFAULT_AUS) == {"casme2", "samm"}
    with pytest.raises(DatasetError, match=r"unknown reader 'casme3'; known readers: casme2, samm"):
        get_reader("casme3")


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
    # A non-numeric apex ('/', as in the real sheet) is a validation problem naming file, row and sample.
    good, problems = validate_samples(samples, clip=True)
    assert [s.id for s in good] == ["sub01/EP02_01f", "sub01/EP03_02"]
    assert len(problems) == 1
    msg = str(problems[0])
    assert "CASME2-coding-20140508.xlsx: row 4: sample sub17/EP07_01" in msg and "'/'" in msg


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
