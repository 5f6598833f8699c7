"""CAS(ME)^3 Part A: the `casme3` reader on a generated set with the real sheet's quirks (text cells, several
MEs per video, `J` vs `j`, lost frames, onset == apex, L/R/T/B prefixes, `Others`), its built-in errata of
the v2 sheet, and `synth --layout casme3`."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from openpyxl import Workbook, load_workbook

from orchestrator.cli import main
from preprocessing import DatasetError, prepare_dataset
from preprocessing.annotations import (
    DEFAULT_AUS,
    READERS,
    Sample,
    mer_class,
    parse_aus,
    read_casme3,
    read_sheet,
    validate_samples,
)
from preprocessing.config import PreprocessConfig
from preprocessing.pipeline import piece_key

from support.data import TEST_PREPROCESS

HEADER = ["Subject", "Filename", "Onset", "Apex", "Offset", "AU", "Objective class", "emotion"]
SHEET = "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx"


@pytest.fixture(scope="module")
def synth_casme3(tmp_path_factory):
    """3 subjects x 4 MEs (two per video), seed 0 (read-only: shared by this module)."""
    result = CliRunner().invoke(main, ["synth", str(tmp_path_factory.mktemp("c3") / "casme3"), "--layout", "casme3",
                                       "--subjects", "3", "--per-subject", "4"])
    assert result.exit_code == 0, result.output
    return Path(result.stdout.split(" to ")[1].split("\n")[0])


@pytest.fixture(scope="module")
def preprocessed(synth_casme3, tmp_path_factory):
    """`preprocess --reader casme3 --root DIR --json` on it: (the JSON summary, the cache folder)."""
    cache = tmp_path_factory.mktemp("c3cache")
    result = CliRunner().invoke(main, ["preprocess", "--reader", "casme3", "--root", str(synth_casme3), "--json",
                                       "--flow", "dis", "--magnification", "eulerian", "--workers", "1",
                                       "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), cache


def truth(root: Path) -> list[dict]:
    return json.loads((root / "synth.json").read_text())["samples"]


def test_synth_writes_the_real_layout(synth_casme3):
    wb = load_workbook(synth_casme3 / SHEET)
    assert wb.sheetnames == ["Sheet1", "label"] and wb["Sheet1"].max_row == 1 and wb["Sheet1"]["A1"].value is None
    rows = list(wb["label"].iter_rows(values_only=True))
    assert list(rows[0]) == HEADER and all(isinstance(c, str) for r in rows[1:] for c in r)  # every cell text
    cells = [r[5] for r in rows[1:]]
    assert any(c.startswith(("L", "R")) or "+L" in c or "+R" in c for c in cells) and any("T23" in c for c in cells)
    assert any(list(parse_aus(c)) != sorted(parse_aus(c)) or c.split("+")[0] > c.split("+")[-1]
               for c in cells if "+" in c)  # written unsorted (`2+1`)
    assert Counter(r[7] for r in rows[1:])["Others"] == 1 and any(r[1] == "J" for r in rows[1:])
    part = synth_casme3 / "part_A"
    assert (part / "spNO.1" / "j" / "color").is_dir() and not (part / "spNO.1" / "J").exists()
    assert sorted(p.name for p in part.iterdir()) == ["spNO.1", "spNO.2", "spNO.4"]  # numbers with gaps
    for video in part.glob("*/*"):
        numbers = sorted(int(p.stem) for p in (video / "color").glob("*.jpg"))
        assert numbers[0] == 8  # frames 1-7 lost
        assert list((video / "depth").glob("*.png"))
    onset_apex = [t for t in truth(synth_casme3) if t["sheet_apex"] == t["onset"]]
    assert len(onset_apex) == 1


def test_same_seed_same_bytes(tmp_path):
    from preprocessing.synth import generate
    a = generate(tmp_path / "a", "casme3", subjects=1, per_subject=2, seed=5)
    b = generate(tmp_path / "b", "casme3", subjects=1, per_subject=2, seed=5)
    files = lambda r: {str(p.relative_to(r)): p.read_bytes() for p in sorted(r.rglob("*")) if p.is_file()}  # noqa: E731
    assert files(a) == files(b)


def test_preprocess_reads_every_sample_and_lists_its_notes(synth_casme3, preprocessed):
    """The done-when: every sample prepared, the right subjects, AU and emotion counts (the synth's truth),
    and the notes: the `J` folder, the lost frames (leading, inside a clip, between MEs), onset == apex."""
    summary, _ = preprocessed
    true = truth(synth_casme3)
    assert summary["reader"] == "casme3" and summary["samples"] == len(true) == 12 and summary["skipped"] == []
    assert summary["subject_counts"] == {"spNO.1": 4, "spNO.2": 4, "spNO.4": 4}
    au = Counter(int(a) for t in true for a in t["aus"])
    assert summary["au_counts"] == {str(k): au[k] for k in sorted(au)}
    assert set(DEFAULT_AUS["casme3"]) <= set(au) and 23 in au
    assert summary["emotion_counts"] == dict(sorted(Counter(t["emotion"] for t in true).items()))
    assert "Others" not in summary["emotion_counts"]
    ids = [t["sample"] for t in true]
    assert ids[0].startswith("spNO.1/J_") and all(i.count("/") == 1 for i in ids)
    notes = {}
    for w in summary["warnings"]:
        notes.setdefault(w["sample"], []).append(w["warning"])
    first, flat = true[0], next(t for t in true if t["sheet_apex"] == t["onset"])
    joined = "\n".join(notes[first["sample"]])
    assert "the sheet's spNO.1/J is the folder spNO.1/j (matched ignoring case)" in joined
    assert f"frame(s) {first['onset'] + 1} inside onset..apex {first['onset']}..{first['apex']} are missing" in joined
    assert f"frame(s) 1-7, {first['offset'] + 1} of the video" in joined and "(not read: outside onset..apex" in joined
    assert any("apex frame" in n and "is the onset frame" in n for n in notes[flat["sample"]])
    (est,) = summary["apex_estimated"]
    assert est["sample"] == flat["sample"] and est["sheet"] == str(flat["onset"])
    assert abs(est["apex"] - flat["apex"]) <= 1, (est, flat)
    assert summary["corrected"] == []


def test_reader_fields(synth_casme3):
    samples = read_casme3(synth_casme3)
    assert READERS["casme3"] is read_casme3
    assert {s.emotion for s in samples} <= {"happy", "surprise", "disgust", "fear", "anger", "sad", "others"}
    assert mer_class("casme3", "Others") is None and mer_class("casme3", "happy") == "positive"
    assert {mer_class("casme3", e) for e in ("disgust", "fear", "anger", "sad")} == {"negative"}
    s = samples[0]
    assert s.frames_dir.parts[-4:] == ("part_A", "spNO.1", "j", "color")
    assert s.filename == f"J_{s.raw_frames[0]}" and s.row == 2


def test_read_sheet_picks_the_label_sheet_after_an_empty_one(tmp_path):
    wb = Workbook()
    wb.active.title = "Sheet1"
    wb.create_sheet("notes").append(["Subject", "Filename", "Onset"])  # a header, but not the label sheet
    ws = wb.create_sheet("label")
    ws.append(HEADER)
    ws.append(["spNO.1", "a", "355", "359", "360", "5", "II", "others"])
    wb.save(tmp_path / "s.xlsx")
    required = {"subject": "Subject", "onset": "Onset", "au": "AU"}
    data, first = read_sheet(tmp_path / "s.xlsx", required)
    assert first == 2 and data.iloc[0]["au"] == "5" and data.iloc[0]["onset"] == "355"
    del wb["label"]
    wb.save(tmp_path / "s.xlsx")  # no `label`: the first sheet with a header
    with pytest.raises(DatasetError, match="lacks the column"):
        read_sheet(tmp_path / "s.xlsx", required)
    del wb["notes"]
    wb.save(tmp_path / "s.xlsx")
    with pytest.raises(DatasetError, match="no header row with the columns 'Subject' and 'Filename'"):
        read_sheet(tmp_path / "s.xlsx", required)


@pytest.mark.parametrize("text, expected", [("T23", {23}), ("B28+2+1", {1, 2, 28}), ("2+1", {1, 2}),
                                            ("R12+L14", {12, 14}), ("26+25", {25, 26}), ("t18", {18})])
def test_parse_aus_takes_top_and_bottom(text, expected):
    assert parse_aus(text) == expected


def _video(root: Path, subject: str, letter: str, numbers) -> None:
    """A video of tiny grey frames (their content does not matter to reading and validation)."""
    import cv2
    import numpy as np
    jpg = cv2.imencode(".jpg", np.zeros((8, 8), np.uint8))[1].tobytes()
    folder = root / subject / letter / "color"
    folder.mkdir(parents=True)
    for n in numbers:
        (folder / f"{n}.jpg").write_bytes(jpg)


def _sheet(root: Path, rows) -> Path:
    wb = Workbook()
    wb.active.title = "Sheet1"
    ws = wb.create_sheet("label")
    for r in [HEADER] + rows:
        ws.append([str(c) for c in r])
    wb.save(root / SHEET)
    return root / SHEET


# rows of the v2 sheet that the errata fix (wrong values as they are), and one row that is fine
V2_ROWS = [["spNO.149", "d", 112, 83, 130, "4", "III", "disgust"],
           ["spNO.216", "d", 3647, 2668, 2694, "12", "I", "happy"],
           ["spNO.40", "e", 1812, 1830, 0, "1+2", "II", "surprise"],
           ["spNO.1", "a", 355, 359, 360, "5", "II", "others"]]


def test_errata_fire_on_the_v2_values_only(tmp_path):
    from preprocessing.corrections import with_errata
    _sheet(tmp_path, V2_ROWS)
    samples = read_casme3(tmp_path)
    assert [s.id for s in samples] == ["spNO.149/d_112", "spNO.216/d_3647", "spNO.40/e_1812", "spNO.1/a_355"]
    fixed, changed, fired = with_errata("casme3", samples, None, "datasets.casme3.corrections")
    assert [(s.onset, s.apex, s.offset) for s in fixed] == [(112, 123, 130), (2647, 2668, 2694), (1812, 1830, 1845),
                                                            (355, 359, 360)]
    assert fired == {"spNO.149/d_112": {"apex": 123}, "spNO.216/d_3647": {"onset": 2647},
                     "spNO.40/e_1812": {"offset": 1845}}
    assert changed[0]["fields"] == {"apex": {"sheet": "83", "corrected": 123}}
    assert "casme3_v2.yaml (apex): MEB" in changed[0]["erratum"]
    # a user correction wins field by field; the erratum's other fields stay
    fixed, changed, _ = with_errata("casme3", samples, {"spNO.149/d_112": {"apex": 120, "aus": "4+7"}}, "fixes")
    assert (fixed[0].apex, fixed[0].aus) == (120, [4, 7]) and "erratum" not in changed[0]
    # a fixed sheet (or another one): nothing fires
    rows = [list(r) for r in V2_ROWS]
    rows[0][3], rows[2][4] = 123, 1845
    _sheet(tmp_path, rows)
    _, changed, fired = with_errata("casme3", read_casme3(tmp_path), None, "x")
    assert list(fired) == ["spNO.216/d_3647"] and [c["sample"] for c in changed] == ["spNO.216/d_3647"]
    # errata belong to casme3 only
    assert with_errata("casme2", samples, None, "x")[2] == {}


def test_errata_in_prepare_key_and_impossible_rows_are_errors(tmp_path):
    """Through `prepare_dataset`: the erratum is listed in `corrected` and the frames it points to are read;
    an apex before the onset that no erratum covers is an error naming the row (or a skip)."""
    from preprocessing.pipeline import prepared_key
    root = tmp_path / "c3"
    root.mkdir()
    rows = [list(r) for r in V2_ROWS]
    rows.append(["spNO.1", "b", 40, 30, 50, "4", "III", "disgust"])  # apex before onset, not an erratum
    _sheet(root, rows)
    for subject, letter, numbers in (("spNO.149", "d", range(100, 140)), ("spNO.216", "d", range(2640, 2700)),
                                     ("spNO.40", "e", range(1800, 1850)), ("spNO.1", "a", range(350, 365)),
                                     ("spNO.1", "b", range(20, 60))):
        _video(root / "part_A", subject, letter, numbers)
    cfg = PreprocessConfig.model_validate({**TEST_PREPROCESS, "magnification": {"method": "none"}})
    with pytest.raises(DatasetError) as e:
        prepare_dataset("casme3", root, cfg, tmp_path / "cache", progress=False)
    msg = str(e.value)
    assert "row 6: sample spNO.1/b_40: apex frame 30 is outside onset..offset 40..50" in msg
    assert "spNO.149/d_112" not in msg and "spNO.216/d_3647" not in msg and "spNO.40/e_1812" not in msg
    good, problems = validate_samples(read_casme3(root), clip=False)
    assert {p.sample.id for p in problems} >= {"spNO.149/d_112", "spNO.1/b_40"}  # without the errata
    key = prepared_key("casme3", root, cfg, tmp_path / "cache")
    assert key != prepared_key("casme3", root, cfg, tmp_path / "cache", corrections={"spNO.1/b_40": {"apex": 45}})


def test_casme2_keys_are_unchanged(tiny_casme2, tmp_path):
    """The CAS(ME)^3 flags leave CASME II's prepared-data and piece keys as main's code computed them
    (values recorded before the casme3 reader was added)."""
    from preprocessing.annotations import read_casme2
    from preprocessing.pipeline import prepared_key
    cfg = PreprocessConfig.model_validate(TEST_PREPROCESS)
    samples = read_casme2(tiny_casme2)
    assert [piece_key(s, cfg) for s in samples] == ["99996fc30951490b6fd05b77", "f9e1818acd5a070d170dc0a7",
                                                   "6ccc05ca4a549eac4782f7fc", "be2b3e294e47e7176ebc5516"]
    assert prepared_key("casme2", tiny_casme2, cfg, tmp_path / "cache") == "12eb4e496764a42ddf1a"
    assert isinstance(samples[0], Sample) and not samples[0].estimates_apex
