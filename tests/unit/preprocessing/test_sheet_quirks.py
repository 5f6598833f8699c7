"""The real coding sheets as they are: missing apex cells (estimated), an offset past the last frame (a
warning), AU cells with alternatives (an error showing the correction to add) and corrections (sweep file
`datasets.<name>.corrections`, `preprocess --corrections FILE.yaml`). Synthetic sets with each quirk: the
generated sheet is edited as the real ones are."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from openpyxl import load_workbook

from orchestrator.cli import main
from preprocessing import DatasetError, prepare_dataset
from preprocessing.annotations import read_casme2, read_samm
from preprocessing.config import PreprocessConfig

# Sheet columns (1-based) of the fields edited here.
COLUMNS = {"casme2": {"apex": 5, "offset": 6, "aus": 8}, "samm": {"apex": 5, "offset": 6, "aus": 9}}


def edit_sheet(sheet: Path, reader: str, edits: dict) -> None:
    """{row: {field: value}} written into the .xlsx as a person would type it (None: an empty cell)."""
    wb = load_workbook(sheet)
    for row, fields in edits.items():
        for name, value in fields.items():
            wb.active.cell(row=row, column=COLUMNS[reader][name]).value = value
    wb.save(sheet)


def truth(root: Path) -> dict:
    return {t["sample"]: t for t in json.loads((root / "synth.json").read_text())["samples"]}


def cli(root, cache, *extra, reader="casme2"):
    return CliRunner().invoke(main, ["preprocess", "--reader", reader, "--root", str(root), "--flow", "dis",
                                     "--cache-dir", str(cache), *extra])


@pytest.fixture
def casme2_copy(tiny_casme2, tmp_path):
    root = shutil.copytree(tiny_casme2, tmp_path / "casme2")
    return root, read_casme2(root)


def test_slash_apex_and_offset_past_the_last_frame_prepare_every_sample(casme2_copy, tmp_path):
    """CASME II writes '/' where the apex frame is unknown (21 rows) and has an offset past the sample's
    frames: every sample is prepared, each estimated apex is within one frame of the true one and listed,
    and the offset is a warning naming the sample."""
    root, samples = casme2_copy
    first = samples[0]
    late = first.last_frame + 5
    edit_sheet(first.sheet, "casme2", {s.row: {"apex": "/"} for s in samples})
    edit_sheet(first.sheet, "casme2", {first.row: {"offset": late}})
    result = cli(root, tmp_path / "cache", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["samples"] == 4 and summary["skipped"] == []
    true = truth(root)
    est = {d["sample"]: d for d in summary["apex_estimated"]}
    assert sorted(est) == sorted(s.id for s in samples)
    for sid, d in est.items():
        assert d["sheet"] == "/" and abs(d["apex"] - true[sid]["apex"]) <= 1, (sid, d, true[sid])
    (w,) = summary["warnings"]
    assert w["sample"] == first.id
    assert w["warning"].startswith(f"{first.sheet}: row {first.row}: sample {first.id}: offset frame {late} is "
                                   f"past the last frame {first.last_frame} in {first.frames_dir}")
    assert f"{{'{first.id}': {{offset: {first.last_frame}}}}}" in w["warning"]
    # The table summary (a cache hit) lists them too.
    table = cli(root, tmp_path / "cache")
    assert table.exit_code == 0, table.output
    assert "Apex estimated (4" in table.stdout and f"offset frame {late} is past the last frame" in table.stdout
    # A missing onset frame stays an error, also when the apex is estimated.
    first.frames[first.onset].unlink()
    bad = cli(root, tmp_path / "cache2", "--json")
    assert bad.exit_code != 0 and f"row {first.row}: sample {first.id}: frame(s) {first.onset} missing" in bad.stderr
    assert not (tmp_path / "cache2").exists() or list((tmp_path / "cache2").iterdir()) == []


def test_empty_samm_apex_cells_are_estimated(synth_samm, tmp_path):
    """SAMM leaves the apex cell empty for 3 samples: those are estimated (within one frame of the truth)
    and listed, the others keep their coded apex."""
    from support.data import TEST_PREPROCESS
    root = shutil.copytree(synth_samm, tmp_path / "samm")
    samples = read_samm(root)
    blank = [samples[0], samples[5], samples[10]]
    edit_sheet(samples[0].sheet, "samm", {s.row: {"apex": None} for s in blank})
    data = prepare_dataset("samm", root, PreprocessConfig.model_validate(TEST_PREPROCESS), tmp_path / "cache",
                           progress=False)
    assert len(data) == len(samples)
    true = truth(root)
    assert [d["sample"] for d in data.apex_estimated] == [s.id for s in blank]
    for d in data.apex_estimated:
        assert d["sheet"] == "" and abs(d["apex"] - true[d["sample"]]["apex"]) <= 1, d
    assert data.summary()["apex_estimated"] == data.apex_estimated and data.warnings == []


def test_au_alternatives_name_the_row_and_a_correction_fixes_it(casme2_copy, tmp_path):
    """An 'R14 or 15' cell stops with its row and the entry to add; with that correction (sweep-file map or
    --corrections file) the sample is prepared with AU 14, the correction is listed, and it is part of the
    prepared-data key."""
    from support.data import TEST_PREPROCESS
    root, samples = casme2_copy
    s = samples[1]
    edit_sheet(s.sheet, "casme2", {s.row: {"aus": "R14 or 15"}})
    cfg = PreprocessConfig.model_validate({**TEST_PREPROCESS, "magnification": {"method": "none"}})
    with pytest.raises(DatasetError) as e:
        prepare_dataset("casme2", root, cfg, tmp_path / "cache", progress=False)
    assert (f"{s.sheet}: row {s.row}: sample {s.id}: AU cell 'R14 or 15' gives alternatives (14 | 15)"
            in str(e.value))
    assert f"add to datasets.casme2.corrections: {{'{s.id}': {{aus: '14'}}}}" in str(e.value)
    assert not (tmp_path / "cache").exists()

    fourteen = prepare_dataset("casme2", root, cfg, tmp_path / "cache", progress=False,
                               corrections={s.id: {"aus": "14"}})
    assert fourteen.au_sets[fourteen.sample_ids.index(s.id)] == [14]
    assert fourteen.corrected == [{"sample": s.id, "fields": {"aus": {"sheet": "R14 or 15", "corrected": "14"}}}]
    assert fourteen.summary()["corrected"] == fourteen.corrected
    fifteen = prepare_dataset("casme2", root, cfg, tmp_path / "cache", progress=False,
                              corrections={s.id: {"aus": 15}})
    assert fifteen.key != fourteen.key and fifteen.au_sets[fifteen.sample_ids.index(s.id)] == [15]
    # the same correction written otherwise is the same key (a cache hit)
    again = prepare_dataset("casme2", root, cfg, tmp_path / "cache", progress=False,
                            corrections={s.id: {"aus": [14]}})
    assert again.key == fourteen.key

    # From the command line: the error shows where to put the entry; --corrections FILE applies it.
    result = cli(root, tmp_path / "cli", "--json", "--magnification", "none")
    assert result.exit_code != 0 and result.stdout == ""
    assert (f"row {s.row}: sample {s.id}: AU cell 'R14 or 15' gives alternatives (14 | 15), which would be a "
            f"guessed label; choose one: add to a corrections file (--corrections FILE.yaml): "
            f"{{'{s.id}': {{aus: '14'}}}}") in result.stderr
    fixes = tmp_path / "fixes.yaml"
    fixes.write_text(yaml.safe_dump({s.id: {"aus": "14"}}))
    result = cli(root, tmp_path / "cli", "--json", "--magnification", "none", "--corrections", str(fixes))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["corrected"] == fourteen.corrected and summary["key"] == fourteen.key


def test_correction_of_a_sample_not_in_the_sheet_is_an_error(casme2_copy, tmp_path):
    root, samples = casme2_copy
    typo = samples[0].id[:-1]
    with pytest.raises(DatasetError, match=rf"datasets.casme2.corrections: sample '{typo}' is not in the coding "
                                           rf"sheet .*did you mean '{samples[0].id}'"):
        prepare_dataset("casme2", root, PreprocessConfig(flow="dis"), tmp_path / "cache", progress=False,
                        corrections={typo: {"apex": 3}})
    fixes = tmp_path / "fixes.yaml"
    fixes.write_text(yaml.safe_dump({"corrections": {typo: {"apex": 3}}}))
    result = cli(root, tmp_path / "cache", "--corrections", str(fixes))
    assert result.exit_code != 0 and f"{fixes}: sample '{typo}' is not in the coding sheet" in result.stderr
    assert not (tmp_path / "cache").exists()


def test_sweep_file_corrections_reach_the_data_layer(tmp_path, monkeypatch):
    """`datasets.<name>.corrections` is checked when the sweep file is read (errors name the key) and handed
    to preprocessing as a plain dict, with where it came from for messages."""
    from orchestrator.errors import ConfigError
    from orchestrator.planning import data as odata
    from orchestrator.spec.resolved import load_sweep

    root = tmp_path / "c"
    root.mkdir()
    doc = {"name": "q", "workdir": str(tmp_path / "wd"),
           "datasets": {"c": {"reader": "casme2", "root": str(root),
                              "corrections": {"sub01/EP02_01f": {"apex": "59", "aus": "R14"}}}}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    spec = load_sweep(path)
    assert spec.datasets["c"].spec.corrections == {"sub01/EP02_01f": {"apex": 59, "aus": "R14"}}
    seen = {}
    monkeypatch.setattr(odata, "prepare_dataset", lambda *a, **k: seen.update(k) or "prepared")
    assert odata.prepare(spec, "c", spec.trials_of("c")[0].preprocessing, progress=False) == "prepared"
    assert seen["corrections"] == {"sub01/EP02_01f": {"apex": 59, "aus": "R14"}}
    assert type(seen["corrections"]) is dict
    assert seen["corrections_where"] == f"datasets.c.corrections (in {path})"
    doc["datasets"]["c"]["corrections"] = {"sub01/EP02_01f": {"apx": 59}}
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as e:
        load_sweep(path)
    assert str(path) in str(e.value) and "datasets.c.corrections" in str(e.value)
    assert "sub01/EP02_01f: unknown field(s) 'apx'" in str(e.value)


def test_estimated_apex_and_corrections_are_listed_by_report_and_on_mlflow(casme2_copy, tmp_path):
    """The sweep's report (text, JSON, CSV) and each MLflow parent name the samples whose apex was
    estimated and the corrected ones, so a table is never read as if the sheet had been complete."""
    from mlflow import MlflowClient

    from orchestrator.execution.state import SweepState
    from orchestrator.planning.data import prepare_all
    from orchestrator.planning.plan import make_plan
    from orchestrator.spec.resolved import load_sweep

    from support.data import TEST_PREPROCESS

    root, samples = casme2_copy
    edit_sheet(samples[0].sheet, "casme2", {samples[1].row: {"apex": "/"}})
    fix = {samples[2].id: {"aus": "4"}}
    doc = {"name": "notes", "workdir": str(tmp_path / "wd"), "preprocessing": TEST_PREPROCESS,
           "datasets": {"casme2": {"reader": "casme2", "root": str(root), "corrections": fix}},
           "model": {"arch": "microau-tiny", "pretrained": "none", "trainable_blocks": 1}}
    path = tmp_path / "notes.yaml"
    path.write_text(yaml.safe_dump(doc))
    spec = load_sweep(path)
    datasets = prepare_all(spec, spec.trials, progress=False)
    r = CliRunner().invoke(main, ["report", str(path)])
    assert r.exit_code == 0, r.output
    (est,) = next(iter(datasets.values())).apex_estimated
    assert "apex estimated casme2: the sheet gives no apex frame for 1 sample(s)" in r.output
    assert f"{samples[1].id} ({est['apex']})" in r.output and f"corrected casme2: {samples[2].id} (aus)" in r.output
    report = json.loads((tmp_path / "wd" / "reports" / "notes.json").read_text())
    assert report["data_notes"][0]["apex_estimated"][0]["sample"] == samples[1].id
    assert report["points"][0]["apex_estimated"] == [f"{samples[1].id}:{est['apex']}"]
    assert f"{samples[1].id}:{est['apex']}" in (tmp_path / "wd" / "reports" / "notes.csv").read_text()
    SweepState(make_plan(spec, datasets))
    client = MlflowClient(spec.tracking_uri)
    (parent,) = client.search_runs([client.get_experiment_by_name("notes").experiment_id])
    assert parent.data.tags["apex_estimated"] == f"{samples[1].id}:{est['apex']}"
    assert parent.data.tags["corrected_samples"] == samples[2].id
    assert parent.data.metrics["n_apex_estimated"] == 1
