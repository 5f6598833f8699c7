"""`microau-sweep synth` / `preprocess` from the command line: summaries, and every bad input giving a
clear message, exit != 0 and nothing cached."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from openpyxl import load_workbook

from orchestrator.cli import main


@pytest.fixture
def broken(tiny_casme2, tmp_path):
    """A private copy of the tiny dataset, its first sample, and a cache folder to check."""
    root = shutil.copytree(tiny_casme2, tmp_path / "casme2")
    from preprocessing.annotations import read_casme2
    first = read_casme2(root)[0]
    return root, first, tmp_path / "cache"


def preprocess(root, cache, *extra):
    return CliRunner().invoke(main, ["preprocess", "--reader", "casme2", "--root", str(root), "--flow", "dis",
                                     "--cache-dir", str(cache), "--json", *extra])


def assert_failed_cleanly(result, cache: Path, *needles):
    assert result.exit_code != 0, result.output
    msg = result.stderr
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    assert result.stdout == ""
    assert not cache.exists() or list(cache.iterdir()) == []


def test_preprocess_json_summary_and_cache_hit(tiny_casme2, tmp_path):
    result = preprocess(tiny_casme2, tmp_path / "cache")
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert s["samples"] == 4 and s["subjects"] == 2 and s["skipped"] == []
    assert sum(s["emotion_counts"].values()) == 4 and all(isinstance(v, int) for v in s["au_counts"].values())
    again = preprocess(tiny_casme2, tmp_path / "cache")
    assert json.loads(again.stdout) == s and len(list((tmp_path / "cache").glob("prepared-*"))) == 1


def test_missing_frame(broken):
    root, s, cache = broken
    s.frames[s.onset].unlink()
    assert_failed_cleanly(preprocess(root, cache), cache, f"{s.sheet}: row {s.row}: sample {s.id}",
                          f"frame(s) {s.onset} missing in {s.frames_dir}", "Nothing was cached")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3])


@pytest.mark.parametrize("damage", ["not an image", "truncated apex", "truncated onset"])
def test_unreadable_image(broken, damage):
    """A frame that is not an image, or a JPEG cut short (OpenCV decodes it with only a warning and fills
    the rest), stops with the file, row and sample, and caches nothing."""
    import cv2
    root, s, cache = broken
    frame = s.frames[s.onset if damage == "truncated onset" else s.apex]
    if damage == "not an image":
        frame.write_bytes(b"not a jpeg at all")
    else:
        _truncate(frame)
        assert cv2.imread(str(frame)) is not None  # OpenCV would have let it through
    assert_failed_cleanly(preprocess(root, cache), cache, f"{s.sheet}: row {s.row}: sample {s.id}",
                          f"frame file {frame} cannot be read as an image", "Nothing was cached",
                          *(["truncated"] if damage != "not an image" else []))


def test_frame_truncated_after_validation_stops_processing(broken, monkeypatch):
    """Decoding for processing fails on a cut-short onset frame too (not only validation), and stops."""
    from preprocessing import annotations
    root, s, cache = broken
    _truncate(s.frames[s.onset])
    monkeypatch.setattr(annotations, "image_problem", lambda path: None)  # validation lets it through
    assert_failed_cleanly(preprocess(root, cache, "--magnification", "none"), cache,
                          f"row {s.row}: sample {s.id}: frame file {s.frames[s.onset]} cannot be read as an "
                          f"image", "truncated", "Nothing was cached")


def test_no_face(broken):
    import cv2
    import numpy as np
    root, s, cache = broken
    cv2.imwrite(str(s.frames[s.apex]), np.full((240, 320, 3), 90, np.uint8))
    assert_failed_cleanly(preprocess(root, cache), cache, f"sample {s.id}", "no face found",
                          str(s.frames[s.apex]))


def test_apex_outside_onset_offset(broken):
    root, s, cache = broken
    wb = load_workbook(s.sheet)
    ws = wb.active
    ws.cell(row=s.row, column=5).value = s.offset + 3  # column E: ApexFrame
    wb.save(s.sheet)
    assert_failed_cleanly(preprocess(root, cache), cache, f"row {s.row}: sample {s.id}",
                          f"apex frame {s.offset + 3} is outside onset..offset {s.onset}..{s.offset}")


def test_sheet_without_a_needed_column(broken):
    root, s, cache = broken
    wb = load_workbook(s.sheet)
    wb.active.cell(row=1, column=8).value = "AUs"  # was 'Action Units'
    wb.save(s.sheet)
    assert_failed_cleanly(preprocess(root, cache), cache, f"{s.sheet}: row 1", "'Action Units'")


def test_unknown_reader(tiny_casme2, tmp_path):
    result = CliRunner().invoke(main, ["preprocess", "--reader", "ck+", "--root", str(tiny_casme2),
                                       "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code != 0 and "'ck+' is not one of 'casme2', 'casme3', 'samm'" in result.stderr
    assert not (tmp_path / "cache").exists()
    from preprocessing import DatasetError, prepare_dataset
    with pytest.raises(DatasetError, match="unknown reader 'ck\\+'; known readers: casme2, casme3, samm"):
        prepare_dataset("ck+", tiny_casme2, cache_dir=tmp_path / "cache")


def test_learned_without_weights(tiny_casme2, tmp_path):
    result = preprocess(tiny_casme2, tmp_path / "cache", "--magnification", "learned")
    assert_failed_cleanly(result, tmp_path / "cache", "preprocessing.magnification.weights", "eulerian")


def test_missing_magnet_weights_file(tiny_casme2, tmp_path):
    missing = tmp_path / "nowhere" / "magnet_epoch12_loss7.28e-02.pth"
    result = preprocess(tiny_casme2, tmp_path / "cache", "--magnet-weights", str(missing))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert_failed_cleanly(result, tmp_path / "cache", f"{missing}: magnification weights not found",
                          "--magnet-weights", "eulerian")


def test_skip_bad_lists_the_skipped_sample_and_caches_the_rest(broken):
    root, s, cache = broken
    s.frames[s.onset].unlink()
    result = preprocess(root, cache, "--skip-bad")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["samples"] == 3
    assert [d["sample"] for d in summary["skipped"]] == [s.id] and "missing" in summary["skipped"][0]["reason"]
    # The same files without --skip-bad still stop, also when the skipping run is cached.
    assert_failed_cleanly(preprocess(root, cache / "other"), cache / "other", s.id)
    again = preprocess(root, cache)
    assert again.exit_code != 0 and s.id in again.stderr


def test_rich_summary(tiny_casme2, tmp_path):
    result = CliRunner().invoke(main, ["preprocess", "--reader", "casme2", "--root", str(tiny_casme2),
                                       "--flow", "dis", "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert "4 samples of 2 subjects" in result.stdout and "AU counts" in result.stdout


def test_synth_command_and_console_script(tmp_path):
    exe = Path(sys.executable).with_name("microau-sweep")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "orchestrator.cli"]
    out = tmp_path / "samm"
    done = subprocess.run(cmd + ["synth", str(out), "--layout", "samm", "--subjects", "2", "--per-subject",
                                 "2", "--seed", "5"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (out / "SAMM_Micro_FACS_Codes_v2.xlsx").is_file() and len(list((out / "SAMM").iterdir())) == 2
    again = subprocess.run(cmd + ["synth", str(out)], capture_output=True, text=True)
    assert again.returncode != 0 and "already exists" in again.stderr
    bad = subprocess.run(cmd + ["preprocess", "--reader", "samm", "--root", str(tmp_path / "nowhere"),
                                "--cache-dir", str(tmp_path / "cache")], capture_output=True, text=True)
    assert bad.returncode != 0 and "nowhere: dataset root is not a folder" in bad.stderr
    assert bad.stdout == "" and not (tmp_path / "cache").exists()
