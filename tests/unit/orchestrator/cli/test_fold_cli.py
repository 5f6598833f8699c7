"""`microau-sweep fold`: one fold in-process with --json, and its errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from sklearn.metrics import f1_score

from orchestrator.cli import main

from support.data import TEST_PREPROCESS


@pytest.fixture(scope="module")
def sweep(synth_casme2, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fold")
    doc = {"name": "foldtest", "workdir": str(folder / "wd"),
           "datasets": {"casme2": {"reader": "casme2", "root": str(synth_casme2)}},
           "preprocessing": TEST_PREPROCESS,
           "model": {"arch": "microau-tiny", "pretrained": "none", "trainable_blocks": 1},
           "training": {"epochs": 5, "threads": 1, "device": "cpu"},
           "grid": {"training.beta": [0.5, 1.0]}}
    path = folder / "foldtest.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_fold_json(sweep):
    res = CliRunner().invoke(main, ["fold", str(sweep), "--subject", "sub01", "--point", "1", "--epochs", "2",
                                    "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)  # exactly one JSON object on stdout
    assert doc["dataset"] == "casme2" and doc["subject"] == "sub01" and doc["point"] == "training.beta=1.0"
    assert len(doc["loss_curve"]["total"]) == 2
    preds = doc["predictions"]
    assert preds and all(p["id"].startswith("sub01/") for p in preds)
    aus = list(preds[0]["probs"])
    assert aus == ["AU1", "AU2", "AU4", "AU7", "AU12", "AU14", "AU15", "AU17"]
    for p in preds:
        assert set(p["labels"]) == set(aus) and all(0 <= v <= 1 for v in p["probs"].values())
    m = doc["metrics"]
    assert {"f1", "acc", "per_au"} <= set(m) and -1 <= m["text_si"] <= 1  # Table III TextSi of the fold
    y = np.array([[p["labels"][a] for a in aus] for p in preds])
    yhat = np.array([[p["probs"][a] > 0.5 for a in aus] for p in preds]).astype(int)
    assert m["f1"] == pytest.approx(np.mean([f1_score(y[:, j], yhat[:, j], zero_division=0)
                                             for j in range(len(aus))]))
    assert "epoch 2/2" in res.stderr  # per-epoch losses go to stderr with --json


def test_fold_text_output_shows_epochs_and_metrics(sweep):
    res = CliRunner().invoke(main, ["fold", str(sweep), "--subject", "sub02", "--epochs", "1"])
    assert res.exit_code == 0, res.output
    assert "epoch 1/1" in res.stdout and "fold F1" in res.stdout


@pytest.mark.parametrize("args,needle", [
    (["--subject", "sub99"], "--subject 'sub99' is not in dataset casme2"),
    (["--subject", "sub01", "--point", "5"], "--point 5"),
    (["--subject", "sub01", "--dataset", "samm"], "no dataset 'samm'"),
])
def test_fold_errors_say_what_to_do(sweep, args, needle):
    res = CliRunner().invoke(main, ["fold", str(sweep), *args, "--epochs", "1"])
    assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output


def test_bad_sweep_file_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndatasets: {c: {reader: casme2, root: /x}}\ntraining: {epochz: 3}\n")
    res = CliRunner().invoke(main, ["fold", str(bad), "--subject", "s"])
    assert res.exit_code == 1 and str(bad) in res.output and "training.epochz" in res.output
